// How a failed path is fenced: what makes sure nothing it sent can still reach the LU
// before its writes go elsewhere (see MultipathStateMachine's write rule). Pure and
// generic over its clock, beside the scheduler; the caller logs in, logs out and arms
// the timers it asks for.

/// The fence of each failed path. A fence ends one of three ways:
/// - the path's own session was reinstated (it logged in again with the same ISID after
///   the fence began: RFC 7143 section 6.3.5, the target ends the old session's tasks
///   first);
/// - a login with the failed session's ISID through the failed path's own portal (when its
///   session is still logged in: the path was failed for what the target answered, not for
///   a lost connection) or through a working path of the same target portal group
///   succeeded, which does the same (then it logs out);
/// - no-path-retry passed without either: the path's unfinished writes fail (EIO) rather
///   than being re-sent where an old copy could still land after them.
///
/// A session that is merely still logged in proves nothing: the target may still hold
/// the writes it was sent.
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
    /// Where the last fencing login failed: the next one tries elsewhere if it can.
    var lastFailed: PathID?
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

  /// The failed session's target portal group when its fence began (nil: unknown, or no
  /// fence): the group a fencing login must reach.
  public func portalGroup(of path: PathID) -> Int? { fences[path]?.portalGroup }

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
    // Logged in again since the fence began, within the old session's portal group (the
    // path's own entry among `helpers` says which group its session reached).
    let group = helpers.first { $0.id == path }?.portalGroup
    if loggedIn && reinstatements > fence.reinstatementsAtStart && (fence.portalGroup == nil || group == fence.portalGroup) {
      fences[path] = nil
      return [.fenced(path, how: "session reinstated")]
    }
    let now = clock.now
    if fence.started.duration(to: now) >= bound {
      fences[path] = nil
      return [.abandon(path)]
    }
    // Still logged in (the target refused I/O on it, or its identity changed): a login
    // through its own portal reinstates the session. Else a working path of the same
    // portal group: a login with the same ISID to another group would make a new session
    // and leave the old one (and its tasks) alone.
    let helper =
      helpers.first { h in
        h.id != path && h.loggedIn && h.portalGroup != nil
          && (fence.portalGroup == nil || h.portalGroup == fence.portalGroup)
      }?.id
    let through: PathID?
    if loggedIn && (fence.lastFailed != path || helper == nil) {
      through = path
    } else {
      through = helper
    }
    guard let through else { return [.retry(path, at: now.advanced(by: retryInterval))] }
    fences[path]!.loginThrough = through
    return [.login(path, through: through)]
  }

  /// The fencing login ended. `success` only when it logged in within the failed
  /// session's own portal group (the caller checks the group the login reached).
  public mutating func loginFinished(_ path: PathID, success: Bool) -> [Action] {
    guard let through = fences[path]?.loginThrough else { return [] }
    if success {
      fences[path] = nil
      if through == path { return [.fenced(path, how: "old session ended by a login through its own portal")] }
      return [.fenced(path, how: "old session ended by a login through \(through)")]
    }
    fences[path]!.loginThrough = nil
    fences[path]!.lastFailed = through
    return [.retry(path, at: clock.now.advanced(by: retryInterval))]
  }

  /// The path's own probe succeeded; `reinstatements` is its session's count now and
  /// `portalGroup` the group its last login reached. Only a login since the fence began
  /// (the count went up) within the old session's portal group ended the old session: a
  /// probe that found the session still logged in, or was sent to another group, leaves
  /// the fence to `attempt`.
  public mutating func reinstated(_ path: PathID, reinstatements: Int, portalGroup: Int?) -> [Action] {
    guard let fence = fences[path], reinstatements > fence.reinstatementsAtStart,
      fence.portalGroup == nil || portalGroup == fence.portalGroup
    else { return [] }
    fences[path] = nil
    return [.fenced(path, how: "session reinstated by its probe")]
  }

  /// The volume is closing: nothing more to fence.
  public mutating func cancelAll() { fences = [:] }
}
