import ISCSIProtocol
import NIOCore
import XCTest

/// RFC 3720 appendix B.4 vectors; the byte lists there are the digest as sent on the wire
/// (little-endian), so 0xaa 0x36 0x91 0x8a is the value 0x8a9136aa.
final class CRC32CTests: XCTestCase {
  let vectors: [([UInt8], UInt32)] = [
    ([UInt8](repeating: 0, count: 32), 0x8a91_36aa),
    ([UInt8](repeating: 0xff, count: 32), 0x62a8_ab43),
    ((0..<32).map { UInt8($0) }, 0x46dd_794e),
    ((0..<32).reversed().map { UInt8($0) }, 0x113f_db5c),
    (
      [
        0x01, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0x14, 0, 0, 0,
        0x18, 0x28, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0,
      ], 0xd996_3a56
    ),
    (Array("123456789".utf8), 0xe306_9283),
  ]

  func testRFC3720Vectors() {
    for (input, expected) in vectors {
      XCTAssertEqual(CRC32C.checksum(input), expected, "input of \(input.count) bytes")
      XCTAssertEqual(CRC32C.portableChecksum(input), expected, "portable, input of \(input.count) bytes")
    }
  }

  func testHardwareAndPortableAgreeOnOddLengthsAndContinuation() {
    var rng = SystemRandomNumberGenerator()
    for length in [0, 1, 3, 7, 8, 9, 15, 63, 64, 65, 4095, 4096, 4097] {
      let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
      XCTAssertEqual(CRC32C.checksum(bytes), CRC32C.portableChecksum(bytes), "length \(length)")
      let cut = length / 3
      let first = bytes[..<cut].withUnsafeBytes { CRC32C.checksum($0) }
      let both = bytes[cut...].withUnsafeBytes { CRC32C.checksum($0, continuing: first) }
      XCTAssertEqual(both, CRC32C.checksum(bytes), "continued at \(cut) of \(length)")
    }
  }

  func testBufferChecksumWithPaddingEqualsChecksumOfPaddedBytes() {
    var b = ByteBuffer()
    b.writeBytes([1, 2, 3, 4, 5])
    XCTAssertEqual(CRC32C.checksum(b, padding: 3), CRC32C.checksum([1, 2, 3, 4, 5, 0, 0, 0]))
  }
}
