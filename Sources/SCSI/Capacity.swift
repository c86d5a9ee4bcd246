/// READ CAPACITY(10) parameter data (SBC-3 5.15.2, Table 63): 8 bytes.
public struct ReadCapacity10: Sendable, Equatable {
  /// Bytes 0-3, RETURNED LOGICAL BLOCK ADDRESS (the last LBA).
  public let lastLBA: UInt32
  /// Bytes 4-7, LOGICAL BLOCK LENGTH IN BYTES.
  public let blockLength: UInt32

  public init(_ bytes: [UInt8]) throws {
    try require(bytes, 8, "READ CAPACITY(10) data")
    lastLBA = be32(bytes, 0)
    blockLength = be32(bytes, 4)
  }

  /// 0xFFFFFFFF means the capacity does not fit: use READ CAPACITY(16)
  /// (SBC-3 5.15.2).
  public var needsReadCapacity16: Bool { lastLBA == UInt32.max }
  public var blockCount: UInt64 { UInt64(lastLBA) + 1 }
  public var sizeBytes: UInt64 { blockCount * UInt64(blockLength) }  // < 2^64: 2^32 * 2^32
}

/// READ CAPACITY(16) parameter data (SBC-3 5.16.2, Table 65). The full data
/// is 32 bytes; at least the first 12 (last LBA and block length) are
/// required, bytes 12-15 read as 0 when absent.
public struct ReadCapacity16: Sendable, Equatable {
  /// Bytes 0-7, RETURNED LOGICAL BLOCK ADDRESS (the last LBA).
  public let lastLBA: UInt64
  /// Bytes 8-11, LOGICAL BLOCK LENGTH IN BYTES.
  public let blockLength: UInt32
  /// Byte 12 bits 3-1, P_TYPE (SBC-3 Table 66).
  public let protectionTypeField: UInt8
  /// Byte 12 bit 0, PROT_EN.
  public let protectionEnabled: Bool
  /// Byte 13 bits 7-4, P_I_EXPONENT.
  public let protectionIntervalExponent: UInt8
  /// Byte 13 bits 3-0, LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT.
  public let logicalBlocksPerPhysicalBlockExponent: UInt8
  /// Byte 14 bit 7, LBPME: logical block provisioning (thin) is enabled.
  public let lbpme: Bool
  /// Byte 14 bit 6, LBPRZ: unmapped blocks read as zeros.
  public let lbprz: Bool
  /// Byte 14 bits 5-0 and byte 15, LOWEST ALIGNED LOGICAL BLOCK ADDRESS.
  public let lowestAlignedLBA: UInt16

  public init(_ bytes: [UInt8]) throws {
    try require(bytes, 12, "READ CAPACITY(16) data")
    lastLBA = be64(bytes, 0)
    blockLength = be32(bytes, 8)
    let b12 = bytes.count > 12 ? bytes[12] : 0
    let b13 = bytes.count > 13 ? bytes[13] : 0
    let b14 = bytes.count > 14 ? bytes[14] : 0
    let b15 = bytes.count > 15 ? bytes[15] : 0
    protectionTypeField = (b12 >> 1) & 0x07
    protectionEnabled = b12 & 0x01 != 0
    protectionIntervalExponent = b13 >> 4
    logicalBlocksPerPhysicalBlockExponent = b13 & 0x0F
    lbpme = b14 & 0x80 != 0
    lbprz = b14 & 0x40 != 0
    lowestAlignedLBA = UInt16(b14 & 0x3F) << 8 | UInt16(b15)
  }

  /// Protection information type 1-3 when PROT_EN is set (SBC-3 Table 66:
  /// P_TYPE 000b = type 1, 001b = type 2, 010b = type 3), nil otherwise.
  public var protection: UInt8? {
    protectionEnabled ? protectionTypeField + 1 : nil
  }

  /// Number of logical blocks (last LBA + 1), saturating at UInt64.max.
  public var blockCount: UInt64 {
    let (v, o) = lastLBA.addingReportingOverflow(1)
    return o ? UInt64.max : v
  }

  /// Capacity in bytes, saturating at UInt64.max.
  public var sizeBytes: UInt64 {
    let (v, o) = blockCount.multipliedReportingOverflow(by: UInt64(blockLength))
    return o ? UInt64.max : v
  }

  /// Physical block size: blockLength << exponent, saturating.
  public var physicalBlockLength: UInt64 {
    let e = UInt64(logicalBlocksPerPhysicalBlockExponent)  // <= 15
    return UInt64(blockLength) << e  // 2^32 * 2^15 fits
  }
}
