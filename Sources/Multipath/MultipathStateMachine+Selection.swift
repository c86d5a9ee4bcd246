// Path selectors: which usable path gets the next I/O.
//
// Facts taken from device-mapper's selectors (drivers/md/dm-service-time.c,
// dm-queue-length.c, dm-round-robin.c) and multipath-tools' priority groups:
// - service-time picks the path with the least (in-flight bytes + incoming bytes) /
//   relative throughput; on a tie the larger relative throughput, then list order.
// - queue-length picks the path with the fewest in-flight I/Os, list order on a tie.
// - round-robin sends repeat_count (rr_min_io_rq) I/Os down a path before the next.
// - failover uses only the highest-priority group that has a usable path.

extension MultipathStateMachine {
  /// How good a path's place is; smaller is better. Failover: the group, ranked by the
  /// highest priority among its paths, then by group number. Other policies: the priority
  /// alone (the ALUA hook: active/optimized ports outrank active/non-optimized ones).
  struct Level: Comparable, Hashable {
    var rank: Int
    var group: Int

    static func < (lhs: Level, rhs: Level) -> Bool {
      (lhs.rank, lhs.group) < (rhs.rank, rhs.group)
    }
  }

  func level(of record: PathRecord) -> Level {
    guard case .failover = self.configuration.policy else {
      return Level(rank: -record.priority, group: 0)
    }
    let groupPriority =
      self.paths.values.lazy
      .filter { $0.group == record.group && !$0.removing }
      .map(\.priority).max() ?? record.priority
    return Level(rank: -groupPriority, group: record.group)
  }

  func isUsable(_ record: PathRecord) -> Bool {
    record.health == .up && !record.held && !record.removing && record.access?.allowsIO != false
  }

  /// The level I/O goes to now: the best one that has a usable path.
  func servingLevel() -> Level? {
    self.paths.values.lazy.filter(self.isUsable).map(self.level(of:)).min()
  }

  func state(of record: PathRecord, serving: Level?) -> PathState {
    switch record.health {
    case .failed(let reason): return .failed(reason)
    case .probing: return .probing
    case .disabled: return .disabled
    case .up:
      switch record.access {
      case .unavailable?, .offline?: return .unavailable
      case .transitioning?: return .transitioning
      default: return self.isUsable(record) && self.level(of: record) == serving ? .active : .standby
      }
    }
  }

  /// The paths that may take the next I/O, in the order they were added.
  func candidates() -> [PathID] {
    guard let serving = self.servingLevel() else { return [] }
    return self.order.filter { id in
      let record = self.paths[id]!
      return self.isUsable(record) && self.level(of: record) == serving
    }
  }

  mutating func select(for io: IOToken) -> PathID? {
    // One path (the common single-URL case): no choice to make, no arrays to build.
    if self.order.count == 1 {
      let only = self.order[0]
      return self.isUsable(self.paths[only]!) ? only : nil
    }
    let candidates = self.candidates()
    guard let first = candidates.first else { return nil }
    switch self.configuration.policy {
    case .failover, .queueLength:
      return candidates.min {
        self.paths[$0]!.statistics.outstandingIOs < self.paths[$1]!.statistics.outstandingIOs
      }
        ?? first
    case .serviceTime:
      return self.serviceTimeChoice(among: candidates, io: io)
    case .roundRobin(let iosPerTurn):
      if let current = self.roundRobinCurrent, self.roundRobinRemaining > 0, candidates.contains(current) {
        self.roundRobinRemaining -= 1
        return current
      }
      var next = first
      if let current = self.roundRobinCurrent, let index = self.order.firstIndex(of: current) {
        let rotated = self.order[(index + 1)...] + self.order[...index]
        next = rotated.first(where: candidates.contains) ?? first
      }
      self.roundRobinCurrent = next
      self.roundRobinRemaining = max(iosPerTurn, 1) - 1
      return next
    }
  }

  /// Estimated service time = (bytes in flight + this I/O's bytes) × EWMA latency /
  /// relative throughput. A path with no latency sample yet is assumed as fast as the
  /// fastest measured one, so a new path gets tried.
  private func serviceTimeChoice(among candidates: [PathID], io: IOToken) -> PathID? {
    let measured = candidates.compactMap { self.paths[$0]!.statistics.ewmaLatency?.nanoseconds }
    let assumed = max(measured.min() ?? 1, 1)
    var best: (id: PathID, cost: Double, throughput: Int)?
    for id in candidates {
      let record = self.paths[id]!
      let latency = max(record.statistics.ewmaLatency?.nanoseconds ?? assumed, 1)
      let bytes = Double(max(record.statistics.outstandingBytes + io.bytes, 0))
      let cost = bytes * Double(latency) / Double(record.relativeThroughput)
      if let current = best,
        cost > current.cost || (cost == current.cost && record.relativeThroughput <= current.throughput)
      {
        continue
      }
      best = (id, cost, record.relativeThroughput)
    }
    return best?.id
  }
}
