import NIOCore
import XCTest

@testable import Bridge

/// A dead path's log lines, event -> level, with a mock clock (milliseconds).
final class DeadPathLogTests: XCTestCase {
  let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
  func at(_ ms: Int64) -> NIODeadline { t0 + .milliseconds(ms) }

  func testTheFailureOnceThenRemindersEveryTwentyProbesThenTheReturn() {
    var log = DeadPathLog()
    XCTAssertEqual(log.failed(now: at(0)), .notice)
    var lines: [String] = []
    for i in 1...45 {
      let (level, reminder) = log.probeFailed(now: at(Int64(i) * 1000))
      if level != .debug { lines.append("probe \(i): \(level) reminder=\(reminder)") }
    }
    XCTAssertEqual(lines, ["probe 20: info reminder=true", "probe 40: info reminder=true"])
    XCTAssertEqual(log.failedProbes, 45)
    XCTAssertEqual(log.recovered(now: at(46_000)), .seconds(46))
    XCTAssertNil(log.downSince)
    XCTAssertNil(log.recovered(now: at(47_000)), "up already: nothing to say how long")
  }

  func testSlowProbesRemindEveryFiveMinutes() {
    var log = DeadPathLog()
    _ = log.failed(now: at(0))
    // Probes 16 s apart (the backoff's cap): a reminder once 5 min have passed.
    var reminders: [Int64] = []
    for i in 1...40 {
      let now = Int64(i) * 16_000
      if log.probeFailed(now: at(now)).reminder { reminders.append(now / 1000) }
    }
    XCTAssertEqual(reminders, [304, 608])
  }
}
