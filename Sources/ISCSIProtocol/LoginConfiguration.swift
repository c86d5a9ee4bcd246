import Crypto

/// HeaderDigest / DataDigest values (RFC 7143 section 13.1).
public enum Digest: String, Sendable, CaseIterable {
  case none = "None"
  case crc32c = "CRC32C"
}

/// SessionType (RFC 7143 section 13.21).
public enum SessionType: String, Sendable {
  case normal = "Normal"
  case discovery = "Discovery"
}

/// What the initiator asks for at login. Operational values are our offers; the
/// negotiated results end in `NegotiatedParameters`.
public struct LoginConfiguration: Sendable {
  public var initiatorName: String
  /// nil for a discovery session (RFC 7143 section 13.4: TargetName is not sent then).
  public var targetName: String?
  public var sessionType: SessionType
  /// 48-bit ISID (RFC 7143 section 11.12.6).
  public var isid: UInt64
  /// 0 for a new session, the old TSIH to add a connection (sections 6.3.5, 11.12.7).
  public var tsih: UInt16
  public var cid: UInt16
  public var chap: CHAPConfiguration?
  /// Preference lists, best first (RFC 7143 section 13.1).
  public var headerDigest: [Digest]
  public var dataDigest: [Digest]

  // Operational offers (RFC 7143 section 13; the comments name the result function).
  /// Declarative: the largest data segment we accept (section 13.12).
  public var maxRecvDataSegmentLength: Int
  /// Result = min (section 13.13).
  public var maxBurstLength: Int
  /// Result = min, capped at MaxBurstLength (section 13.14).
  public var firstBurstLength: Int
  /// Result = OR (section 13.10).
  public var initialR2T: Bool
  /// Result = AND (section 13.11).
  public var immediateData: Bool
  /// Result = min (section 13.17).
  public var maxOutstandingR2T: Int
  /// Result = min (section 13.2).
  public var maxConnections: Int
  /// Result = max (section 13.15).
  public var defaultTime2Wait: Int
  /// Result = min (section 13.16).
  public var defaultTime2Retain: Int
  /// Result = min (section 13.20).
  public var errorRecoveryLevel: Int
  /// Result = OR (sections 13.18, 13.19).
  public var dataPDUInOrder: Bool
  public var dataSequenceInOrder: Bool
  /// RFC 3720 appendix A.3 IFMarker/OFMarker (dropped by RFC 7143, section 13 note); some
  /// RFC 3720 targets still expect them answered. We offer No.
  public var sendMarkerKeys: Bool

  public init(
    initiatorName: String, targetName: String?, sessionType: SessionType? = nil, isid: UInt64? = nil,
    tsih: UInt16 = 0, cid: UInt16 = 0, chap: CHAPConfiguration? = nil,
    headerDigest: [Digest] = [.none], dataDigest: [Digest] = [.none],
    maxRecvDataSegmentLength: Int = 1_048_576, maxBurstLength: Int = 1_048_576,
    firstBurstLength: Int = 262_144, initialR2T: Bool = false, immediateData: Bool = true,
    maxOutstandingR2T: Int = 1, maxConnections: Int = 1, defaultTime2Wait: Int = 2,
    defaultTime2Retain: Int = 20, errorRecoveryLevel: Int = 0, dataPDUInOrder: Bool = true,
    dataSequenceInOrder: Bool = true, sendMarkerKeys: Bool = true,
    randomBytes: RandomBytes = systemRandomBytes
  ) {
    self.initiatorName = initiatorName
    self.targetName = targetName
    self.sessionType = sessionType ?? (targetName == nil ? .discovery : .normal)
    self.isid = (isid ?? LoginConfiguration.randomISID(randomBytes: randomBytes)) & 0xffff_ffff_ffff
    self.tsih = tsih
    self.cid = cid
    self.chap = chap
    self.headerDigest = headerDigest
    self.dataDigest = dataDigest
    self.maxRecvDataSegmentLength = maxRecvDataSegmentLength
    self.maxBurstLength = maxBurstLength
    self.firstBurstLength = firstBurstLength
    self.initialR2T = initialR2T
    self.immediateData = immediateData
    self.maxOutstandingR2T = maxOutstandingR2T
    self.maxConnections = maxConnections
    self.defaultTime2Wait = defaultTime2Wait
    self.defaultTime2Retain = defaultTime2Retain
    self.errorRecoveryLevel = errorRecoveryLevel
    self.dataPDUInOrder = dataPDUInOrder
    self.dataSequenceInOrder = dataSequenceInOrder
    self.sendMarkerKeys = sendMarkerKeys
  }

  /// RFC 7143 section 11.12.6: ISID type T=10b ("Random"): A reserved (0), B and C a
  /// random qualifier, D a qualifier; byte 0 is therefore 0x80.
  public static func randomISID(randomBytes: RandomBytes = systemRandomBytes) -> UInt64 {
    var v: UInt64 = 0x80
    for b in randomBytes(5).prefix(5) { v = v << 8 | UInt64(b) }
    return v
  }

  /// The same type of ISID, its 40 qualifier bits taken from a hash of `identity`: a
  /// volume's path logs in with the same ISID after every restart, so the target sees the
  /// same I_T nexus (its persistent reservation registrations stay valid) and a login with
  /// TSIH 0 reinstates the session the previous process left, ending its tasks first
  /// (RFC 7143 sections 6.3.5 and 11.12.6).
  public static func stableISID(identity: String) -> UInt64 {
    var v: UInt64 = 0x80
    for b in SHA256.hash(data: Array(identity.utf8)).prefix(5) { v = v << 8 | UInt64(b) }
    return v
  }
}

/// The values in force after login (RFC 7143 section 13), for the session and framer.
public struct NegotiatedParameters: Sendable, Equatable {
  public var headerDigest: Bool = false
  public var dataDigest: Bool = false
  /// What we declared (section 13.12): the largest data segment we will receive.
  public var maxRecvDataSegmentLength: Int = 8192
  /// What the target declared, 8192 if it never did (section 13.12).
  public var maxSendDataSegmentLength: Int = 8192
  public var maxBurstLength: Int = 262_144
  public var firstBurstLength: Int = 65_536
  public var initialR2T: Bool = true
  public var immediateData: Bool = true
  public var maxOutstandingR2T: Int = 1
  public var maxConnections: Int = 1
  public var defaultTime2Wait: Int = 2
  public var defaultTime2Retain: Int = 20
  public var errorRecoveryLevel: Int = 0
  public var dataPDUInOrder: Bool = true
  public var dataSequenceInOrder: Bool = true
  /// Declared by the target (section 13.9); required in the first response of a normal
  /// session's leading login.
  public var targetPortalGroupTag: Int?
  public var targetAlias: String?
  public var tsih: UInt16 = 0

  /// The RFC 7143 section 13 defaults: what applies to every key never answered.
  public init() {}

  /// Framing settings for the full feature phase.
  public var framing: FramingParameters {
    FramingParameters(
      headerDigest: headerDigest, dataDigest: dataDigest, maxRecvDataSegmentLength: maxRecvDataSegmentLength,
      maxSendDataSegmentLength: maxSendDataSegmentLength)
  }

  /// Name/value pairs for display.
  public var summary: [(String, String)] {
    func yn(_ b: Bool) -> String { b ? "Yes" : "No" }
    var s: [(String, String)] = [
      ("HeaderDigest", headerDigest ? "CRC32C" : "None"),
      ("DataDigest", dataDigest ? "CRC32C" : "None"),
      ("MaxRecvDataSegmentLength (ours)", String(maxRecvDataSegmentLength)),
      ("MaxRecvDataSegmentLength (target's)", String(maxSendDataSegmentLength)),
      ("MaxBurstLength", String(maxBurstLength)),
      ("FirstBurstLength", String(firstBurstLength)),
      ("InitialR2T", yn(initialR2T)),
      ("ImmediateData", yn(immediateData)),
      ("MaxOutstandingR2T", String(maxOutstandingR2T)),
      ("MaxConnections", String(maxConnections)),
      ("DefaultTime2Wait", String(defaultTime2Wait)),
      ("DefaultTime2Retain", String(defaultTime2Retain)),
      ("ErrorRecoveryLevel", String(errorRecoveryLevel)),
      ("DataPDUInOrder", yn(dataPDUInOrder)),
      ("DataSequenceInOrder", yn(dataSequenceInOrder)),
    ]
    s.append(("TargetPortalGroupTag", targetPortalGroupTag.map { String($0) } ?? "-"))
    s.append(("TargetAlias", targetAlias ?? "-"))
    s.append(("TSIH", String(tsih)))
    return s
  }
}

/// A portal from a TargetAddress key (RFC 7143 section 13.8): redirects and SendTargets.
public struct TargetAddress: Sendable, Equatable, CustomStringConvertible {
  public static let defaultPort = 3260
  public var host: String
  public var port: Int
  public var portalGroupTag: Int?
  /// Login redirect status detail 0x02 "moved permanently" (section 11.13.5).
  public var permanent: Bool

  public init(host: String, port: Int = TargetAddress.defaultPort, portalGroupTag: Int? = nil, permanent: Bool = false) {
    self.host = host
    self.port = port
    self.portalGroupTag = portalGroupTag
    self.permanent = permanent
  }

  /// Parses `domainname[:port][,portal-group-tag]` where an IPv6 address is in brackets
  /// (RFC 7143 section 13.8). The brackets are removed from `host`.
  public init(parsing text: String, permanent: Bool = false) throws {
    func bad(_ why: String) -> ISCSIError {
      ISCSIError(.protocolViolation, "invalid TargetAddress \"\(text)\": \(why) (RFC 7143 section 13.8)")
    }
    var address = Substring(text)
    var tag: Int? = nil
    if let comma = address.lastIndex(of: ",") {
      let t = address[address.index(after: comma)...]
      guard let v = Int(t), (0...65535).contains(v) else { throw bad("portal group tag") }
      tag = v
      address = address[..<comma]
    }
    var host: Substring
    var port = TargetAddress.defaultPort
    if address.hasPrefix("[") {
      guard let close = address.firstIndex(of: "]") else { throw bad("unclosed '['") }
      host = address[address.index(after: address.startIndex)..<close]
      let rest = address[address.index(after: close)...]
      if !rest.isEmpty {
        guard rest.hasPrefix(":"), let p = Int(rest.dropFirst()) else { throw bad("port") }
        port = p
      }
    } else if address.filter({ $0 == ":" }).count == 1, let colon = address.firstIndex(of: ":") {
      host = address[..<colon]
      guard let p = Int(address[address.index(after: colon)...]) else { throw bad("port") }
      port = p
    } else {
      // No port, or an unbracketed IPv6 literal (tolerated, port 3260).
      host = address
    }
    guard !host.isEmpty else { throw bad("empty host") }
    guard (1...65535).contains(port) else { throw bad("port out of range") }
    self.init(host: String(host), port: port, portalGroupTag: tag, permanent: permanent)
  }

  public var description: String {
    let h = host.contains(":") ? "[\(host)]" : host
    return "\(h):\(port)" + (portalGroupTag.map { ",\($0)" } ?? "")
  }
}
