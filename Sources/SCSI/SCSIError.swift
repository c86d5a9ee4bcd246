// SCSI: pure SCSI command descriptor blocks (CDBs), response parsers, sense data
// and error classification. No I/O and no Foundation: bytes go in and come out
// as `[UInt8]`. All multi-byte wire fields are big-endian (SPC-4 3.5.2).

import Failure

/// Error thrown by the parsers and by the few builders that validate input.
/// Parsers never trap on short or garbled input; they throw this instead.
public struct SCSIError: Error, CustomStringConvertible, Sendable, Equatable {
  /// What went wrong, as a small set of stable values callers can switch on.
  public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }

    /// The buffer is shorter than the fixed part of the structure, or a length
    /// field inside it points past the end of the buffer.
    public static let truncated = Code(rawValue: "truncated")
    /// A field holds a value the structure does not allow (e.g. wrong page code,
    /// unknown sense response code).
    public static let invalidField = Code(rawValue: "invalidField")
    /// A builder argument is out of range for the wire format.
    public static let invalidArgument = Code(rawValue: "invalidArgument")
    /// Well-formed but a format this module does not decode.
    public static let unsupported = Code(rawValue: "unsupported")

    public var description: String { rawValue }
  }

  public let code: Code
  public let message: String

  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }

  public var description: String { "SCSIError.\(code): \(message)" }
}

// MARK: - Internal big-endian helpers.
// Callers check lengths first; these index directly.

@inline(__always) func be16(_ b: [UInt8], _ i: Int) -> UInt16 {
  UInt16(b[i]) << 8 | UInt16(b[i + 1])
}

@inline(__always) func be32(_ b: [UInt8], _ i: Int) -> UInt32 {
  UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
}

@inline(__always) func be64(_ b: [UInt8], _ i: Int) -> UInt64 {
  UInt64(be32(b, i)) << 32 | UInt64(be32(b, i + 4))
}

@inline(__always) func put16(_ b: inout [UInt8], _ i: Int, _ v: UInt16) {
  b[i] = UInt8(truncatingIfNeeded: v >> 8)
  b[i + 1] = UInt8(truncatingIfNeeded: v)
}

@inline(__always) func put32(_ b: inout [UInt8], _ i: Int, _ v: UInt32) {
  b[i] = UInt8(truncatingIfNeeded: v >> 24)
  b[i + 1] = UInt8(truncatingIfNeeded: v >> 16)
  b[i + 2] = UInt8(truncatingIfNeeded: v >> 8)
  b[i + 3] = UInt8(truncatingIfNeeded: v)
}

@inline(__always) func put64(_ b: inout [UInt8], _ i: Int, _ v: UInt64) {
  put32(&b, i, UInt32(truncatingIfNeeded: v >> 32))
  put32(&b, i + 4, UInt32(truncatingIfNeeded: v))
}

/// Throws `.truncated` unless `bytes` holds at least `count` bytes.
@inline(__always) func require(_ bytes: [UInt8], _ count: Int, _ what: String) throws {
  if bytes.count < count {
    throw SCSIError(.truncated, "\(what): need \(count) bytes, got \(bytes.count)")
  }
}

/// ASCII field as a String with trailing (and leading) spaces and NULs removed.
/// Non-printable bytes become "?" so the result is always safe to log.
func asciiField(_ bytes: ArraySlice<UInt8>) -> String {
  var scalars = bytes.map { b -> UInt8 in (b >= 0x20 && b < 0x7F) || b == 0 ? b : UInt8(ascii: "?") }
  while let last = scalars.last, last == 0x20 || last == 0 { scalars.removeLast() }
  var start = 0
  while start < scalars.count, scalars[start] == 0x20 || scalars[start] == 0 { start += 1 }
  // Embedded NULs (C strings padded oddly) end the text.
  var out = ""
  for b in scalars[start...] {
    if b == 0 { break }
    out.unicodeScalars.append(Unicode.Scalar(b))
  }
  return out
}

/// Lowercase hex without separators.
func hexString<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
  let digits: [Character] = Array("0123456789abcdef")
  var s = ""
  for b in bytes {
    s.append(digits[Int(b >> 4)])
    s.append(digits[Int(b & 0x0F)])
  }
  return s
}

extension SCSIError: LunbridgeError {
  public var errorCode: String { "scsi-data.\(code)" }
  /// Data of the LU (INQUIRY, READ CAPACITY, REPORT LUNS...) too short or malformed.
  public var failureClass: FailureClass { .protocolError }
  public var errorMessage: String { "the LUN sent data that cannot be read: \(message)" }
}
