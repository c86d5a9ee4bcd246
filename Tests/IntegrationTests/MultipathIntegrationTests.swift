import Bridge
import Foundation
import ISCSIInitiator
import ISCSIProtocol
import Logging
import Multipath
import NBDProtocol
import NIOCore
import NIOPosix
import XCTest

/// A volume with two paths (two portals of one real tgtd: 127.0.0.1 and 127.0.0.2) losing
/// connections while it writes: no error, no lost or reordered write, the rule "a write
/// is re-sent on another path only after its old path was fenced" holds, and the failed
/// path comes back and carries I/O again.
final class MultipathIntegrationTests: XCTestCase {
  static let iqn = "iqn.2026-11.org.lunbridge.test:multipath"
  var tgtd: TGTD!
  var volume: Volume?
  let logger = Logger(label: "test")

  override func setUp() async throws {
    tgtd = try TGTD(portals: ["127.0.0.1", "127.0.0.2"])
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 16)
    try tgtd.addTarget(tid: 2, iqn: Self.iqn + "-other")
    _ = try tgtd.addLUN(tid: 2, lun: 1, sizeMiB: 16)
    try tgtd.bindAll(tid: 1)
    try tgtd.bindAll(tid: 2)
  }

  override func tearDown() async throws {
    if let volume { await volume.close(timeout: .seconds(1)) }
    tgtd?.stop()
  }

  func spec(_ host: String, iqn: String = MultipathIntegrationTests.iqn) -> PathSpec {
    let login = LoginConfiguration(initiatorName: "iqn.2026-11.org.lunbridge.test:mp-init", targetName: iqn)
    var config = SessionConfiguration(portal: Portal(host: host, port: tgtd.port), login: login)
    config.keepaliveInterval = .seconds(1)
    config.keepaliveTimeout = .seconds(1)
    return PathSpec(url: ISCSIURL(portal: config.portal, targetName: iqn, lun: 1), configuration: config)
  }

  func open(policy: SelectorPolicy = .roundRobin(iosPerTurn: 1)) async throws -> Volume {
    var options = VolumeOptions()
    options.multipath.policy = policy
    options.multipath.noPathRetry = .seconds(30)
    options.multipath.probeBackoff = ProbeBackoff(initial: .milliseconds(200), maximum: .seconds(1))
    let v = try await Volume.open(paths: [spec("127.0.0.1"), spec("127.0.0.2")], options: options, logger: logger)
    volume = v
    return v
  }

  func block(_ round: Int, _ index: Int, size: Int) -> ByteBuffer {
    var b = ByteBufferAllocator().buffer(capacity: size)
    var x = UInt64(round) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(index) &* 0xBF58_476D_1CE4_E5B9
    for _ in 0..<(size / 8) {
      x ^= x << 13
      x ^= x >> 7
      x ^= x << 17
      b.writeInteger(x)
    }
    return b
  }

  func request(_ v: Volume, _ type: NBDCommand, offset: UInt64, length: UInt32, payload: ByteBuffer? = nil)
    -> EventLoopFuture<Result<[ByteBuffer], NBDErrno>>
  {
    v.eventLoop.flatSubmit {
      v.handle(NBDRequest(type: type, handle: 0, offset: offset, length: length), payload: payload)
    }
  }

  /// Many rounds of overwriting the same 64 blocks of 4 KiB, both paths in use; path 0's
  /// connection is given up as after a black hole (the target keeps the session) in round
  /// 5 and path 1's is deleted by tgtd in round 15, each with writes in flight. Every write succeeds, the last round is what
  /// reads back, and every write that was re-sent went out only after its old path was
  /// fenced.
  func testWritesSurviveLostPathsAndAreResentOnlyAfterFencing() async throws {
    let v = try await open()
    let events = EventLog()
    // At each fence, ask tgtd which sessions exist (blocking the volume's loop for the
    // few milliseconds tgtadm takes is fine in a test): the failed path's old session
    // must be gone by then, or a write still queued in it could land late.
    let target = tgtd!
    let sessionsAtFence = SessionLog()
    let armed = Flag()
    try await v.observe { e in
      events.append(e)
      // Round 5: give up on path 0 right after a write went out on it, so writes are
      // caught in flight whatever the timing.
      if case .dispatched(_, true, 0, 1) = e, armed.take() { v.abandonPathForTesting(0) }
      if case .fenced(let p) = e { sessionsAtFence.record(p, (try? target.connections(tid: 1).map(\.sid)) ?? [-1]) }
    }.get()
    let size = 4096
    let count = 64
    let rounds = 30
    let sessionsBefore = Set(try tgtd.connections(tid: 1).map(\.sid))
    XCTAssertEqual(sessionsBefore.count, 2, "expected one session per path")
    // tgt 1.0.85 numbers sessions by TSIH >> 8 (TSIH 0x0100 is session 1).
    func sid(_ tsih: UInt16) -> Int { Int(tsih >> 8) }
    var sidOfPath = try await v.report().get().paths.map { sid($0.tsih) }
    XCTAssertEqual(Set(sidOfPath), sessionsBefore, "TSIH to tgtd session mapping")
    var oldSid: [UInt32: Int] = [:]
    for round in 0..<rounds {
      var futures: [EventLoopFuture<Result<[ByteBuffer], NBDErrno>>] = []
      for i in 0..<count {
        futures.append(
          request(v, .write, offset: UInt64(i * size), length: UInt32(size), payload: block(round, i, size: size)))
        if round == 5 && i == 8 {
          // As a black hole: we give up on path 0, the target still holds its session.
          oldSid[0] = sidOfPath[0]
          armed.set()
        }
        if round == 15 && i == count / 2 {
          // tgtd cuts path 1's session: the one that existed before path 0 was reinstated.
          let conns = try tgtd.connections(tid: 1)
          guard let old = conns.first(where: { c in sessionsBefore.contains(c.sid) }) else {
            return XCTFail("path 1's session is gone: \(conns), before \(sessionsBefore)")
          }
          oldSid[1] = old.sid
          try tgtd.deleteConnection(tid: 1, sid: old.sid, cid: old.cid)
        }
      }
      for (i, f) in futures.enumerated() {
        let r = try await f.get()
        if case .failure(let errno) = r { XCTFail("round \(round) write \(i) failed: \(errno)") }
      }
      if round == 5 || round == 15 {
        // Let the failed path be probed and come back before the next fault.
        try await waitUntil(seconds: 10) { try await v.pathStates().get() == ["active", "active"] }
        sidOfPath = try await v.report().get().paths.map { sid($0.tsih) }
      }
    }
    // The last round reads back: no write was lost or landed late over a newer one.
    for i in 0..<count {
      let r = try await request(v, .read, offset: UInt64(i * size), length: UInt32(size)).get()
      guard case .success(let parts) = r else { return XCTFail("read of block \(i) failed") }
      XCTAssertEqual(parts.joined, block(rounds - 1, i, size: size), "block \(i) is not the last write")
    }
    // The rule: a write sent again (attempt > 1) went out after a `fenced` of the path it
    // was on before, and after that path failed.
    let log = events.all
    var lastPath: [UInt64: UInt32] = [:]
    var failedAt: [UInt32: Int] = [:]
    var fencedAt: [UInt32: Int] = [:]
    var resentWrites = 0
    for (n, e) in log.enumerated() {
      switch e {
      case .pathFailed(let p): failedAt[p] = n
      case .fenced(let p): fencedAt[p] = n
      case .dispatched(let io, let isWrite, let path, let attempt):
        if attempt > 1, isWrite, let old = lastPath[io] {
          resentWrites += 1
          let failed = failedAt[old] ?? Int.max
          let fenced = fencedAt[old] ?? Int.max
          XCTAssertTrue(
            failed < fenced && fenced < n,
            "write \(io) re-sent on path\(path) at event \(n), but path\(old) failed at \(failed), fenced at \(fenced)")
        }
        lastPath[io] = path
      case .completed: break
      }
    }
    XCTAssertGreaterThan(resentWrites, 0, "no write was caught by a lost path: the test did not test the rule")
    let fences = sessionsAtFence.all
    XCTAssertTrue(fences.contains { $0.path == 0 }, "path 0 lost writes in flight and was never fenced")
    for (path, sids) in fences {
      XCTAssertFalse(sids.contains(-1), "tgtadm failed at the fence of path\(path)")
      if let old = oldSid[path] {
        XCTAssertFalse(sids.contains(old), "path\(path) was declared fenced while its session \(old) still existed: \(sids)")
      }
    }
    let report = try await v.report().get()
    XCTAssertEqual(report.paths.map(\.state), ["active", "active"])
    XCTAssertEqual(report.paths.map(\.failures), [1, 1], "each path failed once")
    XCTAssertEqual(report.paths.map(\.reinstatements), [1, 1], "each path came back once")
    // Both paths carried I/O after the last fault (round-robin, 15 rounds of 64 writes).
    XCTAssertTrue(report.paths.allSatisfy { $0.ios > 100 }, "\(report.paths.map(\.ios))")
    XCTAssertEqual(report.requests.errors, 0)
  }

  /// A reload adds a path (it is probed and takes I/O), changes the policy, then takes the
  /// first path away, while writes keep going: none fails, and the data reads back.
  func testReconfigureAddsAndRemovesPathsWithoutErrors() async throws {
    var options = VolumeOptions()
    options.multipath.probeBackoff = ProbeBackoff(initial: .milliseconds(100), maximum: .seconds(1))
    let v = try await Volume.open(paths: [spec("127.0.0.1")], options: options, logger: logger)
    volume = v
    let size = 4096
    var round = 0
    func startRound() -> [EventLoopFuture<Result<[ByteBuffer], NBDErrno>>] {
      (0..<32).map { i in
        request(v, .write, offset: UInt64(i * size), length: UInt32(size), payload: block(round, i, size: size))
      }
    }
    func finishRound(_ futures: [EventLoopFuture<Result<[ByteBuffer], NBDErrno>>]) async throws {
      for f in futures {
        let r = try await f.get()
        XCTAssertNil(r.failureValue, "a write failed during a reload")
      }
      round += 1
    }
    func writeRound() async throws { try await finishRound(startRound()) }
    try await writeRound()
    var roundRobin = options.multipath
    roundRobin.policy = .roundRobin(iosPerTurn: 1)
    let added = try await v.reconfigure(paths: [spec("127.0.0.1"), spec("127.0.0.2")], multipath: roundRobin).get()
    XCTAssertTrue(added.contains("1 added"), added)
    try await waitUntil(seconds: 10) { try await v.pathStates().get() == ["active", "active"] }
    try await writeRound()
    var report = try await v.report().get()
    XCTAssertEqual(report.policy, "round-robin")
    XCTAssertGreaterThan(report.paths[1].ios, 0, "the added path carries no I/O")
    // Take path 0 away while writes are in flight.
    let writes = startRound()
    let removed = try await v.reconfigure(paths: [spec("127.0.0.2")], multipath: roundRobin).get()
    XCTAssertTrue(removed.contains("1 removed"), removed)
    try await finishRound(writes)
    try await writeRound()
    report = try await v.report().get()
    XCTAssertEqual(report.paths.map(\.url), [spec("127.0.0.2").url.description])
    XCTAssertEqual(report.requests.errors, 0)
    for i in 0..<32 {
      let r = try await request(v, .read, offset: UInt64(i * size), length: UInt32(size)).get()
      guard case .success(let parts) = r else { return XCTFail("read of block \(i) failed") }
      XCTAssertEqual(parts.joined, block(round - 1, i, size: size), "block \(i) is not the last write")
    }
  }

  /// Failover with manual failback: I/O moves to the second group when the first path
  /// fails, stays there when the first path comes back, and returns on `failback()`.
  func testFailoverWithManualFailback() async throws {
    var options = VolumeOptions()
    options.multipath.policy = .failover
    options.multipath.failback = .manual
    options.multipath.probeBackoff = ProbeBackoff(initial: .milliseconds(100), maximum: .seconds(1))
    let p0 = spec("127.0.0.1")
    var p1 = spec("127.0.0.2")
    p1.group = 1
    let v = try await Volume.open(paths: [p0, p1], options: options, logger: logger)
    volume = v
    func write() async throws {
      let r = try await request(v, .write, offset: 0, length: 4096, payload: block(0, 0, size: 4096)).get()
      XCTAssertNil(r.failureValue)
    }
    var states = try await v.pathStates().get()
    XCTAssertEqual(states, ["active", "standby"])
    v.dropPathForTesting(0)
    try await waitUntil(seconds: 10) { try await v.pathStates().get() == ["standby", "active"] }
    try await write()
    let before = try await v.report().get().paths.map(\.ios)
    try await write()
    let after = try await v.report().get().paths.map(\.ios)
    XCTAssertEqual(after[0], before[0], "the reinstated path took I/O before a manual failback")
    XCTAssertGreaterThan(after[1], before[1])
    _ = try await v.failback().get()
    states = try await v.pathStates().get()
    XCTAssertEqual(states, ["active", "standby"])
    try await write()
    let last = try await v.report().get().paths.map(\.ios)
    XCTAssertGreaterThan(last[0], after[0], "I/O did not return to the first group after failback")
  }

  /// A path that reaches another LU is refused, naming both identifiers.
  func testPathToAnotherLogicalUnitIsRefused() async throws {
    do {
      let v = try await Volume.open(
        paths: [spec("127.0.0.1"), spec("127.0.0.2", iqn: Self.iqn + "-other")], logger: logger)
      volume = v
      XCTFail("a path to another LU was accepted")
    } catch let e as BridgeError {
      let text = "\(e)"
      XCTAssertTrue(text.contains("refusing"), text)
      XCTAssertTrue(text.contains("-other"), text)
    }
  }

  /// Every path down longer than no-path-retry: I/O fails with EIO; the volume works
  /// again once the target is back.
  func testAllPathsDownLongerThanNoPathRetryFailsThenRecovers() async throws {
    var options = VolumeOptions()
    options.multipath.noPathRetry = .seconds(2)
    options.multipath.probeBackoff = ProbeBackoff(initial: .milliseconds(200), maximum: .seconds(1))
    let v = try await Volume.open(paths: [spec("127.0.0.1"), spec("127.0.0.2")], options: options, logger: logger)
    volume = v
    try tgtd.pause()
    let started = Date()
    let r = try await request(v, .write, offset: 0, length: 4096, payload: block(1, 0, size: 4096)).get()
    let waited = Date().timeIntervalSince(started)
    try tgtd.resume()
    XCTAssertEqual(r.failureValue, .eio, "with every path down the write must fail with EIO")
    XCTAssertGreaterThanOrEqual(waited, 2.0, "it failed before no-path-retry")
    XCTAssertLessThan(waited, 12.0, "it hung far past no-path-retry + keepalive")
    try await waitUntil(seconds: 15) { try await v.pathStates().get().contains("active") }
    let again = try await request(v, .write, offset: 0, length: 4096, payload: block(2, 0, size: 4096)).get()
    XCTAssertNil(again.failureValue, "the volume did not work again after the target came back")
    let report = try await v.report().get()
    XCTAssertGreaterThanOrEqual(report.noPathFailures, 1)
  }

  func waitUntil(seconds: Double, _ condition: () async throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
      if try await condition() { return }
      try await Task.sleep(nanoseconds: 100_000_000)
    }
    XCTFail("condition not met within \(seconds) s")
  }
}

extension Result {
  var failureValue: Failure? {
    if case .failure(let f) = self { return f }
    return nil
  }
}

final class EventLog: @unchecked Sendable {
  private let lock = NSLock()
  private var events: [VolumeEvent] = []
  func append(_ e: VolumeEvent) { lock.withLock { events.append(e) } }
  var all: [VolumeEvent] { lock.withLock { events } }
}

final class SessionLog: @unchecked Sendable {
  private let lock = NSLock()
  private var entries: [(path: UInt32, sids: [Int])] = []
  func record(_ path: UInt32, _ sids: [Int]) { lock.withLock { entries.append((path, sids)) } }
  var all: [(path: UInt32, sids: [Int])] { lock.withLock { entries } }
}

final class Flag: @unchecked Sendable {
  private let lock = NSLock()
  private var value = false
  func set() { lock.withLock { value = true } }
  /// True once after `set()`.
  func take() -> Bool {
    lock.withLock {
      defer { value = false }; return value
    }
  }
}
