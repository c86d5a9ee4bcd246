import NIOCore
import XCTest

@testable import ISCSIProtocol

/// The session's full-feature rules as `event -> actions` lines, with a mock clock in
/// milliseconds and no socket. Task tags: the login takes 2, commands then 3, 4, ...
/// Each expected line is an action's short form (log lines and flushes are left out,
/// `logs` checks those).
final class SessionStateMachineTests: XCTestCase {
  /// A session and the time; every event returns the actions it caused, as text.
  struct Harness {
    var machine: SessionStateMachine
    var clock = 0  // ms since the start
    let base = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    var logs: [String] = []
    /// Commands handed out by `.retryLater`, by id.
    var retries: [UInt64: SessionStateMachine.Command] = [:]
    var statSN: UInt32 = 100
    var expCmdSN: UInt32 = 1
    var maxCmdSN: UInt32 = 64

    init(_ configure: (inout SessionTimeouts) -> Void = { _ in }) {
      var t = SessionTimeouts()
      configure(&t)
      machine = SessionStateMachine(
        timeouts: t, portal: "127.0.0.1:3260", now: NIODeadline.uptimeNanoseconds(1_000_000_000_000), seed: 42)
    }

    var now: NIODeadline { base + .milliseconds(Int64(clock)) }

    mutating func describe(_ actions: [SessionStateMachine.Action]) -> [String] {
      var lines: [String] = []
      for action in actions {
        switch action {
        case .write(let pdu):
          let h = pdu.header
          switch pdu.opcode {
          case .scsiCommand: lines.append("send command itt=\(h.initiatorTaskTag) cmdSN=\(h.cmdSN)")
          case .dataOut: lines.append("send data itt=\(h.initiatorTaskTag) offset=\(h.bufferOffset)")
          case .nopOut where h.initiatorTaskTag == reservedTag: lines.append("answer ping")
          case .nopOut: lines.append("ping itt=\(h.initiatorTaskTag)")
          case .taskManagementRequest:
            let name = h.flags & 0x7f == 1 ? "ABORT TASK" : "LOGICAL UNIT RESET"
            lines.append(name + (h.flags & 0x7f == 1 ? " ref=\(h.word5)" : " lun=\(LUNEncoding.decode(h.lun))"))
          case .logoutRequest: lines.append("logout")
          default: lines.append("send \(pdu.opcode)")
          }
        case .flush: break
        case .succeed(let c, let completion):
          lines.append("complete #\(c.id) status=\(completion.status)")
        case .fail(let c, let error):
          lines.append("fail #\(c.id): \((error as? ISCSIError)?.code.description ?? "\(error)")")
        case .retryLater(let c, let delay):
          retries[c.id] = c
          lines.append("retry #\(c.id) in \(delay.nanoseconds / 1_000_000) ms")
        case .startTicking(let period): lines.append("tick every \(period.nanoseconds / 1_000_000) ms")
        case .stopTicking: lines.append("stop ticking")
        case .closeConnection(let reset): lines.append(reset ? "reset connection" : "close connection")
        case .reconnect(let after): lines.append("reconnect in \(after.nanoseconds / 1_000_000) ms")
        case .pathLost: lines.append("path lost")
        case .textResponse: lines.append("text response")
        case .logoutDone, .failExchanges: break
        case .log(let level, let message): logs.append("\(level): \(message)")
        case .announced(let sense):
          lines.append("announce \(String(sense.asc, radix: 16))/\(String(sense.ascq, radix: 16))")
        }
      }
      return lines
    }

    mutating func event(_ body: (inout SessionStateMachine, inout [SessionStateMachine.Action]) -> Void) -> [String] {
      var out: [SessionStateMachine.Action] = []
      body(&machine, &out)
      return describe(out)
    }

    mutating func login() -> [String] {
      _ = machine.loginStarting()
      let completion = LoginCompletion(tsih: 1, statSN: statSN, expCmdSN: expCmdSN, maxCmdSN: maxCmdSN)
      statSN &+= 1
      let now = self.now
      return event { $0.loggedIn(NegotiatedParameters(), completion, now: now, into: &$1) }
    }

    mutating func submit(read length: Int = 4096) -> [String] {
      let command = SCSICommand(lun: 0, cdb: [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], direction: .read(length))
      return event { $0.submit(command, completion: { _ in }, into: &$1) }
    }

    mutating func submitTestUnitReady() -> [String] {
      return event { $0.submit(SCSICommand(lun: 0, cdb: [0, 0, 0, 0, 0, 0]), completion: { _ in }, into: &$1) }
    }

    mutating func tick(at ms: Int) -> [String] {
      clock = ms
      let now = self.now
      return event { $0.tick(now: now, into: &$1) }
    }

    mutating func receive(_ header: BasicHeaderSegment, data: ByteBuffer = ByteBuffer()) -> [String] {
      var h = header
      h.statSN = statSN
      h.expCmdSN = expCmdSN
      h.maxCmdSN = maxCmdSN
      statSN &+= 1
      let pdu = ISCSIPDU(header: h, data: data)
      return event { $0.receive(pdu, allocator: ByteBufferAllocator(), into: &$1) }
    }

    /// SCSI Response (RFC 7143 section 11.4) with optional fixed-format sense.
    mutating func response(itt: UInt32, status: UInt8 = 0, sense: (UInt8, UInt8, UInt8)? = nil) -> [String] {
      var h = BasicHeaderSegment(opcode: .scsiResponse, flags: finalFlag)
      h.initiatorTaskTag = itt
      h.scsiStatus = status
      var data = ByteBuffer()
      if let (key, asc, ascq) = sense {
        var s = [UInt8](repeating: 0, count: 18)
        s[0] = 0x70
        s[2] = key
        s[7] = 10
        s[12] = asc
        s[13] = ascq
        data.writeInteger(UInt16(s.count))
        data.writeBytes(s)
      }
      return receive(h, data: data)
    }

    /// One Data-In carrying all of a read, with status GOOD.
    mutating func dataIn(itt: UInt32, length: Int = 4096) -> [String] {
      var h = BasicHeaderSegment(opcode: .dataIn, flags: DataInFlags.final | DataInFlags.status)
      h.initiatorTaskTag = itt
      h.targetTransferTag = reservedTag
      h.scsiStatus = 0
      return receive(h, data: ByteBuffer(repeating: 0xab, count: length))
    }

    mutating func taskManagementResponse(itt: UInt32, response: UInt8) -> [String] {
      var h = BasicHeaderSegment(opcode: .taskManagementResponse, flags: finalFlag)
      h.initiatorTaskTag = itt
      h.response = response
      return receive(h)
    }

    mutating func pingAnswer(itt: UInt32) -> [String] {
      var h = BasicHeaderSegment(opcode: .nopIn, flags: finalFlag)
      h.initiatorTaskTag = itt
      h.targetTransferTag = reservedTag
      return receive(h)
    }

    mutating func lose(_ reason: String = "target closed the connection", culprit: UInt32? = nil) -> [String] {
      let now = self.now
      return event { $0.connectionLost(reason: reason, culprit: culprit, now: now, into: &$1) }
    }

    mutating func loginFails(_ reason: String = "connection refused") -> [String] {
      _ = machine.loginStarting()
      let now = self.now
      return event { $0.loginFailed(reason: reason, now: now, into: &$1) }
    }
  }

  func testReadCompletesOnDataInWithStatus() {
    var h = Harness()
    XCTAssertEqual(h.login(), ["tick every 500 ms"])
    XCTAssertEqual(h.submit(), ["send command itt=3 cmdSN=1"])
    XCTAssertEqual(h.dataIn(itt: 3), ["complete #1 status=0"])
    XCTAssertEqual(h.machine.inFlightCount, 0)
  }

  func testCommandsWaitForTheLoginAndGoOutInOrder() {
    var h = Harness()
    _ = h.machine.loginStarting()
    XCTAssertEqual(h.submit(), [])
    XCTAssertEqual(h.submit(), [])
    XCTAssertEqual(h.login(), ["tick every 500 ms", "send command itt=4 cmdSN=1", "send command itt=5 cmdSN=2"])
  }

  // MARK: Keepalive

  func testKeepaliveMissDeclaresTheConnectionDead() {
    var h = Harness {
      $0.keepaliveInterval = .seconds(5); $0.keepaliveTimeout = .seconds(5)
    }
    _ = h.login()
    XCTAssertEqual(h.tick(at: 4500), [])
    XCTAssertEqual(h.tick(at: 5000), ["ping itt=3"])
    XCTAssertEqual(h.tick(at: 10000), [])  // not more than 5 s yet
    XCTAssertEqual(h.tick(at: 10500), ["close connection", "reconnect in 0 ms"])
    XCTAssertEqual(h.machine.state, .recovering)
    XCTAssertTrue(h.logs.contains("error: iSCSI connection lost: no answer to a NOP-Out ping within 5 s"), "\(h.logs)")
  }

  func testAnsweredPingKeepsTheConnection() {
    var h = Harness {
      $0.keepaliveInterval = .seconds(5); $0.keepaliveTimeout = .seconds(5)
    }
    _ = h.login()
    XCTAssertEqual(h.tick(at: 5000), ["ping itt=3"])
    h.clock = 5100
    XCTAssertEqual(h.pingAnswer(itt: 3), [])
    // Received PDUs are dated by the next tick (at most one period late): 5500 here.
    for t in stride(from: 5500, through: 10000, by: 500) { XCTAssertEqual(h.tick(at: t), [], "at \(t) ms") }
    XCTAssertEqual(h.tick(at: 10500), ["ping itt=4"])
    XCTAssertEqual(h.machine.state, .fullFeature)
  }

  func testTrafficStandsInForThePing() {
    // Data arriving is proof of life: no ping while the target keeps answering.
    var h = Harness {
      $0.keepaliveInterval = .seconds(5); $0.keepaliveTimeout = .seconds(5)
    }
    _ = h.login()
    for t in stride(from: 1000, through: 20000, by: 1000) {
      _ = h.submit()
      _ = h.dataIn(itt: h.machine.nextTag)
      XCTAssertEqual(h.tick(at: t), [], "at \(t) ms")
    }
  }

  // MARK: Command timeouts

  func testCommandTimeoutAbortsThenResetsThenReinstates() {
    var h = Harness {
      $0.commandTimeout = .seconds(30); $0.keepaliveInterval = .seconds(600)
    }
    _ = h.login()
    XCTAssertEqual(h.submit(), ["send command itt=3 cmdSN=1"])
    XCTAssertEqual(h.tick(at: 30000), [])
    XCTAssertEqual(h.tick(at: 30500), ["ABORT TASK ref=3"])
    XCTAssertEqual(h.tick(at: 60500), [])
    XCTAssertEqual(h.tick(at: 61000), ["LOGICAL UNIT RESET lun=0"])
    XCTAssertEqual(h.tick(at: 91500), ["close connection", "reconnect in 0 ms"])
    XCTAssertTrue(h.logs.contains { $0.contains("LOGICAL UNIT RESET of LUN 0 was not answered") }, "\(h.logs)")
    // Reinstatement re-sends the command, under a new tag and the next CmdSN.
    // (CmdSN goes on from the old session's: the login carries it.)
    XCTAssertEqual(h.login(), ["tick every 500 ms", "send command itt=7 cmdSN=2"])
    XCTAssertEqual(h.machine.reinstatements, 1)
    XCTAssertEqual(h.dataIn(itt: 7), ["complete #1 status=0"])
  }

  func testAnsweredAbortSendsTheCommandAgain() {
    var h = Harness {
      $0.commandTimeout = .seconds(30); $0.keepaliveInterval = .seconds(600)
    }
    _ = h.login()
    _ = h.submit()
    XCTAssertEqual(h.tick(at: 30500), ["ABORT TASK ref=3"])
    XCTAssertEqual(h.taskManagementResponse(itt: 4, response: 0), ["send command itt=5 cmdSN=2"])
    XCTAssertEqual(h.dataIn(itt: 5), ["complete #1 status=0"])
  }

  func testRefusedAbortEscalatesToLUNResetAndARefusedResetReinstates() {
    var h = Harness {
      $0.commandTimeout = .seconds(30); $0.keepaliveInterval = .seconds(600)
    }
    _ = h.login()
    _ = h.submit()
    XCTAssertEqual(h.tick(at: 30500), ["ABORT TASK ref=3"])
    XCTAssertEqual(h.taskManagementResponse(itt: 4, response: 5), ["LOGICAL UNIT RESET lun=0"])
    XCTAssertEqual(h.taskManagementResponse(itt: 5, response: 5), ["close connection", "reconnect in 0 ms"])
  }

  func testFailFastCommandTimeoutFailsThePathAndHandsTheCommandBack() {
    var h = Harness {
      $0.commandTimeout = .seconds(30); $0.failFast = true; $0.keepaliveInterval = .seconds(600)
    }
    _ = h.login()
    _ = h.submit()
    XCTAssertEqual(h.tick(at: 30500), ["reset connection", "stop ticking", "fail #1: path down", "path lost"])
    XCTAssertEqual(h.machine.state, .recovering)
    XCTAssertEqual(h.submit(), ["fail #2: path down"])  // nothing waits on a failed path
  }

  // MARK: Recovery

  func testReinstatementResendsWhatHadNotCompletedInCmdSNOrder() {
    var h = Harness()
    _ = h.login()
    _ = h.submit()  // #1 itt 3
    _ = h.submit()  // #2 itt 4
    _ = h.submit()  // #3 itt 5
    XCTAssertEqual(h.dataIn(itt: 4), ["complete #2 status=0"])
    XCTAssertEqual(h.lose(), ["close connection", "reconnect in 0 ms"])
    XCTAssertEqual(h.submit(), [])  // #4 waits for the session
    XCTAssertEqual(
      h.login(),
      ["tick every 500 ms", "send command itt=7 cmdSN=4", "send command itt=8 cmdSN=5", "send command itt=9 cmdSN=6"])
    XCTAssertEqual(h.dataIn(itt: 7), ["complete #1 status=0"])
    XCTAssertEqual(h.dataIn(itt: 8), ["complete #3 status=0"])
    XCTAssertEqual(h.dataIn(itt: 9), ["complete #4 status=0"])
  }

  func testReconnectBacksOffWithJitterAndCommandsFailAfterTheRecoveryTimeout() {
    var h = Harness { $0.recoveryTimeout = .seconds(10) }
    _ = h.login()
    _ = h.submit()
    XCTAssertEqual(h.lose(), ["close connection", "reconnect in 0 ms"])
    var delays: [Int] = []
    for _ in 0..<6 {
      let lines = h.loginFails()
      let line = try! XCTUnwrap(lines.last)
      XCTAssertTrue(line.hasPrefix("reconnect in "), "\(lines)")
      delays.append(Int(line.split(separator: " ")[2])!)
    }
    for (delay, base) in zip(delays, [250, 500, 1000, 2000, 4000, 4000]) {
      XCTAssertTrue(delay >= base * 3 / 4 && delay <= base * 5 / 4, "\(delays)")
    }
    XCTAssertEqual(h.tick(at: 10000), [])
    XCTAssertEqual(h.tick(at: 10500), ["fail #1: timeout"])
    XCTAssertTrue(h.logs.contains("warning: reconnect failed: connection refused"))
  }

  func testALUAAnnouncementsReachTheOwnerWhileTheCommandIsRetriedOrEnded() {
    var h = Harness()
    _ = h.login()
    XCTAssertEqual(h.submit(), ["send command itt=3 cmdSN=1"])
    // Access states changed: retried (spaced a little), and the owner re-reads them.
    XCTAssertEqual(
      h.response(itt: 3, status: 2, sense: (0x6, 0x2A, 0x06)), ["announce 2a/6", "retry #1 in 10 ms"])
    XCTAssertEqual(h.submit(), ["send command itt=4 cmdSN=2"])
    // A standby port: the command ends (the owner places it elsewhere), announced too.
    XCTAssertEqual(h.response(itt: 4, status: 2, sense: (0x2, 0x04, 0x0B)), ["announce 4/b", "complete #2 status=2"])
    // Another NOT READY (becoming ready) is no announcement.
    XCTAssertEqual(h.submit(), ["send command itt=5 cmdSN=3"])
    XCTAssertEqual(h.response(itt: 5, status: 2, sense: (0x2, 0x04, 0x01)), ["retry #3 in 10 ms"])
  }

  func testASCSIAsynchronousEventsSenseIsAnnounced() {
    var h = Harness()
    _ = h.login()
    var header = BasicHeaderSegment(opcode: .asyncMessage, flags: finalFlag)
    header.initiatorTaskTag = reservedTag
    header.word9 = 0  // AsyncEvent 0: SCSI asynchronous event
    var sense = [UInt8](repeating: 0, count: 18)
    sense[0] = 0x70
    sense[2] = 0x6
    sense[7] = 10
    sense[12] = 0x2A
    sense[13] = 0x06
    var data = ByteBuffer()
    data.writeInteger(UInt16(sense.count))
    data.writeBytes(sense)
    XCTAssertEqual(h.receive(header, data: data), ["announce 2a/6"])
    // Without sense data: logged only.
    XCTAssertEqual(h.receive(header), [])
  }

  /// RFC 7143 section 11.9.1: AsyncEvent 1 (logout requested), 2 and 3 (the target will
  /// drop the connection or the session), 4 (renegotiate), 255 (vendor-specific).
  func asyncMessage(_ event: UInt8, parameter3: UInt16 = 0) -> BasicHeaderSegment {
    var header = BasicHeaderSegment(opcode: .asyncMessage, flags: finalFlag)
    header.initiatorTaskTag = reservedTag
    header.word9 = UInt32(event) << 24
    header.word10 = UInt32(parameter3)
    return header
  }

  func testALogoutTheTargetAsksForLogsOutAndLogsInAgainWithoutFailingIO() {
    var h = Harness()
    _ = h.login()
    XCTAssertEqual(h.submit(), ["send command itt=3 cmdSN=1"])
    // Logout requested within 5 s: at once, then the target's answer and its close.
    XCTAssertEqual(h.receive(asyncMessage(1, parameter3: 5)), ["logout"])
    XCTAssertEqual(h.receive(BasicHeaderSegment(opcode: .logoutResponse, flags: finalFlag)), [])
    let lost = h.lose()
    XCTAssertFalse(lost.contains { $0.hasPrefix("fail") }, "\(lost)")
    // The command in flight is sent again on the new connection and completes.
    let relogin = h.login()
    let resent = relogin.filter { $0.hasPrefix("send command") }
    XCTAssertEqual(resent.count, 1, "\(relogin)")
    let itt = UInt32(resent[0].split(separator: " ")[2].dropFirst("itt=".count))!
    XCTAssertEqual(h.dataIn(itt: itt), ["complete #1 status=0"])
  }

  func testDroppedConnectionOrSessionAnnouncedRenegotiationAndVendorEvents() {
    var h = Harness()
    _ = h.login()
    _ = h.submit()
    // 2 and 3: the target will drop the connection / session; nothing fails meanwhile,
    // and its loss is recovered like any other.
    XCTAssertEqual(h.receive(asyncMessage(2)), [])
    XCTAssertEqual(h.receive(asyncMessage(3)), [])
    XCTAssertFalse(h.lose().contains { $0.hasPrefix("fail") })
    XCTAssertEqual(h.login().filter { $0.hasPrefix("send command") }.count, 1)
    // 4: renegotiate: a logout, then a new login. 255: ignored.
    XCTAssertEqual(h.receive(asyncMessage(4)), ["logout"])
    XCTAssertEqual(h.receive(asyncMessage(255)), [])
  }

  func testUnitAttentionAfterReloginIsRetried() {
    var h = Harness()
    _ = h.login()
    _ = h.submit()
    _ = h.lose()
    XCTAssertEqual(h.login(), ["tick every 500 ms", "send command itt=5 cmdSN=2"])
    // The new I_T nexus reports the reset of the old one (SPC-4 29/07: I_T nexus loss).
    // It is retried, and told to the owner.
    XCTAssertEqual(
      h.response(itt: 5, status: 2, sense: (0x6, 0x29, 0x07)), ["announce 29/7", "send command itt=6 cmdSN=3"])
    XCTAssertEqual(h.dataIn(itt: 6), ["complete #1 status=0"])
    XCTAssertEqual(h.machine.commandsRetried, 2)  // once for the reinstatement, once for the UA
  }

  func testBusyIsRetriedAfterADelayAndGivesUpAfterMaxRetries() {
    var h = Harness { $0.maxRetries = 2 }
    _ = h.login()
    _ = h.submitTestUnitReady()
    XCTAssertEqual(h.response(itt: 3, status: 0x08), ["retry #1 in 10 ms"])
    let first = h.retries[1]!
    XCTAssertEqual(h.event { $0.retryDue(first, into: &$1) }, ["send command itt=4 cmdSN=2"])
    XCTAssertEqual(h.response(itt: 4, status: 0x08), ["retry #1 in 20 ms"])
    let second = h.retries[1]!
    XCTAssertEqual(h.event { $0.retryDue(second, into: &$1) }, ["send command itt=5 cmdSN=3"])
    XCTAssertEqual(h.response(itt: 5, status: 0x08), ["complete #1 status=8"])  // the caller sees BUSY
  }

  /// failFast (a multipath path): a command waiting out a BUSY when its connection is lost
  /// is not sent on the next one. The owner took it off the path with the connection's
  /// other commands; a write among them is fenced and sent again elsewhere, so a copy
  /// leaving later from here could land after newer data.
  func testAFailFastCommandWaitingToBeRetriedIsNotSentOnTheNextConnection() throws {
    var h = Harness { $0.failFast = true }
    _ = h.login()
    _ = h.submitTestUnitReady()
    _ = h.submitTestUnitReady()
    XCTAssertEqual(h.response(itt: 3, status: 0x08), ["retry #1 in 10 ms"])
    XCTAssertEqual(h.lose(), ["reset connection", "stop ticking", "fail #2: path down", "path lost"])
    _ = h.login()  // the probe logs in again before the retry is due
    let parked = try XCTUnwrap(h.retries[1])
    XCTAssertEqual(h.event { $0.retryDue(parked, into: &$1) }, ["fail #1: path down"])
    // One answered BUSY on the connection that stays is retried as usual.
    _ = h.submitTestUnitReady()  // itt 6 (the second login took 5)
    XCTAssertEqual(h.response(itt: 6, status: 0x08), ["retry #3 in 10 ms"])
    let kept = try XCTUnwrap(h.retries[3])
    XCTAssertEqual(h.event { $0.retryDue(kept, into: &$1) }, ["send command itt=7 cmdSN=4"])
  }

  /// Without failFast (one session, no other path) the session itself sends again what had
  /// not completed after reinstating: a command parked over the loss goes out as well.
  func testWithoutFailFastAParkedCommandGoesOutAfterTheReinstatement() throws {
    var h = Harness()
    _ = h.login()
    _ = h.submitTestUnitReady()
    XCTAssertEqual(h.response(itt: 3, status: 0x08), ["retry #1 in 10 ms"])
    _ = h.lose()
    _ = h.login()  // takes task tag 4
    let parked = try XCTUnwrap(h.retries[1])
    XCTAssertEqual(h.event { $0.retryDue(parked, into: &$1) }, ["send command itt=5 cmdSN=2"])
  }

  // MARK: Command window

  func testCommandWindowClosesAndOpens() {
    var h = Harness()
    h.maxCmdSN = 1  // room for one command (RFC 7143 section 4.2.2.1)
    _ = h.login()
    XCTAssertEqual(h.submit(), ["send command itt=3 cmdSN=1"])
    XCTAssertEqual(h.submit(), [])  // window closed
    h.expCmdSN = 2
    h.maxCmdSN = 2
    XCTAssertEqual(h.dataIn(itt: 3), ["complete #1 status=0", "send command itt=4 cmdSN=2"])
  }

  func testMaxCmdSNMovingBackwardsIsIgnoredAtDebugLevel() {
    var h = Harness()
    h.maxCmdSN = 10
    _ = h.login()
    _ = h.submit()
    h.maxCmdSN = 3
    XCTAssertEqual(h.dataIn(itt: 3), ["complete #1 status=0"])
    XCTAssertEqual(h.logs, ["debug: ignored a command window update from the target: MaxCmdSN moved backwards from 10 to 3"])
    // The window stays at 10: nine more commands go out.
    for _ in 0..<9 { XCTAssertEqual(h.submit().count, 1) }
    XCTAssertEqual(h.submit(), [])
  }

  // MARK: Broken targets

  func testProtocolViolationsOnTheSameCommandAreBounded() {
    var h = Harness()
    _ = h.login()
    _ = h.submit()
    XCTAssertEqual(h.lose("bad Data-In", culprit: 3), ["close connection", "reconnect in 0 ms"])
    XCTAssertEqual(h.login(), ["tick every 500 ms", "send command itt=5 cmdSN=2"])
    let second = h.lose("bad Data-In", culprit: 5)
    XCTAssertEqual(second.first, "close connection")
    XCTAssertTrue(second.last?.hasPrefix("reconnect in ") ?? false, "\(second)")
    XCTAssertEqual(h.login(), ["tick every 500 ms", "send command itt=7 cmdSN=3"])
    XCTAssertEqual(h.lose("bad Data-In", culprit: 7).prefix(2), ["fail #1: protocol violation", "close connection"])
  }

  func testDataInForAnUnknownTaskDropsTheConnection() {
    var h = Harness()
    _ = h.login()
    _ = h.submit()
    XCTAssertEqual(h.dataIn(itt: 99), ["close connection", "reconnect in 0 ms"])
    XCTAssertTrue(h.logs.contains { $0.contains("Data-In for unknown task 0x63") }, "\(h.logs)")
    XCTAssertEqual(h.login(), ["tick every 500 ms", "send command itt=5 cmdSN=2"])
  }

  func testClosingFailsQueuedCommandsAndLogsOut() {
    var h = Harness()
    h.maxCmdSN = 1
    _ = h.login()
    _ = h.submit()
    _ = h.submit()
    var loggingOut = false
    XCTAssertEqual(h.event { loggingOut = $0.close(into: &$1) }, ["stop ticking", "fail #2: session failed", "logout"])
    XCTAssertTrue(loggingOut)
    XCTAssertEqual(h.event { $0.closed(into: &$1) }, ["fail #1: session failed"])
    XCTAssertEqual(h.submit(), ["fail #3: session failed"])
  }
}
