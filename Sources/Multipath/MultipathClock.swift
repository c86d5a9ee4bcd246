// The scheduler never reads a clock itself: the caller injects one, and tests inject a
// mock they advance by hand (the model is postgres-nio's pool state machine).

/// The little the scheduler needs from a clock: "now", and instants it can add durations to.
public protocol MultipathClock {
  associatedtype Instant: InstantProtocol where Instant.Duration == Swift.Duration
  var now: Instant { get }
}

extension ContinuousClock: MultipathClock {}

extension Duration {
  /// Whole nanoseconds, saturating.
  var nanoseconds: Int64 {
    let (seconds, attoseconds) = self.components
    let (ns, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
    if overflow { return seconds < 0 ? .min : .max }
    return ns &+ attoseconds / 1_000_000_000
  }
}
