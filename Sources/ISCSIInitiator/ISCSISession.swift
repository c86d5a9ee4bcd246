import ISCSIProtocol
import Logging
import NIOCore
import NIOPosix
import SCSI
#if canImport(Glibc)
import Glibc
#endif

/// Settings of one iSCSI session. Timeouts carry the names `info` prints.
public struct SessionConfiguration: Sendable {
  public var portal: Portal
  public var login: LoginConfiguration
  /// TCP connect plus the whole login exchange.
  public var loginTimeout: TimeAmount = .seconds(15)
  /// NOP-Out ping interval and how long its answer may take before the connection is dead.
  public var keepaliveInterval: TimeAmount = .seconds(5)
  public var keepaliveTimeout: TimeAmount = .seconds(5)
  /// A command without status after this long is aborted (ABORT TASK), then the
  /// connection is dropped and the session reinstated.
  public var commandTimeout: TimeAmount = .seconds(30)
  /// While the connection is lost, commands wait this long for a reinstated session
  /// before they fail.
  public var recoveryTimeout: TimeAmount = .seconds(120)
  /// Login redirects followed for one connection attempt (redirect loops are refused).
  public var maxRedirects = 8
  /// How often a command that came back with UNIT ATTENTION, BUSY or TASK SET FULL is
  /// sent again before its status is returned.
  public var maxRetries = 8
  /// Multipath: a lost connection (or a command timeout, which drops the connection)
  /// fails every unfinished command at once with `ISCSIError.pathDown` instead of
  /// reinstating the session and sending them again; nothing reconnects until the owner
  /// calls `reconnect()`. The owner decides where the commands go next.
  public var failFast = false
  /// Bind the TCP connection to this network interface (SO_BINDTODEVICE), so a path
  /// leaves through its own NIC whatever the routing table says.
  public var interface: String?
  /// Bind the TCP connection to this local address before connecting.
  public var sourceAddress: String?

  public init(portal: Portal, login: LoginConfiguration) {
    self.portal = portal
    self.login = login
  }
}

/// One iSCSI session over one TCP connection (MaxConnections = 1, ErrorRecoveryLevel 0).
/// It logs in, runs SCSI commands, answers pings, keeps the connection alive with
/// NOP-Outs, and on a lost connection reinstates the session (same ISID, RFC 7143 section
/// 6.3.5) and sends again every command that had not completed.
///
/// All state lives on one event loop; the public methods hop there.
public final class ISCSISession: @unchecked Sendable {
  public let eventLoop: EventLoop
  public private(set) var configuration: SessionConfiguration
  var logger: Logger

  public enum State: Equatable, Sendable {
    case idle, loggingIn, fullFeature, recovering, closing, closed
  }
  public private(set) var state: State = .idle
  /// The parameters of the current (or last) login.
  public private(set) var parameters: NegotiatedParameters?
  /// The portal the current connection reached (after redirects).
  public private(set) var connectedPortal: Portal?
  public private(set) var tsih: UInt16 = 0
  /// Counters, for `info` and tests.
  public private(set) var reinstatements = 0
  public private(set) var commandsRetried = 0

  private var channel: Channel?
  private var handler: PDUChannelHandler?
  private var login: LoginStateMachine?
  private var loginPromise: EventLoopPromise<Void>?
  private var loginTimer: Scheduled<Void>?
  private var redirects = 0
  private var window = CommandWindow(cmdSN: 1, expCmdSN: 1, maxCmdSN: 1)
  private var expStatSN: UInt32 = 0
  private var nextTag: UInt32 = 1
  private var limits = DataTransferLimits()

  private struct Pending {
    var command: SCSICommand
    var promise: EventLoopPromise<SCSICompletion>
    var queuedAt: NIODeadline
    var retries = 0
    /// Times the target broke the protocol on this command (see `connectionFailed`).
    var violations = 0
    /// When this command was first caught by a lost connection (or submitted while there
    /// was none); it fails `recoveryTimeout` after that, wherever it then is.
    var troubleSince: NIODeadline? = nil
  }
  private struct InFlight {
    var pending: Pending
    var task: SCSITask
    var cmdSN: UInt32
    var sentAt: NIODeadline
    var aborting: UInt32? = nil  // ITT of the ABORT TASK sent for it
  }
  private var inFlight: [UInt32: InFlight] = [:]
  private var queue = CircularBuffer<Pending>()
  private var textPromise: EventLoopPromise<[TextKeyValue]>?
  /// The Text Request/Response exchange in progress (continuations included).
  private var textExchange: TextExchange?
  private var logoutPromise: EventLoopPromise<Void>?
  /// Task management requests in flight: ABORT TASK (function 1) names one task,
  /// LOGICAL UNIT RESET (function 5) every task of one LUN.
  private struct ManagementTask {
    var function: UInt8
    var ref: UInt32
    var lun: UInt16
    var sentAt: NIODeadline
  }
  private var managementTasks: [UInt32: ManagementTask] = [:]
  private var pingITT: UInt32?
  private var pingSentAt: NIODeadline = .now()
  private var lastPing: NIODeadline = .now()
  /// Any PDU from the target shows the connection is alive (as open-iscsi counts it): a
  /// ping stuck behind a long queue of Data-In must not kill a busy connection.
  private var lastReceived: NIODeadline = .now()
  private var tick: RepeatedTask?
  private var recoveryAttempt = 0
  private var recoveryStarted: NIODeadline = .now()
  /// Why the last connection ended or the last reconnect failed: named when queued
  /// commands give up, so the user sees the cause and not only the timeout.
  public private(set) var lastError: String?
  /// Multipath: called on the event loop when the connection is lost (with the reason);
  /// the session's unfinished commands have failed with `ISCSIError.pathDown` by then.
  public var onConnectionLost: ((String) -> Void)?

  init(configuration: SessionConfiguration, eventLoop: EventLoop, logger: Logger) {
    self.configuration = configuration
    self.eventLoop = eventLoop
    self.logger = logger
    self.logger[metadataKey: "portal"] = "\(configuration.portal)"
  }

  /// Connects and logs in. Fails within `loginTimeout` with an `ISCSIError` that says
  /// why (unreachable portal, unknown target, authentication failure, ...).
  public static func connect(
    _ configuration: SessionConfiguration, on eventLoop: EventLoop,
    logger: Logger = Logger(label: "lunbridge.iscsi")
  ) -> EventLoopFuture<ISCSISession> {
    let session = ISCSISession(configuration: configuration, eventLoop: eventLoop, logger: logger)
    return eventLoop.flatSubmit {
      session.establish(portal: configuration.portal).map { session }
    }
  }

  /// A session that has not logged in yet: `reconnect()` logs it in (multipath opens a
  /// path whose portal is down this way, and probes it later).
  public static func unconnected(
    _ configuration: SessionConfiguration, on eventLoop: EventLoop,
    logger: Logger = Logger(label: "lunbridge.iscsi")
  ) -> ISCSISession {
    ISCSISession(configuration: configuration, eventLoop: eventLoop, logger: logger)
  }

  public static func connect(
    _ configuration: SessionConfiguration, on eventLoop: EventLoop,
    logger: Logger = Logger(label: "lunbridge.iscsi")
  ) async throws -> ISCSISession {
    try await connect(configuration, on: eventLoop, logger: logger).get()
  }

  // MARK: - Connecting and logging in

  /// One connection attempt with login, following redirects.
  private func establish(portal: Portal) -> EventLoopFuture<Void> {
    eventLoop.assertInEventLoop()
    redirects = 0
    let promise = eventLoop.makePromise(of: Void.self)
    loginTimer = eventLoop.scheduleTask(in: configuration.loginTimeout) { [self] in
      failLogin(ISCSIError(.timeout, "login to \(portal) timed out after \(seconds(configuration.loginTimeout)) s"))
    }
    loginPromise = promise
    connectAndLogin(portal)
    return promise.futureResult
  }

  private func connectAndLogin(_ portal: Portal) {
    state = .loggingIn
    let handler = PDUChannelHandler()
    let interface = configuration.interface
    var bootstrap = ClientBootstrap(group: eventLoop)
      .connectTimeout(configuration.loginTimeout)
      .channelOption(.tcpOption(.tcp_nodelay), value: 1)
      .channelInitializer { [self] channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(handler)
          try channel.pipeline.syncOperations.addHandler(SessionInboundHandler(session: self))
        }.flatMap {
          guard let interface else { return channel.eventLoop.makeSucceededVoidFuture() }
          return bindToDevice(channel, interface)
        }
      }
    if let source = configuration.sourceAddress {
      do {
        bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: source, port: 0))
      } catch {
        failLogin(ISCSIError(.invalidArgument, "source address '\(source)' is not an IP address"))
        return
      }
    }
    bootstrap.connect(host: portal.host, port: portal.port).hop(to: eventLoop).whenComplete { [self] result in
      switch result {
      case .failure(let error):
        failLogin(ISCSIError(.connectionClosed, "cannot connect to portal \(portal): \(describe(error))"))
      case .success(let channel):
        guard loginPromise != nil else {
          channel.close(promise: nil)
          return
        }
        self.channel = channel
        self.handler = handler
        self.connectedPortal = portal
        startLogin(on: channel)
      }
    }
  }

  private func startLogin(on channel: Channel) {
    var loginConfiguration = configuration.login
    loginConfiguration.tsih = 0  // ERL 0: a new login reinstates the session by ISID
    var machine = LoginStateMachine(configuration: loginConfiguration, initialCmdSN: window.nextCmdSN, itt: allocateTag())
    do {
      let first = try machine.start()
      login = machine
      channel.writeAndFlush(first, promise: nil)
    } catch {
      failLogin(error)
    }
  }

  private func handleLoginPDU(_ pdu: ISCSIPDU) {
    guard var machine = login else { return }
    do {
      let action = try machine.receive(pdu)
      login = machine
      switch action {
      case .send(let next):
        channel?.writeAndFlush(next, promise: nil)
      case .redirect(let address):
        redirects += 1
        let target = Portal(host: address.host, port: address.port)
        guard redirects <= configuration.maxRedirects else {
          failLogin(
            ISCSIError(
              .redirectLoop, "login redirected more than \(configuration.maxRedirects) times (last to \(target))"))
          return
        }
        logger.notice("login redirected", metadata: ["to": "\(target)", "permanent": "\(address.permanent)"])
        let old = channel
        channel = nil
        login = nil
        old?.close(promise: nil)
        connectAndLogin(target)
      case .complete(let negotiated, let completion):
        login = nil
        loginCompleted(negotiated, completion)
      }
    } catch {
      failLogin(error)
    }
  }

  private func loginCompleted(_ negotiated: NegotiatedParameters, _ completion: LoginCompletion) {
    loginTimer?.cancel()
    loginTimer = nil
    parameters = negotiated
    tsih = completion.tsih
    expStatSN = completion.statSN &+ 1
    window = CommandWindow(cmdSN: window.nextCmdSN, expCmdSN: completion.expCmdSN, maxCmdSN: completion.maxCmdSN)
    limits = DataTransferLimits(
      maxSendDataSegmentLength: negotiated.maxSendDataSegmentLength,
      firstBurstLength: negotiated.firstBurstLength,
      maxBurstLength: negotiated.maxBurstLength,
      initialR2T: negotiated.initialR2T,
      immediateData: negotiated.immediateData,
      maxOutstandingR2T: negotiated.maxOutstandingR2T,
      dataPDUInOrder: negotiated.dataPDUInOrder,
      dataSequenceInOrder: negotiated.dataSequenceInOrder)
    handler?.apply(
      FramingParameters(
        headerDigest: negotiated.headerDigest, dataDigest: negotiated.dataDigest,
        maxRecvDataSegmentLength: negotiated.maxRecvDataSegmentLength,
        maxSendDataSegmentLength: negotiated.maxSendDataSegmentLength))
    state = .fullFeature
    lastPing = .now()
    lastReceived = .now()
    pingITT = nil
    startTicking()
    logger.info(
      "logged in",
      metadata: [
        "target": "\(configuration.login.targetName ?? "discovery")", "tsih": "\(tsih)",
        "headerDigest": "\(negotiated.headerDigest)", "dataDigest": "\(negotiated.dataDigest)",
      ])
    let promise = loginPromise
    loginPromise = nil
    promise?.succeed(())
    pump()
  }

  private func failLogin(_ error: Error) {
    loginTimer?.cancel()
    loginTimer = nil
    login = nil
    let old = channel
    channel = nil
    handler = nil
    old?.close(promise: nil)
    guard let promise = loginPromise else { return }
    loginPromise = nil
    if state == .loggingIn { state = reinstatements > 0 || !inFlight.isEmpty || !queue.isEmpty ? .recovering : .idle }
    promise.fail(error)
  }

  // MARK: - Running commands

  /// Runs one SCSI command. UNIT ATTENTION, BUSY and TASK SET FULL are retried; a lost
  /// connection reinstates the session and sends the command again; CHECK CONDITION
  /// with other sense is returned to the caller in the completion.
  public func execute(_ command: SCSICommand) -> EventLoopFuture<SCSICompletion> {
    let promise = eventLoop.makePromise(of: SCSICompletion.self)
    if eventLoop.inEventLoop {
      enqueue(Pending(command: command, promise: promise, queuedAt: .now()))
    } else {
      eventLoop.execute { self.enqueue(Pending(command: command, promise: promise, queuedAt: .now())) }
    }
    return promise.futureResult
  }

  public func execute(_ command: SCSICommand) async throws -> SCSICompletion {
    try await execute(command).get()
  }

  private func enqueue(_ pending: Pending) {
    switch state {
    case .closing, .closed, .idle:
      pending.promise.fail(ISCSIError(.sessionFailed, "the iSCSI session to \(configuration.portal) is closed"))
    case .fullFeature:
      queue.append(pending)
      pump()
    case .loggingIn, .recovering:
      if configuration.failFast {
        pending.promise.fail(ISCSIError(.pathDown, "the path to \(configuration.portal) is down"))
        return
      }
      var p = pending
      p.troubleSince = .now()
      queue.append(p)
    }
  }

  /// Sends queued commands while the window is open.
  private func pump() {
    guard state == .fullFeature, let channel else { return }
    var wrote = false
    while !queue.isEmpty && window.isOpen {
      let pending = queue.removeFirst()
      let itt = allocateTag()
      let task = SCSITask(itt: itt, command: pending.command, limits: limits)
      var (command, unsolicited) = task.makeCommandPDUs()
      let cmdSN = window.take()
      command.header.cmdSN = cmdSN
      command.header.expStatSN = expStatSN
      inFlight[itt] = InFlight(pending: pending, task: task, cmdSN: cmdSN, sentAt: .now())
      channel.write(command, promise: nil)
      for var pdu in unsolicited {
        pdu.header.expStatSN = expStatSN
        channel.write(pdu, promise: nil)
      }
      wrote = true
    }
    if wrote { channel.flush() }
  }

  private func allocateTag() -> UInt32 {
    repeat {
      nextTag &+= 1
    } while nextTag == reservedTag || inFlight[nextTag] != nil || nextTag == 0
    return nextTag
  }

  // MARK: - Inbound PDUs

  fileprivate func receive(_ pdu: ISCSIPDU, from channel: Channel) {
    guard channel === self.channel else { return }  // a late PDU from a connection we left
    lastReceived = .now()
    if state == .loggingIn {
      guard pdu.opcode == .loginResponse else {
        connectionFailed(
          ISCSIError(.protocolViolation, "target sent a \(pdu.opcode) during login"), channel: channel)
        return
      }
      handleLoginPDU(pdu)
      return
    }
    let h = pdu.header
    // Every target PDU in full feature phase carries ExpCmdSN/MaxCmdSN (RFC 7143 section 11).
    if case .ignored(let reason) = window.update(expCmdSN: h.expCmdSN, maxCmdSN: h.maxCmdSN) {
      logger.warning("ignored a command window update from the target: \(reason)")
    }
    switch pdu.opcode {
    case .dataIn:
      if h.flags & DataInFlags.status != 0 { advanceStatSN(h.statSN) }
      guard var entry = inFlight[h.initiatorTaskTag] else {
        return connectionFailed(
          ISCSIError(.protocolViolation, "target sent Data-In for unknown task 0x\(hex(h.initiatorTaskTag))"),
          channel: channel)
      }
      do {
        let done = try entry.task.handleDataIn(pdu, allocator: channel.allocator)
        if let done {
          inFlight[h.initiatorTaskTag] = nil
          finish(entry, done)
        } else {
          inFlight[h.initiatorTaskTag] = entry
        }
      } catch {
        connectionFailed(error, channel: channel, culprit: h.initiatorTaskTag)
      }
    case .scsiResponse:
      advanceStatSN(h.statSN)
      guard let entry = inFlight[h.initiatorTaskTag] else {
        return connectionFailed(
          ISCSIError(.protocolViolation, "target sent a SCSI Response for unknown task 0x\(hex(h.initiatorTaskTag))"),
          channel: channel)
      }
      do {
        let completion = try entry.task.handleResponse(pdu)
        inFlight[h.initiatorTaskTag] = nil
        finish(entry, completion)
      } catch let error as ISCSIError where error.code == .protocolViolation {
        // Data that disagrees with the status: the command stays in flight, so dropping
        // the connection sends it again (or hands it back to multipath); never completed.
        connectionFailed(error, channel: channel, culprit: h.initiatorTaskTag)
      } catch {
        inFlight[h.initiatorTaskTag] = nil
        entry.pending.promise.fail(error)
      }
    case .readyToTransfer:
      guard var entry = inFlight[h.initiatorTaskTag] else {
        return connectionFailed(
          ISCSIError(.protocolViolation, "target sent an R2T for unknown task 0x\(hex(h.initiatorTaskTag))"),
          channel: channel)
      }
      do {
        let pdus = try entry.task.handleR2T(h)
        inFlight[h.initiatorTaskTag] = entry
        for var out in pdus {
          out.header.expStatSN = expStatSN
          channel.write(out, promise: nil)
        }
        channel.flush()
      } catch {
        connectionFailed(error, channel: channel, culprit: h.initiatorTaskTag)
      }
    case .nopIn:
      handleNopIn(pdu, channel: channel)
    case .textResponse:
      advanceStatSN(h.statSN)
      handleTextResponse(pdu, channel: channel)
    case .taskManagementResponse:
      advanceStatSN(h.statSN)
      handleTaskManagementResponse(h)
    case .logoutResponse:
      advanceStatSN(h.statSN)
      let promise = logoutPromise
      logoutPromise = nil
      promise?.succeed(())
    case .asyncMessage:
      advanceStatSN(h.statSN)
      handleAsync(pdu, channel: channel)
    case .reject:
      advanceStatSN(h.statSN)
      handleReject(pdu, channel: channel)
    default:
      connectionFailed(
        ISCSIError(.protocolViolation, "target sent an unexpected \(pdu.opcode) in full feature phase"),
        channel: channel)
    }
    pump()
  }

  private func advanceStatSN(_ statSN: UInt32) {
    if SerialNumber(statSN) >= SerialNumber(expStatSN) { expStatSN = statSN &+ 1 }
  }

  private func finish(_ entry: InFlight, _ completion: SCSICompletion) {
    let sense = completion.sense.isEmpty ? nil : try? SenseData(completion.sense)
    let outcome = SCSIOutcome(
      status: completion.status, sense: sense, retries: entry.pending.retries, maxRetries: configuration.maxRetries)
    let delay: Int
    switch outcome {
    case .retry(let ms): delay = ms
    // Until the owner re-reads ALUA states itself, a re-check is a retry here, spaced a
    // little for a transition to settle.
    case .recheckPath: delay = min(100, 10 * (entry.pending.retries + 1))
    case .done, .failPath, .fail: delay = -1
    }
    if delay >= 0 {
      var pending = entry.pending
      pending.retries += 1
      commandsRetried += 1
      logger.debug("retrying a command", metadata: ["status": "\(completion.status)", "retry": "\(pending.retries)"])
      if delay == 0 {
        queue.prepend(pending)
      } else {
        eventLoop.scheduleTask(in: .milliseconds(Int64(delay))) { [self] in
          queue.prepend(pending)
          pump()
        }
      }
      return
    }
    // A command answered on this connection: it works, so the next loss starts the
    // backoff afresh (a target that fails right after each login keeps backing off).
    recoveryAttempt = 0
    entry.pending.promise.succeed(completion)
  }

  private func handleNopIn(_ pdu: ISCSIPDU, channel: Channel) {
    let h = pdu.header
    if h.initiatorTaskTag != reservedTag {
      // The answer to our ping (StatSN is valid only then, RFC 7143 section 11.19).
      advanceStatSN(h.statSN)
      if h.initiatorTaskTag == pingITT { pingITT = nil }
      return
    }
    guard h.targetTransferTag != reservedTag else { return }
    // A ping from the target: answer with a NOP-Out echoing TTT and LUN, ITT 0xffffffff,
    // immediate (RFC 7143 section 11.18.3).
    var out = BasicHeaderSegment(opcode: .nopOut, immediate: true, flags: finalFlag)
    out.lun = h.lun
    out.initiatorTaskTag = reservedTag
    out.targetTransferTag = h.targetTransferTag
    out.cmdSN = window.immediateCmdSN
    out.expStatSN = expStatSN
    channel.writeAndFlush(ISCSIPDU(header: out, data: pdu.data), promise: nil)
  }

  private func handleAsync(_ pdu: ISCSIPDU, channel: Channel) {
    let h = pdu.header
    switch h.asyncEvent {
    case 0:
      logger.info("target reported a SCSI asynchronous event")
    case 1:
      // The target asks for a logout within Parameter3 seconds (RFC 7143 section 11.9.1):
      // log out and log in again, which moves our commands to the new connection.
      logger.notice("target requested logout", metadata: ["within": "\(h.asyncParameter3) s"])
      sendLogout(channel: channel)
    case 2, 3:
      logger.notice(
        "target will drop the connection", metadata: ["event": "\(h.asyncEvent)", "time2wait": "\(h.asyncParameter2)"])
    case 4:
      logger.notice("target requested parameter renegotiation; logging in again")
      sendLogout(channel: channel)
    default:
      logger.info("target sent async event \(h.asyncEvent)")
    }
  }

  private func handleReject(_ pdu: ISCSIPDU, channel: Channel) {
    let reason = pdu.header.rejectReason
    var rejectedITT: UInt32? = nil
    if pdu.data.readableBytes >= 48 {
      rejectedITT = pdu.data.getInteger(at: pdu.data.readerIndex + 16, as: UInt32.self)
    }
    logger.warning(
      "target rejected a PDU",
      metadata: ["reason": "0x\(String(reason, radix: 16))", "itt": "\(rejectedITT.map { hex($0) } ?? "-")"])
    if let itt = rejectedITT, let entry = inFlight.removeValue(forKey: itt) {
      entry.pending.promise.fail(
        ISCSIError(.rejected, "target rejected the command (reason 0x\(String(reason, radix: 16)))"))
    }
  }

  private func handleTextResponse(_ pdu: ISCSIPDU, channel: Channel) {
    guard textPromise != nil, var exchange = textExchange, pdu.header.initiatorTaskTag == exchange.initiatorTaskTag
    else { return }
    do {
      switch try exchange.receive(pdu, nextCmdSN: window.immediateCmdSN, expStatSN: expStatSN, immediate: true) {
      case .send(let next):
        textExchange = exchange
        channel.writeAndFlush(next, promise: nil)
      case .complete(let pairs):
        finishText(.success(pairs))
      }
    } catch {
      finishText(.failure(error))
    }
  }

  private func finishText(_ result: Result<[TextKeyValue], Error>) {
    let promise = textPromise
    textPromise = nil
    textExchange = nil
    promise?.completeWith(result)
  }

  /// Sends a Text Request with these keys and returns the whole response (continued
  /// responses joined, RFC 7143 sections 11.10-11.11). Used for SendTargets.
  public func text(_ keys: [TextKeyValue]) -> EventLoopFuture<[TextKeyValue]> {
    eventLoop.flatSubmit { [self] in
      guard state == .fullFeature, let channel else {
        return eventLoop.makeFailedFuture(ISCSIError(.sessionFailed, "the session is not logged in"))
      }
      guard textPromise == nil else {
        return eventLoop.makeFailedFuture(ISCSIError(.sessionFailed, "a text exchange is already running"))
      }
      do {
        let itt = allocateTag()
        let request = try TextRequestBuilder.request(
          keys: keys, itt: itt, cmdSN: window.immediateCmdSN, expStatSN: expStatSN, immediate: true)
        let promise = eventLoop.makePromise(of: [TextKeyValue].self)
        textPromise = promise
        textExchange = TextExchange(itt: itt)
        channel.writeAndFlush(request, promise: nil)
        return promise.futureResult
      } catch {
        return eventLoop.makeFailedFuture(error)
      }
    }
  }

  // MARK: - Timers: keepalive and command timeouts

  private func startTicking() {
    tick?.cancel()
    let period = TimeAmount.milliseconds(
      min(500, configuration.keepaliveInterval.nanoseconds / 1_000_000, configuration.keepaliveTimeout.nanoseconds / 1_000_000))
    tick = eventLoop.scheduleRepeatedTask(initialDelay: period, delay: period) { [weak self] _ in
      self?.onTick()
    }
  }

  private func onTick() {
    let now = NIODeadline.now()
    // Commands that have waited too long for a working session fail: those caught by a
    // lost connection `recoveryTimeout` after that, and queued ones that never got a
    // CmdSN within it.
    func expired(_ p: Pending) -> Bool {
      if let t = p.troubleSince { return now - t > configuration.recoveryTimeout }
      return false
    }
    func giveUp(_ p: Pending) {
      p.promise.fail(
        ISCSIError(
          .timeout,
          "no usable iSCSI session to \(configuration.portal) within \(seconds(configuration.recoveryTimeout)) s"
            + (lastError.map { " (last error: \($0))" } ?? "")))
    }
    if !queue.isEmpty {
      var kept = CircularBuffer<Pending>()
      while let p = queue.popFirst() {
        if expired(p) || now - p.queuedAt > configuration.recoveryTimeout + configuration.commandTimeout {
          giveUp(p)
        } else {
          kept.append(p)
        }
      }
      queue = kept
    }
    for (itt, entry) in inFlight where expired(entry.pending) {
      inFlight[itt] = nil
      giveUp(entry.pending)
    }
    guard state == .fullFeature, let channel else { return }
    // A path bound to a NIC whose link went down: no reset will come and the keepalive
    // would take seconds to notice; the kernel already knows.
    if configuration.failFast, let interface = configuration.interface, interfaceIsDown(interface) {
      connectionFailed(ISCSIError(.connectionClosed, "link of interface \(interface) is down"), channel: channel)
      return
    }
    // Keepalive (RFC 7143 section 11.18): a NOP-Out ping; no answer in time = dead connection.
    if let _ = pingITT {
      if now - pingSentAt > configuration.keepaliveTimeout && now - lastReceived > configuration.keepaliveTimeout {
        connectionFailed(
          ISCSIError(.timeout, "no answer to a NOP-Out ping within \(seconds(configuration.keepaliveTimeout)) s"),
          channel: channel)
        return
      }
    } else if now - lastPing >= configuration.keepaliveInterval && now - lastReceived >= configuration.keepaliveInterval {
      let itt = allocateTag()
      pingITT = itt
      pingSentAt = now
      lastPing = now
      var h = BasicHeaderSegment(opcode: .nopOut, immediate: true, flags: finalFlag)
      h.initiatorTaskTag = itt
      h.targetTransferTag = reservedTag
      h.cmdSN = window.immediateCmdSN
      h.expStatSN = expStatSN
      channel.writeAndFlush(ISCSIPDU(header: h), promise: nil)
    }
    // Command timeouts escalate: ABORT TASK; if that is refused or not answered, LOGICAL
    // UNIT RESET; if that fails too, drop the connection and reinstate the session, which
    // ends every task on the target (RFC 7143 sections 6.3.5, 11.5).
    for (itt, m) in managementTasks where now - m.sentAt > configuration.commandTimeout {
      managementTasks[itt] = nil
      if m.function == 1 {
        logger.warning("ABORT TASK was not answered; resetting the LUN", metadata: ["lun": "\(m.lun)"])
        sendTaskManagement(function: 5, ref: reservedTag, lun: m.lun, refCmdSN: 0, channel: channel)
      } else {
        connectionFailed(
          ISCSIError(.timeout, "LOGICAL UNIT RESET of LUN \(m.lun) was not answered; reinstating the session"),
          channel: channel)
        return
      }
    }
    if configuration.failFast,
      let (itt, _) = inFlight.first(where: { now - $0.value.sentAt > configuration.commandTimeout })
    {
      // Multipath: a command timeout fails the path; its commands go elsewhere once the
      // session is fenced (reinstated), which also ends the stuck task on the target.
      connectionFailed(
        ISCSIError(.timeout, "command 0x\(hex(itt)) timed out after \(seconds(configuration.commandTimeout)) s"),
        channel: channel)
      return
    }
    for (itt, entry) in inFlight where entry.aborting == nil && now - entry.sentAt > configuration.commandTimeout {
      logger.warning("command timed out; aborting it", metadata: ["itt": "0x\(hex(itt))"])
      sendTaskManagement(function: 1, ref: itt, lun: entry.pending.command.lun, refCmdSN: entry.cmdSN, channel: channel)
    }
  }

  /// Sends a Task Management Function Request (RFC 7143 section 11.5.1), immediate, and
  /// marks the tasks it covers.
  private func sendTaskManagement(function: UInt8, ref: UInt32, lun: UInt16, refCmdSN: UInt32, channel: Channel) {
    let tag = allocateTag()
    managementTasks[tag] = ManagementTask(function: function, ref: ref, lun: lun, sentAt: .now())
    for (itt, entry) in inFlight where (function == 1 && itt == ref) || (function == 5 && entry.pending.command.lun == lun) {
      inFlight[itt]!.aborting = tag
    }
    var h = BasicHeaderSegment(opcode: .taskManagementRequest, immediate: true, flags: finalFlag | function)
    h.lun = LUNEncoding.encode(lun)
    h.initiatorTaskTag = tag
    h.word5 = ref  // Referenced Task Tag
    h.cmdSN = window.immediateCmdSN
    h.expStatSN = expStatSN
    h.word8 = refCmdSN  // RefCmdSN
    channel.writeAndFlush(ISCSIPDU(header: h), promise: nil)
  }

  private func handleTaskManagementResponse(_ h: BasicHeaderSegment) {
    guard let m = managementTasks.removeValue(forKey: h.initiatorTaskTag), let channel else { return }
    // Response 0 = function complete; for ABORT TASK 1 = task does not exist (RFC 7143
    // section 11.6.1). Either way the target no longer holds the tasks: send them again.
    let done = h.response == 0 || (m.function == 1 && h.response == 1)
    if done {
      let covered = inFlight.filter { $0.value.aborting == h.initiatorTaskTag }
        .sorted { SerialNumber($0.value.cmdSN) < SerialNumber($1.value.cmdSN) }
      for (itt, entry) in covered.reversed() {
        inFlight[itt] = nil
        commandsRetried += 1
        queue.prepend(entry.pending)
      }
      logger.notice(
        m.function == 1 ? "aborted a timed-out command; sending it again" : "LUN reset; sending its commands again",
        metadata: ["lun": "\(m.lun)", "commands": "\(covered.count)"])
    } else if m.function == 1 {
      logger.warning("target refused ABORT TASK (response \(h.response)); resetting the LUN")
      sendTaskManagement(function: 5, ref: reservedTag, lun: m.lun, refCmdSN: 0, channel: channel)
    } else {
      connectionFailed(
        ISCSIError(.timeout, "target refused LOGICAL UNIT RESET (response \(h.response)); reinstating the session"),
        channel: channel)
    }
  }

  // MARK: - Losing and regaining the connection

  /// A target that breaks the protocol on the same command this many times in a row gets
  /// no more chances for it: the command fails (EIO for the NBD client) instead of being
  /// sent again forever.
  public static let maxProtocolViolationsPerCommand = 3

  /// `culprit`: the task whose PDU broke the protocol, if one did. It is sent again like
  /// every other unfinished command, until `maxProtocolViolationsPerCommand`; with
  /// failFast it is handed back with `.protocolViolation` instead of `.pathDown`, so the
  /// owner can count the same way.
  fileprivate func connectionFailed(_ error: Error, channel: Channel, culprit: UInt32? = nil) {
    guard channel === self.channel else { return }
    if state == .loggingIn {
      failLogin(error)
      return
    }
    if let culprit, var entry = inFlight[culprit] {
      entry.pending.violations += 1
      if configuration.failFast {
        inFlight[culprit] = nil
        entry.pending.promise.fail(
          ISCSIError(.protocolViolation, "path to \(configuration.portal) lost: \(describe(error))"))
      } else if entry.pending.violations >= Self.maxProtocolViolationsPerCommand {
        inFlight[culprit] = nil
        logger.error(
          "giving up on a command after \(entry.pending.violations) protocol violations of the target: \(describe(error))")
        entry.pending.promise.fail(error)
      } else {
        inFlight[culprit] = entry
      }
    }
    lastError = describe(error)
    // Multipath logs the path failure itself, with the same reason.
    logger.log(level: configuration.failFast ? .info : .error, "iSCSI connection lost: \(describe(error))")
    self.channel = nil
    self.handler = nil
    if configuration.failFast, let provider = channel as? SocketOptionProvider {
      // Reset instead of a graceful close: whatever is still queued in the socket (writes
      // of this path) is discarded, not retransmitted to the target later.
      _ = provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).always { _ in channel.close(promise: nil) }
    } else {
      channel.close(promise: nil)
    }
    guard state == .fullFeature else { return }
    if configuration.failFast {
      handBackCommands(reason: describe(error))
    } else {
      beginRecovery()
    }
  }

  /// Multipath: the connection is gone; every unfinished command fails with `.pathDown`
  /// (the owner sends them elsewhere, fencing writes first), and the owner is told.
  private func handBackCommands(reason: String) {
    state = .recovering
    tick?.cancel()
    tick = nil
    pingITT = nil
    managementTasks = [:]
    let old = inFlight.values.sorted { SerialNumber($0.cmdSN) < SerialNumber($1.cmdSN) }
    inFlight = [:]
    let error = ISCSIError(.pathDown, "path to \(configuration.portal) lost: \(reason)")
    for entry in old { entry.pending.promise.fail(error) }
    while let p = queue.popFirst() { p.promise.fail(error) }
    finishText(.failure(error))
    let logoutWaiter = logoutPromise
    logoutPromise = nil
    logoutWaiter?.succeed(())
    onConnectionLost?(reason)
  }

  /// New keepalive and command timeouts (a reload), used from the next check on.
  public func updateTimeouts(keepaliveInterval: TimeAmount, keepaliveTimeout: TimeAmount, commandTimeout: TimeAmount) {
    eventLoop.execute { [self] in
      configuration.keepaliveInterval = keepaliveInterval
      configuration.keepaliveTimeout = keepaliveTimeout
      configuration.commandTimeout = commandTimeout
      if state == .fullFeature { startTicking() }
    }
  }

  /// Multipath: logs in again after a lost connection (same ISID, TSIH 0: the target
  /// ends whatever was left of the old session, RFC 7143 section 6.3.5). Succeeds at once
  /// when the session is logged in.
  public func reconnect() -> EventLoopFuture<Void> {
    eventLoop.flatSubmit { [self] in
      switch state {
      case .fullFeature:
        return eventLoop.makeSucceededVoidFuture()
      case .closing, .closed:
        return eventLoop.makeFailedFuture(ISCSIError(.sessionFailed, "the session is closed"))
      case .loggingIn:
        return eventLoop.makeFailedFuture(ISCSIError(.sessionFailed, "a login is already running"))
      case .idle, .recovering:
        let first = state == .idle && reinstatements == 0 && tsih == 0
        recoveryStarted = .now()
        return establish(portal: configuration.portal).map { [self] in
          guard !first else { return }
          reinstatements += 1
          logger.info(
            "session reinstated", metadata: ["after": "\(seconds(NIODeadline.now() - recoveryStarted)) s"])
        }.flatMapErrorThrowing { [self] error in
          if state == .loggingIn || state == .idle { state = .recovering }
          lastError = describe(error)
          throw error
        }
      }
    }
  }

  fileprivate func channelClosed(_ channel: Channel) {
    guard channel === self.channel else { return }
    if state == .loggingIn {
      failLogin(ISCSIError(.connectionClosed, "target closed the connection during login"))
      return
    }
    if state == .closing {
      self.channel = nil
      return
    }
    connectionFailed(ISCSIError(.connectionClosed, "target closed the connection"), channel: channel)
  }

  /// ERL 0 recovery: every command not completed goes back to the front of the queue (in
  /// CmdSN order), and a new login with the same ISID reinstates the session; the target
  /// then ends all tasks of the old one (RFC 7143 section 6.3.5), so nothing from the old
  /// connection can land after the retried commands.
  private func beginRecovery() {
    state = .recovering
    pingITT = nil
    managementTasks = [:]
    let old = inFlight.values.sorted { SerialNumber($0.cmdSN) < SerialNumber($1.cmdSN) }
    inFlight = [:]
    for entry in old.reversed() {
      var p = entry.pending
      if p.troubleSince == nil { p.troubleSince = .now() }
      queue.prepend(p)
    }
    for i in queue.indices where queue[i].troubleSince == nil { queue[i].troubleSince = .now() }
    commandsRetried += old.count
    recoveryStarted = .now()
    finishText(.failure(ISCSIError(.connectionClosed, "connection lost during a text exchange")))
    let logoutWaiter = logoutPromise
    logoutPromise = nil
    logoutWaiter?.succeed(())
    scheduleReconnect()
  }

  private func scheduleReconnect() {
    // Exponential backoff with jitter: 0, 0.25, 0.5, 1, 2, 4 s (capped), +-25 %.
    let base = recoveryAttempt == 0 ? 0 : min(4000, 125 << min(recoveryAttempt, 6))
    let jitter = base / 4 > 0 ? Int.random(in: -(base / 4)...(base / 4)) : 0
    recoveryAttempt += 1
    eventLoop.scheduleTask(in: .milliseconds(Int64(base + jitter))) { [self] in
      guard state == .recovering else { return }
      establish(portal: configuration.portal).whenComplete { [self] result in
        switch result {
        case .success:
          reinstatements += 1
          logger.notice(
            "session reinstated", metadata: ["after": "\(seconds(NIODeadline.now() - recoveryStarted)) s"])
        case .failure(let error):
          guard state == .recovering || state == .idle else { return }
          state = .recovering
          lastError = describe(error)
          logger.warning("reconnect failed: \(describe(error))")
          scheduleReconnect()
        }
      }
    }
  }

  // MARK: - Logout

  private func sendLogout(channel: Channel) {
    var h = BasicHeaderSegment(opcode: .logoutRequest, immediate: true, flags: finalFlag | 0)
    h.initiatorTaskTag = allocateTag()
    h.cid = configuration.login.cid
    h.cmdSN = window.immediateCmdSN
    h.expStatSN = expStatSN
    channel.writeAndFlush(ISCSIPDU(header: h), promise: nil)
  }

  /// Logs out (reason: close the session) and closes the connection. Commands still
  /// queued fail; in-flight ones get up to `timeout` to finish first.
  public func close(timeout: TimeAmount = .seconds(5)) -> EventLoopFuture<Void> {
    eventLoop.flatSubmit { [self] in
      let deadline = NIODeadline.now() + timeout
      return drain(until: deadline).flatMap { [self] in
        tick?.cancel()
        tick = nil
        let wasLoggedIn = state == .fullFeature
        state = .closing
        while let p = queue.popFirst() {
          p.promise.fail(ISCSIError(.sessionFailed, "the session is closing"))
        }
        guard wasLoggedIn, let channel else { return finishClose() }
        let promise = eventLoop.makePromise(of: Void.self)
        logoutPromise = promise
        sendLogout(channel: channel)
        let timer = eventLoop.scheduleTask(in: max(.milliseconds(100), deadline - .now())) {
          promise.succeed(())
        }
        return promise.futureResult.flatMap { [self] in
          timer.cancel()
          return finishClose()
        }
      }
    }
  }

  public func close(timeout: TimeAmount = .seconds(5)) async {
    try? await close(timeout: timeout).get()
  }

  private func drain(until deadline: NIODeadline) -> EventLoopFuture<Void> {
    if (inFlight.isEmpty && (queue.isEmpty || state != .fullFeature)) || NIODeadline.now() >= deadline {
      return eventLoop.makeSucceededVoidFuture()
    }
    return eventLoop.scheduleTask(in: .milliseconds(20)) {}.futureResult.flatMap { [self] in
      drain(until: deadline)
    }
  }

  private func finishClose() -> EventLoopFuture<Void> {
    state = .closed
    for c in abandoned { c.close(promise: nil) }
    abandoned = []
    for (_, entry) in inFlight {
      // Multipath: a path taken away by a reload closes with commands still out; they
      // go to another path (after fencing) rather than fail.
      entry.pending.promise.fail(
        ISCSIError(
          configuration.failFast ? .pathDown : .sessionFailed, "the session closed before the command completed"))
    }
    inFlight = [:]
    let old = channel
    channel = nil
    guard let old else { return eventLoop.makeSucceededVoidFuture() }
    return old.close().recover { _ in }
  }

  /// Multipath tests: gives up on the connection as a black hole would make us (a
  /// keepalive timeout), but leaves the TCP connection open, so the target still holds
  /// the session and its tasks. Closed with the session.
  public func abandonConnectionForTesting() {
    eventLoop.execute { [self] in
      guard let channel, state == .fullFeature, configuration.failFast else { return }
      abandoned.append(channel)
      self.channel = nil
      self.handler = nil
      lastError = "abandoned for testing"
      handBackCommands(reason: "abandoned for testing")
    }
  }
  private var abandoned: [Channel] = []

  /// Closes the TCP connection without logging out, as a cable pull would (for tests).
  public func dropConnectionForTesting() {
    eventLoop.execute { [self] in
      if let channel { connectionFailed(ISCSIError(.connectionClosed, "dropped for testing"), channel: channel) }
    }
  }
}

/// Delivers PDUs and connection events of one channel to its session.
private final class SessionInboundHandler: ChannelInboundHandler {
  typealias InboundIn = ISCSIPDU
  let session: ISCSISession

  init(session: ISCSISession) { self.session = session }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    session.receive(unwrapInboundIn(data), from: context.channel)
  }

  func errorCaught(context: ChannelHandlerContext, error: Error) {
    session.connectionFailed(error, channel: context.channel)
  }

  func channelInactive(context: ChannelHandlerContext) {
    session.channelClosed(context.channel)
  }
}

func seconds(_ t: TimeAmount) -> String {
  let ms = t.nanoseconds / 1_000_000
  return ms % 1000 == 0 ? "\(ms / 1000)" : "\(ms / 1000).\(ms % 1000 / 100)"
}

/// A short reason for a socket error: "connection refused", not NIO's nested dump.
func describe(_ error: Error) -> String {
  if let e = error as? NIOConnectionError, let first = e.connectionErrors.first {
    return describe(first.error)
  }
  if let e = error as? IOError { return String(cString: strerror(e.errnoCode)).lowercased() }
  if error is ChannelError, case ChannelError.connectTimeout = error as! ChannelError { return "connection timed out" }
  return "\(error)"
}


/// SO_BINDTODEVICE: the connection leaves through this interface only.
private func bindToDevice(_ channel: Channel, _ interface: String) -> EventLoopFuture<Void> {
  let bytes = Array(interface.utf8)
  guard !bytes.isEmpty, bytes.count < 16 else {
    return channel.eventLoop.makeFailedFuture(
      ISCSIError(.invalidArgument, "interface name '\(interface)' must be 1 to 15 characters"))
  }
  guard let provider = channel as? SocketOptionProvider else {
    return channel.eventLoop.makeFailedFuture(ISCSIError(.invalidArgument, "cannot bind this channel to a device"))
  }
  // IFNAMSIZ (16) bytes, NUL-padded: the kernel reads up to the first NUL.
  var name: (UInt64, UInt64) = (0, 0)
  withUnsafeMutableBytes(of: &name) { raw in
    for (i, b) in bytes.enumerated() { raw[i] = b }
  }
  return provider.unsafeSetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_BINDTODEVICE), value: name)
    .flatMapErrorThrowing { error in
      throw ISCSIError(.invalidArgument, "cannot bind to interface \(interface): \(describe(error))")
    }
}

/// True when the kernel reports the interface's link down (`operstate` "down" or
/// "lowerlayerdown"); false when it is up or cannot be read.
func interfaceIsDown(_ interface: String) -> Bool {
  guard !interface.contains("/"), let fd = Optional(open("/sys/class/net/\(interface)/operstate", O_RDONLY)), fd >= 0
  else { return false }
  defer { close(fd) }
  var buffer = [UInt8](repeating: 0, count: 32)
  let n = read(fd, &buffer, buffer.count)
  guard n > 0 else { return false }
  let state = String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
  return state == "down" || state == "lowerlayerdown"
}
