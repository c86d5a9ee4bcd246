import NIOCore
import XCTest

@testable import ISCSIProtocol

final class TextKeysTests: XCTestCase {
  func testRoundTripPreservesOrderAndDuplicates() throws {
    let pairs = [
      TextKeyValue("TargetName", "iqn.2001-04.com.example:a"), TextKeyValue("TargetAddress", "10.0.0.1:3260,1"),
      TextKeyValue("TargetName", "iqn.2001-04.com.example:b"), TextKeyValue("X-com.example.Empty", ""),
    ]
    let bytes = try TextKeys.encode(pairs)
    XCTAssertEqual(bytes.last, 0)
    XCTAssertEqual(bytes.filter { $0 == 0 }.count, 4)
    XCTAssertEqual(try TextKeys.decode(bytes), pairs)
  }

  func testEncodedBytesAreKeyEqualsValueNul() throws {
    XCTAssertEqual(try TextKeys.encode([TextKeyValue("A", "b")]), Array("A=b\0".utf8))
  }

  func testValueMayContainEquals() throws {
    XCTAssertEqual(try TextKeys.decode(Array("K=a=b\0".utf8)), [TextKeyValue("K", "a=b")])
  }

  func testTrailingPaddingNulsTolerated() throws {
    XCTAssertEqual(try TextKeys.decode(Array("K=v\0\0\0".utf8)), [TextKeyValue("K", "v")])
    XCTAssertEqual(try TextKeys.decode([]), [])
  }

  func testRejectsMissingEquals() {
    assertThrows(.protocolViolation) { _ = try TextKeys.decode(Array("NoEquals\0".utf8)) }
  }

  func testRejectsMissingTerminator() {
    assertThrows(.protocolViolation) { _ = try TextKeys.decode(Array("K=v".utf8)) }
  }

  func testRejectsLongKey() {
    let k63 = String(repeating: "K", count: 63)
    XCTAssertNoThrow(try TextKeys.decode(Array("\(k63)=v\0".utf8)))
    assertThrows(.protocolViolation) { _ = try TextKeys.decode(Array("\(k63)K=v\0".utf8)) }
    assertThrows(.protocolViolation) { _ = try TextKeys.encode([TextKeyValue(k63 + "K", "v")]) }
  }

  func testRejectsEmptyKeyAndBadCharacters() {
    assertThrows(.protocolViolation) { _ = try TextKeys.decode(Array("=v\0".utf8)) }
    assertThrows(.protocolViolation) { _ = try TextKeys.decode(Array("Bad Key=v\0".utf8)) }
  }

  func testRejectsLongValueExceptCHAPBinary() throws {
    let v255 = String(repeating: "a", count: 255)
    XCTAssertNoThrow(try TextKeys.decode(Array("K=\(v255)\0".utf8)))
    assertThrows(.protocolViolation) { _ = try TextKeys.decode(Array("K=\(v255)a\0".utf8)) }
    // CHAP_C may carry 1024 binary bytes: "0x" + 2048 hex digits.
    let hex1024 = TextValue.encodeHex([UInt8](repeating: 0xab, count: 1024))
    XCTAssertEqual(try TextKeys.decode(Array("CHAP_C=\(hex1024)\0".utf8)).first?.value, hex1024)
    let hex1025 = TextValue.encodeHex([UInt8](repeating: 0xab, count: 1025))
    assertThrows(.protocolViolation) { _ = try TextKeys.decode(Array("CHAP_R=\(hex1025)\0".utf8)) }
    // Only the CHAP binary keys get the longer limit.
    assertThrows(.protocolViolation) { _ = try TextKeys.decode(Array("CHAP_N=\(hex1024)\0".utf8)) }
  }

  func testCHAPValuesHiddenInDescription() {
    XCTAssertFalse(TextKeyValue("CHAP_R", "0xdeadbeef").description.contains("deadbeef"))
    XCTAssertEqual(TextKeyValue("TargetAlias", "x").description, "TargetAlias=x")
  }

  func testHexDecodeEncode() throws {
    XCTAssertEqual(try TextValue.decodeBinary("0x00ff10"), [0x00, 0xff, 0x10])
    XCTAssertEqual(try TextValue.decodeBinary("0XABcd"), [0xab, 0xcd])
    XCTAssertEqual(try TextValue.decodeBinary("0xabc"), [0x0a, 0xbc])
    XCTAssertEqual(TextValue.encodeHex([0x01, 0xfe]), "0x01fe")
    assertThrows(.protocolViolation) { _ = try TextValue.decodeBinary("0xzz") }
    assertThrows(.protocolViolation) { _ = try TextValue.decodeBinary("0x") }
    assertThrows(.protocolViolation) { _ = try TextValue.decodeBinary("1234") }
  }

  func testBase64Decode() throws {
    // base64 of bytes 0...15 (Python: base64.b64encode(bytes(range(16)))).
    XCTAssertEqual(try TextValue.decodeBinary("0bAAECAwQFBgcICQoLDA0ODw=="), Array(0...15))
    XCTAssertEqual(try TextValue.decodeBinary("0BTWFu"), Array("Man".utf8))
    assertThrows(.protocolViolation) { _ = try TextValue.decodeBinary("0bTWF") }
    assertThrows(.protocolViolation) { _ = try TextValue.decodeBinary("0bTW!u") }
  }

  func testAccumulatorJoinsSplitPair() throws {
    var acc = TextAccumulator()
    XCTAssertNil(try acc.append(ByteBuffer(string: "MaxBurstLen"), continues: true))
    XCTAssertNil(try acc.append(ByteBuffer(string: "gth=65536\0Tar"), continues: true))
    let pairs = try acc.append(ByteBuffer(string: "getAlias=x\0"), continues: false)
    XCTAssertEqual(pairs, [TextKeyValue("MaxBurstLength", "65536"), TextKeyValue("TargetAlias", "x")])
    XCTAssertTrue(acc.isEmpty)
  }

  func testAccumulatorBound() throws {
    var acc = TextAccumulator(limit: 16)
    XCTAssertNil(try acc.append(ByteBuffer(string: "0123456789"), continues: true))
    assertThrows(.protocolViolation) { _ = try acc.append(ByteBuffer(string: "0123456789"), continues: true) }
  }
}
