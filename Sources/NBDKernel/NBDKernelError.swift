import CNetlink
import Failure

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the kernel's NBD driver was asked to do when an error happened.
public enum NBDKernelOperation: String, Sendable, Hashable {
  case open, connect, reconfigure, disconnect, status, monitor

  /// The verb for one-line messages ("attaching needs root").
  var gerund: String {
    switch self {
    case .open: return "opening netlink for"
    case .connect: return "attaching"
    case .reconfigure: return "reconfiguring"
    case .disconnect: return "detaching"
    case .status: return "reading the status of"
    case .monitor: return "watching"
    }
  }
}

/// An error from the kernel's NBD netlink interface, with a one-line message for users.
public struct NBDKernelError: Error, CustomStringConvertible, Hashable, Sendable {
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    fileprivate enum Base: Hashable, Sendable {
      case moduleNotLoaded, permissionDenied, deviceBusy, noSuchDevice, invalidArgument
      case unexpectedReply
      case netlink(Int32)
    }
    fileprivate let base: Base

    /// No "nbd" generic netlink family: `modprobe nbd`.
    public static let moduleNotLoaded = Code(base: .moduleNotLoaded)
    /// EPERM / EACCES: CONNECT, RECONFIGURE and DISCONNECT need CAP_SYS_ADMIN.
    public static let permissionDenied = Code(base: .permissionDenied)
    /// EBUSY / EEXIST: the device is already configured.
    public static let deviceBusy = Code(base: .deviceBusy)
    /// ENOENT / ENODEV / ENXIO.
    public static let noSuchDevice = Code(base: .noSuchDevice)
    /// EINVAL (the kernel logs the reason to dmesg), EBADF / ENOTSOCK for a socket fd,
    /// or a request rejected before it was sent.
    public static let invalidArgument = Code(base: .invalidArgument)
    /// The kernel's answer did not have the expected shape.
    public static let unexpectedReply = Code(base: .unexpectedReply)
    /// Anything else; `errno` is the kernel's errno, or 0 when only libnl's code is known.
    public static func netlink(_ errno: Int32) -> Code { Code(base: .netlink(errno)) }

    /// The errno carried by `.netlink`, nil for the other codes.
    public var netlinkErrno: Int32? {
      if case .netlink(let e) = base { return e }
      return nil
    }

    public var description: String {
      switch base {
      case .moduleNotLoaded: return "moduleNotLoaded"
      case .permissionDenied: return "permissionDenied"
      case .deviceBusy: return "deviceBusy"
      case .noSuchDevice: return "noSuchDevice"
      case .invalidArgument: return "invalidArgument"
      case .unexpectedReply: return "unexpectedReply"
      case .netlink(let e): return "netlink(\(e))"
      }
    }
  }

  /// Where in the shim a call failed (mirrors CNetlink's LB_NL_STAGE_*).
  public enum Stage: Int32, Sendable, Hashable {
    case none = 0
    case alloc, connect, resolve, group, send, receive
  }

  public var code: Code
  public var operation: NBDKernelOperation
  /// The device concerned, when known.
  public var index: UInt32?
  /// errno from the kernel's ack (exact), 0 when unknown.
  public var errno: Int32
  /// libnl's NLE_* code (positive), 0 when none.
  public var libnlError: Int32
  /// Extra context: what local validation found, or libnl's text.
  public var detail: String?
  /// What was wrong with the kernel's answer (`unexpectedReply`), kept as the parser's error.
  public var malformedReply: NetlinkAttributeError?

  public init(
    code: Code, operation: NBDKernelOperation, index: UInt32? = nil, errno: Int32 = 0,
    libnlError: Int32 = 0, detail: String? = nil, malformedReply: NetlinkAttributeError? = nil
  ) {
    self.code = code
    self.operation = operation
    self.index = index
    self.errno = errno
    self.libnlError = libnlError
    self.detail = detail
    self.malformedReply = malformedReply
  }

  /// Maps what the shim reported to an error. `errno` is the kernel's errno from the
  /// ack when there was one; otherwise libnl's (lossy) NLE_* code decides.
  public init(
    stage: Stage, libnlError: Int32, errno: Int32, operation: NBDKernelOperation,
    index: UInt32? = nil
  ) {
    let code: Code
    switch stage {
    case .resolve where libnlError == NLE.objNotFound, .group where libnlError == NLE.objNotFound:
      // genl_ctrl_resolve: the controller answered ENOENT for "nbd".
      code = .moduleNotLoaded
    default:
      if errno != 0 {
        code = Self.code(errno: errno)
      } else {
        code = Self.code(libnlError: libnlError)
      }
    }
    var detail: String? = nil
    if code == .invalidArgument && (errno == EBADF || errno == ENOTSOCK) {
      detail = "a socket handed to the kernel is not a valid stream socket"
    } else if errno == 0 && libnlError != 0 {
      detail = NLE.text(libnlError)
    }
    self.init(
      code: code, operation: operation, index: index, errno: errno, libnlError: libnlError,
      detail: detail)
  }

  static func code(errno: Int32) -> Code {
    switch errno {
    case EPERM, EACCES: return .permissionDenied
    case EBUSY, EEXIST: return .deviceBusy
    case ENOENT, ENODEV, ENXIO: return .noSuchDevice
    case EINVAL, EBADF, ENOTSOCK: return .invalidArgument
    default: return .netlink(errno)
    }
  }

  static func code(libnlError: Int32) -> Code {
    switch libnlError {
    case NLE.perm, NLE.noAccess: return .permissionDenied
    case NLE.busy, NLE.exist: return .deviceBusy
    case NLE.objNotFound, NLE.noDev: return .noSuchDevice
    case NLE.inval: return .invalidArgument
    default: return .netlink(0)
    }
  }

  var device: String { index.map { "/dev/nbd\($0)" } ?? "the nbd device" }

  public var description: String {
    switch code.base {
    case .moduleNotLoaded:
      if isNBDModuleLoaded() {
        return "the nbd kernel module has no netlink interface (kernel older than 4.12?)"
      }
      return "the nbd kernel module is not loaded: run modprobe nbd"
    case .permissionDenied:
      let what = operation == .connect ? "attaching" : "\(operation.gerund) \(device)"
      return "\(what) needs root (CAP_SYS_ADMIN)"
    case .deviceBusy:
      return index == nil ? "no free nbd device" : "\(device) is already in use"
    case .noSuchDevice:
      return "\(device) does not exist"
    case .invalidArgument:
      if let detail { return "\(operation.gerund) \(device): \(detail)" }
      return "the kernel refused \(operation.gerund) \(device) (invalid argument; see dmesg)"
    case .unexpectedReply:
      return "unexpected answer from the nbd driver while \(operation.gerund) \(device)"
        + ((detail ?? malformedReply?.description).map { ": \($0)" } ?? "")
    case .netlink(let e):
      let reason = e != 0 ? String(cString: strerror(e)) : (detail ?? "netlink error")
      return "\(operation.gerund) \(device) failed: \(reason)"
    }
  }
}

/// libnl's error codes (<netlink/errno.h>), which the public C header cannot include.
enum NLE {
  static let failure: Int32 = 1
  static let again: Int32 = 4
  static let nomem: Int32 = 5
  static let exist: Int32 = 6
  static let inval: Int32 = 7
  static let objNotFound: Int32 = 12
  static let busy: Int32 = 25
  static let noAccess: Int32 = 27
  static let perm: Int32 = 28
  static let noDev: Int32 = 31

  static func text(_ code: Int32) -> String {
    guard let p = lb_nl_strerror(code) else { return "libnl error \(code)" }
    return String(cString: p)
  }
}

extension NBDKernelError: LunbridgeError {
  public var errorCode: String { "nbd-kernel.\(code)" }
  public var failureClass: FailureClass {
    switch code {
    case .moduleNotLoaded: return .nbdMissing
    case .permissionDenied: return .permission
    case .deviceBusy: return .busy
    case .noSuchDevice: return .notFound
    default: return .other
    }
  }
}
