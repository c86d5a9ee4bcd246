import ISCSIProtocol
import Logging
import NBDProtocol
import NIOCore
import NIOSSL
import NIOTLS

/// One NBD connection of a volume: a socket export connection (fixed-newstyle handshake
/// first) or a kernel socketpair (transmission only). Requests run concurrently; each
/// reply goes back on this connection, READ data as the slice the target sent. A
/// protocol violation closes this connection only.
///
/// Flow control (`FlowLimits`): a request is admitted only while this connection and the
/// volume are under their bounds; otherwise it is held, the socket is no longer read, and
/// reading resumes when written replies give room back. A client that pipelines without
/// reading its replies therefore holds at most its own bounds of memory. When the client
/// goes, its requests still waiting for a path are cancelled.
final class NBDConnectionHandler: ChannelInboundHandler {
  typealias InboundIn = ByteBuffer
  typealias OutboundOut = ByteBuffer

  enum Phase {
    case handshake(NBDHandshakeStateMachine)
    case transmission
    case closing
  }

  let volume: Volume
  let logger: Logger
  let limits: FlowLimits
  let id: UInt64
  private var phase: Phase
  /// What the client negotiated (structured replies, `base:allocation`); the kernel: neither.
  private var transmission = NBDTransmissionOptions()
  private var decoder = NBDRequestDecoder(maxPayload: Volume.maximumPayload)
  private var cumulation = Cumulation()
  /// Admitted requests whose reply has not been written yet, and their bytes.
  private var inFlight = 0
  private var bytesInFlight = 0
  /// The bytes of an admitted write whose payload is still arriving: counted in
  /// `bytesInFlight` and the volume's budget from its header on, since they fill memory
  /// as they come (clients that send a write's header and hold back its last byte would
  /// otherwise hold memory no bound counts).
  private var arriving = 0
  private var readingPaused = false
  private var processing = false
  private var processAgain = false
  private var disconnectRequested = false
  private var handshakeTimer: Scheduled<Void>?
  private let handshakeTimeout: TimeAmount?
  /// TLS for an export that requires it (NBD_OPT_STARTTLS, then NIOSSL in front).
  private let tls: NIOSSLContext?

  init(
    volume: Volume, handshake: Bool, logger: Logger, handshakeTimeout: TimeAmount? = nil, tls: NIOSSLContext? = nil
  ) {
    self.volume = volume
    self.logger = logger
    self.handshakeTimeout = handshake ? handshakeTimeout : nil
    self.limits = FlowLimits(
      maxRequestsPerConnection: volume.options.maxRequestsPerConnection,
      maxBytesPerConnection: volume.options.maxBytesPerConnection,
      maxBytesInFlight: volume.options.maxBytesInFlight)
    self.id = volume.budget.newConnectionID()
    self.tls = tls
    self.phase =
      handshake
      ? .handshake(NBDHandshakeStateMachine(exports: [volume.export], tls: tls == nil ? .none : .required))
      : .transmission
  }

  func channelActive(context: ChannelHandlerContext) {
    if case .handshake(let machine) = phase {
      context.writeAndFlush(wrapOutboundOut(machine.start(allocator: context.channel.allocator)), promise: nil)
      if let handshakeTimeout {
        handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: handshakeTimeout) { [self] in
          guard case .handshake = phase else { return }
          volume.flow.handshakeTimeouts += 1
          volume.logClientProblem(
            .info, "NBD client did not finish the handshake in time; closing",
            ["seconds": "\(handshakeTimeout.nanoseconds / 1_000_000_000)"])
          phase = .closing
          context.close(promise: nil)
        }
      }
    }
    context.fireChannelActive()
  }

  func channelInactive(context: ChannelHandlerContext) {
    phase = .closing
    handshakeTimer?.cancel()
    handshakeTimer = nil
    cumulation.removeAll()
    if arriving > 0 {
      bytesInFlight -= arriving
      volume.budget.release(arriving)
      arriving = 0
    }
    volume.budget.forget(id)
    volume.cancelQueued(owner: id)
    context.fireChannelInactive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    // After NBD_CMD_DISC (or a drain) nothing more is taken in.
    guard !disconnectRequested else { return }
    cumulation.append(unwrapInboundIn(data), messageLength: { writeRequestLength($0) })
    process(context: context)
  }

  /// The length of the write request (header and payload) at the buffer's reader index,
  /// once its header is in; nil for any other request, and during the handshake.
  private func writeRequestLength(_ buffer: ByteBuffer) -> Int? {
    guard case .transmission = phase, buffer.readableBytes >= NBDLimits.requestHeaderSize,
      buffer.getInteger(at: buffer.readerIndex + 6, as: UInt16.self) == NBDCommand.write.rawValue,
      let length = buffer.getInteger(at: buffer.readerIndex + 24, as: UInt32.self)
    else { return nil }
    return NBDLimits.requestHeaderSize + Int(length)
  }

  /// Runs `step` until nothing more can be done. Re-entrant calls (a request that fails at
  /// once completes its reply write synchronously, which comes back here) only ask the
  /// outer call to go round again, so the stack never grows with the input.
  private func process(context: ChannelHandlerContext) {
    if processing {
      processAgain = true
      return
    }
    processing = true
    defer { processing = false }
    repeat {
      processAgain = false
      step(context: context)
    } while processAgain
  }

  private func step(context: ChannelHandlerContext) {
    // A connection that is closing sends nothing more towards the target.
    guard context.channel.isActive, cumulation.bytes != nil else { return }
    if case .handshake(var machine) = phase {
      let actions: [NBDHandshakeAction]
      do {
        actions = try machine.receive(&cumulation.bytes!)
      } catch {
        return fail(context: context, reason: "\(error)")
      }
      phase = .handshake(machine)
      for action in actions {
        switch action {
        case .send(let bytes):
          context.write(wrapOutboundOut(bytes), promise: nil)
        case .enterTransmission:
          transmission = machine.transmission
          phase = .transmission
          handshakeTimer?.cancel()
          handshakeTimer = nil
        case .close(let reason):
          context.flush()
          volume.logClientProblem(.info, "NBD client left during the handshake", ["reason": "\(reason)"])
          phase = .closing
          context.close(promise: nil)
          return
        case .startTLS:
          // The ACK goes out in plaintext; everything after it through TLS.
          context.flush()
          guard let tls else { return fail(context: context, reason: "STARTTLS without a TLS context") }
          do {
            try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls), position: .first)
          } catch {
            return fail(context: context, reason: "cannot start TLS: \(error)")
          }
          return
        }
      }
      context.flush()
      guard case .transmission = phase else { return }
    }
    guard case .transmission = phase else { return }
    while !disconnectRequested, let c = cumulation.bytes, c.readableBytes >= NBDLimits.requestHeaderSize {
      // Admission is decided on the request's header, before its payload is read in: a
      // write that must wait does not wait in memory.
      let type = NBDCommand(rawValue: c.getInteger(at: c.readerIndex + 6, as: UInt16.self)!)
      let length = c.getInteger(at: c.readerIndex + 24, as: UInt32.self)!
      let bytes = type == .read || type == .write ? Int(length) : 0
      let admitted = arriving > 0  // this write's header was admitted, its payload is coming
      if !admitted && type != .disconnect
        && !limits.admits(
          bytes: bytes, connectionRequests: inFlight, connectionBytes: bytesInFlight,
          volumeBytes: volume.budget.bytes)
      {
        pauseReading(context: context)
        // Room comes back when one of ours is written, or when any connection's is.
        volume.budget.wait(id) { [weak self] in self?.process(context: context) }
        return
      }
      let event: NBDRequestEvent
      do {
        guard let next = try decoder.next(from: &cumulation.bytes!) else {
          // A write whose payload is still coming (the decoder has checked its header): its
          // bytes count from now on, and it gets room for the whole request, so the payload
          // keeps a buffer of its own size instead of one doubled as bytes come.
          if type == .write, !admitted, bytes > 0 {
            arriving = bytes
            bytesInFlight += bytes
            volume.budget.take(bytes)
            cumulation.bytes.reserveForMessage(NBDLimits.requestHeaderSize + bytes)
          }
          break
        }
        event = next
      } catch {
        return fail(context: context, reason: "\(error)")
      }
      let counted = arriving
      arriving = 0
      if event.request.type == .disconnect {
        // NBD_CMD_DISC: no reply; finish what is in flight, then close.
        disconnectRequested = true
        cumulation.removeAll()
        closeIfIdle(context: context)
        return
      }
      run(event, bytes: bytes, counted: counted, context: context)
    }
    if !disconnectRequested, cumulation.takeHeld(messageLength: { writeRequestLength($0) }) { processAgain = true }
    resumeReading(context: context)
  }

  private func pauseReading(context: ChannelHandlerContext) {
    guard !readingPaused else { return }
    readingPaused = true
    volume.flow.paused += 1
    context.channel.setOption(.autoRead, value: false).whenComplete { _ in }
  }

  private func resumeReading(context: ChannelHandlerContext) {
    guard readingPaused, case .transmission = phase else { return }
    readingPaused = false
    context.channel.setOption(.autoRead, value: true).whenComplete { _ in }
    context.read()
  }

  /// `counted`: bytes already counted while the payload arrived.
  private func run(_ event: NBDRequestEvent, bytes: Int, counted: Int, context: ChannelHandlerContext) {
    inFlight += 1
    bytesInFlight += bytes - counted
    volume.budget.take(bytes - counted)
    let request = event.request
    let handle = request.handle
    let options = transmission
    let complete = { [self] (result: Result<[ByteBuffer], NBDErrno>) in
      guard context.channel.isActive else { return released(1, bytes, context: context) }
      var out = replies ?? context.channel.allocator.buffer(capacity: NBDConnectionHandler.repliesCapacity)
      replies = nil
      switch result {
      case .success(let data) where request.type == .blockStatus:
        NBDReplyEncoder.writeBlockStatus(
          handle: handle, context: options.baseAllocation ?? 0, descriptors: data.first ?? ByteBuffer(), into: &out)
        replies = out
      case .success(let data):
        if options.structuredReplies && request.type == .read {
          // A structured client gets its data in one OFFSET_DATA chunk (a simple reply to a
          // read is not allowed once structured replies are on).
          NBDReplyEncoder.writeReadChunk(handle: handle, offset: request.offset, dataLength: Int(request.length), into: &out)
        } else {
          NBDReplyEncoder.writeSimpleReply(handle: handle, error: nil, into: &out)
        }
        if data.isEmpty {
          replies = out
        } else {
          // A read's data goes out as the target's Data-In segments, not copied (a copy
          // costs about what a write of its own does, and more as the batch grows).
          context.write(wrapOutboundOut(out), promise: nil)
          for segment in data {
            context.write(wrapOutboundOut(segment), promise: nil)
          }
        }
      case .failure(let errno):
        if options.structuredReplies && (request.type == .read || request.type == .blockStatus) {
          NBDReplyEncoder.writeErrorChunk(handle: handle, error: errno, into: &out)
        } else {
          NBDReplyEncoder.writeSimpleReply(handle: handle, error: errno, into: &out)
        }
        replies = out
      }
      // The reply's memory is the socket's once written; a client that does not read
      // keeps it here, and so keeps its room taken. Released per flush batch (below).
      batchReplies += 1
      batchBytes += bytes
      scheduleFlush(context: context)
    }
    if request.type == .blockStatus && options.baseAllocation == nil {
      // BLOCK_STATUS without `base:allocation` selected ("Servers SHOULD reply ... EINVAL").
      return complete(.failure(.einval))
    }
    volume.handle(request, payload: event.payload, owner: id, reply: complete)
  }

  /// Reply headers completed since the last flush (of writes, flushes, errors; a read's
  /// header goes out just before its data): one write of the channel for them.
  private var replies: ByteBuffer?
  static let repliesCapacity = 1024

  /// Replies completed while the event loop handles one round of socket events (several
  /// Data-In read together) go out in one write system call.
  /// One promise per batch, on the write of `replies` (the batch's last bytes): writes
  /// complete in order, so when it completes every reply of the batch has been written.
  private func scheduleFlush(context: ChannelHandlerContext) {
    guard !flushScheduled else { return }
    flushScheduled = true
    context.eventLoop.assumeIsolated().execute { [self] in
      flushScheduled = false
      let (count, bytes) = (batchReplies, batchBytes)
      batchReplies = 0
      batchBytes = 0
      guard count > 0 else { return }
      let written = context.eventLoop.makePromise(of: Void.self)
      context.write(wrapOutboundOut(replies ?? ByteBuffer()), promise: written)
      replies = nil
      context.flush()
      written.futureResult.assumeIsolated().whenComplete { [self] _ in released(count, bytes, context: context) }
    }
  }
  private var flushScheduled = false
  private var batchReplies = 0
  private var batchBytes = 0

  private func released(_ replies: Int, _ bytes: Int, context: ChannelHandlerContext) {
    inFlight -= replies
    bytesInFlight -= bytes
    volume.budget.release(bytes)
    if disconnectRequested {
      closeIfIdle(context: context)
    } else if readingPaused {
      process(context: context)
    }
  }

  private func closeIfIdle(context: ChannelHandlerContext) {
    switch phase {
    case .handshake:
      phase = .closing
      context.close(promise: nil)
    case .transmission where inFlight == 0:
      phase = .closing
      context.close(promise: nil)
    default:
      break
    }
  }

  /// Sent by `NBDExportServer.stop()`: take no new requests, close once the ones in flight
  /// have been answered.
  struct Drain {}

  private func fail(context: ChannelHandlerContext, reason: String) {
    volume.logClientProblem(.warning, "NBD protocol violation; closing the connection", ["reason": "\(reason)"])
    phase = .closing
    cumulation.removeAll()
    context.close(promise: nil)
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if event is Drain {
      disconnectRequested = true
      cumulation.removeAll()
      closeIfIdle(context: context)
      return
    }
    if case .handshakeCompleted = event as? TLSUserEvent, case .handshake(var machine) = phase {
      machine.tlsStarted()
      phase = .handshake(machine)
      process(context: context)
    }
    context.fireUserInboundEventTriggered(event)
  }

  func errorCaught(context: ChannelHandlerContext, error: Error) {
    volume.logClientProblem(.info, "NBD connection error", ["error": "\(error)"])
    context.close(promise: nil)
  }
}
