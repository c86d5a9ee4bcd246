// Standard INQUIRY data (SPC-4 6.6.2) and the VPD pages the initiator reads
// (SPC-4 7.8, SBC-3 6.6).

/// Peripheral device types (SPC-4 6.6.2, Table 146).
public enum PeripheralDeviceType {
  public static let directAccess: UInt8 = 0x00  // SBC-3 disk
  public static let sequentialAccess: UInt8 = 0x01
  public static let cdDvd: UInt8 = 0x05
  public static let opticalMemory: UInt8 = 0x07
  public static let mediumChanger: UInt8 = 0x08
  public static let storageArrayController: UInt8 = 0x0C
  public static let enclosureServices: UInt8 = 0x0D
  public static let unknownOrNoDevice: UInt8 = 0x1F
}

/// Standard INQUIRY data (SPC-4 6.6.2, Table 143). Needs the first 36 bytes
/// (the "36-byte INQUIRY"), which every SCSI-2 and later device returns.
public struct StandardInquiry: Sendable, Equatable {
  /// Byte 0 bits 7-5: 000b = LU connected, 001b = capable but not connected,
  /// 011b = no LU at this LUN (SPC-4 Table 145).
  public let peripheralQualifier: UInt8
  /// Byte 0 bits 4-0 (SPC-4 Table 146); see `PeripheralDeviceType`.
  public let deviceType: UInt8
  /// Byte 1 bit 7, RMB.
  public let removable: Bool
  /// Byte 2, VERSION (0x05 = SPC-3, 0x06 = SPC-4, 0x07 = SPC-5).
  public let version: UInt8
  /// Byte 3 bits 3-0, RESPONSE DATA FORMAT (2 for all current devices).
  public let responseDataFormat: UInt8
  /// Byte 4, ADDITIONAL LENGTH (n - 4).
  public let additionalLength: UInt8
  /// Byte 5 bit 0, PROTECT: the LU supports protection information.
  public let protect: Bool
  /// Byte 5 bit 3, 3PC: third-party copy supported.
  public let thirdPartyCopy: Bool
  /// Byte 5 bits 5-4, TPGS (SPC-4 Table 147): 0 = no ALUA, 1 = implicit only,
  /// 2 = explicit only, 3 = both.
  public let tpgs: UInt8
  /// Byte 6 bit 4, MULTIP: multi-port device.
  public let multiPort: Bool
  /// Byte 7 bit 1, CMDQUE: command queuing supported.
  public let cmdQue: Bool
  /// Bytes 8-15, T10 VENDOR IDENTIFICATION, trimmed.
  public let vendor: String
  /// Bytes 16-31, PRODUCT IDENTIFICATION, trimmed.
  public let product: String
  /// Bytes 32-35, PRODUCT REVISION LEVEL, trimmed.
  public let revision: String

  /// True when the LU supports ALUA (TPGS != 0), i.e. REPORT TARGET PORT GROUPS.
  public var supportsALUA: Bool { tpgs != 0 }
  /// True when a logical unit is actually present at this LUN.
  public var isConnected: Bool { peripheralQualifier == 0 }

  public init(_ bytes: [UInt8]) throws {
    try require(bytes, 36, "standard INQUIRY data")
    peripheralQualifier = bytes[0] >> 5
    deviceType = bytes[0] & 0x1F
    removable = bytes[1] & 0x80 != 0
    version = bytes[2]
    responseDataFormat = bytes[3] & 0x0F
    additionalLength = bytes[4]
    protect = bytes[5] & 0x01 != 0
    thirdPartyCopy = bytes[5] & 0x08 != 0
    tpgs = (bytes[5] >> 4) & 0x03
    multiPort = bytes[6] & 0x10 != 0
    cmdQue = bytes[7] & 0x02 != 0
    vendor = asciiField(bytes[8..<16])
    product = asciiField(bytes[16..<32])
    revision = asciiField(bytes[32..<36])
  }
}

// MARK: - VPD pages

/// VPD page codes (SPC-4 7.8.1, Table 573; SBC-3 6.6.1, Table 182).
public enum VPDPage {
  public static let supportedPages: UInt8 = 0x00
  public static let unitSerialNumber: UInt8 = 0x80
  public static let deviceIdentification: UInt8 = 0x83
  public static let blockLimits: UInt8 = 0xB0
  public static let blockDeviceCharacteristics: UInt8 = 0xB1
  public static let logicalBlockProvisioning: UInt8 = 0xB2

  /// The total size of the VPD page in `bytes` (4-byte header + PAGE LENGTH in
  /// bytes 2-3, SPC-4 7.8.1 Table 572). When it is larger than the allocation
  /// length used, re-issue the INQUIRY with at least this many bytes.
  public static func totalLength(_ bytes: [UInt8]) throws -> Int {
    try require(bytes, 4, "VPD page header")
    return 4 + Int(be16(bytes, 2))
  }

  /// Validates the common VPD header (SPC-4 7.8.1, Table 572: byte 0 qualifier
  /// and device type, byte 1 PAGE CODE, bytes 2-3 PAGE LENGTH) and returns the
  /// page's bytes cut to its stated length.
  static func body(_ bytes: [UInt8], page: UInt8, name: String) throws -> [UInt8] {
    let total = try totalLength(bytes)
    guard bytes[1] == page else {
      throw SCSIError(.invalidField, "\(name): page code 0x\(hexString([bytes[1]])), expected 0x\(hexString([page]))")
    }
    guard bytes.count >= total else {
      throw SCSIError(.truncated, "\(name): page needs \(total) bytes, got \(bytes.count)")
    }
    return Array(bytes[0..<total])
  }
}

/// Supported VPD Pages page, 0x00 (SPC-4 7.8.16): the page codes from byte 4 on.
public struct VPDSupportedPages: Sendable, Equatable {
  public let pages: [UInt8]

  public init(_ bytes: [UInt8]) throws {
    let b = try VPDPage.body(bytes, page: VPDPage.supportedPages, name: "Supported VPD Pages")
    pages = Array(b[4...])
  }

  public func contains(_ page: UInt8) -> Bool { pages.contains(page) }
}

/// Unit Serial Number page, 0x80 (SPC-4 7.8.17): PRODUCT SERIAL NUMBER, ASCII,
/// from byte 4; returned trimmed of spaces and NULs.
public struct UnitSerialNumber: Sendable, Equatable {
  public let serialNumber: String

  public init(_ bytes: [UInt8]) throws {
    let b = try VPDPage.body(bytes, page: VPDPage.unitSerialNumber, name: "Unit Serial Number")
    serialNumber = asciiField(b[4...])
  }
}

/// Device Identification page, 0x83 (SPC-4 7.8.6, Tables 589-590): a list of
/// designation descriptors.
public struct DeviceIdentification: Sendable, Equatable {
  /// One designation descriptor (SPC-4 7.8.6.1, Table 590).
  public struct Designator: Sendable, Equatable {
    /// Byte 0 bits 7-4, PROTOCOL IDENTIFIER (SPC-4 7.6.1, Table 444; 5 = iSCSI).
    /// Meaningful only when `piv` is set.
    public let protocolIdentifier: UInt8
    /// Byte 0 bits 3-0, CODE SET (SPC-4 Table 591).
    public let codeSet: UInt8
    /// Byte 1 bit 7, PIV: `protocolIdentifier` is valid.
    public let piv: Bool
    /// Byte 1 bits 5-4, ASSOCIATION (SPC-4 Table 592).
    public let association: UInt8
    /// Byte 1 bits 3-0, DESIGNATOR TYPE (SPC-4 Table 593).
    public let type: UInt8
    /// The DESIGNATOR field (its length is byte 3).
    public let bytes: [UInt8]

    /// CODE SET values (SPC-4 Table 591).
    public enum CodeSet {
      public static let binary: UInt8 = 1
      public static let ascii: UInt8 = 2
      public static let utf8: UInt8 = 3
    }

    /// ASSOCIATION values (SPC-4 Table 592).
    public enum Association {
      public static let logicalUnit: UInt8 = 0
      public static let targetPort: UInt8 = 1
      public static let targetDevice: UInt8 = 2
    }

    /// DESIGNATOR TYPE values (SPC-4 Table 593).
    public enum DesignatorType {
      public static let vendorSpecific: UInt8 = 0x0
      public static let t10VendorID: UInt8 = 0x1  // SPC-4 7.8.6.4
      public static let eui64: UInt8 = 0x2  // SPC-4 7.8.6.5
      public static let naa: UInt8 = 0x3  // SPC-4 7.8.6.6
      public static let relativeTargetPort: UInt8 = 0x4  // SPC-4 7.8.6.7
      public static let targetPortGroup: UInt8 = 0x5  // SPC-4 7.8.6.8
      public static let logicalUnitGroup: UInt8 = 0x6  // SPC-4 7.8.6.9
      public static let md5LogicalUnit: UInt8 = 0x7  // SPC-4 7.8.6.10
      public static let scsiNameString: UInt8 = 0x8  // SPC-4 7.8.6.11
      public static let protocolSpecificPort: UInt8 = 0x9
      public static let uuid: UInt8 = 0xA
    }

    public init(protocolIdentifier: UInt8, codeSet: UInt8, piv: Bool, association: UInt8, type: UInt8, bytes: [UInt8]) {
      self.protocolIdentifier = protocolIdentifier
      self.codeSet = codeSet
      self.piv = piv
      self.association = association
      self.type = type
      self.bytes = bytes
    }

    /// The designator as text: lowercase hex for binary code set, the text
    /// trimmed of spaces and NULs for ASCII/UTF-8.
    public var text: String {
      if codeSet == CodeSet.binary { return hexString(bytes) }
      return asciiField(bytes[...])
    }

    /// For relative target port (SPC-4 7.8.6.7, Table 601) and target port
    /// group (7.8.6.8, Table 602) designators: the 16-bit value in bytes 2-3.
    public var portValue: UInt16? {
      guard type == DesignatorType.relativeTargetPort || type == DesignatorType.targetPortGroup,
        bytes.count >= 4
      else { return nil }
      return be16(bytes, 2)
    }
  }

  public let designators: [Designator]

  public init(_ bytes: [UInt8]) throws {
    let b = try VPDPage.body(bytes, page: VPDPage.deviceIdentification, name: "Device Identification")
    var list: [Designator] = []
    var o = 4
    while o < b.count {
      guard o + 4 <= b.count else {
        throw SCSIError(.truncated, "Device Identification: descriptor header at \(o) runs past the page")
      }
      let len = Int(b[o + 3])
      guard o + 4 + len <= b.count else {
        throw SCSIError(.truncated, "Device Identification: descriptor at \(o) (\(len) bytes) runs past the page")
      }
      list.append(
        Designator(
          protocolIdentifier: b[o] >> 4, codeSet: b[o] & 0x0F, piv: b[o + 1] & 0x80 != 0,
          association: (b[o + 1] >> 4) & 0x03, type: b[o + 1] & 0x0F,
          bytes: Array(b[(o + 4)..<(o + 4 + len)])))
      o += 4 + len
    }
    designators = list
  }

  /// The logical unit's best designator, by preference NAA > EUI-64 > T10
  /// vendor ID > SCSI name string (the order udev's scsi_id uses).
  public var preferredDesignator: Designator? {
    typealias T = Designator.DesignatorType
    let lu = designators.filter { $0.association == Designator.Association.logicalUnit }
    for type in [T.naa, T.eui64, T.t10VendorID, T.scsiNameString] {
      if let d = lu.first(where: { $0.type == type && !$0.bytes.isEmpty }) { return d }
    }
    return nil
  }

  /// The logical unit's NAA designator as udev names it (`/dev/disk/by-id/wwn-0x…`):
  /// "0x" and the designator in lowercase hex; nil without one.
  public var wwn: String? {
    let lu = designators.filter { $0.association == Designator.Association.logicalUnit }
    guard let d = lu.first(where: { $0.type == Designator.DesignatorType.naa && !$0.bytes.isEmpty }) else { return nil }
    return "0x" + hexString(d.bytes)
  }

  /// A stable identifier for the logical unit, formatted like the Linux
  /// /dev/disk/by-id names without their prefix: NAA and EUI-64 as lowercase
  /// hex (e.g. "60000000000000000e00000000010001", Linux "wwn-0x…"), T10 vendor
  /// ID and SCSI name string as text with runs of spaces replaced by a single
  /// "_" (as udev does). nil when the page has none of those.
  public var preferredIdentifier: String? {
    guard let d = preferredDesignator else { return nil }
    typealias T = Designator.DesignatorType
    if d.type == T.naa || d.type == T.eui64 {
      return hexString(d.bytes)
    }
    var out = ""
    var pendingSpace = false
    for ch in d.text {
      if ch == " " {
        pendingSpace = true
      } else {
        if pendingSpace { out.append("_") }
        pendingSpace = false
        out.append(ch)
      }
    }
    return out.isEmpty ? nil : out
  }

  /// RELATIVE TARGET PORT IDENTIFIER of the port the command came through
  /// (designator type 4, association target port).
  public var relativeTargetPortIdentifier: UInt16? {
    designators.first {
      $0.type == Designator.DesignatorType.relativeTargetPort
        && $0.association == Designator.Association.targetPort
    }?.portValue
  }

  /// TARGET PORT GROUP of that port (designator type 5), for ALUA.
  public var targetPortGroup: UInt16? {
    designators.first { $0.type == Designator.DesignatorType.targetPortGroup }?.portValue
  }
}

/// Block Limits page, 0xB0 (SBC-3 6.6.3, Table 185). Older devices return a
/// shorter page (PAGE LENGTH 0x0C); fields beyond the returned page read as 0.
/// All lengths are in logical blocks; 0 means "not reported / no limit".
public struct BlockLimits: Sendable, Equatable {
  /// Byte 4 bit 0, WSNZ: WRITE SAME with 0 blocks is not supported.
  public let wsnz: Bool
  /// Byte 5, MAXIMUM COMPARE AND WRITE LENGTH.
  public let maximumCompareAndWriteLength: UInt8
  /// Bytes 6-7, OPTIMAL TRANSFER LENGTH GRANULARITY.
  public let optimalTransferLengthGranularity: UInt16
  /// Bytes 8-11, MAXIMUM TRANSFER LENGTH.
  public let maximumTransferLength: UInt32
  /// Bytes 12-15, OPTIMAL TRANSFER LENGTH.
  public let optimalTransferLength: UInt32
  /// Bytes 16-19, MAXIMUM PREFETCH LENGTH.
  public let maximumPrefetchLength: UInt32
  /// Bytes 20-23, MAXIMUM UNMAP LBA COUNT (0xFFFFFFFF = no limit).
  public let maximumUnmapLBACount: UInt32
  /// Bytes 24-27, MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (0xFFFFFFFF = no limit).
  public let maximumUnmapBlockDescriptorCount: UInt32
  /// Bytes 28-31, OPTIMAL UNMAP GRANULARITY.
  public let optimalUnmapGranularity: UInt32
  /// Byte 32 bit 7, UGAVALID: `unmapGranularityAlignment` is valid.
  public let unmapGranularityAlignmentValid: Bool
  /// Bytes 32-35 bits 30-0, UNMAP GRANULARITY ALIGNMENT.
  public let unmapGranularityAlignment: UInt32
  /// Bytes 36-43, MAXIMUM WRITE SAME LENGTH.
  public let maximumWriteSameLength: UInt64

  public init(_ bytes: [UInt8]) throws {
    let b = try VPDPage.body(bytes, page: VPDPage.blockLimits, name: "Block Limits")
    func u32(_ i: Int) -> UInt32 { b.count >= i + 4 ? be32(b, i) : 0 }
    wsnz = b.count > 4 && b[4] & 0x01 != 0
    maximumCompareAndWriteLength = b.count > 5 ? b[5] : 0
    optimalTransferLengthGranularity = b.count >= 8 ? be16(b, 6) : 0
    maximumTransferLength = u32(8)
    optimalTransferLength = u32(12)
    maximumPrefetchLength = u32(16)
    maximumUnmapLBACount = u32(20)
    maximumUnmapBlockDescriptorCount = u32(24)
    optimalUnmapGranularity = u32(28)
    let uga = u32(32)
    unmapGranularityAlignmentValid = uga & 0x8000_0000 != 0
    unmapGranularityAlignment = uga & 0x7FFF_FFFF
    maximumWriteSameLength = b.count >= 44 ? be64(b, 36) : 0
  }
}

/// Block Device Characteristics page, 0xB1 (SBC-3 6.6.2, Table 183).
public struct BlockDeviceCharacteristics: Sendable, Equatable {
  /// Bytes 4-5, MEDIUM ROTATION RATE (SBC-3 Table 184): 0 = not reported,
  /// 1 = non-rotating (solid state), 0x0401-0xFFFE = rpm.
  public let mediumRotationRate: UInt16
  /// Byte 7 bits 3-0, NOMINAL FORM FACTOR (0 = not reported).
  public let nominalFormFactor: UInt8

  /// false for solid state, true for a reported rpm, nil when not reported.
  public var isRotational: Bool? {
    switch mediumRotationRate {
    case 0x0001: return false
    case 0x0401...0xFFFE: return true
    default: return nil
    }
  }

  public init(_ bytes: [UInt8]) throws {
    let b = try VPDPage.body(bytes, page: VPDPage.blockDeviceCharacteristics, name: "Block Device Characteristics")
    try require(b, 6, "Block Device Characteristics")
    mediumRotationRate = be16(b, 4)
    nominalFormFactor = b.count > 7 ? b[7] & 0x0F : 0
  }
}

/// Logical Block Provisioning page, 0xB2 (SBC-3 6.6.4, Table 186).
public struct LogicalBlockProvisioning: Sendable, Equatable {
  /// Byte 4, THRESHOLD EXPONENT.
  public let thresholdExponent: UInt8
  /// Byte 5 bit 7, LBPU: UNMAP is supported.
  public let lbpu: Bool
  /// Byte 5 bit 6, LBPWS: WRITE SAME(16) with UNMAP is supported.
  public let lbpws: Bool
  /// Byte 5 bit 5, LBPWS10: WRITE SAME(10) with UNMAP is supported.
  public let lbpws10: Bool
  /// Byte 5 bit 2, LBPRZ: unmapped blocks read as zeros.
  public let lbprz: Bool
  /// Byte 5 bit 1, ANC_SUP: the ANCHOR bit is supported.
  public let anchorSupported: Bool
  /// Byte 5 bit 0, DP: a provisioning group descriptor is present.
  public let descriptorPresent: Bool
  /// Byte 6 bits 2-0, PROVISIONING TYPE (SBC-3 Table 187): 0 = full/not
  /// reported, 1 = resource provisioned, 2 = thin provisioned.
  public let provisioningType: UInt8

  public enum ProvisioningType {
    public static let full: UInt8 = 0
    public static let resourceProvisioned: UInt8 = 1
    public static let thin: UInt8 = 2
  }

  public init(_ bytes: [UInt8]) throws {
    let b = try VPDPage.body(bytes, page: VPDPage.logicalBlockProvisioning, name: "Logical Block Provisioning")
    try require(b, 7, "Logical Block Provisioning")
    thresholdExponent = b[4]
    lbpu = b[5] & 0x80 != 0
    lbpws = b[5] & 0x40 != 0
    lbpws10 = b[5] & 0x20 != 0
    lbprz = b[5] & 0x04 != 0
    anchorSupported = b[5] & 0x02 != 0
    descriptorPresent = b[5] & 0x01 != 0
    provisioningType = b[6] & 0x07
  }
}
