import CAllocationCounter

#if canImport(Glibc)
import Glibc
#endif

/// Keeps a value alive as far as the optimizer can tell: every case folds what it
/// computed into a UInt64 and passes it here, so the work cannot be deleted or hoisted.
@inline(never) @_optimize(none)
func blackHole(_ value: UInt64) {}

/// One measured case: median throughput over `repetitions` runs of about `target` each.
struct Result {
  var name: String
  var opsPerSecond: Double
  /// Payload bytes per operation (the data segment, or the checksummed bytes); 0 when
  /// the operation carries none.
  var bytesPerOp: Int
  var allocsPerOp: Double
  var allocBytesPerOp: Double
}

struct Harness {
  var repetitions = 7
  var target: Duration = .milliseconds(300)
  let clock = ContinuousClock()

  /// `body(n)` performs about n operations and returns how many it did (decoders work in
  /// whole pre-built buffers). The first calls size n so one run takes about `target`.
  func measure(_ name: String, bytesPerOp: Int = 0, _ body: (Int) throws -> Int) rethrows -> Result {
    // Calibrate: grow n until a run takes at least 30 ms, then scale to the target.
    var n = 64
    var elapsed = Duration.zero
    var done = 0
    while true {
      let start = clock.now
      done = try body(n)
      elapsed = clock.now - start
      if elapsed >= .milliseconds(30) { break }
      n *= 4
    }
    let perOp = seconds(elapsed) / Double(done)
    n = max(1, Int(seconds(target) / perOp))

    var rates: [Double] = []
    var allocs: [Double] = []
    var allocBytes: [Double] = []
    rates.reserveCapacity(repetitions)
    allocs.reserveCapacity(repetitions)
    allocBytes.reserveCapacity(repetitions)
    for _ in 0..<repetitions {
      lb_alloc_reset()
      let start = clock.now
      let ops = try body(n)
      let t = clock.now - start
      let a = lb_alloc_count()
      let b = lb_alloc_bytes()
      rates.append(Double(ops) / seconds(t))
      allocs.append(Double(a) / Double(ops))
      allocBytes.append(Double(b) / Double(ops))
    }
    return Result(
      name: name, opsPerSecond: median(rates), bytesPerOp: bytesPerOp, allocsPerOp: median(allocs),
      allocBytesPerOp: median(allocBytes))
  }
}

func seconds(_ d: Duration) -> Double {
  let (s, atto) = d.components
  return Double(s) + Double(atto) * 1e-18
}

func median(_ xs: [Double]) -> Double {
  let s = xs.sorted()
  return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Fails loudly when the counter does not see Swift's allocations (e.g. a static link or
/// a libc without __libc_malloc): every allocs/PDU figure would then read 0.
func checkAllocationCounter() {
  lb_alloc_reset()
  let n = Int(lb_alloc_count()) + 1000  // not a constant, so the array is really built
  let array = [UInt64](repeating: 7, count: n)
  blackHole(array[n - 1])
  let seen = lb_alloc_count()
  guard seen >= 1 else {
    print("error: the allocation counter saw no allocation for a Swift Array; it does not interpose malloc")
    exit(1)
  }
}
