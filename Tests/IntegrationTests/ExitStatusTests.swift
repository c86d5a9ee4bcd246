import Foundation
import XCTest

/// The command line's failures, each from the real case: one line `lunbridge: error: ...`
/// on stderr (no system call signature, no second line) and the exit status of its class,
/// as the README's table gives them (iscsiadm's numbers where iscsiadm has the class).
final class ExitStatusTests: XCTestCase {
  static let iqn = "iqn.2026-11.org.lunbridge.test:exit"
  var tgtd: TGTD!
  var scratch: String!
  var lunbridge: String { CommandLineTools.lunbridge }

  override func setUp() async throws {
    try CommandLineTools.require()
    tgtd = try TGTD()
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 8)
    try tgtd.bindAll(tid: 1)
    scratch = "/dev/shm/lunbridge-exit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
  }

  override func tearDown() async throws {
    tgtd?.stop()
    if let scratch { try? FileManager.default.removeItem(atPath: scratch) }
  }

  /// Runs lunbridge; its stderr must be exactly one error line, which is returned.
  func failure(_ arguments: [String], status: Int32, file: StaticString = #filePath, line: UInt = #line) throws
    -> String
  {
    let r = try Command.run(lunbridge, arguments, timeout: 60)
    XCTAssertEqual(r.status, status, "lunbridge \(arguments.joined(separator: " ")): \(r.stderr)", file: file, line: line)
    let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: true)
    XCTAssertEqual(lines.count, 1, "one line expected: \(r.stderr)", file: file, line: line)
    let text = lines.first.map(String.init) ?? ""
    XCTAssertTrue(text.hasPrefix("lunbridge: error: "), text, file: file, line: line)
    for noise in ["errno", "descriptor:", "Error:", "(error -"] {
      XCTAssertFalse(text.contains(noise), "system noise '\(noise)' in: \(text)", file: file, line: line)
    }
    return text
  }

  /// A loopback TCP listener; `reset`: every connection is read once and then reset.
  final class Listener {
    private(set) var fd: Int32
    let port: Int
    var thread: Thread?

    /// `answer`: every connection gets these bytes after its first read, then a close:
    /// a broken target (FakeBrokenTarget in spirit: no real target sends them).
    init(reset: Bool, answer: [UInt8]? = nil) throws {
      let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
      self.fd = fd
      var one: Int32 = 1
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
      var addr = sockaddr_in()
      addr.sin_family = sa_family_t(AF_INET)
      addr.sin_addr.s_addr = inet_addr("127.0.0.1")
      var len = socklen_t(MemoryLayout<sockaddr_in>.size)
      let ok = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          bind(fd, $0, len) == 0 && listen(fd, 8) == 0 && getsockname(fd, $0, &len) == 0
        }
      }
      guard ok else { throw TGTDError("cannot listen on loopback: \(String(cString: strerror(errno)))") }
      port = Int(UInt16(bigEndian: addr.sin_port))
      guard reset || answer != nil else { return }
      let t = Thread {
        while true {
          let c = accept(fd, nil, nil)
          guard c >= 0 else { return }
          // Read the login request, then reset: SO_LINGER 0 makes close send RST.
          var buffer = [UInt8](repeating: 0, count: 4096)
          _ = read(c, &buffer, buffer.count)
          if let answer {
            _ = answer.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
            usleep(500_000)
            close(c)
            continue
          }
          var l = linger(l_onoff: 1, l_linger: 0)
          setsockopt(c, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
          close(c)
        }
      }
      t.start()
      thread = t
    }

    /// Stops listening (once; the descriptor is not closed twice).
    func stop() {
      guard fd >= 0 else { return }
      shutdown(fd, Int32(SHUT_RDWR))
      close(fd)
      fd = -1
    }

    deinit { stop() }
  }

  func testAPortalThatIsNotListeningIsUnreachable() throws {
    let closed = try Listener(reset: false)
    let port = closed.port
    closed.stop()
    let text = try failure(["info", "iscsi://127.0.0.1:\(port)/\(Self.iqn)/1"], status: 4)
    XCTAssertEqual(text, "lunbridge: error: cannot connect to portal 127.0.0.1:\(port): connection refused")
  }

  func testAPortalThatResetsDuringLoginIsUnreachableInPlainWords() throws {
    let listener = try Listener(reset: true)
    let text = try failure(["info", "iscsi://127.0.0.1:\(listener.port)/\(Self.iqn)/1"], status: 4)
    XCTAssertEqual(
      text, "lunbridge: error: connection to 127.0.0.1:\(listener.port) lost during login: connection reset by peer")
  }

  func testATargetThatRefusesLoginsIsLoginRefused() throws {
    // tgtd answers every login to an offline target with a target error (class 3).
    try tgtd.tgtadm(["--op", "update", "--mode", "target", "--tid", "1", "-n", "state", "-v", "offline"])
    let text = try failure(["info", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1"], status: 5)
    XCTAssertTrue(text.hasPrefix("lunbridge: error: login failed: target error (status 0x0300"), text)
  }

  func testATargetThatBreaksTheProtocolIsAProtocolError() throws {
    // An answer to the Login Request with an initiator's opcode (0x05, SCSI Data-Out): no
    // real target sends it, hence a listener of the test's own.
    var pdu = [UInt8](repeating: 0, count: 48)
    pdu[0] = 0x05
    let broken = try Listener(reset: false, answer: pdu)
    let text = try failure(["info", "iscsi://127.0.0.1:\(broken.port)/\(Self.iqn)/1"], status: 76)
    XCTAssertTrue(text.contains("opcode") || text.contains("protocol"), text)
  }

  func testAttachWithoutTheNBDModuleSaysSo() throws {
    // On a kernel that has nbd loaded, a mount namespace hides it (/sys/module/nbd is
    // what attach looks at); this machine's own kernel has no nbd at all.
    let url = "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1"
    let arguments =
      FileManager.default.fileExists(atPath: "/sys/module/nbd")
      ? ["/usr/bin/unshare", "--mount", "/bin/sh", "-c", "mount -t tmpfs none /sys/module && exec \"$0\" \"$@\"", lunbridge]
      : [lunbridge]
    let r = try Command.run(arguments[0], Array(arguments.dropFirst()) + ["attach", url, "--foreground"], timeout: 60)
    XCTAssertEqual(r.status, 12, r.stderr)
    XCTAssertEqual(
      r.stderr.trimmingCharacters(in: .whitespacesAndNewlines),
      "lunbridge: error: the nbd kernel module is not loaded: run modprobe nbd")
  }

  func testAMissingTargetOrLUNIsNotFound() throws {
    _ = try failure(["info", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)-nope/1"], status: 21)
    let text = try failure(["info", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/7"], status: 21)
    XCTAssertTrue(text.hasPrefix("lunbridge: error: LUN 7 does not exist on this target"), text)
    XCTAssertTrue(text.hasSuffix("; the target's LUNs: 0, 1"), "the existing LUNs listed: \(text)")
  }

  func testAWrongCHAPSecretFailsAuthentication() throws {
    try tgtd.addAccount(user: "exituser", password: "right-secret-1")
    try tgtd.bindAccount(tid: 1, user: "exituser")
    let secret = scratch + "/secret"
    try "wrong-secret-1\n".write(toFile: secret, atomically: true, encoding: .utf8)
    chmod(secret, 0o600)
    _ = try failure(
      ["info", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1", "--chap-user", "exituser", "--chap-secret-file", secret],
      status: 24)
  }

  func testAnOptionMistakeSaysSoAndShowsTheSubcommandsUsage() throws {
    for (arguments, first, usage) in [
      (["info"], "lunbridge: error: Missing expected argument '<url>'", "Usage: lunbridge info <url>"),
      (
        ["serve", "iscsi://127.0.0.1:1/\(Self.iqn)/1", "notaurl", "--listen", "unix:/tmp/x.sock"],
        "lunbridge: error: 'notaurl': several paths must all be iscsi:// URLs (a volume NAME stands alone)",
        "Usage: lunbridge serve "
      ),
    ] {
      let r = try Command.run(lunbridge, arguments, timeout: 30)
      XCTAssertEqual(r.status, 64, r.stderr)
      XCTAssertEqual(r.stderr.split(separator: "\n").first.map(String.init), first)
      XCTAssertTrue(r.stderr.contains(usage), r.stderr)
    }
  }

  func testABadURLIsAUsageError() throws {
    let text = try failure(["info", "http://127.0.0.1/\(Self.iqn)/1"], status: 64)
    XCTAssertTrue(text.contains("http://127.0.0.1/"), text)
  }

  func testInfoChecksTheURLsQueryAsServeDoes() throws {
    let text = try failure(["info", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1?ifcae=lo"], status: 64)
    XCTAssertTrue(text.contains("unknown parameter 'ifcae'"), text)
    // A NIC that does not exist: the path cannot be used, as attach would find.
    _ = try failure(["info", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1?iface=nosuchnic0"], status: 4)
  }

  func testAnInitiatorNameThatIsNotAnIQNIsAUsageErrorAndCapitalsAreLowered() throws {
    let text = try failure(
      ["info", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1", "--initiator-name", "notaniqn"], status: 64)
    XCTAssertTrue(text.contains("--initiator-name: 'notaniqn' is not an iSCSI name"), text)
    // The target's name typed in capitals still finds it (RFC 3722: compared in lower case).
    let r = try Command.run(
      lunbridge, ["info", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn.uppercased())/1", "--json"], timeout: 60)
    XCTAssertEqual(r.status, 0, r.stderr)
  }

  func testABrokenVolumeFileIsAConfigurationError() throws {
    let file = scratch + "/broken.toml"
    try "paths = [\"iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1\"]\nno_such_key = 1\n".write(
      toFile: file, atomically: true, encoding: .utf8)
    _ = try failure(["config", "check", file], status: 6)
  }

  /// `config check` without a name: every NAME.toml of the directory, in name order, one
  /// line each (ok on stdout, each problem on stderr), other files left alone; a broken one
  /// makes the exit status 6.
  func testConfigCheckWithoutANameChecksEveryVolumeFileOfTheDirectory() throws {
    let dir = scratch + "/volumes"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let url = "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1"
    try "paths = [\"\(url)\"]\n".write(toFile: dir + "/good.toml", atomically: true, encoding: .utf8)
    try "paths = [\"\(url)\"]\ntimout = 1\n".write(toFile: dir + "/bad.toml", atomically: true, encoding: .utf8)
    try "not a volume\n".write(toFile: dir + "/README", atomically: true, encoding: .utf8)
    let text = try failure(["config", "check", "--directory", dir], status: 6)
    XCTAssertEqual(text, "lunbridge: error: \(dir)/bad.toml: line 2: unknown key 'timout' (did you mean 'timeout'?)")
    let r = try Command.run(lunbridge, ["config", "check", "--directory", dir], timeout: 60)
    XCTAssertEqual(r.stdout, "\(dir)/good.toml: ok\n")
    try FileManager.default.removeItem(atPath: dir + "/bad.toml")
    let ok = try Command.run(lunbridge, ["config", "check", "--directory", dir], timeout: 60)
    XCTAssertEqual(ok.status, 0, ok.stderr)
    XCTAssertEqual(ok.stderr, "")
  }

  func testCertificatesThatCannotBeUsedAreAConfigurationError() throws {
    let dir = scratch + "/tls-garbage"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for name in ["ca-cert.pem", "server-cert.pem", "server-key.pem"] {
      try "not a certificate\n".write(toFile: dir + "/" + name, atomically: true, encoding: .utf8)
    }
    let text = try failure(
      ["serve", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1", "--listen", "unix:\(dir)/nbd.sock", "--tls-certificates", dir],
      status: 6)
    XCTAssertTrue(text.hasPrefix("lunbridge: error: --tls-certificates \(dir): "), text)
  }

  func testAnAddressInUseIsBusy() throws {
    let taken = try Listener(reset: false)
    let text = try failure(
      ["serve", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1", "--listen", "tcp:127.0.0.1:\(taken.port)"], status: 28)
    XCTAssertEqual(text, "lunbridge: error: cannot listen on tcp:127.0.0.1:\(taken.port): address already in use")
  }

  func testAttachAsAUserNeedsRoot() throws {
    // setpriv (util-linux) drops to nobody; attach checks for root before anything else.
    let r = try Command.run(
      "/usr/bin/setpriv",
      [
        "--reuid=65534", "--regid=65534", "--clear-groups", lunbridge, "attach",
        "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1", "--foreground",
      ], timeout: 60)
    XCTAssertEqual(r.status, 13, r.stderr)
    XCTAssertEqual(
      r.stderr.trimmingCharacters(in: .whitespacesAndNewlines),
      "lunbridge: error: attach needs root (CAP_SYS_ADMIN) to configure NBD devices")
  }

  func testALogFileThatCannotBeOpenedIsAPlainFailure() throws {
    let text = try failure(
      [
        "serve", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1", "--listen", "unix:\(scratch!)/x.sock",
        "--log-file", "\(scratch!)/no/such/dir/serve.log",
      ], status: 1)
    XCTAssertEqual(text, "lunbridge: error: cannot open log file \(scratch!)/no/such/dir/serve.log: no such file or directory")
  }

  func testAVolumeThatIsNotRunningIsNotFound() throws {
    let text = try failure(["status", "no-such-volume-\(getpid())"], status: 21)
    XCTAssertTrue(text.contains("no-such-volume"), text)
  }
}
