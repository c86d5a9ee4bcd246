/// What kind of failure an error is. The command line maps each class to one exit status
/// (lunbridge(8), EXIT STATUS); the control socket carries it between processes, so an
/// error relayed from a running lunbridge keeps its class.
public enum FailureClass: String, Sendable, Codable, CaseIterable {
  /// Anything not in a class below.
  case other
  /// A wrong command line: option, URL or argument.
  case usage
  /// The portal cannot be reached.
  case unreachable
  /// The target refused the login for a reason other than authentication or a missing target.
  case loginRefused
  /// CHAP failed, or CHAP is required and not configured.
  case authentication
  /// A volume file, or a file the configuration names, is missing or wrong.
  case config
  /// No such target, LUN, volume or device.
  case notFound
  /// The volume or URL is already attached or served.
  case alreadyRunning
  /// A device, socket or address is in use by someone else.
  case busy
  /// Root (CAP_SYS_ADMIN) is needed.
  case permission
  /// The nbd kernel module is not loaded.
  case nbdMissing
  /// The target broke the protocol or sent data that cannot be read.
  case protocolError
}

/// The one protocol every public error of lunbridge's modules conforms to: a stable code
/// that names what failed (`"iscsi.authentication failed"`, `"bridge.busy"`), the class the
/// command line turns into an exit status, and the one line it prints after
/// `lunbridge: error: `, with the context (file, portal, device, path) in it. Errors are
/// carried as these values up to the command line, which is the only place that makes
/// text of them.
public protocol LunbridgeError: Error, Sendable {
  /// `module.code`: stable, for scripts, logs and tests.
  var errorCode: String { get }
  var failureClass: FailureClass { get }
  /// The sentence for people, context included.
  var errorMessage: String { get }
}

extension LunbridgeError where Self: CustomStringConvertible {
  public var errorMessage: String { description }
}
