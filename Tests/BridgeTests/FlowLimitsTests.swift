import XCTest

@testable import Bridge

/// The admission rule of NBD requests (FlowLimits) and the rate limit of log lines about
/// bad clients, as event -> decision lines.
final class FlowLimitsTests: XCTestCase {
  let limits = FlowLimits(maxRequestsPerConnection: 4, maxBytesPerConnection: 64 << 20, maxBytesInFlight: 96 << 20)
  let mib = 1 << 20

  func testAConnectionIsHeldToItsRequestAndByteBounds() {
    XCTAssertTrue(limits.admits(bytes: 32 * mib, connectionRequests: 0, connectionBytes: 0, volumeBytes: 0))
    XCTAssertTrue(limits.admits(bytes: 32 * mib, connectionRequests: 1, connectionBytes: 32 * mib, volumeBytes: 32 * mib))
    XCTAssertFalse(
      limits.admits(bytes: 32 * mib, connectionRequests: 2, connectionBytes: 64 * mib, volumeBytes: 64 * mib),
      "a third 32 MiB read of a client that does not read its replies waits")
    XCTAssertFalse(
      limits.admits(bytes: 0, connectionRequests: 4, connectionBytes: 0, volumeBytes: 0), "request bound (flushes)")
    XCTAssertTrue(limits.admits(bytes: 4096, connectionRequests: 3, connectionBytes: 12288, volumeBytes: 12288))
  }

  func testTheVolumeBoundHoldsBackBigRequestsButNotAnIdleClientsSmallOnes() {
    // Another client holds 96 MiB of the volume.
    XCTAssertTrue(
      limits.admits(bytes: 4096, connectionRequests: 0, connectionBytes: 0, volumeBytes: 96 * mib),
      "an idle connection's small read always starts")
    XCTAssertFalse(
      limits.admits(bytes: 4096, connectionRequests: 1, connectionBytes: 4096, volumeBytes: 96 * mib),
      "but only one at a time while the volume is at its bound")
    XCTAssertFalse(
      limits.admits(bytes: 32 * mib, connectionRequests: 0, connectionBytes: 0, volumeBytes: 80 * mib),
      "a big request waits for room in the volume")
    XCTAssertTrue(
      limits.admits(bytes: 32 * mib, connectionRequests: 0, connectionBytes: 0, volumeBytes: 0),
      "a request larger than what is free always starts on an idle volume")
  }

  func testLogLinesAboutBadClientsAreRateLimitedAndTheGapIsCounted() {
    var limiter = LogRateLimiter(burst: 3, window: 10)
    XCTAssertEqual(limiter.allow(now: 0).allowed, true)
    XCTAssertEqual(limiter.allow(now: 1).allowed, true)
    XCTAssertEqual(limiter.allow(now: 2).allowed, true)
    XCTAssertEqual(limiter.allow(now: 3).allowed, false)
    XCTAssertEqual(limiter.allow(now: 9).allowed, false)
    let next = limiter.allow(now: 10)
    XCTAssertTrue(next.allowed, "a new window")
    XCTAssertEqual(next.suppressed, 2, "the held-back lines are counted in the next one")
    XCTAssertEqual(limiter.allow(now: 11).suppressed, 0)
  }

  func testBudgetWakesWaitersOnceOnRelease() {
    let budget = IOBudget(maxBytes: 100)
    var woken: [Int] = []
    budget.take(60)
    budget.wait(1) { woken.append(1) }
    budget.wait(2) { woken.append(2) }
    budget.forget(2)
    budget.release(50)
    XCTAssertEqual(woken, [1])
    XCTAssertEqual(budget.bytes, 10)
    budget.release(10)
    XCTAssertEqual(woken, [1], "a waiter is woken once; it waits again if there is still no room")
    XCTAssertNotEqual(budget.newConnectionID(), 0)
  }
}
