import Crypto

/// A source of random bytes: `count` in, `count` bytes out. Injected so tests are
/// deterministic; the default draws from `SystemRandomNumberGenerator`.
public typealias RandomBytes = @Sendable (Int) -> [UInt8]

public let systemRandomBytes: RandomBytes = { count in
  var rng = SystemRandomNumberGenerator()
  return (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
}

/// CHAP digest algorithms, by the CHAP_A numbers of the IANA PPP authentication
/// algorithm registry (RFC 7143 section 12.1.3 names 5 = MD5; 6, 7, 8 are the later
/// SHA-1, SHA-256 and SHA3-256 registrations that Linux LIO and others accept).
/// SHA3-256 is absent: swift-crypto 3.12 has no SHA3.
public enum CHAPAlgorithm: Int, Sendable, CaseIterable, CustomStringConvertible {
  case md5 = 5
  case sha1 = 6
  case sha256 = 7

  public var digestLength: Int {
    switch self {
    case .md5: return Insecure.MD5.byteCount
    case .sha1: return Insecure.SHA1.byteCount
    case .sha256: return SHA256.byteCount
    }
  }

  public func hash(_ bytes: [UInt8]) -> [UInt8] {
    switch self {
    case .md5: return Array(Insecure.MD5.hash(data: bytes))
    case .sha1: return Array(Insecure.SHA1.hash(data: bytes))
    case .sha256: return Array(SHA256.hash(data: bytes))
    }
  }

  public var description: String {
    switch self {
    case .md5: return "MD5"
    case .sha1: return "SHA-1"
    case .sha256: return "SHA-256"
    }
  }
}

/// CHAP credentials. `description` never shows the secrets.
public struct CHAPConfiguration: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
  public var username: String
  public var secret: [UInt8]
  /// Offered in this order of preference in CHAP_A (RFC 7143 section 12.1.3).
  public var algorithms: [CHAPAlgorithm]
  /// The name and secret the target must prove (mutual CHAP), or nil for one-way.
  public var mutual: (username: String, secret: [UInt8])?

  public init(
    username: String, secret: [UInt8], algorithms: [CHAPAlgorithm] = [.md5],
    mutual: (username: String, secret: [UInt8])? = nil
  ) {
    self.username = username
    self.secret = secret
    self.algorithms = algorithms
    self.mutual = mutual
  }

  public var description: String {
    var s = "CHAP(user: \(username), algorithms: \(algorithms.map(\.description).joined(separator: ",")))"
    if let m = mutual { s += " mutual(target user: \(m.username))" }
    return s
  }
  public var debugDescription: String { description }
}

public enum CHAP {
  /// RFC 1994 section 4.1: Response = H(Identifier || secret || Challenge).
  public static func response(
    algorithm: CHAPAlgorithm, identifier: UInt8, secret: [UInt8], challenge: [UInt8]
  ) -> [UInt8] {
    algorithm.hash([identifier] + secret + challenge)
  }

  /// Compares in time that depends only on the lengths, never on where the first
  /// difference is (the lengths are public: they are the digest length).
  public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for i in 0..<a.count { diff |= a[i] ^ b[i] }
    return diff == 0
  }
}

/// What the initiator sends in answer to the target's CHAP_A/CHAP_I/CHAP_C.
public struct CHAPAnswer: Sendable, Equatable {
  public var name: String
  public var response: [UInt8]
  /// Set for mutual CHAP: our CHAP_I and CHAP_C.
  public var identifier: UInt8?
  public var challenge: [UInt8]?

  public var pairs: [TextKeyValue] {
    var p = [TextKeyValue("CHAP_N", name), TextKeyValue("CHAP_R", TextValue.encodeHex(response))]
    if let i = identifier, let c = challenge {
      p.append(TextKeyValue("CHAP_I", String(i)))
      p.append(TextKeyValue("CHAP_C", TextValue.encodeHex(c)))
    }
    return p
  }
}

/// The initiator side of CHAP (RFC 7143 section 12.1.3, RFC 1994), pure: it is given the
/// target's values and returns ours.
public struct CHAPInitiator: Sendable {
  public let configuration: CHAPConfiguration
  public private(set) var algorithm: CHAPAlgorithm?
  /// Our challenge for mutual CHAP, drawn when the exchange starts so a target that sends
  /// it back to us (reflection) is caught.
  public let ourIdentifier: UInt8?
  public let ourChallenge: [UInt8]?
  private let compare: @Sendable ([UInt8], [UInt8]) -> Bool

  /// Throws when the configuration is unsafe: RFC 7143 section 9.2.1 forbids using the
  /// same secret for initiator and target authentication.
  public init(
    configuration: CHAPConfiguration, randomBytes: @escaping RandomBytes = systemRandomBytes,
    compare: @escaping @Sendable ([UInt8], [UInt8]) -> Bool = { CHAP.constantTimeEqual($0, $1) }
  ) throws {
    guard !configuration.algorithms.isEmpty else {
      throw ISCSIError(.invalidArgument, "CHAP configured with no algorithms")
    }
    guard !configuration.secret.isEmpty else {
      throw ISCSIError(.invalidArgument, "CHAP configured with an empty secret")
    }
    self.configuration = configuration
    self.compare = compare
    if let m = configuration.mutual {
      // RFC 7143 section 9.2.1: a secret used to authenticate initiators MUST NOT be used to
      // authenticate targets (it would let a target reflect our own answers at us).
      guard !CHAP.constantTimeEqual(m.secret, configuration.secret) else {
        throw ISCSIError(
          .authenticationFailed,
          "authentication failed (CHAP): the mutual (target) secret must differ from the initiator secret (RFC 7143 section 9.2.1)"
        )
      }
      guard !m.secret.isEmpty else {
        throw ISCSIError(.invalidArgument, "mutual CHAP configured with an empty secret")
      }
      self.ourIdentifier = randomBytes(1).first ?? 0
      // Challenge length: the digest length of the strongest algorithm we offer, at least 16
      // bytes (RFC 7143 section 12.1.3 allows up to 1024).
      let length = max(16, configuration.algorithms.map(\.digestLength).max() ?? 16)
      let c = randomBytes(length)
      guard c.count == length else { throw ISCSIError(.invalidArgument, "random source returned too few bytes") }
      self.ourChallenge = c
    } else {
      self.ourIdentifier = nil
      self.ourChallenge = nil
    }
  }

  /// CHAP_A value we offer: our algorithms in preference order (RFC 7143 section 12.1.3).
  public var offeredAlgorithms: String {
    configuration.algorithms.map { String($0.rawValue) }.joined(separator: ",")
  }

  /// Handles the target's CHAP_A, CHAP_I and CHAP_C and returns CHAP_N, CHAP_R (and our
  /// CHAP_I, CHAP_C for mutual CHAP).
  public mutating func answer(algorithm a: String, identifier i: String, challenge c: String) throws -> CHAPAnswer {
    guard let number = Int(a), let alg = CHAPAlgorithm(rawValue: number), configuration.algorithms.contains(alg)
    else {
      throw ISCSIError(
        .authenticationFailed, "authentication failed (CHAP): target chose CHAP_A=\(a), which we did not offer")
    }
    guard let idNumber = Int(i), (0...255).contains(idNumber) else {
      throw ISCSIError(.authenticationFailed, "authentication failed (CHAP): invalid CHAP_I from target")
    }
    let challenge: [UInt8]
    do {
      challenge = try TextValue.decodeBinary(c)
    } catch {
      throw ISCSIError(.authenticationFailed, "authentication failed (CHAP): undecodable CHAP_C from target")
    }
    // RFC 7143 section 12.1.3: the challenge is at most 1024 bytes; an empty one proves nothing.
    guard !challenge.isEmpty, challenge.count <= TextKeys.maxCHAPBinaryLength else {
      throw ISCSIError(
        .authenticationFailed, "authentication failed (CHAP): target challenge of \(challenge.count) bytes")
    }
    // RFC 7143 section 9.2.1: a challenge that reflects ours would make us compute the answer
    // the target owes us.
    if let ours = ourChallenge, CHAP.constantTimeEqual(ours, challenge) {
      throw ISCSIError(
        .authenticationFailed, "authentication failed (CHAP): target sent back our own challenge (reflection)")
    }
    algorithm = alg
    let r = CHAP.response(
      algorithm: alg, identifier: UInt8(idNumber), secret: configuration.secret, challenge: challenge)
    return CHAPAnswer(
      name: configuration.username, response: r, identifier: ourIdentifier, challenge: ourChallenge)
  }

  /// Mutual CHAP: checks the target's CHAP_N and CHAP_R against our challenge.
  public func verifyTarget(name: String, response: String) throws {
    guard let m = configuration.mutual, let id = ourIdentifier, let c = ourChallenge, let alg = algorithm else {
      throw ISCSIError(.protocolViolation, "target sent CHAP_N/CHAP_R but mutual CHAP was not started")
    }
    let got: [UInt8]
    do {
      got = try TextValue.decodeBinary(response)
    } catch {
      throw ISCSIError(.authenticationFailed, "authentication failed (CHAP): undecodable CHAP_R from target")
    }
    let expected = CHAP.response(algorithm: alg, identifier: id, secret: m.secret, challenge: c)
    // Both comparisons always run, so the time says nothing about which one failed.
    let nameOK = compare(Array(name.utf8), Array(m.username.utf8))
    let responseOK = compare(got, expected)
    guard nameOK && responseOK else {
      throw ISCSIError(
        .authenticationFailed,
        nameOK
          ? "authentication failed (CHAP): target's CHAP response is wrong (mutual authentication)"
          : "authentication failed (CHAP): target's CHAP name does not match the configured target user")
    }
  }
}
