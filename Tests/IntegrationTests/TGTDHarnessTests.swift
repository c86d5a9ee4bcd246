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

  func testStartDiscoverAndInquiry() throws {
    let t = try startWithLUN()
    defer { t.stop() }
    XCTAssertGreaterThan(t.port, 0)
    XCTAssertEqual(t.addresses, ["127.0.0.1"])
    XCTAssertEqual(try t.portals(), ["127.0.0.1:\(t.port)"])

    let show = try t.tgtadm(["--op", "show", "--mode", "target"])
    XCTAssertTrue(show.contains("Target 1: \(iqn)"), show)
    XCTAssertTrue(show.contains("Backing store path: \(t.tempDir)/t1-lun1.img"), show)
    XCTAssertTrue(t.tempDir.hasPrefix("/dev/shm/"))

    let ls = try run("iscsi-ls", ["-s", "iscsi://127.0.0.1:\(t.port)"])
    XCTAssertEqual(ls.status, 0, ls.stderr)
    XCTAssertTrue(ls.stdout.contains("Target:\(iqn) Portal:127.0.0.1:\(t.port)"), ls.stdout)
    XCTAssertTrue(ls.stdout.contains("Lun:1") && ls.stdout.contains("DIRECT_ACCESS"), ls.stdout)

    let inq = try run("iscsi-inq", ["iscsi://127.0.0.1:\(t.port)/\(iqn)/1"])
    XCTAssertEqual(inq.status, 0, inq.stdout + inq.stderr)
    XCTAssertTrue(inq.stdout.contains("Peripheral Device Type:DIRECT_ACCESS"), inq.stdout)
    XCTAssertTrue(inq.stdout.contains("Product:VIRTUAL-DISK"), inq.stdout)
  }

  func testCHAPRefusesWithoutCredentialsAndAcceptsWithThem() throws {
    let t = try startWithLUN()
    defer { t.stop() }
    try t.addAccount(user: "lbuser", password: "lbsecret12345")
    try t.bindAccount(tid: 1, user: "lbuser")
    XCTAssertTrue(try t.tgtadm(["--op", "show", "--mode", "account"]).contains("lbuser"))

    let url = "127.0.0.1:\(t.port)/\(iqn)/1"
    let anonymous = try run("iscsi-inq", ["iscsi://" + url])
    XCTAssertNotEqual(anonymous.status, 0, "login without CHAP must fail")
    XCTAssertTrue(
      (anonymous.stdout + anonymous.stderr).contains("Authentication failure"),
      anonymous.stdout + anonymous.stderr)

    let wrong = try run("iscsi-inq", ["iscsi://lbuser%wrongpassword1@" + url])
    XCTAssertNotEqual(wrong.status, 0, "login with a wrong CHAP secret must fail")

    let good = try run("iscsi-inq", ["iscsi://lbuser%lbsecret12345@" + url])
    XCTAssertEqual(good.status, 0, good.stdout + good.stderr)
    XCTAssertTrue(good.stdout.contains("Product:VIRTUAL-DISK"), good.stdout)
  }

  func testListAndDeleteConnectionOfRunningClient() throws {
    let t = try startWithLUN()
    defer { t.stop() }
    XCTAssertTrue(try t.connections(tid: 1).isEmpty)

    // iscsi-perf runs until SIGINT and holds one connection; -x 0: no reconnect.
    let perf = Process()
    perf.executableURL = URL(fileURLWithPath: try tool("iscsi-perf"))
    perf.arguments = ["-m", "1", "-b", "1", "-x", "0", "iscsi://127.0.0.1:\(t.port)/\(iqn)/1"]
    perf.standardOutput = FileHandle.nullDevice
    perf.standardError = FileHandle.nullDevice
    try perf.run()
    defer {
      if perf.isRunning { kill(perf.processIdentifier, SIGKILL) }
      perf.waitUntilExit()
    }

    var conns: [(sid: Int, cid: Int)] = []
    try waitUntil(10, "iscsi-perf's connection to show up") {
      conns = try t.connections(tid: 1)
      return !conns.isEmpty
    }
    XCTAssertEqual(conns.count, 1)
    let details = try t.connectionDetails(tid: 1)
    XCTAssertEqual(details.first?.initiator, "iqn.2010-11.libiscsi:iscsi-perf")
    XCTAssertEqual(details.first?.address, "127.0.0.1")
    guard let c = conns.first else { return }

    try t.deleteConnection(tid: 1, sid: c.sid, cid: c.cid)
    try waitUntil(10, "connection \(c) to disappear") {
      try !t.connections(tid: 1).contains { $0.sid == c.sid && $0.cid == c.cid }
    }
    // Whether or not iscsi-perf logs in again, deleteAllConnections leaves none.
    try waitUntil(10, "all connections gone after deleteAllConnections") {
      try t.deleteAllConnections(tid: 1)
      usleep(200_000)
      return try t.connections(tid: 1).isEmpty || !perf.isRunning
    }
    XCTAssertThrowsError(try t.deleteConnection(tid: 1, sid: c.sid, cid: c.cid)) {
      XCTAssertTrue("\($0)".contains("tgtadm"), "\($0)")
    }
  }

  /// Output captured from this machine's tgt 1.0.85 with libiscsi sessions logged in.
  func testParseConnectionsOfCapturedOutput() {
    let conn = """
      Session: 3
          Connection: 0
              Initiator: iqn.2010-11.libiscsi:iscsi-perf
              IP Address: 127.0.0.1
      Session: 7
          Connection: 0
              Initiator: iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq
              IP Address: ::1
          Connection: 1
              Initiator: iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq
              IP Address: 127.0.0.2

      """
    let parsed = TGTD.parseConnections(conn)
    XCTAssertEqual(parsed.map { [$0.sid, $0.cid] }, [[3, 0], [7, 0], [7, 1]])
    XCTAssertEqual(parsed[0].initiator, "iqn.2010-11.libiscsi:iscsi-perf")
    XCTAssertEqual(parsed[1].address, "::1")
    XCTAssertEqual(parsed[2].address, "127.0.0.2")
    XCTAssertTrue(TGTD.parseConnections("").isEmpty)

    let target = """
      Target 1: iqn.2024-01.test:t1
          System information:
              Driver: iscsi
              State: ready
          I_T nexus information:
              I_T nexus: 3
                  Initiator: iqn.2010-11.libiscsi:iscsi-perf alias: none
                  Connection: 0
                      IP Address: 127.0.0.1
          LUN information:
              LUN: 0
      """
    let fromTarget = TGTD.parseConnections(target)
    XCTAssertEqual(fromTarget.map { [$0.sid, $0.cid] }, [[3, 0]])
    XCTAssertEqual(fromTarget.first?.address, "127.0.0.1")
    XCTAssertEqual(TGTD.parseTids(target), [1])
    XCTAssertEqual(
      TGTD.parsePortals("Portal: [::1]:3260,1\nPortal: 127.0.0.1:3260,1\n"),
      ["[::1]:3260", "127.0.0.1:3260"])
  }

  func testStopLeavesNoProcessAndNoTempDir() throws {
    let t = try startWithLUN()
    guard let pid = t.pid else { return XCTFail("tgtd not running after init") }
    let dir = t.tempDir
    let cp = t.controlPort
    XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/t1-lun1.img"))
    XCTAssertTrue(TGTD.controlPortInUse(cp))

    t.stop()
    XCTAssertNil(t.pid)
    XCTAssertFalse(FileManager.default.fileExists(atPath: "/proc/\(pid)"), "tgtd \(pid) still exists")
    XCTAssertEqual(Self.processes(withArgument: "\(cp)").filter { $0.contains("tgtd") }, [])
    XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "\(dir) not removed")
    XCTAssertFalse(TGTD.controlPortInUse(cp))
    XCTAssertFalse(FileManager.default.fileExists(atPath: "/var/run/tgtd/socket.\(cp)"))
    XCTAssertFalse(TGTD.canConnect("127.0.0.1", t.port), "port \(t.port) still accepts")
    t.stop()  // idempotent
  }

  func testDeinitStopsTgtd() throws {
    var pid: Int32 = 0
    var dir = ""
    do {
      let t = try TGTD()
      pid = t.pid ?? 0
      dir = t.tempDir
    }
    XCTAssertNotEqual(pid, 0)
    XCTAssertFalse(FileManager.default.fileExists(atPath: "/proc/\(pid)"), "deinit left tgtd \(pid)")
    XCTAssertFalse(FileManager.default.fileExists(atPath: dir))
  }

  func testPauseResumeAndStopWhilePaused() throws {
    let t = try startWithLUN()
    guard let pid = t.pid else { return XCTFail("tgtd not running") }
    try t.pause()
    waitUntil(5, "tgtd to be stopped (state T)") { Self.state(of: pid) == "T" }
    t.tgtadmTimeout = 1
    XCTAssertThrowsError(try t.tgtadm(["--op", "show", "--mode", "target"])) {
      XCTAssertTrue("\($0)".contains("timed out"), "\($0)")
    }
    t.tgtadmTimeout = 10
    try t.resume()
    waitUntil(5, "tgtd to run again") { Self.state(of: pid) != "T" }
    XCTAssertTrue(try t.tgtadm(["--op", "show", "--mode", "target"]).contains(iqn))
    try t.pause()
    t.stop()
    XCTAssertFalse(FileManager.default.fileExists(atPath: "/proc/\(pid)"))
  }

  func testKillAndRestartLosesConfiguration() throws {
    let t = try startWithLUN()
    defer { t.stop() }
    guard let pid = t.pid else { return XCTFail("tgtd not running") }
    let port = t.port
    // A client holding a connection while tgtd dies: the port must still be reusable.
    let perf = Process()
    perf.executableURL = URL(fileURLWithPath: try tool("iscsi-perf"))
    perf.arguments = ["-m", "1", "-b", "1", "-x", "0", "iscsi://127.0.0.1:\(port)/\(iqn)/1"]
    perf.standardOutput = FileHandle.nullDevice
    perf.standardError = FileHandle.nullDevice
    try perf.run()
    defer {
      if perf.isRunning { kill(perf.processIdentifier, SIGKILL) }
      perf.waitUntilExit()
    }
    try waitUntil(10, "iscsi-perf's connection") { try !t.connections(tid: 1).isEmpty }
    t.kill()
    XCTAssertNil(t.pid)
    XCTAssertFalse(FileManager.default.fileExists(atPath: "/proc/\(pid)"))
    XCTAssertFalse(TGTD.canConnect("127.0.0.1", port))

    try t.restart()
    XCTAssertEqual(t.port, port)
    XCTAssertNotNil(t.pid)
    XCTAssertFalse(try t.tgtadm(["--op", "show", "--mode", "target"]).contains(iqn))
    try t.addTarget(tid: 1, iqn: iqn)
    try t.addLUN(tid: 1, lun: 1, sizeMiB: 16)
    try t.bindAll(tid: 1)
    let inq = try run("iscsi-inq", ["iscsi://127.0.0.1:\(port)/\(iqn)/1"])
    XCTAssertEqual(inq.status, 0, inq.stdout + inq.stderr)
  }

  func testMultiplePortalsAddAndRemove() throws {
    let t = try startWithLUN(portals: ["127.0.0.1", "127.0.0.2"])
    defer { t.stop() }
    XCTAssertEqual(Set(try t.portals()), ["127.0.0.1:\(t.port)", "127.0.0.2:\(t.port)"])
    let ls = try run("iscsi-ls", ["-s", "iscsi://127.0.0.2:\(t.port)"])
    XCTAssertEqual(ls.status, 0, ls.stderr)
    XCTAssertTrue(ls.stdout.contains(iqn), ls.stdout)

    try t.addPortal("127.0.0.3")
    XCTAssertTrue(TGTD.canConnect("127.0.0.3", t.port))
    XCTAssertEqual(t.addresses, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    try t.removePortal("127.0.0.2")
    XCTAssertFalse(TGTD.canConnect("127.0.0.2", t.port))
    XCTAssertEqual(Set(try t.portals()), ["127.0.0.1:\(t.port)", "127.0.0.3:\(t.port)"])
    XCTAssertThrowsError(try t.addPortal("192.0.2.1"))

    if TGTD.ipv6LoopbackUsable() {
      try t.addPortal("::1")
      let inq = try run("iscsi-inq", ["iscsi://[::1]:\(t.port)/\(iqn)/1"])
      XCTAssertEqual(inq.status, 0, inq.stdout + inq.stderr)
    }
  }

  func testParametersBlockSizeThinAndOnline() throws {
    let t = try TGTD()
    defer { t.stop() }
    try t.addTarget(tid: 1, iqn: iqn)
    let path = try t.addLUN(tid: 1, lun: 1, sizeMiB: 8, blockSize: 4096, thin: true)
    XCTAssertEqual(
      (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue,
      8 << 20)
    try t.bindAll(tid: 1)
    try t.setParameter(tid: 1, name: "HeaderDigest", value: "CRC32C")
    try t.setParameter(tid: 1, name: "MaxBurstLength", value: "131072")
    let params = try t.tgtadm(["--op", "show", "--mode", "target", "--tid", "1"])
    XCTAssertTrue(params.contains("HeaderDigest=CRC32C"), params)
    XCTAssertTrue(params.contains("MaxBurstLength=131072"), params)

    var show = try t.tgtadm(["--op", "show", "--mode", "target"])
    XCTAssertTrue(show.contains("Block size: 4096"), show)
    XCTAssertTrue(show.contains("Thin-provisioning: Yes"), show)

    try t.setLUNOnline(tid: 1, lun: 1, online: false)
    show = try t.tgtadm(["--op", "show", "--mode", "target"])
    XCTAssertTrue(show.contains("Online: No"), show)
    let offline = try run("iscsi-inq", ["iscsi://127.0.0.1:\(t.port)/\(iqn)/1"])
    XCTAssertNotEqual(offline.status, 0, "an offline LUN must not be usable")
    try t.setLUNOnline(tid: 1, lun: 1, online: true)
    XCTAssertFalse(try t.tgtadm(["--op", "show", "--mode", "target"]).contains("Online: No"))

    XCTAssertThrowsError(try t.setParameter(tid: 9, name: "HeaderDigest", value: "CRC32C")) {
      XCTAssertTrue("\($0)".contains("can't find the target"), "\($0)")
    }
  }

  func testMissingToolsNameThePackage() {
    XCTAssertThrowsError(
      try Command.locate("tgtd", hint: TGTD.packageHint, path: "/nonexistent")
    ) {
      XCTAssertTrue("\($0)".contains("install the Debian package tgt (make deps)"), "\($0)")
    }
    XCTAssertThrowsError(try TGTD(portals: ["10.0.0.1"]))
    // On this machine the real tools must be there: fail (not skip) otherwise.
    XCTAssertNoThrow(try Command.locate("tgtd", hint: TGTD.packageHint))
    XCTAssertNoThrow(try Command.locate("tgtadm", hint: TGTD.packageHint))
    for name in ["iscsi-ls", "iscsi-inq", "iscsi-perf"] {
      XCTAssertNoThrow(try tool(name))
    }
  }

  func testControlPortsStayInTgtdsRange() throws {
    for _ in 0..<200 {
      let cp = try TGTD.freeControlPort()
      XCTAssertTrue((1024...32767).contains(cp), "control port \(cp)")
    }
  }

  /// Tests/scripts/tgtd-private.sh (used by `make demo` / `make bench`) start/stop.
  func testPrivateTgtdScript() throws {
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent("scripts/tgtd-private.sh").path
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
    XCTAssertEqual(read("iqn"), iqn)
    guard let port = Int(read("port")), Int(read("cp")) != nil, Int32(pid) != nil else {
      return XCTFail("missing port/cp/pid files in \(dir): \(start.stderr)")
    }
    XCTAssertEqual(start.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
                   "iscsi://127.0.0.1:\(port)/\(iqn)/1")
    let ls = try run("iscsi-ls", ["-s", "iscsi://127.0.0.1:\(port)"])
    XCTAssertTrue(
      ls.stdout.contains("Target:\(iqn)") && ls.stdout.contains("DIRECT_ACCESS"),
      "status \(ls.status) stdout: \(ls.stdout) stderr: \(ls.stderr)")

    let stop = try Command.run("/bin/bash", [script, "stop", dir], timeout: 30)
    XCTAssertEqual(stop.status, 0, stop.stdout + stop.stderr)
    XCTAssertFalse(FileManager.default.fileExists(atPath: "/proc/\(pid)"), "tgtd \(pid) left running")
    XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/pid"))
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

extension TGTD {
  /// True if ::1 exists here (some containers have no IPv6 loopback).
  static func ipv6LoopbackUsable() -> Bool {
    (try? freePort(on: ["::1"])) != nil
  }
}
