import NIOCore
import SCSI

/// The timing rules of a session, in the units `info` prints.
public struct SessionTimeouts: Sendable, Equatable {
  /// NOP-Out ping interval, and how long its answer may take before the connection is dead.
  public var keepaliveInterval: TimeAmount = .seconds(5)
  public var keepaliveTimeout: TimeAmount = .seconds(5)
  /// A command without status after this long is aborted (ABORT TASK), then its LUN
  /// reset, then the session reinstated.
  public var commandTimeout: TimeAmount = .seconds(30)
  /// While the connection is lost, commands wait this long for a reinstated session.
  public var recoveryTimeout: TimeAmount = .seconds(120)
  /// Retries on the same path of a command `SCSIOutcome` says to retry.
  public var maxRetries = SCSIOutcome.defaultMaxRetries
  /// Multipath: a lost connection hands every unfinished command back (`.pathDown`)
  /// instead of reinstating the session; the owner reconnects.
  public var failFast = false

  public init() {}

  /// The period of the `tick` event: fine enough for the shortest keepalive rule.
  public var tickPeriod: TimeAmount {
    .milliseconds(min(500, keepaliveInterval.nanoseconds / 1_000_000, keepaliveTimeout.nanoseconds / 1_000_000))
  }
}

/// The full-feature phase of one iSCSI session (one connection, ErrorRecoveryLevel 0), as
/// a pure state machine: events in (a command submitted, a PDU received, a timer tick, the
/// connection lost, a login finished), actions out (write PDUs, complete commands, close,
/// reconnect later). No clock, socket or randomness of its own: time comes with the events
/// (`tick(now:)`) and jitter from the seed it is given, so every timing rule can be tested
/// as a list of `event -> actions` lines. The login exchange itself is `LoginStateMachine`.
///
/// Commands carry their caller's completion through the machine, so no other table keeps
/// them: the action that completes a command hands it back.
public struct SessionStateMachine {
  public enum State: Equatable, Sendable {
    case idle, loggingIn, fullFeature, recovering, closing, closed
  }

  /// Called once with the command's end, on the driver's event loop.
  public typealias Completion = (Result<SCSICompletion, Error>) -> Void

  /// One command from submission to completion (across retries and reinstatements).
  public struct Command {
    /// Submission order, for logs and tests.
    public let id: UInt64
    public let command: SCSICommand
    public let completion: Completion
    var queuedAt: NIODeadline
    var retries = 0
    /// Times the target broke the protocol on this command.
    var violations = 0
    /// When this command was first caught by a lost connection (or submitted while there
    /// was none); it fails `recoveryTimeout` after that.
    var troubleSince: NIODeadline?
    /// Set while it waits out a `.retryLater`: the connection count it was answered on.
    var parkedOn: UInt64?
  }

  public enum LogLevel: Sendable, Equatable { case debug, info, notice, warning, error }

  public enum Action {
    /// Write this PDU (no flush).
    case write(ISCSIPDU)
    case flush
    case succeed(Command, SCSICompletion)
    case fail(Command, Error)
    /// Hand the command back through `retryDue` after this delay.
    case retryLater(Command, TimeAmount)
    /// Deliver `tick(now:)` every period from now on (replacing any earlier timer).
    case startTicking(TimeAmount)
    case stopTicking
    /// Close the connection; `reset`: with SO_LINGER 0, discarding what is queued.
    case closeConnection(reset: Bool)
    /// Log in again (same ISID, TSIH 0) after this delay; then `loggedIn` or `loginFailed`.
    case reconnect(after: TimeAmount)
    /// Multipath: the connection is gone and its commands were handed back.
    case pathLost(reason: String)
    /// A Text Response for the exchange the driver runs.
    case textResponse(ISCSIPDU)
    /// The Logout Response arrived (or the connection ended while a logout waited).
    case logoutDone
    /// Fail the text exchange in progress, if any.
    case failExchanges(Error)
    case log(LogLevel, String)
    /// The target told something about the LU that its owner should act on, while the
    /// command itself is retried or ended as usual: a unit attention (access states,
    /// capacity, inquiry or LUN data changed, a reset), an ALUA NOT READY (04/0A-0C), or
    /// the sense of a SCSI asynchronous event.
    case announced(SenseData)
  }

  /// Command window, numbering and tasks of the current connection.
  struct Connection {
    var window: CommandWindow
    var expStatSN: UInt32
    var limits: DataTransferLimits
    var inFlight: [UInt32: InFlight] = [:]
    var management: [UInt32: ManagementTask] = [:]
    var pingITT: UInt32?
    var pingSentAt: NIODeadline
    var lastPing: NIODeadline
    /// Any PDU from the target shows the connection is alive (as open-iscsi counts it).
    var lastReceived: NIODeadline
    var receivedSinceTick = false

    mutating func advanceStatSN(_ statSN: UInt32) {
      if SerialNumber(statSN) >= SerialNumber(expStatSN) { expStatSN = statSN &+ 1 }
    }
  }

  struct InFlight {
    var command: Command
    var task: SCSITask
    var cmdSN: UInt32
    var sentAt: NIODeadline
    var aborting: UInt32? = nil
  }

  /// ABORT TASK (function 1) names one task, LOGICAL UNIT RESET (function 5) every task
  /// of one LUN (RFC 7143 section 11.5.1).
  struct ManagementTask {
    var function: UInt8
    var ref: UInt32
    var lun: UInt16
    var sentAt: NIODeadline
  }

  /// A target that breaks the protocol on the same command this many times gets no more
  /// chances for it: the command fails instead of being sent again forever.
  public static let maxProtocolViolationsPerCommand = 3

  public private(set) var state: State = .idle
  public var timeouts: SessionTimeouts
  /// Where the session's target is, for messages.
  public let portal: String
  public private(set) var reinstatements = 0
  public private(set) var commandsRetried = 0
  public private(set) var lastError: String?

  var connection: Connection?
  var queue = CircularBuffer<Command>()
  var nextTag: UInt32 = 1
  var nextID: UInt64 = 1
  /// CmdSN carried from one connection to the next (the login's first CmdSN).
  var nextCmdSN: UInt32 = 1
  var everLoggedIn = false
  /// Connections lost so far: tells a command parked for a retry whether the connection
  /// it was answered on is still the current one.
  var connectionsLost: UInt64 = 0
  var recoveryAttempt = 0
  var recoveryStarted: NIODeadline
  /// Time of the latest event that carried one: stamps commands without a clock read
  /// per command (at most one tick period old).
  var now: NIODeadline
  var random: SplitMix64

  public init(timeouts: SessionTimeouts, portal: String, now: NIODeadline, seed: UInt64) {
    self.timeouts = timeouts
    self.portal = portal
    self.now = now
    self.recoveryStarted = now
    self.random = SplitMix64(seed: seed)
  }

  // MARK: - Queries for the driver

  public var isIdle: Bool { (connection?.inFlight.isEmpty ?? true) && (queue.isEmpty || state != .fullFeature) }
  public var expStatSN: UInt32 { connection?.expStatSN ?? 0 }
  public var immediateCmdSN: UInt32 { connection?.window.immediateCmdSN ?? nextCmdSN }
  public var inFlightCount: Int { connection?.inFlight.count ?? 0 }
  /// The command window of the current connection: (ExpCmdSN, MaxCmdSN), commands the
  /// target takes before the window closes.
  public var commandWindow: (expCmdSN: UInt32, maxCmdSN: UInt32, available: Int)? {
    connection.map { ($0.window.expCmdSN, $0.window.maxCmdSN, $0.window.available) }
  }
  public var queuedCount: Int { queue.count }

  /// A task tag not in use (never the reserved 0xffffffff, RFC 7143 section 11.2.1.8).
  public mutating func allocateTag() -> UInt32 {
    repeat {
      nextTag &+= 1
    } while nextTag == reservedTag || nextTag == 0 || connection?.inFlight[nextTag] != nil
    return nextTag
  }

  // MARK: - Commands

  /// A command to run. UNIT ATTENTION, BUSY and the like are retried as `SCSIOutcome`
  /// says; a lost connection reinstates the session and sends it again (or, failFast,
  /// hands it back with `.pathDown`).
  public mutating func submit(_ command: SCSICommand, completion: @escaping Completion, into out: inout [Action]) {
    let c = Command(id: nextID, command: command, completion: completion, queuedAt: now)
    nextID &+= 1
    enqueue(c, first: false, into: &out)
  }

  /// A command given back by `.retryLater`: it goes to the front of the queue. With
  /// failFast, one whose connection was lost while it waited fails with `.pathDown`
  /// instead: the owner took it off the path with the rest of that connection's commands
  /// (a write is fenced, then sent again elsewhere), so sending it on a later connection
  /// would put a second copy on its way that could land after newer writes.
  public mutating func retryDue(_ c: consuming Command, into out: inout [Action]) {
    if timeouts.failFast, let parked = c.parkedOn, parked != connectionsLost {
      return out.append(
        .fail(c, ISCSIError(.pathDown, "the path to \(portal) was lost while a command waited to be retried")))
    }
    c.parkedOn = nil
    enqueue(c, first: true, into: &out)
  }

  private mutating func enqueue(_ c: consuming Command, first: Bool, into out: inout [Action]) {
    switch state {
    case .closing, .closed, .idle:
      return out.append(.fail(c, ISCSIError(.sessionFailed, "the iSCSI session to \(portal) is closed")))
    case .loggingIn, .recovering:
      // failFast: nothing waits on a failed path; the owner sends it elsewhere.
      if timeouts.failFast { return out.append(.fail(c, ISCSIError(.pathDown, "the path to \(portal) is down"))) }
      if c.troubleSince == nil { c.troubleSince = now }
    case .fullFeature:
      if queue.isEmpty && connection?.window.isOpen == true {
        // Nothing waits before it: sent at once, without a trip through the queue.
        send(c, into: &out)
        return out.append(.flush)
      }
    }
    if first { queue.prepend(c) } else { queue.append(c) }
    pump(into: &out)
  }

  /// Sends queued commands while the command window is open.
  mutating func pump(into out: inout [Action]) {
    guard state == .fullFeature, connection != nil, !queue.isEmpty else { return }
    var wrote = false
    while !queue.isEmpty && connection!.window.isOpen {
      send(queue.removeFirst(), into: &out)
      wrote = true
    }
    if wrote { out.append(.flush) }
  }

  /// Sends one command (full feature phase, window open); the caller adds the flush.
  private mutating func send(_ c: consuming Command, into out: inout [Action]) {
    let itt = allocateTag()
    let task = SCSITask(itt: itt, command: c.command, limits: connection!.limits)
    var (pdu, unsolicited) = task.makeCommandPDUs()
    let cmdSN = connection!.window.take()
    let expStatSN = connection!.expStatSN
    pdu.header.cmdSN = cmdSN
    pdu.header.expStatSN = expStatSN
    out.append(.write(consume pdu))
    connection!.inFlight[itt] = InFlight(command: c, task: consume task, cmdSN: cmdSN, sentAt: now)
    for var data in unsolicited {
      data.header.expStatSN = expStatSN
      out.append(.write(data))
    }
  }

  // MARK: - Logging in

  /// The driver starts a login: the first CmdSN and the login's task tag.
  public mutating func loginStarting() -> (cmdSN: UInt32, itt: UInt32) {
    state = .loggingIn
    return (nextCmdSN, allocateTag())
  }

  /// The login finished: the full-feature phase begins, queued commands go out.
  public mutating func loggedIn(
    _ negotiated: NegotiatedParameters, _ completion: LoginCompletion, now: NIODeadline, into out: inout [Action]
  ) {
    self.now = now
    let limits = DataTransferLimits(
      maxSendDataSegmentLength: negotiated.maxSendDataSegmentLength,
      firstBurstLength: negotiated.firstBurstLength,
      maxBurstLength: negotiated.maxBurstLength,
      initialR2T: negotiated.initialR2T,
      immediateData: negotiated.immediateData,
      maxOutstandingR2T: negotiated.maxOutstandingR2T,
      dataPDUInOrder: negotiated.dataPDUInOrder,
      dataSequenceInOrder: negotiated.dataSequenceInOrder)
    connection = Connection(
      window: CommandWindow(cmdSN: nextCmdSN, expCmdSN: completion.expCmdSN, maxCmdSN: completion.maxCmdSN),
      expStatSN: completion.statSN &+ 1, limits: limits, pingSentAt: now, lastPing: now, lastReceived: now)
    state = .fullFeature
    if everLoggedIn {
      reinstatements += 1
      out.append(.log(.notice, "session reinstated after \(seconds(now - recoveryStarted)) s"))
    }
    everLoggedIn = true
    out.append(.startTicking(timeouts.tickPeriod))
    pump(into: &out)
  }

  /// A login attempt failed. Recovering without failFast: try again after a backoff.
  public mutating func loginFailed(reason: String, now: NIODeadline, into out: inout [Action]) {
    self.now = now
    guard state == .loggingIn else { return }
    let recovering = everLoggedIn || !queue.isEmpty
    state = recovering ? .recovering : .idle
    guard recovering else { return }
    lastError = reason
    if !timeouts.failFast {
      // Ticking goes on while recovering: queued commands fail after recoveryTimeout.
      out.append(.startTicking(timeouts.tickPeriod))
      out.append(.log(.warning, "reconnect failed: \(reason)"))
      out.append(.reconnect(after: nextBackoff()))
    }
  }

  /// Exponential backoff with jitter: 0, 0.25, 0.5, 1, 2, 4 s (capped), +-25 %.
  mutating func nextBackoff() -> TimeAmount {
    let base = recoveryAttempt == 0 ? 0 : min(4000, 125 << min(recoveryAttempt, 6))
    let quarter = base / 4
    let jitter = quarter > 0 ? Int(random.next() % UInt64(2 * quarter + 1)) - quarter : 0
    recoveryAttempt += 1
    return .milliseconds(Int64(base + jitter))
  }

  /// The owner (multipath) asks for a login after a lost connection.
  public mutating func reconnectRequested(now: NIODeadline) {
    self.now = now
    recoveryStarted = now
  }

  // MARK: - Inbound PDUs

  /// A PDU of the full-feature phase (the driver gives login PDUs to `LoginStateMachine`).
  public mutating func receive(_ pdu: ISCSIPDU, allocator: ByteBufferAllocator, into out: inout [Action]) {
    guard state == .fullFeature || state == .closing, connection != nil else { return }
    connection!.receivedSinceTick = true
    let h = pdu.header
    // Every target PDU in full feature phase carries ExpCmdSN/MaxCmdSN (RFC 7143 section 11).
    // An invalid or backwards update is ignored, as section 4.2.2.1 allows: not worth more
    // than a debug line.
    if case .ignored(let reason) = connection!.window.update(expCmdSN: h.expCmdSN, maxCmdSN: h.maxCmdSN) {
      out.append(.log(.debug, "ignored a command window update from the target: \(reason)"))
    }
    let itt = h.initiatorTaskTag
    switch pdu.opcode {
    case .dataIn:
      if h.flags & DataInFlags.status != 0 { connection!.advanceStatSN(h.statSN) }
      guard let index = connection!.inFlight.index(forKey: itt) else {
        return violation("target sent Data-In for unknown task 0x\(hex(itt))", culprit: nil, into: &out)
      }
      // The task gathers the segments in place (one lookup; no copy of its buffers).
      let done: SCSICompletion?
      do {
        done = try connection!.inFlight.values[index].task.handleDataIn(pdu, allocator: allocator)
      } catch {
        return violation(error, culprit: itt, into: &out)
      }
      if let done {
        let entry = connection!.inFlight.remove(at: index).value
        finish(entry, done, into: &out)
      }
    case .scsiResponse:
      connection!.advanceStatSN(h.statSN)
      // Moved out of the table (not copied); put back only when the response is broken.
      guard let entry = connection!.inFlight.removeValue(forKey: itt) else {
        return violation("target sent a SCSI Response for unknown task 0x\(hex(itt))", culprit: nil, into: &out)
      }
      do {
        let completion = try entry.task.handleResponse(pdu)
        finish(entry, completion, into: &out)
      } catch let error as ISCSIError where error.code == .protocolViolation {
        // Data that disagrees with the status: the command stays in flight, so dropping the
        // connection sends it again (or hands it back to multipath); never completed.
        connection!.inFlight[itt] = entry
        return violation(error, culprit: itt, into: &out)
      } catch {
        out.append(.fail(entry.command, error))
      }
    case .readyToTransfer:
      guard var entry = connection!.inFlight[itt] else {
        return violation("target sent an R2T for unknown task 0x\(hex(itt))", culprit: nil, into: &out)
      }
      do {
        let pdus = try entry.task.handleR2T(h)
        connection!.inFlight[itt] = entry
        let expStatSN = connection!.expStatSN
        for var data in pdus {
          data.header.expStatSN = expStatSN
          out.append(.write(data))
        }
        out.append(.flush)
      } catch {
        return violation(error, culprit: itt, into: &out)
      }
    case .nopIn:
      receiveNopIn(pdu, into: &out)
    case .textResponse:
      connection!.advanceStatSN(h.statSN)
      out.append(.textResponse(pdu))
    case .taskManagementResponse:
      connection!.advanceStatSN(h.statSN)
      receiveTaskManagementResponse(h, into: &out)
    case .logoutResponse:
      connection!.advanceStatSN(h.statSN)
      out.append(.logoutDone)
    case .asyncMessage:
      connection!.advanceStatSN(h.statSN)
      receiveAsync(pdu, into: &out)
    case .reject:
      connection!.advanceStatSN(h.statSN)
      receiveReject(pdu, into: &out)
    default:
      return violation("target sent an unexpected \(pdu.opcode) in full feature phase", culprit: nil, into: &out)
    }
    pump(into: &out)
  }

  private mutating func violation(_ message: String, culprit: UInt32?, into out: inout [Action]) {
    violation(ISCSIError(.protocolViolation, message), culprit: culprit, into: &out)
  }

  private mutating func violation(_ error: Error, culprit: UInt32?, into out: inout [Action]) {
    connectionLost(reason: "\(error)", culprit: culprit, now: now, into: &out)
  }

  private mutating func finish(_ entry: consuming InFlight, _ completion: SCSICompletion, into out: inout [Action]) {
    let sense = completion.sense.isEmpty ? nil : try? SenseData(completion.sense)
    if let sense, SessionStateMachine.concernsOwner(sense) { out.append(.announced(sense)) }
    let outcome = SCSIOutcome(
      status: completion.status, sense: sense, retries: entry.command.retries, maxRetries: timeouts.maxRetries)
    let delay: Int
    switch outcome {
    case .retry(let ms): delay = ms
    // Until the owner re-reads ALUA states itself, a re-check is a retry here, spaced a
    // little for a transition to settle.
    case .recheckPath: delay = min(100, 10 * (entry.command.retries + 1))
    case .done, .failPath, .fail: delay = -1
    }
    var c = entry.command
    if delay >= 0 {
      c.retries += 1
      commandsRetried += 1
      out.append(.log(.debug, "retrying a command (status 0x\(hex8(completion.status)), retry \(c.retries))"))
      if delay == 0 {
        queue.prepend(c)
      } else {
        c.parkedOn = connectionsLost
        out.append(.retryLater(c, .milliseconds(Int64(delay))))
      }
      return
    }
    // A command answered on this connection: it works, so the next loss starts the
    // backoff afresh (a target that fails right after each login keeps backing off).
    recoveryAttempt = 0
    out.append(.succeed(c, completion))
  }

  /// A unit attention, or NOT READY because of the port's ALUA state (04/0A-0C, 04/12).
  static func concernsOwner(_ sense: SenseData) -> Bool {
    sense.senseKey == .unitAttention || sense.portAccessState != nil
  }

  private mutating func receiveNopIn(_ pdu: ISCSIPDU, into out: inout [Action]) {
    let h = pdu.header
    if h.initiatorTaskTag != reservedTag {
      // The answer to our ping (StatSN is valid only then, RFC 7143 section 11.19).
      connection!.advanceStatSN(h.statSN)
      if h.initiatorTaskTag == connection!.pingITT { connection!.pingITT = nil }
      return
    }
    guard h.targetTransferTag != reservedTag else { return }
    // A ping from the target: answer with a NOP-Out echoing TTT and LUN, ITT 0xffffffff,
    // immediate (RFC 7143 section 11.18.3).
    var h2 = BasicHeaderSegment(opcode: .nopOut, immediate: true, flags: finalFlag)
    h2.lun = h.lun
    h2.initiatorTaskTag = reservedTag
    h2.targetTransferTag = h.targetTransferTag
    h2.cmdSN = connection!.window.immediateCmdSN
    h2.expStatSN = connection!.expStatSN
    out.append(.write(ISCSIPDU(header: h2, data: pdu.data)))
    out.append(.flush)
  }

  private mutating func receiveAsync(_ pdu: ISCSIPDU, into out: inout [Action]) {
    let h = pdu.header
    switch h.asyncEvent {
    case 0:
      // SCSI asynchronous event: the data segment is the sense data with a 2-byte length
      // before it (RFC 7143 section 11.9.4); a unit attention in it is handled as one
      // answered to a command.
      let bytes = Array(pdu.data.readableBytesView)
      let length = bytes.count >= 2 ? Int(bytes[0]) << 8 | Int(bytes[1]) : 0
      if length > 0, bytes.count >= 2 + length, let sense = try? SenseData(Array(bytes[2..<(2 + length)])) {
        out.append(.log(.info, "target reported a SCSI asynchronous event: \(sense)"))
        if SessionStateMachine.concernsOwner(sense) { out.append(.announced(sense)) }
      } else {
        out.append(.log(.info, "target reported a SCSI asynchronous event"))
      }
    case 1:
      // The target asks for a logout within Parameter3 seconds (RFC 7143 section 11.9.1):
      // log out and log in again, which moves our commands to the new connection.
      out.append(.log(.notice, "target requested logout within \(h.asyncParameter3) s"))
      appendLogout(into: &out)
    case 2, 3:
      out.append(
        .log(.notice, "target will drop the connection (event \(h.asyncEvent), time2wait \(h.asyncParameter2))"))
    case 4:
      out.append(.log(.notice, "target requested parameter renegotiation; logging in again"))
      appendLogout(into: &out)
    default:
      out.append(.log(.info, "target sent async event \(h.asyncEvent)"))
    }
  }

  private mutating func receiveReject(_ pdu: ISCSIPDU, into out: inout [Action]) {
    let reason = pdu.header.rejectReason
    var rejectedITT: UInt32? = nil
    if pdu.data.readableBytes >= 48 {
      rejectedITT = pdu.data.getInteger(at: pdu.data.readerIndex + 16, as: UInt32.self)
    }
    out.append(
      .log(.warning, "target rejected a PDU (reason 0x\(hex8(reason)), itt \(rejectedITT.map { hex($0) } ?? "-"))"))
    if let itt = rejectedITT, let entry = connection!.inFlight.removeValue(forKey: itt) {
      out.append(.fail(entry.command, ISCSIError(.rejected, "target rejected the command (reason 0x\(hex8(reason)))")))
    }
  }

  /// A Logout Request (reason: close the session) for the current connection.
  public mutating func appendLogout(into out: inout [Action]) {
    guard connection != nil else { return }
    var h = BasicHeaderSegment(opcode: .logoutRequest, immediate: true, flags: finalFlag | 0)
    h.initiatorTaskTag = allocateTag()
    h.cmdSN = connection!.window.immediateCmdSN
    h.expStatSN = connection!.expStatSN
    out.append(.write(ISCSIPDU(header: h)))
    out.append(.flush)
  }

  // MARK: - Timers: keepalive, command timeouts, recovery deadline

  /// The periodic timer fired.
  public mutating func tick(now: NIODeadline, into out: inout [Action]) {
    self.now = now
    // Commands that have waited too long for a working session fail: those caught by a
    // lost connection `recoveryTimeout` after that, and queued ones that never got a CmdSN.
    if !queue.isEmpty {
      var kept = CircularBuffer<Command>()
      while let c = queue.popFirst() {
        if expired(c) || now - c.queuedAt > timeouts.recoveryTimeout + timeouts.commandTimeout {
          out.append(.fail(c, giveUpError()))
        } else {
          kept.append(c)
        }
      }
      queue = kept
    }
    if connection != nil {
      for (itt, entry) in connection!.inFlight where expired(entry.command) {
        connection!.inFlight[itt] = nil
        out.append(.fail(entry.command, giveUpError()))
      }
    }
    guard state == .fullFeature, connection != nil else { return }
    if connection!.receivedSinceTick {
      connection!.lastReceived = now
      connection!.receivedSinceTick = false
    }
    let keepaliveTimeout = timeouts.keepaliveTimeout
    let keepaliveInterval = timeouts.keepaliveInterval
    // Keepalive (RFC 7143 section 11.18): a NOP-Out ping; no answer in time = dead connection.
    if connection!.pingITT != nil {
      if now - connection!.pingSentAt > keepaliveTimeout && now - connection!.lastReceived > keepaliveTimeout {
        return connectionLost(
          code: .timeout, reason: "no answer to a NOP-Out ping within \(seconds(keepaliveTimeout)) s", now: now,
          into: &out)
      }
    } else if now - connection!.lastPing >= keepaliveInterval && now - connection!.lastReceived >= keepaliveInterval {
      let itt = allocateTag()
      connection!.pingITT = itt
      connection!.pingSentAt = now
      connection!.lastPing = now
      var h = BasicHeaderSegment(opcode: .nopOut, immediate: true, flags: finalFlag)
      h.initiatorTaskTag = itt
      h.targetTransferTag = reservedTag
      h.cmdSN = connection!.window.immediateCmdSN
      h.expStatSN = connection!.expStatSN
      out.append(.write(ISCSIPDU(header: h)))
      out.append(.flush)
    }
    // Command timeouts escalate: ABORT TASK; if that is refused or not answered, LOGICAL
    // UNIT RESET; if that fails too, drop the connection and reinstate the session, which
    // ends every task on the target (RFC 7143 sections 6.3.5, 11.5).
    let commandTimeout = timeouts.commandTimeout
    for (tag, m) in connection!.management where now - m.sentAt > commandTimeout {
      connection!.management[tag] = nil
      if m.function == 1 {
        out.append(.log(.warning, "ABORT TASK was not answered; resetting LUN \(m.lun)"))
        sendTaskManagement(function: 5, ref: reservedTag, lun: m.lun, refCmdSN: 0, into: &out)
      } else {
        return connectionLost(
          code: .timeout, reason: "LOGICAL UNIT RESET of LUN \(m.lun) was not answered; reinstating the session",
          now: now, into: &out)
      }
    }
    if timeouts.failFast,
      let (itt, _) = connection!.inFlight.first(where: { now - $0.value.sentAt > commandTimeout })
    {
      // Multipath: a command timeout fails the path; its commands go elsewhere once the
      // session is fenced (reinstated), which also ends the stuck task on the target.
      return connectionLost(
        code: .timeout, reason: "command 0x\(hex(itt)) timed out after \(seconds(commandTimeout)) s", now: now,
        into: &out)
    }
    let stuck = connection!.inFlight.filter { $0.value.aborting == nil && now - $0.value.sentAt > commandTimeout }
      .sorted { SerialNumber($0.value.cmdSN) < SerialNumber($1.value.cmdSN) }
    for (itt, entry) in stuck {
      out.append(.log(.warning, "command 0x\(hex(itt)) timed out; aborting it"))
      sendTaskManagement(function: 1, ref: itt, lun: entry.command.command.lun, refCmdSN: entry.cmdSN, into: &out)
    }
  }

  private func expired(_ c: Command) -> Bool {
    if let t = c.troubleSince { return now - t > timeouts.recoveryTimeout }
    return false
  }

  private func giveUpError() -> ISCSIError {
    ISCSIError(
      .timeout,
      "no usable iSCSI session to \(portal) within \(seconds(timeouts.recoveryTimeout)) s"
        + (lastError.map { " (last error: \($0))" } ?? ""))
  }

  /// A Task Management Function Request (RFC 7143 section 11.5.1), immediate; marks the
  /// tasks it covers.
  private mutating func sendTaskManagement(
    function: UInt8, ref: UInt32, lun: UInt16, refCmdSN: UInt32, into out: inout [Action]
  ) {
    let tag = allocateTag()
    connection!.management[tag] = ManagementTask(function: function, ref: ref, lun: lun, sentAt: now)
    for (itt, entry) in connection!.inFlight
    where (function == 1 && itt == ref) || (function == 5 && entry.command.command.lun == lun) {
      connection!.inFlight[itt]!.aborting = tag
    }
    var h = BasicHeaderSegment(opcode: .taskManagementRequest, immediate: true, flags: finalFlag | function)
    h.lun = LUNEncoding.encode(lun)
    h.initiatorTaskTag = tag
    h.word5 = ref  // Referenced Task Tag
    h.cmdSN = connection!.window.immediateCmdSN
    h.expStatSN = connection!.expStatSN
    h.word8 = refCmdSN  // RefCmdSN
    out.append(.write(ISCSIPDU(header: h)))
    out.append(.flush)
  }

  private mutating func receiveTaskManagementResponse(_ h: BasicHeaderSegment, into out: inout [Action]) {
    guard let m = connection!.management.removeValue(forKey: h.initiatorTaskTag) else { return }
    // Response 0 = function complete; for ABORT TASK 1 = task does not exist (RFC 7143
    // section 11.6.1). Either way the target no longer holds the tasks: send them again.
    if h.response == 0 || (m.function == 1 && h.response == 1) {
      let covered = connection!.inFlight.filter { $0.value.aborting == h.initiatorTaskTag }
        .sorted { SerialNumber($0.value.cmdSN) < SerialNumber($1.value.cmdSN) }
      for (itt, entry) in covered.reversed() {
        connection!.inFlight[itt] = nil
        commandsRetried += 1
        queue.prepend(entry.command)
      }
      out.append(
        .log(
          .notice,
          (m.function == 1 ? "aborted a timed-out command; sending it again" : "LUN reset; sending its commands again")
            + " (LUN \(m.lun), \(covered.count) commands)"))
    } else if m.function == 1 {
      out.append(.log(.warning, "target refused ABORT TASK (response \(h.response)); resetting the LUN"))
      sendTaskManagement(function: 5, ref: reservedTag, lun: m.lun, refCmdSN: 0, into: &out)
    } else {
      connectionLost(
        code: .timeout, reason: "target refused LOGICAL UNIT RESET (response \(h.response)); reinstating the session",
        now: now, into: &out)
    }
  }

  // MARK: - Losing and regaining the connection

  /// The connection ended (closed by the target, a socket error, a violation found by the
  /// driver, a link down). `culprit`: the task whose PDU broke the protocol; it is sent
  /// again like the others until `maxProtocolViolationsPerCommand`, and with failFast
  /// handed back with `.protocolViolation` so the owner counts the same way.
  public mutating func connectionLost(
    code: ISCSIError.Code = .connectionClosed, reason: String, culprit: UInt32? = nil, now: NIODeadline,
    closeConnection: Bool = true, into out: inout [Action]
  ) {
    self.now = now
    guard state == .fullFeature, connection != nil else { return }
    if let culprit, var entry = connection!.inFlight[culprit] {
      entry.command.violations += 1
      if timeouts.failFast {
        connection!.inFlight[culprit] = nil
        out.append(.fail(entry.command, ISCSIError(.protocolViolation, "path to \(portal) lost: \(reason)")))
      } else if entry.command.violations >= Self.maxProtocolViolationsPerCommand {
        connection!.inFlight[culprit] = nil
        out.append(
          .log(.error, "giving up on a command after \(entry.command.violations) protocol violations of the target: \(reason)"))
        out.append(.fail(entry.command, ISCSIError(.protocolViolation, reason)))
      } else {
        connection!.inFlight[culprit] = entry
      }
    }
    lastError = reason
    // Multipath logs the path failure itself, with the same reason.
    out.append(.log(timeouts.failFast ? .info : .error, "iSCSI connection lost: \(reason)"))
    if closeConnection { out.append(.closeConnection(reset: timeouts.failFast)) }
    let old = connection!
    nextCmdSN = old.window.nextCmdSN
    connection = nil
    connectionsLost &+= 1
    let unfinished = old.inFlight.values.sorted { SerialNumber($0.cmdSN) < SerialNumber($1.cmdSN) }
    state = .recovering
    recoveryStarted = now
    out.append(.logoutDone)
    if timeouts.failFast {
      // Multipath: every unfinished command fails with `.pathDown` (the owner sends them
      // elsewhere, fencing writes first), and the owner is told.
      out.append(.stopTicking)
      let error = ISCSIError(.pathDown, "path to \(portal) lost: \(reason)")
      for entry in unfinished { out.append(.fail(entry.command, error)) }
      while let c = queue.popFirst() { out.append(.fail(c, error)) }
      out.append(.failExchanges(error))
      out.append(.pathLost(reason: reason))
      return
    }
    // ERL 0 recovery: every command not completed goes back to the front of the queue (in
    // CmdSN order), and a new login with the same ISID reinstates the session; the target
    // then ends all tasks of the old one (RFC 7143 section 6.3.5), so nothing from the old
    // connection can land after the retried commands.
    for entry in unfinished.reversed() {
      var c = entry.command
      if c.troubleSince == nil { c.troubleSince = now }
      queue.prepend(c)
    }
    for i in queue.indices where queue[i].troubleSince == nil { queue[i].troubleSince = now }
    commandsRetried += unfinished.count
    out.append(.failExchanges(ISCSIError(.connectionClosed, "connection lost during a text exchange")))
    out.append(.reconnect(after: nextBackoff()))
  }

  // MARK: - Closing

  /// The owner closes the session (after letting in-flight commands drain): queued ones
  /// fail; if logged in, a Logout Request goes out and `true` is returned.
  public mutating func close(into out: inout [Action]) -> Bool {
    let wasLoggedIn = state == .fullFeature
    state = .closing
    out.append(.stopTicking)
    while let c = queue.popFirst() { out.append(.fail(c, ISCSIError(.sessionFailed, "the session is closing"))) }
    guard wasLoggedIn else { return false }
    appendLogout(into: &out)
    return true
  }

  /// The connection is closed for good: what is still in flight fails (with failFast as
  /// `.pathDown`, so a path taken away by a reload sends its commands elsewhere).
  public mutating func closed(into out: inout [Action]) {
    state = .closed
    if let old = connection {
      for entry in old.inFlight.values.sorted(by: { SerialNumber($0.cmdSN) < SerialNumber($1.cmdSN) }) {
        out.append(
          .fail(
            entry.command,
            ISCSIError(
              timeouts.failFast ? .pathDown : .sessionFailed, "the session closed before the command completed")))
      }
    }
    connection = nil
  }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a small seeded generator for the reconnect
/// jitter, so tests can predict it.
public struct SplitMix64: RandomNumberGenerator, Sendable {
  var state: UInt64
  public init(seed: UInt64) { state = seed }
  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

package func seconds(_ t: TimeAmount) -> String {
  let ms = t.nanoseconds / 1_000_000
  return ms % 1000 == 0 ? "\(ms / 1000)" : "\(ms / 1000).\(ms % 1000 / 100)"
}

private func hex8(_ v: UInt8) -> String { String(v, radix: 16) }
