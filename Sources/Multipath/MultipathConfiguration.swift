// Policies and knobs of the scheduler (`--policy`, `--failback`, `--no-path-retry`).

/// How a path is chosen for each I/O.
public enum SelectorPolicy: Hashable, Sendable, CustomStringConvertible {
  /// Least estimated service time, like dm-multipath's `service-time`: the path minimizing
  /// (bytes in flight + this I/O's bytes) / relative throughput, here also weighted by the
  /// path's EWMA latency so a slower path takes proportionally less.
  case serviceTime
  /// Fewest I/Os in flight, like dm-multipath's `queue-length`.
  case queueLength
  /// Rotate through the paths, `iosPerTurn` I/Os on each before moving on
  /// (dm-multipath's `round-robin` with `rr_min_io_rq`).
  case roundRobin(iosPerTurn: Int)
  /// All I/O on the best priority group that has a healthy path; the other groups stand by.
  /// Within that group, the path with the fewest I/Os in flight.
  case failover

  /// Parses the `--policy` spelling: `service-time`, `queue-length`, `round-robin`
  /// (`round-robin:N` for N I/Os per turn), `failover`.
  public init?(argument: String) {
    switch argument {
    case "service-time": self = .serviceTime
    case "queue-length": self = .queueLength
    case "round-robin": self = .roundRobin(iosPerTurn: 1)
    case "failover": self = .failover
    default:
      let prefix = "round-robin:"
      guard argument.hasPrefix(prefix), let n = Int(argument.dropFirst(prefix.count)), n >= 1 else {
        return nil
      }
      self = .roundRobin(iosPerTurn: n)
    }
  }

  public var description: String {
    switch self {
    case .serviceTime: return "service-time"
    case .queueLength: return "queue-length"
    case .roundRobin(let n): return n == 1 ? "round-robin" : "round-robin:\(n)"
    case .failover: return "failover"
    }
  }
}

/// When a reinstated path that is better than the ones carrying I/O (a better failover
/// group, or a higher ALUA priority) takes I/O again. A reinstated path that is no better
/// than the serving ones joins them at once whatever the policy; and when nothing else is
/// usable, waiting paths are used at once too.
public enum FailbackPolicy: Hashable, Sendable {
  /// As soon as its probe succeeds.
  case immediate
  /// Only when the caller says `failback()`.
  case manual
  /// That many seconds after its probe succeeded.
  case deferred(seconds: Int64)
}

/// Exponential backoff with jitter between probes of a failed path:
/// delay(k) = min(maximum, initial * 2^k), plus a random jitter in
/// [0, delay(k) * jitterPercent / 100], k = failed probes since the path failed.
public struct ProbeBackoff: Hashable, Sendable {
  public var initial: Duration
  public var maximum: Duration
  public var jitterPercent: Int

  public init(initial: Duration = .seconds(1), maximum: Duration = .seconds(60), jitterPercent: Int = 20) {
    self.initial = initial
    self.maximum = maximum
    self.jitterPercent = jitterPercent
  }

  /// The delay before probe number `attempt` (0-based), given one random draw.
  public func delay(attempt: Int, random: UInt64) -> Duration {
    let initialNs = max(self.initial.nanoseconds, 1)
    let maximumNs = max(self.maximum.nanoseconds, initialNs)
    var base = initialNs
    var k = 0
    while k < attempt && base < maximumNs {
      base = base > maximumNs / 2 ? maximumNs : base * 2
      k += 1
    }
    base = min(base, maximumNs)
    let jitterSpan = UInt64(base / 100) * UInt64(max(self.jitterPercent, 0))
    let jitter = jitterSpan == 0 ? 0 : Int64(random % (jitterSpan + 1))
    return .nanoseconds(base + jitter)
  }
}

public struct MultipathConfiguration: Hashable, Sendable {
  public var policy: SelectorPolicy
  public var failback: FailbackPolicy
  /// How long I/O waits for a path when none is usable before it fails with `.noPath`.
  /// Zero fails it at once.
  public var noPathRetry: Duration
  public var probeBackoff: ProbeBackoff
  /// With ALUA: how often the port groups' states are re-read (REPORT TARGET PORT GROUPS),
  /// as dm-multipath's path checker and prioritizer poll; also after every unit attention
  /// that announces a change. While a group is transitioning, every second.
  public var portGroupCheckInterval: Duration
  /// How long a group may stay transitioning before it is taken as unavailable, when the
  /// target reports no implicit transition time (scsi_dh_alua waits 60 s too).
  public var transitionTimeout: Duration

  public init(
    policy: SelectorPolicy = .serviceTime,
    failback: FailbackPolicy = .immediate,
    noPathRetry: Duration = .seconds(60),
    probeBackoff: ProbeBackoff = ProbeBackoff(),
    portGroupCheckInterval: Duration = .seconds(10),
    transitionTimeout: Duration = .seconds(60)
  ) {
    self.policy = policy
    self.failback = failback
    self.noPathRetry = noPathRetry
    self.probeBackoff = probeBackoff
    self.portGroupCheckInterval = portGroupCheckInterval
    self.transitionTimeout = transitionTimeout
  }
}
