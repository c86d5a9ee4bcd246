import Bridge
import Foundation
import ISCSIInitiator
import ISCSIProtocol
import Logging
import NIOCore
import NIOPosix
import XCTest

/// `serve` against a real tgtd, checked from outside with libnbd's tools (nbdinfo,
/// nbdcopy, nbdsh) and fio's nbd engine.
final class ServeIntegrationTests: XCTestCase {
  static let iqn = "iqn.2026-11.org.lunbridge.test:serve"
  var tgtd: TGTD!
  var server: NBDExportServer!
  var socketPath: String!
  var uri: String { "nbd+unix:///?socket=\(socketPath!)" }
  var scratch: String!

  override func setUp() async throws {
    tgtd = try TGTD()
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 96, thin: true)
    try tgtd.bindAll(tid: 1)
    scratch = try makeScratch()
    socketPath = scratch + "/nbd.sock"
    let login = LoginConfiguration(initiatorName: "iqn.2026-11.org.lunbridge.test:serve-init", targetName: Self.iqn)
    let config = SessionConfiguration(portal: Portal(host: "127.0.0.1", port: tgtd.port), login: login)
    let logger = Logger(label: "test")
    let url = ISCSIURL(portal: config.portal, targetName: Self.iqn, lun: 1)
    let volume = try await Volume.open(paths: [PathSpec(url: url, configuration: config)], logger: logger)
    server = try await NBDExportServer.start(volume: volume, address: .unix(socketPath), logger: logger)
  }

  override func tearDown() async throws {
    if let server {
      await server.stop()
      await server.volume.close()
    }
    tgtd?.stop()
    if let scratch { try? FileManager.default.removeItem(atPath: scratch) }
  }

  func makeScratch() throws -> String {
    let path = "/dev/shm/lunbridge-serve-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
  }

  @discardableResult
  func tool(_ name: String, _ args: [String], package: String, timeout: TimeInterval = 120) throws -> CommandResult {
    let exe = try Command.locate(name, hint: "install the Debian package \(package) (make deps)")
    let r = try Command.run(exe, args, timeout: timeout)
    XCTAssertFalse(r.timedOut, "\(name) timed out")
    return r
  }

  func testNbdinfoReportsSizeFlagsAndBlockSizes() throws {
    let r = try tool("nbdinfo", ["--json", uri], package: "libnbd-bin")
    XCTAssertEqual(r.status, 0, r.stderr)
    let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    let export = try XCTUnwrap((json["exports"] as? [[String: Any]])?.first)
    XCTAssertEqual(export["export-size"] as? Int, 96 << 20)
    XCTAssertEqual(export["can_flush"] as? Bool, true)
    XCTAssertEqual(export["can_fua"] as? Bool, true)
    XCTAssertEqual(export["can_multi_conn"] as? Bool, true)
    XCTAssertEqual(export["can_trim"] as? Bool, true, "thin LUN: TRIM maps to UNMAP")
    XCTAssertEqual(export["can_zero"] as? Bool, true)
    XCTAssertEqual(export["is_read_only"] as? Bool, false)
    XCTAssertEqual(export["block_size_minimum"] as? Int, 512)
    XCTAssertGreaterThanOrEqual(export["block_size_maximum"] as? Int ?? 0, 32 << 20)
  }

  func testQemuImgReadsTheExport() throws {
    let r = try tool("qemu-img", ["info", "--output=json", uri], package: "qemu-utils")
    XCTAssertEqual(r.status, 0, r.stderr)
    let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    XCTAssertEqual(json["virtual-size"] as? Int, 96 << 20)
    // qemu-io writes a pattern through the export and reads it back.
    let w = try tool(
      "qemu-io", ["-f", "raw", "-c", "write -P 0xa5 1M 64k", "-c", "read -P 0xa5 1M 64k", uri], package: "qemu-utils")
    XCTAssertEqual(w.status, 0, w.stdout + w.stderr)
    XCTAssertFalse(w.stdout.contains("Pattern verification failed"), w.stdout)
  }

  func testNbdcopy64MiBInAndOutMatchesByteForByte() throws {
    let source = scratch + "/random.img"
    let back = scratch + "/back.img"
    var rng = SystemRandomNumberGenerator()
    var data = Data(count: 64 << 20)
    data.withUnsafeMutableBytes { raw in
      let words = raw.bindMemory(to: UInt64.self)
      for i in words.indices { words[i] = rng.next() }
    }
    try data.write(to: URL(fileURLWithPath: source))
    var r = try tool("nbdcopy", [source, uri], package: "libnbd-bin")
    XCTAssertEqual(r.status, 0, r.stderr)
    r = try tool("nbdcopy", [uri, back], package: "libnbd-bin")
    XCTAssertEqual(r.status, 0, r.stderr)
    let copied = try Data(contentsOf: URL(fileURLWithPath: back))
    XCTAssertEqual(copied.count, 96 << 20)
    XCTAssertTrue(copied.prefix(64 << 20) == data, "data read back differs from data written")
  }

  func testFioVerifiesRandom4KAnd1MWrites() throws {
    for (bs, rw) in [("4k", "randwrite"), ("1m", "write")] {
      let r = try tool(
        "fio",
        [
          "--name=verify-\(bs)", "--ioengine=nbd", "--uri=\(uri)", "--rw=\(rw)", "--bs=\(bs)",
          "--iodepth=16", "--size=48m", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
          "--output-format=terse", "--terse-version=3", "--verify_state_save=0",
        ], package: "fio", timeout: 300)
      XCTAssertEqual(r.status, 0, "fio \(bs): \(r.stdout)\n\(r.stderr)")
      XCTAssertFalse(r.stderr.contains("verify"), "fio \(bs) reported: \(r.stderr)")
    }
  }

  /// Runs an nbdsh script (`h` is the handle) through Debian's Python: the python3 first
  /// on PATH here may lack the module.
  func nbdsh(_ script: String) throws -> CommandResult {
    guard FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/nbd.py") else {
      throw TGTDError("nbdsh's Python module is missing: install the Debian package python3-libnbd (make deps)")
    }
    return try Command.run("/usr/bin/python3", ["-m", "nbd", "-c", script], timeout: 60)
  }

  /// `nbdinfo --map --json` as [offset, length, type] (type: 0 data, 3 hole and zero).
  func map(_ uri: String) throws -> [[Int]] {
    let r = try tool("nbdinfo", ["--map", "--json", uri], package: "libnbd-bin")
    XCTAssertEqual(r.status, 0, r.stderr)
    let entries = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]], r.stdout)
    return entries.map { [$0["offset"] as? Int ?? -1, $0["length"] as? Int ?? -1, $0["type"] as? Int ?? -1] }
  }

  /// NBD block status (base:allocation) from GET LBA STATUS: what `nbdinfo --map`,
  /// `nbdcopy` and `qemu-img convert` use to skip what was never written or was trimmed.
  func testNbdinfoMapShowsWrittenTrimmedAndNeverWrittenRanges() async throws {
    let w = try tool(
      "qemu-io", ["-f", "raw", "-c", "write -P 0x5a 8M 1M", "-c", "discard 8448k 256k", uri], package: "qemu-utils")
    XCTAssertEqual(w.status, 0, w.stdout + w.stderr)
    let k = 1024
    XCTAssertEqual(
      try map(uri),
      [
        [0, 8192 * k, 3], [8192 * k, 256 * k, 0], [8448 * k, 256 * k, 3], [8704 * k, 512 * k, 0],
        [9216 * k, 96 * 1024 * k - 9216 * k, 3],
      ])
    // Block status moves no data: the map of the whole 96 MiB adds nothing to the bytes
    // the path carried (1 MiB written, 256 KiB trimmed).
    let carried = try await server.volume.report().get().paths.reduce(0) { $0 + $1.bytes }
    XCTAssertLessThan(carried, 4 << 20, "block status counted as data moved: \(carried) bytes")
    // The same through libnbd's API: structured replies and base:allocation negotiated,
    // REQ_ONE answered with one extent, reads as OFFSET_DATA chunks.
    let script = """
      h.add_meta_context("base:allocation")
      h.connect_uri("\(uri)")
      assert h.get_structured_replies_negotiated(), "no structured replies"
      assert h.can_meta_context("base:allocation"), "no base:allocation"
      seen = []
      def extents(context, offset, entries, err):
          seen.append((context, offset, list(entries)))
      h.block_status(1 << 20, 8192 * 1024, extents, nbd.CMD_FLAG_REQ_ONE)
      print("one", seen)
      assert seen == [("base:allocation", 8192 * 1024, [262144, 0])], seen
      assert h.pread(4096, 8192 * 1024) == bytes([0x5a]) * 4096
      assert h.pread(4096, 8448 * 1024) == bytes(4096)
      print("ok")
      """
    let r = try nbdsh(script)
    XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    XCTAssertTrue(r.stdout.contains("ok"), r.stdout)
  }

  /// A LU without thin provisioning has storage behind every block: all data, and the
  /// target is not asked.
  func testBlockStatusOfAThickLUNIsAllData() async throws {
    _ = try tgtd.addLUN(tid: 1, lun: 2, sizeMiB: 16)
    let login = LoginConfiguration(initiatorName: "iqn.2026-11.org.lunbridge.test:serve-init", targetName: Self.iqn)
    let config = SessionConfiguration(portal: Portal(host: "127.0.0.1", port: tgtd.port), login: login)
    let url = ISCSIURL(portal: config.portal, targetName: Self.iqn, lun: 2)
    let logger = Logger(label: "test")
    let volume = try await Volume.open(paths: [PathSpec(url: url, configuration: config)], logger: logger)
    let thick = try await NBDExportServer.start(volume: volume, address: .unix(scratch + "/thick.sock"), logger: logger)
    defer {
      Task {
        await thick.stop()
        await volume.close()
      }
    }
    XCTAssertFalse(volume.info.thinProvisioned)
    XCTAssertEqual(try map("nbd+unix:///?socket=\(scratch!)/thick.sock"), [[0, 16 << 20, 0]])
    await thick.stop()
    await volume.close()
  }

  /// nbdsh with strict mode off sends requests a careful client never would; each gets
  /// an error reply and the export keeps serving.
  func testMisalignedAndOutOfRangeRequestsGetErrorsAndTheExportKeepsServing() throws {
    let script = """
      import errno
      h.set_strict_mode(0)
      h.connect_uri("\(uri)")
      def expect_error(what, f):
          try:
              f()
          except nbd.Error as e:
              print(what, "errno", e.errno)
              return
          raise SystemExit(what + ": no error")
      expect_error("misaligned read", lambda: h.pread(512, 1))
      expect_error("short read", lambda: h.pread(100, 0))
      expect_error("read past the end", lambda: h.pread(4096, h.get_size()))
      expect_error("write past the end", lambda: h.pwrite(bytearray(4096), h.get_size() - 512))
      expect_error("oversized read", lambda: h.pread(64 * 1024 * 1024, 0))
      h.pwrite(b"lunbridge" + bytearray(503), 4096)
      assert h.pread(512, 4096)[:9] == b"lunbridge"
      print("still serving")
      """
    let r = try nbdsh(script)
    XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    XCTAssertTrue(r.stdout.contains("misaligned read errno EINVAL"), r.stdout)
    XCTAssertTrue(r.stdout.contains("read past the end errno"), r.stdout)
    XCTAssertTrue(r.stdout.contains("write past the end errno ENOSPC"), r.stdout)
    XCTAssertTrue(r.stdout.contains("still serving"), r.stdout)
  }

  /// A client that sends garbage loses its own connection; others are unaffected.
  func testGarbageFromOneClientClosesOnlyThatConnection() throws {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    XCTAssertGreaterThanOrEqual(fd, 0)
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
      for (i, b) in socketPath.utf8.enumerated() { raw[i] = b }
    }
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    XCTAssertEqual(rc, 0)
    var greeting = [UInt8](repeating: 0, count: 18)
    XCTAssertEqual(read(fd, &greeting, 18), 18)
    let junk = [UInt8](repeating: 0x5a, count: 64)
    _ = write(fd, junk, junk.count)
    var buf = [UInt8](repeating: 0, count: 256)
    var total = 0
    while true {
      let n = read(fd, &buf, buf.count)
      if n <= 0 { break }
      total += n
      XCTAssertLessThan(total, 1 << 16, "server kept talking to a garbage client")
    }
    let r = try tool("nbdinfo", ["--size", uri], package: "libnbd-bin")
    XCTAssertEqual(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines), String(96 << 20))
  }
}
