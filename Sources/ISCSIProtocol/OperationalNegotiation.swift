/// Answers that mean "no value": RFC 7143 section 6.2 ("Reject", "Irrelevant") and
/// section 6.2 / 13.22 ("NotUnderstood"). The key then keeps its default.
enum SpecialValue {
  static let notUnderstood = "NotUnderstood"
  static let irrelevant = "Irrelevant"
  static let reject = "Reject"
  static func isSpecial(_ v: String) -> Bool { v == notUnderstood || v == irrelevant || v == reject }
}

/// How a key's result is computed (RFC 7143 sections 6.2.1, 6.2.2 and 13).
enum KeyKind {
  /// Numerical, result = min of both values, in range.
  case minimum(ClosedRange<Int>)
  /// Numerical, result = max (DefaultTime2Wait).
  case maximum(ClosedRange<Int>)
  /// Boolean, result = OR.
  case or
  /// Boolean, result = AND.
  case and
  /// List of digests: the responder picks the first of the originator's list it supports.
  case digest
}

/// Negotiation of the operational keys (RFC 7143 section 6.3.3 and 13). Pure bookkeeping:
/// what we offered, what the target answered or proposed, what we owe it, and the results.
/// Every key is sent at most once per login (RFC 7143 section 6.2: "a key ... MUST NOT be
/// offered more than once"; libiscsi PR #196: re-sending one makes some targets drop the login).
struct OperationalNegotiation {
  let configuration: LoginConfiguration
  private(set) var result = NegotiatedParameters()
  /// Keys we sent, with the value we sent.
  private(set) var offered: [String: String] = [:]
  /// Keys whose result is settled (answered by the target, or answered by us).
  private(set) var settled: Set<String> = []
  /// Answers we owe the target, sent with our next request.
  private(set) var pendingAnswers: [TextKeyValue] = []
  private var targetDeclaredMaxRecv = false

  init(configuration: LoginConfiguration) {
    self.configuration = configuration
    result.maxRecvDataSegmentLength = configuration.maxRecvDataSegmentLength
  }

  var isDiscovery: Bool { configuration.sessionType == .discovery }

  static func kind(of key: String) -> KeyKind? {
    switch key {
    case "HeaderDigest", "DataDigest": return .digest  // 13.1
    case "MaxConnections": return .minimum(1...65535)  // 13.2
    case "InitialR2T": return .or  // 13.10
    case "ImmediateData": return .and  // 13.11
    case "MaxBurstLength": return .minimum(512...16_777_215)  // 13.13
    case "FirstBurstLength": return .minimum(512...16_777_215)  // 13.14
    case "DefaultTime2Wait": return .maximum(0...3600)  // 13.15
    case "DefaultTime2Retain": return .minimum(0...3600)  // 13.16
    case "MaxOutstandingR2T": return .minimum(1...65535)  // 13.17
    case "DataPDUInOrder", "DataSequenceInOrder": return .or  // 13.18, 13.19
    case "ErrorRecoveryLevel": return .minimum(0...2)  // 13.20
    case "IFMarker", "OFMarker": return .and  // RFC 3720 A.3.1, A.3.2
    default: return nil
    }
  }

  /// Keys that only matter in a normal session; in a discovery session the target's
  /// proposals of them get "Irrelevant" (RFC 7143 section 6.2.2; section 13 "Irrelevant when
  /// SessionType=Discovery").
  static let normalSessionOnly: Set<String> = [
    "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength",
    "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T", "DataPDUInOrder",
    "DataSequenceInOrder", "ErrorRecoveryLevel", "IFMarker", "OFMarker",
  ]

  private func ourValue(_ key: String) -> String {
    let c = configuration
    func yn(_ b: Bool) -> String { b ? "Yes" : "No" }
    switch key {
    case "HeaderDigest": return c.headerDigest.map(\.rawValue).joined(separator: ",")
    case "DataDigest": return c.dataDigest.map(\.rawValue).joined(separator: ",")
    case "MaxRecvDataSegmentLength": return String(c.maxRecvDataSegmentLength)
    case "MaxConnections": return String(c.maxConnections)
    case "InitialR2T": return yn(c.initialR2T)
    case "ImmediateData": return yn(c.immediateData)
    case "MaxBurstLength": return String(c.maxBurstLength)
    case "FirstBurstLength": return String(c.firstBurstLength)
    case "DefaultTime2Wait": return String(c.defaultTime2Wait)
    case "DefaultTime2Retain": return String(c.defaultTime2Retain)
    case "MaxOutstandingR2T": return String(c.maxOutstandingR2T)
    case "DataPDUInOrder": return yn(c.dataPDUInOrder)
    case "DataSequenceInOrder": return yn(c.dataSequenceInOrder)
    case "ErrorRecoveryLevel": return String(c.errorRecoveryLevel)
    case "IFMarker", "OFMarker": return "No"
    default: return SpecialValue.notUnderstood
    }
  }

  /// The keys we offer in the operational stage, in a stable order. Discovery sessions
  /// offer only digests and MaxRecvDataSegmentLength (RFC 7143 section 13: the others are
  /// irrelevant to discovery).
  var offerKeys: [String] {
    var keys = ["HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength"]
    if !isDiscovery {
      keys += [
        "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength", "MaxOutstandingR2T",
        "MaxConnections", "DefaultTime2Wait", "DefaultTime2Retain", "ErrorRecoveryLevel",
        "DataPDUInOrder", "DataSequenceInOrder",
      ]
      if configuration.sendMarkerKeys { keys += ["IFMarker", "OFMarker"] }
    }
    return keys
  }

  /// Pending answers first, then every offer not yet sent or settled. Marks them sent.
  mutating func nextKeys(includeOffers: Bool) -> [TextKeyValue] {
    var out = pendingAnswers
    pendingAnswers = []
    if includeOffers {
      for key in offerKeys where offered[key] == nil && !settled.contains(key) {
        let v = ourValue(key)
        offered[key] = v
        out.append(TextKeyValue(key, v))
        // A declaration needs no answer (RFC 7143 section 6.2.2... 13.12).
        if key == "MaxRecvDataSegmentLength" { settled.insert(key) }
      }
    }
    return out
  }

  private func failure(_ key: String, _ value: String, _ why: String) -> ISCSIError {
    ISCSIError(.negotiationFailed, "target's \(key)=\(value) \(why)")
  }

  private func number(_ key: String, _ value: String, _ range: ClosedRange<Int>) throws -> Int {
    guard let n = TextValue.decodeNumber(value), n <= UInt64(Int.max), range.contains(Int(n)) else {
      throw failure(key, value, "is not a number in \(range.lowerBound)...\(range.upperBound) (RFC 7143 section 13)")
    }
    return Int(n)
  }

  private func bool(_ key: String, _ value: String) throws -> Bool {
    switch value {
    case "Yes": return true
    case "No": return false
    default: throw failure(key, value, "is neither Yes nor No (RFC 7143 section 6.2.2)")
    }
  }

  /// What to do when the target will not use the digest we insist on.
  static func digestHint(_ key: String) -> String {
    let option = key == "HeaderDigest" ? "header" : "data"
    return "; to accept a target without digests, offer both: --\(option)-digest crc32c,none"
      + " (\(option)_digest = [\"crc32c\", \"none\"] in a volume file)"
  }

  private func ourDigests(_ key: String) -> [Digest] {
    key == "HeaderDigest" ? configuration.headerDigest : configuration.dataDigest
  }

  /// Processes the target's keys (other than the security keys the caller handles).
  mutating func process(_ pairs: [TextKeyValue]) throws {
    for pair in pairs {
      let key = pair.key
      let value = pair.value
      switch key {
      // Declarative keys (RFC 7143 section 6.2.2: declarations are not answered).
      case "MaxRecvDataSegmentLength":  // 13.12
        if SpecialValue.isSpecial(value) { continue }
        result.maxSendDataSegmentLength = try number(key, value, 512...16_777_215)
        targetDeclaredMaxRecv = true
        continue
      case "TargetPortalGroupTag":  // 13.9
        result.targetPortalGroupTag = try number(key, value, 0...65535)
        continue
      case "TargetAlias":  // 13.6
        result.targetAlias = value
        continue
      case "TargetAddress", "InitiatorName", "TargetName", "SessionType", "InitiatorAlias":
        // Our own declarations echoed, or a TargetAddress outside a redirect: nothing to do.
        continue
      default: break
      }

      if settled.contains(key) { continue }  // repeated by the target: answered once only
      if let sent = offered[key] {
        // The target's answer to our offer.
        settled.insert(key)
        try applyAnswer(key: key, ours: sent, answer: value)
        continue
      }
      // The target proposes a key we did not offer: answer once, in our next request.
      settled.insert(key)
      guard let kind = Self.kind(of: key) else {
        pendingAnswers.append(TextKeyValue(key, SpecialValue.notUnderstood))  // 6.2
        continue
      }
      if isDiscovery && Self.normalSessionOnly.contains(key) {
        pendingAnswers.append(TextKeyValue(key, SpecialValue.irrelevant))  // 6.2.2
        continue
      }
      if SpecialValue.isSpecial(value) { continue }
      let answer = try answerProposal(key: key, kind: kind, theirs: value)
      pendingAnswers.append(TextKeyValue(key, answer))
    }
  }

  /// Result of a key we offered (RFC 7143 section 6.2: the responder's value is the result
  /// for lists; for simple values we apply the result function, which also guards against a
  /// target that answers out of bounds).
  private mutating func applyAnswer(key: String, ours: String, answer: String) throws {
    guard let kind = Self.kind(of: key) else { return }
    if SpecialValue.isSpecial(answer) {
      // Not understood / irrelevant / rejected: the default stays, unless the default is
      // something we refused to offer (digests).
      if case .digest = kind, !ourDigests(key).contains(.none) {
        throw failure(key, answer, "but we require \(ours) (RFC 7143 section 13.1)\(Self.digestHint(key))")
      }
      return
    }
    switch kind {
    case .digest:
      guard let picked = Digest(rawValue: answer), ourDigests(key).contains(picked) else {
        throw failure(key, answer, "is not one of the values we offered (\(ours)) (RFC 7143 section 6.2.1)")
      }
      set(key, digest: picked)
    case .minimum(let range):
      set(key, Swift.min(try number(key, ours, range), try number(key, answer, range)))
    case .maximum(let range):
      set(key, Swift.max(try number(key, ours, range), try number(key, answer, range)))
    case .or:
      set(key, try bool(key, ours) || bool(key, answer))
    case .and:
      set(key, try bool(key, ours) && bool(key, answer))
    }
  }

  /// Our answer to a key the target offered first; also records the result.
  private mutating func answerProposal(key: String, kind: KeyKind, theirs: String) throws -> String {
    let ours = ourValue(key)
    switch kind {
    case .digest:
      let offeredByTarget = theirs.split(separator: ",").map(String.init)
      guard let pick = ourDigests(key).first(where: { offeredByTarget.contains($0.rawValue) }) else {
        if !ourDigests(key).contains(.none) {
          throw failure(key, theirs, "has nothing in common with our \(ours) (RFC 7143 section 6.2.1)\(Self.digestHint(key))")
        }
        return SpecialValue.reject
      }
      set(key, digest: pick)
      return pick.rawValue
    case .minimum(let range):
      let v = Swift.min(try number(key, ours, range), try number(key, theirs, range))
      set(key, v)
      return String(v)
    case .maximum(let range):
      let v = Swift.max(try number(key, ours, range), try number(key, theirs, range))
      set(key, v)
      return String(v)
    case .or:
      let v = try bool(key, ours) || bool(key, theirs)
      set(key, v)
      return v ? "Yes" : "No"
    case .and:
      let v = try bool(key, ours) && bool(key, theirs)
      set(key, v)
      return v ? "Yes" : "No"
    }
  }

  private mutating func set(_ key: String, digest: Digest) {
    if key == "HeaderDigest" { result.headerDigest = digest == .crc32c } else { result.dataDigest = digest == .crc32c }
  }

  private mutating func set(_ key: String, _ v: Int) {
    switch key {
    case "MaxConnections": result.maxConnections = v
    case "MaxBurstLength": result.maxBurstLength = v
    case "FirstBurstLength": result.firstBurstLength = v
    case "DefaultTime2Wait": result.defaultTime2Wait = v
    case "DefaultTime2Retain": result.defaultTime2Retain = v
    case "MaxOutstandingR2T": result.maxOutstandingR2T = v
    case "ErrorRecoveryLevel": result.errorRecoveryLevel = v
    default: break
    }
  }

  private mutating func set(_ key: String, _ v: Bool) {
    switch key {
    case "InitialR2T": result.initialR2T = v
    case "ImmediateData": result.immediateData = v
    case "DataPDUInOrder": result.dataPDUInOrder = v
    case "DataSequenceInOrder": result.dataSequenceInOrder = v
    default: break  // markers: we never use them
    }
  }

  /// Final checks once the target moved to the full feature phase.
  mutating func finish() throws -> NegotiatedParameters {
    // Keys never answered keep the section 13 defaults (already in `result`), except the
    // digests: the default None is only acceptable if we offered it.
    for key in ["HeaderDigest", "DataDigest"] where !settled.contains(key) && !ourDigests(key).contains(.none) {
      throw ISCSIError(
        .negotiationFailed,
        "target never answered \(key), and we require \(ourValue(key)) (RFC 7143 section 13.1)\(Self.digestHint(key))")
    }
    // RFC 7143 section 13.14: FirstBurstLength MUST NOT exceed MaxBurstLength.
    if result.firstBurstLength > result.maxBurstLength { result.firstBurstLength = result.maxBurstLength }
    if !targetDeclaredMaxRecv { result.maxSendDataSegmentLength = 8192 }  // 13.12 default
    return result
  }
}
