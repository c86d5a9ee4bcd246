import NIOCore
import XCTest

@testable import ISCSIProtocol

final class SendTargetsTests: XCTestCase {
  func testParsesMultipleTargetsAndPortals() throws {
    let text = Array(
      ("TargetName=iqn.2024-01.test:a\0TargetAddress=10.0.0.1:3260,1\0TargetAddress=[2001:db8::5]:3261,2\0"
        + "TargetName=iqn.2024-01.test:b\0" + "TargetName=iqn.2024-01.test:c\0TargetAddress=san.example\0").utf8)
    let targets = try SendTargetsParser.parse(text)
    XCTAssertEqual(targets.map(\.targetName), ["iqn.2024-01.test:a", "iqn.2024-01.test:b", "iqn.2024-01.test:c"])
    XCTAssertEqual(
      targets[0].portals,
      [
        TargetAddress(host: "10.0.0.1", port: 3260, portalGroupTag: 1),
        TargetAddress(host: "2001:db8::5", port: 3261, portalGroupTag: 2),
      ])
    XCTAssertEqual(targets[1].portals, [])
    XCTAssertEqual(targets[2].portals, [TargetAddress(host: "san.example")])
    let tuples = try SendTargetsParser.parseTuples(try TextKeys.decode(text))
    XCTAssertEqual(tuples.count, 3)
    XCTAssertEqual(tuples[0].portals.count, 2)
  }

  func testAddressBeforeNameIsViolation() {
    assertThrows(.protocolViolation) { _ = try SendTargetsParser.parse(Array("TargetAddress=h\0".utf8)) }
  }

  func testSendTargetsRequest() throws {
    let pdu = try TextRequestBuilder.sendTargets(itt: 9, cmdSN: 20, expStatSN: 31)
    XCTAssertEqual(pdu.header.opcode, .textRequest)
    XCTAssertEqual(pdu.header.flags, 0x80)
    XCTAssertEqual(pdu.header.initiatorTaskTag, 9)
    XCTAssertEqual(pdu.header.targetTransferTag, 0xffff_ffff)
    XCTAssertEqual(pdu.header.cmdSN, 20)
    XCTAssertEqual(pdu.header.expStatSN, 31)
    XCTAssertEqual(Array(pdu.data.readableBytesView), Array("SendTargets=All\0".utf8))
  }

  func textResponse(itt: UInt32, final: Bool, continues: Bool, ttt: UInt32, _ text: String) -> ISCSIPDU {
    var h = BasicHeaderSegment(opcode: .textResponse, flags: (final ? 0x80 : 0) | (continues ? 0x40 : 0))
    h.initiatorTaskTag = itt
    h.targetTransferTag = ttt
    return ISCSIPDU(header: h, data: ByteBuffer(string: text))
  }

  func testContinuationEchoesTTTAndJoins() throws {
    var x = TextExchange(itt: 9)
    let a = try x.receive(
      textResponse(itt: 9, final: false, continues: true, ttt: 0x55, "TargetName=iqn.a\0TargetAdd"),
      nextCmdSN: 21, expStatSN: 32)
    guard case .send(let req) = a else { return XCTFail("expected a continuation request") }
    XCTAssertEqual(req.header.targetTransferTag, 0x55)
    XCTAssertEqual(req.header.initiatorTaskTag, 9)
    XCTAssertEqual(req.header.flags, 0x80)
    XCTAssertEqual(req.header.cmdSN, 21)
    XCTAssertEqual(req.data.readableBytes, 0)
    let b = try x.receive(
      textResponse(itt: 9, final: true, continues: false, ttt: 0xffff_ffff, "ress=1.2.3.4\0"), nextCmdSN: 22,
      expStatSN: 33)
    guard case .complete(let pairs) = b else { return XCTFail("expected completion") }
    XCTAssertEqual(
      try SendTargetsParser.parse(pairs),
      [
        DiscoveredTarget(targetName: "iqn.a", portals: [TargetAddress(host: "1.2.3.4")])
      ])
  }

  func testExchangeRejectsBadResponses() {
    var x = TextExchange(itt: 9)
    assertThrows(.protocolViolation) {
      _ = try x.receive(
        self.textResponse(itt: 8, final: true, continues: false, ttt: 0xffff_ffff, ""), nextCmdSN: 1, expStatSN: 1)
    }
    assertThrows(.protocolViolation) {
      _ = try x.receive(self.textResponse(itt: 9, final: true, continues: true, ttt: 1, ""), nextCmdSN: 1, expStatSN: 1)
    }
    assertThrows(.protocolViolation) {
      _ = try x.receive(
        self.textResponse(itt: 9, final: false, continues: true, ttt: 0xffff_ffff, ""), nextCmdSN: 1, expStatSN: 1)
    }
  }
}
