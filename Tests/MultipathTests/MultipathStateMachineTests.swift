import XCTest

@testable import Multipath

typealias Machine = MultipathStateMachine<MockClock, Void>
typealias Action = Machine.Action

let p1 = PathID(1)
let p2 = PathID(2)
let p3 = PathID(3)
let p4 = PathID(4)

func read(_ id: UInt64, _ bytes: Int = 4096) -> IOToken { IOToken(id: id, bytes: bytes, isWrite: false) }
func write(_ id: UInt64, _ bytes: Int = 4096) -> IOToken { IOToken(id: id, bytes: bytes, isWrite: true) }
func at(_ offset: Duration) -> MockClock.Instant { MockClock.at(offset) }
let down = PathFailure(.connectionLost, context: "TCP reset")

func log(_ path: PathID, _ from: PathState?, _ to: PathState?, _ reason: String) -> Action {
  .log(PathEvent(path: path, from: from, to: to, reason: reason))
}

final class MultipathStateMachineTests: XCTestCase {
  var clock: MockClock!

  override func setUp() {
    self.clock = MockClock()
  }

  func makeMachine(
    _ policy: SelectorPolicy, failback: FailbackPolicy = .immediate,
    random: [UInt64] = [], paths: [(PathID, group: Int, priority: Int)]
  ) -> Machine {
    var machine = Machine(
      configuration: MultipathConfiguration(policy: policy, failback: failback),
      clock: self.clock, random: ScriptedRandom(values: random))
    for (id, group, priority) in paths {
      _ = machine.addPath(id, group: group, priority: priority)
    }
    return machine
  }

  /// The paths the I/Os went to, in order; fails the test on any other action.
  func dispatched(
    _ machine: inout Machine, _ ios: [IOToken], file: StaticString = #filePath, line: UInt = #line
  )
    -> [PathID]
  {
    ios.map { io in
      let actions = machine.submit(io)
      guard actions.count == 1, case .dispatch(io, let path) = actions[0] else {
        XCTFail("\(io) → \(actions)", file: file, line: line)
        return PathID(0)
      }
      return path
    }
  }

  // MARK: - The direct path

  func testSubmitToPathDispatchesLikeSubmitAndLeavesTheRestToIt() {
    var machine = makeMachine(.roundRobin(iosPerTurn: 1), paths: [(p1, 0, 0), (p2, 0, 0)])
    // Same choices as `submit` would make (round robin across both paths).
    XCTAssertEqual(machine.submitToPath(read(1)), p1)
    XCTAssertEqual(machine.submitToPath(write(2)), p2)
    XCTAssertEqual(machine.status().map(\.statistics.outstandingIOs), [1, 1])
    // Completions find them where the direct path put them.
    XCTAssertEqual(machine.completed(read(1), path: p1, latency: .milliseconds(1), success: true), [])
    XCTAssertEqual(machine.status().map(\.statistics.outstandingIOs), [0, 1])
    // No usable path: nothing happens here; `submit` queues it.
    _ = machine.pathFailed(p1, reason: down)
    _ = machine.pathFailed(p2, reason: down)
    XCTAssertNil(machine.submitToPath(read(3)))
    XCTAssertEqual(machine.queuedIOs, 0)
    _ = machine.submit(read(3))
    XCTAssertEqual(machine.queuedIOs, 1)
    // With I/O queued, a new one never overtakes it: `submit` decides.
    _ = machine.probeSucceeded(p1)
    _ = machine.submit(read(4))
    XCTAssertEqual(machine.queuedIOs, 0)
  }

  func testSubmitToPathWaitsBehindQueuedIO() {
    var machine = makeMachine(.failover, paths: [(p1, 0, 0)])
    _ = machine.pathFailed(p1, reason: down)
    _ = machine.submit(read(1))
    XCTAssertEqual(machine.queuedIOs, 1)
    machine.paths[p1]!.health = .up  // usable again, but the queue has not drained yet
    XCTAssertNil(machine.submitToPath(read(2)))
  }

  // MARK: - Selectors

  func testAddPathLogsItsState() {
    var machine = Machine(configuration: .init(policy: .failover), clock: self.clock)
    XCTAssertEqual(
      machine.addPath(p1, group: 1, priority: 50), [log(p1, nil, .active, "added (group 1, priority 50)")])
    XCTAssertEqual(
      machine.addPath(p2, group: 2, priority: 10), [log(p2, nil, .standby, "added (group 2, priority 10)")])
  }

  func testServiceTimePrefersTheFasterPath() {
    var machine = makeMachine(.serviceTime, paths: [(p1, 1, 50), (p2, 1, 50)])
    // No latency known yet: equal cost, list order; then the idle path.
    XCTAssertEqual(dispatched(&machine, [read(1), read(2)]), [p1, p2])
    XCTAssertEqual(machine.completed(read(1), path: p1, latency: .milliseconds(1), success: true), [])
    XCTAssertEqual(machine.completed(read(2), path: p2, latency: .milliseconds(4), success: true), [])
    // p1 is 4× faster: (in-flight + 4096) × 1 ms beats 4096 × 4 ms until p1 holds 4 I/Os
    // (the tie at 16384 goes to the first path), then p2 gets one.
    XCTAssertEqual(
      dispatched(&machine, (10..<15).map { read($0) }), [p1, p1, p1, p1, p2])
  }

  func testServiceTimeWeighsRelativeThroughput() {
    var machine = Machine(configuration: .init(policy: .serviceTime), clock: self.clock)
    _ = machine.addPath(p1, group: 1, priority: 50, relativeThroughput: 1)
    _ = machine.addPath(p2, group: 1, priority: 50, relativeThroughput: 3)
    // Equal cost on the empty paths: the larger throughput wins the tie (as dm does).
    // p2 then takes 3 I/Os for each on p1.
    XCTAssertEqual(dispatched(&machine, (1...4).map { read($0) }), [p2, p2, p2, p1])
  }

  func testQueueLengthPicksFewestOutstanding() {
    var machine = makeMachine(.queueLength, paths: [(p1, 1, 50), (p2, 1, 50), (p3, 1, 50)])
    XCTAssertEqual(dispatched(&machine, [read(1), read(2), read(3)]), [p1, p2, p3])
    _ = machine.completed(read(2), path: p2, latency: .milliseconds(1), success: true)
    XCTAssertEqual(dispatched(&machine, [read(4)]), [p2])
    // All at one: list order.
    XCTAssertEqual(dispatched(&machine, [read(5)]), [p1])
  }

  func testRoundRobinSendsNPerTurn() {
    var machine = makeMachine(.roundRobin(iosPerTurn: 3), paths: [(p1, 1, 50), (p2, 1, 50), (p3, 1, 50)])
    XCTAssertEqual(
      dispatched(&machine, (1...10).map { read($0) }), [p1, p1, p1, p2, p2, p2, p3, p3, p3, p1])
    // p1 dies mid-turn: its reads (1, 2, 3 and 10) are re-sent at once and take their
    // turns like new I/O, 3 per path.
    XCTAssertEqual(
      machine.pathFailed(p1, reason: down),
      [
        log(p1, .active, .failed(down), "\(down)"),
        .dispatch(read(1), p2), .dispatch(read(2), p2), .dispatch(read(3), p2), .dispatch(read(10), p3),
        .scheduleProbe(p1, at: at(.seconds(1))),
      ])
    XCTAssertEqual(dispatched(&machine, (11...14).map { read($0) }), [p3, p3, p2, p2])
  }

  func testNonFailoverPoliciesPreferTheHigherALUAPriority() {
    // p1 active/optimized, p2 active/non-optimized.
    var machine = makeMachine(.queueLength, paths: [(p1, 1, 50), (p2, 2, 10)])
    XCTAssertEqual(machine.state(of: p2), .standby)
    XCTAssertEqual(dispatched(&machine, [read(1), read(2)]), [p1, p1])
    XCTAssertEqual(
      machine.pathFailed(p1, reason: down),
      [
        log(p1, .active, .failed(down), "\(down)"),
        log(p2, .standby, .active, "path1: \(down)"),
        .dispatch(read(1), p2), .dispatch(read(2), p2),
        .scheduleProbe(p1, at: at(.seconds(1))),
      ])
  }

  func testPolicyArgumentSpellings() {
    XCTAssertEqual(SelectorPolicy(argument: "service-time"), .serviceTime)
    XCTAssertEqual(SelectorPolicy(argument: "queue-length"), .queueLength)
    XCTAssertEqual(SelectorPolicy(argument: "round-robin"), .roundRobin(iosPerTurn: 1))
    XCTAssertEqual(SelectorPolicy(argument: "round-robin:16"), .roundRobin(iosPerTurn: 16))
    XCTAssertEqual(SelectorPolicy(argument: "failover"), .failover)
    XCTAssertNil(SelectorPolicy(argument: "round-robin:0"))
    XCTAssertNil(SelectorPolicy(argument: "fastest"))
    XCTAssertEqual(MultipathConfiguration().policy, .serviceTime)
  }

  // MARK: - Failover groups and failback

  /// Group 1 (p1, p2, priority 50) serves; group 2 (p3, priority 10) stands by.
  func failoverToGroupTwo(_ failback: FailbackPolicy) -> Machine {
    var machine = makeMachine(.failover, failback: failback, paths: [(p1, 1, 50), (p2, 1, 50), (p3, 2, 10)])
    XCTAssertEqual(machine.status().map(\.state), [.active, .active, .standby])
    XCTAssertEqual(dispatched(&machine, [read(1), read(2)]), [p1, p2])
    _ = machine.completed(read(1), path: p1, latency: .milliseconds(1), success: true)
    _ = machine.completed(read(2), path: p2, latency: .milliseconds(1), success: true)

    XCTAssertEqual(
      machine.pathFailed(p1, reason: down),
      [log(p1, .active, .failed(down), "\(down)"), .scheduleProbe(p1, at: at(.seconds(1)))])
    XCTAssertEqual(dispatched(&machine, [read(3)]), [p2])
    _ = machine.completed(read(3), path: p2, latency: .milliseconds(1), success: true)
    XCTAssertEqual(
      machine.pathFailed(p2, reason: down),
      [
        log(p2, .active, .failed(down), "\(down)"),
        log(p3, .standby, .active, "path2: \(down)"),
        .scheduleProbe(p2, at: at(.seconds(1))),
      ])
    XCTAssertEqual(dispatched(&machine, [read(4)]), [p3])

    self.clock.advance(to: .seconds(1))
    XCTAssertEqual(
      machine.timerFired(.probe(p1)), [log(p1, .failed(down), .probing, "probe 1"), .startProbe(p1)])
    return machine
  }

  func testFailoverToNextGroupAndImmediateFailback() {
    var machine = failoverToGroupTwo(.immediate)
    XCTAssertEqual(
      machine.probeSucceeded(p1),
      [
        log(p1, .probing, .active, "probe succeeded; immediate failback"),
        log(p3, .active, .standby, "path1: probe succeeded; immediate failback"),
      ])
    XCTAssertEqual(dispatched(&machine, [read(5)]), [p1])
  }

  func testManualFailbackWaitsForTheCommand() {
    var machine = failoverToGroupTwo(.manual)
    XCTAssertEqual(
      machine.probeSucceeded(p1),
      [log(p1, .probing, .standby, "probe succeeded; waiting for manual failback")])
    XCTAssertEqual(dispatched(&machine, [read(5)]), [p3])
    _ = machine.completed(read(5), path: p3, latency: .milliseconds(1), success: true)
    XCTAssertEqual(
      machine.failback(), [log(p1, .standby, .active, "failback"), log(p3, .active, .standby, "failback")])
    XCTAssertEqual(dispatched(&machine, [read(6)]), [p1])
  }

  func testManualFailbackStopsWaitingWhenTheServingGroupDies() {
    var machine = failoverToGroupTwo(.manual)
    _ = machine.probeSucceeded(p1)
    _ = machine.completed(read(4), path: p3, latency: .milliseconds(1), success: true)
    XCTAssertEqual(
      machine.pathFailed(p3, reason: down),
      [
        log(p1, .standby, .active, "path3: \(down)"),
        log(p3, .active, .failed(down), "\(down)"),
        .scheduleProbe(p3, at: at(.seconds(2))),
      ])
    XCTAssertEqual(dispatched(&machine, [read(5)]), [p1])
  }

  func testDeferredFailbackAfterItsDelay() {
    var machine = failoverToGroupTwo(.deferred(seconds: 30))
    XCTAssertEqual(
      machine.probeSucceeded(p1),
      [
        log(p1, .probing, .standby, "probe succeeded; failback in 30 s"),
        .scheduleTimer(.failback(p1), at(.seconds(31))),
      ])
    // A timer that fires early changes nothing.
    self.clock.advance(to: .seconds(10))
    XCTAssertEqual(machine.timerFired(.failback(p1)), [])
    XCTAssertEqual(dispatched(&machine, [read(5)]), [p3])
    self.clock.advance(to: .seconds(31))
    XCTAssertEqual(
      machine.timerFired(.failback(p1)),
      [
        log(p1, .standby, .active, "deferred failback"),
        log(p3, .active, .standby, "path1: deferred failback"),
      ])
    XCTAssertEqual(dispatched(&machine, [read(6)]), [p1])
  }

  func testReinstatedPathInTheServingGroupNeedsNoFailback() {
    var machine = makeMachine(.failover, failback: .manual, paths: [(p1, 1, 50), (p2, 1, 50)])
    _ = machine.pathFailed(p1, reason: down)
    // Probed by the caller before its probe timer fired: the timer is cancelled.
    XCTAssertEqual(
      machine.probeSucceeded(p1),
      [log(p1, .failed(down), .active, "probe succeeded"), .cancelTimer(.probe(p1))])
    XCTAssertEqual(dispatched(&machine, [read(1), read(2)]), [p1, p2])
  }

  // MARK: - Write ordering

  func testWritesAreFencedUntilPathFencedReadsRetriedAtOnce() {
    var machine = makeMachine(.queueLength, paths: [(p1, 1, 50), (p2, 1, 50)])
    XCTAssertEqual(dispatched(&machine, [write(1), read(2), read(3)]), [p1, p2, p1])

    XCTAssertEqual(
      machine.pathFailed(p1, reason: down),
      [
        log(p1, .active, .failed(down), "\(down)"),
        .fencePath(p1),
        .dispatch(read(3), p2),
        .scheduleProbe(p1, at: at(.seconds(1))),
      ])
    XCTAssertEqual(machine.status()[0].fencedWrites, 1)
    XCTAssertEqual(machine.status()[0].statistics.failovers, 2)
    XCTAssertEqual(machine.status()[0].statistics.outstandingIOs, 0)

    // A late answer to the read from the dead path is stale: the read now lives on p2.
    XCTAssertEqual(machine.completed(read(3), path: p1, latency: .milliseconds(1), success: true), [])
    XCTAssertEqual(machine.status()[0].statistics.ios, 0)

    // New writes go to the healthy path meanwhile; the fenced one waits.
    XCTAssertEqual(dispatched(&machine, [write(4)]), [p2])
    XCTAssertEqual(machine.pathFenced(p1), [.dispatch(write(1), p2)])
    XCTAssertEqual(machine.status()[0].fencedWrites, 0)
    XCTAssertEqual(machine.pathFenced(p1), [])
  }

  func testReconfigureSwitchesPolicyForTheNextIO() {
    var machine = makeMachine(.queueLength, paths: [(p1, 1, 50), (p2, 2, 50)])
    XCTAssertEqual(dispatched(&machine, [read(1), read(2)]), [p1, p2])
    var failover = machine.configuration
    failover.policy = .failover
    let actions = machine.reconfigure(failover)
    // p2's group is worse under failover: it stands by (its read stays in flight).
    XCTAssertTrue(actions.contains(log(p2, .active, .standby, "configuration reloaded")), "\(actions)")
    XCTAssertEqual(dispatched(&machine, [read(3), read(4)]), [p1, p1])
    XCTAssertEqual(machine.configuration.policy, .failover)
  }

  func testUpdatePathMovesIOToTheBetterPriority() {
    // ALUA: p2 turns out to be active/optimized (priority 50), p1 non-optimized (10).
    var machine = makeMachine(.queueLength, paths: [(p1, 1, 10), (p2, 2, 10)])
    XCTAssertEqual(dispatched(&machine, [read(1), read(2)]), [p1, p2])
    let actions = machine.updatePath(p2, group: 2, priority: 50)
    XCTAssertTrue(actions.contains(log(p1, .active, .standby, "\(p2): group 2, priority 50")), "\(actions)")
    XCTAssertEqual(dispatched(&machine, [read(3), read(4)]), [p2, p2])
    XCTAssertEqual(machine.updatePath(p2, group: 2, priority: 50), [])
  }

  func testFencedWritesThatCannotBeFencedFailInsteadOfBeingResent() {
    var machine = makeMachine(.queueLength, paths: [(p1, 1, 50), (p2, 1, 50)])
    XCTAssertEqual(dispatched(&machine, [write(1), write(2)]), [p1, p2])
    _ = machine.pathFailed(p1, reason: down)
    XCTAssertEqual(machine.status()[0].fencedWrites, 1)
    XCTAssertEqual(machine.abandonFenced(p1), [.fail(write(1), .noPath)])
    XCTAssertEqual(machine.status()[0].fencedWrites, 0)
    // Nothing is left to re-send when the fence comes late.
    XCTAssertEqual(machine.pathFenced(p1), [])
    XCTAssertEqual(machine.abandonFenced(p1), [])
  }

  func testFencedWriteThatCompletesOnItsOldPathIsNotResent() {
    var machine = makeMachine(.queueLength, paths: [(p1, 1, 50), (p2, 1, 50)])
    XCTAssertEqual(dispatched(&machine, [write(1)]), [p1])
    XCTAssertEqual(
      machine.pathFailed(p1, reason: down),
      [log(p1, .active, .failed(down), "\(down)"), .fencePath(p1), .scheduleProbe(p1, at: at(.seconds(1)))])
    XCTAssertEqual(machine.completed(write(1), path: p1, latency: .milliseconds(3), success: true), [])
    XCTAssertEqual(machine.pathFenced(p1), [])
    XCTAssertEqual(machine.status()[0].statistics.ios, 1)
  }

  func testFencedWritesQueueWhenNoPathIsLeft() {
    var machine = makeMachine(.queueLength, paths: [(p1, 1, 50)])
    XCTAssertEqual(dispatched(&machine, [write(1)]), [p1])
    _ = machine.pathFailed(p1, reason: down)
    XCTAssertEqual(machine.pathFenced(p1), [.scheduleTimer(.noPathRetry, at(.seconds(60)))])
    XCTAssertEqual(machine.queuedIOs, 1)
  }

  // MARK: - No path

  func testNoPathQueuesThenFailsAfterNoPathRetry() {
    var machine = makeMachine(.serviceTime, paths: [(p1, 1, 50)])
    _ = machine.pathFailed(p1, reason: down)
    XCTAssertEqual(machine.submit(read(1)), [.scheduleTimer(.noPathRetry, at(.seconds(60)))])
    self.clock.advance(to: .seconds(10))
    XCTAssertEqual(machine.submit(write(2)), [])
    XCTAssertEqual(machine.queuedIOs, 2)

    self.clock.advance(to: .seconds(60))
    XCTAssertEqual(
      machine.timerFired(.noPathRetry),
      [.fail(read(1), .noPath), .scheduleTimer(.noPathRetry, at(.seconds(70)))])
    self.clock.advance(to: .seconds(70))
    XCTAssertEqual(machine.timerFired(.noPathRetry), [.fail(write(2), .noPath)])
    XCTAssertEqual(machine.queuedIOs, 0)
    XCTAssertEqual(machine.timerFired(.noPathRetry), [])
  }

  func testQueuedIOOfAClientThatLeftIsCancelledButIOOnAPathIsNot() {
    var machine = makeMachine(.serviceTime, random: [0], paths: [(p1, 1, 50)])
    XCTAssertEqual(machine.submit(read(9)), [.dispatch(read(9), p1)])
    XCTAssertNil(machine.cancelQueued(read(9)), "on a path: the target may have it; it runs to the end")
    _ = machine.pathFailed(p1, reason: down)
    XCTAssertEqual(machine.submit(read(1)), [])
    XCTAssertEqual(machine.submit(write(2)), [])
    XCTAssertEqual(machine.queuedIOs, 3, "read 9 was taken off the failed path and queued")
    XCTAssertNotNil(machine.cancelQueued(read(1)))
    XCTAssertNil(machine.cancelQueued(read(1)), "only once")
    XCTAssertEqual(machine.queuedIOs, 2)
    self.clock.advance(to: .seconds(60))
    XCTAssertEqual(machine.timerFired(.noPathRetry), [.fail(read(9), .noPath), .fail(write(2), .noPath)])
  }

  func testQueuedIODispatchedWhenAPathReturnsBeforeExpiry() {
    var machine = makeMachine(.serviceTime, random: [0], paths: [(p1, 1, 50)])
    _ = machine.pathFailed(p1, reason: down)
    XCTAssertEqual(machine.submit(read(1)), [.scheduleTimer(.noPathRetry, at(.seconds(60)))])
    XCTAssertEqual(machine.submit(write(2)), [])

    self.clock.advance(to: .seconds(1))
    XCTAssertEqual(
      machine.timerFired(.probe(p1)), [log(p1, .failed(down), .probing, "probe 1"), .startProbe(p1)])
    XCTAssertEqual(
      machine.probeSucceeded(p1),
      [
        log(p1, .probing, .active, "probe succeeded"),
        .dispatch(read(1), p1), .dispatch(write(2), p1),
        .cancelTimer(.noPathRetry),
      ])
    XCTAssertEqual(machine.queuedIOs, 0)
    self.clock.advance(to: .seconds(60))
    XCTAssertEqual(machine.timerFired(.noPathRetry), [])
  }

  func testZeroNoPathRetryFailsAtOnce() {
    var machine = Machine(configuration: .init(noPathRetry: .zero), clock: self.clock)
    XCTAssertEqual(machine.submit(read(1)), [.fail(read(1), .noPath)])
  }

  // MARK: - Probes

  func testProbeBackoffDoublesWithJitterUpToTheMaximum() {
    var machine = Machine(
      configuration: .init(
        probeBackoff: ProbeBackoff(initial: .seconds(1), maximum: .seconds(8), jitterPercent: 20)),
      clock: self.clock,
      random: ScriptedRandom(values: [0, 1_000_000, 300, 0, 1_600_000_001 + 7]))
    _ = machine.addPath(p1, group: 1, priority: 50)
    let refused = PathFailure(.probeFailed, context: "login refused")

    XCTAssertEqual(
      machine.pathFailed(p1, reason: down),
      [log(p1, .active, .failed(down), "\(down)"), .scheduleProbe(p1, at: at(.seconds(1)))])

    // delay(k) = min(8 s, 1 s × 2^k) + random % (delay × 20% + 1)
    let expected: [Duration] = [
      .seconds(1) + .seconds(2) + .milliseconds(1),  // 2 s + 1 ms of jitter
      .seconds(3) + .milliseconds(1) + .seconds(4) + .nanoseconds(300),  // 4 s + 300 ns
      .seconds(7) + .milliseconds(1) + .nanoseconds(300) + .seconds(8),  // capped, no jitter
      // capped; the draw wraps modulo 1.6e9 + 1 to 7 ns of jitter
      .seconds(15) + .milliseconds(1) + .nanoseconds(300) + .seconds(8) + .nanoseconds(7),
    ]
    var probeAt = Duration.seconds(1)
    for (step, next) in expected.enumerated() {
      self.clock.advance(to: probeAt)
      XCTAssertEqual(
        machine.timerFired(.probe(p1)),
        [log(p1, .failed(step == 0 ? down : refused), .probing, "probe \(step + 1)"), .startProbe(p1)])
      XCTAssertEqual(
        machine.probeFailed(p1, reason: refused),
        [log(p1, .probing, .failed(refused), "\(refused)"), .scheduleProbe(p1, at: at(next))],
        "after probe \(step + 1)")
      probeAt = next
    }
    // A probe timer firing before its deadline does nothing.
    XCTAssertEqual(machine.timerFired(.probe(p1)), [])
  }

  func testBackoffStepsWithoutJitter() {
    let backoff = ProbeBackoff(initial: .seconds(1), maximum: .seconds(60), jitterPercent: 0)
    XCTAssertEqual(
      (0..<9).map { backoff.delay(attempt: $0, random: 12345) },
      [1, 2, 4, 8, 16, 32, 60, 60, 60].map { Duration.seconds($0) })
  }

  // MARK: - Removal, disable

  func testRemovingAPathWithFencedWritesWaitsForTheFence() {
    var machine = makeMachine(.queueLength, paths: [(p1, 1, 50), (p2, 1, 50)])
    XCTAssertEqual(dispatched(&machine, [write(1)]), [p1])
    XCTAssertEqual(
      machine.removePath(p1),
      [log(p1, .active, .disabled, "removed"), .fencePath(p1)])
    XCTAssertEqual(machine.status().map(\.path), [p1, p2])
    XCTAssertEqual(
      machine.pathFenced(p1),
      [log(p1, .disabled, nil, "fenced; 1 write(s) re-sent"), .dispatch(write(1), p2)])
    XCTAssertEqual(machine.status().map(\.path), [p2])
  }

  func testDisabledPathIsNeitherSelectedNorProbed() {
    var machine = makeMachine(.roundRobin(iosPerTurn: 1), paths: [(p1, 1, 50), (p2, 1, 50)])
    XCTAssertEqual(machine.disablePath(p2), [log(p2, .active, .disabled, "disabled by administrator")])
    XCTAssertEqual(dispatched(&machine, [read(1), read(2)]), [p1, p1])
    XCTAssertEqual(machine.enablePath(p2), [log(p2, .disabled, .active, "enabled by administrator")])
    XCTAssertEqual(dispatched(&machine, [read(3)]), [p2])
  }

  // MARK: - Status

  func testStatusCountsAndLatency() {
    var machine = makeMachine(.queueLength, paths: [(p1, 1, 50)])
    XCTAssertEqual(dispatched(&machine, [read(1, 512), write(2, 8192), read(3)]), [p1, p1, p1])
    _ = machine.completed(read(1, 512), path: p1, latency: .milliseconds(1), success: true)
    _ = machine.completed(write(2, 8192), path: p1, latency: .milliseconds(9), success: true)
    let row = machine.status()[0]
    XCTAssertEqual(row.state, .active)
    XCTAssertEqual(row.statistics.outstandingIOs, 1)
    XCTAssertEqual(row.statistics.outstandingBytes, 4096)
    XCTAssertEqual(row.statistics.ios, 2)
    XCTAssertEqual(row.statistics.bytes, 8704)
    XCTAssertEqual(row.statistics.ewmaLatency, .milliseconds(2))  // 1 ms + (9 − 1) / 8
    _ = machine.completed(read(3), path: p1, latency: .seconds(5), success: false)
    XCTAssertEqual(machine.status()[0].statistics.errors, 1)
    XCTAssertEqual(machine.status()[0].statistics.ewmaLatency, .milliseconds(2))
  }

  func testHistogramQuantiles() {
    var histogram = LatencyHistogram()
    XCTAssertNil(histogram.quantile(0.5))
    for _ in 0..<98 { histogram.record(.microseconds(80)) }
    histogram.record(.milliseconds(30))
    histogram.record(.milliseconds(30))
    XCTAssertEqual(histogram.quantile(0.50), .microseconds(100))
    XCTAssertEqual(histogram.quantile(0.99), .milliseconds(30))  // bucket ≤ 50 ms, capped at the max seen
    histogram.record(.seconds(10))
    XCTAssertEqual(histogram.quantile(1.0), .seconds(10))
  }
}
