import Foundation
import ISCSIProtocol
import NIOPosix
import XCTest

@testable import Bridge

/// What the systemd unit relies on: `startup = "automatic"` and the generator that acts on
/// it, secrets from systemd credentials, the watchdog period, and reload failures that
/// keep their class across the control socket.
final class SystemdIntegrationTests: XCTestCase {
  var tmp: String!

  override func setUpWithError() throws {
    tmp = NSTemporaryDirectory() + "lunbridge-systemd-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: tmp + "/volumes", withIntermediateDirectories: true)
  }

  override func tearDownWithError() throws {
    unsetenv("CREDENTIALS_DIRECTORY")
    try? FileManager.default.removeItem(atPath: tmp)
  }

  let url = "iscsi://192.0.2.1/iqn.2026-11.org.example:t/1"

  func parse(_ text: String) throws -> VolumeConfig {
    try VolumeConfig(parsing: "paths = [\"\(url)\"]\n" + text, file: tmp + "/volumes/db.toml", name: "db")
  }

  func write(_ name: String, _ text: String, mode: mode_t = 0o644) throws -> String {
    let path = tmp + "/volumes/\(name).toml"
    try text.write(toFile: path, atomically: false, encoding: .utf8)
    chmod(path, mode)
    return path
  }

  func testStartupIsManualUnlessTheFileSaysAutomatic() throws {
    XCTAssertEqual(try parse("").startup, .manual)
    XCTAssertEqual(try parse("startup = \"automatic\"").startup, .automatic)
    XCTAssertEqual(try parse("startup = \"Manual\"").startup, .manual)
    XCTAssertEqual(try parse("startup = \"onboot\"").startup, .onboot)
    XCTAssertThrowsError(try parse("startup = \"boot\"")) { error in
      XCTAssertEqual(
        "\(error)",
        "\(self.tmp!)/volumes/db.toml: line 2: key 'startup' must be \"automatic\", \"onboot\" or \"manual\", got 'boot'")
    }
    XCTAssertEqual(VolumeConfig.closestKey(to: "node.startup"), "startup")
  }

  func testGeneratorLinksAutomaticVolumesOnlyAndReportsBrokenFiles() throws {
    _ = try write("auto", "paths = [\"\(url)\"]\nstartup = \"automatic\"\n")
    _ = try write("hand", "paths = [\"\(url)\"]\n")
    // The initramfs serves an onboot volume for the whole boot: no unit for it.
    _ = try write("root", "paths = [\"\(url)\"]\nstartup = \"onboot\"\n")
    _ = try write("broken", "paths = [\"\(url)\"]\nstartup = automatic\n")
    let out = tmp + "/generator"
    let log = SystemdGenerator.run(normal: out, directory: tmp + "/volumes")
    let wants = out + "/multi-user.target.wants"
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: wants), ["lunbridge@auto.service"])
    let target = try FileManager.default.destinationOfSymbolicLink(atPath: wants + "/lunbridge@auto.service")
    XCTAssertTrue(target.hasSuffix("/lunbridge@.service"), target)
    XCTAssertEqual(log.count, 2, "\(log)")
    XCTAssertTrue(log[0].hasPrefix("broken: not started at boot: "), log[0])
    XCTAssertEqual(log[1], "started at boot (startup = automatic): lunbridge@auto.service")
    // Run again (every daemon-reload): the same link, no error.
    XCTAssertEqual(SystemdGenerator.run(normal: out, directory: tmp + "/volumes").count, 2)
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: wants), ["lunbridge@auto.service"])
  }

  func testGeneratorWritesNothingWithoutAutomaticVolumes() throws {
    _ = try write("hand", "paths = [\"\(url)\"]\n")
    let out = tmp + "/generator"
    XCTAssertEqual(SystemdGenerator.run(normal: out, directory: tmp + "/volumes"), [])
    XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    XCTAssertEqual(SystemdGenerator.run(normal: out, directory: tmp + "/absent"), [])
  }

  func testSecretFromACredential() throws {
    let c = try parse("chap_user = \"host1\"\nchap_secret_credential = \"db.chap\"\n")
    XCTAssertEqual(c.chapSecretCredential, "db.chap")
    // Outside the unit: says what to add, and `config check` (validate) lets it pass.
    unsetenv("CREDENTIALS_DIRECTORY")
    XCTAssertNoThrow(try c.validate())
    XCTAssertThrowsError(try c.secretPath("chap_secret_file")) { error in
      XCTAssertTrue(
        "\(error)".contains("$CREDENTIALS_DIRECTORY is not set; run from lunbridge@db.service with LoadCredential=db.chap:FILE"),
        "\(error)")
    }
    // Inside: the file in $CREDENTIALS_DIRECTORY (systemd makes it 0400, owned by root).
    let credentials = tmp + "/credentials"
    try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: true)
    setenv("CREDENTIALS_DIRECTORY", credentials, 1)
    XCTAssertThrowsError(try c.secretPath("chap_secret_file")) { error in
      XCTAssertTrue("\(error)".contains("no credential 'db.chap' in \(credentials); add LoadCredential=db.chap:FILE"), "\(error)")
    }
    try "s3cret-s3cret".write(toFile: credentials + "/db.chap", atomically: false, encoding: .utf8)
    chmod(credentials + "/db.chap", 0o400)
    XCTAssertEqual(try c.secretPath("chap_secret_file"), credentials + "/db.chap")
    XCTAssertNil(try c.secretPath("mutual_secret_file"))
    XCTAssertNoThrow(try c.validate())
    chmod(credentials + "/db.chap", 0o644)
    XCTAssertThrowsError(try c.secretPath("chap_secret_file"))
  }

  func testCredentialKeysCombineAsSecretFilesDo() throws {
    XCTAssertThrowsError(try parse("chap_user = \"h\"\nchap_secret_file = \"/etc/s\"\nchap_secret_credential = \"c\"\n")) {
      XCTAssertTrue("\($0)".contains("keys 'chap_secret_file' and 'chap_secret_credential' both name the secret"), "\($0)")
    }
    XCTAssertThrowsError(try parse("chap_secret_credential = \"c\"\n")) {
      XCTAssertTrue("\($0)".contains("key 'chap_secret_credential' needs chap_user"), "\($0)")
    }
    XCTAssertThrowsError(try parse("chap_user = \"h\"\nchap_secret_credential = \"../x\"\n")) {
      XCTAssertTrue("\($0)".contains("must be a credential name"), "\($0)")
    }
    XCTAssertNoThrow(
      try parse("chap_user = \"h\"\nchap_secret_credential = \"c\"\nmutual_user = \"t\"\nmutual_secret_credential = \"m\"\n"))
    XCTAssertThrowsError(try parse("chap_user = \"h\"\nchap_secret_credential = \"c\"\nmutual_user = \"t\"\n")) {
      XCTAssertTrue("\($0)".contains("needs mutual_secret_file or mutual_secret_credential"), "\($0)")
    }
  }

  func testWatchdogPeriodIsHalfOfWhatSystemdAsks() {
    XCTAssertNil(SystemdWatchdog.period(environment: [:]))
    XCTAssertEqual(SystemdWatchdog.period(environment: ["WATCHDOG_USEC": "30000000"]), .seconds(15))
    XCTAssertEqual(
      SystemdWatchdog.period(environment: ["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "\(getpid())"]), .seconds(15))
    // For another process (a child that inherited the variables): not ours to ping.
    XCTAssertNil(SystemdWatchdog.period(environment: ["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"]))
    XCTAssertNil(SystemdWatchdog.period(environment: ["WATCHDOG_USEC": "0"]))
  }

  /// The pings reach $NOTIFY_SOCKET while the loops turn, and stop while one is stuck.
  func testWatchdogPingsOnlyWhileEveryLoopTurns() throws {
    let path = tmp + "/notify"
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
    XCTAssertGreaterThanOrEqual(fd, 0)
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
    let bound = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    XCTAssertEqual(bound, 0)
    setenv("NOTIFY_SOCKET", path, 1)
    defer { unsetenv("NOTIFY_SOCKET") }
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    defer { try? group.syncShutdownGracefully() }
    func pings(within seconds: Double) -> [String] {
      var got: [String] = []
      let end = Date().addingTimeInterval(seconds)
      while Date() < end {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 50) > 0 else { continue }
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = recv(fd, &buffer, buffer.count, 0)
        if n > 0 { got.append(String(decoding: buffer[0..<n], as: UTF8.self)) }
      }
      return got
    }
    let watchdog = SystemdWatchdog(group: group, period: .milliseconds(50))
    defer { watchdog.stop() }
    XCTAssertGreaterThanOrEqual(pings(within: 0.5).filter { $0 == "WATCHDOG=1" }.count, 3)
    // One loop blocked for 0.8 s: no ping in that time (the one that may be on its way
    // when the block starts aside).
    let stuck = group.any().submit { usleep(800_000) }
    usleep(100_000)
    XCTAssertLessThanOrEqual(pings(within: 0.6).count, 1)
    _ = try stuck.wait()
    XCTAssertGreaterThanOrEqual(pings(within: 0.5).count, 3)
  }

  /// `config check` shows every wrong key and value of a file, not just the first.
  func testConfigCheckCollectsEveryProblemOfAFile() throws {
    let path = try write(
      "many", "paths = [\"\(url)\"]\ntimeout = \"soon\"\npolicy = \"fastest\"\ntiemout = 3\nread_only = 1\ntimeout = 4\n")
    let problems = VolumeConfig.problems(path: path)
    XCTAssertEqual(problems.map(\.line), [2, 3, 4, 5, 6], "\(problems)")
    XCTAssertEqual(problems.map(\.kind), [.wrongType, .invalidValue, .unknownKey, .wrongType, .duplicateKey])
    // A syntax error stops the reading: one problem.
    let broken = try write("broken", "paths = [\"\(url)\"\ntimeout = \"soon\"\n")
    XCTAssertEqual(VolumeConfig.problems(path: broken).count, 1)
    // A good file has none; the missing file one.
    XCTAssertEqual(VolumeConfig.problems(path: try write("good", "paths = [\"\(url)\"]\n")), [])
    XCTAssertEqual(VolumeConfig.problems(path: tmp + "/volumes/absent.toml").map(\.kind), [.volumeFile])
  }

  func testReloadFailureKeepsItsClassAcrossTheControlSocket() throws {
    let reply = ControlReply(failure: VolumeConfigError(.invalidValue, file: "/x.toml", line: 2, key: "timeout", message: "bad"))
    let data = try ControlJSON.encoder().encode(reply)
    let back = try ControlJSON.decoder().decode(ControlReply.self, from: data)
    XCTAssertEqual(back.kind, .config)
    XCTAssertFalse(back.ok)
    XCTAssertEqual(ControlReply(failure: BridgeError(.notFound, "gone")).kind, .notFound)
    XCTAssertNil(ControlReply(failure: CancellationError()).kind)
  }
}
