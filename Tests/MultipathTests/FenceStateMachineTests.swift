import XCTest

@testable import Multipath

/// The fence of a failed path as `event -> actions` lines with a mock clock, and the
/// scheduler and the fence together: no write is re-sent before its fence ends, and a
/// fence that cannot end within no-path-retry fails the writes (EIO) instead.
final class FenceStateMachineTests: XCTestCase {
  typealias Fencer = FenceStateMachine<MockClock>
  var clock: MockClock!

  override func setUp() { clock = MockClock() }

  func helper(_ id: PathID, up: Bool = true, group: Int? = 1) -> Fencer.Helper {
    Fencer.Helper(id: id, loggedIn: up, portalGroup: group)
  }

  func testNoHelperRetriesEvery250msThenAbandonsAtTheBound() {
    var fencer = Fencer(clock: clock, bound: .seconds(1))
    XCTAssertTrue(fencer.begin(p1, portalGroup: 1, reinstatements: 0))
    XCTAssertFalse(fencer.begin(p1, portalGroup: 1, reinstatements: 0))  // already fencing
    let lonely = [helper(p1, up: false)]
    XCTAssertEqual(
      fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: lonely), [.retry(p1, at: at(.milliseconds(250)))])
    clock.advance(to: .milliseconds(250))
    XCTAssertEqual(
      fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: lonely), [.retry(p1, at: at(.milliseconds(500)))])
    clock.advance(to: .milliseconds(999))
    XCTAssertEqual(
      fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: lonely), [.retry(p1, at: at(.milliseconds(1249)))])
    clock.advance(to: .seconds(1))
    XCTAssertEqual(fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: lonely), [.abandon(p1)])
    XCTAssertFalse(fencer.isFencing(p1))
  }

  func testLoginThroughAHelperOfTheSamePortalGroup() {
    var fencer = Fencer(clock: clock, bound: .seconds(5))
    _ = fencer.begin(p1, portalGroup: 1, reinstatements: 0)
    // Not another group's path (the same ISID there makes a new session and leaves the old
    // one), nor one whose group is unknown.
    let helpers = [helper(p1, up: false), helper(p2, group: 2), helper(p4, group: nil), helper(p3, group: 1)]
    XCTAssertEqual(fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: helpers), [.login(p1, through: p3)])
    // While the login runs, a timer's attempt does nothing.
    XCTAssertEqual(fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: helpers), [])
    XCTAssertEqual(fencer.loginFinished(p1, success: false), [.retry(p1, at: at(.milliseconds(250)))])
    clock.advance(to: .milliseconds(250))
    XCTAssertEqual(fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: helpers), [.login(p1, through: p3)])
    XCTAssertEqual(fencer.loginFinished(p1, success: true), [.fenced(p1, how: "old session ended by a login through path3")])
    XCTAssertEqual(fencer.loginFinished(p1, success: true), [])  // once
  }

  func testTheSessionsOwnReinstatementEndsTheFence() {
    var fencer = Fencer(clock: clock, bound: .seconds(5))
    _ = fencer.begin(p1, portalGroup: nil, reinstatements: 3)
    XCTAssertEqual(fencer.attempt(p1, loggedIn: true, reinstatements: 4, helpers: []), [.fenced(p1, how: "session reinstated")])
    _ = fencer.begin(p2, portalGroup: nil, reinstatements: 0)
    XCTAssertEqual(
      fencer.reinstated(p2, reinstatements: 1, portalGroup: 1), [.fenced(p2, how: "session reinstated by its probe")])
    XCTAssertEqual(fencer.reinstated(p2, reinstatements: 1, portalGroup: 1), [])
    // A probe whose login went to another portal group made a new session there; the old
    // one, in group 1, may still hold writes.
    _ = fencer.begin(p3, portalGroup: 1, reinstatements: 0)
    XCTAssertEqual(fencer.reinstated(p3, reinstatements: 1, portalGroup: 2), [])
    XCTAssertTrue(fencer.isFencing(p3))
    XCTAssertEqual(fencer.portalGroup(of: p3), 1)
    // Nor does the fence's own check take that login for a reinstatement: it tries a
    // login through the path's portal (which must reach group 1 to count).
    XCTAssertEqual(
      fencer.attempt(p3, loggedIn: true, reinstatements: 1, helpers: [helper(p3, group: 2)]), [.login(p3, through: p3)])
    XCTAssertEqual(
      fencer.loginFinished(p3, success: true), [.fenced(p3, how: "old session ended by a login through its own portal")])
    // Logged in again within its group: that is the reinstatement.
    _ = fencer.begin(p4, portalGroup: 1, reinstatements: 0)
    XCTAssertEqual(
      fencer.attempt(p4, loggedIn: true, reinstatements: 1, helpers: [helper(p4, group: 1)]),
      [.fenced(p4, how: "session reinstated")])
  }

  /// The path was failed while its session stayed logged in (the target refused I/O on
  /// it, or its LU's identity changed): the target may still hold writes sent on it, so a
  /// probe that finds the session still there does not end the fence; a login with the
  /// session's ISID through its own portal does.
  func testASessionStillLoggedInIsEndedByALoginThroughItsOwnPortal() {
    var fencer = Fencer(clock: clock, bound: .seconds(5))
    _ = fencer.begin(p1, portalGroup: 1, reinstatements: 2)
    // The probe succeeded without logging in (same count): the fence goes on.
    XCTAssertEqual(fencer.reinstated(p1, reinstatements: 2, portalGroup: 1), [])
    XCTAssertTrue(fencer.isFencing(p1))
    // Its own portal first, even with a helper of the same group at hand.
    XCTAssertEqual(
      fencer.attempt(p1, loggedIn: true, reinstatements: 2, helpers: [helper(p1), helper(p2, group: 1)]),
      [.login(p1, through: p1)])
    XCTAssertEqual(fencer.loginFinished(p1, success: false), [.retry(p1, at: at(.milliseconds(250)))])
    // That failed: a helper of the same group next, then its own portal again.
    clock.advance(to: .milliseconds(250))
    XCTAssertEqual(
      fencer.attempt(p1, loggedIn: true, reinstatements: 2, helpers: [helper(p1), helper(p2, group: 1)]),
      [.login(p1, through: p2)])
    XCTAssertEqual(fencer.loginFinished(p1, success: false), [.retry(p1, at: at(.milliseconds(500)))])
    clock.advance(to: .milliseconds(500))
    XCTAssertEqual(fencer.attempt(p1, loggedIn: true, reinstatements: 2, helpers: []), [.login(p1, through: p1)])
    XCTAssertEqual(
      fencer.loginFinished(p1, success: true), [.fenced(p1, how: "old session ended by a login through its own portal")])
    XCTAssertFalse(fencer.isFencing(p1))
  }

  /// The scheduler and the fence together, as the volume runs them: a write in flight on a
  /// failed path is not re-sent until the fence ends; a fence that never ends fails it.
  func testNoWriteIsResentBeforeItsFenceAndAFenceDeadlineFailsIt() {
    var machine = Machine(
      configuration: MultipathConfiguration(policy: .roundRobin(iosPerTurn: 1), noPathRetry: .seconds(1)),
      clock: clock)
    _ = machine.addPath(p1, group: 0, priority: 0)
    _ = machine.addPath(p2, group: 0, priority: 0)
    XCTAssertEqual(machine.submit(write(1)), [.dispatch(write(1), p1)])
    XCTAssertEqual(machine.submit(write(2)), [.dispatch(write(2), p2)])
    var fencer = Fencer(clock: clock, bound: machine.configuration.noPathRetry)
    // Both paths fail; nothing can log in for p1.
    for p in [p1, p2] {
      let actions = machine.pathFailed(p, reason: down)
      XCTAssertTrue(actions.contains(.fencePath(p)), "\(actions)")
      XCTAssertFalse(actions.contains { if case .dispatch = $0 { return true } else { return false } }, "\(actions)")
      XCTAssertTrue(fencer.begin(p, portalGroup: nil, reinstatements: 0))
    }
    let noHelpers = [helper(p1, up: false), helper(p2, up: false)]
    XCTAssertEqual(
      fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: noHelpers), [.retry(p1, at: at(.milliseconds(250)))])
    // p2 comes back (its probe reinstated it): its own write may now go out, p1's not yet.
    _ = fencer.attempt(p2, loggedIn: false, reinstatements: 0, helpers: noHelpers)
    XCTAssertEqual(
      fencer.reinstated(p2, reinstatements: 1, portalGroup: nil), [.fenced(p2, how: "session reinstated by its probe")])
    _ = machine.probeSucceeded(p2)
    XCTAssertEqual(
      machine.pathFenced(p2).filter { if case .dispatch = $0 { return true } else { return false } }, [.dispatch(write(2), p2)])
    // p1's fence: p2 is a helper now, but its login fails every time until the bound.
    let helpers = [helper(p1, up: false), helper(p2)]
    clock.advance(to: .milliseconds(250))
    XCTAssertEqual(fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: helpers), [.login(p1, through: p2)])
    XCTAssertEqual(fencer.loginFinished(p1, success: false), [.retry(p1, at: at(.milliseconds(500)))])
    clock.advance(to: .seconds(1))
    XCTAssertEqual(fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: helpers), [.abandon(p1)])
    let failed = machine.abandonFenced(p1)
    XCTAssertTrue(failed.contains(.fail(write(1), .noPath)), "\(failed)")
    XCTAssertFalse(failed.contains { if case .dispatch = $0 { return true } else { return false } }, "\(failed)")
  }

  /// A reload takes away a path with writes in flight: they are fenced like a failure's
  /// and re-sent only after the fence; then the path is forgotten.
  func testReloadRemovesAPathWithWritesInFlight() {
    var machine = Machine(configuration: MultipathConfiguration(policy: .roundRobin(iosPerTurn: 1)), clock: clock)
    _ = machine.addPath(p1, group: 0, priority: 0)
    _ = machine.addPath(p2, group: 0, priority: 0)
    XCTAssertEqual(machine.submit(write(1)), [.dispatch(write(1), p1)])
    XCTAssertEqual(machine.submit(read(2)), [.dispatch(read(2), p2)])
    XCTAssertEqual(machine.submit(read(3)), [.dispatch(read(3), p1)])
    let removed = machine.removePath(p1)
    XCTAssertTrue(removed.contains(.fencePath(p1)), "\(removed)")
    XCTAssertTrue(removed.contains(.dispatch(read(3), p2)), "reads move at once: \(removed)")
    XCTAssertFalse(removed.contains(.dispatch(write(1), p2)), "a write moved before its fence: \(removed)")
    var fencer = Fencer(clock: clock, bound: machine.configuration.noPathRetry)
    _ = fencer.begin(p1, portalGroup: 1, reinstatements: 0)
    XCTAssertEqual(fencer.attempt(p1, loggedIn: false, reinstatements: 0, helpers: [helper(p2)]), [.login(p1, through: p2)])
    XCTAssertEqual(fencer.loginFinished(p1, success: true), [.fenced(p1, how: "old session ended by a login through path2")])
    XCTAssertTrue(machine.pathFenced(p1).contains(.dispatch(write(1), p2)))
    XCTAssertNil(machine.state(of: p1), "the removed path is forgotten once its writes are settled")
  }
}

/// The reload diff: which paths stay, go, or are new.
final class ReloadPlanTests: XCTestCase {
  func testPathsMatchByKeyAndOccurrence() {
    // Two sessions to portal A, one to B; the new list has one to A, one to C, then B.
    let running = [(p1, "iscsi://A/t/1"), (p2, "iscsi://A/t/1"), (p3, "iscsi://B/t/1")]
    let plan = ReloadPlan(running: running, wanted: ["iscsi://A/t/1", "iscsi://C/t/1", "iscsi://B/t/1"]) { $0 }
    XCTAssertEqual(plan.kept.map(\.path), [p1, p3])
    XCTAssertEqual(plan.kept.map(\.entry), ["iscsi://A/t/1", "iscsi://B/t/1"])
    XCTAssertEqual(plan.removed, [p2])  // the second session to A
    XCTAssertEqual(plan.added, ["iscsi://C/t/1"])
  }

  func testSameListChangesNothingAndAnEmptyListRemovesAll() {
    let running = [(p1, "x?iface=eth1"), (p2, "x?iface=eth2")]
    let same = ReloadPlan(running: running, wanted: ["x?iface=eth1", "x?iface=eth2"]) { $0 }
    XCTAssertEqual(same.kept.map(\.path), [p1, p2])
    XCTAssertTrue(same.removed.isEmpty && same.added.isEmpty)
    let none = ReloadPlan(running: running, wanted: [String]()) { $0 }
    XCTAssertEqual(none.removed, [p1, p2])
    // A path is told apart by its NIC: same URL, other ?iface= is a new path.
    let moved = ReloadPlan(running: running, wanted: ["x?iface=eth1", "x?iface=eth3"]) { $0 }
    XCTAssertEqual(moved.removed, [p2])
    XCTAssertEqual(moved.added, ["x?iface=eth3"])
  }
}
