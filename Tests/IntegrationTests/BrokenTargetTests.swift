import Bridge
import Foundation
import ISCSIInitiator
import ISCSIProtocol
import Logging
import NIOCore
import NIOPosix
import XCTest

/// A broken target (a real tgtd behind `BrokenTargetProxy`, which rewrites one PDU per
/// case) never gets wrong data to an NBD client: `serve` runs in this process, libnbd
/// (Tests/scripts/nbd-pattern.py) writes a known pattern through the export and reads it
/// back while the fault is armed, and every 4 KiB block must come back right — after the
/// connection is dropped and the command sent again — or the read must fail with EIO.
final class BrokenTargetTests: XCTestCase {
  static let iqn = "iqn.2026-11.org.lunbridge.test:broken"

  func testEveryBrokenDataTransferIsRefusedWithoutDigests() async throws {
    try await runAllFaults(digests: false)
  }

  func testEveryBrokenDataTransferIsRefusedWithDigests() async throws {
    try await runAllFaults(digests: true)
  }

  func runAllFaults(digests: Bool) async throws {
    let python = "/usr/bin/python3"
    guard FileManager.default.isExecutableFile(atPath: python),
      (try? Command.run(python, ["-c", "import nbd"]))?.status == 0
    else {
      throw TGTDError("Debian's /usr/bin/python3 with the nbd module is needed: install python3-libnbd (make deps)")
    }
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
      .appendingPathComponent("../scripts/nbd-pattern.py").standardized.path

    let tgtd = try TGTD()
    defer { tgtd.stop() }
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 32)
    try tgtd.bindAll(tid: 1)
    if digests {
      try tgtd.setParameter(tid: 1, name: "HeaderDigest", value: "CRC32C")
      try tgtd.setParameter(tid: 1, name: "DataDigest", value: "CRC32C")
    }
    let proxy = try BrokenTargetProxy(targetPort: tgtd.port)
    defer { proxy.stop() }

    let login = LoginConfiguration(
      initiatorName: "iqn.2026-11.org.lunbridge.test:broken-init", targetName: Self.iqn,
      headerDigest: digests ? [.crc32c] : [.none], dataDigest: digests ? [.crc32c] : [.none],
      // 256 KiB Data-In segments: a 1 MiB read comes as four PDUs for the proxy to break.
      maxRecvDataSegmentLength: 262_144)
    let config = SessionConfiguration(portal: Portal(host: "127.0.0.1", port: proxy.port), login: login)
    let lines = LogLines()
    let logger = Logger(label: "broken-target") { _ in CapturingLogHandler(lines) }
    let url = ISCSIURL(portal: config.portal, targetName: Self.iqn, lun: 1)
    let volume = try await Volume.open(paths: [PathSpec(url: url, configuration: config)], logger: logger)
    let socket = "/dev/shm/lunbridge-broken-\(getpid())-\(digests ? "d" : "n").sock"
    let server = try await NBDExportServer.start(volume: volume, address: .unix(socket), logger: logger)
    defer { try? FileManager.default.removeItem(atPath: socket) }
    let uri = "nbd+unix:///?socket=\(socket)"
    let length = 1 << 20

    func nbd(_ mode: String, _ offset: Int, _ seed: String) throws -> String {
      let r = try Command.run(python, [script, uri, mode, String(offset), String(length), seed], timeout: 90)
      XCTAssertFalse(r.timedOut, "\(mode) at \(offset) hung")
      return (r.stdout + r.stderr).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    for (i, fault) in BrokenTargetProxy.Fault.allCases.enumerated() {
      let label = "\(fault) (digests \(digests))"
      let offset = i * 2 * length
      let seed = "\(fault)-\(digests)"
      let before = lines.count
      if fault == .r2tOutsideCommand { proxy.arm(fault) }
      let wrote = try nbd("write", offset, seed)
      if fault != .r2tOutsideCommand { proxy.arm(fault) }
      let read = try nbd("check", offset, seed)
      XCTAssertEqual(proxy.injected.last, fault, "\(label): the proxy never found a PDU to break")
      XCTAssertFalse(read.hasPrefix("mismatch"), "\(label): WRONG DATA returned as success: \(read)")
      // The expected outcome: the data was refused, the connection dropped and the
      // command sent again, so both succeed. EIO would be acceptable, wrong data never.
      XCTAssertEqual(wrote, "ok", "\(label): write")
      XCTAssertEqual(read, "ok", "\(label): read")
      let said = lines.since(before).filter {
        $0.contains("protocol violation") || $0.contains("target sent") || $0.contains("target ended")
          || $0.contains("target reported")
      }
      XCTAssertFalse(said.isEmpty, "\(label): nothing logged about the broken PDU; log: \(lines.since(before))")
    }
    XCTAssertEqual(proxy.injected, BrokenTargetProxy.Fault.allCases)

    // A target wrong every time: the read is sent again a bounded number of times, then
    // fails with EIO; it never loops, and never returns the wrong data.
    let offset = BrokenTargetProxy.Fault.allCases.count * 2 * length
    XCTAssertEqual(try nbd("write", offset, "persistent"), "ok")
    let before = lines.count
    proxy.arm(.repeatedOffset, times: 1000)
    let started = Date()
    let read = try nbd("check", offset, "persistent")
    proxy.disarm()
    XCTAssertTrue(read.hasPrefix("error:") && read.contains("errno"), "a target wrong every time: \(read)")
    XCTAssertLessThan(Date().timeIntervalSince(started), 60, "the retries were not bounded")
    XCTAssertEqual(
      proxy.injected.count - BrokenTargetProxy.Fault.allCases.count, ISCSISession.maxProtocolViolationsPerCommand,
      "sent again until the bound, then failed")
    XCTAssertTrue(lines.since(before).contains { $0.contains("NBD request failed") }, "\(lines.since(before))")
    XCTAssertEqual(try nbd("check", offset, "persistent"), "ok", "the path works again once the target does")
    await server.stop()
    await volume.close()
  }
}

/// Log lines of a test, kept in memory.
final class LogLines: @unchecked Sendable {
  private let lock = NSLock()
  private var lines: [String] = []
  func append(_ s: String) { lock.withLock { lines.append(s) } }
  var count: Int { lock.withLock { lines.count } }
  func since(_ n: Int) -> [String] { lock.withLock { Array(lines[min(n, lines.count)...]) } }
}

struct CapturingLogHandler: LogHandler {
  let sink: LogLines
  var metadata: Logger.Metadata = [:]
  var logLevel: Logger.Level = .debug
  init(_ sink: LogLines) { self.sink = sink }
  subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }
  func log(event: LogEvent) {
    let all = metadata.merging(event.metadata ?? [:]) { $1 }
    sink.append("\(event.level) \(event.message) \(all.map { "\($0)=\($1)" }.sorted().joined(separator: " "))")
  }
}
