// SCSI-3 persistent reservations (SPC-4 5.13, 6.15 PERSISTENT RESERVE IN, 6.16 PERSISTENT
// RESERVE OUT): the CDBs, the basic PR OUT parameter list, and the PR IN parameter data.
// Registrations belong to an I_T nexus (for iSCSI: initiator name + ISID, target port), so
// a key is registered once per session.

/// PERSISTENT RESERVE IN service actions (SPC-4 6.15.1, Table 167).
public enum PRInAction: UInt8, Sendable, CaseIterable {
  case readKeys = 0x00
  case readReservation = 0x01
  case reportCapabilities = 0x02
  case readFullStatus = 0x03
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 6.16.2, Table 179).
public enum PROutAction: UInt8, Sendable, CaseIterable {
  case register = 0x00
  case reserve = 0x01
  case release = 0x02
  case clear = 0x03
  case preempt = 0x04
  case preemptAndAbort = 0x05
  case registerAndIgnoreExistingKey = 0x06

  /// The actions that take a TYPE in the CDB (the others ignore it).
  public var usesType: Bool {
    switch self {
    case .reserve, .release, .preempt, .preemptAndAbort: return true
    default: return false
    }
  }

  /// Registration is per I_T nexus: done on every path; the rest act on the LU once.
  public var isRegistration: Bool { self == .register || self == .registerAndIgnoreExistingKey }
}

/// Persistent reservation TYPE (SPC-4 6.16.3, Table 180); the numbers mpathpersist and
/// sg_persist take with --prout-type.
public enum PRType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
  case writeExclusive = 1
  case exclusiveAccess = 3
  case writeExclusiveRegistrantsOnly = 5
  case exclusiveAccessRegistrantsOnly = 6
  case writeExclusiveAllRegistrants = 7
  case exclusiveAccessAllRegistrants = 8

  /// As mpathpersist and sg_persist print it.
  public var description: String {
    switch self {
    case .writeExclusive: return "Write Exclusive"
    case .exclusiveAccess: return "Exclusive Access"
    case .writeExclusiveRegistrantsOnly: return "Write Exclusive, registrants only"
    case .exclusiveAccessRegistrantsOnly: return "Exclusive Access, registrants only"
    case .writeExclusiveAllRegistrants: return "Write Exclusive, all registrants"
    case .exclusiveAccessAllRegistrants: return "Exclusive Access, all registrants"
    }
  }

  /// A short stable name for JSON ("WE", "EA", "WE_RO", "EA_RO", "WE_AR", "EA_AR").
  public var shortName: String {
    switch self {
    case .writeExclusive: return "WE"
    case .exclusiveAccess: return "EA"
    case .writeExclusiveRegistrantsOnly: return "WE_RO"
    case .exclusiveAccessRegistrantsOnly: return "EA_RO"
    case .writeExclusiveAllRegistrants: return "WE_AR"
    case .exclusiveAccessAllRegistrants: return "EA_AR"
    }
  }
}

extension CDB {
  public static let persistentReserveIn: UInt8 = 0x5E  // SPC-4 6.15
  public static let persistentReserveOut: UInt8 = 0x5F  // SPC-4 6.16

  /// PERSISTENT RESERVE IN (SPC-4 6.15.1, Table 166): 10 bytes, SERVICE ACTION in byte 1
  /// bits 4-0, ALLOCATION LENGTH in bytes 7-8.
  public static func persistentReserveIn(_ action: PRInAction, allocationLength: UInt16) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 10)
    c[0] = persistentReserveIn
    c[1] = action.rawValue & 0x1F
    put16(&c, 7, allocationLength)
    return c
  }

  /// PERSISTENT RESERVE OUT (SPC-4 6.16.1, Table 178): 10 bytes, SERVICE ACTION in byte 1
  /// bits 4-0, SCOPE (0: LU_SCOPE) in byte 2 bits 7-4 and TYPE in bits 3-0, PARAMETER
  /// LIST LENGTH in bytes 5-8 (24 for the basic parameter list).
  public static func persistentReserveOut(
    _ action: PROutAction, type: PRType?, parameterListLength: UInt32 = PROutParameters.length
  ) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 10)
    c[0] = persistentReserveOut
    c[1] = action.rawValue & 0x1F
    c[2] = (type?.rawValue ?? 0) & 0x0F
    put32(&c, 5, parameterListLength)
    return c
  }
}

/// The basic PERSISTENT RESERVE OUT parameter list (SPC-4 6.16.3, Table 181).
public struct PROutParameters: Sendable, Equatable {
  public static let length: UInt32 = 24

  /// RESERVATION KEY: the key this I_T nexus is registered with (0 when not registered).
  public var key: UInt64
  /// SERVICE ACTION RESERVATION KEY: the new key (REGISTER) or the key to preempt.
  public var serviceActionKey: UInt64
  /// ALL_TG_PT: register on every target port at once (the tools' --param-alltgpt).
  public var allTargetPorts: Bool
  /// APTPL: keep registrations and the reservation across a target power loss.
  public var persistThroughPowerLoss: Bool

  public init(key: UInt64 = 0, serviceActionKey: UInt64 = 0, allTargetPorts: Bool = false, persistThroughPowerLoss: Bool = false)
  {
    self.key = key
    self.serviceActionKey = serviceActionKey
    self.allTargetPorts = allTargetPorts
    self.persistThroughPowerLoss = persistThroughPowerLoss
  }

  /// Bytes 0-7 RESERVATION KEY, 8-15 SERVICE ACTION RESERVATION KEY, 16-19 obsolete,
  /// byte 20: SPEC_I_PT (bit 3, never set here), ALL_TG_PT (bit 2), APTPL (bit 0);
  /// 21 reserved, 22-23 obsolete.
  public var bytes: [UInt8] {
    var b = [UInt8](repeating: 0, count: Int(Self.length))
    put64(&b, 0, key)
    put64(&b, 8, serviceActionKey)
    b[20] = (allTargetPorts ? 0x04 : 0) | (persistThroughPowerLoss ? 0x01 : 0)
    return b
  }
}

/// READ KEYS parameter data (SPC-4 6.15.2, Table 168): PRGENERATION, then every registered
/// key (one per registered I_T nexus, so a key registered through two paths shows twice).
public struct PRKeys: Sendable, Equatable {
  public var generation: UInt32
  public var keys: [UInt64]

  public init(generation: UInt32, keys: [UInt64]) {
    self.generation = generation
    self.keys = keys
  }

  /// A list longer than the allocation length is cut by the target; the keys present are
  /// read (ADDITIONAL LENGTH says how many there were).
  public init(_ bytes: [UInt8]) throws {
    guard bytes.count >= 8 else { throw SCSIError(.truncated, "READ KEYS: \(bytes.count) bytes, need 8") }
    generation = be32(bytes, 0)
    let length = Int(be32(bytes, 4))
    guard length % 8 == 0 else {
      throw SCSIError(.invalidField, "READ KEYS: ADDITIONAL LENGTH \(length) is not a multiple of 8")
    }
    let end = min(bytes.count, 8 + length)
    keys = stride(from: 8, to: end - 7, by: 8).map { be64(bytes, $0) }
  }
}

/// READ RESERVATION parameter data (SPC-4 6.15.3, Tables 169-170).
public struct PRReservation: Sendable, Equatable {
  public struct Holder: Sendable, Equatable {
    public var key: UInt64
    /// SCOPE: 0 is LU_SCOPE, the only one SPC-4 still defines.
    public var scope: UInt8
    public var type: PRType?
    public var rawType: UInt8
  }

  public var generation: UInt32
  /// nil: no persistent reservation is held.
  public var reservation: Holder?

  public init(generation: UInt32, reservation: Holder?) {
    self.generation = generation
    self.reservation = reservation
  }

  public init(_ bytes: [UInt8]) throws {
    guard bytes.count >= 8 else { throw SCSIError(.truncated, "READ RESERVATION: \(bytes.count) bytes, need 8") }
    generation = be32(bytes, 0)
    let length = be32(bytes, 4)
    guard length != 0 else {
      reservation = nil
      return
    }
    guard bytes.count >= 24 else {
      throw SCSIError(.truncated, "READ RESERVATION: ADDITIONAL LENGTH \(length), only \(bytes.count - 8) bytes")
    }
    let raw = bytes[21] & 0x0F
    reservation = Holder(key: be64(bytes, 8), scope: bytes[21] >> 4, type: PRType(rawValue: raw), rawType: raw)
  }
}

/// READ FULL STATUS parameter data (SPC-4 6.15.5, Tables 172-173): one descriptor per
/// registered I_T nexus.
public struct PRFullStatus: Sendable, Equatable {
  public struct Registration: Sendable, Equatable {
    public var key: UInt64
    /// ALL_TG_PT: registered on every target port.
    public var allTargetPorts: Bool
    /// R_HOLDER: this I_T nexus holds the reservation (SCOPE and TYPE are valid).
    public var holder: Bool
    public var scope: UInt8
    public var type: PRType?
    public var relativeTargetPort: UInt16
    /// The initiator's TransportID: for iSCSI the name, and with format 01b
    /// "NAME,i,0xISID" (SPC-4 7.6.4.6); nil for another protocol.
    public var initiator: String?
  }

  public var generation: UInt32
  public var registrations: [Registration]

  public init(_ bytes: [UInt8]) throws {
    guard bytes.count >= 8 else { throw SCSIError(.truncated, "READ FULL STATUS: \(bytes.count) bytes, need 8") }
    generation = be32(bytes, 0)
    let end = min(bytes.count, 8 + Int(be32(bytes, 4)))
    var registrations: [Registration] = []
    var o = 8
    while o + 24 <= end {
      let idLength = Int(be32(bytes, o + 20))
      guard o + 24 + idLength <= end else {
        // Cut by the allocation length: what is whole is kept.
        break
      }
      let transportID = Array(bytes[(o + 24)..<(o + 24 + idLength)])
      registrations.append(
        Registration(
          key: be64(bytes, o), allTargetPorts: bytes[o + 12] & 0x02 != 0, holder: bytes[o + 12] & 0x01 != 0,
          scope: bytes[o + 13] >> 4, type: PRType(rawValue: bytes[o + 13] & 0x0F),
          relativeTargetPort: be16(bytes, o + 18), initiator: PRFullStatus.iSCSIName(transportID)))
      o += 24 + idLength
    }
    self.registrations = registrations
  }

  /// An iSCSI TransportID (SPC-4 7.6.4.6, Tables 397-398): PROTOCOL IDENTIFIER 5 in byte 0
  /// bits 3-0, ADDITIONAL LENGTH in bytes 2-3, then the name (format 00b) or
  /// "NAME,i,0xISID" (format 01b), NUL-terminated and padded.
  static func iSCSIName(_ id: [UInt8]) -> String? {
    guard id.count >= 4, id[0] & 0x0F == 0x05 else { return nil }
    let length = min(Int(be16(id, 2)), id.count - 4)
    let text = id[4..<(4 + length)].prefix { $0 != 0 }
    return String(decoding: text, as: UTF8.self)
  }
}

/// REPORT CAPABILITIES parameter data (SPC-4 6.15.4, Table 171), the parts a user asks about.
public struct PRCapabilities: Sendable, Equatable {
  /// PTPL_C: the device server supports APTPL.
  public var persistThroughPowerLossCapable: Bool
  /// PTPL_A: APTPL is active now.
  public var persistThroughPowerLossActive: Bool
  /// ATP_C: ALL_TG_PT is supported.
  public var allTargetPortsCapable: Bool
  /// The reservation types the device server supports (valid when TMV is set; else nil).
  public var types: [PRType]?

  public init(_ bytes: [UInt8]) throws {
    guard bytes.count >= 8 else { throw SCSIError(.truncated, "REPORT CAPABILITIES: \(bytes.count) bytes, need 8") }
    persistThroughPowerLossCapable = bytes[2] & 0x01 != 0
    allTargetPortsCapable = bytes[2] & 0x04 != 0
    persistThroughPowerLossActive = bytes[3] & 0x01 != 0
    guard bytes[3] & 0x80 != 0 else {
      types = nil
      return
    }
    var t: [PRType] = []
    if bytes[4] & 0x02 != 0 { t.append(.writeExclusive) }
    if bytes[4] & 0x08 != 0 { t.append(.exclusiveAccess) }
    if bytes[4] & 0x20 != 0 { t.append(.writeExclusiveRegistrantsOnly) }
    if bytes[4] & 0x40 != 0 { t.append(.exclusiveAccessRegistrantsOnly) }
    if bytes[4] & 0x80 != 0 { t.append(.writeExclusiveAllRegistrants) }
    if bytes[5] & 0x01 != 0 { t.append(.exclusiveAccessAllRegistrants) }
    types = t
  }
}
