import NIOCore

/// What the connection must do after a Login Response.
public enum LoginAction: Sendable {
  /// Send this Login Request and wait for the next response.
  case send(ISCSIPDU)
  /// The full feature phase starts with the next PDU (RFC 7143 section 6.3).
  case complete(NegotiatedParameters, LoginCompletion)
  /// Close this connection and log in at the given portal (RFC 7143 section 11.13.5,
  /// Status-Class 1). Bound the chain with `LoginStateMachine.maxRedirects`.
  case redirect(TargetAddress)
}

/// Sequence numbers from the final Login Response, to open the session's command window
/// (RFC 7143 section 11.13.4: StatSN, ExpCmdSN, MaxCmdSN).
public struct LoginCompletion: Sendable, Equatable {
  public var tsih: UInt16
  public var statSN: UInt32
  public var expCmdSN: UInt32
  public var maxCmdSN: UInt32
  /// The ExpStatSN for our next PDU.
  public var expStatSN: UInt32 { statSN &+ 1 }

  public init(tsih: UInt16, statSN: UInt32, expCmdSN: UInt32, maxCmdSN: UInt32) {
    self.tsih = tsih
    self.statSN = statSN
    self.expCmdSN = expCmdSN
    self.maxCmdSN = maxCmdSN
  }
}

/// The initiator side of the login phase of one connection (RFC 7143 sections 6.3, 11.12,
/// 11.13), pure: `start()` gives the first Login Request, `receive(_:)` turns each Login
/// Response into the next action.
///
/// Stages. We always begin in SecurityNegotiation (CSG=0), as libiscsi and open-iscsi do:
/// - without CHAP: `AuthMethod=None` with T=1, NSG=1. tgt, LIO and SCST accept it, and a
///   target that demands authentication says so plainly (status 0x0201) instead of failing
///   later in a stage it did not expect. Starting directly in the operational stage is
///   legal (section 6.3) but some targets refuse it when they have any auth configured.
/// - with CHAP: `AuthMethod=CHAP,None` with T=0, then CHAP_A, then CHAP_N/CHAP_R (and our
///   CHAP_I/CHAP_C for mutual) with T=1, NSG=1 (section 12.1.3).
/// Then LoginOperationalNegotiation (CSG=1) with every operational key once and T=1, NSG=3.
public struct LoginStateMachine: Sendable {
  /// Login round trips allowed before we give up on a target that never transits.
  public static let maxRoundTrips = 16
  /// Guidance for the connection layer: redirects to follow before `.redirectLoop`.
  public static let maxRedirects = 8
  /// During login the target accepts 8192-byte data segments (RFC 7143 section 13.12).
  static let loginSegmentLimit = 8192

  private enum Auth {
    /// No CHAP configured; AuthMethod=None sent.
    case none
    /// AuthMethod=CHAP,None sent, waiting for the target's choice.
    case methodOffered
    /// CHAP_A sent, waiting for CHAP_A/CHAP_I/CHAP_C.
    case algorithmsOffered
    /// CHAP_N/CHAP_R sent; for mutual CHAP waiting for the target's CHAP_N/CHAP_R.
    case responded
    /// Done (the target chose None, or CHAP finished including mutual verification).
    case done
  }

  private enum Phase {
    case idle, awaitingResponse, finished
  }

  public let configuration: LoginConfiguration
  public let initiatorTaskTag: UInt32
  public let cmdSN: UInt32
  public private(set) var stage: LoginStage = .securityNegotiation
  public private(set) var roundTrips = 0

  private var phase: Phase = .idle
  private var auth: Auth
  private var chap: CHAPInitiator?
  private var negotiation: OperationalNegotiation
  private var expStatSN: UInt32 = 0
  private var lastRequestTransit = false
  private var lastRequestNSG: LoginStage? = nil
  private var accumulator = TextAccumulator()

  public init(
    configuration: LoginConfiguration, initialCmdSN: UInt32, itt: UInt32,
    randomBytes: @escaping RandomBytes = systemRandomBytes
  ) {
    self.configuration = configuration
    self.cmdSN = initialCmdSN
    self.initiatorTaskTag = itt
    self.negotiation = OperationalNegotiation(configuration: configuration)
    self.auth = configuration.chap == nil ? .none : .methodOffered
    self.randomBytes = randomBytes
  }

  private let randomBytes: RandomBytes

  /// The error that says what the target wants from us: CHAP when none is configured.
  public static let chapRequired = ISCSIError(
    .authenticationFailed, "authentication required: the target wants CHAP, and no CHAP user/secret is configured")

  /// True while our first offer, AuthMethod=None without credentials, waits for its
  /// answer. A target that closes the connection now (LIO with authentication=1 does,
  /// without a Login Response) is asking for CHAP: see `chapRequired`.
  public var awaitingAnswerToAuthMethodNone: Bool {
    if case .none = auth, case .awaitingResponse = phase, stage == .securityNegotiation, roundTrips == 0 {
      return true
    }
    return false
  }

  /// The first Login Request (RFC 7143 section 6.3.1: InitiatorName and, for a normal
  /// session, TargetName in the first request; SessionType there too, section 13.21).
  public mutating func start() throws -> ISCSIPDU {
    guard case .idle = phase else {
      throw ISCSIError(.protocolViolation, "login already started")
    }
    if configuration.sessionType == .normal && (configuration.targetName ?? "").isEmpty {
      throw ISCSIError(.invalidArgument, "a normal session needs a TargetName (RFC 7143 section 13.4)")
    }
    if let c = configuration.chap {
      chap = try CHAPInitiator(configuration: c, randomBytes: randomBytes)
    }
    var keys = [TextKeyValue("InitiatorName", configuration.initiatorName)]  // 13.5
    if configuration.sessionType == .normal, let t = configuration.targetName {
      keys.append(TextKeyValue("TargetName", t))  // 13.4: not sent for discovery
    }
    keys.append(TextKeyValue("SessionType", configuration.sessionType.rawValue))  // 13.21
    // 12.1: AuthMethod, our preference first.
    keys.append(TextKeyValue("AuthMethod", configuration.chap == nil ? "None" : "CHAP,None"))
    let transit = configuration.chap == nil
    return try request(transit: transit, nsg: .operationalNegotiation, keys: keys)
  }

  /// Feeds one Login Response. After a throw or a `.complete`/`.redirect`, the state
  /// machine is finished; the connection must be closed on a throw.
  public mutating func receive(_ pdu: ISCSIPDU) throws -> LoginAction {
    do {
      let action = try step(pdu)
      if case .send = action, roundTrips >= Self.maxRoundTrips {
        throw ISCSIError(.negotiationFailed, "login did not complete within \(Self.maxRoundTrips) round trips")
      }
      return action
    } catch {
      phase = .finished
      throw error
    }
  }

  private mutating func step(_ pdu: ISCSIPDU) throws -> LoginAction {
    let h = pdu.header
    guard h.opcode == .loginResponse else {
      throw ISCSIError(.protocolViolation, "expected a Login Response during login, got \(h.opcode)")
    }
    guard h.initiatorTaskTag == initiatorTaskTag else {
      throw ISCSIError(
        .protocolViolation,
        "Login Response for ITT 0x\(String(h.initiatorTaskTag, radix: 16)), expected 0x\(String(initiatorTaskTag, radix: 16))")
    }
    guard case .awaitingResponse = phase else {
      throw ISCSIError(.protocolViolation, "unexpected Login Response (no Login Request outstanding)")
    }
    roundTrips += 1
    // RFC 7143 section 11.13.4: the next request acknowledges this StatSN.
    expStatSN = h.statSN &+ 1

    if h.loginStatusClass != 0 {
      phase = .finished
      return try statusAction(h, data: pdu.data)
    }
    // RFC 7143 section 11.13.2: Version-active must be one we support (0, section 11.12.4).
    guard h.loginVersionMinOrActive == 0 else {
      throw ISCSIError(.protocolViolation, "target chose iSCSI version \(h.loginVersionMinOrActive); we speak version 0")
    }
    guard h.loginCSGRaw == stage.rawValue else {
      throw ISCSIError(
        .protocolViolation, "Login Response for stage \(h.loginCSGRaw) while we are in \(stage) (RFC 7143 section 11.12.3)")
    }

    // RFC 7143 section 11.13.7: C set means more text follows; answer with an empty
    // request until C is clear. T and C together are forbidden in a response (11.13.7).
    // The empty request keeps our previous T/NSG: our own text is complete (C=0), and the
    // target may then transit in the response that ends its text.
    if h.textContinue {
      guard !h.loginTransit else {
        throw ISCSIError(.protocolViolation, "Login Response with both T and C set (RFC 7143 section 11.13.7)")
      }
      _ = try accumulator.append(pdu.data, continues: true)
      return .send(try request(transit: lastRequestTransit, nsg: lastRequestNSG, keys: []))
    }
    let pairs = try accumulator.append(pdu.data, continues: false) ?? []

    var nextStage: LoginStage? = nil
    if h.loginTransit {
      // RFC 7143 section 11.13.6: the target may set T only if we did, and NSG may not go
      // beyond the stage we asked for.
      guard lastRequestTransit, let asked = lastRequestNSG, let nsg = LoginStage(rawValue: h.loginNSGRaw),
        nsg > stage, nsg <= asked
      else {
        throw ISCSIError(
          .protocolViolation,
          "target set T with NSG \(h.loginNSGRaw) that we did not ask for (RFC 7143 section 11.13.6)")
      }
      nextStage = nsg
    }

    var outgoing: [TextKeyValue] = []
    if stage == .securityNegotiation {
      outgoing = try securityStep(pairs, targetTransits: nextStage != nil)
    } else {
      try negotiation.process(pairs)
    }

    if let next = nextStage {
      stage = next
      if next == .fullFeaturePhase {
        return try complete(h)
      }
      // Security done: offer all operational keys (plus answers owed) and ask for FFP.
      outgoing += negotiation.nextKeys(includeOffers: true)
      return .send(try request(transit: true, nsg: .fullFeaturePhase, keys: outgoing))
    }

    // T=0: stay in this stage and send what we owe (possibly nothing).
    if stage == .securityNegotiation {
      outgoing += negotiation.nextKeys(includeOffers: false)
      let authDone: Bool
      switch auth {
      case .none, .done, .responded: authDone = true
      default: authDone = false
      }
      return .send(try request(transit: authDone, nsg: .operationalNegotiation, keys: outgoing))
    }
    outgoing += negotiation.nextKeys(includeOffers: true)
    return .send(try request(transit: true, nsg: .fullFeaturePhase, keys: outgoing))
  }

  /// Security stage (RFC 7143 sections 6.3.2, 12.1): AuthMethod choice and CHAP.
  private mutating func securityStep(_ pairs: [TextKeyValue], targetTransits: Bool) throws -> [TextKeyValue] {
    var others: [TextKeyValue] = []
    var values: [String: String] = [:]
    for p in pairs {
      switch p.key {
      case "AuthMethod", "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R": values[p.key] = p.value
      default: others.append(p)
      }
    }
    try negotiation.process(others)
    var out: [TextKeyValue] = []

    if let method = values["AuthMethod"] {
      switch (auth, method) {
      case (.none, "None"):
        auth = .done
      case (.methodOffered, "None"):
        // 12.1: the target may pick None from CHAP,None; acceptable only if we need no
        // proof of the target's identity.
        if configuration.chap?.mutual != nil {
          throw ISCSIError(
            .authenticationFailed, "authentication failed (CHAP): target declined CHAP but mutual CHAP is required")
        }
        auth = .done
      case (.methodOffered, "CHAP"):
        // 12.1.3: the initiator then sends CHAP_A with its algorithms.
        auth = .algorithmsOffered
        out.append(TextKeyValue("CHAP_A", chap!.offeredAlgorithms))
      case (.none, "CHAP"), (.none, "Reject"):
        // "Reject" (RFC 7143 section 6.2) is not a method: the target refused None.
        throw Self.chapRequired
      case (.none, _):
        throw ISCSIError(
          .authenticationFailed,
          "authentication required: the target wants AuthMethod \(method), which lunbridge does not offer")
      case (.methodOffered, "Reject"):
        throw ISCSIError(
          .authenticationFailed, "authentication failed: the target refused both AuthMethod CHAP and None")
      default:
        throw ISCSIError(
          .authenticationFailed,
          "authentication failed: the target chose AuthMethod \(method), which was not offered (RFC 7143 section 12.1)")
      }
    }

    if let a = values["CHAP_A"] {
      guard case .algorithmsOffered = auth else {
        throw ISCSIError(.protocolViolation, "target sent CHAP_A out of sequence (RFC 7143 section 12.1.3)")
      }
      guard let i = values["CHAP_I"], let c = values["CHAP_C"] else {
        throw ISCSIError(
          .authenticationFailed, "authentication failed (CHAP): target sent CHAP_A without CHAP_I and CHAP_C")
      }
      let answer = try chap!.answer(algorithm: a, identifier: i, challenge: c)
      out += answer.pairs
      auth = .responded
    }

    if values["CHAP_N"] != nil || values["CHAP_R"] != nil {
      guard case .responded = auth, configuration.chap?.mutual != nil, let n = values["CHAP_N"],
        let r = values["CHAP_R"]
      else {
        throw ISCSIError(
          .authenticationFailed, "authentication failed (CHAP): unexpected CHAP_N/CHAP_R from target")
      }
      try chap!.verifyTarget(name: n, response: r)
      auth = .done
    }

    if case .responded = auth, configuration.chap?.mutual == nil {
      // One-way CHAP: our part is done once CHAP_R is sent.
      if targetTransits { auth = .done }
    }

    if targetTransits, case .none = auth {
      // No credentials: nothing to prove either way, even if the target left AuthMethod
      // unanswered.
      auth = .done
    }
    if targetTransits {
      guard case .done = auth else {
        // The target leaves the security stage before we authenticated it (mutual) or
        // before CHAP ran at all.
        throw ISCSIError(
          .authenticationFailed,
          configuration.chap?.mutual != nil
            ? "authentication failed (CHAP): target did not prove its identity (no CHAP_N/CHAP_R for mutual CHAP)"
            : "authentication failed (CHAP): target left the security stage before CHAP completed")
      }
    }
    return out
  }

  private mutating func complete(_ h: BasicHeaderSegment) throws -> LoginAction {
    phase = .finished
    // RFC 7143 section 11.13.3: the final response of a leading login carries the new TSIH;
    // when we reinstate or add a connection it must be the one we sent.
    guard h.tsih != 0 else {
      throw ISCSIError(.protocolViolation, "final Login Response has TSIH 0 (RFC 7143 section 11.13.3)")
    }
    if configuration.tsih != 0 && h.tsih != configuration.tsih {
      throw ISCSIError(
        .protocolViolation, "target changed the TSIH from \(configuration.tsih) to \(h.tsih) on a non-leading login")
    }
    var params = try negotiation.finish()
    params.tsih = h.tsih
    return .complete(
      params, LoginCompletion(tsih: h.tsih, statSN: h.statSN, expCmdSN: h.expCmdSN, maxCmdSN: h.maxCmdSN))
  }

  /// Status-Class and Status-Detail (RFC 7143 section 11.13.5).
  private func statusAction(_ h: BasicHeaderSegment, data: ByteBuffer) throws -> LoginAction {
    let cls = h.loginStatusClass
    let detail = h.loginStatusDetail
    let code = String(format2(cls)) + String(format2(detail))
    switch cls {
    case 1:
      // Redirection: 0x01 moved temporarily, 0x02 moved permanently; the data carries
      // TargetAddress (section 13.8).
      let pairs = try TextKeys.decode(data)
      guard let address = pairs.first(where: { $0.key == "TargetAddress" })?.value else {
        throw ISCSIError(.protocolViolation, "login redirect (status 0x\(code)) without TargetAddress")
      }
      return .redirect(try TargetAddress(parsing: address, permanent: detail == 0x02))
    case 2:
      let name = Self.initiatorErrorNames[detail] ?? "initiator error"
      switch detail {
      case 0x01 where configuration.chap == nil:
        // Refused without credentials (tgt answers our AuthMethod=None this way).
        var error = Self.chapRequired
        error.message += " (login status 0x\(code))"
        throw error
      case 0x01:
        throw ISCSIError(
          .authenticationFailed, "authentication failed (CHAP or AuthMethod refused by target; status 0x\(code))")
      case 0x02:
        throw ISCSIError(
          .authenticationFailed, "authentication failed: initiator not authorized for this target (status 0x\(code))")
      case 0x03, 0x04:
        throw ISCSIError(
          .targetNotFound, "target \(configuration.targetName ?? "(discovery)"): \(name) (status 0x\(code))")
      case 0x00 where { if case .algorithmsOffered = auth { return true } else { return false } }():
        // Refused right after our CHAP_A: most likely none of the algorithms we offered.
        let offered =
          configuration.chap?.algorithms.map { a -> String in
            switch a {
            case .md5: return "md5"
            case .sha1: return "sha1"
            case .sha256: return "sha256"
            }
          }.joined(separator: ",") ?? ""
        throw ISCSIError(
          .authenticationFailed,
          "login refused by target: \(name) (status 0x\(code)) when offered CHAP algorithms \(offered);"
            + " the target may support none of them: try --chap-algorithms md5 (chap_algorithms in a volume file)")
      default:
        throw ISCSIError(.loginFailed, "login refused by target: \(name) (status 0x\(code))")
      }
    case 3:
      let name = Self.targetErrorNames[detail] ?? "target error"
      throw ISCSIError(.loginFailed, "login failed: \(name) (status 0x\(code), target-side; may be retried)")
    default:
      throw ISCSIError(.loginFailed, "login failed with unknown status 0x\(code)")
    }
  }

  private func format2(_ b: UInt8) -> String {
    let s = String(b, radix: 16)
    return s.count == 1 ? "0" + s : s
  }

  /// RFC 7143 section 11.13.5, Status-Class 2.
  static let initiatorErrorNames: [UInt8: String] = [
    0x00: "initiator error", 0x01: "authentication failure", 0x02: "authorization failure",
    0x03: "target not found", 0x04: "target removed", 0x05: "unsupported version",
    0x06: "too many connections", 0x07: "missing parameter", 0x08: "can't include in session",
    0x09: "session type not supported", 0x0a: "session does not exist", 0x0b: "invalid request during login",
  ]
  /// RFC 7143 section 11.13.5, Status-Class 3.
  static let targetErrorNames: [UInt8: String] = [
    0x00: "target error", 0x01: "service unavailable", 0x02: "out of resources",
  ]

  /// A Login Request (RFC 7143 section 11.12): immediate, CmdSN unchanged for the whole
  /// login (the Login Request is immediate and does not advance CmdSN; section 11.12.9).
  private mutating func request(transit: Bool, nsg: LoginStage?, keys: [TextKeyValue]) throws -> ISCSIPDU {
    var h = BasicHeaderSegment(
      opcode: .loginRequest, immediate: true,
      flags: LoginFlags.make(transit: transit, csg: stage, nsg: nsg))
    h.loginVersionMax = 0  // 11.12.4
    h.loginVersionMinOrActive = 0  // 11.12.5
    h.isid = configuration.isid  // 11.12.6
    h.tsih = configuration.tsih  // 11.12.7
    h.initiatorTaskTag = initiatorTaskTag
    h.cid = configuration.cid  // 11.12.8
    h.cmdSN = cmdSN  // 11.12.9
    h.expStatSN = expStatSN  // 11.12.10
    let bytes = try TextKeys.encode(keys)
    guard bytes.count <= Self.loginSegmentLimit else {
      throw ISCSIError(.negotiationFailed, "login text of \(bytes.count) bytes exceeds 8192 (RFC 7143 section 13.12)")
    }
    var data = ByteBuffer()
    data.writeBytes(bytes)
    h.dataSegmentLength = UInt32(bytes.count)
    lastRequestTransit = transit
    lastRequestNSG = transit ? nsg : nil
    phase = .awaitingResponse
    return ISCSIPDU(header: h, data: data)
  }
}
