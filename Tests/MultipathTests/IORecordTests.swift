import XCTest

@testable import Multipath

/// The scheduler holds the one record of each I/O (its token, where it is, and the
/// caller's payload) from submit to its end; these check that the payload goes where the
/// I/O goes and leaves the machine exactly once.
final class IORecordTests: XCTestCase {
  typealias Records = MultipathStateMachine<MockClock, String>

  var clock = MockClock()

  func makeMachine(noPathRetry: Duration = .seconds(60)) -> Records {
    var machine = Records(
      configuration: MultipathConfiguration(policy: .failover, failback: .immediate, noPathRetry: noPathRetry),
      clock: clock, random: ScriptedRandom(values: [0, 0, 0, 0]))
    _ = machine.addPath(p1, group: 0, priority: 50)
    _ = machine.addPath(p2, group: 1, priority: 10)
    return machine
  }

  func testCompletionHandsBackThePayloadOnceAndStaleCompletionsNothing() {
    var machine = makeMachine()
    XCTAssertEqual(machine.submitToPath(read(1), "read one"), p1)
    XCTAssertEqual(machine[io: 1]?.payload, "read one")
    machine.updatePayload(of: 1) { $0 += " (sent)" }
    var actions: [Records.Action] = []
    XCTAssertNil(
      machine.completed(read(1), path: p2, latency: .milliseconds(1), success: true, into: &actions),
      "not on p2: stale")
    let entry = machine.completed(read(1), path: p1, latency: .milliseconds(1), success: true, into: &actions)
    XCTAssertEqual(entry?.payload, "read one (sent)")
    XCTAssertEqual(entry?.token, read(1))
    XCTAssertNil(machine[io: 1], "the record has left the machine")
    XCTAssertNil(machine.completed(read(1), path: p1, latency: .milliseconds(1), success: true, into: &actions))
    XCTAssertEqual(actions, [])
  }

  func testAReadFollowsItsPayloadToTheNextPathAndAFencedWriteKeepsIts() {
    var machine = makeMachine()
    XCTAssertEqual(machine.submitToPath(read(1), "r1"), p1)
    XCTAssertEqual(machine.submitToPath(write(2), "w2"), p1)
    let actions = machine.pathFailed(p1, reason: down)
    XCTAssertTrue(actions.contains(.fencePath(p1)))
    XCTAssertTrue(actions.contains(.dispatch(read(1), p2)))
    XCTAssertEqual(machine[io: 1]?.payload, "r1")
    XCTAssertEqual(machine[io: 2]?.payload, "w2")
    XCTAssertEqual(machine.status().first { $0.path == p1 }?.fencedWrites, 1)
    // The fenced write completes on its old path before the fence: done, not re-sent.
    var more: [Records.Action] = []
    XCTAssertEqual(
      machine.completed(write(2), path: p1, latency: .milliseconds(1), success: true, into: &more)?.payload, "w2")
    XCTAssertEqual(machine.status().first { $0.path == p1 }?.fencedWrites, 0)
    XCTAssertEqual(machine.pathFenced(p1), [])
    XCTAssertEqual(machine.completed(read(1), path: p2, latency: .milliseconds(1), success: true, into: &more)?.payload, "r1")
    XCTAssertEqual(Array(machine.payloads).count, 0)
  }

  func testAWriteTheTargetRefusedGoesElsewhereAtOnceWithoutAFence() {
    var machine = makeMachine()
    XCTAssertEqual(machine.submitToPath(write(1), "w1"), p1)
    XCTAssertEqual(machine.submitToPath(write(2), "w2"), p1)
    // p1's port went standby: w1 came back refused. The path stops (both writes fenced),
    // then w1, which the target did not carry out, is placed again: on p2, now.
    XCTAssertTrue(machine.pathFailed(p1, reason: PathFailure(.targetReported)).contains(.fencePath(p1)))
    XCTAssertEqual(machine.status().first { $0.path == p1 }?.fencedWrites, 2)
    let actions = machine.rejected(write(1), path: p1)
    XCTAssertTrue(actions.contains(.dispatch(write(1), p2)), "\(actions)")
    XCTAssertEqual(machine.status().first { $0.path == p1 }?.fencedWrites, 1, "w2 still waits: it may yet land")
    XCTAssertEqual(machine[io: 1]?.payload, "w1")
    XCTAssertEqual(machine.rejected(write(1), path: p1), [], "now on p2: a second refusal from p1 is stale")
    XCTAssertEqual(
      machine.rejected(write(2), path: p1).filter { if case .dispatch = $0 { true } else { false } }, [.dispatch(write(2), p2)])
    XCTAssertEqual(machine.pathFenced(p1), [], "nothing left to fence")
  }

  func testAFailedIOIsTakenOnceWithItsPayload() {
    var machine = makeMachine(noPathRetry: .zero)
    _ = machine.pathFailed(p1, reason: down)
    _ = machine.pathFailed(p2, reason: down)
    XCTAssertEqual(machine.submitToPath(write(3), "w3"), nil)
    XCTAssertEqual(machine.submit(write(3), "w3"), [.fail(write(3), .noPath)])
    XCTAssertNil(machine.cancelQueued(write(3)), "failed, not queued")
    XCTAssertEqual(machine.take(write(3))?.payload, "w3")
    XCTAssertNil(machine.take(write(3)), "only once")
    XCTAssertNil(machine[io: 3])
  }

  func testCancelledQueuedIOLeavesWithItsPayloadAndTheRestStays() {
    var machine = makeMachine()
    _ = machine.pathFailed(p1, reason: down)
    _ = machine.pathFailed(p2, reason: down)
    _ = machine.submit(read(4), "client A")
    _ = machine.submit(read(5), "client B")
    XCTAssertEqual(Set(machine.payloads.map(\.1)), ["client A", "client B"])
    XCTAssertEqual(machine.cancelQueued(read(4))?.payload, "client A")
    XCTAssertEqual(machine.queuedIOs, 1)
    XCTAssertEqual(machine.probeSucceeded(p2).filter { if case .dispatch = $0 { true } else { false } }, [.dispatch(read(5), p2)])
    XCTAssertEqual(machine[io: 5]?.payload, "client B")
  }
}
