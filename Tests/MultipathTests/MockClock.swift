import Multipath

/// A clock that only moves when the test says so.
final class MockClock: MultipathClock {
  struct Instant: InstantProtocol, CustomStringConvertible {
    typealias Duration = Swift.Duration
    var offset: Duration

    func advanced(by duration: Duration) -> Instant { Instant(offset: self.offset + duration) }
    func duration(to other: Instant) -> Duration { other.offset - self.offset }
    static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
    var description: String { "t+\(self.offset)" }
  }

  var now = Instant(offset: .zero)

  func advance(to offset: Duration) {
    precondition(offset >= self.now.offset, "time only moves forward")
    self.now = Instant(offset: offset)
  }

  static func at(_ offset: Duration) -> Instant { Instant(offset: offset) }
}

/// Returns the given numbers in turn, then zeros.
struct ScriptedRandom: RandomNumberGenerator {
  var values: [UInt64]
  mutating func next() -> UInt64 { self.values.isEmpty ? 0 : self.values.removeFirst() }
}
