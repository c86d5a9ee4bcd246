import ISCSIProtocol
import Logging
import NIOCore
import NIOEmbedded
import SCSI
import XCTest

@testable import ISCSIInitiator

/// The hostile-target cases that need no socket, over two `EmbeddedChannel`s wired back to
/// back: the session's, and one holding `HostileConnection` (the test-only broken target)
/// as the reverse codec. Time is the session's `EmbeddedEventLoop`, advanced by hand, so a
/// 30 s command timeout takes no wall time and every run sees the same order of events.
final class EmbeddedHostileTargetTests: XCTestCase {
  /// The two channels and the shuttle between them.
  final class Wire {
    let initiator = EmbeddedChannel()
    let target: EmbeddedChannel

    init(_ misbehaviour: HostileTarget.Misbehaviour) throws {
      target = EmbeddedChannel(handler: HostileConnection(misbehaviour: misbehaviour, port: { 3260 }))
      let address = try SocketAddress(ipAddress: "127.0.0.1", port: 3260)
      try initiator.connect(to: address).wait()
      try target.connect(to: address).wait()
    }

    /// Moves bytes both ways (and runs the session's deferred flushes) until both are quiet.
    func shuttle() throws {
      var moved = true
      while moved {
        moved = false
        initiator.embeddedEventLoop.run()
        while initiator.isActive, let out = try initiator.readOutbound(as: ByteBuffer.self) {
          if target.isActive { try target.writeInbound(out) }
          moved = true
        }
        while target.isActive, let back = try target.readOutbound(as: ByteBuffer.self) {
          if initiator.isActive { try initiator.writeInbound(back) }
          moved = true
        }
      }
    }

    /// Advances the session's clock in steps of one tick, shuttling after each.
    func advance(by total: TimeAmount, step: TimeAmount = .milliseconds(500)) throws {
      var done = TimeAmount.zero
      while done < total {
        initiator.embeddedEventLoop.advanceTime(by: step)
        done = done + step
        try shuttle()
      }
    }
  }

  func configuration(failFast: Bool) -> SessionConfiguration {
    let login = LoginConfiguration(initiatorName: "iqn.2026-11.org.lunbridge.test:embedded", targetName: "iqn.x:hostile")
    var c = SessionConfiguration(portal: Portal(host: "127.0.0.1", port: 3260), login: login)
    c.commandTimeout = .seconds(30)
    c.keepaliveInterval = .seconds(5)
    c.keepaliveTimeout = .seconds(5)
    c.failFast = failFast
    return c
  }

  func loggedIn(_ wire: Wire, failFast: Bool) throws -> ISCSISession {
    var logger = Logger(label: "embedded")
    logger.logLevel = .critical
    let (session, login) = try ISCSISession.loggingIn(
      over: wire.initiator, configuration: configuration(failFast: failFast), logger: logger)
    try wire.shuttle()
    // The embedded loop runs callbacks on this thread, within shuttle().
    nonisolated(unsafe) var result: Result<Void, Error>?
    login.whenComplete { result = $0 }
    try wire.shuttle()
    guard case .success = result else {
      throw ISCSIError(.loginFailed, "no login over the embedded wire: \(String(describing: result))")
    }
    XCTAssertEqual(session.state, .fullFeature)
    return session
  }

  /// Submits TEST UNIT READY; returns a box the completion fills.
  func testUnitReady(_ session: ISCSISession, _ wire: Wire) throws -> () -> Result<SCSICompletion, Error>? {
    var result: Result<SCSICompletion, Error>?
    session.execute(SCSICommand(lun: 0, cdb: CDB.testUnitReady())) { result = $0 }
    try wire.shuttle()
    return { result }
  }

  func testDataInForAnUnknownTaskDropsThePathAndNamesTheCause() throws {
    let wire = try Wire(.dataInForUnknownTask)
    let session = try loggedIn(wire, failFast: true)
    let result = try testUnitReady(session, wire)
    guard case .failure(let error as ISCSIError)? = result() else { return XCTFail("\(String(describing: result()))") }
    XCTAssertEqual(error.code, .pathDown, error.description)
    XCTAssertTrue(session.lastError?.contains("Data-In for unknown task 0xdeadbeef") ?? false, session.lastError ?? "-")
    XCTAssertEqual(session.state, .recovering)
    XCTAssertFalse(wire.initiator.isActive, "the connection was not closed")
  }

  func testUnknownOpcodeDropsThePath() throws {
    let wire = try Wire(.unknownOpcode)
    let session = try loggedIn(wire, failFast: true)
    let result = try testUnitReady(session, wire)
    guard case .failure = result() else { return XCTFail("\(String(describing: result()))") }
    XCTAssertTrue(session.lastError?.contains("unknown or initiator opcode") ?? false, session.lastError ?? "-")
  }

  func testOversizedDataSegmentIsRefusedBeforeItIsBuffered() throws {
    let wire = try Wire(.oversizedDataSegment)
    let session = try loggedIn(wire, failFast: true)
    let result = try testUnitReady(session, wire)
    guard case .failure = result() else { return XCTFail("\(String(describing: result()))") }
    XCTAssertTrue(session.lastError?.contains("DataSegmentLength 16777215") ?? false, session.lastError ?? "-")
  }

  /// The lost command: 30 s without status -> ABORT TASK (answered) -> sent again ->
  /// completes; no reconnect. In virtual time.
  func testLostCommandIsAbortedAfterTheCommandTimeoutAndSentAgain() throws {
    let wire = try Wire(.loseFirstCommand)
    let session = try loggedIn(wire, failFast: false)
    let result = try testUnitReady(session, wire)
    try wire.advance(by: .seconds(29))
    XCTAssertNil(result(), "completed before the command timeout")
    try wire.advance(by: .seconds(2))
    guard case .success(let c)? = result() else { return XCTFail("\(String(describing: result()))") }
    XCTAssertEqual(c.status, 0)
    XCTAssertEqual(session.commandsRetried, 1)
    XCTAssertEqual(session.reinstatements, 0)
  }

  /// A silent target with failFast (multipath): the command timeout fails the path and
  /// hands the command back, at 30 s of virtual time and not before.
  func testSilentTargetFailsThePathAtTheCommandTimeout() throws {
    let wire = try Wire(.silent)
    let session = try loggedIn(wire, failFast: true)
    let result = try testUnitReady(session, wire)
    try wire.advance(by: .seconds(30))
    XCTAssertNil(result(), "failed before the command timeout")
    try wire.advance(by: .seconds(1))
    guard case .failure(let error as ISCSIError)? = result() else { return XCTFail("\(String(describing: result()))") }
    XCTAssertEqual(error.code, .pathDown)
    XCTAssertTrue(session.lastError?.contains("timed out after 30 s") ?? false, session.lastError ?? "-")
  }

  func testMaxCmdSNMovingBackwardsIsIgnored() throws {
    let wire = try Wire(.maxCmdSNBackwards)
    let session = try loggedIn(wire, failFast: true)
    for i in 0..<6 {
      let result = try testUnitReady(session, wire)
      guard case .success(let c)? = result() else { return XCTFail("command \(i): \(String(describing: result()))") }
      XCTAssertEqual(c.status, 0)
    }
    XCTAssertNil(session.lastError)
  }
}
