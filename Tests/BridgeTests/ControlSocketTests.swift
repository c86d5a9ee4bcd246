import Bridge
import Failure
import Foundation
import ISCSIProtocol
import Logging
import NIOCore
import NIOPosix
import XCTest

/// The control socket over real Unix sockets in a private temporary directory.
final class ControlSocketTests: XCTestCase {
  var directory = ""
  let logger = Logger(label: "control-test", factory: { _ in SwiftLogNoOpLogHandler() })
  var servers: [ControlServer] = []

  override func setUpWithError() throws {
    var template = Array("/tmp/lbctl-XXXXXX".utf8CString)
    let made = try XCTUnwrap(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) })
    directory = String(cString: made)
  }

  override func tearDown() async throws {
    for s in servers { await s.stop() }
    servers = []
    try? FileManager.default.removeItem(atPath: directory)
  }

  static func serving(_ report: VolumeStatusReport) -> @Sendable () -> EventLoopFuture<VolumeStatusReport> {
    { MultiThreadedEventLoopGroup.singleton.next().makeSucceededFuture(report) }
  }

  func start(
    _ name: String, report: VolumeStatusReport = StatusFixture.attached(),
    reload: (@Sendable () -> EventLoopFuture<String>)? = nil, requestTimeout: TimeAmount = .seconds(5)
  ) async throws -> ControlServer {
    let server = try await ControlServer.start(
      name: name, directory: directory, report: Self.serving(report), reload: reload,
      requestTimeout: requestTimeout, logger: logger)
    servers.append(server)
    return server
  }

  func reply(_ data: Data) throws -> ControlReply {
    try JSONDecoder().decode(ControlReply.self, from: data)
  }

  func testStatusIsOneLineOfJSONThatDecodesToTheReport() async throws {
    let server = try await start("db")
    XCTAssertEqual(server.path, "\(directory)/db.sock")
    let raw = try ControlClient.request("status", socket: server.path)
    XCTAssertFalse(raw.contains(UInt8(ascii: "\n")))
    XCTAssertTrue(String(decoding: raw, as: UTF8.self).hasPrefix(#"{"blockSize":4096,"#), "keys sorted")
    XCTAssertEqual(try ControlClient.status(socket: server.path), StatusFixture.attached())
  }

  func testSocketIsRootOnlyAndTheDirectoryIsCreated() async throws {
    let nested = directory + "/run/lunbridge"
    let server = try await ControlServer.start(
      name: "db", directory: nested, report: Self.serving(StatusFixture.attached()), logger: logger)
    servers.append(server)
    var st = stat()
    XCTAssertEqual(lstat(server.path, &st), 0)
    XCTAssertEqual(st.st_mode & S_IFMT, S_IFSOCK)
    XCTAssertEqual(st.st_mode & 0o777, 0o600)
    XCTAssertEqual(stat(nested, &st), 0)
    XCTAssertEqual(st.st_mode & 0o777, 0o755)
    // Nothing but the socket is left in the directory (no temporary bind directory).
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: nested), ["db.sock"])
  }

  func testUnknownCommandIsAnErrorReply() async throws {
    let server = try await start("db")
    let r = try reply(try ControlClient.request("frobnicate", socket: server.path))
    XCTAssertEqual(r, ControlReply(ok: false, error: "unknown command 'frobnicate'"))
  }

  func testReload() async throws {
    let none = try await start("a")
    XCTAssertThrowsError(try ControlClient.reload(socket: none.path)) {
      XCTAssertTrue("\($0)".contains("cannot reload"), "\($0)")
    }
    let fine = try await start(
      "b", reload: { MultiThreadedEventLoopGroup.singleton.next().makeSucceededFuture("2 paths") })
    XCTAssertEqual(try ControlClient.reload(socket: fine.path), "2 paths")
    XCTAssertEqual(
      try reply(try ControlClient.request("reload", socket: fine.path)),
      ControlReply(ok: true, message: "2 paths"))
    let failing = try await start(
      "c",
      reload: { MultiThreadedEventLoopGroup.singleton.next().makeFailedFuture(BridgeError(.config, "bad line 3")) })
    XCTAssertThrowsError(try ControlClient.reload(socket: failing.path)) {
      XCTAssertEqual("\($0)", "bad line 3")
      // The class travels with it: the command line that relays it exits 6, as the
      // process that raised it would have.
      XCTAssertEqual(($0 as? LunbridgeError)?.failureClass, .config)
    }
    // A typed error of another module keeps its class too (a reload whose new path
    // cannot log in: authentication, not "other").
    let refused = try await start(
      "d",
      reload: {
        MultiThreadedEventLoopGroup.singleton.next().makeFailedFuture(
          BridgeError(
            .noPath, "no path could log in",
            cause: ISCSIError(.authenticationFailed, "authentication failed (CHAP): wrong user or secret")))
      })
    XCTAssertThrowsError(try ControlClient.reload(socket: refused.path)) {
      XCTAssertEqual("\($0)", "no path could log in: authentication failed (CHAP): wrong user or secret")
      XCTAssertEqual(($0 as? LunbridgeError)?.failureClass, .authentication)
      XCTAssertEqual(($0 as? LunbridgeError)?.errorCode, "bridge.relayed")
    }
  }

  func testAFailedReportIsAnErrorReplyNotAHang() async throws {
    let server = try await ControlServer.start(
      name: "db", directory: directory,
      report: {
        MultiThreadedEventLoopGroup.singleton.next().makeFailedFuture(BridgeError(.closing, "volume closing"))
      },
      logger: logger)
    servers.append(server)
    XCTAssertThrowsError(try ControlClient.status(socket: server.path, timeout: 2)) {
      XCTAssertTrue("\($0)".hasSuffix("volume closing"), "\($0)")
    }
  }

  /// A report that fails with a typed error: `status` exits as the volume would have
  /// (here: no path, because the portal is unreachable: class unreachable, not other).
  func testAFailedReportKeepsItsErrorClass() async throws {
    let server = try await ControlServer.start(
      name: "db", directory: directory,
      report: {
        MultiThreadedEventLoopGroup.singleton.next().makeFailedFuture(
          BridgeError(
            .noPath, "no path could log in",
            cause: ISCSIError(.unreachable, "cannot connect to portal 127.0.0.1:1: connection refused")))
      },
      logger: logger)
    servers.append(server)
    XCTAssertThrowsError(try ControlClient.status(socket: server.path, timeout: 2)) {
      XCTAssertEqual(
        "\($0)", "\(server.path): no path could log in: cannot connect to portal 127.0.0.1:1: connection refused")
      XCTAssertEqual(($0 as? LunbridgeError)?.failureClass, .unreachable)
    }
  }

  func testStaleSocketIsReplaced() async throws {
    let path = "\(directory)/db.sock"
    try bindAndAbandon(path)
    XCTAssertTrue(FileManager.default.fileExists(atPath: path))
    XCTAssertThrowsError(try ControlClient.request("status", socket: path, timeout: 1))
    let server = try await start("db")
    XCTAssertEqual(try ControlClient.status(socket: server.path).name, "db")
  }

  func testLiveSocketIsRefusedAndKeepsWorking() async throws {
    let first = try await start("db")
    do {
      _ = try await start("db")
      XCTFail("a second server on a live socket")
    } catch let e as BridgeError {
      XCTAssertEqual(e.description, "volume db is already served by another lunbridge (socket \(first.path))")
    }
    XCTAssertEqual(try ControlClient.status(socket: first.path).name, "db")
  }

  func testSomethingElseAtThePathIsNotReplaced() async throws {
    let path = "\(directory)/db.sock"
    XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data("keep".utf8)))
    do {
      _ = try await start("db")
      XCTFail("replaced a regular file")
    } catch let e as BridgeError {
      XCTAssertTrue(e.description.contains("not a socket"), e.description)
    }
    XCTAssertEqual(FileManager.default.contents(atPath: path), Data("keep".utf8))
  }

  func testStopRemovesTheSocket() async throws {
    let server = try await ControlServer.start(
      name: "db", directory: directory, report: Self.serving(StatusFixture.attached()), logger: logger)
    await server.stop()
    XCTAssertFalse(FileManager.default.fileExists(atPath: server.path))
    XCTAssertThrowsError(try ControlClient.request("status", socket: server.path, timeout: 1))
  }

  func testNamesThatCannotBeSocketFilesAreRefused() {
    for name in ["", "a/b", ".hidden", "..", "tab\there", String(repeating: "x", count: 200)] {
      XCTAssertThrowsError(try ControlServer.socketPath(name: name, directory: directory), name)
    }
    XCTAssertEqual(try ControlServer.socketPath(name: "db-1", directory: "/run/x/"), "/run/x/db-1.sock")
  }

  func testOverlongRequestIsRefused() async throws {
    let server = try await start("db")
    let r = try reply(try ControlClient.request(String(repeating: "x", count: 5000), socket: server.path))
    XCTAssertFalse(r.ok)
    XCTAssertEqual(r.error, "request longer than 4096 bytes")
  }

  func testAnIdleClientIsDisconnected() async throws {
    let server = try await start("db", requestTimeout: .milliseconds(200))
    let fd = try connectRaw(server.path)
    defer { close(fd) }
    let started = Date()
    var byte: UInt8 = 0
    XCTAssertEqual(recv(fd, &byte, 1, 0), 0, "closed without an answer")
    XCTAssertLessThan(Date().timeIntervalSince(started), 2.5)
  }

  func testARequestEndedByShutdownInsteadOfNewlineIsAnswered() async throws {
    let server = try await start("db")
    let fd = try connectRaw(server.path)
    defer { close(fd) }
    XCTAssertEqual(send(fd, "status", 6, 0), 6)
    shutdown(fd, Int32(SHUT_WR))
    var all = Data()
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = recv(fd, &buffer, buffer.count, 0)
      guard n > 0 else { break }
      all.append(contentsOf: buffer[0..<n])
    }
    XCTAssertEqual(all.last, UInt8(ascii: "\n"))
    XCTAssertEqual(try JSONDecoder().decode(VolumeStatusReport.self, from: all), StatusFixture.attached())
  }

  func testClientNamesAMissingSocket() {
    XCTAssertThrowsError(try ControlClient.request("status", socket: "\(directory)/none.sock", timeout: 1)) {
      XCTAssertTrue("\($0)".hasPrefix("cannot connect to \(self.directory)/none.sock"), "\($0)")
    }
  }

  func testDefaultDirectoryFollowsTheEnvironment() {
    setenv("LUNBRIDGE_RUN_DIR", "/tmp/elsewhere", 1)
    XCTAssertEqual(ControlServer.defaultDirectory, "/tmp/elsewhere")
    unsetenv("LUNBRIDGE_RUN_DIR")
    XCTAssertEqual(ControlServer.defaultDirectory, "/run/lunbridge")
    XCTAssertEqual(ControlDirectory().directory, "/run/lunbridge")
  }

  // MARK: finding volumes, as `lunbridge status` does

  func testStatusFindsVolumesByNameAndByDeviceAndWarnsAboutDeadSockets() async throws {
    _ = try await start("db", report: StatusFixture.attached(name: "db", device: "/dev/nbd0"))
    _ = try await start("web", report: StatusFixture.attached(name: "web", device: "/dev/nbd3"))
    _ = try await start("nbd5", report: StatusFixture.attached(name: "nbd5", device: "/dev/nbd5"))
    try bindAndAbandon("\(directory)/gone.sock")
    try bindAndAbandon("\(directory)/stale.sock")
    let lookup = ControlDirectory(directory: directory, timeout: 2)

    // Asked by name, a socket nobody listens on is called what it is.
    XCTAssertThrowsError(try lookup.reports(for: "stale")) {
      XCTAssertEqual("\($0)", "\(self.directory)/stale.sock is a stale socket: the lunbridge that served it is gone")
    }
    // A scan removes the stale sockets it meets and says so.
    let all = try lookup.reports(for: nil)
    XCTAssertEqual(all.reports.map(\.name), ["db", "nbd5", "web"])
    XCTAssertEqual(all.asked, 5)
    XCTAssertEqual(
      all.failures,
      ["removed \(directory)/gone.sock: its lunbridge is gone", "removed \(directory)/stale.sock: its lunbridge is gone"])
    XCTAssertFalse(FileManager.default.fileExists(atPath: "\(directory)/gone.sock"))

    XCTAssertEqual(try lookup.reports(for: "web").reports.map(\.name), ["web"])
    XCTAssertEqual(try lookup.reports(for: "/dev/nbd3").reports.map(\.name), ["web"])
    XCTAssertEqual(try lookup.reports(for: "nbd0").reports.map(\.name), ["db"])
    XCTAssertEqual(try lookup.reports(for: "nbd5").reports.map(\.name), ["nbd5"])
    XCTAssertEqual(try lookup.socket(for: "/dev/nbd3"), "\(directory)/web.sock")
    XCTAssertEqual(try lookup.socket(for: "nbd5"), "\(directory)/nbd5.sock")

    XCTAssertThrowsError(try lookup.reports(for: "nope")) {
      XCTAssertEqual("\($0)", "no running volume named 'nope' (no \(self.directory)/nope.sock)")
    }
    XCTAssertThrowsError(try lookup.reports(for: "/dev/nbd9")) {
      XCTAssertTrue("\($0)".hasPrefix("/dev/nbd9 is not served by a running lunbridge"), "\($0)")
    }
    XCTAssertThrowsError(try lookup.reports(for: "gone")) {
      XCTAssertEqual("\($0)", "no running volume named 'gone' (no \(self.directory)/gone.sock)")
    }
  }

  func testAnEmptyOrMissingDirectoryHasNoVolumes() throws {
    XCTAssertEqual(try ControlDirectory(directory: directory).reports(for: nil).asked, 0)
    XCTAssertEqual(ControlDirectory(directory: directory + "/missing").sockets(), [])
    XCTAssertEqual(ControlDirectory.deviceName("/dev/nbd12"), "nbd12")
    XCTAssertEqual(ControlDirectory.deviceName("nbd0"), "nbd0")
    XCTAssertNil(ControlDirectory.deviceName("nbd"))
    XCTAssertNil(ControlDirectory.deviceName("nbdx1"))
    XCTAssertNil(ControlDirectory.deviceName("/dev/sda"))
  }

  // MARK: helpers

  /// Leaves a socket file nobody listens on, as a killed server does.
  func bindAndAbandon(_ path: String) throws {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    XCTAssertGreaterThanOrEqual(fd, 0)
    defer { close(fd) }
    var addr = try unixAddress(path)
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    XCTAssertEqual(rc, 0)
  }

  func connectRaw(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var addr = try unixAddress(path)
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    XCTAssertEqual(rc, 0)
    return fd
  }

  func unixAddress(_ path: String) throws -> sockaddr_un {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    XCTAssertLessThan(bytes.count, MemoryLayout.size(ofValue: addr.sun_path))
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
      for (i, b) in bytes.enumerated() { raw[i] = b }
    }
    return addr
  }
}
