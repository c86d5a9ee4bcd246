import ISCSIInitiator
import ISCSIProtocol
import Logging
import NIOCore
import NIOPosix
import SCSI
import XCTest

/// The initiator against a real tgtd that each test starts on a loopback port of its own
/// (see TGTD.swift). Data written is random and read back through the library.
final class InitiatorIntegrationTests: XCTestCase {
  static let iqn = "iqn.2026-11.org.lunbridge.test:disk"
  let group = MultiThreadedEventLoopGroup.singleton

  func sessionConfig(_ tgtd: TGTD, chap: CHAPConfiguration? = nil, digests: Bool = false) -> SessionConfiguration {
    let login = LoginConfiguration(
      initiatorName: "iqn.2026-11.org.lunbridge.test:initiator", targetName: Self.iqn, chap: chap,
      headerDigest: digests ? [.crc32c] : [.none], dataDigest: digests ? [.crc32c] : [.none])
    var config = SessionConfiguration(portal: Portal(host: "127.0.0.1", port: tgtd.port), login: login)
    config.loginTimeout = .seconds(10)
    config.recoveryTimeout = .seconds(30)
    return config
  }

  func startTarget(blockSize: Int = 512, sizeMiB: Int = 64, thin: Bool = false) throws -> TGTD {
    let tgtd = try TGTD()
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: sizeMiB, blockSize: blockSize, thin: thin)
    try tgtd.bindAll(tid: 1)
    return tgtd
  }

  func randomBuffer(_ n: Int) -> ByteBuffer {
    var rng = SystemRandomNumberGenerator()
    var b = ByteBufferAllocator().buffer(capacity: n)
    for _ in 0..<(n / 8) { b.writeInteger(rng.next() as UInt64) }
    return b
  }

  /// Writes random data in several sizes, some at once, reads all back and compares.
  func writeReadVerify(_ unit: LogicalUnit, label: String) async throws {
    let bs = unit.info.blockSize
    let sizes = [1, 8, 77, (1 << 20) / bs + 3, 3]  // the 1 MiB+ one is split in two commands
    var lba: UInt64 = 0
    var written: [(UInt64, ByteBuffer)] = []
    try await withThrowingTaskGroup(of: Void.self) { g in
      for blocks in sizes {
        let data = randomBuffer(blocks * bs)
        let at = lba
        written.append((at, data))
        lba += UInt64(blocks) + 5
        g.addTask { try await unit.write(lba: at, data: data) }
      }
      try await g.waitForAll()
    }
    for (at, data) in written {
      let back = try await unit.read(lba: at, blocks: UInt32(data.readableBytes / bs))
      XCTAssertEqual(back.readableBytes, data.readableBytes, "\(label): length at LBA \(at)")
      XCTAssertTrue(back == data, "\(label): data read back at LBA \(at) differs from what was written")
    }
  }

  // MARK: - The negotiation matrix

  struct Burst {
    var name: String
    var targetMaxRecv: Int
    var firstBurst: Int
    var maxBurst: Int
  }
  let bursts = [
    Burst(name: "small", targetMaxRecv: 512, firstBurst: 1024, maxBurst: 4096),
    Burst(name: "default", targetMaxRecv: 8192, firstBurst: 65536, maxBurst: 262144),
    Burst(name: "large", targetMaxRecv: 262144, firstBurst: 262144, maxBurst: 1_048_576),
  ]

  func testNegotiationMatrixWritesAndReadsBack() async throws {
    for blockSize in [512, 4096] {
      let tgtd = try startTarget(blockSize: blockSize)
      defer { tgtd.stop() }
      try tgtd.setParameter(tid: 1, name: "HeaderDigest", value: "CRC32C,None")
      try tgtd.setParameter(tid: 1, name: "DataDigest", value: "CRC32C,None")
      for burst in bursts {
        try tgtd.setParameter(tid: 1, name: "MaxRecvDataSegmentLength", value: String(burst.targetMaxRecv))
        try tgtd.setParameter(tid: 1, name: "MaxBurstLength", value: String(burst.maxBurst))
        try tgtd.setParameter(tid: 1, name: "FirstBurstLength", value: String(burst.firstBurst))
        for initialR2T in [true, false] {
          for immediate in [true, false] {
            try tgtd.setParameter(tid: 1, name: "InitialR2T", value: initialR2T ? "Yes" : "No")
            try tgtd.setParameter(tid: 1, name: "ImmediateData", value: immediate ? "Yes" : "No")
            for digests in [false, true] {
              let label =
                "bs=\(blockSize) burst=\(burst.name) InitialR2T=\(initialR2T) ImmediateData=\(immediate) digests=\(digests)"
              var config = sessionConfig(tgtd, digests: digests)
              config.login.initialR2T = initialR2T
              config.login.immediateData = immediate
              let session = try await ISCSISession.connect(config, on: group.next())
              let negotiated = try await session.snapshot().get().parameters
              let p = try XCTUnwrap(negotiated)
              XCTAssertEqual(p.headerDigest, digests, label)
              XCTAssertEqual(p.dataDigest, digests, label)
              XCTAssertEqual(p.initialR2T, initialR2T, label)
              XCTAssertEqual(p.immediateData, immediate, label)
              XCTAssertEqual(p.maxSendDataSegmentLength, burst.targetMaxRecv, label)
              XCTAssertLessThanOrEqual(p.firstBurstLength, p.maxBurstLength, label)
              let unit = try await LogicalUnit.open(session: session, lun: 1)
              XCTAssertEqual(unit.info.blockSize, blockSize, label)
              XCTAssertEqual(unit.info.sizeBytes, 64 << 20, label)
              do {
                try await writeReadVerify(unit, label: label)
              } catch {
                XCTFail("\(label): \(error)")
              }
              await session.close()
            }
          }
        }
      }
    }
  }

  // MARK: - CHAP

  func testOneWayCHAPRightAndWrongSecret() async throws {
    let tgtd = try startTarget()
    defer { tgtd.stop() }
    try tgtd.addAccount(user: "alice", password: "alice-secret-12")
    try tgtd.bindAccount(tid: 1, user: "alice")

    let good = CHAPConfiguration(username: "alice", secret: Array("alice-secret-12".utf8))
    let session = try await ISCSISession.connect(sessionConfig(tgtd, chap: good), on: group.next())
    let unit = try await LogicalUnit.open(session: session, lun: 1)
    try await writeReadVerify(unit, label: "one-way CHAP")
    await session.close()

    let bad = CHAPConfiguration(username: "alice", secret: Array("wrong-secret-99".utf8))
    await assertLoginFails(sessionConfig(tgtd, chap: bad), code: .authenticationFailed)
    await assertLoginFails(
      sessionConfig(tgtd, chap: nil), code: .authenticationFailed,
      message: "authentication required: the target wants CHAP, and no CHAP user/secret is configured")
  }

  func testMutualCHAPRightAndWrongTargetSecret() async throws {
    let tgtd = try startTarget()
    defer { tgtd.stop() }
    try tgtd.addAccount(user: "alice", password: "alice-secret-12")
    try tgtd.bindAccount(tid: 1, user: "alice")
    try tgtd.addAccount(user: "target1", password: "target-secret-34")
    try tgtd.bindAccount(tid: 1, user: "target1", outgoing: true)

    let good = CHAPConfiguration(
      username: "alice", secret: Array("alice-secret-12".utf8),
      mutual: (username: "target1", secret: Array("target-secret-34".utf8)))
    let session = try await ISCSISession.connect(sessionConfig(tgtd, chap: good), on: group.next())
    let unit = try await LogicalUnit.open(session: session, lun: 1)
    XCTAssertEqual(unit.info.vendor, "IET")
    await session.close()

    // The target proves itself with a secret we do not expect: we refuse it.
    let wrongTarget = CHAPConfiguration(
      username: "alice", secret: Array("alice-secret-12".utf8),
      mutual: (username: "target1", secret: Array("not-the-target-56".utf8)))
    await assertLoginFails(sessionConfig(tgtd, chap: wrongTarget), code: .authenticationFailed)
  }

  func assertLoginFails(
    _ config: SessionConfiguration, code: ISCSIError.Code, message: String? = nil, file: StaticString = #filePath,
    line: UInt = #line
  ) async {
    do {
      let s = try await ISCSISession.connect(config, on: group.next())
      await s.close()
      XCTFail("login succeeded, expected \(code)", file: file, line: line)
    } catch let e as ISCSIError {
      XCTAssertEqual(e.code, code, "\(e)", file: file, line: line)
      if let message { XCTAssertTrue(e.message.hasPrefix(message), e.message, file: file, line: line) }
    } catch {
      XCTFail("unexpected error \(error)", file: file, line: line)
    }
  }

  // MARK: - Errors a user meets

  func testUnknownTargetUnknownLUNAndClosedPortGiveClearErrors() async throws {
    let tgtd = try startTarget()
    defer { tgtd.stop() }
    var config = sessionConfig(tgtd)
    config.login.targetName = "iqn.2026-11.org.lunbridge.test:no-such-target"
    await assertLoginFails(config, code: .targetNotFound)

    let session = try await ISCSISession.connect(sessionConfig(tgtd), on: group.next())
    do {
      _ = try await LogicalUnit.open(session: session, lun: 9)
      XCTFail("LUN 9 opened")
    } catch let e as ISCSIError {
      XCTAssertEqual(e.code, .targetNotFound)
      XCTAssertTrue(e.description.contains("LUN 9"), e.description)
    }
    await session.close()

    // A port nobody listens on: refused at once, with the portal named.
    var closed = sessionConfig(tgtd)
    closed.portal = Portal(host: "127.0.0.1", port: try TGTD.freePort(on: ["127.0.0.1"]))
    let started = ContinuousClock.now
    do {
      _ = try await ISCSISession.connect(closed, on: group.next())
      XCTFail("connected to a closed port")
    } catch let e as ISCSIError {
      XCTAssertTrue(e.description.contains("127.0.0.1:\(closed.portal.port)"), e.description)
    }
    XCTAssertLessThan(ContinuousClock.now - started, .seconds(10))
  }

  func testDiscoveryListsTheTarget() async throws {
    let tgtd = try startTarget()
    defer { tgtd.stop() }
    let targets = try await Discovery.sendTargets(
      sessionConfig(tgtd), on: group.next(), logger: Logger(label: "test"))
    let names = targets.map(\.name)
    XCTAssertEqual(names, [Self.iqn])
    XCTAssertTrue(
      targets[0].portals.contains { $0.address == "127.0.0.1:\(tgtd.port)" }, "\(targets[0].portals)")
  }

  // MARK: - Recovery

  /// tgtadm deletes the connection while writes and reads run; the session is
  /// reinstated and every write lands exactly as issued.
  func testConnectionCutDuringIORecoversWithoutErrorOrLostWrite() async throws {
    let tgtd = try startTarget(sizeMiB: 64)
    defer { tgtd.stop() }
    let session = try await ISCSISession.connect(sessionConfig(tgtd), on: group.next())
    let unit = try await LogicalUnit.open(session: session, lun: 1)
    let chunkBlocks = 128  // 64 KiB
    let chunks = 256
    var expected: [Int: ByteBuffer] = [:]
    let cutter = Task {
      try await Task.sleep(nanoseconds: 150_000_000)
      let conns = try tgtd.connections(tid: 1)
      XCTAssertFalse(conns.isEmpty, "no connection to cut")
      for c in conns { try tgtd.deleteConnection(tid: 1, sid: c.sid, cid: c.cid) }
    }
    try await withThrowingTaskGroup(of: Void.self) { g in
      var inFlight = 0
      for i in 0..<chunks {
        let data = randomBuffer(chunkBlocks * 512)
        expected[i] = data
        if inFlight >= 8 {
          try await g.next()
          inFlight -= 1
        }
        g.addTask { try await unit.write(lba: UInt64(i * chunkBlocks), data: data) }
        inFlight += 1
      }
      try await g.waitForAll()
    }
    try await cutter.value
    let reinstatements = try await session.snapshot().get().reinstatements
    XCTAssertGreaterThanOrEqual(reinstatements, 1, "the connection was never cut")
    for i in 0..<chunks {
      let back = try await unit.read(lba: UInt64(i * chunkBlocks), blocks: UInt32(chunkBlocks))
      XCTAssertTrue(back == expected[i]!, "chunk \(i) differs after recovery")
    }
    await session.close()
  }
}
