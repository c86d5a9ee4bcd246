@testable import SCSI

/// `s` as ASCII, space-padded (or cut) to `n` bytes, as INQUIRY fields are.
func ascii(_ s: String, _ n: Int) -> [UInt8] {
  var b = Array(s.utf8.prefix(n))
  b += [UInt8](repeating: 0x20, count: n - b.count)
  return b
}

/// A VPD page: 4-byte header (SPC-4 7.8.1 Table 572) + body.
func vpd(_ page: UInt8, _ body: [UInt8]) -> [UInt8] {
  [0x00, page, UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
}
