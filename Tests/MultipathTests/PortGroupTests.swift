import XCTest

@testable import Multipath

/// ALUA decisions as event -> actions, with a mock clock: a refusal or a unit attention
/// leads to a re-read of the port groups, the re-read regroups the paths, and the I/O the
/// target refused is placed again where its group allows it (or waits).
final class PortGroupTests: XCTestCase {
  var clock: MockClock!

  override func setUp() {
    self.clock = MockClock()
  }

  /// p1 in port group 1, p2 in port group 2; group 1 active/optimized, group 2 standby
  /// unless told otherwise.
  func makeMachine(
    failback: FailbackPolicy = .immediate, mode: ALUAMode = .implicit, noPathRetry: Duration = .seconds(60),
    p1Access: PortAccess = .activeOptimized, p2Access: PortAccess = .standby
  ) -> Machine {
    var machine = Machine(
      configuration: MultipathConfiguration(
        policy: .failover, failback: failback, noPathRetry: noPathRetry, portGroupCheckInterval: .seconds(10)),
      clock: self.clock, random: ScriptedRandom(values: []))
    machine.setALUAMode(mode)
    _ = machine.addPath(p1, group: 0, priority: 0, portGroup: 1, access: p1Access)
    _ = machine.addPath(p2, group: 0, priority: 0, portGroup: 2, access: p2Access)
    return machine
  }

  func report(_ g1: PortAccess, _ g2: PortAccess, transition: Duration? = nil) -> PortGroupReport {
    PortGroupReport(groups: [1: .init(access: g1), 2: .init(access: g2)], transitionTimeout: transition)
  }

  func states(_ machine: Machine) -> [String] { machine.status().map(\.state.name) }

  func testAStandbyPathIsLoggedInShownAsStandbyNeverFailedAndCarriesNoIO() {
    var machine = makeMachine()
    XCTAssertEqual(states(machine), ["active", "standby"])
    XCTAssertEqual(machine.status().map(\.priority), [50, 1])
    XCTAssertEqual(machine.status().map(\.access), [.activeOptimized, .standby])
    XCTAssertEqual(machine.submit(read(1)), [.dispatch(read(1), p1)])
    // With group 1 unavailable the standby path still takes nothing: I/O waits.
    var m2 = makeMachine(p1Access: .unavailable)
    XCTAssertEqual(states(m2), ["unavailable", "standby"])
    XCTAssertEqual(m2.submit(read(1)), [.scheduleTimer(.noPathRetry, at(.seconds(60)))])
  }

  func testThePortGroupsAreReReadEveryIntervalThroughAPathThatCarriesIO() {
    var machine = Machine(
      configuration: MultipathConfiguration(policy: .failover, portGroupCheckInterval: .seconds(10)),
      clock: self.clock)
    machine.setALUAMode(.implicit)
    XCTAssertEqual(
      machine.addPath(p2, group: 0, priority: 0, portGroup: 2, access: .standby),
      [
        log(p2, nil, .standby, "added (port group 2, standby)"),
        .scheduleTimer(.portGroupCheck, at(.seconds(10))),
      ])
    XCTAssertEqual(
      machine.addPath(p1, group: 0, priority: 0, portGroup: 1, access: .activeOptimized),
      [log(p1, nil, .active, "added (port group 1, active/optimized)")])
    clock.advance(to: .seconds(10))
    XCTAssertEqual(machine.timerFired(.portGroupCheck), [.readPortGroups(via: p1)])
    // Nothing changed: the next check in another interval.
    XCTAssertEqual(
      machine.portGroupsRead(report(.activeOptimized, .standby), via: p1),
      [.scheduleTimer(.portGroupCheck, at(.seconds(20)))])
    // A timer that fires early (a stale one) does nothing.
    clock.advance(to: .seconds(15))
    XCTAssertEqual(machine.timerFired(.portGroupCheck), [])
  }

  func testARefusedWriteRegroupsItsPortGoesToTheOtherGroupAndTriggersARead() {
    var machine = makeMachine(p2Access: .activeNonOptimized)
    XCTAssertEqual(machine.submit(write(1)), [.dispatch(write(1), p1)])
    // The target moved group 1 to standby and group 2 to optimized; the write comes back
    // NOT READY 04/0B: no fence (the target did not carry it out), no path failure.
    XCTAssertEqual(
      machine.rejected(write(1), path: p1, access: .standby),
      [
        log(p1, .active, .standby, "write#1(4096B) refused: port group 1 standby; placed again"),
        log(p2, .standby, .active, "path1: write#1(4096B) refused: port group 1 standby; placed again"),
        .dispatch(write(1), p2),
        .cancelTimer(.portGroupCheck),
        .readPortGroups(via: p2),
      ])
    XCTAssertEqual(machine.status().map(\.statistics.failovers), [0, 0])
    // The read confirms and regroups; group 2 is now optimized (priority 50).
    XCTAssertEqual(
      machine.portGroupsRead(report(.standby, .activeOptimized), via: p2),
      [.scheduleTimer(.portGroupCheck, at(.seconds(10)))])
    XCTAssertEqual(machine.status().map(\.priority), [1, 50])
    XCTAssertEqual(states(machine), ["standby", "active"])
  }

  func testAUnitAttentionAsksForOneReadAndAnotherAskedMeanwhileFollowsIt() {
    var machine = makeMachine()
    XCTAssertEqual(machine.accessMayHaveChanged(), [.cancelTimer(.portGroupCheck), .readPortGroups(via: p1)])
    XCTAssertEqual(machine.accessMayHaveChanged(), [], "one read at a time")
    // The first read answers: the second one starts at once (it may see newer states).
    let actions = machine.portGroupsRead(report(.standby, .activeOptimized), via: p1)
    XCTAssertEqual(
      actions,
      [
        log(p1, .active, .standby, "port groups re-read: port group 1 standby; port group 2 active/optimized"),
        log(p2, .standby, .active, "port groups re-read: port group 1 standby; port group 2 active/optimized"),
        .readPortGroups(via: p2),
      ])
    // A read that fails keeps the states and waits for the next check.
    XCTAssertEqual(machine.portGroupsReadFailed(via: p2), [.scheduleTimer(.portGroupCheck, at(.seconds(10)))])
    XCTAssertEqual(states(machine), ["standby", "active"])
  }

  func testBothGroupsStandbyQueuesIOWithinNoPathRetryAndReleasesItWhenOneReturns() {
    var machine = makeMachine(noPathRetry: .seconds(30))
    _ = machine.submit(read(1))
    XCTAssertEqual(
      machine.rejected(read(1), path: p1, access: .standby),
      [
        log(p1, .active, .standby, "read#1(4096B) refused: port group 1 standby; placed again"),
        .scheduleTimer(.noPathRetry, at(.seconds(30))),
        .cancelTimer(.portGroupCheck),
        .readPortGroups(via: p1),
      ])
    XCTAssertEqual(machine.queuedIOs, 1)
    // I/O waits and no group serves: read every second (a group back from standby is
    // announced to no one).
    XCTAssertEqual(
      machine.portGroupsRead(report(.standby, .standby), via: p1), [.scheduleTimer(.portGroupCheck, at(.seconds(1)))])
    clock.advance(to: .seconds(1))
    XCTAssertEqual(machine.timerFired(.portGroupCheck), [.readPortGroups(via: p1)])
    XCTAssertEqual(
      machine.portGroupsRead(report(.activeOptimized, .standby), via: p1),
      [
        log(p1, .standby, .active, "port groups re-read: port group 1 active/optimized"),
        .scheduleTimer(.portGroupCheck, at(.seconds(11))),
        .dispatch(read(1), p1),
        .cancelTimer(.noPathRetry),
      ])
  }

  func testATargetThatKeepsRefusingWhileItReportsTheGroupOptimizedEndsTheIOAtNoPathRetry() {
    // A broken target: REPORT TARGET PORT GROUPS says group 1 is optimized, every command
    // on it comes back NOT READY 04/0B. The I/O goes back and forth between the refusal
    // and the re-read, but its no-path-retry runs from the first refusal and is never
    // restarted, so it ends with an error instead of ping-ponging forever.
    var machine = makeMachine(noPathRetry: .seconds(30))
    _ = machine.submit(read(1))
    XCTAssertEqual(
      machine.rejected(read(1), path: p1, access: .standby),
      [
        log(p1, .active, .standby, "read#1(4096B) refused: port group 1 standby; placed again"),
        .scheduleTimer(.noPathRetry, at(.seconds(30))),
        .cancelTimer(.portGroupCheck),
        .readPortGroups(via: p1),
      ])
    clock.advance(to: .seconds(20))
    XCTAssertEqual(
      machine.portGroupsRead(report(.activeOptimized, .standby), via: p1),
      [
        log(p1, .standby, .active, "port groups re-read: port group 1 active/optimized"),
        .scheduleTimer(.portGroupCheck, at(.seconds(30))),
        .dispatch(read(1), p1),
        .cancelTimer(.noPathRetry),
      ])
    // Refused again 20 s after the first time: it waits again, for the 10 s that are left.
    XCTAssertEqual(
      machine.rejected(read(1), path: p1, access: .standby),
      [
        log(p1, .active, .standby, "read#1(4096B) refused: port group 1 standby; placed again"),
        .scheduleTimer(.noPathRetry, at(.seconds(30))),
        .cancelTimer(.portGroupCheck),
        .readPortGroups(via: p1),
      ])
    clock.advance(to: .seconds(29))
    _ = machine.portGroupsRead(report(.activeOptimized, .standby), via: p1)
    XCTAssertEqual(machine.status().map(\.statistics.outstandingIOs), [1, 0])
    // The third refusal comes after 30 s: the I/O fails (EIO to the client), the path stays.
    clock.advance(to: .seconds(31))
    XCTAssertEqual(
      machine.rejected(read(1), path: p1, access: .standby),
      [
        log(p1, .active, .standby, "read#1(4096B) refused by the target on every try for 30 s"),
        .fail(read(1), .refused),
        .cancelTimer(.portGroupCheck),
        .readPortGroups(via: p1),
      ])
    XCTAssertEqual(machine.queuedIOs, 0)
    XCTAssertEqual(states(machine), ["standby", "standby"])
  }

  func testATransitionIsWaitedOutReadEverySecondAndBoundedByTheTargetsTransitionTime() {
    var machine = makeMachine(p2Access: .standby)
    _ = machine.submit(read(1))
    XCTAssertEqual(
      machine.rejected(read(1), path: p1, access: .transitioning),
      [
        log(p1, .active, .transitioning, "read#1(4096B) refused: port group 1 transitioning; placed again"),
        .scheduleTimer(.noPathRetry, at(.seconds(60))),
        .cancelTimer(.portGroupCheck),
        .readPortGroups(via: p1),
      ])
    // The target allows 5 s for a transition; reads come every second meanwhile.
    XCTAssertEqual(
      machine.portGroupsRead(report(.transitioning, .standby, transition: .seconds(5)), via: p1),
      [.scheduleTimer(.portGroupCheck, at(.seconds(1)))])
    clock.advance(to: .seconds(1))
    XCTAssertEqual(machine.timerFired(.portGroupCheck), [.readPortGroups(via: p1)])
    XCTAssertEqual(
      machine.portGroupsRead(report(.activeOptimized, .standby), via: p1),
      [
        log(p1, .transitioning, .active, "port groups re-read: port group 1 active/optimized"),
        .scheduleTimer(.portGroupCheck, at(.seconds(11))),
        .dispatch(read(1), p1),
        .cancelTimer(.noPathRetry),
      ])
    // A transition that outlasts the target's time: the group counts as unavailable.
    _ = machine.accessMayHaveChanged()
    _ = machine.portGroupsRead(report(.transitioning, .standby), via: p1)
    clock.advance(to: .seconds(7))
    _ = machine.timerFired(.portGroupCheck)
    XCTAssertEqual(
      machine.portGroupsRead(report(.transitioning, .standby), via: p1),
      [
        log(
          p1, .transitioning, .unavailable,
          "port groups re-read: port group 1 still transitioning after 5 s: unavailable; port group 1 transitioning"),
        .scheduleTimer(.portGroupCheck, at(.seconds(17))),
      ])
  }

  func testExplicitALUAActivatesAStandbyGroupWhenNothingServesImplicitNever() {
    var machine = makeMachine(mode: .explicit)
    _ = machine.submit(read(1))
    _ = machine.rejected(read(1), path: p1, access: .standby)
    XCTAssertEqual(
      machine.portGroupsRead(report(.standby, .standby), via: p1),
      [.activatePortGroup(1, via: p1), .scheduleTimer(.portGroupCheck, at(.seconds(1)))])
    XCTAssertEqual(
      machine.portGroupActivated(via: p1, success: true), [.cancelTimer(.portGroupCheck), .readPortGroups(via: p1)])
    XCTAssertEqual(
      machine.portGroupsRead(report(.activeOptimized, .standby), via: p1),
      [
        log(p1, .standby, .active, "port groups re-read: port group 1 active/optimized"),
        .scheduleTimer(.portGroupCheck, at(.seconds(10))),
        .dispatch(read(1), p1),
        .cancelTimer(.noPathRetry),
      ])
    var implicit = makeMachine(mode: .implicit)
    _ = implicit.submit(read(1))
    _ = implicit.rejected(read(1), path: p1, access: .standby)
    XCTAssertFalse(
      implicit.portGroupsRead(report(.standby, .standby), via: p1).contains {
        if case .activatePortGroup = $0 { return true } else { return false }
      })
  }

  func testAGroupThatBecomesOptimizedAgainFollowsTheFailbackPolicy() {
    var machine = makeMachine(failback: .manual, p2Access: .activeNonOptimized)
    // Group 1 goes to standby: group 2 serves at once (nothing better serves).
    _ = machine.accessMayHaveChanged()
    _ = machine.portGroupsRead(report(.standby, .activeNonOptimized), via: p1)
    XCTAssertEqual(states(machine), ["standby", "active"])
    // Group 1 optimized again: with manual failback it waits for `failback`.
    _ = machine.accessMayHaveChanged()
    _ = machine.portGroupsRead(report(.activeOptimized, .activeNonOptimized), via: p2)
    XCTAssertEqual(states(machine), ["standby", "active"])
    XCTAssertEqual(machine.submit(read(1)), [.dispatch(read(1), p2)])
    _ = machine.failback()
    XCTAssertEqual(states(machine), ["active", "standby"])
    XCTAssertEqual(machine.submit(read(2)), [.dispatch(read(2), p1)])
  }

  func testAccessStatesBecomePriorities() {
    let optimized = PortAccess.activeOptimized.priority(preferred: false)
    XCTAssertGreaterThan(PortAccess.activeOptimized.priority(preferred: true), optimized)
    XCTAssertGreaterThan(optimized, PortAccess.activeNonOptimized.priority(preferred: true))
    XCTAssertGreaterThan(PortAccess.activeNonOptimized.priority(preferred: false), PortAccess.standby.priority(preferred: true))
    XCTAssertEqual(
      [PortAccess.activeOptimized, .activeNonOptimized, .logicalBlockDependent, .standby, .unavailable, .offline, .transitioning]
        .map(\.allowsIO),
      [true, true, true, false, false, false, false], "only the active states carry READ and WRITE")
  }

  func testAccessStatesFromCodes() {
    XCTAssertEqual(PortAccess(code: 0x0F), .transitioning)
    XCTAssertNil(PortAccess(code: 0x05))
    XCTAssertEqual(ALUAMode(tpgs: 2), .explicit)
    XCTAssertNil(ALUAMode(tpgs: 0))
  }
}
