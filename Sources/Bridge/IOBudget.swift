/// The bounds that keep one NBD client from filling the bridge's memory or starving the
/// others: a request is admitted (decoded and sent towards the target) only while its
/// connection and the volume stay under their bounds. Bytes are those of the request's
/// payload or reply, held from admission until the reply has been written to the socket,
/// so a client that never reads its replies stops being read itself.
public struct FlowLimits: Sendable, Equatable {
  public var maxRequestsPerConnection: Int
  public var maxBytesPerConnection: Int
  public var maxBytesInFlight: Int
  /// A connection with nothing in flight may always start one request up to this size,
  /// even when the volume is at its bound: small I/O of a well-behaved client keeps moving
  /// while a greedy one holds the volume's bytes.
  public var smallRequest: Int = 1 << 20

  public init(maxRequestsPerConnection: Int, maxBytesPerConnection: Int, maxBytesInFlight: Int) {
    self.maxRequestsPerConnection = maxRequestsPerConnection
    self.maxBytesPerConnection = maxBytesPerConnection
    self.maxBytesInFlight = maxBytesInFlight
  }

  /// Whether a request of `bytes` may start now.
  public func admits(bytes: Int, connectionRequests: Int, connectionBytes: Int, volumeBytes: Int) -> Bool {
    if connectionRequests == 0 {
      // Always one request per connection, or a request larger than a bound never runs.
      return volumeBytes + bytes <= maxBytesInFlight || bytes <= smallRequest || volumeBytes == 0
    }
    guard connectionRequests < maxRequestsPerConnection else { return false }
    guard connectionBytes + bytes <= maxBytesPerConnection else { return false }
    return volumeBytes + bytes <= maxBytesInFlight
  }
}

/// The volume's share of the bounds: bytes in flight over all its NBD connections, and the
/// connections waiting for some to be released. Event-loop confined (the volume's loop).
final class IOBudget {
  let maxBytes: Int
  private(set) var bytes = 0
  /// Connections waiting for room, in the order they started waiting: woken in that
  /// order, and one that still finds no room waits again at the end.
  private var waiters: [(connection: UInt64, resume: () -> Void)] = []

  private var lastConnection: UInt64 = 0

  init(maxBytes: Int) { self.maxBytes = maxBytes }

  /// A number for a new NBD connection (never 0, which means "no connection").
  func newConnectionID() -> UInt64 {
    lastConnection &+= 1
    return lastConnection
  }

  func take(_ n: Int) { bytes += n }

  /// Gives `n` bytes back and lets every waiting connection try again.
  func release(_ n: Int) {
    bytes -= n
    guard !waiters.isEmpty else { return }
    let ready = waiters
    waiters = []
    for waiter in ready { waiter.resume() }
  }

  /// Calls `resume` once, at the next release.
  func wait(_ connection: UInt64, _ resume: @escaping () -> Void) {
    guard !waiters.contains(where: { $0.connection == connection }) else { return }
    waiters.append((connection, resume))
  }

  func forget(_ connection: UInt64) { waiters.removeAll { $0.connection == connection } }
}

/// Counters of flow control and export admission, for `status`, metrics and tests.
public struct FlowCounts: Codable, Hashable, Sendable {
  /// Requests dropped before reaching the target because their client had gone.
  public var cancelled: UInt64 = 0
  /// Times a connection stopped reading its socket because a bound was reached.
  public var paused: UInt64 = 0
  /// Export connections refused: over the cap, or over the cap per peer address.
  public var refusedConnections: UInt64 = 0
  /// Export connections closed because the handshake did not finish in time.
  public var handshakeTimeouts: UInt64 = 0
  /// Bytes of requests and unsent replies held right now (all connections).
  public var bytesInFlight: Int = 0
  public init() {}
}

/// At most `burst` lines per `window`; what is held back is counted and said in the next
/// line let through. Pure: the caller passes the time.
struct LogRateLimiter {
  let burst: Int
  let window: Int64
  private var windowStart: Int64 = .min
  private var count = 0
  private var suppressed = 0

  /// `window` in nanoseconds.
  init(burst: Int = 5, window: Int64 = 10_000_000_000) {
    self.burst = burst
    self.window = window
  }

  /// Whether a line may be logged at `now` (nanoseconds), and how many were held back
  /// since the last one that was.
  mutating func allow(now: Int64) -> (allowed: Bool, suppressed: Int) {
    if windowStart == .min || now - windowStart >= window {
      windowStart = now
      count = 0
    }
    guard count < burst else {
      suppressed += 1
      return (false, 0)
    }
    count += 1
    let held = suppressed
    suppressed = 0
    return (true, held)
  }
}

extension UInt64 {
  var asInt64: Int64 { Int64(clamping: self) }
}
