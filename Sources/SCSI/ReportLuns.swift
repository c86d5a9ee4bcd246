/// Single-level LUN encoding (SAM-5 4.7) as used in REPORT LUNS data and the
/// 8-byte LUN field of iSCSI PDUs (RFC 7143 11.2.1.2).
public enum LUNAddress {
  /// Encodes `lun` into 8 bytes: peripheral device addressing (SAM-5 4.7.7.2,
  /// ADDRESS METHOD 00b, LUN in byte 1) for 0-255, flat space addressing
  /// (SAM-5 4.7.7.4, 01b, 14-bit LUN in byte 0 bits 5-0 and byte 1) for
  /// 256-16383. Throws `.invalidArgument` above 16383.
  public static func encode(_ lun: UInt16) throws -> [UInt8] {
    var b = [UInt8](repeating: 0, count: 8)
    if lun <= 0xFF {
      b[1] = UInt8(lun)
    } else if lun <= 0x3FFF {
      b[0] = 0x40 | UInt8(lun >> 8)
      b[1] = UInt8(lun & 0xFF)
    } else {
      throw SCSIError(.invalidArgument, "LUN \(lun) does not fit flat space addressing (max 16383)")
    }
    return b
  }

  /// Encodes `lun` as the big-endian UInt64 of `encode(_:)`.
  public static func encode64(_ lun: UInt16) throws -> UInt64 {
    be64(try encode(lun), 0)
  }

  /// Decodes a single-level peripheral (bus identifier 0) or flat space LUN;
  /// nil for other address methods or multi-level (hierarchical) LUNs.
  public static func decode(_ raw: UInt64) -> UInt16? {
    guard raw & 0x0000_FFFF_FFFF_FFFF == 0 else { return nil }  // second..fourth level must be 0
    let b0 = UInt8(truncatingIfNeeded: raw >> 56)
    let b1 = UInt8(truncatingIfNeeded: raw >> 48)
    switch b0 >> 6 {
    case 0b00:  // peripheral device addressing; bus identifier must be 0
      return b0 & 0x3F == 0 ? UInt16(b1) : nil
    case 0b01:  // flat space addressing
      return UInt16(b0 & 0x3F) << 8 | UInt16(b1)
    default:  // logical unit (10b) / extended (11b) addressing: not decoded
      return nil
    }
  }
}

/// REPORT LUNS parameter data (SPC-4 6.33.2, Table 182): LUN LIST LENGTH in
/// bytes 0-3, bytes 4-7 reserved, then one 8-byte LUN per entry.
///
/// A list cut short by the allocation length is not an error: the complete
/// entries are returned and `isTruncated` tells the caller to re-issue with
/// `requiredAllocationLength`.
public struct ReportLuns: Sendable, Equatable {
  /// LUN LIST LENGTH as reported (8 × number of LUNs).
  public let lunListLength: UInt32
  /// Every LUN entry received, undecoded.
  public let rawLuns: [UInt64]
  /// The LUNs that use single-level peripheral or flat space addressing,
  /// in the order reported. Others are left out (see `rawLuns`).
  public let luns: [UInt16]

  public var isTruncated: Bool { rawLuns.count * 8 < Int(lunListLength) }
  public var requiredAllocationLength: UInt32 {
    let (v, o) = lunListLength.addingReportingOverflow(8)
    return o ? UInt32.max : v
  }

  public init(_ bytes: [UInt8]) throws {
    try require(bytes, 8, "REPORT LUNS header")
    lunListLength = be32(bytes, 0)
    guard lunListLength % 8 == 0 else {
      throw SCSIError(.invalidField, "REPORT LUNS: LUN list length \(lunListLength) is not a multiple of 8")
    }
    let available = (bytes.count - 8) / 8
    let count = min(available, Int(lunListLength / 8))
    var raw: [UInt64] = []
    raw.reserveCapacity(count)
    for i in 0..<count { raw.append(be64(bytes, 8 + i * 8)) }
    rawLuns = raw
    luns = raw.compactMap(LUNAddress.decode)
  }
}

/// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.36.2): length-only
/// header (Table 204, RETURN DATA LENGTH bytes 0-3) or extended header
/// (Table 205: FORMAT TYPE byte 4 bits 6-4 = 001b, IMPLICIT TRANSITION TIME
/// byte 5, descriptors from byte 8), then target port group descriptors.
///
/// Data cut short by the allocation length is not an error: the complete
/// descriptors are returned and `isTruncated` is set.
public struct ReportTargetPortGroups: Sendable, Equatable {
  /// ASYMMETRIC ACCESS STATE (SPC-4 6.36.2, Table 207).
  public struct AccessState: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let activeOptimized = AccessState(rawValue: 0x0)
    public static let activeNonOptimized = AccessState(rawValue: 0x1)
    public static let standby = AccessState(rawValue: 0x2)
    public static let unavailable = AccessState(rawValue: 0x3)
    public static let logicalBlockDependent = AccessState(rawValue: 0x4)
    public static let offline = AccessState(rawValue: 0xE)
    public static let transitioning = AccessState(rawValue: 0xF)

    /// Whether READ/WRITE can be sent through ports in this state.
    public var allowsIO: Bool { self == .activeOptimized || self == .activeNonOptimized }

    public var description: String {
      switch self {
      case .activeOptimized: return "active/optimized"
      case .activeNonOptimized: return "active/non-optimized"
      case .standby: return "standby"
      case .unavailable: return "unavailable"
      case .logicalBlockDependent: return "logical block dependent"
      case .offline: return "offline"
      case .transitioning: return "transitioning"
      default: return "reserved(0x\(hexString([rawValue])))"
      }
    }
  }

  /// One target port group descriptor (SPC-4 6.36.2, Table 206).
  public struct Group: Sendable, Equatable {
    /// Byte 0 bit 7, PREF.
    public let preferred: Bool
    /// Byte 0 bits 3-0.
    public let asymmetricAccessState: AccessState
    /// Byte 1: T_SUP bit 7, O_SUP bit 6, LBD_SUP bit 4, U_SUP bit 3,
    /// S_SUP bit 2, AN_SUP bit 1, AO_SUP bit 0 (states the group supports).
    public let supportedStates: UInt8
    /// Bytes 2-3, TARGET PORT GROUP.
    public let groupID: UInt16
    /// Byte 5, STATUS CODE (SPC-4 Table 208: 0 = none, 1 = altered by SET
    /// TARGET PORT GROUPS, 2 = altered by implicit behaviour).
    public let statusCode: UInt8
    /// RELATIVE TARGET PORT IDENTIFIER (bytes 2-3 of each 4-byte target port
    /// descriptor, SPC-4 Table 209) for the TARGET PORT COUNT (byte 7) ports.
    public let relativeTargetPortIDs: [UInt16]
  }

  /// RETURN DATA LENGTH (bytes following the 4-byte field).
  public let returnDataLength: UInt32
  /// True when the data used the extended header.
  public let extendedHeader: Bool
  /// IMPLICIT TRANSITION TIME in seconds (extended header only, else 0).
  public let implicitTransitionTime: UInt8
  public let groups: [Group]
  public let isTruncated: Bool

  public var requiredAllocationLength: UInt32 {
    let (v, o) = returnDataLength.addingReportingOverflow(4)
    return o ? UInt32.max : v
  }

  /// The group that contains `relativeTargetPortID`.
  public func group(forRelativeTargetPort id: UInt16) -> Group? {
    groups.first { $0.relativeTargetPortIDs.contains(id) }
  }

  public init(_ bytes: [UInt8]) throws {
    try require(bytes, 4, "REPORT TARGET PORT GROUPS header")
    returnDataLength = be32(bytes, 0)
    let total = 4 + Int(returnDataLength)
    var start = 4
    if bytes.count >= 8, (bytes[4] >> 4) & 0x07 == 0x01 {
      extendedHeader = true
      implicitTransitionTime = bytes[5]
      start = 8
    } else {
      extendedHeader = false
      implicitTransitionTime = 0
    }
    var parsed = ReportTargetPortGroups.descriptors(bytes, from: start, total: total)
    // With the extended header some targets (LIO) count only the descriptors in RETURN
    // DATA LENGTH, not the 4 header bytes after it, as the kernel's scsi_dh_alua also
    // tolerates: read the descriptors to 8 + length when they fit there exactly.
    if extendedHeader, parsed.truncated, bytes.count >= total + 4 {
      let alternative = ReportTargetPortGroups.descriptors(bytes, from: start, total: total + 4)
      if !alternative.truncated { parsed = alternative }
    }
    // A partial descriptor inside a buffer that was *not* cut short means the
    // lengths disagree: that is garbage, not truncation.
    if parsed.truncated && bytes.count >= total {
      throw SCSIError(.invalidField, "REPORT TARGET PORT GROUPS: descriptor overruns return data length")
    }
    groups = parsed.list
    isTruncated = parsed.truncated
  }

  /// The descriptors from `start` up to `total` (or the buffer's end); `truncated` when one
  /// does not fit.
  static func descriptors(_ bytes: [UInt8], from start: Int, total: Int) -> (list: [Group], truncated: Bool) {
    let end = min(total, bytes.count)
    var truncated = bytes.count < total
    var list: [Group] = []
    var o = start
    while o < end {
      guard o + 8 <= end else { truncated = true; break }
      let portCount = Int(bytes[o + 7])
      let size = 8 + 4 * portCount
      guard o + size <= end else { truncated = true; break }
      var ports: [UInt16] = []
      for p in 0..<portCount { ports.append(be16(bytes, o + 8 + 4 * p + 2)) }
      list.append(
        Group(
          preferred: bytes[o] & 0x80 != 0, asymmetricAccessState: AccessState(rawValue: bytes[o] & 0x0F),
          supportedStates: bytes[o + 1], groupID: be16(bytes, o + 2), statusCode: bytes[o + 5],
          relativeTargetPortIDs: ports))
      o += size
    }
    return (list, truncated)
  }
}
