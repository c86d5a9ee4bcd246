import ISCSIProtocol
import Logging
import NBDProtocol
import NIOCore

/// One NBD connection of a volume: a socket export connection (fixed-newstyle handshake
/// first) or a kernel socketpair (transmission only). Requests run concurrently; each
/// reply goes back on this connection, READ data as the slice the target sent. A
/// protocol violation closes this connection only.
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
  private var phase: Phase
  private var decoder = NBDRequestDecoder(maxPayload: Volume.maximumPayload)
  private var cumulation: ByteBuffer?
  private var inFlight = 0
  private var disconnectRequested = false
  private let onClose: (() -> Void)?

  init(volume: Volume, handshake: Bool, logger: Logger, onClose: (() -> Void)? = nil) {
    self.volume = volume
    self.logger = logger
    self.onClose = onClose
    self.phase = handshake ? .handshake(NBDHandshakeStateMachine(exports: [volume.export])) : .transmission
  }

  func channelActive(context: ChannelHandlerContext) {
    if case .handshake(let machine) = phase {
      context.writeAndFlush(wrapOutboundOut(machine.start(allocator: context.channel.allocator)), promise: nil)
    }
    context.fireChannelActive()
  }

  func channelInactive(context: ChannelHandlerContext) {
    phase = .closing
    onClose?()
    context.fireChannelInactive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let incoming = unwrapInboundIn(data)
    cumulation.cumulate(incoming)
    process(context: context)
    if let c = cumulation, c.readableBytes == 0 { cumulation = nil }
  }

  private func process(context: ChannelHandlerContext) {
    if case .handshake(var machine) = phase {
      let actions: [NBDHandshakeAction]
      do {
        actions = try machine.receive(&cumulation!)
      } catch {
        return fail(context: context, reason: "\(error)")
      }
      phase = .handshake(machine)
      for action in actions {
        switch action {
        case .send(let bytes):
          context.write(wrapOutboundOut(bytes), promise: nil)
        case .enterTransmission:
          phase = .transmission
        case .close(let reason):
          context.flush()
          logger.info("NBD client left during the handshake", metadata: ["reason": "\(reason)"])
          phase = .closing
          context.close(promise: nil)
          return
        }
      }
      context.flush()
      guard case .transmission = phase else { return }
    }
    guard case .transmission = phase else { return }
    while !disconnectRequested {
      let event: NBDRequestEvent?
      do {
        event = try decoder.next(from: &cumulation!)
      } catch {
        return fail(context: context, reason: "\(error)")
      }
      guard let event else { break }
      if event.request.type == .disconnect {
        // NBD_CMD_DISC: no reply; finish what is in flight, then close.
        disconnectRequested = true
        closeIfIdle(context: context)
        break
      }
      run(event, context: context)
    }
  }

  private func run(_ event: NBDRequestEvent, context: ChannelHandlerContext) {
    inFlight += 1
    let handle = event.request.handle
    volume.handle(event.request, payload: event.payload).whenSuccess { [self] result in
      inFlight -= 1
      guard context.channel.isActive else { return }
      var header = context.channel.allocator.buffer(capacity: NBDLimits.simpleReplyHeaderSize)
      switch result {
      case .success(let data):
        NBDReplyEncoder.writeSimpleReply(handle: handle, error: nil, into: &header)
        context.write(wrapOutboundOut(header), promise: nil)
        for segment in data { context.write(wrapOutboundOut(segment), promise: nil) }
        context.flush()
      case .failure(let errno):
        NBDReplyEncoder.writeSimpleReply(handle: handle, error: errno, into: &header)
        context.writeAndFlush(wrapOutboundOut(header), promise: nil)
      }
      if disconnectRequested { closeIfIdle(context: context) }
    }
  }

  private func closeIfIdle(context: ChannelHandlerContext) {
    guard inFlight == 0 else { return }
    phase = .closing
    context.close(promise: nil)
  }

  private func fail(context: ChannelHandlerContext, reason: String) {
    logger.warning("NBD protocol violation; closing the connection", metadata: ["reason": "\(reason)"])
    phase = .closing
    cumulation = nil
    context.close(promise: nil)
  }

  func errorCaught(context: ChannelHandlerContext, error: Error) {
    logger.info("NBD connection error", metadata: ["error": "\(error)"])
    context.close(promise: nil)
  }
}
