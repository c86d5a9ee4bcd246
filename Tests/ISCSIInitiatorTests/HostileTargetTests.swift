import ISCSIInitiator
import ISCSIProtocol
import NIOCore
import NIOPosix
import SCSI
import XCTest

/// Each hostile behaviour ends in a clean error naming the cause, within a bound: no
/// crash, no hang, and no buffer sized by what the peer announced.
final class HostileTargetTests: XCTestCase {
  func config(_ target: HostileTarget) -> SessionConfiguration {
    let login = LoginConfiguration(initiatorName: "iqn.2026-11.org.lunbridge.test:hostile", targetName: "iqn.x:hostile")
    var c = SessionConfiguration(portal: Portal(host: "127.0.0.1", port: target.port), login: login)
    c.loginTimeout = .seconds(3)
    c.recoveryTimeout = .seconds(2)
    c.commandTimeout = .seconds(1)
    c.keepaliveInterval = .milliseconds(500)
    c.keepaliveTimeout = .milliseconds(500)
    return c
  }

  /// Runs TEST UNIT READY against a target that misbehaves once it is asked something;
  /// expects the command to fail in bounded time and the session to say why.
  func expectCommandFailure(_ m: HostileTarget.Misbehaviour, mentioning cause: String) async throws {
    let target = try HostileTarget(m)
    defer { target.stop() }
    let session = try await ISCSISession.connect(config(target), on: MultiThreadedEventLoopGroup.singleton.next())
    let started = ContinuousClock.now
    do {
      _ = try await session.execute(SCSICommand(lun: 0, cdb: CDB.testUnitReady()))
      XCTFail("\(m): the command succeeded")
    } catch let e as ISCSIError {
      XCTAssertTrue(e.description.contains(cause), "\(m): \(e.description)")
    }
    XCTAssertLessThan(ContinuousClock.now - started, .seconds(8), "\(m): took too long")
    let lastError = try await session.snapshot().get().lastError
    XCTAssertTrue(lastError?.contains(cause) ?? false, "\(m): last error \(lastError ?? "none")")
    await session.close(timeout: .milliseconds(200))
  }

  func testOversizedDataSegmentIsRefusedWithoutBufferingIt() async throws {
    try await expectCommandFailure(.oversizedDataSegment, mentioning: "DataSegmentLength 16777215")
  }

  func testUnknownOpcodeDropsTheConnection() async throws {
    try await expectCommandFailure(.unknownOpcode, mentioning: "unknown or initiator opcode")
  }

  func testDataInForUnknownTaskDropsTheConnection() async throws {
    try await expectCommandFailure(.dataInForUnknownTask, mentioning: "unknown task 0xdeadbeef")
  }

  func testTruncatedPDUThenCloseIsAConnectionLoss() async throws {
    try await expectCommandFailure(.truncatedPDUThenClose, mentioning: "closed the connection")
  }

  func testUnansweredCommandEscalatesToLUNResetThenTheSessionGivesUp() async throws {
    try await expectCommandFailure(.silent, mentioning: "LOGICAL UNIT RESET")
  }

  func testTimedOutCommandIsAbortedAndSentAgain() async throws {
    let target = try HostileTarget(.loseFirstCommand)
    defer { target.stop() }
    let session = try await ISCSISession.connect(config(target), on: MultiThreadedEventLoopGroup.singleton.next())
    let c = try await session.execute(SCSICommand(lun: 0, cdb: CDB.testUnitReady()))
    XCTAssertEqual(c.status, 0)
    let snapshot = try await session.snapshot().get()
    XCTAssertEqual(snapshot.commandsRetried, 1, "the lost command was aborted and sent once more")
    XCTAssertEqual(snapshot.reinstatements, 0, "no reconnect was needed")
    await session.close(timeout: .milliseconds(200))
  }

  func testEndlessRedirectIsBounded() async throws {
    let target = try HostileTarget(.endlessRedirect)
    defer { target.stop() }
    do {
      _ = try await ISCSISession.connect(config(target), on: MultiThreadedEventLoopGroup.singleton.next())
      XCTFail("login through an endless redirect succeeded")
    } catch let e as ISCSIError {
      XCTAssertEqual(e.code, .redirectLoop, e.description)
    }
  }

  func testATargetThatHangsUpOnAuthMethodNoneIsSaidToWantCHAP() async throws {
    let target = try HostileTarget(.closeOnAuthMethodNone)
    defer { target.stop() }
    do {
      _ = try await ISCSISession.connect(config(target), on: MultiThreadedEventLoopGroup.singleton.next())
      XCTFail("login succeeded")
    } catch let e as ISCSIError {
      XCTAssertEqual(e.code, .authenticationFailed, e.description)
      XCTAssertTrue(
        e.message.hasPrefix("authentication required: the target wants CHAP, and no CHAP user/secret is configured"),
        e.message)
    }
  }

  func testMaxCmdSNMovingBackwardsIsIgnoredAndCommandsStillComplete() async throws {
    let target = try HostileTarget(.maxCmdSNBackwards)
    defer { target.stop() }
    let session = try await ISCSISession.connect(config(target), on: MultiThreadedEventLoopGroup.singleton.next())
    for i in 0..<8 {
      let c = try await session.execute(SCSICommand(lun: 0, cdb: CDB.testUnitReady()))
      XCTAssertEqual(c.status, 0, "command \(i)")
    }
    let lastError = try await session.snapshot().get().lastError
    XCTAssertNil(lastError)
    await session.close(timeout: .milliseconds(200))
  }
}
