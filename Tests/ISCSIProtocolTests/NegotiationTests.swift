import XCTest

@testable import ISCSIProtocol

final class NegotiationTests: XCTestCase {
  func config(_ modify: (inout LoginConfiguration) -> Void = { _ in }) -> LoginConfiguration {
    var c = LoginConfiguration(initiatorName: "iqn.i", targetName: "iqn.t", isid: 0x80_0000_0001)
    modify(&c)
    return c
  }

  func negotiate(
    _ answers: [String: String], config c: LoginConfiguration? = nil
  ) throws -> NegotiatedParameters {
    var n = OperationalNegotiation(configuration: c ?? config())
    let sent = n.nextKeys(includeOffers: true)
    try n.process(sent.compactMap { kv in answers[kv.key].map { TextKeyValue(kv.key, $0) } })
    return try n.finish()
  }

  func testOffersEachKeyOnce() {
    var n = OperationalNegotiation(configuration: config())
    let first = n.nextKeys(includeOffers: true)
    XCTAssertEqual(Set(first.map(\.key)).count, first.count)
    XCTAssertTrue(first.contains(TextKeyValue("MaxRecvDataSegmentLength", "1048576")))
    XCTAssertTrue(first.contains(TextKeyValue("InitialR2T", "No")))
    XCTAssertTrue(first.contains(TextKeyValue("IFMarker", "No")))
    XCTAssertEqual(n.nextKeys(includeOffers: true), [])
  }

  func testDiscoveryOffersOnlyDigestsAndMaxRecv() {
    var n = OperationalNegotiation(
      configuration: LoginConfiguration(initiatorName: "iqn.i", targetName: nil, isid: 1))
    XCTAssertEqual(n.nextKeys(includeOffers: true).map(\.key), ["HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength"])
  }

  func testResultFunctions() throws {
    let p = try negotiate([
      "InitialR2T": "Yes",  // OR(No, Yes) = Yes
      "ImmediateData": "No",  // AND(Yes, No) = No
      "MaxBurstLength": "524288",  // min(1048576, 524288)
      "FirstBurstLength": "131072",  // min(262144, 131072)
      "MaxConnections": "4",  // min(1, 4) = 1
      "MaxOutstandingR2T": "8",  // min(1, 8) = 1
      "DefaultTime2Wait": "5",  // max(2, 5) = 5
      "DefaultTime2Retain": "10",  // min(20, 10) = 10
      "ErrorRecoveryLevel": "2",  // min(0, 2) = 0
      "DataPDUInOrder": "No",  // OR(Yes, No) = Yes
      "DataSequenceInOrder": "No",
    ])
    XCTAssertTrue(p.initialR2T)
    XCTAssertFalse(p.immediateData)
    XCTAssertEqual(p.maxBurstLength, 524288)
    XCTAssertEqual(p.firstBurstLength, 131072)
    XCTAssertEqual(p.maxConnections, 1)
    XCTAssertEqual(p.maxOutstandingR2T, 1)
    XCTAssertEqual(p.defaultTime2Wait, 5)
    XCTAssertEqual(p.defaultTime2Retain, 10)
    XCTAssertEqual(p.errorRecoveryLevel, 0)
    XCTAssertTrue(p.dataPDUInOrder)
    XCTAssertTrue(p.dataSequenceInOrder)
  }

  func testMinAndOrWithOtherSides() throws {
    let c = config {
      $0.maxBurstLength = 65536
      $0.initialR2T = false
      $0.defaultTime2Wait = 10
      $0.maxOutstandingR2T = 16
      $0.errorRecoveryLevel = 2
    }
    let p = try negotiate(
      [
        "MaxBurstLength": "262144", "InitialR2T": "No", "DefaultTime2Wait": "0", "MaxOutstandingR2T": "4",
        "ErrorRecoveryLevel": "1",
      ], config: c)
    XCTAssertEqual(p.maxBurstLength, 65536)
    XCTAssertFalse(p.initialR2T)
    XCTAssertEqual(p.defaultTime2Wait, 10)
    XCTAssertEqual(p.maxOutstandingR2T, 4)
    XCTAssertEqual(p.errorRecoveryLevel, 1)
  }

  func testFirstBurstCappedAtMaxBurst() throws {
    let p = try negotiate(["MaxBurstLength": "16384", "FirstBurstLength": "262144"])
    XCTAssertEqual(p.maxBurstLength, 16384)
    XCTAssertEqual(p.firstBurstLength, 16384)
  }

  func testDefaultsWhenNotAnswered() throws {
    let p = try negotiate([:])
    XCTAssertEqual(p.maxSendDataSegmentLength, 8192)
    XCTAssertEqual(p.maxRecvDataSegmentLength, 1_048_576)
    XCTAssertEqual(p.maxBurstLength, 262144)
    XCTAssertEqual(p.firstBurstLength, 65536)
    XCTAssertTrue(p.initialR2T)
    XCTAssertTrue(p.immediateData)
    XCTAssertEqual(p.maxOutstandingR2T, 1)
    XCTAssertEqual(p.defaultTime2Wait, 2)
    XCTAssertEqual(p.defaultTime2Retain, 20)
    XCTAssertFalse(p.headerDigest)
    XCTAssertFalse(p.dataDigest)
  }

  func testNotUnderstoodIrrelevantRejectFallBackToDefaults() throws {
    let p = try negotiate([
      "MaxBurstLength": "NotUnderstood", "FirstBurstLength": "Irrelevant", "InitialR2T": "Reject",
      "DefaultTime2Wait": "NotUnderstood",
    ])
    XCTAssertEqual(p.maxBurstLength, 262144)
    XCTAssertEqual(p.firstBurstLength, 65536)
    XCTAssertTrue(p.initialR2T)
    XCTAssertEqual(p.defaultTime2Wait, 2)
  }

  func testTargetDeclaredMaxRecvIsOurSendLimit() throws {
    let p = try negotiate(["MaxRecvDataSegmentLength": "65536"])
    XCTAssertEqual(p.maxSendDataSegmentLength, 65536)
    XCTAssertEqual(p.maxRecvDataSegmentLength, 1_048_576)
  }

  func testDigestSelection() throws {
    let c = config {
      $0.headerDigest = [.crc32c, .none]
      $0.dataDigest = [.crc32c]
    }
    var n = OperationalNegotiation(configuration: c)
    let sent = n.nextKeys(includeOffers: true)
    XCTAssertTrue(sent.contains(TextKeyValue("HeaderDigest", "CRC32C,None")))
    try n.process([TextKeyValue("HeaderDigest", "None"), TextKeyValue("DataDigest", "CRC32C")])
    let p = try n.finish()
    XCTAssertFalse(p.headerDigest)
    XCTAssertTrue(p.dataDigest)
  }

  func testDigestAnswerNotOfferedFails() {
    let c = config { $0.dataDigest = [.crc32c] }
    assertThrows(.negotiationFailed) { _ = try self.negotiate(["DataDigest": "None"], config: c) }
    assertThrows(.negotiationFailed) { _ = try self.negotiate(["DataDigest": "Reject"], config: c) }
    assertThrows(.negotiationFailed) { _ = try self.negotiate(["HeaderDigest": "MD5"]) }
    // Never answered while we require CRC32C.
    assertThrows(.negotiationFailed) { _ = try self.negotiate([:], config: c) }
  }

  func testOutOfRangeOrGarbageFails() {
    assertThrows(.negotiationFailed) { _ = try self.negotiate(["MaxBurstLength": "100"]) }
    assertThrows(.negotiationFailed) { _ = try self.negotiate(["ErrorRecoveryLevel": "3"]) }
    assertThrows(.negotiationFailed) { _ = try self.negotiate(["InitialR2T": "Maybe"]) }
  }

  func testTargetProposedKeysAnsweredOnce() throws {
    var n = OperationalNegotiation(configuration: config())
    try n.process([
      TextKeyValue("TargetPortalGroupTag", "7"), TextKeyValue("TargetAlias", "disk"),
      TextKeyValue("MaxRecvDataSegmentLength", "32768"), TextKeyValue("X-com.example.Foo", "bar"),
      TextKeyValue("MaxBurstLength", "131072"), TextKeyValue("ImmediateData", "No"),
    ])
    let next = n.nextKeys(includeOffers: true)
    // Declarations are recorded, not answered; unknown keys get NotUnderstood; negotiable
    // proposals get our result; none of them is offered again.
    XCTAssertEqual(next.filter { $0.key == "X-com.example.Foo" }, [TextKeyValue("X-com.example.Foo", "NotUnderstood")])
    XCTAssertEqual(next.filter { $0.key == "MaxBurstLength" }, [TextKeyValue("MaxBurstLength", "131072")])
    XCTAssertEqual(next.filter { $0.key == "ImmediateData" }, [TextKeyValue("ImmediateData", "No")])
    XCTAssertFalse(next.contains { $0.key == "TargetPortalGroupTag" || $0.key == "TargetAlias" })
    XCTAssertEqual(next.filter { $0.key == "MaxRecvDataSegmentLength" }.count, 1)
    // The same proposals again: nothing more is owed.
    try n.process([TextKeyValue("X-com.example.Foo", "bar"), TextKeyValue("MaxBurstLength", "131072")])
    XCTAssertEqual(n.nextKeys(includeOffers: true), [])
    let p = try n.finish()
    XCTAssertEqual(p.targetPortalGroupTag, 7)
    XCTAssertEqual(p.targetAlias, "disk")
    XCTAssertEqual(p.maxSendDataSegmentLength, 32768)
    XCTAssertEqual(p.maxBurstLength, 131072)
    XCTAssertFalse(p.immediateData)
  }

  func testDiscoveryAnswersNormalOnlyKeysIrrelevant() throws {
    var n = OperationalNegotiation(configuration: LoginConfiguration(initiatorName: "i", targetName: nil, isid: 1))
    try n.process([TextKeyValue("MaxBurstLength", "131072")])
    XCTAssertEqual(n.nextKeys(includeOffers: false), [TextKeyValue("MaxBurstLength", "Irrelevant")])
  }

  func testSummaryListsValues() throws {
    let p = try negotiate(["MaxBurstLength": "65536"])
    let s = Dictionary(p.summary, uniquingKeysWith: { a, _ in a })
    XCTAssertEqual(s["MaxBurstLength"], "65536")
    XCTAssertEqual(s["InitialR2T"], "Yes")
    XCTAssertEqual(p.summary.count, 18)
  }

  func testRandomISIDHasRandomTypeByte() {
    let isid = LoginConfiguration.randomISID(randomBytes: fixedRandom)
    XCTAssertEqual(isid, 0x80_1011_1213_14)
    XCTAssertEqual(isid >> 40, 0x80)
  }

  func testStableISIDIsTheSameForOneIdentityAndDiffersBetweenPaths() {
    let a = LoginConfiguration.stableISID(identity: "db\u{0}iqn.x:init\u{0}iqn.y:t\u{0}10.0.0.1:3260\u{0}1\u{0}\u{0}\u{0}0")
    XCTAssertEqual(
      a, LoginConfiguration.stableISID(identity: "db\u{0}iqn.x:init\u{0}iqn.y:t\u{0}10.0.0.1:3260\u{0}1\u{0}\u{0}\u{0}0"))
    XCTAssertEqual(a >> 40, 0x80, "type 10b (random), as RFC 7143 11.12.6 allows for a generated qualifier")
    XCTAssertLessThanOrEqual(a, 0xffff_ffff_ffff)
    // Another portal, another session of the same portal: another ISID.
    XCTAssertNotEqual(
      a, LoginConfiguration.stableISID(identity: "db\u{0}iqn.x:init\u{0}iqn.y:t\u{0}10.0.0.2:3260\u{0}1\u{0}\u{0}\u{0}0"))
    XCTAssertNotEqual(
      a, LoginConfiguration.stableISID(identity: "db\u{0}iqn.x:init\u{0}iqn.y:t\u{0}10.0.0.1:3260\u{0}1\u{0}\u{0}\u{0}1"))
    // SHA-256 of the identity: a fixed value, so the ISID never changes between versions.
    XCTAssertEqual(LoginConfiguration.stableISID(identity: "abc"), 0x80_ba78_16bf_8f)
  }
}
