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
    // daemon exits (tgtd-private.sh closes inherited fds for this reason). Never wait
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
/// tgtd facts this relies on (tgt 1.0.85, Debian 12):
/// - SIGTERM is caught and ignored; a clean exit is `--op delete --mode system`, which
///   only succeeds once no target is left. Otherwise SIGKILL.
/// - If no portal can be bound, tgtd does not exit: it falls back to 0.0.0.0:3260 and
///   [::]:3260. So the portal list is verified after start (and tgtd killed if wrong).
/// - The control port only names /var/run/tgtd/socket.N (+ .lock, a POSIX lock); tgtd
///   accepts at most 32767.
/// `@unchecked Sendable`: a test may cut connections from a task (tgtadm calls, no state
/// of this object changes) while its main line waits; start and stop stay on the main line.
final class TGTD: @unchecked Sendable {
  static let packageHint = "install the Debian package tgt (make deps)"

  let port: Int
  let controlPort: Int
  private(set) var addresses: [String]
  /// Private directory (under /dev/shm) holding backing files and tgtd's log.
  let tempDir: String
  /// Seconds every tgtadm call may take (a paused tgtd never answers).
  var tgtadmTimeout: TimeInterval = 10

  private let tgtdPath: String
  private let tgtadmPath: String
  private var process: Process?
  private var logPath: String { tempDir + "/tgtd.log" }
  private var removed = false

  private static let counterLock = NSLock()
  nonisolated(unsafe) private static var counter = 0

  /// PID of the running tgtd, or nil once it has been stopped/killed.
  var pid: Int32? {
    guard let p = process, p.isRunning else { return nil }
    return p.processIdentifier
  }

  init(portals: [String] = ["127.0.0.1"]) throws {
    precondition(!portals.isEmpty, "at least one portal address")
    for a in portals where !TGTD.isLoopback(a) {
      throw TGTDError("refusing non-loopback portal address \(a)")
    }
    tgtdPath = try Command.locate("tgtd", hint: TGTD.packageHint)
    tgtadmPath = try Command.locate("tgtadm", hint: TGTD.packageHint)
    addresses = portals
    TGTD.killOrphans()

    let template = "/dev/shm/lunbridge-tgtd-XXXXXX"
    var buf = Array(template.utf8CString)
    guard mkdtemp(&buf) != nil else {
      throw TGTDError("mkdtemp under /dev/shm failed: errno \(errno)")
    }
    tempDir = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)

    var lastError: Error = TGTDError("tgtd did not start")
    var chosen: (port: Int, cp: Int)? = nil
    var started: Process? = nil
    for _ in 0..<5 {
      do {
        let p = try TGTD.freePort(on: portals)
        let cp = try TGTD.freeControlPort()
        started = try TGTD.launch(
          tgtd: tgtdPath, tgtadm: tgtadmPath, port: p, controlPort: cp, addresses: portals,
          logPath: tempDir + "/tgtd.log", timeout: tgtadmTimeout)
        chosen = (p, cp)
        break
      } catch {
        lastError = error
      }
    }
    guard let chosen, let started else {
      try? FileManager.default.removeItem(atPath: tempDir)
      throw lastError
    }
    port = chosen.port
    controlPort = chosen.cp
    process = started
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

  /// A crash: SIGKILL, reaped. The kernel closes tgtd's sockets. Configuration is gone;
  /// `restart()` brings up an empty tgtd on the same port and control port.
  func kill() {
    guard let p = process else { return }
    if p.isRunning {
      Glibc.kill(p.processIdentifier, SIGKILL)
      p.waitUntilExit()
    }
    process = nil
    removeControlSocket()
  }

  /// Starts a fresh tgtd (no targets, no accounts) on the same port/control port/portals,
  /// killing the current one first if it still runs.
  func restart() throws {
    kill()
    process = try TGTD.launch(
      tgtd: tgtdPath, tgtadm: tgtadmPath, port: port, controlPort: controlPort,
      addresses: addresses, logPath: logPath, timeout: tgtadmTimeout)
  }

  /// tgtd's stderr so far (for failure messages).
  func log() -> String {
    (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
  }

  /// Stops tgtd and removes the temp dir. Safe to call more than once.
  /// tgtd ignores SIGTERM, so: SIGCONT (in case it is paused), delete all targets and
  /// `--op delete --mode system` (a clean exit), and SIGKILL if it is not gone within 3 s.
  func stop() {
    if let p = process, p.isRunning {
      let pid = p.processIdentifier
      Glibc.kill(pid, SIGCONT)
      Glibc.kill(pid, SIGTERM)  // harmless; ignored by tgt 1.0.85, honoured by others
      let quick: TimeInterval = 3
      if let out = try? TGTD.tgtadm(
        tgtadmPath, controlPort: controlPort, ["--op", "show", "--mode", "target"], timeout: quick)
      {
        for tid in TGTD.parseTids(out) {
          _ = try? TGTD.tgtadm(
            tgtadmPath, controlPort: controlPort,
            ["--op", "delete", "--mode", "target", "--tid", String(tid), "--force"], timeout: quick)
        }
        _ = try? TGTD.tgtadm(
          tgtadmPath, controlPort: controlPort, ["--op", "delete", "--mode", "system"], timeout: quick)
      }
      let deadline = Date().addingTimeInterval(quick)
      while p.isRunning && Date() < deadline { usleep(20_000) }
      if p.isRunning { Glibc.kill(pid, SIGKILL) }
      p.waitUntilExit()
    }
    process = nil
    removeControlSocket()
    if !removed {
      try? FileManager.default.removeItem(atPath: tempDir)
      removed = true
    }
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
  /// lives on, reparented. Kill such leftovers of earlier runs: tgtd processes whose
  /// parent is gone (ppid 1) and whose stderr is a harness log /dev/shm/lunbridge-tgtd-*/tgtd.log.
  /// (tgtd started by Tests/scripts/tgtd-private.sh logs elsewhere and is left alone.)
  static func killOrphans() {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    for e in entries {
      guard let pid = Int32(e), pid != getpid(),
        let comm = try? String(contentsOfFile: "/proc/\(e)/comm", encoding: .utf8),
        comm.trimmingCharacters(in: .whitespacesAndNewlines) == "tgtd",
        let stat = try? String(contentsOfFile: "/proc/\(e)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
      else { continue }
      let fields = stat[stat.index(after: close)...].split(separator: " ")
      guard fields.count > 2, fields[1] == "1",
        let log = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(e)/fd/2"),
        log.hasPrefix("/dev/shm/lunbridge-tgtd-"), log.hasSuffix("/tgtd.log")
      else { continue }
      Glibc.kill(pid, SIGKILL)
      let dir = (log as NSString).deletingLastPathComponent
      for _ in 0..<100 where FileManager.default.fileExists(atPath: "/proc/\(e)/fd") {
        usleep(20_000)
      }
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

  // MARK: - Start-up

  private static func launch(
    tgtd: String, tgtadm: String, port: Int, controlPort: Int, addresses: [String],
    logPath: String, timeout: TimeInterval
  ) throws -> Process {
    let portalArg = addresses.map { "portal=" + portal($0, port) }.joined(separator: ",")
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tgtd)
    p.arguments = ["-f", "--control-port", String(controlPort), "--iscsi", portalArg]
    p.standardInput = FileHandle.nullDevice
    _ = FileManager.default.createFile(atPath: logPath, contents: nil)
    guard let log = FileHandle(forWritingAtPath: logPath) else {
      throw TGTDError("cannot open \(logPath)")
    }
    log.seekToEndOfFile()
    p.standardOutput = log
    p.standardError = log
    try p.run()
    try? log.close()

    func fail(_ why: String) -> TGTDError {
      if p.isRunning {
        Glibc.kill(p.processIdentifier, SIGKILL)
      }
      p.waitUntilExit()
      let stderr = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
      return TGTDError(
        "tgtd -f --control-port \(controlPort) --iscsi \(portalArg): \(why)\ntgtd stderr:\n\(stderr)")
    }

    let deadline = Date().addingTimeInterval(10)
    var lastProblem = "not ready"
    while true {
      if !p.isRunning { throw fail("exited with status \(p.terminationStatus)") }
      if Date() > deadline { throw fail("not ready within 10 s (\(lastProblem))") }
      if !canConnect(addresses[0], port) {
        lastProblem = "port \(port) does not accept connections"
      } else {
        do {
          _ = try TGTD.tgtadm(
            tgtadm, controlPort: controlPort, ["--op", "show", "--mode", "target"], timeout: 2)
          let listed = Set(
            parsePortals(
              try TGTD.tgtadm(
                tgtadm, controlPort: controlPort, ["--op", "show", "--mode", "portal"], timeout: 2)))
          let wanted = Set(addresses.map { portal($0, port) })
          // A portal that could not be bound makes tgtd fall back to 0.0.0.0:3260: never keep that.
          guard listed == wanted else {
            throw fail("portals are \(listed.sorted()), expected \(wanted.sorted())")
          }
          return p
        } catch let e as TGTDError where e.description.hasPrefix("tgtd -f") {
          throw e
        } catch {
          lastProblem = "\(error)"
        }
      }
      usleep(50_000)
    }
  }

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

  /// A control port no other tgtd holds: derived from our pid and a counter, skipping
  /// numbers whose /var/run/tgtd/socket.N.lock is locked. (tgtd itself refuses a locked
  /// one with "another tgtd is using ...", which `init` treats as a retry.)
  static func freeControlPort() throws -> Int {
    counterLock.lock()
    defer { counterLock.unlock() }
    let pid = Int(getpid())
    for _ in 0..<1000 {
      counter += 1
      // tgtd rejects -C above 32767 ("-C argument value '32768' out of range").
      let cp = 10000 + (pid &* 97 &+ counter &* 7919 &+ Int.random(in: 0..<1000)) % 22768
      if !controlPortInUse(cp) { return cp }
    }
    throw TGTDError("no free tgtd control port")
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
