import ArgumentParser
import Bridge
import Failure
import ISCSIInitiator
import ISCSIProtocol
import NBDKernel
import SCSI

/// The exit status of a failed command, one per class of failure. Where iscsiadm has the
/// same class its number is used (open-iscsi's iscsi_err.h), so scripts and unit files
/// written for iscsiadm (`SuccessExitStatus=`, `case $?`) read lunbridge's alike; usage
/// and protocol errors take sysexits.h's EX_USAGE and EX_PROTOCOL. `lunbridge pr` keeps
/// mpathpersist's statuses instead (see its help).
enum ExitStatus: Int32, CaseIterable, CustomStringConvertible {
  /// Anything not in a class below (ISCSI_ERR).
  case failure = 1
  /// The portal cannot be reached: refused, reset, timed out, no route, unknown host
  /// (ISCSI_ERR_TRANS).
  case unreachable = 4
  /// The target refused the login for a reason other than authentication or a missing
  /// target (ISCSI_ERR_LOGIN).
  case loginRefused = 5
  /// A volume file or a file it names is wrong (ISCSI_ERR_IDBM, iscsiadm's node records).
  case config = 6
  /// The nbd kernel module is not loaded (ISCSI_ERR_TRANS_NOT_FOUND).
  case nbdMissing = 12
  /// Root (CAP_SYS_ADMIN) is needed (ISCSI_ERR_ACCESS).
  case permission = 13
  /// The volume or URL is already attached or served (ISCSI_ERR_SESS_EXISTS).
  case alreadyRunning = 15
  /// No such target, LUN, volume or device (ISCSI_ERR_NO_OBJS_FOUND).
  case notFound = 21
  /// CHAP failed: wrong user or secret, or CHAP required and not configured
  /// (ISCSI_ERR_LOGIN_AUTH_FAILED).
  case authentication = 24
  /// A device, socket or address is in use (ISCSI_ERR_BUSY).
  case busy = 28
  /// A wrong command line: option, URL or argument (EX_USAGE, as the argument parser uses).
  case usage = 64
  /// The target broke the iSCSI protocol (EX_PROTOCOL).
  case protocolError = 76

  var description: String {
    switch self {
    case .failure: return "other failure"
    case .unreachable: return "portal unreachable"
    case .loginRefused: return "login refused by the target"
    case .config: return "configuration error"
    case .nbdMissing: return "nbd kernel module not loaded"
    case .permission: return "needs root"
    case .alreadyRunning: return "already attached or served"
    case .notFound: return "target, LUN, volume or device not found"
    case .authentication: return "authentication failed"
    case .busy: return "device, socket or address busy"
    case .usage: return "usage error"
    case .protocolError: return "protocol error from the target"
    }
  }
}

/// What the command line prints and returns for an error: one line after
/// `lunbridge: error: ` and the class's status.
struct CommandFailure {
  var status: ExitStatus
  var message: String

  init(_ status: ExitStatus, _ message: String) {
    self.status = status
    self.message = message
  }

  /// The class and message of any error the commands can throw. Nil for the argument
  /// parser's own errors (help, usage), which it prints itself.
  init?(_ error: Error) {
    switch error {
    case let e as LunbridgeError:
      self.init(ExitStatus(e.failureClass), e.errorMessage)
    case is ValidationError, is CleanExit, is ExitCode:
      return nil
    default:
      // The argument parser's own errors are not public types; everything else that
      // reaches here (system and SwiftNIO errors) is said in plain words.
      let described = String(describing: type(of: error))
      if described.contains("ParserError") || described.contains("CommandError") { return nil }
      self.init(.failure, describeError(error))
    }
  }
}

extension ExitStatus {
  /// The status of a class of failure.
  init(_ failureClass: FailureClass) {
    switch failureClass {
    case .other: self = .failure
    case .usage: self = .usage
    case .unreachable: self = .unreachable
    case .loginRefused: self = .loginRefused
    case .authentication: self = .authentication
    case .config: self = .config
    case .notFound: self = .notFound
    case .alreadyRunning: self = .alreadyRunning
    case .busy: self = .busy
    case .permission: self = .permission
    case .nbdMissing: self = .nbdMissing
    case .protocolError: self = .protocolError
    }
  }
}
