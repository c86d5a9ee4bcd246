/// Login stages, the CSG/NSG values of Login PDUs (RFC 7143 section 11.12.3).
public enum LoginStage: UInt8, Sendable, Comparable, CustomStringConvertible {
  case securityNegotiation = 0
  case operationalNegotiation = 1
  case fullFeaturePhase = 3

  public static func < (a: LoginStage, b: LoginStage) -> Bool { a.rawValue < b.rawValue }

  public var description: String {
    switch self {
    case .securityNegotiation: return "SecurityNegotiation"
    case .operationalNegotiation: return "LoginOperationalNegotiation"
    case .fullFeaturePhase: return "FullFeaturePhase"
    }
  }
}

/// Byte 1 of Login Request/Response (RFC 7143 sections 11.12.1-3, 11.13.6-7) and the C bit of
/// Text Request/Response (11.10.2, 11.11.2).
public enum LoginFlags {
  /// T: transit to NSG.
  public static let transit: UInt8 = 0x80
  /// C: the text continues in the next PDU.
  public static let `continue`: UInt8 = 0x40

  public static func make(transit: Bool, continues: Bool = false, csg: LoginStage, nsg: LoginStage?) -> UInt8 {
    var f: UInt8 = 0
    if transit { f |= LoginFlags.transit }
    if continues { f |= LoginFlags.continue }
    f |= csg.rawValue << 2
    // NSG is reserved (0) unless T is set (RFC 7143 section 11.12.3).
    if transit, let nsg { f |= nsg.rawValue }
    return f
  }
}

extension BasicHeaderSegment {
  /// Login PDUs: the T bit.
  public var loginTransit: Bool { flags & LoginFlags.transit != 0 }
  /// Login and Text PDUs: the C bit.
  public var textContinue: Bool { flags & LoginFlags.continue != 0 }
  /// Login PDUs: CSG (bits 4-5 of byte 1) as a raw value.
  public var loginCSGRaw: UInt8 { (flags >> 2) & 0x3 }
  /// Login PDUs: NSG (bits 6-7 of byte 1) as a raw value.
  public var loginNSGRaw: UInt8 { flags & 0x3 }
  /// Login Request: Version-max (byte 2); Login Response: Version-max.
  public var loginVersionMax: UInt8 {
    get { byte2 }
    set { byte2 = newValue }
  }
  /// Login Request: Version-min (byte 3); Login Response: Version-active.
  public var loginVersionMinOrActive: UInt8 {
    get { byte3 }
    set { byte3 = newValue }
  }
}
