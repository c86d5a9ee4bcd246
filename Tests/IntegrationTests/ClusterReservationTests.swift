import Foundation
import XCTest

/// SCSI-3 persistent reservations through `lunbridge pr`, against a real tgtd: two nodes
/// (two `lunbridge serve` processes with their own initiator names) share one LUN, each
/// through two portals. Node A registers and reserves, node B is fenced from writing,
/// registers, preempts A; a path of A cut while it holds the reservation is registered
/// again before it carries I/O. And a restarted volume logs in with the same ISIDs.
///
/// tgtd facts seen here (tgt 1.0.85): no READ FULL STATUS (ILLEGAL REQUEST; `pr` builds it
/// from READ KEYS and READ RESERVATION), no PREEMPT AND ABORT (ILLEGAL REQUEST 24/00), and
/// a registration belongs to the session's nexus object: a session that ends leaves its
/// key listed but nobody can use it. LIO does all three as SPC-4 says (Tests/vm/guest-lio.sh).
final class ClusterReservationTests: XCTestCase {
  static let iqn = "iqn.2026-11.org.lunbridge.test:pr"
  var tgtd: TGTD!
  var scratch: String!
  var processes: [String: Process] = [:]
  var repo: URL { CommandLineTools.repo }
  var lunbridge: String { CommandLineTools.lunbridge }
  let python = CommandLineTools.python
  var runDirectory: String { scratch + "/run" }

  override func setUp() async throws {
    try CommandLineTools.require()
    tgtd = try TGTD()
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 32)
    try tgtd.bindAll(tid: 1)
    try tgtd.addPortal("127.0.0.2")
    scratch = "/dev/shm/lunbridge-pr-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
  }

  override func tearDown() async throws {
    for p in processes.values where p.isRunning {
      p.terminate()
      for _ in 0..<100 where p.isRunning { usleep(100_000) }
      if p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }
    tgtd?.stop()
    if let scratch { try? FileManager.default.removeItem(atPath: scratch) }
  }

  func socket(_ node: String) -> String { "\(scratch!)/\(node).sock" }
  func initiator(_ node: String) -> String { "iqn.2026-11.org.lunbridge.test:node-\(node)" }
  func log(_ node: String) -> String { (try? String(contentsOfFile: "\(scratch!)/\(node).log", encoding: .utf8)) ?? "" }

  /// `lunbridge serve --name NODE` through both portals, alternating I/O between them.
  @discardableResult
  func serve(_ node: String, _ extra: [String] = []) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: lunbridge)
    p.arguments =
      [
        "serve", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1", "iscsi://127.0.0.2:\(tgtd.port)/\(Self.iqn)/1",
        "--listen", "unix:\(socket(node))", "--name", node, "--initiator-name", initiator(node),
        "--policy", "round-robin:1",
      ] + extra
    var environment = ProcessInfo.processInfo.environment
    environment["LUNBRIDGE_RUN_DIR"] = runDirectory
    p.environment = environment
    let path = "\(scratch!)/\(node).log"
    if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    handle.seekToEndOfFile()
    p.standardOutput = handle
    p.standardError = handle
    p.standardInput = FileHandle.nullDevice
    unlink(socket(node))
    try p.run()
    processes[node] = p
    for _ in 0..<300 {
      if FileManager.default.fileExists(atPath: socket(node)), status(node) != nil { return p }
      guard p.isRunning else { break }
      usleep(100_000)
    }
    throw TGTDError("serve \(node) did not start: \(log(node))")
  }

  /// `lunbridge ARGS` with this test's control directory.
  func lunbridgeRun(_ args: [String]) throws -> CommandResult {
    try Command.run("/usr/bin/env", ["LUNBRIDGE_RUN_DIR=\(runDirectory)", lunbridge] + args, timeout: 60)
  }

  /// `lunbridge pr NODE ARGS`: exit status and output.
  func pr(_ node: String, _ args: String...) throws -> CommandResult {
    try lunbridgeRun(["pr", node] + args)
  }

  /// `lunbridge pr NODE ARGS --json`, decoded.
  func prJSON(_ node: String, _ args: String...) throws -> [String: Any] {
    let r = try lunbridgeRun(["pr", node] + args + ["--json"])
    guard let object = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
      XCTFail("pr \(node) \(args) printed no JSON: \(r.stdout) \(r.stderr)")
      return [:]
    }
    return object
  }

  func status(_ node: String) -> [String: Any]? {
    guard let r = try? lunbridgeRun(["status", node, "--json"]), r.status == 0,
      let array = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]]
    else { return nil }
    return array.first
  }

  func paths(_ node: String) -> [[String: Any]] { status(node)?["paths"] as? [[String: Any]] ?? [] }

  /// Writes (or reads) `count` 4 KiB blocks through NODE's export with libnbd; the
  /// libnbd error text, or nil when every request succeeded.
  func io(_ node: String, write: Bool, count: Int = 1, offset: Int = 0) throws -> String? {
    let op =
      write
      ? "h.pwrite(bytes([0x41 + (i % 26)]) * 4096, (\(offset) + i) * 4096)"
      : "assert len(h.pread(4096, (\(offset) + i) * 4096)) == 4096"
    let script = """
      import nbd, sys
      h = nbd.NBD()
      h.connect_uri("nbd+unix:///?socket=\(socket(node))")
      try:
          for i in range(\(count)):
              \(op)
      except nbd.Error as e:
          print(e.string)
          sys.exit(1)
      """
    let r = try Command.run(python, ["-c", script], timeout: 60)
    return r.status == 0 ? nil : r.stdout + r.stderr
  }

  func waitFor(_ what: String, timeout: Double = 20, _ condition: () -> Bool) {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
      if condition() { return }
      usleep(200_000)
    }
    XCTFail("timed out waiting for \(what)")
  }

  func keys(_ node: String) throws -> [String] { try prJSON(node, "--read-keys")["keys"] as? [String] ?? [] }

  func testTwoNodesRegisterReserveAreFencedAndPreemptAReinstatedPathIsRegisteredFirst() throws {
    try serve("a")
    try serve("b")
    XCTAssertEqual(paths("a").count, 2)

    // A registers on both its paths (two I_T nexuses) and takes Write Exclusive - Registrants Only.
    XCTAssertEqual(try pr("a", "--register", "--param-sark", "0xa11ce").status, 0)
    XCTAssertEqual(try keys("a"), ["0xa11ce", "0xa11ce"])
    XCTAssertEqual(try pr("a", "--out", "--reserve", "--param-rk", "a11ce", "--prout-type", "5").status, 0)
    let held = try prJSON("a", "--read-reservation")["reservation"] as? [String: Any]
    XCTAssertEqual(held?["key"] as? String, "0xa11ce")
    XCTAssertEqual(held?["type"] as? Int, 5)
    let text = try pr("b", "--read-reservation").stdout
    XCTAssertTrue(text.contains("Key = 0xa11ce"), text)
    XCTAssertTrue(text.contains("type = Write Exclusive, registrants only"), text)

    // B is not registered: its write fails with a conflict (EPERM over NBD), its read
    // works, and no path of B failed for it.
    let refused = try io("b", write: true)
    XCTAssertNotNil(refused, "B wrote while A holds a registrants-only reservation")
    XCTAssertTrue(refused?.contains("Operation not permitted") == true, refused ?? "")
    XCTAssertNil(try io("b", write: false))
    XCTAssertEqual(status("b")?["reservationConflicts"] as? Int, 1)
    XCTAssertEqual(paths("b").map { $0["state"] as? String }, ["active", "active"])
    XCTAssertEqual(paths("b").map { $0["failovers"] as? Int }, [0, 0])
    XCTAssertTrue(log("b").contains("reservation conflict"))
    XCTAssertNil(try io("a", write: true, count: 8))

    // Full status: tgtd has no READ FULL STATUS; `pr` says so and lists each key.
    let full = try prJSON("a", "--read-full-status")
    XCTAssertEqual(full["fromKeys"] as? Bool, true)
    let registrations = full["registrations"] as? [[String: Any]] ?? []
    XCTAssertEqual(registrations.count, 2)
    XCTAssertEqual(registrations.filter { $0["holder"] as? Bool == true }.count, 1)

    // One of A's paths is cut while A holds the reservation. The reinstated path registers
    // before it carries I/O: writes alternate over both paths and none conflicts.
    let sessionsOfA = try tgtd.connectionDetails(tid: 1).filter { $0.initiator == initiator("a") }
    XCTAssertEqual(sessionsOfA.count, 2)
    try tgtd.deleteConnection(tid: 1, sid: sessionsOfA[0].sid, cid: sessionsOfA[0].cid)
    waitFor("A's cut path to be reinstated") {
      let p = paths("a")
      return p.count == 2 && p.allSatisfy { $0["state"] as? String == "active" }
        && p.contains { ($0["reinstatements"] as? Int ?? 0) >= 1 }
    }
    XCTAssertNil(try io("a", write: true, count: 32, offset: 100))
    XCTAssertEqual(status("a")?["reservationConflicts"] as? Int, 0)
    XCTAssertTrue(paths("a").allSatisfy { ($0["ios"] as? Int ?? 0) >= 16 }, "both paths carried writes")
    XCTAssertEqual(try keys("a").filter { $0 == "0xa11ce" }.count, 3, "the new nexus registered (tgtd keeps the old one)")

    // B registers and preempts A. tgtd refuses PREEMPT AND ABORT (exit 5, as mpathpersist
    // exits for ILLEGAL REQUEST); PREEMPT does it.
    XCTAssertEqual(try pr("b", "--register", "--param-sark", "0xb0b").status, 0)
    let abort = try pr("b", "--preempt-abort", "--param-rk", "0xb0b", "--param-sark", "0xa11ce", "--prout-type", "5")
    XCTAssertEqual(abort.status, 5, abort.stderr)
    XCTAssertTrue(abort.stderr.contains("ILLEGAL REQUEST"), abort.stderr)
    XCTAssertEqual(try pr("b", "--preempt", "--param-rk", "0xb0b", "--param-sark", "0xa11ce", "--prout-type", "5").status, 0)
    XCTAssertEqual(try keys("b"), ["0xb0b", "0xb0b"])
    XCTAssertNotNil(try io("a", write: true), "A wrote after it was preempted")
    XCTAssertNil(try io("b", write: true, count: 4))
    XCTAssertNil(try io("a", write: false))
    let now = try prJSON("a", "--read-reservation")["reservation"] as? [String: Any]
    XCTAssertEqual(now?["key"] as? String, "0xb0b")

    // A's registration with the wrong key conflicts: exit 11, mpathpersist's code.
    let late = try pr("a", "--register", "--param-rk", "0xa11ce", "--param-sark", "0xa11ce")
    XCTAssertEqual(late.status, 11, late.stderr)
    XCTAssertTrue(late.stderr.contains("reservation conflict"), late.stderr)

    // A path of the preempted A that comes back is not registered again (its key is gone
    // from the LU): a fenced node does not let itself back in.
    let again = try tgtd.connectionDetails(tid: 1).filter { $0.initiator == initiator("a") }
    try tgtd.deleteConnection(tid: 1, sid: again[0].sid, cid: again[0].cid)
    waitFor("A's path to come back again") { log("a").contains("no longer registered") }
    XCTAssertFalse(try keys("a").contains("0xa11ce"))
    XCTAssertNotNil(try io("a", write: true))

    // B clears everything.
    XCTAssertEqual(try pr("b", "--clear", "--param-rk", "0xb0b").status, 0)
    XCTAssertEqual(try keys("b"), [])
    XCTAssertEqual(try prJSON("b", "--read-reservation")["reserved"] as? Bool, false)
    XCTAssertTrue(try pr("b", "--read-reservation").stdout.contains("there is NO reservation held"))
  }

  func testUsageAndAVolumeThatIsNotRunningExitAsMpathpersistDoes() throws {
    let none = try pr("nosuchvolume", "--read-keys")
    XCTAssertEqual(none.status, 12, none.stderr)
    XCTAssertTrue(none.stderr.hasPrefix("lunbridge: error: "), none.stderr)
    let noType = try pr("x", "--reserve", "--param-rk", "1")
    XCTAssertNotEqual(noType.status, 0)
    XCTAssertTrue(noType.stderr.contains("--prout-type"), noType.stderr)
    let badKey = try pr("x", "--register", "--param-sark", "0xnothex")
    XCTAssertNotEqual(badKey.status, 0)
    XCTAssertTrue(badKey.stderr.contains("is not a key"), badKey.stderr)
    let two = try pr("x", "--read-keys", "--clear")
    XCTAssertNotEqual(two.status, 0)
  }

  func testARestartedVolumeLogsInWithTheSameISIDsEndsTheOldSessionsAndRegistersItsKey() throws {
    let first = try serve("a", ["--reservation-key", "0xc0ffee"])
    let isids = paths("a").compactMap { $0["isid"] as? String }
    XCTAssertEqual(isids.count, 2)
    XCTAssertEqual(Set(isids).count, 2, "each path has its own ISID")
    XCTAssertEqual(try keys("a"), ["0xc0ffee", "0xc0ffee"])
    XCTAssertEqual(status("a")?["reservationKey"] as? String, "0xc0ffee")
    // A second process for the same volume is refused before it logs in (it would take
    // the running one's sessions over).
    let second = try lunbridgeRun([
      "serve", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1", "--listen", "unix:\(scratch!)/second.sock", "--name",
      "a", "--initiator-name", initiator("a"),
    ])
    XCTAssertNotEqual(second.status, 0)
    XCTAssertTrue(second.stderr.contains("already served"), second.stderr)
    XCTAssertEqual(try tgtd.connectionDetails(tid: 1).filter { $0.initiator == initiator("a") }.count, 2)

    kill(first.processIdentifier, SIGKILL)
    first.waitUntilExit()
    try serve("a", ["--reservation-key", "0xc0ffee"])
    XCTAssertEqual(paths("a").compactMap { $0["isid"] as? String }, isids, "the same ISIDs after a restart")
    XCTAssertEqual(try tgtd.connectionDetails(tid: 1).filter { $0.initiator == initiator("a") }.count, 2)
    XCTAssertNil(try io("a", write: true, count: 4))
    // Another volume name gives other ISIDs.
    try serve("b")
    XCTAssertTrue(Set(paths("b").compactMap { $0["isid"] as? String }).isDisjoint(with: isids))
  }
}
