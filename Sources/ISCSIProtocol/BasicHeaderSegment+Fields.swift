import NIOCore

// Named views of the opcode-specific BHS words (RFC 7143 section 11). Each accessor is
// valid only for the PDUs whose layout the comment names.
extension BasicHeaderSegment {
  /// Initiator PDUs (SCSI Command, NOP-Out, Task Management, Login, Text, Logout): CmdSN.
  public var cmdSN: UInt32 {
    get { word6 }
    set { word6 = newValue }
  }
  /// Initiator PDUs: ExpStatSN.
  public var expStatSN: UInt32 {
    get { word7 }
    set { word7 = newValue }
  }
  /// Target PDUs: StatSN.
  public var statSN: UInt32 {
    get { word6 }
    set { word6 = newValue }
  }
  /// Target PDUs: ExpCmdSN.
  public var expCmdSN: UInt32 {
    get { word7 }
    set { word7 = newValue }
  }
  /// Target PDUs: MaxCmdSN.
  public var maxCmdSN: UInt32 {
    get { word8 }
    set { word8 = newValue }
  }
  /// NOP-Out/-In, Text, Data-Out/-In, R2T: Target Transfer Tag.
  public var targetTransferTag: UInt32 {
    get { word5 }
    set { word5 = newValue }
  }
  /// SCSI Command: Expected Data Transfer Length.
  public var expectedDataTransferLength: UInt32 {
    get { word5 }
    set { word5 = newValue }
  }
  /// Data-In / Data-Out: DataSN. R2T: R2TSN. SCSI Response: ExpDataSN.
  public var dataSN: UInt32 {
    get { word9 }
    set { word9 = newValue }
  }
  /// Data-In / Data-Out / R2T: Buffer Offset.
  public var bufferOffset: UInt32 {
    get { word10 }
    set { word10 = newValue }
  }
  /// Data-In / SCSI Response: Residual Count. R2T: Desired Data Transfer Length.
  public var residualCount: UInt32 {
    get { word11 }
    set { word11 = newValue }
  }
  public var desiredDataTransferLength: UInt32 {
    get { word11 }
    set { word11 = newValue }
  }

  /// SCSI Command: the CDB field (words 8...11) as `CDBBytes` keeps it.
  public var cdbWords: (UInt32, UInt32, UInt32, UInt32) {
    get { (word8, word9, word10, word11) }
    set { (word8, word9, word10, word11) = newValue }
  }

  /// SCSI Command: the 16-byte CDB in words 8...11.
  public var cdb: [UInt8] {
    get {
      var out = [UInt8]()
      out.reserveCapacity(16)
      for w in [word8, word9, word10, word11] {
        out.append(UInt8(w >> 24))
        out.append(UInt8((w >> 16) & 0xff))
        out.append(UInt8((w >> 8) & 0xff))
        out.append(UInt8(w & 0xff))
      }
      return out
    }
    set {
      precondition(newValue.count <= 16, "CDBs longer than 16 bytes need an extended-CDB AHS")
      // Bytes past the CDB's end are zero. No scratch array: this runs for every command.
      func b(_ i: Int) -> UInt32 { i < newValue.count ? UInt32(newValue[i]) : 0 }
      func w(_ i: Int) -> UInt32 {
        b(i) << 24 | b(i + 1) << 16 | b(i + 2) << 8 | b(i + 3)
      }
      word8 = w(0)
      word9 = w(4)
      word10 = w(8)
      word11 = w(12)
    }
  }

  /// SCSI Response / Data-In with the S bit: SCSI status. (byte 3)
  public var scsiStatus: UInt8 {
    get { byte3 }
    set { byte3 = newValue }
  }
  /// SCSI Response / Task Management Response / Logout Response: the Response byte.
  public var response: UInt8 {
    get { byte2 }
    set { byte2 = newValue }
  }

  /// Login PDUs: ISID (6 bytes) in bytes 8...13.
  public var isid: UInt64 {
    get { lun >> 16 }
    set { lun = (newValue << 16) | (lun & 0xffff) }
  }
  /// Login PDUs: TSIH in bytes 14...15.
  public var tsih: UInt16 {
    get { UInt16(lun & 0xffff) }
    set { lun = (lun & ~0xffff) | UInt64(newValue) }
  }
  /// Login Request / Logout Request: CID in bytes 20...21.
  public var cid: UInt16 {
    get { UInt16(word5 >> 16) }
    set { word5 = UInt32(newValue) << 16 | (word5 & 0xffff) }
  }
  /// Login Response: Status-Class (byte 36) and Status-Detail (byte 37).
  public var loginStatusClass: UInt8 { UInt8(word9 >> 24) }
  public var loginStatusDetail: UInt8 { UInt8((word9 >> 16) & 0xff) }

  /// Async Message: AsyncEvent (byte 36), AsyncVCode (37), Parameter1..3 (38...43).
  public var asyncEvent: UInt8 { UInt8(word9 >> 24) }
  public var asyncParameter1: UInt16 { UInt16(word9 & 0xffff) }
  public var asyncParameter2: UInt16 { UInt16(word10 >> 16) }
  public var asyncParameter3: UInt16 { UInt16(word10 & 0xffff) }

  /// Logout Response: Time2Wait and Time2Retain (bytes 40...43).
  public var logoutTime2Wait: UInt16 { UInt16(word10 >> 16) }
  public var logoutTime2Retain: UInt16 { UInt16(word10 & 0xffff) }

  /// Reject: reason code (byte 2).
  public var rejectReason: UInt8 { byte2 }
}

/// Flags of Data-In (RFC 7143 section 11.7.1) and SCSI Response (11.4.1).
public enum DataInFlags {
  public static let final: UInt8 = 0x80
  public static let acknowledge: UInt8 = 0x40
  public static let overflow: UInt8 = 0x04
  public static let underflow: UInt8 = 0x02
  public static let status: UInt8 = 0x01
  /// SCSI Response bidirectional overflow/underflow (bits 3, 4).
  public static let bidiOverflow: UInt8 = 0x10
  public static let bidiUnderflow: UInt8 = 0x08
}

/// Flags of a SCSI Command (RFC 7143 section 11.3.1).
public enum SCSICommandFlags {
  public static let final: UInt8 = 0x80
  public static let read: UInt8 = 0x40
  public static let write: UInt8 = 0x20
  /// ATTR = simple task.
  public static let simple: UInt8 = 0x01
}

/// LUN encoding for the 8-byte LUN field (SAM: peripheral device addressing for LUN < 256,
/// flat space addressing up to 16383).
public enum LUNEncoding {
  public static func encode(_ lun: UInt16) -> UInt64 {
    if lun < 256 { return UInt64(lun) << 48 }
    return (UInt64(0x4000 | (lun & 0x3fff))) << 48
  }
  public static func decode(_ raw: UInt64) -> UInt16 {
    let top = UInt16(raw >> 48)
    switch top >> 14 {
    case 0: return top & 0xff
    case 1: return top & 0x3fff
    default: return top & 0x3fff
    }
  }
}
