import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Proves the TGTD harness against a real tgtd with a real libiscsi client (libiscsi-bin).
/// Missing tools make these tests fail, never skip.
final class TGTDHarnessTests: XCTestCase {
  static let libiscsiHint = "install the Debian package libiscsi-bin (make deps)"
  let iqn = "iqn.2024-01.org.lunbridge.test:harness"

  private func tool(_ name: String) throws -> String {
    try Command.locate(name, hint: Self.libiscsiHint)
  }

  /// Runs a libiscsi tool; returns its result (bounded wait).
  private func run(_ name: String, _ args: [String], timeout: TimeInterval = 30) throws
    -> CommandResult
  {
    try Command.run(try tool(name), args, timeout: timeout)
  }

  /// A started tgtd with one target (tid 1) and a 16 MiB LUN 1, open to all initiators.
  private func startWithLUN(portals: [String] = ["127.0.0.1"]) throws -> TGTD {
    let t = try TGTD(portals: portals)
    try t.addTarget(tid: 1, iqn: iqn)
    try t.addLUN(tid: 1, lun: 1, sizeMiB: 16)
    try t.bindAll(tid: 1)
    return t
  }

  private func waitUntil(
    _ seconds: TimeInterval, _ what: String, file: StaticString = #filePath, line: UInt = #line,
    _ condition: () throws -> Bool
  ) rethrows {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      if try condition() { return }
      usleep(50_000)
    }
    XCTFail("timed out after \(seconds) s waiting for \(what)", file: file, line: line)
  }

  // MARK: -

  /// One smoke test of everything the suites use the harness for, on one tgtd: each step
  /// checks its claim on the target itself (tgtadm, /proc, a libiscsi client), so a
  /// harness that stops doing what it says fails here before it makes another test pass
  /// for the wrong reason.
  func testHarnessSmoke() throws {
    // Pure parsing of captured tgtadm output (tgt 1.0.85).
    let captured = """
      Session: 7
          Connection: 0
              Initiator: iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq
              IP Address: ::1
          Connection: 1
              Initiator: iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq
              IP Address: 127.0.0.2

      """
    XCTAssertEqual(TGTD.parseConnections(captured).map { [$0.sid, $0.cid] }, [[7, 0], [7, 1]])
    XCTAssertEqual(TGTD.parseConnections(captured).last?.address, "127.0.0.2")
    XCTAssertEqual(
      TGTD.parsePortals("Portal: [::1]:3260,1\nPortal: 127.0.0.1:3260,1\n"), ["[::1]:3260", "127.0.0.1:3260"])
    XCTAssertThrowsError(try Command.locate("tgtd", hint: TGTD.packageHint, path: "/nonexistent")) {
      XCTAssertTrue("\($0)".contains("install the Debian package tgt (make deps)"), "\($0)")
    }
    XCTAssertThrowsError(try TGTD(portals: ["10.0.0.1"]), "a portal outside loopback was accepted")

    // Tests/lib/tap.sh: a suite that stops early is padded to its plan with "not ok", a
    // check reports its command's status, and more checks than planned fail the suite.
    let tap = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .appendingPathComponent("lib/tap.sh").path
    let early = try Command.run("/bin/bash", ["-c", ". '\(tap)'; tap_start demo 4; ok one; check two false; finish"])
    XCTAssertEqual(early.status, 1)
    XCTAssertEqual(
      early.stdout.split(separator: "\n"),
      [
        "1..4", "ok 1 - one", "not ok 2 - two", "not ok 3 - not run: the suite stopped before this check (see the lines above)",
        "not ok 4 - not run: the suite stopped before this check (see the lines above)", "demo checks: 1 passed, 3 failed",
      ])
    let over = try Command.run("/bin/bash", ["-c", ". '\(tap)'; tap_start demo 1; check a true; ok b; finish"])
    XCTAssertEqual(over.status, 1)
    XCTAssertTrue(over.stdout.hasSuffix("demo checks: 2 passed, 1 failed\n"), over.stdout)
    let all = try Command.run("/bin/bash", ["-c", ". '\(tap)'; tap_start demo 2; check a true; ok b; finish"])
    XCTAssertEqual(all.status, 0)
    XCTAssertTrue(all.stdout.hasSuffix("demo checks: 2 passed, 0 failed\n"), all.stdout)

    // Start: two portals, a target, a LUN; discovery and INQUIRY through both.
    let t = try startWithLUN(portals: ["127.0.0.1", "127.0.0.2"])
    defer { t.stop() }
    guard let pid = t.pid else { return XCTFail("tgtd not running after init") }
    let (dir, cp, port) = (t.tempDir, t.controlPort, t.port)
    XCTAssertTrue(dir.hasPrefix("/dev/shm/"))
    XCTAssertEqual(Set(try t.portals()), ["127.0.0.1:\(port)", "127.0.0.2:\(port)"])
    let ls = try run("iscsi-ls", ["-s", "iscsi://127.0.0.2:\(port)"])
    XCTAssertTrue(ls.stdout.contains("Target:\(iqn) Portal:") && ls.stdout.contains("DIRECT_ACCESS"), ls.stdout + ls.stderr)
    let inq = try run("iscsi-inq", ["iscsi://127.0.0.1:\(port)/\(iqn)/1"])
    XCTAssertTrue(inq.status == 0 && inq.stdout.contains("Product:VIRTUAL-DISK"), inq.stdout + inq.stderr)

    // Portals come and go.
    try t.addPortal("127.0.0.3")
    XCTAssertTrue(TGTD.canConnect("127.0.0.3", port))
    try t.removePortal("127.0.0.2")
    XCTAssertFalse(TGTD.canConnect("127.0.0.2", port))
    XCTAssertEqual(Set(try t.portals()), ["127.0.0.1:\(port)", "127.0.0.3:\(port)"])

    // A second LUN with its own block size and thin provisioning, target parameters, offline.
    try t.addLUN(tid: 1, lun: 2, sizeMiB: 8, blockSize: 4096, thin: true)
    try t.setParameter(tid: 1, name: "MaxBurstLength", value: "131072")
    var show = try t.tgtadm(["--op", "show", "--mode", "target"])
    XCTAssertTrue(show.contains("Block size: 4096") && show.contains("Thin-provisioning: Yes"), show)
    XCTAssertTrue(try t.tgtadm(["--op", "show", "--mode", "target", "--tid", "1"]).contains("MaxBurstLength=131072"))
    try t.setLUNOnline(tid: 1, lun: 2, online: false)
    show = try t.tgtadm(["--op", "show", "--mode", "target"])
    XCTAssertTrue(show.contains("Online: No"), show)
    try t.setLUNOnline(tid: 1, lun: 2, online: true)

    // A client's connection is listed and cut: deleteAllConnections removes every
    // connection it found, checked on the target (iscsi-perf logs in again at once, as a
    // new session, which shows the client saw the cut).
    let perf = Process()
    perf.executableURL = URL(fileURLWithPath: try tool("iscsi-perf"))
    perf.arguments = ["-m", "1", "-b", "1", "-x", "0", "iscsi://127.0.0.1:\(port)/\(iqn)/1"]
    perf.standardOutput = FileHandle.nullDevice
    perf.standardError = FileHandle.nullDevice
    try perf.run()
    defer {
      if perf.isRunning { Glibc.kill(perf.processIdentifier, SIGKILL) }
      perf.waitUntilExit()
    }
    var conns: [(sid: Int, cid: Int)] = []
    try waitUntil(10, "iscsi-perf's connection to show up") {
      conns = try t.connections(tid: 1)
      return !conns.isEmpty
    }
    XCTAssertEqual(try t.connectionDetails(tid: 1).first?.initiator, "iqn.2010-11.libiscsi:iscsi-perf")
    try t.deleteAllConnections(tid: 1)
    let cut = Set(conns.map(\.sid))
    var after: [(sid: Int, cid: Int)] = []
    try waitUntil(10, "iscsi-perf back in a new session, none of \(conns) left") {
      after = try t.connections(tid: 1)
      return !after.isEmpty && after.allSatisfy { !cut.contains($0.sid) }
    }
    XCTAssertTrue(after.allSatisfy { !cut.contains($0.sid) }, "before \(conns), after \(after)")
    XCTAssertThrowsError(try t.deleteConnection(tid: 1, sid: conns[0].sid, cid: conns[0].cid))

    // CHAP: refused without credentials, accepted with them.
    try t.addAccount(user: "lbuser", password: "lbsecret12345")
    try t.bindAccount(tid: 1, user: "lbuser")
    let url = "127.0.0.1:\(port)/\(iqn)/1"
    let anonymous = try run("iscsi-inq", ["iscsi://" + url])
    XCTAssertTrue((anonymous.stdout + anonymous.stderr).contains("Authentication failure"), anonymous.stdout + anonymous.stderr)
    XCTAssertEqual(try run("iscsi-inq", ["iscsi://lbuser%lbsecret12345@" + url]).status, 0)

    // Paused, tgtd answers nothing; resumed, it does.
    try t.pause()
    waitUntil(5, "tgtd to be stopped (state T)") { Self.state(of: pid) == "T" }
    t.tgtadmTimeout = 1
    XCTAssertThrowsError(try t.tgtadm(["--op", "show", "--mode", "target"]))
    t.tgtadmTimeout = 10
    try t.resume()
    XCTAssertTrue(try t.tgtadm(["--op", "show", "--mode", "target"]).contains(iqn))

    // Killed, the port stops answering; restarted on the same port, the configuration is gone.
    t.kill()
    XCTAssertFalse(FileManager.default.fileExists(atPath: "/proc/\(pid)"))
    XCTAssertFalse(TGTD.canConnect("127.0.0.1", port))
    try t.restart()
    XCTAssertEqual(t.port, port)
    XCTAssertFalse(try t.tgtadm(["--op", "show", "--mode", "target"]).contains(iqn))
    guard let pid2 = t.pid else { return XCTFail("tgtd not running after restart") }

    // Stopped (even paused): no process, no control port, no files, no listener.
    try t.pause()
    t.stop()
    XCTAssertFalse(FileManager.default.fileExists(atPath: "/proc/\(pid2)"), "tgtd \(pid2) still exists")
    XCTAssertEqual(Self.processes(withArgument: "\(t.controlPort)").filter { $0.contains("tgtd") }, [])
    XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "\(dir) not removed")
    XCTAssertFalse(TGTD.controlPortInUse(cp))
    XCTAssertFalse(TGTD.canConnect("127.0.0.1", port), "port \(port) still accepts")

    XCTAssertTrue((10000...32767).contains(cp), "control port \(cp)")  // tgtd refuses above 32767

    // Tests/lib/tgtd.sh's own target (demo, bench, VM suites) starts and stops too.
    try privateTgtdScript()
  }

  /// Tests/lib/tgtd.sh start/stop with its LUN: the URL it prints answers, nothing is left.
  private func privateTgtdScript() throws {
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent("lib/tgtd.sh").path
    let dir = FileManager.default.temporaryDirectory
      .appendingPathComponent("tgtd-private-\(getpid())").path
    defer { try? FileManager.default.removeItem(atPath: dir) }
    setenv("TGTD_LUN_SIZE_MIB", "8", 1)
    setenv("TGTD_IQN", iqn, 1)
    defer {
      unsetenv("TGTD_LUN_SIZE_MIB")
      unsetenv("TGTD_IQN")
    }
    let start = try Command.run("/bin/bash", [script, "start", dir], timeout: 30)
    func read(_ name: String) -> String {
      ((try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)) ?? "")
        .trimmingCharacters(in: .whitespacesAndNewlines)
    }
    let pid = read("pid")
    defer { _ = try? Command.run("/bin/bash", [script, "stop", dir], timeout: 30) }
    XCTAssertEqual(start.status, 0, start.stdout + start.stderr)
    guard let port = Int(read("port")), Int32(pid) != nil else {
      return XCTFail("missing port/pid files in \(dir): \(start.stderr)")
    }
    XCTAssertEqual(start.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "iscsi://127.0.0.1:\(port)/\(iqn)/1")
    let inq = try run("iscsi-inq", ["iscsi://127.0.0.1:\(port)/\(iqn)/1"])
    XCTAssertEqual(inq.status, 0, inq.stdout + inq.stderr)
    let stop = try Command.run("/bin/bash", [script, "stop", dir], timeout: 30)
    XCTAssertEqual(stop.status, 0, stop.stdout + stop.stderr)
    XCTAssertFalse(FileManager.default.fileExists(atPath: "/proc/\(pid)"), "tgtd \(pid) left running")
    XCTAssertFalse(TGTD.canConnect("127.0.0.1", port))
  }

  // MARK: - helpers

  /// Command lines (NUL-separated args joined by spaces) of processes having `arg` as an argument.
  static func processes(withArgument arg: String) -> [String] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { e -> String? in
      guard Int(e) != nil,
        let data = FileManager.default.contents(atPath: "/proc/\(e)/cmdline"), !data.isEmpty
      else { return nil }
      let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
      return args.contains(arg) ? args.joined(separator: " ") : nil
    }
  }

  /// Process state letter from /proc/PID/stat (R, S, T, Z, ...).
  static func state(of pid: Int32) -> String? {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = s.lastIndex(of: ")")
    else { return nil }
    return s[s.index(close, offsetBy: 2)...].split(separator: " ").first.map(String.init)
  }
}
