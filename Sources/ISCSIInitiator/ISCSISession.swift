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
/// The rules live in `SessionStateMachine` (full-feature phase) and `LoginStateMachine`;
/// this class only carries out their actions on a channel. All state lives on one event
/// loop; the public methods hop there.
public final class ISCSISession: @unchecked Sendable {
  // `@unchecked Sendable`: the object is handed between threads (futures, tasks), but
  // every mutable property is confined to `eventLoop`: the public methods hop there, and
  // the properties below check (in debug builds) that they are read there. From another
  // thread use `snapshot()`.
  public let eventLoop: EventLoop
  private var _configuration: SessionConfiguration
  var logger: Logger

  public var configuration: SessionConfiguration {
    eventLoop.assertInEventLoop()
    return _configuration
  }

  public typealias State = SessionStateMachine.State
  public var state: State {
    eventLoop.assertInEventLoop()
    return machine.state
  }
  /// The parameters of the current (or last) login.
  public var parameters: NegotiatedParameters? {
    eventLoop.assertInEventLoop()
    return _parameters
  }
  private var _parameters: NegotiatedParameters?
  /// The portal the current connection reached (after redirects).
  public var connectedPortal: Portal? {
    eventLoop.assertInEventLoop()
    return _connectedPortal
  }
  private var _connectedPortal: Portal?
  public var tsih: UInt16 {
    eventLoop.assertInEventLoop()
    return _tsih
  }
  private var _tsih: UInt16 = 0
  /// Counters, for `info` and tests.
  public var reinstatements: Int {
    eventLoop.assertInEventLoop()
    return machine.reinstatements
  }
  public var commandsRetried: Int {
    eventLoop.assertInEventLoop()
    return machine.commandsRetried
  }
  /// The command window of the connection (nil while there is none).
  public var commandWindow: (expCmdSN: UInt32, maxCmdSN: UInt32, available: Int)? {
    eventLoop.assertInEventLoop()
    return machine.commandWindow
  }
  /// Commands sent and not answered, and commands waiting for the window or a login.
  public var queueDepth: (inFlight: Int, queued: Int) {
    eventLoop.assertInEventLoop()
    return (machine.inFlightCount, machine.queuedCount)
  }
  /// Why the last connection ended or the last reconnect failed: named when queued
  /// commands give up, so the user sees the cause and not only the timeout.
  public var lastError: String? {
    eventLoop.assertInEventLoop()
    return machine.lastError
  }

  /// What the properties above say, read on the event loop: for callers elsewhere.
  public struct Snapshot: Sendable {
    public var state: State
    public var parameters: NegotiatedParameters?
    public var connectedPortal: Portal?
    public var tsih: UInt16
    public var reinstatements: Int
    public var commandsRetried: Int
    public var lastError: String?
  }

  public func snapshot() -> EventLoopFuture<Snapshot> {
    eventLoop.submit { [self] in
      Snapshot(
        state: machine.state, parameters: _parameters, connectedPortal: _connectedPortal, tsih: _tsih,
        reinstatements: machine.reinstatements, commandsRetried: machine.commandsRetried, lastError: machine.lastError)
    }
  }

  /// Multipath: called on the event loop when the connection is lost (with the reason);
  /// the session's unfinished commands have failed with `ISCSIError.pathDown` by then.
  public var onConnectionLost: ((String) -> Void)?
  /// Called on the event loop when the target announces something about the LU (a unit
  /// attention, an ALUA NOT READY, an asynchronous event's sense); the command that
  /// carried it is retried or ended as usual meanwhile.
  public var onAnnouncement: ((SenseData) -> Void)?

  private var machine: SessionStateMachine
  /// Actions to carry out; events raised while they run (a completion callback submitting
  /// the next command) append here and are run by the same loop, in order.
  private var actions: [SessionStateMachine.Action] = []
  private var running = false

  private var channel: Channel?
  private var handler: PDUChannelHandler?
  private var login: LoginStateMachine?
  private var loginPromise: EventLoopPromise<Void>?
  private var loginTimer: Scheduled<Void>?
  private var redirects = 0
  private var tick: RepeatedTask?
  private var checkingLink = false
  private var textPromise: EventLoopPromise<[TextKeyValue]>?
  /// The Text Request/Response exchange in progress (continuations included).
  private var textExchange: TextExchange?
  private var logoutPromise: EventLoopPromise<Void>?

  init(configuration: SessionConfiguration, eventLoop: EventLoop, logger: Logger) {
    self._configuration = configuration
    self.eventLoop = eventLoop
    self.logger = logger
    self.logger[metadataKey: "portal"] = "\(configuration.portal)"
    self.machine = SessionStateMachine(
      timeouts: configuration.timeouts, portal: "\(configuration.portal)", now: eventLoop.now,
      seed: UInt64.random(in: 0...UInt64.max))
    actions.reserveCapacity(16)
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

  /// Tests: a session over a channel the test made (an `EmbeddedChannel` wired to a
  /// target played by the test), logging in at once. Time is the channel's event loop's
  /// (`EventLoop.now`), so an `EmbeddedEventLoop` drives keepalive and command timeouts.
  /// Reconnecting after a loss would open a real connection: use failFast, or cases that
  /// keep the connection.
  static func loggingIn(
    over channel: Channel, configuration: SessionConfiguration, logger: Logger = Logger(label: "lunbridge.iscsi")
  ) throws -> (session: ISCSISession, login: EventLoopFuture<Void>) {
    let session = ISCSISession(configuration: configuration, eventLoop: channel.eventLoop, logger: logger)
    let handler = PDUChannelHandler()
    handler.session = session
    try channel.pipeline.syncOperations.addHandler(handler)
    try channel.pipeline.syncOperations.addHandler(SessionInboundHandler(session: session))
    let promise = channel.eventLoop.makePromise(of: Void.self)
    session.loginPromise = promise
    session.channel = channel
    session.handler = handler
    session._connectedPortal = configuration.portal
    let (cmdSN, itt) = session.machine.loginStarting()
    session.startLogin(on: channel, cmdSN: cmdSN, itt: itt)
    return (session, promise.futureResult)
  }

  // MARK: - Carrying out the state machine's actions

  /// Feeds one event to the machine and runs the actions it returns.
  @inline(__always)
  private func perform(_ event: (inout SessionStateMachine, inout [SessionStateMachine.Action]) -> Void) {
    event(&machine, &actions)
    guard !running else { return }  // the loop below is already running them
    running = true
    var i = 0
    while i < actions.count {
      // Moved out, not copied: no retain of the PDU's buffers or the command's closure.
      var action = SessionStateMachine.Action.flush
      swap(&action, &actions[i])
      i += 1
      run(action)
    }
    actions.removeAll(keepingCapacity: true)
    running = false
  }

  private func run(_ action: SessionStateMachine.Action) {
    switch action {
    case .write(let pdu):
      handler?.send(pdu)
    case .flush:
      scheduleFlush()
    case .succeed(let command, let completion):
      command.completion(.success(completion))
    case .fail(let command, let error):
      command.completion(.failure(error))
    case .retryLater(let command, let delay):
      eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in perform { $0.retryDue(command, into: &$1) } }
    case .startTicking(let period):
      tick?.cancel()
      tick = eventLoop.scheduleRepeatedTask(initialDelay: period, delay: period) { [weak self] _ in
        self?.onTick()
      }
    case .stopTicking:
      tick?.cancel()
      tick = nil
    case .closeConnection(let reset):
      guard let old = channel else { return }
      channel = nil
      handler = nil
      if reset, let provider = old as? SocketOptionProvider {
        // Reset instead of a graceful close: whatever is still queued in the socket (writes
        // of this path) is discarded, not retransmitted to the target later.
        _ = provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)).always { _ in old.close(promise: nil) }
      } else {
        old.close(promise: nil)
      }
    case .reconnect(let delay):
      eventLoop.scheduleTask(in: delay) { [self] in
        guard state == .recovering else { return }
        _ = establish(portal: configuration.portal)
      }
    case .pathLost(let reason):
      onConnectionLost?(reason)
    case .textResponse(let pdu):
      handleTextResponse(pdu)
    case .logoutDone:
      let promise = logoutPromise
      logoutPromise = nil
      promise?.succeed(())
    case .failExchanges(let error):
      finishText(.failure(error))
    case .announced(let sense):
      onAnnouncement?(sense)
    case .log(let level, let message):
      switch level {
      case .debug: logger.debug("\(message)")
      case .info: logger.info("\(message)")
      case .notice: logger.notice("\(message)")
      case .warning: logger.warning("\(message)")
      case .error: logger.error("\(message)")
      }
    }
  }

  /// Flushes once the event loop has handled every socket event of this round: commands
  /// submitted by several NBD requests read together leave in one write system call
  /// instead of one each.
  private func scheduleFlush() {
    guard !flushScheduled else { return }
    flushScheduled = true
    eventLoop.execute { [self] in
      flushScheduled = false
      handler?.flush()
    }
  }
  private var flushScheduled = false

  private func onTick() {
    let now = eventLoop.now
    perform { $0.tick(now: now, into: &$1) }
    // A path bound to a NIC whose link went down: no reset will come and the keepalive
    // would take seconds to notice; the kernel already knows. The sysfs read runs off the
    // event loop.
    guard configuration.failFast, let interface = configuration.interface, state == .fullFeature, !checkingLink,
      let channel
    else { return }
    checkingLink = true
    NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) { interfaceIsDown(interface) }.whenComplete {
      [self] result in
      checkingLink = false
      guard case .success(true) = result, channel === self.channel else { return }
      connectionFailed(ISCSIError(.connectionClosed, "link of interface \(interface) is down"), channel: channel)
    }
  }

  // MARK: - Connecting and logging in

  /// One connection attempt with login, following redirects.
  private func establish(portal: Portal) -> EventLoopFuture<Void> {
    eventLoop.assertInEventLoop()
    redirects = 0
    let promise = eventLoop.makePromise(of: Void.self)
    loginTimer = eventLoop.scheduleTask(in: configuration.loginTimeout) { [self] in
      failLogin(ISCSIError(.unreachable, "login to \(portal) timed out after \(seconds(configuration.loginTimeout)) s"))
    }
    loginPromise = promise
    connectAndLogin(portal)
    return promise.futureResult
  }

  private func connectAndLogin(_ portal: Portal) {
    let (cmdSN, itt) = machine.loginStarting()
    let handler = PDUChannelHandler()
    handler.session = self
    // The channel is created on this session's event loop (the bootstrap's group), so the
    // handler made here may be used there.
    let boundHandler = NIOLoopBound(handler, eventLoop: eventLoop)
    let interface = configuration.interface
    var bootstrap = ClientBootstrap(group: eventLoop)
      .connectTimeout(configuration.loginTimeout)
      .channelOption(.tcpOption(.tcp_nodelay), value: 1)
      .channelInitializer { [self] channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(boundHandler.value)
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
    bootstrap.connect(host: portal.host, port: portal.port).hop(to: eventLoop).assumeIsolated().whenComplete {
      [self] result in
      switch result {
      case .failure(let error):
        failLogin(ISCSIError(.unreachable, "cannot connect to portal \(portal): \(describe(error))"))
      case .success(let channel):
        guard loginPromise != nil else {
          channel.close(promise: nil)
          return
        }
        self.channel = channel
        self.handler = boundHandler.value
        self._connectedPortal = portal
        startLogin(on: channel, cmdSN: cmdSN, itt: itt)
      }
    }
  }

  private func startLogin(on channel: Channel, cmdSN: UInt32, itt: UInt32) {
    var loginConfiguration = configuration.login
    loginConfiguration.tsih = 0  // ERL 0: a new login reinstates the session by ISID
    var machine = LoginStateMachine(configuration: loginConfiguration, initialCmdSN: cmdSN, itt: itt)
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
    _parameters = negotiated
    _tsih = completion.tsih
    handler?.apply(
      FramingParameters(
        headerDigest: negotiated.headerDigest, dataDigest: negotiated.dataDigest,
        maxRecvDataSegmentLength: negotiated.maxRecvDataSegmentLength,
        maxSendDataSegmentLength: negotiated.maxSendDataSegmentLength))
    logger.info(
      "logged in",
      metadata: [
        "target": "\(configuration.login.targetName ?? "discovery")", "tsih": "\(_tsih)",
        "headerDigest": "\(negotiated.headerDigest)", "dataDigest": "\(negotiated.dataDigest)",
      ])
    let promise = loginPromise
    loginPromise = nil
    let now = eventLoop.now
    perform { $0.loggedIn(negotiated, completion, now: now, into: &$1) }
    promise?.succeed(())
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
    let now = eventLoop.now
    perform { $0.loginFailed(reason: describe(error), now: now, into: &$1) }
    promise.fail(error)
  }

  // MARK: - Running commands

  /// Runs one SCSI command. UNIT ATTENTION, BUSY and TASK SET FULL are retried; a lost
  /// connection reinstates the session and sends the command again; CHECK CONDITION
  /// with other sense is returned to the caller in the completion.
  public func execute(_ command: SCSICommand) -> EventLoopFuture<SCSICompletion> {
    let promise = eventLoop.makePromise(of: SCSICompletion.self)
    let completion: @Sendable (Result<SCSICompletion, Error>) -> Void = { promise.completeWith($0) }
    if eventLoop.inEventLoop {
      perform { $0.submit(command, completion: completion, into: &$1) }
    } else {
      eventLoop.execute { self.perform { $0.submit(command, completion: completion, into: &$1) } }
    }
    return promise.futureResult
  }

  /// Runs one SCSI command as `execute(_:)` does, without a future: `completion` is
  /// called on the event loop. Call on the event loop (the I/O path).
  public func execute(_ command: SCSICommand, completion: @escaping SessionStateMachine.Completion) {
    eventLoop.assertInEventLoop()
    perform { $0.submit(command, completion: completion, into: &$1) }
  }

  public func execute(_ command: SCSICommand) async throws -> SCSICompletion {
    try await execute(command).get()
  }

  // MARK: - Inbound PDUs

  func receive(_ pdu: ISCSIPDU, from channel: Channel) {
    guard channel === self.channel else { return }  // a late PDU from a connection we left
    if state == .loggingIn {
      guard pdu.opcode == .loginResponse else {
        connectionFailed(
          ISCSIError(.protocolViolation, "target sent a \(pdu.opcode) during login"), channel: channel)
        return
      }
      handleLoginPDU(pdu)
      return
    }
    let allocator = channel.allocator
    perform { $0.receive(pdu, allocator: allocator, into: &$1) }
  }

  private func handleTextResponse(_ pdu: ISCSIPDU) {
    guard textPromise != nil, var exchange = textExchange, pdu.header.initiatorTaskTag == exchange.initiatorTaskTag,
      let channel
    else { return }
    do {
      switch try exchange.receive(pdu, nextCmdSN: machine.immediateCmdSN, expStatSN: machine.expStatSN, immediate: true)
      {
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
        let itt = machine.allocateTag()
        let request = try TextRequestBuilder.request(
          keys: keys, itt: itt, cmdSN: machine.immediateCmdSN, expStatSN: machine.expStatSN, immediate: true)
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

  // MARK: - Losing and regaining the connection

  /// A target that breaks the protocol on the same command this many times in a row gets
  /// no more chances for it: the command fails (EIO for the NBD client) instead of being
  /// sent again forever.
  public static let maxProtocolViolationsPerCommand = SessionStateMachine.maxProtocolViolationsPerCommand

  /// `culprit`: the task whose PDU broke the protocol, if one did (see
  /// `SessionStateMachine.connectionLost`).
  fileprivate func connectionFailed(_ error: Error, channel: Channel, culprit: UInt32? = nil) {
    guard channel === self.channel else { return }
    if state == .loggingIn {
      // A socket error (a reset) in plain words with the portal, not NIO's system call.
      let portal = _connectedPortal.map { "\($0)" } ?? "the portal"
      failLogin(
        error as? ISCSIError
          ?? ISCSIError(.unreachable, "connection to \(portal) lost during login: \(describe(error))"))
      return
    }
    let code = (error as? ISCSIError)?.code ?? .connectionClosed
    let now = eventLoop.now
    perform {
      $0.connectionLost(code: code, reason: describe(error), culprit: culprit, now: now, into: &$1)
    }
    // Not in the full-feature phase (closing): the machine has nothing to do; let go of it.
    if self.channel === channel {
      self.channel = nil
      self.handler = nil
      channel.close(promise: nil)
    }
  }

  /// New keepalive and command timeouts (a reload), used from the next check on.
  public func updateTimeouts(keepaliveInterval: TimeAmount, keepaliveTimeout: TimeAmount, commandTimeout: TimeAmount) {
    eventLoop.execute { [self] in
      _configuration.keepaliveInterval = keepaliveInterval
      _configuration.keepaliveTimeout = keepaliveTimeout
      _configuration.commandTimeout = commandTimeout
      machine.timeouts = _configuration.timeouts
      if state == .fullFeature { run(.startTicking(machine.timeouts.tickPeriod)) }
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
        machine.reconnectRequested(now: eventLoop.now)
        return establish(portal: configuration.portal)
      }
    }
  }

  fileprivate func channelClosed(_ channel: Channel) {
    guard channel === self.channel else { return }
    if state == .loggingIn {
      if login?.awaitingAnswerToAuthMethodNone == true {
        // Our first request offered AuthMethod=None and the target hung up on it.
        var error = LoginStateMachine.chapRequired
        error.message += " (the target closed the connection when offered AuthMethod=None)"
        failLogin(error)
      } else {
        failLogin(ISCSIError(.connectionClosed, "target closed the connection during login"))
      }
      return
    }
    if state == .closing {
      self.channel = nil
      return
    }
    connectionFailed(ISCSIError(.connectionClosed, "target closed the connection"), channel: channel)
  }

  // MARK: - Logout

  /// Logs out (reason: close the session) and closes the connection. Commands still
  /// queued fail; in-flight ones get up to `timeout` to finish first.
  public func close(timeout: TimeAmount = .seconds(5)) -> EventLoopFuture<Void> {
    eventLoop.flatSubmit { [self] in
      let deadline = eventLoop.now + timeout
      return drain(until: deadline).flatMap { [self] in
        var loggingOut = false
        perform { loggingOut = $0.close(into: &$1) }
        guard loggingOut, channel != nil else { return finishClose() }
        let promise = eventLoop.makePromise(of: Void.self)
        if let waiting = logoutPromise { promise.futureResult.cascade(to: waiting) }
        logoutPromise = promise
        let timer = eventLoop.scheduleTask(in: max(.milliseconds(100), deadline - eventLoop.now)) {
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
    if machine.isIdle || eventLoop.now >= deadline {
      return eventLoop.makeSucceededVoidFuture()
    }
    return eventLoop.scheduleTask(in: .milliseconds(20)) {}.futureResult.flatMap { [self] in
      drain(until: deadline)
    }
  }

  private func finishClose() -> EventLoopFuture<Void> {
    loginTimer?.cancel()
    loginTimer = nil
    tick?.cancel()
    tick = nil
    for c in abandoned { c.close(promise: nil) }
    abandoned = []
    perform { $0.closed(into: &$1) }
    if let promise = loginPromise {
      loginPromise = nil
      promise.fail(ISCSIError(.sessionFailed, "the session closed during login"))
    }
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
      let now = eventLoop.now
      perform {
        $0.connectionLost(reason: "abandoned for testing", now: now, closeConnection: false, into: &$1)
      }
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

extension SessionConfiguration {
  /// The state machine's share of the settings.
  var timeouts: SessionTimeouts {
    var t = SessionTimeouts()
    t.keepaliveInterval = keepaliveInterval
    t.keepaliveTimeout = keepaliveTimeout
    t.commandTimeout = commandTimeout
    t.recoveryTimeout = recoveryTimeout
    t.maxRetries = maxRetries
    t.failFast = failFast
    return t
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

/// A short reason for a socket error: "connection refused", not NIO's nested dump.
func describe(_ error: Error) -> String {
  plainDescription(of: error)
}

/// An error of the system or of SwiftNIO in plain words, as a person reads them after
/// "cannot connect to ...: ": "connection reset by peer", "unknown host 'x'", "address
/// already in use"; no system call signature or errno dump. Other errors as they describe
/// themselves.
public func plainDescription(of error: Error) -> String {
  if let e = error as? NIOConnectionError {
    if let first = e.connectionErrors.first { return plainDescription(of: first.error) }
    if e.dnsAError != nil || e.dnsAAAAError != nil { return "unknown host '\(e.host)'" }
    return "cannot connect to \(e.host):\(e.port)"
  }
  if let e = error as? IOError { return String(cString: strerror(e.errnoCode)).lowercased() }
  if let e = error as? SocketAddressError.UnknownHost { return "unknown host '\(e.host)'" }
  if let e = error as? SocketAddressError {
    switch e {
    case .unixDomainSocketPathTooLong: return "Unix socket path too long"
    case .failedToParseIPString(let text): return "'\(text)' is not an IP address"
    default: return "unknown host or unsupported address"
    }
  }
  if let e = error as? ChannelError {
    switch e {
    case .connectTimeout: return "connection timed out"
    case .ioOnClosedChannel, .alreadyClosed, .eof, .outputClosed, .inputClosed: return "connection closed"
    default: return "\(e)"
    }
  }
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
  return provider.unsafeSetSocketOption(
    level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_BINDTODEVICE), value: name
  )
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
  let state = String(decoding: buffer[0..<n], as: UTF8.self).trimmingWhitespace()
  return state == "down" || state == "lowerlayerdown"
}
