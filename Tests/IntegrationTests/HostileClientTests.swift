import Foundation
import XCTest

/// `lunbridge serve` (the built binary, against a real tgtd) under NBD clients that
/// misbehave on purpose (Tests/scripts/nbd-hostile-client.py): one that pipelines huge
/// reads and never reads the replies, and a flood of connections that never finish the
/// handshake. The server's memory stays bounded, a well-behaved client keeps working,
/// `lunbridge status` answers, and the iSCSI path still recovers.
final class HostileClientTests: XCTestCase {
  static let iqn = "iqn.2026-11.org.lunbridge.test:hostile-client"
  var tgtd: TGTD!
  var serve: Process?
  var scratch: String!
  var volumeName: String!
  var socket: String { scratch + "/nbd.sock" }
  var uri: String { "nbd+unix:///?socket=\(socket)" }
  var repo: URL { CommandLineTools.repo }
  var lunbridge: String { CommandLineTools.lunbridge }
  var script: String { repo.appendingPathComponent("Tests/scripts/nbd-hostile-client.py").path }
  let python = CommandLineTools.python

  override func setUp() async throws {
    try CommandLineTools.require()
    tgtd = try TGTD()
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 64)
    try tgtd.bindAll(tid: 1)
    scratch = "/dev/shm/lunbridge-hostile-client-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    volumeName = "hostile-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
  }

  override func tearDown() async throws {
    if let serve, serve.isRunning {
      serve.terminate()
      for _ in 0..<100 where serve.isRunning { usleep(100_000) }
      if serve.isRunning { kill(serve.processIdentifier, SIGKILL) }
    }
    tgtd?.stop()
    if let scratch { try? FileManager.default.removeItem(atPath: scratch) }
    // A serve killed with SIGKILL cannot remove its control socket: the test does.
    if let volumeName, let control = try? ControlPath.of(volumeName) { unlink(control) }
  }

  /// Starts `lunbridge serve` with its log in the scratch folder; waits for the socket.
  func startServe(_ extra: [String] = []) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: lunbridge)
    p.arguments =
      ["serve", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1", "--listen", "unix:\(socket)", "--name", volumeName] + extra
    _ = FileManager.default.createFile(atPath: scratch + "/serve.log", contents: nil)
    let log = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch + "/serve.log"))
    p.standardOutput = log
    p.standardError = log
    p.standardInput = FileHandle.nullDevice
    try p.run()
    serve = p
    for _ in 0..<300 {
      if FileManager.default.fileExists(atPath: socket) { return p }
      guard p.isRunning else { break }
      usleep(100_000)
    }
    throw TGTDError("serve did not start: \(serveLog())")
  }

  func serveLog() -> String { (try? String(contentsOfFile: scratch + "/serve.log", encoding: .utf8)) ?? "" }

  /// Resident set size of a process in bytes (VmRSS).
  func rss(_ pid: Int32) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
      let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
    else { return 0 }
    return (Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) * 1024
  }

  /// `lunbridge status NAME --json`, decoded; nil when it did not answer.
  func status() -> [String: Any]? {
    guard let r = try? Command.run(lunbridge, ["status", volumeName, "--json"], timeout: 10), r.status == 0,
      let array = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]]
    else { return nil }
    return array.first
  }

  /// A child process with its output in a file (for the ones that run alongside).
  func spawn(_ args: [String], output: String) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = [script] + args
    _ = FileManager.default.createFile(atPath: output, contents: nil)
    let h = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
    p.standardOutput = h
    p.standardError = h
    p.standardInput = FileHandle.nullDevice
    try p.run()
    return p
  }

  func wait(_ p: Process, seconds: Int) {
    for _ in 0..<(seconds * 10) where p.isRunning { usleep(100_000) }
    if p.isRunning { kill(p.processIdentifier, SIGKILL) }
  }

  func testGreedyPipeliningClientIsHeldToItsBoundsAndOthersKeepWorking() throws {
    let server = try startServe()
    let before = rss(server.processIdentifier)
    // 2,000 reads of 32 MiB (64 GB asked for), replies never read, held for 20 s.
    let greedy = try spawn(["greedy", socket, "2000", String(32 << 20), "20"], output: scratch + "/greedy.out")
    usleep(1_000_000)
    // Meanwhile a well-behaved client's 4 KiB reads, and the server's memory every 0.2 s.
    let goodOut = scratch + "/good.out"
    let good = try spawn(["latency", uri, "12"], output: goodOut)
    var peak = 0
    while good.isRunning {
      peak = max(peak, rss(server.processIdentifier))
      usleep(200_000)
    }
    let goodResult = (try? String(contentsOfFile: goodOut, encoding: .utf8)) ?? ""
    let during = status()
    wait(greedy, seconds: 30)
    let greedyResult = (try? String(contentsOfFile: scratch + "/greedy.out", encoding: .utf8)) ?? ""
    print(
      "greedy client: \(greedyResult.trimmingCharacters(in: .whitespacesAndNewlines)); good client: \(goodResult.trimmingCharacters(in: .whitespacesAndNewlines)); server RSS \(before >> 20) MiB before, peak \(peak >> 20) MiB"
    )

    XCTAssertTrue(greedyResult.hasPrefix("sent 2000"), "the greedy client could not even send: \(greedyResult)")
    XCTAssertLessThan(peak, 256 << 20, "server RSS peaked at \(peak >> 20) MiB")
    let fields = goodResult.split(separator: " ").map(String.init)
    func field(_ key: String) -> Double? {
      guard let i = fields.firstIndex(of: key), i + 1 < fields.count else { return nil }
      return Double(fields[i + 1].trimmingCharacters(in: .whitespacesAndNewlines))
    }
    let p99 = try XCTUnwrap(field("p99"), "good client: \(goodResult)")
    XCTAssertLessThan(p99, 1.0, "good client's 4 KiB read p99 while the greedy one holds its bounds")
    XCTAssertEqual(field("errors"), 0, goodResult)
    XCTAssertGreaterThan(field("reads") ?? 0, 100, goodResult)

    // The greedy client got a couple of reads started, not 2,000; once it has gone,
    // nothing more of it runs, and the path was never failed over for it.
    let s = try XCTUnwrap(status(), "status did not answer: \(serveLog())")
    let reads1 = ((s["requests"] as? [String: Any])?["reads"] as? Int) ?? -1
    usleep(2_000_000)
    let reads2 = ((status()?["requests"] as? [String: Any])?["reads"] as? Int) ?? -2
    XCTAssertEqual(reads1, reads2, "reads kept running after the greedy client left")
    let goodReads = Int(field("reads") ?? 0)
    XCTAssertLessThan(reads2 - goodReads, 10, "the greedy client had \(reads2 - goodReads) reads run")
    let paths = try XCTUnwrap(s["paths"] as? [[String: Any]])
    XCTAssertEqual(paths.first?["failures"] as? Int, 0, "the path was failed: \(paths)")
    let flow = try XCTUnwrap((during ?? s)["flow"] as? [String: Any], "no flow counters in status")
    XCTAssertGreaterThan(flow["paused"] as? Int ?? 0, 0, "the greedy connection was never paused")
    XCTAssertTrue(server.isRunning, serveLog())
  }

  /// Sixteen connections each send a 16 MiB write but its last byte and wait. A payload
  /// that is still arriving holds memory, so its bytes count against the volume's bound
  /// from its header on: with `--max-inflight-mib 64` four are taken in, the rest are not
  /// read until room comes back (not 256 MiB of payloads held), and closing them gives the
  /// room back.
  func testWritesWhosePayloadNeverEndsAreHeldToTheVolumesBound() throws {
    let server = try startServe(["--max-inflight-mib", "64"])
    let before = rss(server.processIdentifier)
    let clients = try spawn(["partial", socket, "16", String(16 << 20), "8"], output: scratch + "/partial.out")
    var peak = 0
    var during: [String: Any]?
    var samples = 0
    while clients.isRunning {
      peak = max(peak, rss(server.processIdentifier))
      samples += 1
      if samples == 25 { during = status() }  // 5 s in: every connection has sent what it could
      usleep(200_000)
    }
    let result = (try? String(contentsOfFile: scratch + "/partial.out", encoding: .utf8)) ?? ""
    print(
      "partial writes: \(result.trimmingCharacters(in: .whitespacesAndNewlines)); server RSS \(before >> 20) MiB before, peak \(peak >> 20) MiB"
    )
    XCTAssertTrue(result.hasPrefix("connections 16"), "the clients did not run: \(result) \(serveLog())")
    let flow = try XCTUnwrap(during?["flow"] as? [String: Any], "status did not answer: \(serveLog())")
    let held = try XCTUnwrap(flow["bytesInFlight"] as? Int, "\(flow)")
    XCTAssertGreaterThanOrEqual(held, 32 << 20, "the partial writes were not counted: \(flow)")
    XCTAssertLessThanOrEqual(held, 64 << 20, "more than the volume's bound taken in: \(flow)")
    XCTAssertGreaterThan(flow["paused"] as? Int ?? 0, 0, "no connection was paused: \(flow)")
    XCTAssertLessThan(peak - before, 112 << 20, "server RSS grew by \((peak - before) >> 20) MiB")
    // Gone: their room is given back.
    var after = -1
    for _ in 0..<50 {
      after = (status()?["flow"] as? [String: Any])?["bytesInFlight"] as? Int ?? -1
      if after == 0 { break }
      usleep(100_000)
    }
    XCTAssertEqual(after, 0, "bytes still counted after the clients left")
    let r = try Command.run(python, [script, "latency", uri, "1"], timeout: 30)
    XCTAssertTrue(r.stdout.hasPrefix("reads") && r.stdout.contains("errors 0"), r.stdout + r.stderr)
    XCTAssertTrue(server.isRunning, serveLog())
  }

  func testConnectionFloodDoesNotLockOutClientsStatusOrPathRecovery() throws {
    let server = try startServe()
    // 2 x 10,000 connections (this machine allows 20,000 descriptors a process) that
    // never answer the handshake, held for 25 s.
    let floods = try (0..<2).map { try spawn(["flood", socket, "10000", "25"], output: scratch + "/flood\($0).out") }
    // Wait until both have opened all of theirs.
    for i in 0..<2 {
      for _ in 0..<300 {
        if let t = try? String(contentsOfFile: scratch + "/flood\(i).out", encoding: .utf8), t.hasPrefix("opened") { break }
        usleep(100_000)
      }
    }
    let flooded = (0..<2).map { (try? String(contentsOfFile: scratch + "/flood\($0).out", encoding: .utf8)) ?? "" }
    print("flood: \(flooded.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })")
    XCTAssertTrue(flooded.allSatisfy { $0.hasPrefix("opened") }, "the flood did not run: \(flooded)")

    // status answers during the flood.
    let s = try XCTUnwrap(status(), "status did not answer during the flood: \(serveLog())")
    let flow = try XCTUnwrap(s["flow"] as? [String: Any])
    XCTAssertGreaterThan(flow["refusedConnections"] as? Int ?? 0, 10_000, "\(flow)")

    // A path cut during the flood comes back (it needs a descriptor to reconnect).
    try tgtd.deleteAllConnections(tid: 1)
    var reinstated = false
    for _ in 0..<100 {
      if let paths = status()?["paths"] as? [[String: Any]], let p = paths.first,
        (p["reinstatements"] as? Int ?? 0) >= 1, p["state"] as? String == "active"
      {
        reinstated = true
        break
      }
      usleep(200_000)
    }
    XCTAssertTrue(reinstated, "the path was not reinstated during the flood: \(status() ?? [:])")

    // After the handshake timeout (10 s) the slots the flood held are free again: a good
    // client connects and reads while the flood still holds its sockets.
    usleep(11_000_000)
    let r = try Command.run(python, [script, "latency", uri, "2"], timeout: 30)
    XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    XCTAssertTrue(r.stdout.hasPrefix("reads") && r.stdout.contains("errors 0"), r.stdout + r.stderr)
    let after = try XCTUnwrap(status()?["flow"] as? [String: Any])
    XCTAssertGreaterThanOrEqual(after["handshakeTimeouts"] as? Int ?? 0, 64, "\(after)")
    for f in floods { wait(f, seconds: 30) }
    XCTAssertTrue(server.isRunning, serveLog())
    let lines = serveLog().split(separator: "\n").count
    XCTAssertLessThan(lines, 200, "one log line per bad connection? \(lines) lines")
  }

  /// `serve ... 2>&1 | head -1`: the reader of its stderr exits after one line. The next
  /// log lines (here: a connection cut by tgtadm, logged verbosely) must not kill it; the
  /// export keeps working, the path comes back, and its memory is locked (in one malloc
  /// arena).
  func testServeOutlivesTheReaderOfItsStderr() throws {
    let headOut = scratch + "/head.out"
    // SIGPIPE back to its default action, as from a login shell (this test process may
    // ignore it, and an ignored signal stays ignored across exec).
    let command =
      "env --default-signal=PIPE '\(lunbridge)' serve iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1 --listen unix:\(socket) --name \(volumeName!) --verbose 2>&1 | head -1 > \(headOut)"
    let shell = Process()
    shell.executableURL = URL(fileURLWithPath: "/bin/sh")
    shell.arguments = ["-c", command]
    shell.standardInput = FileHandle.nullDevice
    try shell.run()
    defer {
      // The pattern must not start with '-', or pkill takes it for an option.
      _ = try? Command.run("/usr/bin/pkill", ["-KILL", "-f", "lunbridge serve .*--name \(volumeName!)"])
      wait(shell, seconds: 5)
    }
    var headDone = false
    for _ in 0..<300 {
      if FileManager.default.fileExists(atPath: socket),
        let t = try? String(contentsOfFile: headOut, encoding: .utf8), !t.isEmpty
      {
        headDone = true
        break
      }
      usleep(100_000)
    }
    XCTAssertTrue(headDone, "serve did not start or head read nothing")
    usleep(500_000)
    let pgrep = try Command.run("/usr/bin/pgrep", ["-f", "lunbridge serve .*--name \(volumeName!)"])
    let pid = try XCTUnwrap(Int32(pgrep.stdout.split(separator: "\n").first ?? ""), "no serve process: \(pgrep)")

    try tgtd.deleteAllConnections(tid: 1)
    var back = false
    for _ in 0..<100 {
      if let p = (status()?["paths"] as? [[String: Any]])?.first, (p["reinstatements"] as? Int ?? 0) >= 1,
        p["state"] as? String == "active"
      {
        back = true
        break
      }
      usleep(200_000)
    }
    XCTAssertTrue(back, "the path did not come back (or serve died): \(status() ?? [:])")
    XCTAssertEqual(kill(pid, 0), 0, "serve died once its stderr reader had gone")
    let pattern = repo.appendingPathComponent("Tests/scripts/nbd-pattern.py").path
    let w = try Command.run(python, [pattern, uri, "write", "0", "1048576", "head"], timeout: 60)
    let r = try Command.run(python, [pattern, uri, "check", "0", "1048576", "head"], timeout: 60)
    XCTAssertEqual(w.stdout + r.stdout, "ok\nok\n", w.stderr + r.stderr)
    // Locked memory (mlockall, MCL_ONFAULT: what it has used so far).
    let procStatus = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let vmlck = procStatus.split(separator: "\n").first { $0.hasPrefix("VmLck:") }.map(String.init) ?? "none"
    let kb = Int(vmlck.split(separator: " ").dropFirst().first ?? "0") ?? 0
    XCTAssertGreaterThan(kb, 1024, "memory not locked: \(vmlck)")
    // Its threads share one malloc arena: a thread's own could never give pages back
    // while memory is locked.
    let maps = try String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)
    XCTAssertEqual(Self.threadArenas(maps: maps), [], "malloc arenas of their own for serve's threads")
  }

  /// glibc's thread arenas in a /proc/PID/maps text: each is a 64 MiB reservation aligned
  /// on 64 MiB, an anonymous read-write part in use followed by the anonymous rest with
  /// no access.
  static func threadArenas(maps: String) -> [String] {
    let size: UInt = 64 << 20
    let mappings = maps.split(separator: "\n").compactMap { line -> (start: UInt, end: UInt, perms: Substring)? in
      let f = line.split(separator: " ", omittingEmptySubsequences: true)
      let bounds = f.first?.split(separator: "-") ?? []
      guard f.count == 5, bounds.count == 2, let a = UInt(bounds[0], radix: 16), let b = UInt(bounds[1], radix: 16)
      else { return nil }  // a file, or [heap], [stack]...
      return (a, b, f[1])
    }
    return zip(mappings, mappings.dropFirst()).compactMap { used, rest in
      used.perms == "rw-p" && used.start % size == 0 && rest.perms == "---p" && rest.start == used.end
        && rest.end == used.start + size ? String(used.start, radix: 16) : nil
    }
  }

  /// Reads queued while no path works, from a client that then goes away, are dropped:
  /// never sent to the target once the path is back.
  func testQueuedWorkOfAGoneClientIsCancelled() throws {
    _ = try startServe(["--keepalive-interval", "1", "--keepalive-timeout", "1", "--no-path-retry", "60"])
    try tgtd.pause()
    defer { try? tgtd.resume() }
    var down = false
    for _ in 0..<100 {
      if let p = (status()?["paths"] as? [[String: Any]])?.first, p["state"] as? String != "active" {
        down = true
        break
      }
      usleep(100_000)
    }
    XCTAssertTrue(down, "the path did not fail with tgtd stopped: \(status() ?? [:])")
    let before = (status()?["requests"] as? [String: Any])?["reads"] as? Int ?? -1
    // 50 reads of 4 KiB, the client gone after a second.
    let r = try Command.run(python, [script, "greedy", socket, "50", "4096", "1"], timeout: 30)
    XCTAssertEqual(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "sent 50", r.stderr)
    var flow: [String: Any] = [:]
    for _ in 0..<50 {
      flow = status()?["flow"] as? [String: Any] ?? [:]
      if flow["cancelled"] as? Int == 50 { break }
      usleep(100_000)
    }
    XCTAssertEqual(flow["cancelled"] as? Int, 50, "queued reads of the gone client: \(flow)")
    XCTAssertEqual(status()?["queuedIOs"] as? Int, 0)
    try tgtd.resume()
    var back = false
    for _ in 0..<200 {
      if let p = (status()?["paths"] as? [[String: Any]])?.first, p["state"] as? String == "active" {
        back = true
        break
      }
      usleep(100_000)
    }
    XCTAssertTrue(back, "the path did not come back: \(status() ?? [:])")
    let p = (status()?["paths"] as? [[String: Any]])?.first ?? [:]
    let reads = (status()?["requests"] as? [String: Any])?["reads"] as? Int ?? -1
    XCTAssertEqual(reads - before, 50, "the requests were received")
    XCTAssertLessThan(p["ios"] as? Int ?? 99, 5, "but the cancelled reads went to the target: \(p)")
  }

  /// A start that fails after login (the metrics port is taken) exits non-zero with one
  /// line and leaves nothing behind: no NBD socket, no control socket, no session.
  func testFailedStartAfterLoginLeavesNothingBehind() throws {
    let blocker = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(blocker) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        Glibc.bind(blocker, $0, len) == 0 && Glibc.listen(blocker, 1) == 0 && getsockname(blocker, $0, &len) == 0
      }
    }
    XCTAssertTrue(bound)
    let port = Int(UInt16(bigEndian: addr.sin_port))
    let r = try Command.run(
      lunbridge,
      [
        "serve", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1", "--listen", "unix:\(socket)", "--name", volumeName,
        "--metrics", "tcp:127.0.0.1:\(port)",
      ], timeout: 60)
    XCTAssertNotEqual(r.status, 0, "serve started with its metrics port taken")
    XCTAssertTrue(r.stderr.contains("lunbridge: error:"), r.stderr)
    XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "the NBD socket was left behind")
    let control = try ControlPath.of(volumeName)
    XCTAssertFalse(FileManager.default.fileExists(atPath: control), "the control socket \(control) was left behind")
    usleep(500_000)
    XCTAssertEqual(try tgtd.connections(tid: 1).count, 0, "the session was left logged in")
  }
}

enum ControlPath {
  static func of(_ name: String) throws -> String {
    let dir = ProcessInfo.processInfo.environment["LUNBRIDGE_RUN_DIR"] ?? "/run/lunbridge"
    return "\(dir)/\(name).sock"
  }
}
