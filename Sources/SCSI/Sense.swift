// SCSI status, sense data and error classification.

import Failure

/// SCSI status byte (SAM-5 5.3.1, Table 37).
public struct SCSIStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: UInt8
  public init(rawValue: UInt8) { self.rawValue = rawValue }
  public init(_ rawValue: UInt8) { self.rawValue = rawValue }

  public static let good = SCSIStatus(0x00)
  public static let checkCondition = SCSIStatus(0x02)
  public static let conditionMet = SCSIStatus(0x04)
  public static let busy = SCSIStatus(0x08)
  public static let reservationConflict = SCSIStatus(0x18)
  public static let taskSetFull = SCSIStatus(0x28)
  public static let acaActive = SCSIStatus(0x30)
  public static let taskAborted = SCSIStatus(0x40)

  public var description: String {
    switch self {
    case .good: return "GOOD"
    case .checkCondition: return "CHECK CONDITION"
    case .conditionMet: return "CONDITION MET"
    case .busy: return "BUSY"
    case .reservationConflict: return "RESERVATION CONFLICT"
    case .taskSetFull: return "TASK SET FULL"
    case .acaActive: return "ACA ACTIVE"
    case .taskAborted: return "TASK ABORTED"
    default: return "STATUS 0x\(hexString([rawValue]))"
    }
  }
}

/// SENSE KEY (SPC-4 4.5.6, Table 48).
public struct SenseKey: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: UInt8
  public init(rawValue: UInt8) { self.rawValue = rawValue & 0x0F }
  public init(_ rawValue: UInt8) { self.init(rawValue: rawValue) }

  public static let noSense = SenseKey(0x0)
  public static let recoveredError = SenseKey(0x1)
  public static let notReady = SenseKey(0x2)
  public static let mediumError = SenseKey(0x3)
  public static let hardwareError = SenseKey(0x4)
  public static let illegalRequest = SenseKey(0x5)
  public static let unitAttention = SenseKey(0x6)
  public static let dataProtect = SenseKey(0x7)
  public static let blankCheck = SenseKey(0x8)
  public static let vendorSpecific = SenseKey(0x9)
  public static let copyAborted = SenseKey(0xA)
  public static let abortedCommand = SenseKey(0xB)
  public static let volumeOverflow = SenseKey(0xD)
  public static let miscompare = SenseKey(0xE)
  public static let completed = SenseKey(0xF)

  public var description: String {
    switch rawValue {
    case 0x0: return "NO SENSE"
    case 0x1: return "RECOVERED ERROR"
    case 0x2: return "NOT READY"
    case 0x3: return "MEDIUM ERROR"
    case 0x4: return "HARDWARE ERROR"
    case 0x5: return "ILLEGAL REQUEST"
    case 0x6: return "UNIT ATTENTION"
    case 0x7: return "DATA PROTECT"
    case 0x8: return "BLANK CHECK"
    case 0x9: return "VENDOR SPECIFIC"
    case 0xA: return "COPY ABORTED"
    case 0xB: return "ABORTED COMMAND"
    case 0xD: return "VOLUME OVERFLOW"
    case 0xE: return "MISCOMPARE"
    case 0xF: return "COMPLETED"
    default: return "RESERVED(0x\(hexString([rawValue])))"
    }
  }
}

/// Sense data in fixed (SPC-4 4.5.3, Table 45) or descriptor (SPC-4 4.5.2,
/// Table 26) format.
///
/// Parsing is lenient in the way sense data must be (it is diagnostic): only
/// the response code and sense key are required; ASC/ASCQ and the rest read
/// as 0/nil when the ADDITIONAL SENSE LENGTH does not cover them, and a
/// partial trailing descriptor is ignored.
public struct SenseData: Sendable, Equatable, CustomStringConvertible {
  /// RESPONSE CODE values (SPC-4 4.5.1, Table 25).
  public enum ResponseCode {
    public static let fixedCurrent: UInt8 = 0x70
    public static let fixedDeferred: UInt8 = 0x71
    public static let descriptorCurrent: UInt8 = 0x72
    public static let descriptorDeferred: UInt8 = 0x73
  }

  /// Byte 0 bits 6-0.
  public let responseCode: UInt8
  public let senseKey: SenseKey
  /// ADDITIONAL SENSE CODE.
  public let asc: UInt8
  /// ADDITIONAL SENSE CODE QUALIFIER.
  public let ascq: UInt8
  /// INFORMATION field when valid (fixed: VALID bit and bytes 3-6; descriptor:
  /// Information descriptor type 0x00 with its VALID bit, SPC-4 4.5.2.2).
  /// For READ/WRITE it is the first LBA in error.
  public let information: UInt64?
  /// Fixed: byte 2 bit 5; descriptor: Block Commands descriptor (type 0x05,
  /// SBC-3 4.18.2) byte 3 bit 5.
  public let ili: Bool
  /// SENSE KEY SPECIFIC bytes (3 bytes, SKSV set) when present: fixed bytes
  /// 15-17 or descriptor type 0x02 bytes 4-6 (SPC-4 4.5.2.4).
  public let senseKeySpecific: [UInt8]?
  /// FIELD REPLACEABLE UNIT CODE (fixed byte 14 / descriptor type 0x03), 0 if none.
  public let fieldReplaceableUnitCode: UInt8
  /// The bytes parsed.
  public let bytes: [UInt8]

  public var isDescriptorFormat: Bool { responseCode == 0x72 || responseCode == 0x73 }
  /// Deferred error: reports an earlier command (e.g. a cached write), not
  /// the one this status belongs to.
  public var deferred: Bool { responseCode == 0x71 || responseCode == 0x73 }

  public init(_ bytes: [UInt8]) throws {
    try require(bytes, 1, "sense data")
    self.bytes = bytes
    responseCode = bytes[0] & 0x7F
    switch responseCode {
    case ResponseCode.fixedCurrent, ResponseCode.fixedDeferred:
      try require(bytes, 3, "fixed format sense data")
      senseKey = SenseKey(bytes[2] & 0x0F)
      ili = bytes[2] & 0x20 != 0
      // ADDITIONAL SENSE LENGTH (byte 7) bounds what follows it.
      let end = bytes.count >= 8 ? min(bytes.count, 8 + Int(bytes[7])) : bytes.count
      information = (bytes[0] & 0x80 != 0 && end >= 7) ? UInt64(be32(bytes, 3)) : nil
      asc = end > 12 ? bytes[12] : 0
      ascq = end > 13 ? bytes[13] : 0
      fieldReplaceableUnitCode = end > 14 ? bytes[14] : 0
      senseKeySpecific = (end >= 18 && bytes[15] & 0x80 != 0) ? Array(bytes[15..<18]) : nil

    case ResponseCode.descriptorCurrent, ResponseCode.descriptorDeferred:
      try require(bytes, 2, "descriptor format sense data")
      senseKey = SenseKey(bytes[1] & 0x0F)
      asc = bytes.count > 2 ? bytes[2] : 0
      ascq = bytes.count > 3 ? bytes[3] : 0
      var info: UInt64?
      var ili = false
      var sks: [UInt8]?
      var fru: UInt8 = 0
      if bytes.count > 8 {
        let end = min(bytes.count, 8 + Int(bytes[7]))
        var o = 8
        // Each descriptor: DESCRIPTOR TYPE byte 0, ADDITIONAL LENGTH byte 1
        // (SPC-4 4.5.2.1, Table 27).
        while o + 2 <= end {
          let type = bytes[o]
          let len = Int(bytes[o + 1])
          guard o + 2 + len <= end else { break }
          switch type {
          case 0x00 where len >= 0x0A:  // Information (SPC-4 4.5.2.2, Table 29)
            if bytes[o + 2] & 0x80 != 0 { info = be64(bytes, o + 4) }
          case 0x02 where len >= 0x06:  // Sense key specific (SPC-4 4.5.2.4, Table 31)
            if bytes[o + 4] & 0x80 != 0 { sks = Array(bytes[(o + 4)..<(o + 7)]) }
          case 0x03 where len >= 0x02:  // Field replaceable unit (SPC-4 4.5.2.5)
            fru = bytes[o + 3]
          case 0x05 where len >= 0x02:  // Block commands (SBC-3 4.18.2, Table 14)
            ili = bytes[o + 3] & 0x20 != 0
          default:
            break
          }
          o += 2 + len
        }
      }
      information = info
      self.ili = ili
      senseKeySpecific = sks
      fieldReplaceableUnitCode = fru

    default:
      throw SCSIError(.invalidField, "sense data: unsupported response code 0x\(hexString([responseCode]))")
    }
  }

  /// Extracts sense data from the data segment of an iSCSI SCSI Response PDU
  /// (RFC 7143 11.4.7.2): a 2-byte big-endian SenseLength, the sense data,
  /// then optional response data. nil when the segment is empty or
  /// SenseLength is 0.
  public static func fromISCSIDataSegment(_ bytes: [UInt8]) throws -> SenseData? {
    if bytes.isEmpty { return nil }
    try require(bytes, 2, "iSCSI sense data segment")
    let length = Int(be16(bytes, 0))
    if length == 0 { return nil }
    guard bytes.count >= 2 + length else {
      throw SCSIError(.truncated, "iSCSI sense data segment: SenseLength \(length), only \(bytes.count - 2) bytes")
    }
    return try SenseData(Array(bytes[2..<(2 + length)]))
  }

  /// The ALUA access state of the port a NOT READY sense reports (SPC-4 5.16.2): 04/0A
  /// transitioning, 04/0B standby, 04/0C unavailable, 04/12 offline; nil for any other
  /// sense. The one table of these codes: classification, the session and the scheduler
  /// read it from here.
  public var portAccessState: ReportTargetPortGroups.AccessState? {
    guard senseKey == .notReady, asc == 0x04 else { return nil }
    switch ascq {
    case 0x0A: return .transitioning
    case 0x0B: return .standby
    case 0x0C: return .unavailable
    case 0x12: return .offline
    default: return nil
    }
  }

  /// e.g. "MEDIUM ERROR (asc 0x11 ascq 0x00: unrecovered read error)".
  public var description: String {
    var s = "\(senseKey) (asc 0x\(hexString([asc])) ascq 0x\(hexString([ascq]))"
    if let text = SenseData.describe(asc: asc, ascq: ascq) { s += ": \(text)" }
    s += ")"
    if deferred { s += " [deferred]" }
    if let info = information { s += " info 0x\(String(info, radix: 16))" }
    return s
  }

  /// Text for a handful of common ASC/ASCQ pairs (SPC-4 4.5.6, Table 49).
  public static func describe(asc: UInt8, ascq: UInt8) -> String? {
    switch (asc, ascq) {
    case (0x00, 0x00): return "no additional sense information"
    case (0x04, 0x00): return "logical unit not ready, cause not reportable"
    case (0x04, 0x01): return "logical unit is in process of becoming ready"
    case (0x04, 0x02): return "logical unit not ready, initializing command required"
    case (0x04, 0x03): return "logical unit not ready, manual intervention required"
    case (0x04, 0x07): return "logical unit not ready, operation in progress"
    case (0x04, 0x0A): return "logical unit not accessible, asymmetric access state transition"
    case (0x04, 0x0B): return "logical unit not accessible, target port in standby state"
    case (0x04, 0x0C): return "logical unit not accessible, target port in unavailable state"
    case (0x08, 0x00): return "logical unit communication failure"
    case (0x0C, 0x00): return "write error"
    case (0x10, 0x01): return "logical block guard check failed"
    case (0x10, 0x02): return "logical block application tag check failed"
    case (0x10, 0x03): return "logical block reference tag check failed"
    case (0x11, 0x00): return "unrecovered read error"
    case (0x1A, 0x00): return "parameter list length error"
    case (0x20, 0x00): return "invalid command operation code"
    case (0x21, 0x00): return "logical block address out of range"
    case (0x24, 0x00): return "invalid field in cdb"
    case (0x25, 0x00): return "logical unit not supported"
    case (0x26, 0x00): return "invalid field in parameter list"
    case (0x27, 0x00): return "write protected"
    case (0x27, 0x07): return "space allocation failed write protect"
    case (0x28, 0x00): return "not ready to ready change, medium may have changed"
    case (0x29, 0x00): return "power on, reset, or bus device reset occurred"
    case (0x29, 0x01): return "power on occurred"
    case (0x29, 0x07): return "i_t nexus loss occurred"
    case (0x2A, 0x01): return "mode parameters changed"
    case (0x2A, 0x03): return "reservations preempted"
    case (0x2A, 0x06): return "asymmetric access state changed"
    case (0x2A, 0x09): return "capacity data has changed"
    case (0x2F, 0x00): return "commands cleared by another initiator"
    case (0x38, 0x07): return "thin provisioning soft threshold reached"
    case (0x3A, 0x00): return "medium not present"
    case (0x3E, 0x02): return "timeout on logical unit"
    case (0x3F, 0x0E): return "reported luns data has changed"
    case (0x44, 0x00): return "internal target failure"
    case (0x47, 0x00): return "scsi parity error"
    case (0x55, 0x03): return "insufficient resources"
    case (0x5D, 0x00): return "failure prediction threshold exceeded"
    default: return nil
    }
  }
}

// MARK: - Classification

/// What the initiator should do about a failed command.
public enum SCSIErrorClass: Sendable, Hashable {
  /// Transient (BUSY, TASK SET FULL, ABORTED COMMAND, becoming ready): retry
  /// after a short delay.
  case retryable
  /// UNIT ATTENTION: the device reports an event (reset, capacity/ALUA/LUN
  /// change); act on it if needed, then retry the command.
  case unitAttention
  /// NOT READY for a reason retrying will not fix soon (e.g. medium absent).
  case notReady
  /// MEDIUM ERROR (and protection-information check failures).
  case medium
  /// HARDWARE ERROR.
  case hardware
  /// ILLEGAL REQUEST: the command or a field is not supported; do not retry.
  case illegalRequest
  /// DATA PROTECT: write-protected or out of space.
  case dataProtect
  /// TASK ABORTED status: a task management function or another I_T nexus
  /// aborted the command (SAM-5 5.3.1). Retry unless this initiator asked
  /// for the abort. (ABORTED COMMAND *sense* is reported as `.retryable`.)
  case aborted
  /// RESERVATION CONFLICT status.
  case reservationConflict
  /// The path/port is not usable now (ALUA transitioning, standby,
  /// unavailable): fail over or re-check RTPG, then retry.
  case path
  /// Anything else (CHECK CONDITION without sense, MISCOMPARE, …).
  case other
}

/// Classifies a command's outcome. nil means success (GOOD, CONDITION MET, or
/// CHECK CONDITION with RECOVERED ERROR / COMPLETED sense, SPC-4 4.5.6).
public func classify(status: UInt8, sense: SenseData?) -> SCSIErrorClass? {
  classify(status: SCSIStatus(status), sense: sense)
}

/// As `classify(status:sense:)` with a typed status.
public func classify(status: SCSIStatus, sense: SenseData?) -> SCSIErrorClass? {
  switch status {
  case .good, .conditionMet:
    return nil
  case .busy, .taskSetFull:
    return .retryable
  case .taskAborted:
    return .aborted
  case .reservationConflict:
    return .reservationConflict
  case .checkCondition:
    guard let sense else { return .other }
    return classify(sense: sense)
  default:  // ACA ACTIVE (we never set NACA) and obsolete/unknown codes
    return .other
  }
}

/// Classification of CHECK CONDITION by sense key and ASC/ASCQ (SPC-4 4.5.6,
/// Tables 48 and 49).
func classify(sense: SenseData) -> SCSIErrorClass? {
  switch sense.senseKey {
  case .recoveredError, .completed:
    return nil
  case .noSense:
    return .retryable
  case .notReady:
    switch (sense.asc, sense.ascq) {
    case (0x04, 0x01),  // becoming ready
      (0x04, 0x07),  // operation in progress
      (0x04, 0x08):  // long write in progress
      return .retryable
    default:
      // A port that is transitioning, standby or unavailable: another path may carry it.
      // Offline (04/12) is left to the LU's own NOT READY: without ALUA it means the LU.
      if let state = sense.portAccessState, state != .offline { return .path }
      return .notReady
    }
  case .mediumError, .blankCheck:
    return .medium
  case .hardwareError:
    return .hardware
  case .illegalRequest:
    return .illegalRequest
  case .unitAttention:
    return .unitAttention
  case .dataProtect:
    return .dataProtect
  case .abortedCommand:
    // ASC 0x10: protection information check failed (SBC-3 4.22): retrying
    // returns the same bad data.
    return sense.asc == 0x10 ? .medium : .retryable
  default:
    return .other
  }
}

/// A failed SCSI command: status, optional sense and its classification.
public struct SCSICommandError: Error, CustomStringConvertible, Sendable, Equatable {
  public let status: SCSIStatus
  public let sense: SenseData?
  public let errorClass: SCSIErrorClass

  /// nil when `status`/`sense` mean success.
  public init?(status: UInt8, sense: SenseData?) {
    guard let c = classify(status: status, sense: sense) else { return nil }
    self.status = SCSIStatus(status)
    self.sense = sense
    self.errorClass = c
  }

  /// e.g. "CHECK CONDITION: MEDIUM ERROR (asc 0x11 ascq 0x00: unrecovered read error)".
  public var description: String {
    if let sense { return "\(status): \(sense)" }
    return "\(status)"
  }

  /// A Linux errno to report upward (e.g. to a block-device front end).
  /// Numbers are Linux's (asm-generic/errno-base.h, errno.h), hard-coded so
  /// this module needs no libc import.
  public var errnoValue: Int32 {
    let EPERM: Int32 = 1
    let EIO: Int32 = 5
    let ENXIO: Int32 = 6
    let EAGAIN: Int32 = 11
    let EINVAL: Int32 = 22
    let ENOSPC: Int32 = 28
    let EROFS: Int32 = 30
    let EBADE: Int32 = 52
    let ENOLINK: Int32 = 67
    let EILSEQ: Int32 = 84
    let EOPNOTSUPP: Int32 = 95
    let ENOMEDIUM: Int32 = 123
    let asc = sense?.asc ?? 0
    let ascq = sense?.ascq ?? 0
    switch errorClass {
    case .retryable: return EAGAIN
    case .unitAttention, .hardware, .aborted, .other: return EIO
    case .notReady: return asc == 0x3A ? ENOMEDIUM : EIO
    case .medium: return asc == 0x10 ? EILSEQ : EIO
    case .illegalRequest:
      switch asc {
      case 0x20: return EOPNOTSUPP  // invalid command operation code
      case 0x25: return ENXIO  // logical unit not supported
      default: return EINVAL  // LBA out of range, invalid field, ...
      }
    case .dataProtect:
      if asc == 0x27 && ascq == 0x07 { return ENOSPC }  // thin pool exhausted
      if asc == 0x27 { return EROFS }  // write protected
      return EPERM  // access denied / security
    case .reservationConflict: return EBADE  // as Linux's BLK_STS_RESV_CONFLICT
    case .path: return ENOLINK  // as Linux's BLK_STS_TRANSPORT
    }
  }
}

extension SCSICommandError: LunbridgeError {
  public var errorCode: String { "scsi.\(errorClass)" }
  public var failureClass: FailureClass { .other }
}
