import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Error raised by the tgtd test harness. The message is meant to be read by whoever
/// sees the failed test, so it carries tgtd's / tgtadm's own output.
struct TGTDError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

/// Result of running an external command.
struct CommandResult {
  let status: Int32
  let stdout: String
  let stderr: String
  let timedOut: Bool
}

/// Runs external tools with a bounded wait (a paused tgtd makes tgtadm block forever).
enum Command {
  /// Finds `name` on PATH (plus the sbin directories, which a non-login PATH may lack).
  /// Throws with `hint` (e.g. which Debian package to install) when it is not there.
  static func locate(_ name: String, hint: String, path: String? = nil) throws -> String {
    let searchPath = path ?? ProcessInfo.processInfo.environment["PATH"] ?? ""
    var dirs = searchPath.split(separator: ":").map(String.init)
    if path == nil {
      for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] where !dirs.contains(extra) {
        dirs.append(extra)
      }
    }
    for dir in dirs where !dir.isEmpty {
      let candidate = dir + "/" + name
      if access(candidate, X_OK) == 0 { return candidate }
    }
    throw TGTDError("\(name) not found on PATH: \(hint)")
  }

  /// Runs `executable` with `arguments`, waits at most `timeout` seconds (then SIGKILLs it).
  static func run(_ executable: String, _ arguments: [String], timeout: TimeInterval = 30)
    throws -> CommandResult
  {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardInput = FileHandle.nullDevice
    let outPipe = Pipe()
    let errPipe = Pipe()
    process.standardOutput = outPipe
    process.standardError = errPipe
    let exited = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in exited.signal() }
    try process.run()

    // Drain both pipes concurrently so neither can fill up and block the child.
    let group = DispatchGroup()
    let box = OutputBox()
    DispatchQueue.global().async(group: group) {
      box.setOut(outPipe.fileHandleForReading.readDataToEndOfFile())
    }
    DispatchQueue.global().async(group: group) {
      box.setErr(errPipe.fileHandleForReading.readDataToEndOfFile())
    }
    // Note: swift-corelibs-foundation notices a child's exit through a socket the child
    // inherits, so a child that leaves a daemon holding that fd looks alive until the
    // daemon exits (Tests/lib/tgtd.sh closes inherited fds for this reason). Never wait
    // unboundedly here.
    var timedOut = false
    if exited.wait(timeout: .now() + timeout) == .timedOut {
      timedOut = true
      Glibc.kill(process.processIdentifier, SIGKILL)
      _ = exited.wait(timeout: .now() + 5)
    }
    _ = group.wait(timeout: .now() + 5)
    try? outPipe.fileHandleForReading.close()
    try? errPipe.fileHandleForReading.close()
    let status: Int32 = process.isRunning ? -1 : process.terminationStatus
    return CommandResult(
      status: status,
      stdout: String(decoding: box.out, as: UTF8.self),
      stderr: String(decoding: box.err, as: UTF8.self),
      timedOut: timedOut)
  }

  private final class OutputBox: @unchecked Sendable {
    private let lock = NSLock()
    private var _out = Data()
    private var _err = Data()
    var out: Data { lock.lock(); defer { lock.unlock() }; return _out }
    var err: Data { lock.lock(); defer { lock.unlock() }; return _err }
    func setOut(_ d: Data) { lock.lock(); _out = d; lock.unlock() }
    func setErr(_ d: Data) { lock.lock(); _err = d; lock.unlock() }
  }
}

/// A private tgtd (Linux SCSI target, Debian package `tgt`) for one test: its own iSCSI
/// port on loopback, its own control port, its own RAM-backed LUN files under /dev/shm.
/// `stop()` (also run by `deinit`) makes sure the process does not outlive the test.
///
/// A thin wrapper: tgtd is started and stopped by Tests/lib/tgtd.sh, as every other suite
/// starts it (port and control-port choice, fd hygiene, the portal check after start:
/// tgt 1.0.85 falls back to 0.0.0.0:3260 when it cannot bind a portal; the clean exit,
/// since it ignores SIGTERM). This class adds tgtadm calls and faults for the tests.
/// `@unchecked Sendable`: a test may cut connections from a task (tgtadm calls, no state
/// of this object changes) while its main line waits; start and stop stay on the main line.
final class TGTD: @unchecked Sendable {
  static let packageHint = "install the Debian package tgt (make deps)"
  /// Tests/lib/tgtd.sh, found from this file.
  static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("lib/tgtd.sh").standardized.path

  let port: Int
  let controlPort: Int
  private(set) var addresses: [String]
  /// Private directory (under /dev/shm) holding backing files, tgtd's log and state.
  let tempDir: String
  /// Seconds every tgtadm call may take (a paused tgtd never answers).
  var tgtadmTimeout: TimeInterval = 10

  private let tgtadmPath: String
  private var processID: Int32?
  private var logPath: String { tempDir + "/tgtd.log" }
  private var removed = false

  /// PID of the running tgtd, or nil once it has been stopped/killed.
  var pid: Int32? {
    guard let p = processID, TGTD.isOurTgtd(p, controlPort: controlPort) else { return nil }
    return p
  }

  init(portals: [String] = ["127.0.0.1"]) throws {
    precondition(!portals.isEmpty, "at least one portal address")
    for a in portals where !TGTD.isLoopback(a) {
      throw TGTDError("refusing non-loopback portal address \(a)")
    }
    _ = try Command.locate("tgtd", hint: TGTD.packageHint)
    tgtadmPath = try Command.locate("tgtadm", hint: TGTD.packageHint)
    addresses = portals
    TGTD.killOrphans()

    let template = "/dev/shm/lunbridge-tgtd-XXXXXX"
    var buf = Array(template.utf8CString)
    guard mkdtemp(&buf) != nil else {
      throw TGTDError("mkdtemp under /dev/shm failed: errno \(errno)")
    }
    tempDir = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    // Whose tgtd this is: killOrphans leaves it alone while this process lives.
    try? "\(getpid())\n".write(toFile: tempDir + "/owner", atomically: true, encoding: .utf8)
    do {
      let started = try TGTD.start(in: tempDir, portals: portals, port: nil, controlPort: nil)
      (port, controlPort, processID) = (started.port, started.controlPort, started.pid)
    } catch {
      try? FileManager.default.removeItem(atPath: tempDir)
      throw error
    }
  }

  /// `Tests/lib/tgtd.sh start DIR` without a target (the tests add theirs).
  private static func start(in dir: String, portals: [String], port: Int?, controlPort: Int?) throws
    -> (port: Int, controlPort: Int, pid: Int32)
  {
    var env = ["TGTD_LUNS=0", "TGTD_PORTALS=\(portals.joined(separator: " "))"]
    if let port { env.append("TGTD_PORT=\(port)") }
    if let controlPort { env.append("TGTD_CP=\(controlPort)") }
    let r = try Command.run("/usr/bin/env", env + ["/bin/bash", script, "start", dir], timeout: 30)
    func read(_ name: String) -> String {
      ((try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }
    guard r.status == 0, let p = Int(read("port")), let cp = Int(read("cp")), let pid = Int32(read("pid")) else {
      throw TGTDError("\(script) start \(dir) failed (status \(r.status)):\n\(r.stderr)")
    }
    return (p, cp, pid)
  }

  deinit { stop() }

  // MARK: - tgtadm

  /// Runs `tgtadm -C CP --lld iscsi ARGS`; throws with stdout/stderr unless it exits 0.
  @discardableResult
  func tgtadm(_ args: [String]) throws -> String {
    try TGTD.tgtadm(tgtadmPath, controlPort: controlPort, args, timeout: tgtadmTimeout)
  }

  private static func tgtadm(
    _ path: String, controlPort: Int, _ args: [String], timeout: TimeInterval
  ) throws -> String {
    let full = ["-C", String(controlPort), "--lld", "iscsi"] + args
    let r = try Command.run(path, full, timeout: timeout)
    guard !r.timedOut, r.status == 0 else {
      let why = r.timedOut ? "timed out after \(timeout) s (tgtd paused?)" : "exit status \(r.status)"
      throw TGTDError(
        "tgtadm \(full.joined(separator: " ")) failed: \(why)\nstdout: \(r.stdout)\nstderr: \(r.stderr)")
    }
    return r.stdout
  }

  // MARK: - Configuration

  func addTarget(tid: Int, iqn: String) throws {
    try tgtadm(["--op", "new", "--mode", "target", "--tid", String(tid), "-T", iqn])
  }

  /// Creates a sparse RAM-backed file and a LUN on it; returns the backing file's path.
  @discardableResult
  func addLUN(tid: Int, lun: Int, sizeMiB: Int, blockSize: Int = 512, thin: Bool = false) throws
    -> String
  {
    let path = "\(tempDir)/t\(tid)-lun\(lun).img"
    guard FileManager.default.createFile(atPath: path, contents: nil),
      truncate(path, off_t(sizeMiB) * 1024 * 1024) == 0
    else {
      throw TGTDError("cannot create \(sizeMiB) MiB backing file \(path): errno \(errno)")
    }
    var args = [
      "--op", "new", "--mode", "logicalunit", "--tid", String(tid), "--lun", String(lun), "-b", path,
    ]
    if blockSize != 512 { args.append("--blocksize=\(blockSize)") }
    try tgtadm(args)
    if thin {
      try tgtadm([
        "--op", "update", "--mode", "logicalunit", "--tid", String(tid), "--lun", String(lun),
        "--params", "thin_provisioning=1",
      ])
    }
    return path
  }

  /// Lets every initiator in (`-I ALL`).
  func bindAll(tid: Int) throws {
    try tgtadm(["--op", "bind", "--mode", "target", "--tid", String(tid), "-I", "ALL"])
  }

  /// Sets a negotiation key (HeaderDigest, MaxBurstLength, ...) for later logins.
  func setParameter(tid: Int, name: String, value: String) throws {
    try tgtadm([
      "--op", "update", "--mode", "target", "--tid", String(tid), "-n", name, "-v", value,
    ])
  }

  func addAccount(user: String, password: String) throws {
    try tgtadm(["--op", "new", "--mode", "account", "--user", user, "--password", password])
  }

  /// Binds a CHAP account to a target; `outgoing` = the target's own (mutual CHAP) identity.
  func bindAccount(tid: Int, user: String, outgoing: Bool = false) throws {
    var args = ["--op", "bind", "--mode", "account", "--tid", String(tid), "--user", user]
    if outgoing { args.append("--outgoing") }
    try tgtadm(args)
  }

  /// Takes a LUN offline / online. (tgt 1.0.85 wants `--params online=0|1`;
  /// `-P Online=No` is rejected with "invalid request".)
  func setLUNOnline(tid: Int, lun: Int, online: Bool) throws {
    try tgtadm([
      "--op", "update", "--mode", "logicalunit", "--tid", String(tid), "--lun", String(lun),
      "--params", "online=\(online ? 1 : 0)",
    ])
  }

  /// Adds a listening portal on the same port (a second "NIC"). Loopback only.
  func addPortal(_ address: String) throws {
    guard TGTD.isLoopback(address) else {
      throw TGTDError("refusing non-loopback portal address \(address)")
    }
    try tgtadm(["--op", "new", "--mode", "portal", "--param", "portal=" + TGTD.portal(address, port)])
    if !addresses.contains(address) { addresses.append(address) }
  }

  func removePortal(_ address: String) throws {
    try tgtadm([
      "--op", "delete", "--mode", "portal", "--param", "portal=" + TGTD.portal(address, port),
    ])
    addresses.removeAll { $0 == address }
  }

  /// The portals tgtd reports (`Portal: 127.0.0.1:3260,1` → "127.0.0.1:3260").
  func portals() throws -> [String] {
    TGTD.parsePortals(try tgtadm(["--op", "show", "--mode", "portal"]))
  }

  // MARK: - Connections

  struct Connection: Equatable {
    var sid: Int
    var cid: Int
    var initiator: String?
    var address: String?
  }

  func connections(tid: Int) throws -> [(sid: Int, cid: Int)] {
    try connectionDetails(tid: tid).map { ($0.sid, $0.cid) }
  }

  func connectionDetails(tid: Int) throws -> [Connection] {
    TGTD.parseConnections(try tgtadm(["--op", "show", "--mode", "conn", "--tid", String(tid)]))
  }

  /// Cuts one connection (tgtd closes the socket; the initiator sees EOF/reset).
  func deleteConnection(tid: Int, sid: Int, cid: Int) throws {
    try tgtadm([
      "--op", "delete", "--mode", "conn", "--tid", String(tid), "--sid", String(sid), "--cid",
      String(cid),
    ])
  }

  func deleteAllConnections(tid: Int) throws {
    for c in try connections(tid: tid) {
      try deleteConnection(tid: tid, sid: c.sid, cid: c.cid)
    }
  }

  /// Parses `tgtadm --op show --mode conn --tid N`. tgt 1.0.85 prints
  ///
  ///     Session: 3
  ///         Connection: 0
  ///             Initiator: iqn.2010-11.libiscsi:iscsi-perf
  ///             IP Address: 127.0.0.1
  ///
  /// (nothing at all when there is no connection). Also accepts the `I_T nexus: N` form
  /// used in `--op show --mode target`, so either output can be fed in.
  static func parseConnections(_ text: String) -> [Connection] {
    var result: [Connection] = []
    var sid: Int? = nil
    for raw in text.split(whereSeparator: \.isNewline) {
      let line = raw.trimmingCharacters(in: .whitespaces)
      func value(after prefix: String) -> String? {
        guard line.hasPrefix(prefix) else { return nil }
        return line.dropFirst(prefix.count).trimmingCharacters(in: .whitespaces)
      }
      if let v = value(after: "Session:") ?? value(after: "I_T nexus:") {
        sid = Int(v)
      } else if let v = value(after: "Connection:"), let s = sid, let c = Int(v) {
        result.append(Connection(sid: s, cid: c))
      } else if let v = value(after: "Initiator:"), !result.isEmpty {
        // target-mode output: "Initiator: iqn... alias: none"
        let name = v.components(separatedBy: " alias:").first ?? v
        if result[result.count - 1].initiator == nil { result[result.count - 1].initiator = name }
      } else if let v = value(after: "IP Address:"), !result.isEmpty {
        result[result.count - 1].address = v
      }
    }
    return result
  }

  static func parsePortals(_ text: String) -> [String] {
    text.split(whereSeparator: \.isNewline).compactMap { raw in
      let line = raw.trimmingCharacters(in: .whitespaces)
      guard line.hasPrefix("Portal:") else { return nil }
      let v = line.dropFirst("Portal:".count).trimmingCharacters(in: .whitespaces)
      return v.components(separatedBy: ",").first
    }
  }

  // MARK: - Faults and lifetime

  /// A hang without a reset: SIGSTOP (connections stay open, nothing answers; tgtadm
  /// calls time out until `resume()`).
  func pause() throws { try signal(SIGSTOP) }

  func resume() throws { try signal(SIGCONT) }

  /// A crash: SIGKILL. The kernel closes tgtd's sockets. Configuration is gone;
  /// `restart()` brings up an empty tgtd on the same port and control port.
  func kill() {
    if let p = pid {
      Glibc.kill(p, SIGKILL)
      TGTD.waitGone(p)
    }
    processID = nil
    removeControlSocket()
  }

  /// Starts a fresh tgtd (no targets, no accounts) on the same port/control port/portals,
  /// killing the current one first if it still runs.
  func restart() throws {
    kill()
    processID = try TGTD.start(in: tempDir, portals: addresses, port: port, controlPort: controlPort).pid
  }

  /// tgtd's stderr so far (for failure messages).
  func log() -> String {
    (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
  }

  /// Stops tgtd (Tests/lib/tgtd.sh: a clean exit, SIGKILL after 3 s) and removes the temp
  /// dir. Safe to call more than once.
  func stop() {
    if let p = pid {
      _ = try? Command.run("/bin/bash", [TGTD.script, "stop", tempDir], timeout: 30)
      if TGTD.isOurTgtd(p, controlPort: controlPort) { Glibc.kill(p, SIGKILL) }
      TGTD.waitGone(p)
    }
    processID = nil
    removeControlSocket()
    if !removed {
      try? FileManager.default.removeItem(atPath: tempDir)
      removed = true
    }
  }

  /// True while `pid` is a live (not zombie) tgtd with this control port.
  static func isOurTgtd(_ pid: Int32, controlPort: Int) -> Bool {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty,
      let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")"), !stat[stat.index(after: close)...].hasPrefix(" Z")
    else { return false }
    let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    return args.first.map { $0.hasSuffix("tgtd") } == true && args.contains(String(controlPort))
  }

  /// Waits (at most 5 s) until `pid` has exited and been reaped by whoever adopted it.
  static func waitGone(_ pid: Int32) {
    for _ in 0..<250 where FileManager.default.fileExists(atPath: "/proc/\(pid)") { usleep(20_000) }
  }

  private func signal(_ sig: Int32) throws {
    guard let pid else { throw TGTDError("tgtd is not running") }
    if Glibc.kill(pid, sig) != 0 { throw TGTDError("kill(\(pid), \(sig)) failed: errno \(errno)") }
  }

  /// tgtd leaves /var/run/tgtd/socket.CP and socket.CP.lock behind; remove ours once
  /// nobody holds the lock any more.
  private func removeControlSocket() {
    guard !TGTD.controlPortInUse(controlPort) else { return }
    let base = "/var/run/tgtd/socket.\(controlPort)"
    unlink(base)
    unlink(base + ".lock")
  }

  /// A test runner that was SIGKILLed (or crashed) cannot run `stop()`, so its tgtd
  /// lives on. Kill such leftovers of earlier runs: tgtd processes whose log is a harness
  /// directory /dev/shm/lunbridge-tgtd-*/tgtd.log whose owner process is gone.
  static func killOrphans() {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    for e in entries {
      guard let pid = Int32(e), pid != getpid(),
        let comm = try? String(contentsOfFile: "/proc/\(e)/comm", encoding: .utf8),
        comm.trimmingCharacters(in: .whitespacesAndNewlines) == "tgtd",
        let log = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(e)/fd/2"),
        log.hasPrefix("/dev/shm/lunbridge-tgtd-"), log.hasSuffix("/tgtd.log")
      else { continue }
      let dir = (log as NSString).deletingLastPathComponent
      let owner = ((try? String(contentsOfFile: dir + "/owner", encoding: .utf8)) ?? "")
        .trimmingCharacters(in: .whitespacesAndNewlines)
      if let o = Int32(owner), o == getpid() || FileManager.default.fileExists(atPath: "/proc/\(o)") { continue }
      Glibc.kill(pid, SIGKILL)
      waitGone(pid)
      try? FileManager.default.removeItem(atPath: dir)
    }
  }

  static func parseTids(_ text: String) -> [Int] {
    text.split(whereSeparator: \.isNewline).compactMap { line in
      guard line.hasPrefix("Target ") else { return nil }
      let rest = line.dropFirst("Target ".count)
      return Int(rest.prefix { $0.isNumber })
    }
  }

  // MARK: - Addresses and ports

  static func portal(_ address: String, _ port: Int) -> String {
    address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)"
  }

  static func isLoopback(_ address: String) -> Bool {
    if address == "::1" { return true }
    var a = in_addr()
    guard inet_pton(AF_INET, address, &a) == 1 else { return false }
    return UInt32(bigEndian: a.s_addr) >> 24 == 127
  }

  /// A TCP port that is free on every given address (bind port 0 on the first, then check
  /// the others).
  static func freePort(on addresses: [String]) throws -> Int {
    for _ in 0..<50 {
      guard let p = bindPort(addresses[0], 0) else { continue }
      if addresses.dropFirst().allSatisfy({ bindPort($0, p) != nil }) { return p }
    }
    throw TGTDError("no free TCP port on \(addresses)")
  }

  /// Binds address:port (0 = any), returns the bound port, closes the socket.
  private static func bindPort(_ address: String, _ port: Int) -> Int? {
    withSockaddr(address, port) { sa, len, family in
      let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
      guard fd >= 0 else { return nil }
      defer { close(fd) }
      var one: Int32 = 1
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
      guard bind(fd, sa, len) == 0 else { return nil }
      var ss = sockaddr_storage()
      var sl = socklen_t(MemoryLayout<sockaddr_storage>.size)
      let ok = withUnsafeMutablePointer(to: &ss) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &sl) }
      }
      guard ok == 0 else { return nil }
      return withUnsafePointer(to: &ss) { ptr -> Int in
        if family == AF_INET6 {
          return ptr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
            Int(UInt16(bigEndian: $0.pointee.sin6_port))
          }
        }
        return ptr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
          Int(UInt16(bigEndian: $0.pointee.sin_port))
        }
      }
    }
  }

  /// True if a TCP connection to address:port succeeds (it is closed at once).
  static func canConnect(_ address: String, _ port: Int) -> Bool {
    withSockaddr(address, port) { sa, len, family in
      let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
      guard fd >= 0 else { return false }
      defer { close(fd) }
      return connect(fd, sa, len) == 0
    } ?? false
  }

  private static func withSockaddr<R>(
    _ address: String, _ port: Int,
    _ body: (UnsafePointer<sockaddr>, socklen_t, Int32) -> R?
  ) -> R? {
    if address.contains(":") {
      var sa = sockaddr_in6()
      sa.sin6_family = sa_family_t(AF_INET6)
      sa.sin6_port = UInt16(port).bigEndian
      guard inet_pton(AF_INET6, address, &sa.sin6_addr) == 1 else { return nil }
      return withUnsafePointer(to: &sa) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          body($0, socklen_t(MemoryLayout<sockaddr_in6>.size), AF_INET6)
        }
      }
    }
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_port = UInt16(port).bigEndian
    guard inet_pton(AF_INET, address, &sa.sin_addr) == 1 else { return nil }
    return withUnsafePointer(to: &sa) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        body($0, socklen_t(MemoryLayout<sockaddr_in>.size), AF_INET)
      }
    }
  }

  /// True if some process holds the POSIX lock tgtd takes on /var/run/tgtd/socket.N.lock.
  static func controlPortInUse(_ cp: Int) -> Bool {
    let fd = open("/var/run/tgtd/socket.\(cp).lock", O_RDONLY)
    if fd < 0 { return false }
    defer { close(fd) }
    var fl = flock()
    fl.l_type = Int16(F_WRLCK)
    fl.l_whence = Int16(SEEK_SET)
    fl.l_start = 0
    fl.l_len = 0
    guard fcntl(fd, F_GETLK, &fl) == 0 else { return true }
    return fl.l_type != Int16(F_UNLCK)
  }
}

/// The built `lunbridge` binary and Debian's Python with libnbd, for the tests that drive
/// the command line and an NBD client; a missing one fails the test saying what to do.
enum CommandLineTools {
  static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..")
    .standardized
  static var lunbridge: String { repo.appendingPathComponent(".build/debug/lunbridge").path }
  /// Debian's python3: the first one on PATH may lack the nbd module.
  static let python = "/usr/bin/python3"

  static func require() throws {
    guard FileManager.default.isExecutableFile(atPath: lunbridge) else {
      throw TGTDError("\(lunbridge) is missing: build it first (swift build, as make test does)")
    }
    guard (try? Command.run(python, ["-c", "import nbd"]))?.status == 0 else {
      throw TGTDError("Debian's /usr/bin/python3 with the nbd module is needed: install python3-libnbd (make deps)")
    }
  }
}
