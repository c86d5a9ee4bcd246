import XCTest

@testable import ISCSIProtocol

final class CHAPTests: XCTestCase {
  let challenge = [UInt8](0...15)
  let secret = Array("secretsecret".utf8)

  // Expected values: Python hashlib.<alg>(bytes([0x2a]) + b"secretsecret" + bytes(range(16))).hexdigest()
  func testMD5KnownVector() {
    let r = CHAP.response(algorithm: .md5, identifier: 0x2a, secret: secret, challenge: challenge)
    XCTAssertEqual(TextValue.encodeHex(r), "0x54d49338a27b0c1dd5e935c21ab005a3")
  }

  func testSHA1KnownVector() {
    let r = CHAP.response(algorithm: .sha1, identifier: 0x2a, secret: secret, challenge: challenge)
    XCTAssertEqual(TextValue.encodeHex(r), "0xb060c80c0e004a388193dd4b911b5a400ca2b931")
  }

  func testSHA256KnownVector() {
    let r = CHAP.response(algorithm: .sha256, identifier: 0x2a, secret: secret, challenge: challenge)
    XCTAssertEqual(TextValue.encodeHex(r), "0x2076dab09b25dfe7f89cdb79aa854cf8af88246b80126a0856a426662b39d903")
  }

  func testAnswerUsesTargetChosenAlgorithm() throws {
    var c = try CHAPInitiator(
      configuration: CHAPConfiguration(username: "u", secret: secret, algorithms: [.sha256, .md5]),
      randomBytes: fixedRandom)
    XCTAssertEqual(c.offeredAlgorithms, "7,5")
    let a = try c.answer(algorithm: "5", identifier: "42", challenge: TextValue.encodeHex(challenge))
    XCTAssertEqual(a.name, "u")
    XCTAssertEqual(TextValue.encodeHex(a.response), "0x54d49338a27b0c1dd5e935c21ab005a3")
    XCTAssertNil(a.challenge)
    XCTAssertEqual(a.pairs.map(\.key), ["CHAP_N", "CHAP_R"])
  }

  func testAlgorithmNotOfferedRefused() throws {
    var c = try CHAPInitiator(configuration: CHAPConfiguration(username: "u", secret: secret), randomBytes: fixedRandom)
    assertThrows(.authenticationFailed) { _ = try c.answer(algorithm: "7", identifier: "1", challenge: "0x0102") }
    assertThrows(.authenticationFailed) { _ = try c.answer(algorithm: "5", identifier: "256", challenge: "0x0102") }
  }

  func mutualConfig(targetSecret: String = "targetsecret1") -> CHAPConfiguration {
    CHAPConfiguration(
      username: "init", secret: secret, mutual: (username: "tgt", secret: Array(targetSecret.utf8)))
  }

  func testMutualChallengeGeneratedFromInjectedRandom() throws {
    var c = try CHAPInitiator(configuration: mutualConfig(), randomBytes: fixedRandom)
    let a = try c.answer(algorithm: "5", identifier: "42", challenge: TextValue.encodeHex(challenge))
    XCTAssertEqual(a.identifier, 0x10)
    XCTAssertEqual(a.challenge, Array(0x10...0x1f))
    XCTAssertEqual(a.pairs.map(\.key), ["CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"])
  }

  func testReflectedChallengeRefused() throws {
    var c = try CHAPInitiator(configuration: mutualConfig(), randomBytes: fixedRandom)
    // The target sends back the very challenge we will send it.
    let ours = TextValue.encodeHex(Array(0x10...0x1f))
    assertThrows(.authenticationFailed) { _ = try c.answer(algorithm: "5", identifier: "16", challenge: ours) }
  }

  func testIdenticalSecretsRefused() {
    assertThrows(.authenticationFailed) {
      _ = try CHAPInitiator(configuration: self.mutualConfig(targetSecret: "secretsecret"), randomBytes: fixedRandom)
    }
  }

  // Expected: hashlib.md5(bytes([16]) + b"targetsecret1" + bytes(range(0x10, 0x20))).hexdigest()
  func testMutualVerificationSuccess() throws {
    var c = try CHAPInitiator(configuration: mutualConfig(), randomBytes: fixedRandom)
    _ = try c.answer(algorithm: "5", identifier: "42", challenge: TextValue.encodeHex(challenge))
    XCTAssertNoThrow(try c.verifyTarget(name: "tgt", response: "0x5a197fc0b9033f25d85b937cd87e2836"))
  }

  func testMutualVerificationFailures() throws {
    var c = try CHAPInitiator(configuration: mutualConfig(), randomBytes: fixedRandom)
    _ = try c.answer(algorithm: "5", identifier: "42", challenge: TextValue.encodeHex(challenge))
    assertThrows(.authenticationFailed) {
      try c.verifyTarget(name: "tgt", response: "0x5a197fc0b9033f25d85b937cd87e2837")
    }
    assertThrows(.authenticationFailed) {
      try c.verifyTarget(name: "other", response: "0x5a197fc0b9033f25d85b937cd87e2836")
    }
    assertThrows(.authenticationFailed) { try c.verifyTarget(name: "tgt", response: "0x5a19") }
  }

  func testConstantTimeEqual() {
    XCTAssertTrue(CHAP.constantTimeEqual([1, 2, 3], [1, 2, 3]))
    XCTAssertFalse(CHAP.constantTimeEqual([1, 2, 3], [1, 2, 4]))
    XCTAssertFalse(CHAP.constantTimeEqual([9, 2, 3], [1, 2, 3]))
    XCTAssertFalse(CHAP.constantTimeEqual([1, 2], [1, 2, 3]))
    XCTAssertTrue(CHAP.constantTimeEqual([], []))
  }

  /// The verifier goes through the injected comparator (default: constantTimeEqual) for
  /// both the name and the response, never `==`.
  func testVerificationUsesInjectedComparator() throws {
    final class Calls: @unchecked Sendable { var count = 0 }
    let calls = Calls()
    var c = try CHAPInitiator(
      configuration: mutualConfig(), randomBytes: fixedRandom,
      compare: { a, b in
        calls.count += 1
        return CHAP.constantTimeEqual(a, b)
      })
    _ = try c.answer(algorithm: "5", identifier: "42", challenge: TextValue.encodeHex(challenge))
    try c.verifyTarget(name: "tgt", response: "0x5a197fc0b9033f25d85b937cd87e2836")
    XCTAssertEqual(calls.count, 2)
    // Even when the name is wrong, the response comparison still runs (no early exit).
    calls.count = 0
    assertThrows(.authenticationFailed) { try c.verifyTarget(name: "x", response: "0x00") }
    XCTAssertEqual(calls.count, 2)
  }

  func testSecretsNeverInDescriptionsOrErrors() throws {
    let config = mutualConfig()
    XCTAssertFalse(String(describing: config).contains("secretsecret"))
    XCTAssertFalse(String(reflecting: config).contains("targetsecret1"))
    var c = try CHAPInitiator(configuration: config, randomBytes: fixedRandom)
    _ = try c.answer(algorithm: "5", identifier: "42", challenge: TextValue.encodeHex(challenge))
    do {
      try c.verifyTarget(name: "tgt", response: "0x00")
      XCTFail("expected failure")
    } catch let e as ISCSIError {
      XCTAssertFalse(e.description.contains("secret1"))
      XCTAssertFalse(e.description.contains("secretsecret"))
    }
    do {
      _ = try CHAPInitiator(configuration: mutualConfig(targetSecret: "secretsecret"))
      XCTFail("expected failure")
    } catch let e as ISCSIError {
      XCTAssertFalse(e.description.contains("secretsecret"))
    }
  }
}
