// Per-path numbers: what is in flight, how fast it went, what went wrong.

/// Latency counts in fixed buckets, enough for p50/p99 in `lunbridge status` without
/// keeping samples. Bucket i counts latencies <= `upperBounds[i]`; the last one, the rest.
public struct LatencyHistogram: Hashable, Sendable {
  /// Upper bounds in nanoseconds: 50 µs … 2.5 s, roughly 1-2.5-5 per decade.
  public static let upperBounds: [Int64] = [
    50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000,
    100_000_000, 250_000_000, 500_000_000, 1_000_000_000, 2_500_000_000,
  ]

  public private(set) var counts: [UInt64] = Array(
    repeating: 0, count: LatencyHistogram.upperBounds.count + 1)
  public private(set) var total: UInt64 = 0
  public private(set) var maximum: Duration = .zero
  /// Sum of all samples (for Prometheus' `_sum`).
  public private(set) var sum: Duration = .zero

  public init() {}

  public mutating func record(_ latency: Duration) {
    let ns = latency.nanoseconds
    var index = Self.upperBounds.count
    for (i, bound) in Self.upperBounds.enumerated() where ns <= bound {
      index = i
      break
    }
    self.counts[index] += 1
    self.total += 1
    self.sum += latency
    if latency > self.maximum { self.maximum = latency }
  }

  /// The upper bound of the bucket holding the `fraction` quantile (never above the largest
  /// latency seen); nil with no samples.
  public func quantile(_ fraction: Double) -> Duration? {
    guard self.total > 0 else { return nil }
    let rank = max(UInt64((fraction * Double(self.total)).rounded(.up)), 1)
    var seen: UInt64 = 0
    for (i, count) in self.counts.enumerated() {
      seen += count
      if seen >= rank {
        guard i < Self.upperBounds.count else { return self.maximum }
        return min(.nanoseconds(Self.upperBounds[i]), self.maximum)
      }
    }
    return self.maximum
  }
}

public struct PathStatistics: Hashable, Sendable {
  /// I/Os dispatched on the path and not completed yet (fenced writes not included).
  public var outstandingIOs: Int = 0
  public var outstandingBytes: Int = 0
  /// Exponentially weighted moving average of completion latency, weight 1/8 per sample
  /// (as TCP's SRTT); nil before the first completion.
  public var ewmaLatency: Duration?
  /// I/Os completed on the path, successful or not.
  public var ios: UInt64 = 0
  /// Bytes of the I/Os completed successfully.
  public var bytes: UInt64 = 0
  /// I/Os completed with an error.
  public var errors: UInt64 = 0
  /// I/Os taken off this path because it failed (re-sent elsewhere, queued, or fenced).
  public var failovers: UInt64 = 0
  public var latency = LatencyHistogram()

  public init() {}

  mutating func recordLatency(_ sample: Duration) {
    let ns = sample.nanoseconds
    if let current = self.ewmaLatency?.nanoseconds {
      self.ewmaLatency = .nanoseconds(current + (ns - current) / 8)
    } else {
      self.ewmaLatency = sample
    }
    self.latency.record(sample)
  }
}

/// One row of `lunbridge status`.
public struct PathStatus: Hashable, Sendable {
  public var path: PathID
  public var group: Int
  public var priority: Int
  public var state: PathState
  /// Writes taken off the failed path and waiting for `pathFenced` before being re-sent.
  public var fencedWrites: Int
  public var statistics: PathStatistics
  /// With ALUA: the path's target port group and its access state as last read.
  public var portGroup: UInt16? = nil
  public var access: PortAccess? = nil

  public var p50: Duration? { self.statistics.latency.quantile(0.50) }
  public var p99: Duration? { self.statistics.latency.quantile(0.99) }
}
