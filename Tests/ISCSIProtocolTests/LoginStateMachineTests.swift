import NIOCore
import XCTest

@testable import ISCSIProtocol

final class LoginStateMachineTests: XCTestCase {
  let itt: UInt32 = 0x0000_0007

  func machine(chap: CHAPConfiguration? = nil, targetName: String? = "iqn.2024-01.test:disk") -> LoginStateMachine {
    let c = LoginConfiguration(
      initiatorName: "iqn.2024-01.test:init", targetName: targetName, isid: 0x80_1234_5678_9a, cid: 3, chap: chap)
    return LoginStateMachine(configuration: c, initialCmdSN: 55, itt: itt, randomBytes: fixedRandom)
  }

  func testFirstRequestHeaderAndKeysWithoutCHAP() throws {
    var m = machine()
    let req = try m.start()
    let h = req.header
    var encoded = ByteBuffer()
    h.write(to: &encoded)
    XCTAssertEqual(encoded.getInteger(at: 0, as: UInt8.self), 0x43)  // I bit + opcode 0x03
    XCTAssertEqual(h.flags, 0x81)  // T, CSG=0, NSG=1
    XCTAssertEqual(h.byte2, 0)
    XCTAssertEqual(h.byte3, 0)
    XCTAssertEqual(h.isid, 0x80_1234_5678_9a)
    XCTAssertEqual(h.tsih, 0)
    XCTAssertEqual(h.initiatorTaskTag, itt)
    XCTAssertEqual(h.cid, 3)
    XCTAssertEqual(h.cmdSN, 55)
    XCTAssertEqual(h.dataSegmentLength, UInt32(req.data.readableBytes))
    XCTAssertEqual(
      try keys(of: req),
      [
        TextKeyValue("InitiatorName", "iqn.2024-01.test:init"), TextKeyValue("TargetName", "iqn.2024-01.test:disk"),
        TextKeyValue("SessionType", "Normal"), TextKeyValue("AuthMethod", "None"),
      ])
  }

  func testDiscoveryFirstRequestHasNoTargetName() throws {
    var m = machine(targetName: nil)
    let d = try dict(try m.start())
    XCTAssertNil(d["TargetName"])
    XCTAssertEqual(d["SessionType"], "Discovery")
  }

  func testFullLoginWithoutCHAP() throws {
    var m = machine()
    var t = FakeTarget()
    let r1 = try m.start()
    let a1 = try m.receive(
      t.response(
        to: r1, transit: true, nsg: 1,
        keys: [TextKeyValue("AuthMethod", "None"), TextKeyValue("TargetPortalGroupTag", "1")]))
    let r2 = try XCTUnwrap(a1.sentPDU)
    XCTAssertEqual(r2.header.flags, 0x87)  // T, CSG=1, NSG=3
    XCTAssertEqual(r2.header.cmdSN, 55)  // unchanged during login
    XCTAssertEqual(r2.header.expStatSN, 101)
    let offers = try dict(r2)
    XCTAssertEqual(offers["MaxRecvDataSegmentLength"], "1048576")
    XCTAssertEqual(offers["ImmediateData"], "Yes")
    XCTAssertNil(offers["AuthMethod"])

    // The target answers some keys, proposes one of its own, and stays (T=0).
    let a2 = try m.receive(
      t.response(
        to: r2, transit: false,
        keys: [
          TextKeyValue("MaxBurstLength", "262144"), TextKeyValue("InitialR2T", "Yes"),
          TextKeyValue("MaxRecvDataSegmentLength", "65536"), TextKeyValue("X-vendor.Thing", "1"),
        ]))
    let r3 = try XCTUnwrap(a2.sentPDU)
    XCTAssertEqual(r3.header.flags, 0x87)
    XCTAssertEqual(r3.header.expStatSN, 102)
    XCTAssertEqual(try keys(of: r3), [TextKeyValue("X-vendor.Thing", "NotUnderstood")])

    let a3 = try m.receive(t.response(to: r3, transit: true, nsg: 3, keys: [TextKeyValue("ImmediateData", "No")]))
    guard case .complete(let p, let done) = a3 else { return XCTFail("expected completion, got \(a3)") }
    XCTAssertEqual(p.tsih, 0x1234)
    XCTAssertEqual(p.maxBurstLength, 262144)
    XCTAssertTrue(p.initialR2T)
    XCTAssertFalse(p.immediateData)
    XCTAssertEqual(p.maxSendDataSegmentLength, 65536)
    XCTAssertEqual(p.targetPortalGroupTag, 1)
    XCTAssertEqual(done, LoginCompletion(tsih: 0x1234, statSN: 102, expCmdSN: 55, maxCmdSN: 86))
    XCTAssertEqual(done.expStatSN, 103)
    XCTAssertEqual(m.stage, .fullFeaturePhase)
  }

  func testNoKeyIsSentTwiceDuringLogin() throws {
    var m = machine()
    var t = FakeTarget()
    var sent: [String] = []
    var req = try m.start()
    sent += try keys(of: req).map(\.key)
    req = try XCTUnwrap(
      try m.receive(t.response(to: req, transit: true, nsg: 1, keys: [TextKeyValue("AuthMethod", "None")])).sentPDU)
    sent += try keys(of: req).map(\.key)
    for _ in 0..<3 {
      req = try XCTUnwrap(try m.receive(t.response(to: req, transit: false, keys: [TextKeyValue("X-a", "1")])).sentPDU)
      sent += try keys(of: req).map(\.key)
    }
    XCTAssertEqual(sent.count, Set(sent).count, "duplicates in \(sent)")
    XCTAssertEqual(sent.filter { $0 == "X-a" }.count, 1)
  }

  func testOneWayCHAPLogin() throws {
    let chap = CHAPConfiguration(username: "alice", secret: Array("secretsecret".utf8))
    var m = machine(chap: chap)
    var t = FakeTarget()
    let r1 = try m.start()
    XCTAssertEqual(r1.header.flags, 0x00)  // CSG=0, T=0 while CHAP runs
    XCTAssertEqual(try dict(r1)["AuthMethod"], "CHAP,None")

    let r2 = try XCTUnwrap(try m.receive(t.response(to: r1, transit: false, keys: [TextKeyValue("AuthMethod", "CHAP")])).sentPDU)
    XCTAssertEqual(try keys(of: r2), [TextKeyValue("CHAP_A", "5")])
    XCTAssertEqual(r2.header.flags, 0x00)

    let r3 = try XCTUnwrap(
      try m.receive(
        t.response(
          to: r2, transit: false,
          keys: [
            TextKeyValue("CHAP_A", "5"), TextKeyValue("CHAP_I", "42"),
            TextKeyValue("CHAP_C", "0x000102030405060708090a0b0c0d0e0f"),
          ])
      ).sentPDU)
    // Same vector as CHAPTests.testMD5KnownVector.
    XCTAssertEqual(
      try keys(of: r3),
      [TextKeyValue("CHAP_N", "alice"), TextKeyValue("CHAP_R", "0x54d49338a27b0c1dd5e935c21ab005a3")])
    XCTAssertEqual(r3.header.flags, 0x81)  // T, CSG=0, NSG=1

    let r4 = try XCTUnwrap(try m.receive(t.response(to: r3, transit: true, nsg: 1)).sentPDU)
    XCTAssertEqual(r4.header.flags, 0x87)
    let a = try m.receive(t.response(to: r4, transit: true, nsg: 3))
    guard case .complete = a else { return XCTFail("expected completion") }
  }

  func mutualSetup() throws -> (LoginStateMachine, FakeTarget, ISCSIPDU) {
    let chap = CHAPConfiguration(
      username: "alice", secret: Array("secretsecret".utf8), mutual: (username: "tgt", secret: Array("targetsecret1".utf8)))
    var m = machine(chap: chap)
    var t = FakeTarget()
    let r1 = try m.start()
    let r2 = try XCTUnwrap(try m.receive(t.response(to: r1, transit: false, keys: [TextKeyValue("AuthMethod", "CHAP")])).sentPDU)
    let r3 = try XCTUnwrap(
      try m.receive(
        t.response(
          to: r2, transit: false,
          keys: [
            TextKeyValue("CHAP_A", "5"), TextKeyValue("CHAP_I", "42"),
            TextKeyValue("CHAP_C", "0x000102030405060708090a0b0c0d0e0f"),
          ])
      ).sentPDU)
    return (m, t, r3)
  }

  func testMutualCHAPLogin() throws {
    var (m, t, r3) = try mutualSetup()
    let d = try dict(r3)
    XCTAssertEqual(d["CHAP_I"], "16")
    XCTAssertEqual(d["CHAP_C"], "0x101112131415161718191a1b1c1d1e1f")
    XCTAssertEqual(r3.header.flags, 0x81)
    // Target proves itself: md5(bytes([16]) + b"targetsecret1" + bytes(range(0x10, 0x20))).
    let r4 = try XCTUnwrap(
      try m.receive(
        t.response(
          to: r3, transit: true, nsg: 1,
          keys: [TextKeyValue("CHAP_N", "tgt"), TextKeyValue("CHAP_R", "0x5a197fc0b9033f25d85b937cd87e2836")])
      ).sentPDU)
    XCTAssertEqual(r4.header.flags, 0x87)
    guard case .complete = try m.receive(t.response(to: r4, transit: true, nsg: 3)) else {
      return XCTFail("expected completion")
    }
  }

  func testMutualCHAPWrongTargetResponse() throws {
    var (m, t, r3) = try mutualSetup()
    assertThrows(.authenticationFailed) {
      _ = try m.receive(
        t.response(
          to: r3, transit: true, nsg: 1,
          keys: [TextKeyValue("CHAP_N", "tgt"), TextKeyValue("CHAP_R", "0x5a197fc0b9033f25d85b937cd87e2800")]))
    }
  }

  func testMutualCHAPTargetSkipsProof() throws {
    var (m, t, r3) = try mutualSetup()
    assertThrows(.authenticationFailed) { _ = try m.receive(t.response(to: r3, transit: true, nsg: 1)) }
  }

  func testMutualCHAPTargetDeclinesCHAP() throws {
    let chap = CHAPConfiguration(
      username: "alice", secret: Array("secretsecret".utf8), mutual: (username: "tgt", secret: Array("targetsecret1".utf8)))
    var m = machine(chap: chap)
    var t = FakeTarget()
    let r1 = try m.start()
    assertThrows(.authenticationFailed) {
      _ = try m.receive(t.response(to: r1, transit: false, keys: [TextKeyValue("AuthMethod", "None")]))
    }
  }

  func testARefusalRightAfterCHAPAlgorithmsSuggestsAnotherAlgorithm() throws {
    let chap = CHAPConfiguration(username: "alice", secret: Array("secretsecret".utf8), algorithms: [.sha256])
    var m = machine(chap: chap)
    var t = FakeTarget()
    let r1 = try m.start()
    let r2 = try XCTUnwrap(try m.receive(t.response(to: r1, transit: false, keys: [TextKeyValue("AuthMethod", "CHAP")])).sentPDU)
    XCTAssertEqual(try keys(of: r2), [TextKeyValue("CHAP_A", "7")])
    do {
      _ = try m.receive(t.response(to: r2, transit: false, statusClass: 2, statusDetail: 0))
      XCTFail("a refusal must fail the login")
    } catch let e as ISCSIError {
      XCTAssertEqual(e.code, .authenticationFailed)
      XCTAssertEqual(
        e.message,
        "login refused by target: initiator error (status 0x0200) when offered CHAP algorithms sha256;"
          + " the target may support none of them: try --chap-algorithms md5 (chap_algorithms in a volume file)")
    }
  }

  func testTargetDemandsCHAPWithoutCredentials() throws {
    var m = machine()
    var t = FakeTarget()
    let r1 = try m.start()
    assertThrows(.authenticationFailed) {
      _ = try m.receive(t.response(to: r1, transit: false, keys: [TextKeyValue("AuthMethod", "CHAP")]))
    }
  }

  /// The message a target that wants CHAP gets, whichever way it says so.
  func answer(_ method: String, chap: CHAPConfiguration? = nil) throws -> String? {
    var m = machine(chap: chap)
    var t = FakeTarget()
    let r1 = try m.start()
    do {
      _ = try m.receive(t.response(to: r1, transit: false, keys: [TextKeyValue("AuthMethod", method)]))
      return nil
    } catch let e as ISCSIError {
      XCTAssertEqual(e.code, .authenticationFailed)
      return e.message
    }
  }

  func testCHAPRequiredWithoutCredentialsSaysSoWhateverTheTargetAnswers() throws {
    let wanted = "authentication required: the target wants CHAP, and no CHAP user/secret is configured"
    XCTAssertEqual(try answer("CHAP"), wanted)
    XCTAssertEqual(try answer("Reject"), wanted, "Reject is an answer, never a method name")
    XCTAssertEqual(
      try answer("SRP"), "authentication required: the target wants AuthMethod SRP, which lunbridge does not offer")
    let chap = CHAPConfiguration(username: "alice", secret: Array("secretsecret".utf8))
    XCTAssertEqual(try answer("Reject", chap: chap), "authentication failed: the target refused both AuthMethod CHAP and None")
    XCTAssertFalse(try XCTUnwrap(answer("SRP", chap: chap)).contains("Reject"))
  }

  func testOnlyTheFirstAnswerToAuthMethodNoneIsAwaitedAsSuch() throws {
    var m = machine()
    XCTAssertFalse(m.awaitingAnswerToAuthMethodNone, "nothing sent yet")
    var t = FakeTarget()
    let r1 = try m.start()
    XCTAssertTrue(m.awaitingAnswerToAuthMethodNone, "a target closing now wants CHAP")
    _ = try m.receive(t.response(to: r1, transit: true, nsg: 1, keys: [TextKeyValue("AuthMethod", "None")]))
    XCTAssertFalse(m.awaitingAnswerToAuthMethodNone, "None accepted: a close now is something else")
    var withCHAP = machine(chap: CHAPConfiguration(username: "alice", secret: Array("secretsecret".utf8)))
    _ = try withCHAP.start()
    XCTAssertFalse(withCHAP.awaitingAnswerToAuthMethodNone, "CHAP,None offered")
  }

  func failure(_ cls: UInt8, _ detail: UInt8) throws -> ISCSIError? {
    var m = machine()
    var t = FakeTarget()
    let r1 = try m.start()
    do {
      _ = try m.receive(t.response(to: r1, transit: false, statusClass: cls, statusDetail: detail))
      return nil
    } catch let e as ISCSIError {
      return e
    }
  }

  func testStatusMapping() throws {
    XCTAssertEqual(try failure(2, 0x01)?.code, .authenticationFailed)
    XCTAssertTrue(
      try failure(2, 0x01)?.message.hasPrefix("authentication required: the target wants CHAP") ?? false,
      "refused with no credentials configured: CHAP is what is missing")
    XCTAssertEqual(try failure(2, 0x02)?.code, .authenticationFailed)
    XCTAssertEqual(try failure(2, 0x03)?.code, .targetNotFound)
    XCTAssertEqual(try failure(2, 0x04)?.code, .targetNotFound)
    XCTAssertEqual(try failure(2, 0x06)?.code, .loginFailed)
    XCTAssertTrue(try failure(2, 0x06)?.message.contains("too many connections") ?? false)
    XCTAssertEqual(try failure(3, 0x01)?.code, .loginFailed)
    XCTAssertTrue(try failure(3, 0x01)?.message.contains("service unavailable") ?? false)
    XCTAssertEqual(try failure(9, 0x00)?.code, .loginFailed)
  }

  func redirect(_ address: String, detail: UInt8 = 1) throws -> TargetAddress? {
    var m = machine()
    var t = FakeTarget()
    let r1 = try m.start()
    let a = try m.receive(
      t.response(to: r1, transit: false, keys: [TextKeyValue("TargetAddress", address)], statusClass: 1, statusDetail: detail))
    if case .redirect(let addr) = a { return addr }
    return nil
  }

  func testRedirects() throws {
    XCTAssertEqual(
      try redirect("192.168.1.5:3261,2"),
      TargetAddress(host: "192.168.1.5", port: 3261, portalGroupTag: 2, permanent: false))
    XCTAssertEqual(
      try redirect("[fe80::1:2]:3262,7", detail: 2),
      TargetAddress(host: "fe80::1:2", port: 3262, portalGroupTag: 7, permanent: true))
    XCTAssertEqual(try redirect("storage.example.com"), TargetAddress(host: "storage.example.com", port: 3260))
    XCTAssertEqual(try redirect("[::1]"), TargetAddress(host: "::1", port: 3260))
    XCTAssertEqual(try redirect("host,3"), TargetAddress(host: "host", port: 3260, portalGroupTag: 3))
    XCTAssertEqual(LoginStateMachine.maxRedirects, 8)
  }

  func testTargetAddressRejectsGarbage() {
    assertThrows(.protocolViolation) { _ = try TargetAddress(parsing: "host:port") }
    assertThrows(.protocolViolation) { _ = try TargetAddress(parsing: "[::1") }
    assertThrows(.protocolViolation) { _ = try TargetAddress(parsing: "host:70000") }
    assertThrows(.protocolViolation) { _ = try TargetAddress(parsing: ":3260") }
  }

  func testRedirectWithoutAddressIsViolation() throws {
    var m = machine()
    var t = FakeTarget()
    let r1 = try m.start()
    assertThrows(.protocolViolation) { _ = try m.receive(t.response(to: r1, transit: false, statusClass: 1, statusDetail: 1)) }
  }

  func testRoundTripBound() throws {
    var m = machine()
    var t = FakeTarget()
    var req = try m.start()
    var rounds = 0
    do {
      while true {
        let a = try m.receive(t.response(to: req, transit: false))
        req = try XCTUnwrap(a.sentPDU)
        XCTAssertEqual(req.header.flags, 0x81)  // we keep asking to transit
        rounds += 1
        if rounds > 100 { return XCTFail("no bound") }
      }
    } catch let e as ISCSIError {
      XCTAssertEqual(e.code, .negotiationFailed)
    }
    XCTAssertEqual(rounds, LoginStateMachine.maxRoundTrips - 1)
  }

  func testWrongOpcodeITTVersionStage() throws {
    var t = FakeTarget()
    do {
      var m = machine()
      let r1 = try m.start()
      var bad = t.response(to: r1, transit: true, nsg: 1)
      bad.header.opcode = .textResponse
      assertThrows(.protocolViolation) { _ = try m.receive(bad) }
    }
    do {
      var m = machine()
      let r1 = try m.start()
      assertThrows(.protocolViolation) { _ = try m.receive(t.response(to: r1, transit: true, nsg: 1, itt: 99)) }
    }
    do {
      var m = machine()
      let r1 = try m.start()
      assertThrows(.protocolViolation) { _ = try m.receive(t.response(to: r1, transit: true, nsg: 1, version: 1)) }
    }
    do {
      var m = machine()
      let r1 = try m.start()
      assertThrows(.protocolViolation) { _ = try m.receive(t.response(to: r1, transit: true, csg: 1, nsg: 3)) }
    }
    do {
      // NSG beyond what we asked for (we asked for 1).
      var m = machine()
      let r1 = try m.start()
      assertThrows(.protocolViolation) { _ = try m.receive(t.response(to: r1, transit: true, nsg: 3)) }
    }
    do {
      // T set although our request had T=0 (CHAP in progress).
      var m = machine(chap: CHAPConfiguration(username: "u", secret: [1, 2, 3]))
      let r1 = try m.start()
      assertThrows(.protocolViolation) {
        _ = try m.receive(t.response(to: r1, transit: true, nsg: 1, keys: [TextKeyValue("AuthMethod", "None")]))
      }
    }
    do {
      // A response with no request outstanding.
      var m = machine()
      let r1 = try m.start()
      assertThrows(.protocolViolation) { _ = try m.receive(t.response(to: r1, transit: true, nsg: 1, version: 1)) }
      assertThrows(.protocolViolation) { _ = try m.receive(t.response(to: r1, transit: true, nsg: 1)) }
    }
  }

  func testContinuedLoginResponse() throws {
    var m = machine()
    var t = FakeTarget()
    let r1 = try m.start()
    let r2 = try XCTUnwrap(try m.receive(t.response(to: r1, transit: true, nsg: 1)).sentPDU)
    // The target splits its answer across two PDUs (C bit).
    let a = try m.receive(t.response(to: r2, transit: false, continues: true, raw: Array("MaxBurstLen".utf8)))
    let empty = try XCTUnwrap(a.sentPDU)
    XCTAssertEqual(empty.data.readableBytes, 0)
    XCTAssertEqual(empty.header.flags, 0x87)  // CSG=1, C=0, T and NSG=3 as before
    let done = try m.receive(t.response(to: empty, transit: true, nsg: 3, raw: Array("gth=16384\0".utf8)))
    guard case .complete(let p, _) = done else { return XCTFail("expected completion") }
    XCTAssertEqual(p.maxBurstLength, 16384)
    XCTAssertEqual(p.firstBurstLength, 16384)
  }

  func testFinalResponseNeedsTSIH() throws {
    var m = machine()
    var t = FakeTarget()
    t.tsih = 0
    let r1 = try m.start()
    let r2 = try XCTUnwrap(try m.receive(t.response(to: r1, transit: true, nsg: 1)).sentPDU)
    assertThrows(.protocolViolation) { _ = try m.receive(t.response(to: r2, transit: true, nsg: 3)) }
  }

  func testDiscoveryLoginSendsOnlyDiscoveryKeys() throws {
    var m = machine(targetName: nil)
    var t = FakeTarget()
    let r1 = try m.start()
    let r2 = try XCTUnwrap(try m.receive(t.response(to: r1, transit: true, nsg: 1)).sentPDU)
    XCTAssertEqual(try keys(of: r2).map(\.key), ["HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength"])
    guard case .complete(let p, _) = try m.receive(t.response(to: r2, transit: true, nsg: 3)) else {
      return XCTFail("expected completion")
    }
    XCTAssertEqual(p.maxSendDataSegmentLength, 8192)
  }
}
