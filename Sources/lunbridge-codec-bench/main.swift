// Benchmark of the iSCSI PDU codec (not a test): encode and decode throughput and heap
// allocations per PDU, with digests off and on, plus raw CRC32C speed. Build and run:
//   swift build -c release --product lunbridge-codec-bench && .build/release/lunbridge-codec-bench
// Optional argument: milliseconds per run (default 300).

import ISCSIProtocol

#if canImport(Glibc)
import Glibc
#endif

checkAllocationCounter()

var harness = Harness()
if CommandLine.arguments.count > 1, let ms = Int(CommandLine.arguments[1]) {
  harness.target = .milliseconds(ms)
}

let machine = Machine.current()
print("# lunbridge PDU codec benchmark")
print()
print("- CPUs online: \(machine.onlineCPUs)")
print("- CPU: \(machine.cpuModel)")
print("- CRC32C hardware (SSE4.2): \(machine.crc32cHardware ? "yes" : "no")")
print("- load average at start: \(machine.loadAverage)")
print(
  "- each case: \(harness.repetitions) runs of ~\(Int(seconds(harness.target) * 1000)) ms, median shown; "
    + "MB/s = data-segment (or checksummed) bytes x rate, 10^6 bytes")
print()

var results: [Result] = []
for digests in [false, true] {
  results += encodeCases(harness, digests: digests)
}
for digests in [false, true] {
  results += try decodeCases(harness, digests: digests)
}
let crc = crcCases(harness)

func fmtRate(_ x: Double) -> String {
  if x >= 1e6 { return String(format1: x / 1e6) + " M" }
  if x >= 1e3 { return String(format1: x / 1e3) + " k" }
  return String(format1: x)
}

extension String {
  init(format1 x: Double) {
    let scaled = (x * 10).rounded() / 10
    self = "\(scaled)"
  }
  init(format2 x: Double) {
    let scaled = (x * 100).rounded() / 100
    self = "\(scaled)"
  }
}

print("| case | PDUs/s (median) | MB/s | allocs/PDU |")
print("|---|---:|---:|---:|")
for r in results {
  let mbs = r.bytesPerOp > 0 ? String(format1: r.opsPerSecond * Double(r.bytesPerOp) / 1e6) : "—"
  print("| \(r.name) | \(fmtRate(r.opsPerSecond)) | \(mbs) | \(String(format2: r.allocsPerOp)) |")
}
print()
print("| CRC32C | calls/s (median) | GB/s | allocs/call |")
print("|---|---:|---:|---:|")
for r in crc {
  let gbs = String(format2: r.opsPerSecond * Double(r.bytesPerOp) / 1e9)
  print("| \(r.name) | \(fmtRate(r.opsPerSecond)) | \(gbs) | \(String(format2: r.allocsPerOp)) |")
}
print()
print("- load average at end: \(Machine.current().loadAverage)")
