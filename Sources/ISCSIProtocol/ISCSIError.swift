/// An error found while speaking iSCSI: a code that callers switch on, and a sentence
/// for people. `description` is what the command line prints after `lunbridge: error:`.

import Failure

public struct ISCSIError: Error, CustomStringConvertible, Equatable, Sendable {
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    let raw: String
    init(_ raw: String) { self.raw = raw }
    public var description: String { raw }

    /// The peer broke the framing rules (lengths, digests, reserved opcodes).
    public static let protocolViolation = Code("protocol violation")
    public static let digestMismatch = Code("digest mismatch")
    /// Login was refused or could not be negotiated.
    public static let loginFailed = Code("login failed")
    public static let authenticationFailed = Code("authentication failed")
    public static let targetNotFound = Code("target not found")
    public static let redirectLoop = Code("too many redirects")
    public static let negotiationFailed = Code("negotiation failed")
    public static let connectionClosed = Code("connection closed")
    /// No connection to the portal: refused, reset, timed out, no route, unknown host.
    public static let unreachable = Code("unreachable")
    public static let timeout = Code("timeout")
    public static let rejected = Code("rejected")
    public static let invalidArgument = Code("invalid argument")
    public static let sessionFailed = Code("session failed")
    /// Multipath (SessionConfiguration.failFast): the command's connection was lost and
    /// the command was handed back unfinished, for the caller to send on another path.
    public static let pathDown = Code("path down")
  }

  public var code: Code
  public var message: String

  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }

  public var description: String { message }
}

extension ISCSIError: LunbridgeError {
  public var errorCode: String { "iscsi.\(code.raw)" }
  public var failureClass: FailureClass {
    switch code {
    case .unreachable: return .unreachable
    case .authenticationFailed: return .authentication
    case .targetNotFound: return .notFound
    case .loginFailed, .redirectLoop, .negotiationFailed, .connectionClosed: return .loginRefused
    case .protocolViolation, .digestMismatch, .rejected: return .protocolError
    case .invalidArgument: return .usage
    default: return .other
    }
  }
}
