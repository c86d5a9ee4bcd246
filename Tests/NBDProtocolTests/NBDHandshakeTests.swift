import NIOCore
import XCTest

@testable import NBDProtocol

final class NBDHandshakeTests: XCTestCase {
  var lun0: NBDExportInfo!
  var lun1: NBDExportInfo!

  override func setUpWithError() throws {
    lun0 = try NBDExportInfo(
      name: "lun0", description: "first LUN", size: 0x1_0000_0000,
      transmissionFlags: [.sendFlush, .sendFUA], minimumBlockSize: 512, preferredBlockSize: 4096,
      maximumPayload: 1 << 25)
    lun1 = try NBDExportInfo(
      name: "lun1", size: 8192, transmissionFlags: [.readOnly], minimumBlockSize: 4096, preferredBlockSize: 4096,
      maximumPayload: 1 << 20)
  }

  func machine() -> NBDHandshakeStateMachine { NBDHandshakeStateMachine(exports: [lun0, lun1]) }

  // MARK: - Wire helpers (client side, written independently of the implementation)

  func be<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }

  func option(_ opt: UInt32, _ data: [UInt8] = []) -> [UInt8] {
    Array("IHAVEOPT".utf8) + be(opt) + be(UInt32(data.count)) + data
  }

  func infoData(_ name: String, _ infos: [UInt16]) -> [UInt8] {
    be(UInt32(name.utf8.count)) + Array(name.utf8) + be(UInt16(infos.count)) + infos.flatMap { be($0) }
  }

  func reply(_ opt: UInt32, _ type: UInt32, _ data: [UInt8] = []) -> [UInt8] {
    be(UInt64(0x3_e889_0455_65a9)) + be(opt) + be(type) + be(UInt32(data.count)) + data
  }

  func infoExport(_ e: NBDExportInfo, opt: UInt32) -> [UInt8] {
    reply(opt, 3, be(UInt16(0)) + be(e.size) + be(e.transmissionFlags.rawValue))
  }

  func infoBlockSize(_ e: NBDExportInfo, opt: UInt32) -> [UInt8] {
    reply(opt, 3, be(UInt16(3)) + be(e.minimumBlockSize) + be(e.preferredBlockSize) + be(e.maximumPayload))
  }

  func feed(_ m: inout NBDHandshakeStateMachine, _ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line)
    throws -> [NBDHandshakeAction]
  {
    var buffer = ByteBuffer(bytes: bytes)
    let actions = try m.receive(&buffer)
    XCTAssertEqual(buffer.readableBytes, 0, "all input consumed", file: file, line: line)
    return actions
  }

  func sent(_ actions: [NBDHandshakeAction]) -> [UInt8] {
    actions.flatMap { action -> [UInt8] in
      if case .send(let b) = action { return Array(b.readableBytesView) }
      return []
    }
  }

  func isClose(_ action: NBDHandshakeAction?) -> Bool {
    if case .close = action { return true }
    return false
  }

  // MARK: - Tests

  func testGreeting() {
    XCTAssertEqual(
      Array(machine().start().readableBytesView), Array("NBDMAGIC".utf8) + Array("IHAVEOPT".utf8) + [0, 3])
  }

  func testExportNameWithoutNoZeroes() throws {
    var m = machine()
    XCTAssertEqual(try feed(&m, be(UInt32(1))), [])
    let actions = try feed(&m, option(1, Array("lun0".utf8)))
    XCTAssertEqual(actions.count, 2)
    XCTAssertEqual(sent(actions), be(UInt64(0x1_0000_0000)) + be(UInt16(0b1101)) + [UInt8](repeating: 0, count: 124))
    XCTAssertEqual(actions.last, .enterTransmission(export: lun0))
    XCTAssertEqual(m.state, .transmission)
  }

  func testExportNameWithNoZeroesAndPipelinedRequestLeftInBuffer() throws {
    var m = machine()
    let request: [UInt8] = [0x25, 0x60, 0x95, 0x13] + [UInt8](repeating: 0, count: 24)
    var buffer = ByteBuffer(bytes: be(UInt32(3)) + option(1, Array("lun1".utf8)) + request)
    let actions = try m.receive(&buffer)
    XCTAssertEqual(sent(actions), be(UInt64(8192)) + be(UInt16(0b11)))
    XCTAssertEqual(actions.last, .enterTransmission(export: lun1))
    XCTAssertEqual(Array(buffer.readableBytesView), request, "transmission bytes are left for the decoder")
    XCTAssertEqual(try m.receive(&buffer), [])
  }

  func testExportNameEmptyIsDefault() throws {
    var m = machine()
    let actions = try feed(&m, be(UInt32(3)) + option(1))
    XCTAssertEqual(actions.last, .enterTransmission(export: lun0))
  }

  func testExportNameUnknownCloses() throws {
    var m = machine()
    let actions = try feed(&m, be(UInt32(1)) + option(1, Array("nope".utf8)))
    XCTAssertEqual(actions.count, 1)
    XCTAssertTrue(isClose(actions.first))
    XCTAssertEqual(m.state, .closed)
  }

  func testGoWithBlockSizeInfo() throws {
    var m = machine()
    let actions = try feed(&m, be(UInt32(3)) + option(7, infoData("lun1", [3])))
    XCTAssertEqual(sent(actions), infoExport(lun1, opt: 7) + infoBlockSize(lun1, opt: 7) + reply(7, 1))
    XCTAssertEqual(actions.last, .enterTransmission(export: lun1))
    XCTAssertTrue(m.clientAcknowledgedBlockSizes)
  }

  func testGoWithoutRequestsStillSendsExportAndBlockSize() throws {
    var m = machine()
    let actions = try feed(&m, be(UInt32(1)) + option(7, infoData("", [])))
    XCTAssertEqual(sent(actions), infoExport(lun0, opt: 7) + infoBlockSize(lun0, opt: 7) + reply(7, 1))
    XCTAssertEqual(actions.last, .enterTransmission(export: lun0))
    XCTAssertFalse(m.clientAcknowledgedBlockSizes)
  }

  func testInfoThenGo() throws {
    var m = machine()
    XCTAssertEqual(try feed(&m, be(UInt32(3))), [])
    let info = try feed(&m, option(6, infoData("lun0", [1, 2, 3, 77])))
    let nameInfo = reply(6, 3, be(UInt16(1)) + Array("lun0".utf8))
    let descInfo = reply(6, 3, be(UInt16(2)) + Array("first LUN".utf8))
    XCTAssertEqual(sent(info), infoExport(lun0, opt: 6) + nameInfo + descInfo + infoBlockSize(lun0, opt: 6) + reply(6, 1))
    XCTAssertEqual(info.count, 1, "INFO does not enter transmission")
    XCTAssertEqual(m.state, .awaitingOption)

    let go = try feed(&m, option(7, infoData("lun0", [3])))
    XCTAssertEqual(go.last, .enterTransmission(export: lun0))
  }

  func testList() throws {
    var m = machine()
    let actions = try feed(&m, be(UInt32(3)) + option(3))
    let expected =
      reply(3, 2, be(UInt32(4)) + Array("lun0first LUN".utf8)) + reply(3, 2, be(UInt32(4)) + Array("lun1".utf8))
      + reply(3, 1)
    XCTAssertEqual(sent(actions), expected)
    XCTAssertEqual(m.state, .awaitingOption)
  }

  func testListWithDataIsInvalid() throws {
    var m = machine()
    let actions = try feed(&m, be(UInt32(3)) + option(3, [1]))
    let out = sent(actions)
    XCTAssertEqual(Array(out[12..<16]), be(UInt32(0x8000_0003)))
    XCTAssertEqual(m.state, .awaitingOption)
  }

  func testAbort() throws {
    var m = machine()
    let actions = try feed(&m, be(UInt32(3)) + option(2))
    XCTAssertEqual(actions.count, 2)
    XCTAssertEqual(sent(actions), reply(2, 1))
    XCTAssertTrue(isClose(actions.last))
    XCTAssertEqual(m.state, .closed)
  }

  func testUnsupportedOptionsThenGoStillWorks() throws {
    var m = machine()
    XCTAssertEqual(try feed(&m, be(UInt32(3))), [])
    for opt: UInt32 in [8, 11, 5, 9, 10, 4, 0xdead] {
      let actions = try feed(&m, option(opt, [1, 2, 3]))
      XCTAssertEqual(actions.count, 1)
      let out = sent(actions)
      XCTAssertEqual(Array(out[0..<16]), Array(reply(opt, 0x8000_0001)[0..<16]), "option \(opt) → ERR_UNSUP")
      XCTAssertEqual(out.count, 20 + Int(UInt32(bigEndian: out[16..<20].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })))
    }
    let go = try feed(&m, option(7, infoData("lun1", [3])))
    XCTAssertEqual(go.last, .enterTransmission(export: lun1))
  }

  func testGoUnknownExportThenRetry() throws {
    var m = machine()
    let actions = try feed(&m, be(UInt32(3)) + option(7, infoData("missing", [3])))
    XCTAssertEqual(actions.count, 1)
    let out = sent(actions)
    XCTAssertEqual(Array(out[8..<16]), be(UInt32(7)) + be(UInt32(0x8000_0006)), "NBD_REP_ERR_UNKNOWN, no INFO before")
    XCTAssertEqual(m.state, .awaitingOption)
    XCTAssertEqual(try feed(&m, option(7, infoData("lun0", []))).last, .enterTransmission(export: lun0))
  }

  func testMalformedGoIsInvalid() throws {
    var m = machine()
    // name length 100 > option length - 6
    let actions = try feed(&m, be(UInt32(3)) + option(7, be(UInt32(100)) + [0, 0]))
    XCTAssertEqual(Array(sent(actions)[12..<16]), be(UInt32(0x8000_0003)))
    // info count disagrees with remaining bytes
    let actions2 = try feed(&m, option(7, be(UInt32(0)) + be(UInt16(2)) + be(UInt16(3))))
    XCTAssertEqual(Array(sent(actions2)[12..<16]), be(UInt32(0x8000_0003)))
    XCTAssertEqual(m.state, .awaitingOption)
  }

  func testGarbageClientFlagsClose() throws {
    var m = machine()
    let actions = try feed(&m, be(UInt32(0x8000_0001)))
    XCTAssertEqual(actions.count, 1)
    XCTAssertTrue(isClose(actions.first))
    XCTAssertEqual(m.state, .closed)
  }

  func testBadOptionMagicCloses() throws {
    var m = machine()
    var bytes = be(UInt32(1)) + option(7, infoData("lun0", []))
    bytes[4] = UInt8(ascii: "X")
    var buffer = ByteBuffer(bytes: bytes)
    let actions = try m.receive(&buffer)
    XCTAssertTrue(isClose(actions.last))
  }

  func testOversizeOptionClosesBeforeDataArrives() throws {
    var m = machine()
    // Header only: announces 64 KiB + 1 of data that never comes.
    let header = Array("IHAVEOPT".utf8) + be(UInt32(7)) + be(UInt32(64 * 1024 + 1))
    var buffer = ByteBuffer(bytes: be(UInt32(3)) + header)
    let actions = try m.receive(&buffer)
    XCTAssertEqual(actions.count, 1)
    XCTAssertTrue(isClose(actions.first))
    XCTAssertEqual(m.state, .closed)
  }

  func testByteByByteFeeding() throws {
    var m = machine()
    let input =
      be(UInt32(3)) + option(0xabc) + option(6, infoData("lun1", [3])) + option(3) + option(7, infoData("lun1", [3]))
    var buffer = ByteBuffer()
    var actions: [NBDHandshakeAction] = []
    for byte in input {
      buffer.writeInteger(byte)
      actions += try m.receive(&buffer)
    }
    XCTAssertEqual(buffer.readableBytes, 0)
    XCTAssertEqual(actions.last, .enterTransmission(export: lun1))
    let expected =
      reply(0xabc, 0x8000_0001, Array("NBD_OPT_2748 is not supported".utf8))
      + infoExport(lun1, opt: 6) + infoBlockSize(lun1, opt: 6) + reply(6, 1)
      + reply(3, 2, be(UInt32(4)) + Array("lun0first LUN".utf8)) + reply(3, 2, be(UInt32(4)) + Array("lun1".utf8))
      + reply(3, 1)
      + infoExport(lun1, opt: 7) + infoBlockSize(lun1, opt: 7) + reply(7, 1)
    XCTAssertEqual(sent(actions), expected)
  }

  func testNoInputBeyondTransmission() throws {
    var m = machine()
    _ = try feed(&m, be(UInt32(1)) + option(1, Array("lun0".utf8)))
    var more = ByteBuffer(bytes: option(3))
    XCTAssertEqual(try m.receive(&more), [])
    XCTAssertEqual(more.readableBytes, 16, "nothing consumed after the handshake")
  }

  // MARK: - FORCEDTLS mode

  func testTLSRequiredRefusesOptionsUntilStartTLSThenNegotiatesInsideTLS() throws {
    var m = NBDHandshakeStateMachine(exports: [lun0, lun1], tls: .required)
    XCTAssertEqual(try feed(&m, be(UInt32(3))), [])
    let tlsReqd: UInt32 = 0x8000_0005
    // NBD_OPT_GO (7) and NBD_OPT_LIST (3) before TLS: NBD_REP_ERR_TLS_REQD, with a message.
    let go = sent(try feed(&m, option(7, infoData("lun0", []))))
    XCTAssertEqual(Array(go.prefix(16)), Array(reply(7, tlsReqd).prefix(16)))
    XCTAssertTrue(String(decoding: go.dropFirst(20), as: UTF8.self).contains("requires TLS"))
    XCTAssertEqual(Array(sent(try feed(&m, option(3)))[12..<16]), be(tlsReqd))
    // STARTTLS with data: invalid; without: ACK, then start TLS and read nothing more.
    XCTAssertEqual(Array(sent(try feed(&m, option(5, [1])))[12..<16]), be(UInt32(0x8000_0003)))
    XCTAssertEqual(try feed(&m, option(5)), [.send(ByteBuffer(bytes: reply(5, 1))), .startTLS])
    XCTAssertEqual(m.state, .awaitingTLS)
    var pending = ByteBuffer(bytes: option(7, infoData("lun0", [])))
    XCTAssertEqual(try m.receive(&pending), [], "nothing is read while the TLS handshake runs")
    m.tlsStarted()
    XCTAssertTrue(m.tlsActive)
    let actions = try feed(&m, option(7, infoData("lun0", [3])))
    XCTAssertEqual(actions.last, .enterTransmission(export: lun0))
    XCTAssertEqual(
      sent(actions), infoExport(lun0, opt: 7) + infoBlockSize(lun0, opt: 7) + reply(7, 1), "GO works inside TLS")
  }

  func testTLSRequiredEndsExportNameWithoutTLSAndStartTLSTwice() throws {
    var m = NBDHandshakeStateMachine(exports: [lun0], tls: .required)
    _ = try feed(&m, be(UInt32(3)))
    XCTAssertTrue(isClose(try feed(&m, option(1, Array("lun0".utf8))).last), "EXPORT_NAME cannot carry an error")
    var m2 = NBDHandshakeStateMachine(exports: [lun0], tls: .required)
    _ = try feed(&m2, be(UInt32(3)))
    _ = try feed(&m2, option(5))
    m2.tlsStarted()
    XCTAssertEqual(Array(sent(try feed(&m2, option(5)))[12..<16]), be(UInt32(0x8000_0003)), "TLS already active")
    var m3 = NBDHandshakeStateMachine(exports: [lun0], tls: .required)
    _ = try feed(&m3, be(UInt32(3)))
    var early = ByteBuffer(bytes: option(5) + [0x16, 0x03, 0x01])
    XCTAssertTrue(isClose(try m3.receive(&early).last), "plaintext after STARTTLS before the TLS handshake")
  }

  func testWithoutTLSStartTLSIsUnsupported() throws {
    var m = machine()
    _ = try feed(&m, be(UInt32(3)))
    XCTAssertEqual(Array(sent(try feed(&m, option(5)))[12..<16]), be(UInt32(0x8000_0001)))
  }
}
