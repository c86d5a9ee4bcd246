// Values the multipath scheduler speaks in: paths, I/O tokens, path states, errors.

import Failure

/// One path to the LUN (in lunbridge: one iSCSI session through one portal).
/// Opaque to the scheduler: the caller picks the number and maps it back to its session.
public struct PathID: Hashable, Comparable, Sendable, CustomStringConvertible {
  public let rawValue: UInt32

  public init(_ rawValue: UInt32) {
    self.rawValue = rawValue
  }

  public static func < (lhs: PathID, rhs: PathID) -> Bool {
    lhs.rawValue < rhs.rawValue
  }

  public var description: String { "path\(self.rawValue)" }
}

/// One block I/O the scheduler places on a path. `id` must be unique among the I/O the
/// scheduler currently holds (in flight, fenced or queued).
public struct IOToken: Hashable, Sendable, CustomStringConvertible {
  public var id: UInt64
  public var bytes: Int
  public var isWrite: Bool

  public init(id: UInt64, bytes: Int, isWrite: Bool) {
    self.id = id
    self.bytes = bytes
    self.isWrite = isWrite
  }

  public var description: String { "\(self.isWrite ? "write" : "read")#\(self.id)(\(self.bytes)B)" }
}

/// Why a path stopped carrying I/O. A code for programs, a context for people.
public struct PathFailure: Hashable, Sendable, CustomStringConvertible {
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public init(_ name: String) { self.name = name }
    public var description: String { self.name }

    /// The transport went away (TCP reset, keepalive/NOP-Out timeout, connection closed).
    public static let connectionLost = Code("connection-lost")
    /// A SCSI or iSCSI task timed out on the path.
    public static let timeout = Code("timeout")
    /// The target reported the path unusable (e.g. ALUA state transitioning/unavailable).
    public static let targetReported = Code("target-reported")
    /// A probe (TEST UNIT READY, NOP-Out, re-login) failed.
    public static let probeFailed = Code("probe-failed")
    /// An administrator took the path out.
    public static let administrative = Code("administrative")
  }

  public var code: Code
  public var context: String

  public init(_ code: Code, context: String = "") {
    self.code = code
    self.context = context
  }

  public var description: String {
    self.context.isEmpty ? self.code.description : "\(self.code): \(self.context)"
  }
}

/// The state of a path as the scheduler sees it.
public enum PathState: Hashable, Sendable, CustomStringConvertible {
  /// Healthy and receiving new I/O.
  case active
  /// Failed; a probe is scheduled with backoff.
  case failed(PathFailure)
  /// Failed; a probe is running on it now.
  case probing
  /// Healthy but receiving no new I/O: its group (failover) or its ALUA priority is not the
  /// best one in use, or it is waiting for failback (`.manual` / `.deferred`).
  case standby
  /// Taken out by the administrator; never probed, never selected.
  case disabled
  /// Working, but the target says its port group carries no I/O now (ALUA unavailable or
  /// offline); re-read with the port groups, never probed.
  case unavailable
  /// Working, but its port group is changing state (ALUA transitioning); I/O waits for it.
  case transitioning

  /// The state without its reason: active, failed, probing, standby, disabled,
  /// unavailable or transitioning.
  public var name: String {
    switch self {
    case .active: return "active"
    case .failed: return "failed"
    case .probing: return "probing"
    case .standby: return "standby"
    case .disabled: return "disabled"
    case .unavailable: return "unavailable"
    case .transitioning: return "transitioning"
    }
  }

  public var description: String {
    switch self {
    case .active: return "active"
    case .failed(let reason): return "failed (\(reason))"
    case .probing: return "probing"
    case .standby: return "standby"
    case .disabled: return "disabled"
    case .unavailable: return "unavailable"
    case .transitioning: return "transitioning"
    }
  }
}

/// Why the scheduler gave up on an I/O. The caller turns it into EIO for the user.
public struct MultipathError: Error, Hashable, Sendable, CustomStringConvertible {
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public init(_ name: String) { self.name = name }
    public var description: String { self.name }

    public static let noPath = Code("no-path")
    public static let refused = Code("refused")
  }

  public var code: Code
  public var context: String

  public init(_ code: Code, context: String) {
    self.code = code
    self.context = context
  }

  /// No usable path came back within `noPathRetry`.
  public static let noPath = MultipathError(.noPath, context: "no usable path within no-path-retry")
  /// Every path the I/O was placed on refused it (NOT READY) for `noPathRetry`.
  public static let refused = MultipathError(
    .refused, context: "the target refused it on every path within no-path-retry")

  public var description: String { "\(self.code): \(self.context)" }
}

/// A path changed state. Emitted as `.log(PathEvent)` for every change, with the reason.
public struct PathEvent: Hashable, Sendable, CustomStringConvertible {
  public var path: PathID
  /// `nil` when the path was just added.
  public var from: PathState?
  /// `nil` when the path was removed.
  public var to: PathState?
  public var reason: String

  public init(path: PathID, from: PathState?, to: PathState?, reason: String) {
    self.path = path
    self.from = from
    self.to = to
    self.reason = reason
  }

  public var description: String {
    "\(self.path): \(self.from.map { "\($0)" } ?? "none") -> \(self.to.map { "\($0)" } ?? "removed") (\(self.reason))"
  }
}

/// Timers the scheduler asks its caller to arm. Arming an id that is already armed replaces
/// it. A timer that fires late or after it stopped mattering is harmless: the machine checks
/// its own deadlines.
public enum TimerID: Hashable, Sendable {
  /// The oldest I/O waiting for a path reaches `noPathRetry`.
  case noPathRetry
  /// Time to probe a failed path (armed by `.scheduleProbe`).
  case probe(PathID)
  /// `.deferred` failback of a reinstated path is due.
  case failback(PathID)
  /// Time to re-read the ALUA port groups' states.
  case portGroupCheck
}

extension MultipathError: LunbridgeError {
  public var errorCode: String { "multipath.\(code)" }
  public var failureClass: FailureClass { .other }
}
