import Foundation
import XCTest

/// `lunbridge serve FILE`: a volume file's paths, name and read-only setting, as
/// `attach NAME` takes them, against tgtd; and the export socket's mode and group.
final class ServeVolumeFileTests: XCTestCase {
  static let iqn = "iqn.2026-11.org.lunbridge.test:servefile"

  func testServeTakesAVolumeFile() throws {
    try CommandLineTools.require()
    let tgtd = try TGTD()
    defer { tgtd.stop() }
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 8)
    try tgtd.bindAll(tid: 1)
    let scratch = "/dev/shm/lunbridge-servefile-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: scratch + "/run", withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let name = "filevol\(getpid() % 10000)"
    let file = "\(scratch)/\(name).toml"
    try """
    paths = ["iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1"]
    read_only = true
    """.write(toFile: file, atomically: true, encoding: .utf8)
    let socket = "\(scratch)/export.sock"

    let p = Process()
    p.executableURL = URL(fileURLWithPath: CommandLineTools.lunbridge)
    p.arguments = ["serve", file, "--listen", "unix:\(socket)", "--socket-mode", "660", "--socket-group", "1"]
    var environment = ProcessInfo.processInfo.environment
    environment["LUNBRIDGE_RUN_DIR"] = scratch + "/run"
    p.environment = environment
    p.standardError = FileHandle(forWritingAtPath: "/dev/null")
    try p.run()
    defer {
      p.terminate()
      p.waitUntilExit()
    }
    for _ in 0..<100 where !FileManager.default.fileExists(atPath: socket) { usleep(100_000) }
    XCTAssertTrue(FileManager.default.fileExists(atPath: socket), "serve FILE listens")
    // --socket-mode / --socket-group: set once it listens (for a non-root QEMU's group).
    var st = stat()
    for _ in 0..<50 {
      if stat(socket, &st) == 0, st.st_mode & 0o777 == 0o660, st.st_gid == 1 { break }
      usleep(100_000)
    }
    XCTAssertEqual(st.st_mode & 0o777, 0o660)
    XCTAssertEqual(st.st_gid, 1)

    // Known under the file's name, read-only as the file says.
    let r = try Command.run(
      "/usr/bin/env", ["LUNBRIDGE_RUN_DIR=\(scratch)/run", CommandLineTools.lunbridge, "status", name, "--json"],
      timeout: 30)
    XCTAssertEqual(r.status, 0, r.stderr)
    let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
    XCTAssertEqual(report.first?["name"] as? String, name, r.stdout)
    // status --json: camelCase keys; each path's session as negotiated, with its timeouts.
    struct Report: Decodable {
      struct Path: Decodable {
        struct Session: Decodable {
          var headerDigest: String
          var maxRecvDataSegmentLength, targetMaxRecvDataSegmentLength, firstBurstLength, maxBurstLength: Int
          var initialR2T, immediateData: Bool
          var commandTimeoutSeconds, keepaliveIntervalSeconds: Double
          var inFlight, queued: Int
          var windowAvailable: Int?
        }
        var id: Int
        var state, portal, isid: String
        var ios: Int
        var session: Session
      }
      var name: String
      var readOnly: Bool
      var paths: [Path]
    }
    let typed = try JSONDecoder().decode([Report].self, from: Data(r.stdout.utf8))
    XCTAssertEqual(typed.first?.readOnly, true)
    XCTAssertEqual(typed.first?.paths.first?.state, "active")
    XCTAssertEqual(typed.first?.paths.first?.session.commandTimeoutSeconds, 30)
    let text = try Command.run(
      "/usr/bin/env", ["LUNBRIDGE_RUN_DIR=\(scratch)/run", CommandLineTools.lunbridge, "status", name, "--sessions"],
      timeout: 30)
    XCTAssertEqual(text.status, 0, text.stderr)
    XCTAssertTrue(text.stdout.contains("  path 0: HeaderDigest=None DataDigest=None MaxRecvDataSegmentLength="), text.stdout)
    let write = try Command.run(
      CommandLineTools.python,
      [
        "-c", "import nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1]); print(h.is_read_only())",
        "nbd+unix:///?socket=\(socket)",
      ], timeout: 30)
    XCTAssertEqual(write.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "True", write.stderr)

    // A second serve of the running volume is refused before it logs in (exit 15, as
    // iscsiadm's "session exists").
    let second = try Command.run(
      "/usr/bin/env",
      [
        "LUNBRIDGE_RUN_DIR=\(scratch)/run", CommandLineTools.lunbridge, "serve", file, "--listen",
        "unix:\(scratch)/second.sock",
      ], timeout: 60)
    XCTAssertEqual(second.status, 15, second.stderr)
    XCTAssertTrue(
      second.stderr.hasPrefix("lunbridge: error: volume \(name) is already served by another lunbridge"), second.stderr)
  }
}
