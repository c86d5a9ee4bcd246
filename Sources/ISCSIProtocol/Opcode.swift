/// PDU opcodes (RFC 7143 section 11.1.1).
public struct Opcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public var rawValue: UInt8
  public init(rawValue: UInt8) { self.rawValue = rawValue & 0x3f }

  // Initiator opcodes.
  public static let nopOut = Opcode(rawValue: 0x00)
  public static let scsiCommand = Opcode(rawValue: 0x01)
  public static let taskManagementRequest = Opcode(rawValue: 0x02)
  public static let loginRequest = Opcode(rawValue: 0x03)
  public static let textRequest = Opcode(rawValue: 0x04)
  public static let dataOut = Opcode(rawValue: 0x05)
  public static let logoutRequest = Opcode(rawValue: 0x06)
  public static let snackRequest = Opcode(rawValue: 0x10)
  // Target opcodes.
  public static let nopIn = Opcode(rawValue: 0x20)
  public static let scsiResponse = Opcode(rawValue: 0x21)
  public static let taskManagementResponse = Opcode(rawValue: 0x22)
  public static let loginResponse = Opcode(rawValue: 0x23)
  public static let textResponse = Opcode(rawValue: 0x24)
  public static let dataIn = Opcode(rawValue: 0x25)
  public static let logoutResponse = Opcode(rawValue: 0x26)
  public static let readyToTransfer = Opcode(rawValue: 0x31)
  public static let asyncMessage = Opcode(rawValue: 0x32)
  public static let reject = Opcode(rawValue: 0x3f)

  /// Opcodes a target may send (RFC 7143 section 11.1.1); anything else from a target
  /// is a protocol violation.
  public var isTargetOpcode: Bool {
    switch self {
    case .nopIn, .scsiResponse, .taskManagementResponse, .loginResponse, .textResponse, .dataIn,
      .logoutResponse, .readyToTransfer, .asyncMessage, .reject:
      return true
    default: return false
    }
  }

  public var description: String {
    switch self {
    case .nopOut: return "NOP-Out"
    case .scsiCommand: return "SCSI Command"
    case .taskManagementRequest: return "Task Management Request"
    case .loginRequest: return "Login Request"
    case .textRequest: return "Text Request"
    case .dataOut: return "Data-Out"
    case .logoutRequest: return "Logout Request"
    case .snackRequest: return "SNACK"
    case .nopIn: return "NOP-In"
    case .scsiResponse: return "SCSI Response"
    case .taskManagementResponse: return "Task Management Response"
    case .loginResponse: return "Login Response"
    case .textResponse: return "Text Response"
    case .dataIn: return "Data-In"
    case .logoutResponse: return "Logout Response"
    case .readyToTransfer: return "R2T"
    case .asyncMessage: return "Async Message"
    case .reject: return "Reject"
    default: return "opcode 0x" + String(rawValue, radix: 16)
    }
  }
}
