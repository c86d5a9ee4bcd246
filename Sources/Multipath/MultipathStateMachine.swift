// The multipath scheduler of one LUN: which path each I/O goes to, what happens to I/O
// when a path dies, when a dead path is probed and taken back.
//
// Pure: it owns no socket, thread or timer and reads no clock but the injected one. The
// caller feeds it events (an I/O to place, a completion, a path failure, a timer firing)
// and carries out the actions it returns (send this I/O on that path, fence that session,
// arm this timer, fail this I/O with EIO, log this).

/// The scheduler. Generic over its clock so tests drive time by hand.
///
/// Write ordering: **a write is re-sent on another path only once its old path can no
/// longer deliver it.** When a path fails, the reads it had in flight are re-sent at once
/// (a read sent twice is harmless), but its writes are *fenced*: the machine emits
/// `.fencePath(path)` and holds them until the caller reports `pathFenced(path)`, that is
/// until the old session is closed, its tasks aborted or the session reinstated, so that
/// no copy of the write can still reach the LUN. Otherwise an old copy of a write arriving
/// late through the dead path could land after a newer write to the same blocks sent
/// through a healthy path, and silently undo it. A fenced write that completes on its old
/// path before the fence is simply done and is not re-sent.
///
/// The machine holds the one record of each I/O from `submit` to its end (`completed`, or
/// `take` after a `.fail`): where it is, and the caller's `Payload` (lunbridge: the NBD
/// request and how to answer it). Nothing else keeps a table of I/O.
public struct MultipathStateMachine<Clock: MultipathClock, Payload> {
  public typealias Instant = Clock.Instant

  /// What the caller must do. Carry them out in order.
  public enum Action: Hashable {
    /// Send the I/O on the path (a re-sent I/O comes out as `.dispatch` again).
    case dispatch(IOToken, PathID)
    /// Give up on the I/O: `take` its record and complete it to the user with an error (EIO).
    case fail(IOToken, MultipathError)
    /// Make sure nothing sent on the path can still reach the LUN (close the connection,
    /// abort its tasks, or reinstate the session), then call `pathFenced(path)`.
    case fencePath(PathID)
    /// Arm (or re-arm) the timer; at `deadline` call `timerFired(id)`.
    case scheduleTimer(TimerID, Instant)
    case cancelTimer(TimerID)
    /// Arm the probe timer of a failed path; at `at` call `timerFired(.probe(path))`.
    case scheduleProbe(PathID, at: Instant)
    /// Probe the path now (TEST UNIT READY / NOP-Out / re-login), then call
    /// `probeSucceeded(path)` or `probeFailed(path, reason:)`.
    case startProbe(PathID)
    /// A path changed state.
    case log(PathEvent)
    /// Read the LU's port groups (REPORT TARGET PORT GROUPS) through the path, then call
    /// `portGroupsRead(_:via:)` or `portGroupsReadFailed(via:)`.
    case readPortGroups(via: PathID)
    /// Make the port group active/optimized (SET TARGET PORT GROUPS) through the path, then
    /// call `portGroupActivated(via:success:)`.
    case activatePortGroup(UInt16, via: PathID)
  }

  enum Health: Hashable {
    case up
    case failed(PathFailure)
    case probing(PathFailure)
    case disabled
  }

  /// A class, not a struct: the scheduler reads and updates a path's record on every I/O,
  /// and a struct in a dictionary was copied whole (arrays and all, through generic value
  /// witnesses) on each read. Records never leave the machine.
  final class PathRecord {
    let id: PathID
    var group: Int
    var priority: Int
    var relativeThroughput: Int
    var health: Health = .up
    /// Reinstated and better than the serving paths, waiting for failback.
    var held = false
    var failbackDeadline: Instant?
    /// Probes failed since the path failed; picks the backoff step.
    var probeAttempt = 0
    var probeDeadline: Instant?
    /// `removePath` was called; the record goes once its fenced writes are settled.
    var removing = false
    /// Writes taken off this path and waiting for its fence (I/O in flight on it is
    /// `statistics.outstandingIOs`).
    var fenced = 0
    var statistics = PathStatistics()
    /// With ALUA: the path's target port group, its state and PREF bit as last known.
    var portGroup: UInt16?
    var access: PortAccess?
    var preferred = false

    init(id: PathID, group: Int, priority: Int, relativeThroughput: Int) {
      self.id = id
      self.group = group
      self.priority = priority
      self.relativeThroughput = relativeThroughput
    }
  }

  /// Where an I/O is.
  enum Place: Equatable {
    /// Dispatched on the path, not completed.
    case path(PathID)
    /// Taken off a failed path, waiting for its fence (writes).
    case fenced(PathID)
    /// Waiting for a usable path (in `queue`).
    case queued
    /// Given up (`.fail`); the caller takes the record.
    case failed
  }

  /// The record of one I/O.
  public struct Entry {
    public let token: IOToken
    public var payload: Payload
    var place: Place
    /// When the target first refused it (NOT READY, ALUA): refusals never restart its
    /// no-path-retry, so a target that keeps refusing on every path ends it with an error.
    var refusedSince: Instant? = nil
  }

  struct QueuedIO {
    var id: UInt64
    var deadline: Instant
  }

  public let clock: Clock
  public private(set) var configuration: MultipathConfiguration
  private var random: any RandomNumberGenerator

  var order: [PathID] = []
  var paths: [PathID: PathRecord] = [:]
  /// Every I/O the machine holds, by `IOToken.id`.
  private var ios: [UInt64: Entry] = [:]
  /// I/O waiting for a usable path, oldest first (deadlines are therefore ascending).
  private var queue: [QueuedIO] = []
  var roundRobinCurrent: PathID?
  var roundRobinRemaining = 0

  /// ALUA: who may change states (nil: the LU has no ALUA), the read of the port groups in
  /// progress and through which path, whether another read was asked for meanwhile, the
  /// activation (SET TARGET PORT GROUPS) in progress, since when each group transitions,
  /// the target's own transition time, and when the next periodic read is due.
  var aluaMode: ALUAMode?
  var portGroupRead: PathID?
  var portGroupRereadWanted = false
  var activation: PathID?
  var transitionStarted: [UInt16: Instant] = [:]
  var targetTransitionTimeout: Duration?
  var portGroupCheckDeadline: Instant?

  public init(
    configuration: MultipathConfiguration = MultipathConfiguration(),
    clock: Clock,
    random: any RandomNumberGenerator = SystemRandomNumberGenerator()
  ) {
    self.configuration = configuration
    self.clock = clock
    self.random = random
  }

  // MARK: - Paths

  /// A new path. `group` and `priority` come from the caller, e.g. from REPORT TARGET PORT
  /// GROUPS: give active/optimized ports a higher priority than active/non-optimized ones.
  /// `relativeThroughput` (>= 1) weighs the path in `service-time` (as dm's table argument).
  /// With ALUA, give the path's target port group and its state (and PREF bit): the port
  /// group becomes its group and the state its priority (`PortAccess.priority`), the path
  /// carries I/O only in an active state, and the port groups are re-read periodically.
  public mutating func addPath(
    _ id: PathID, group: Int, priority: Int, relativeThroughput: Int = 1, portGroup: UInt16? = nil,
    access: PortAccess? = nil, preferred: Bool = false
  ) -> [Action] {
    precondition(self.paths[id] == nil, "\(id) added twice")
    let before = self.states()
    self.order.append(id)
    let record = PathRecord(id: id, group: group, priority: priority, relativeThroughput: max(relativeThroughput, 1))
    var reason = "added (group \(group), priority \(priority))"
    var actions: [Action] = []
    if let portGroup, let access {
      record.portGroup = portGroup
      record.access = access
      record.preferred = preferred
      record.group = Int(portGroup)
      record.priority = access.priority(preferred: preferred)
      reason = "added (port group \(portGroup), \(access)\(preferred ? ", preferred" : ""))"
      if access == .transitioning { self.transitionStarted[portGroup] = self.transitionStarted[portGroup] ?? self.clock.now }
    }
    self.paths[id] = record
    if record.access != nil { self.armPortGroupCheck(&actions) }
    return self.finish(before, subject: id, reason: reason, &actions)
  }

  /// Takes the path away. Its reads are re-sent at once; its writes are fenced as on a
  /// failure, and the path is forgotten once they are settled (`pathFenced` or completed).
  public mutating func removePath(_ id: PathID) -> [Action] {
    guard var record = self.paths[id], !record.removing else { return [] }
    let before = self.states()
    var actions: [Action] = []
    self.cancelPathTimers(&record, &actions)
    record.removing = true
    record.held = false
    record.health = .disabled
    self.paths[id] = record
    self.takeIOOff(id, &actions)
    self.forgetIfSettled(id)
    return self.finish(before, subject: id, reason: "removed", &actions)
  }

  /// The path stopped working. Reads in flight on it are re-sent elsewhere (or queued);
  /// writes in flight on it are fenced (see the type's comment); a probe is scheduled.
  public mutating func pathFailed(_ id: PathID, reason: PathFailure) -> [Action] {
    guard let record = self.paths[id], !record.removing else { return [] }
    switch record.health {
    case .up: break
    case .probing: return self.probeFailed(id, reason: reason)
    case .failed, .disabled: return []
    }
    let before = self.states()
    var actions: [Action] = []
    let servingBefore = self.servingLevel()
    self.paths[id]!.health = .failed(reason)
    self.paths[id]!.probeAttempt = 0
    self.releaseHeldIfServingChanged(from: servingBefore, &actions)
    self.takeIOOff(id, &actions)
    self.scheduleProbe(id, &actions)
    return self.finish(before, subject: id, reason: "\(reason)", &actions)
  }

  /// The caller made sure nothing sent on the failed path can reach the LUN any more:
  /// its fenced writes are re-sent on other paths now (or queued if there is none).
  public mutating func pathFenced(_ id: PathID) -> [Action] {
    guard let record = self.paths[id], record.fenced > 0 else { return [] }
    let before = self.states()
    var actions: [Action] = []
    let fenced = self.ids(at: .fenced(id))
    record.fenced = 0
    for io in fenced {
      self.place(io, &actions)
    }
    self.forgetIfSettled(id)
    return self.finish(before, subject: id, reason: "fenced; \(fenced.count) write(s) re-sent", &actions)
  }

  /// New group and priority for a path (ALUA states change, a probe learned them): the
  /// next I/O follows them; I/O in flight stays.
  public mutating func updatePath(_ id: PathID, group: Int, priority: Int) -> [Action] {
    guard let record = self.paths[id], !record.removing, record.group != group || record.priority != priority
    else { return [] }
    let before = self.states()
    var actions: [Action] = []
    let servingBefore = self.servingLevel()
    self.paths[id]!.group = group
    self.paths[id]!.priority = priority
    self.releaseHeldIfServingChanged(from: servingBefore, &actions)
    return self.finish(before, subject: id, reason: "group \(group), priority \(priority)", &actions)
  }

  /// The caller could not fence the path in time (no path came back within its own
  /// no-path-retry bound): its fenced writes fail with `.noPath` instead of being re-sent.
  /// Failing a write is safe where re-sending it is not: the user sees EIO, as for any
  /// write whose fate is unknown.
  public mutating func abandonFenced(_ id: PathID) -> [Action] {
    guard let record = self.paths[id], record.fenced > 0 else { return [] }
    let before = self.states()
    var actions: [Action] = []
    let fenced = self.ids(at: .fenced(id))
    record.fenced = 0
    for io in fenced {
      self.fail(io, .noPath, &actions)
    }
    self.forgetIfSettled(id)
    return self.finish(before, subject: id, reason: "not fenced in time; \(fenced.count) write(s) failed", &actions)
  }

  /// The administrator takes the path out: handled as a failure, but never probed.
  public mutating func disablePath(_ id: PathID) -> [Action] {
    guard var record = self.paths[id], !record.removing, record.health != .disabled else { return [] }
    let before = self.states()
    var actions: [Action] = []
    let servingBefore = self.servingLevel()
    self.cancelPathTimers(&record, &actions)
    record.health = .disabled
    record.held = false
    self.paths[id] = record
    self.releaseHeldIfServingChanged(from: servingBefore, &actions)
    self.takeIOOff(id, &actions)
    return self.finish(before, subject: id, reason: "disabled by administrator", &actions)
  }

  /// The administrator puts a disabled path back: usable at once.
  public mutating func enablePath(_ id: PathID) -> [Action] {
    guard let record = self.paths[id], !record.removing, record.health == .disabled else { return [] }
    let before = self.states()
    var actions: [Action] = []
    self.paths[id]!.health = .up
    self.paths[id]!.probeAttempt = 0
    return self.finish(before, subject: id, reason: "enabled by administrator", &actions)
  }

  // MARK: - Probes and failback

  /// The probe found the path working again: it is reinstated, and takes I/O according to
  /// the failback policy (see `FailbackPolicy`).
  public mutating func probeSucceeded(_ id: PathID) -> [Action] {
    guard var record = self.paths[id], !record.removing else { return [] }
    switch record.health {
    case .failed, .probing: break
    case .up, .disabled: return []
    }
    let before = self.states()
    var actions: [Action] = []
    let servingBefore = self.servingLevel()
    self.cancelPathTimers(&record, &actions)
    record.health = .up
    record.probeAttempt = 0
    var reason = "probe succeeded"
    if let serving = servingBefore, self.level(of: record) < serving {
      switch self.configuration.failback {
      case .immediate:
        reason += "; immediate failback"
      case .manual:
        record.held = true
        reason += "; waiting for manual failback"
      case .deferred(let seconds):
        let deadline = self.clock.now.advanced(by: .seconds(seconds))
        record.held = true
        record.failbackDeadline = deadline
        actions.append(.scheduleTimer(.failback(id), deadline))
        reason += "; failback in \(seconds) s"
      }
    }
    self.paths[id] = record
    return self.finish(before, subject: id, reason: reason, &actions)
  }

  /// The probe failed: the path stays failed and the next probe is scheduled, one backoff
  /// step later.
  public mutating func probeFailed(_ id: PathID, reason: PathFailure = PathFailure(.probeFailed)) -> [Action] {
    guard let record = self.paths[id], !record.removing else { return [] }
    switch record.health {
    case .failed, .probing: break
    case .up, .disabled: return []
    }
    let before = self.states()
    var actions: [Action] = []
    self.paths[id]!.health = .failed(reason)
    self.paths[id]!.probeAttempt += 1
    self.scheduleProbe(id, &actions)
    return self.finish(before, subject: id, reason: "\(reason)", &actions)
  }

  /// Manual failback: reinstated paths waiting for failback take I/O now.
  /// New policy, failback or no-path-retry (a reload). I/O in flight stays where it is;
  /// the next I/O follows the new policy. Queued I/O keeps the deadline it was given.
  /// Switching failback to `.immediate` releases paths held for failback.
  public mutating func reconfigure(_ configuration: MultipathConfiguration) -> [Action] {
    let before = self.states()
    var actions: [Action] = []
    self.configuration = configuration
    self.roundRobinCurrent = nil
    self.roundRobinRemaining = 0
    if configuration.failback == .immediate {
      self.releaseAllHeld(&actions)
    }
    return self.finish(before, subject: nil, reason: "configuration reloaded", &actions)
  }

  public mutating func failback() -> [Action] {
    let before = self.states()
    var actions: [Action] = []
    self.releaseAllHeld(&actions)
    return self.finish(before, subject: nil, reason: "failback", &actions)
  }

  // MARK: - I/O

  /// A new I/O: dispatched on the path the policy picks, or queued when no path is usable
  /// (failed with `.noPath` after `noPathRetry`).
  /// `submit` for the common case, without an action list: when a usable path takes the
  /// I/O at once it is dispatched there and returned (what `.dispatch` would say); nil
  /// means nothing happened and `submit` must be called.
  public mutating func submitToPath(_ io: IOToken, _ payload: Payload) -> PathID? {
    guard self.queue.isEmpty, let path = self.select(for: io) else { return nil }
    precondition(self.ios[io.id] == nil, "\(io) submitted twice")
    self.ios[io.id] = Entry(token: io, payload: payload, place: .path(path))
    let record = self.paths[path]!
    record.statistics.outstandingIOs += 1
    record.statistics.outstandingBytes += io.bytes
    return path
  }

  public mutating func submit(_ io: IOToken, _ payload: Payload) -> [Action] {
    precondition(self.ios[io.id] == nil, "\(io) submitted twice")
    self.ios[io.id] = Entry(token: io, payload: payload, place: .queued)
    var actions: [Action] = []
    self.place(io.id, &actions)
    return actions
  }

  /// The record of an I/O the machine holds (for the caller's payload).
  public subscript(io id: UInt64) -> Entry? {
    self.ios[id]
  }

  /// The token of an I/O the machine holds.
  public mutating func token(of id: UInt64) -> IOToken? {
    guard let index = self.ios.index(forKey: id) else { return nil }
    return inPlace(&self.ios.values[index]) { $0.token }
  }

  /// Changes the caller's payload of an I/O in place (nil: no such I/O).
  @discardableResult
  public mutating func updatePayload<R>(of id: UInt64, _ body: (inout Payload) -> R) -> R? {
    guard let index = self.ios.index(forKey: id) else { return nil }
    return body(&self.ios.values[index].payload)
  }

  /// Carries out `.fail`: the record leaves the machine and goes to the caller.
  public mutating func take(_ io: IOToken) -> Entry? {
    guard let entry = self.ios[io.id], entry.place == .failed else { return nil }
    self.ios[io.id] = nil
    return entry
  }

  /// The caller's payloads of every I/O the machine holds (any order).
  public var payloads: some Sequence<(IOToken, Payload)> {
    self.ios.values.lazy.map { ($0.token, $0.payload) }
  }

  /// The client of a queued I/O has gone: it leaves the no-path queue without being
  /// sent, and its record is returned. Nil when it is on a path (or fenced), where it runs
  /// to the end because the target may already have it.
  public mutating func cancelQueued(_ io: IOToken) -> Entry? {
    guard self.ios[io.id]?.place == .queued, let index = self.queue.firstIndex(where: { $0.id == io.id })
    else { return nil }
    self.queue.remove(at: index)
    return self.ios.removeValue(forKey: io.id)
  }

  /// The I/O finished on `path`; its record leaves the machine and is returned. A
  /// completion from a path the I/O is no longer on (a read already re-sent elsewhere) is
  /// stale and ignored (nil). A fenced write that completes on its old path is done and
  /// will not be re-sent.
  public mutating func completed(
    _ io: IOToken, path: PathID, latency: Duration, success: Bool, into actions: inout [Action]
  ) -> Entry? {
    guard let (record, index) = self.leave(io, path: path) else { return nil }
    let entry = self.ios.remove(at: index).value
    record.statistics.ios += 1
    if success {
      record.statistics.bytes += UInt64(max(io.bytes, 0))
      record.statistics.recordLatency(latency)
    } else {
      record.statistics.errors += 1
    }
    if record.removing {
      let before = self.states()
      self.forgetIfSettled(path)
      actions = self.finish(before, subject: path, reason: "removed", &actions)
    }
    return entry
  }

  /// The target answered that it did not carry out the I/O on `path` (a CHECK CONDITION
  /// such as an ALUA standby port's NOT READY): it is placed again now, a write too, and
  /// without a fence, since no copy of it can land later. A read already re-sent
  /// elsewhere is stale (nothing happens). Fail the path first if it should take no more.
  ///
  /// With ALUA, `access` is what the refusal said of the port (NOT READY 04/0B: standby,
  /// 04/0C: unavailable, 04/0A: transitioning): every path of its port group takes that
  /// state before the I/O is placed again, and the port groups are re-read. nil (a unit
  /// attention "access state changed"): only the re-read.
  public mutating func rejected(_ io: IOToken, path: PathID, access: PortAccess? = nil) -> [Action] {
    guard let (record, index) = self.leave(io, path: path) else { return [] }
    record.statistics.errors += 1
    let now = self.clock.now
    let since = self.ios.values[index].refusedSince ?? now
    self.ios.values[index].refusedSince = since
    let before = self.states()
    let servingBefore = self.servingLevel()
    var actions: [Action] = []
    var reason = "\(io) refused by the target, placed again"
    if let access, let group = record.portGroup, record.access != access {
      self.setAccess(access, preferred: record.preferred, ofGroup: group)
      reason = "\(io) refused: port group \(group) \(access); placed again"
    }
    self.releaseHeldIfServingChanged(from: servingBefore, &actions)
    if since.duration(to: now) >= self.configuration.noPathRetry {
      self.fail(io.id, .refused, &actions)
      reason = "\(io) refused by the target on every try for \(self.configuration.noPathRetry.components.seconds) s"
    } else {
      self.place(io.id, &actions)
    }
    self.forgetIfSettled(path)
    if record.portGroup != nil { self.requestPortGroupRead(&actions) }
    return self.finish(before, subject: path, reason: reason, &actions)
  }

  /// Takes an I/O that is on `path` (dispatched or fenced there) off the path's counts;
  /// nil when it is not there (stale: already elsewhere or gone).
  private mutating func leave(_ io: IOToken, path: PathID) -> (PathRecord, Dictionary<UInt64, Entry>.Index)? {
    guard let record = self.paths[path], let index = self.ios.index(forKey: io.id) else { return nil }
    switch inPlace(&self.ios.values[index], { $0.place }) {
    case .path(path):
      record.statistics.outstandingIOs -= 1
      record.statistics.outstandingBytes -= io.bytes
    case .fenced(path):
      record.fenced -= 1
    default:
      return nil
    }
    return (record, index)
  }

  /// `completed` returning the actions only.
  public mutating func completed(_ io: IOToken, path: PathID, latency: Duration, success: Bool) -> [Action] {
    var actions: [Action] = []
    _ = self.completed(io, path: path, latency: latency, success: success, into: &actions)
    return actions
  }

  // MARK: - Timers

  public mutating func timerFired(_ id: TimerID) -> [Action] {
    let now = self.clock.now
    switch id {
    case .noPathRetry:
      var actions: [Action] = []
      while let first = self.queue.first, first.deadline <= now {
        self.queue.removeFirst()
        self.fail(first.id, .noPath, &actions)
      }
      if let first = self.queue.first {
        actions.append(.scheduleTimer(.noPathRetry, first.deadline))
      }
      return actions

    case .probe(let path):
      guard let record = self.paths[path], case .failed(let reason) = record.health,
        let deadline = record.probeDeadline, deadline <= now
      else { return [] }
      let before = self.states()
      var actions: [Action] = []
      self.paths[path]!.health = .probing(reason)
      self.paths[path]!.probeDeadline = nil
      actions.append(.startProbe(path))
      return self.finish(before, subject: path, reason: "probe \(record.probeAttempt + 1)", &actions)

    case .portGroupCheck:
      guard let deadline = self.portGroupCheckDeadline, deadline <= now else { return [] }
      self.portGroupCheckDeadline = nil
      var actions: [Action] = []
      self.requestPortGroupRead(&actions)
      if self.portGroupRead == nil { self.armPortGroupCheck(&actions) }  // no path to read through now
      return actions

    case .failback(let path):
      guard let record = self.paths[path], record.held, let deadline = record.failbackDeadline,
        deadline <= now
      else { return [] }
      let before = self.states()
      var actions: [Action] = []
      self.paths[path]!.held = false
      self.paths[path]!.failbackDeadline = nil
      return self.finish(before, subject: path, reason: "deferred failback", &actions)
    }
  }

  // MARK: - Status

  /// One row per path, in the order they were added.
  public func status() -> [PathStatus] {
    let serving = self.servingLevel()
    return self.order.compactMap { id in
      guard let record = self.paths[id] else { return nil }
      return PathStatus(
        path: id, group: record.group, priority: record.priority,
        state: self.state(of: record, serving: serving),
        fencedWrites: record.fenced, statistics: record.statistics, portGroup: record.portGroup,
        access: record.access)
    }
  }

  public func state(of id: PathID) -> PathState? {
    self.paths[id].map { self.state(of: $0, serving: self.servingLevel()) }
  }

  /// I/O waiting for a usable path.
  public var queuedIOs: Int { self.queue.count }

  // MARK: - Internals

  /// Puts an I/O on a path, or in the no-path queue.
  private mutating func place(_ id: UInt64, _ actions: inout [Action]) {
    let io = self.ios[id]!.token
    if let path = self.select(for: io) {
      self.dispatch(io, on: path, &actions)
      return
    }
    guard self.configuration.noPathRetry > .zero else {
      self.fail(id, .noPath, &actions)
      return
    }
    let deadline = (self.ios[id]!.refusedSince ?? self.clock.now).advanced(by: self.configuration.noPathRetry)
    let position = self.queue.firstIndex { $0.deadline > deadline } ?? self.queue.endIndex
    if position == self.queue.startIndex {
      actions.append(.scheduleTimer(.noPathRetry, deadline))
    }
    self.ios[id]!.place = .queued
    self.queue.insert(QueuedIO(id: id, deadline: deadline), at: position)
  }

  private mutating func dispatch(_ io: IOToken, on path: PathID, _ actions: inout [Action]) {
    self.ios[io.id]!.place = .path(path)
    let record = self.paths[path]!
    record.statistics.outstandingIOs += 1
    record.statistics.outstandingBytes += io.bytes
    actions.append(.dispatch(io, path))
  }

  private mutating func fail(_ id: UInt64, _ error: MultipathError, _ actions: inout [Action]) {
    self.ios[id]!.place = .failed
    actions.append(.fail(self.ios[id]!.token, error))
  }

  /// The I/O at `place`, oldest first (by id: the order they were submitted).
  private func ids(at place: Place) -> [UInt64] {
    self.ios.values.lazy.filter { $0.place == place }.map(\.token.id).sorted()
  }

  /// Takes everything in flight off a path that stopped: reads are placed again at once,
  /// writes are fenced until `pathFenced`.
  private mutating func takeIOOff(_ id: PathID, _ actions: inout [Action]) {
    let record = self.paths[id]!
    guard record.statistics.outstandingIOs > 0 else { return }
    let ios = self.ids(at: .path(id))
    record.statistics.outstandingIOs = 0
    record.statistics.outstandingBytes = 0
    record.statistics.failovers += UInt64(ios.count)
    var fenced = 0
    for io in ios where self.ios[io]!.token.isWrite {
      self.ios[io]!.place = .fenced(id)
      fenced += 1
    }
    if fenced > 0 {
      record.fenced += fenced
      actions.append(.fencePath(id))
    }
    for io in ios where !self.ios[io]!.token.isWrite {
      self.place(io, &actions)
    }
  }

  /// Sends queued I/O, oldest first, as long as a path is usable.
  private mutating func drainQueue(_ actions: inout [Action]) {
    guard !self.queue.isEmpty else { return }
    while let first = self.queue.first, let path = self.select(for: self.ios[first.id]!.token) {
      self.queue.removeFirst()
      self.dispatch(self.ios[first.id]!.token, on: path, &actions)
    }
    if self.queue.isEmpty {
      actions.append(.cancelTimer(.noPathRetry))
    }
  }

  private mutating func scheduleProbe(_ id: PathID, _ actions: inout [Action]) {
    let delay = self.configuration.probeBackoff.delay(
      attempt: self.paths[id]!.probeAttempt, random: self.random.next())
    let deadline = self.clock.now.advanced(by: delay)
    self.paths[id]!.probeDeadline = deadline
    actions.append(.scheduleProbe(id, at: deadline))
  }

  private func cancelPathTimers(_ record: inout PathRecord, _ actions: inout [Action]) {
    if record.probeDeadline != nil {
      record.probeDeadline = nil
      actions.append(.cancelTimer(.probe(record.id)))
    }
    if record.failbackDeadline != nil {
      record.failbackDeadline = nil
      actions.append(.cancelTimer(.failback(record.id)))
    }
  }

  private mutating func releaseAllHeld(_ actions: inout [Action]) {
    for id in self.order where self.paths[id]!.held {
      self.paths[id]!.held = false
      if self.paths[id]!.failbackDeadline != nil {
        self.paths[id]!.failbackDeadline = nil
        actions.append(.cancelTimer(.failback(id)))
      }
    }
  }

  /// Paths waiting for failback only wait while the paths they would replace are serving:
  /// once those are gone, the best paths take over whatever the failback policy.
  mutating func releaseHeldIfServingChanged(from before: Level?, _ actions: inout [Action]) {
    if self.servingLevel() != before {
      self.releaseAllHeld(&actions)
    }
  }

  private mutating func forgetIfSettled(_ id: PathID) {
    guard let record = self.paths[id], record.removing, record.fenced == 0, record.statistics.outstandingIOs == 0
    else { return }
    self.paths[id] = nil
    self.order.removeAll { $0 == id }
    if self.roundRobinCurrent == id { self.roundRobinCurrent = nil }
  }

  func states() -> [(PathID, PathState)] {
    let serving = self.servingLevel()
    return self.order.map { ($0, self.state(of: self.paths[$0]!, serving: serving)) }
  }

  /// Ends an event: sends queued I/O if a path became usable, and puts a `.log` first for
  /// every path whose state changed.
  mutating func finish(
    _ before: [(PathID, PathState)], subject: PathID?, reason: String, _ actions: inout [Action]
  ) -> [Action] {
    self.drainQueue(&actions)
    let after = self.states()
    let afterByID = Dictionary(uniqueKeysWithValues: after)
    let beforeByID = Dictionary(uniqueKeysWithValues: before)
    var logs: [Action] = []
    func why(_ id: PathID) -> String {
      if id == subject { return reason }
      return subject.map { "\($0): \(reason)" } ?? reason
    }
    for (id, old) in before where afterByID[id] != old {
      logs.append(.log(PathEvent(path: id, from: old, to: afterByID[id], reason: why(id))))
    }
    for (id, new) in after where beforeByID[id] == nil {
      logs.append(.log(PathEvent(path: id, from: nil, to: new, reason: why(id))))
    }
    return logs + actions
  }
}

extension MultipathStateMachine where Payload == Void {
  /// `submitToPath` for a caller with nothing to keep in the record (tests).
  public mutating func submitToPath(_ io: IOToken) -> PathID? {
    self.submitToPath(io, ())
  }

  public mutating func submit(_ io: IOToken) -> [Action] {
    self.submit(io, ())
  }
}

/// Reads a field of a dictionary's value through its modify accessor: reading
/// `dictionary.values[index].field` directly copies the whole value first (retaining every
/// reference in it), which the I/O path cannot afford for every request.
@inline(__always)
func inPlace<T, R>(_ value: inout T, _ read: (inout T) -> R) -> R {
  read(&value)
}
