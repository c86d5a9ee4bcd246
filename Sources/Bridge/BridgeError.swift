import Failure

/// An error of the bridge layer and the command line: a code for what failed, the sentence
/// with its context (path, address, device), and the error it comes from, kept as a value
/// so that its own class (unreachable, authentication...) reaches the exit status. Text is
/// made of it only at the edge (`description`, the command line, the control socket).
public struct BridgeError: LunbridgeError, CustomStringConvertible {
  public enum Code: String, Sendable, CaseIterable {
    /// A wrong argument or option value.
    case usage
    /// The volume, device or LUN asked for does not exist or is not served.
    case notFound
    /// The volume or URL is already attached or served.
    case alreadyRunning
    /// A device, socket or address is in use by someone else.
    case busy
    /// Root (CAP_SYS_ADMIN) is needed.
    case permission
    /// The nbd kernel module is not loaded.
    case nbdMissing
    /// A file the configuration names is missing or wrong.
    case config
    /// A system call failed (socket, pipe, spawn, chmod, open, listen).
    case system
    /// A running lunbridge's control socket gave no usable answer.
    case controlSocket
    /// The volume is closing.
    case closing
    /// No path of the volume is logged in, or none could log in.
    case noPath
    /// The target answered something the volume cannot use.
    case target
    /// No answer within the time allowed.
    case timeout
    /// An error a running lunbridge relayed over its control socket, with its class.
    case relayed
    /// A path reaches another logical unit than the volume's other paths.
    case pathMismatch
    /// A persistent reservation command failed on every path.
    case reservation
  }

  public var code: Code
  /// The sentence, without the cause's.
  public var message: String
  /// The error this one comes from; its message follows `message` after ": ".
  public var cause: (any Error)?
  /// The class a relayed error had in the process that raised it.
  public var relayedClass: FailureClass?

  public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
    self.code = code
    self.message = message
    self.cause = cause
  }

  /// An error relayed over the control socket: its text and class as the other process said.
  public init(relayed message: String, class failureClass: FailureClass?) {
    self.init(.relayed, message)
    self.relayedClass = failureClass
  }

  public var description: String {
    guard let cause else { return message }
    return "\(message): \(describeError(cause))"
  }

  public var errorCode: String { "bridge.\(code.rawValue)" }

  public var failureClass: FailureClass {
    let own: FailureClass
    switch code {
    case .usage: own = .usage
    case .notFound: own = .notFound
    case .alreadyRunning: own = .alreadyRunning
    case .busy: own = .busy
    case .permission: own = .permission
    case .nbdMissing: own = .nbdMissing
    case .config: own = .config
    case .relayed: own = relayedClass ?? .other
    case .system, .controlSocket, .closing, .noPath, .target, .timeout, .pathMismatch, .reservation: own = .other
    }
    // A wrapper without a class of its own takes its cause's (a path's login error).
    if own == .other, let c = cause as? LunbridgeError { return c.failureClass }
    return own
  }
}
