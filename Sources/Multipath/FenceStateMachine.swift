// How a failed path is fenced: what makes sure nothing it sent can still reach the LU
// before its writes go elsewhere (see MultipathStateMachine's write rule). Pure and
// generic over its clock, beside the scheduler; the caller logs in, logs out and arms
// the timers it asks for.

/// The fence of each failed path. A fence ends one of three ways:
/// - the path's own session was reinstated (its probe logged in again with the same ISID:
///   RFC 7143 section 6.3.5, the target ends the old session's tasks first);
/// - a login with the failed session's ISID through a working path of the same target
///   portal group succeeded, which does the same from another portal (then it logs out);
/// - no-path-retry passed without either: the path's unfinished writes fail (EIO) rather
///   than being re-sent where an old copy could still land after them.
public struct FenceStateMachine<Clock: MultipathClock> {
  public typealias Instant = Clock.Instant

  public enum Action: Hashable {
    /// Log in with `path`'s initiator name and ISID through `through`'s portal and NIC,
    /// log out, then call `loginFinished(path, success:)`.
    case login(PathID, through: PathID)
    /// Call `attempt(path, ...)` again at this instant.
    case retry(PathID, at: Instant)
    /// The old session is gone: tell the scheduler (`pathFenced`).
    case fenced(PathID, how: String)
    /// Not fenced within the bound: the scheduler fails its writes (`abandonFenced`).
    case abandon(PathID)
  }

  /// A path that could carry the fencing login.
  public struct Helper: Hashable, Sendable {
    public var id: PathID
    /// Logged in now.
    public var loggedIn: Bool
    /// Its target portal group tag, if the login reported one.
    public var portalGroup: Int?

    public init(id: PathID, loggedIn: Bool, portalGroup: Int?) {
      self.id = id
      self.loggedIn = loggedIn
      self.portalGroup = portalGroup
    }
  }

  struct Fence {
    var started: Instant
    var portalGroup: Int?
    /// The session's reinstatements when the fence began; more later = reinstated.
    var reinstatementsAtStart: Int
    var loginThrough: PathID?
  }

  public let clock: Clock
  /// How long a fence may take before its writes fail: the volume's no-path-retry.
  public var bound: Duration
  /// Pause between attempts (no helper yet, or a helper's login failed).
  public var retryInterval: Duration = .milliseconds(250)
  var fences: [PathID: Fence] = [:]

  public init(clock: Clock, bound: Duration) {
    self.clock = clock
    self.bound = bound
  }

  public func isFencing(_ path: PathID) -> Bool { fences[path] != nil }

  /// The scheduler asked to fence `path` (`.fencePath`). `reinstatements` is the path's
  /// session's reinstatement count now. Then call `attempt`.
  public mutating func begin(_ path: PathID, portalGroup: Int?, reinstatements: Int) -> Bool {
    guard fences[path] == nil else { return false }
    fences[path] = Fence(started: clock.now, portalGroup: portalGroup, reinstatementsAtStart: reinstatements)
    return true
  }

  /// Tries to end the fence now. `reinstatements`/`loggedIn`: the failed path's session;
  /// `helpers`: the volume's paths in order.
  public mutating func attempt(
    _ path: PathID, loggedIn: Bool, reinstatements: Int, helpers: [Helper]
  ) -> [Action] {
    guard let fence = fences[path], fence.loginThrough == nil else { return [] }
    if loggedIn && reinstatements > fence.reinstatementsAtStart {
      fences[path] = nil
      return [.fenced(path, how: "session reinstated")]
    }
    let now = clock.now
    if fence.started.duration(to: now) >= bound {
      fences[path] = nil
      return [.abandon(path)]
    }
    // A working path in the same portal group (or either group unknown).
    let helper = helpers.first { h in
      h.id != path && h.loggedIn
        && (fence.portalGroup == nil || h.portalGroup == nil || h.portalGroup == fence.portalGroup)
    }
    guard let helper else { return [.retry(path, at: now.advanced(by: retryInterval))] }
    fences[path]!.loginThrough = helper.id
    return [.login(path, through: helper.id)]
  }

  /// The fencing login through a helper ended.
  public mutating func loginFinished(_ path: PathID, success: Bool) -> [Action] {
    guard let through = fences[path]?.loginThrough else { return [] }
    if success {
      fences[path] = nil
      return [.fenced(path, how: "old session ended by a login through \(through)")]
    }
    fences[path]!.loginThrough = nil
    return [.retry(path, at: clock.now.advanced(by: retryInterval))]
  }

  /// The path's own probe logged in again (same ISID): that ended the old session.
  public mutating func reinstated(_ path: PathID) -> [Action] {
    guard fences[path] != nil else { return [] }
    fences[path] = nil
    return [.fenced(path, how: "session reinstated by its probe")]
  }

  /// The volume is closing: nothing more to fence.
  public mutating func cancelAll() { fences = [:] }
}
