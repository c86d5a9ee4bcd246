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
    // EXTENDED_HEADERS, STARTTLS without TLS, the withdrawn PEEK_EXPORT, an unknown one.
    for opt: UInt32 in [11, 5, 4, 0xdead] {
      let actions = try feed(&m, option(opt, [1, 2, 3]))
      XCTAssertEqual(actions.count, 1)
      let out = sent(actions)
      XCTAssertEqual(Array(out[0..<16]), Array(reply(opt, 0x8000_0001)[0..<16]), "option \(opt) → ERR_UNSUP")
      XCTAssertEqual(out.count, 20 + Int(UInt32(bigEndian: out[16..<20].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })))
    }
    let go = try feed(&m, option(7, infoData("lun1", [3])))
    XCTAssertEqual(go.last, .enterTransmission(export: lun1))
  }

  // MARK: - Structured replies and base:allocation (NBD_OPT 8, 9 LIST, 10 SET)

  func metaData(_ export: String, _ queries: [String]) -> [UInt8] {
    be(UInt32(export.utf8.count)) + Array(export.utf8) + be(UInt32(queries.count))
      + queries.flatMap { be(UInt32($0.utf8.count)) + Array($0.utf8) }
  }

  func metaContextReply(_ opt: UInt32, id: UInt32) -> [UInt8] {
    reply(opt, 4, be(id) + Array("base:allocation".utf8))
  }

  func testMetaContextNeedsStructuredRepliesFirst() throws {
    var m = machine()
    _ = try feed(&m, be(UInt32(3)))
    for opt: UInt32 in [9, 10] {
      let out = sent(try feed(&m, option(opt, metaData("lun0", ["base:allocation"]))))
      XCTAssertEqual(Array(out[0..<16]), Array(reply(opt, 0x8000_0003)[0..<16]), "option \(opt) before 8: ERR_INVALID")
    }
    XCTAssertEqual(try feed(&m, option(7, infoData("lun0", []))).last, .enterTransmission(export: lun0))
    XCTAssertEqual(m.transmission, NBDTransmissionOptions(structuredReplies: false, baseAllocation: nil))
  }

  func testStructuredRepliesAndBaseAllocationSelected() throws {
    var m = machine()
    _ = try feed(&m, be(UInt32(3)))
    XCTAssertEqual(sent(try feed(&m, option(8))), reply(8, 1))
    // LIST with no query, and with the namespace "base:": base:allocation with id 0.
    XCTAssertEqual(sent(try feed(&m, option(9, metaData("lun0", [])))), metaContextReply(9, id: 0) + reply(9, 1))
    XCTAssertEqual(sent(try feed(&m, option(9, metaData("lun0", ["base:"])))), metaContextReply(9, id: 0) + reply(9, 1))
    // A context this server does not have: just the ACK.
    XCTAssertEqual(sent(try feed(&m, option(9, metaData("lun0", ["qemu:dirty-bitmap:x"])))), reply(9, 1))
    // SET: the id the block status replies will carry.
    XCTAssertEqual(
      sent(try feed(&m, option(10, metaData("lun0", ["x-other:thing", "base:allocation"])))),
      metaContextReply(10, id: 1) + reply(10, 1))
    XCTAssertEqual(try feed(&m, option(7, infoData("lun0", []))).last, .enterTransmission(export: lun0))
    XCTAssertEqual(m.transmission, NBDTransmissionOptions(structuredReplies: true, baseAllocation: 1))
  }

  func testMetaContextErrorsAndReplacedSelection() throws {
    var m = machine()
    _ = try feed(&m, be(UInt32(3)) + option(8))
    // Unknown export: ERR_UNKNOWN; STRUCTURED_REPLY with data and a short query: ERR_INVALID.
    var out = sent(try feed(&m, option(10, metaData("nope", ["base:allocation"]))))
    XCTAssertEqual(Array(out[8..<16]), be(UInt32(10)) + be(UInt32(0x8000_0006)))
    out = sent(try feed(&m, option(8, [0])))
    XCTAssertEqual(Array(out[8..<16]), be(UInt32(8)) + be(UInt32(0x8000_0003)))
    out = sent(try feed(&m, option(10, be(UInt32(4)) + Array("lun0".utf8) + be(UInt32(1)) + be(UInt32(20)) + [1, 2])))
    XCTAssertEqual(Array(out[8..<16]), be(UInt32(10)) + be(UInt32(0x8000_0003)))
    // Selected for lun0, then a SET that selects nothing replaces it.
    _ = try feed(&m, option(10, metaData("lun0", ["base:allocation"])))
    XCTAssertEqual(sent(try feed(&m, option(10, metaData("lun0", [])))), reply(10, 1))
    XCTAssertEqual(try feed(&m, option(7, infoData("lun0", []))).last, .enterTransmission(export: lun0))
    XCTAssertEqual(m.transmission, NBDTransmissionOptions(structuredReplies: true, baseAllocation: nil))
  }

  func testBaseAllocationSelectedForAnotherExportDoesNotCarryOver() throws {
    var m = machine()
    _ = try feed(&m, be(UInt32(3)) + option(8) + option(10, metaData("lun0", ["base:allocation"])))
    XCTAssertEqual(try feed(&m, option(7, infoData("lun1", []))).last, .enterTransmission(export: lun1))
    XCTAssertEqual(m.transmission, NBDTransmissionOptions(structuredReplies: true, baseAllocation: nil))
  }

  func testStructuredReplyChunksOnTheWire() {
    var b = ByteBuffer()
    NBDReplyEncoder.writeReadChunk(handle: 0x1122_3344_5566_7788, offset: 4096, dataLength: 512, into: &b)
    XCTAssertEqual(
      Array(b.readableBytesView),
      be(UInt32(0x668e_33ef)) + be(UInt16(1)) + be(UInt16(1)) + be(UInt64(0x1122_3344_5566_7788)) + be(UInt32(520))
        + be(UInt64(4096)))
    b.clear()
    NBDReplyEncoder.writeErrorChunk(handle: 7, error: .eio, message: "bad", into: &b)
    XCTAssertEqual(
      Array(b.readableBytesView),
      be(UInt32(0x668e_33ef)) + be(UInt16(1)) + be(UInt16(0x8001)) + be(UInt64(7)) + be(UInt32(9)) + be(UInt32(5))
        + be(UInt16(3)) + Array("bad".utf8))
    b.clear()
    var d = ByteBuffer()
    NBDExtent.write([NBDExtent(length: 4096, flags: []), NBDExtent(length: 8192, flags: [.hole, .zero])], into: &d)
    NBDReplyEncoder.writeBlockStatus(handle: 9, context: 1, descriptors: d, into: &b)
    XCTAssertEqual(
      Array(b.readableBytesView),
      be(UInt32(0x668e_33ef)) + be(UInt16(1)) + be(UInt16(5)) + be(UInt64(9)) + be(UInt32(20)) + be(UInt32(1))
        + be(UInt32(4096)) + be(UInt32(0)) + be(UInt32(8192)) + be(UInt32(3)))
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
