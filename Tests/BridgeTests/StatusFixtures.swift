import Bridge
import Foundation

/// Status reports with known numbers, shared by the formatter, metrics and control socket tests.
enum StatusFixture {
  /// 50 µs … 2.5 s, as the multipath histogram uses, plus an overflow count at the end.
  static let bounds: [Double] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
  ]

  static func latency(_ counts: [UInt64], sum: Double, p50: Double?, p99: Double?) -> LatencyReport {
    var padded = counts
    while padded.count < bounds.count + 1 { padded.append(0) }
    return LatencyReport(
      upperBoundsSeconds: bounds, counts: padded, sumSeconds: sum, p50Seconds: p50, p99Seconds: p99,
      maxSeconds: p99)
  }

  static let activePath = PathReport(
    id: 0, url: "iscsi://10.0.0.1:3260/iqn.2003-01.org.example:disk1/1?iface=eth0", portal: "10.0.0.1:3260",
    interface: "eth0", source: nil, state: "active", reason: nil, group: 0, priority: 50,
    isid: "400001370000",
    tsih: 7, ios: 120_000, bytes: 491_520_000, errors: 0, failovers: 0, failures: 1, reinstatements: 1,
    outstandingIOs: 4, iops: 1523.4, megabytesPerSecond: 5.94,
    latency: latency([0, 10, 400, 80_000, 30_000, 9_000, 500, 80, 10], sum: 52.5, p50: 0.00018, p99: 0.0012))

  static let failedPath = PathReport(
    id: 1, url: "iscsi://10.0.0.2:3260/iqn.2003-01.org.example:disk1/1?source=10.0.1.5",
    portal: "10.0.0.2:3260", interface: nil, source: "10.0.1.5", state: "failed",
    reason: "connection reset by peer", group: 0, priority: 50, isid: "400001370001", tsih: 0, ios: 3000,
    bytes: 12_288_000, errors: 3, failovers: 12, failures: 2, reinstatements: 1, outstandingIOs: 0, iops: 0,
    megabytesPerSecond: 0,
    latency: latency([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], sum: 6.2, p50: nil, p99: nil))

  static func attached(name: String = "db", device: String = "/dev/nbd0") -> VolumeStatusReport {
    var requests = RequestCounts()
    requests.reads = 100
    requests.writes = 50
    requests.flushes = 5
    requests.trims = 2
    requests.writeZeroes = 1
    requests.readBytes = 409_600
    requests.writeBytes = 204_800
    requests.errors = 3
    return VolumeStatusReport(
      name: name, device: device, export: nil, targetName: "iqn.2003-01.org.example:disk1", lun: 1,
      deviceIdentifier: "naa.60014055f1b3c1a2d5e4", sizeBytes: 10 << 30, blockSize: 4096, readOnly: false,
      policy: "service-time", failback: "immediate", noPathRetrySeconds: 30, queuedIOs: 3, noPathFailures: 4,
      requests: requests, latency: latency([0, 5, 60, 70, 20, 3], sum: 0.07, p50: 0.0005, p99: 0.0025),
      paths: [activePath, failedPath], uptimeSeconds: 3725)
  }

  static func served(name: String = "scratch") -> VolumeStatusReport {
    var r = attached(name: name)
    r.device = nil
    r.export = "nbd+unix:///?socket=/run/lb.sock"
    r.paths = [activePath]
    r.readOnly = true
    return r
  }
}
