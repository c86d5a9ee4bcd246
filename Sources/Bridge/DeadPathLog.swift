import Logging
import NIOCore

/// How a path that stays down is logged: its failure once at notice; each probe that
/// fails again at debug, with a reminder at info every `reminderEvery` failed probes or
/// `reminderInterval`, whichever comes first; its return at notice, saying how long it
/// was down. Pure: time comes with each event.
struct DeadPathLog {
  static let reminderEvery = 20
  static let reminderInterval = TimeAmount.minutes(5)

  /// When the path went down (nil: it is up).
  private(set) var downSince: NIODeadline?
  /// Probes that failed since it went down.
  private(set) var failedProbes = 0
  private var lastReminder: NIODeadline?
  private var probesSinceReminder = 0

  /// The path went down (from serving or standing by): logged at notice.
  mutating func failed(now: NIODeadline) -> Logger.Level {
    downSince = now
    lastReminder = now
    failedProbes = 0
    probesSinceReminder = 0
    return .notice
  }

  /// A probe of the down path failed again. The level of its line, and whether it is a
  /// reminder (info, saying for how long and after how many probes).
  mutating func probeFailed(now: NIODeadline) -> (level: Logger.Level, reminder: Bool) {
    failedProbes += 1
    probesSinceReminder += 1
    if probesSinceReminder >= Self.reminderEvery || now - (lastReminder ?? now) >= Self.reminderInterval {
      lastReminder = now
      probesSinceReminder = 0
      return (.info, true)
    }
    return (.debug, false)
  }

  /// The path works again: logged at notice; how long it was down, if it was.
  mutating func recovered(now: NIODeadline) -> TimeAmount? {
    defer {
      downSince = nil
      lastReminder = nil
      failedProbes = 0
      probesSinceReminder = 0
    }
    return downSince.map { now - $0 }
  }
}
