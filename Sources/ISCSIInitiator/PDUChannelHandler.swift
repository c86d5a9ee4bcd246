import ISCSIProtocol
import NIOCore

/// Frames one TCP connection into PDUs and back. Inbound bytes are cut by `PDUFramer`
/// (lengths checked before anything is buffered for them); outbound PDUs are written as
/// header, data slice and trailer, so write payloads go to the socket without a copy.
/// Everything here runs on the connection's event loop.
final class PDUChannelHandler: ChannelDuplexHandler {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = ISCSIPDU
  typealias OutboundIn = ISCSIPDU
  typealias OutboundOut = ByteBuffer

  var framer = PDUFramer()
  var encoder = PDUEncoder()
  private var cumulation = Cumulation()
  private var failed = false
  /// The session of this connection: PDUs go to it and come from it directly, not as
  /// `NIOAny` through the pipeline (which boxes each PDU in a heap allocation).
  weak var session: ISCSISession?
  private var context: ChannelHandlerContext?

  func handlerAdded(context: ChannelHandlerContext) { self.context = context }
  func handlerRemoved(context: ChannelHandlerContext) {
    self.context = nil
    gathered = nil
  }

  /// Writes a PDU (no flush), as a write through the pipeline would. On the event loop.
  func send(_ pdu: ISCSIPDU) {
    guard let context else { return }
    encode(pdu, context: context, promise: nil)
  }

  /// Hands what is gathered to the channel and flushes.
  func flush() {
    guard let context else { return }
    flush(context: context)
  }

  /// A flush through the pipeline: the same.
  func flush(context: ChannelHandlerContext) {
    writeGathered(context: context)
    context.flush()
  }

  /// Changes digests and segment limits; takes effect for the next byte in each direction.
  func apply(_ parameters: FramingParameters) {
    framer.parameters = parameters
    encoder.parameters = parameters
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    guard !failed else { return }
    cumulation.append(unwrapInboundIn(data), messageLength: { framer.lengthOfPDU(at: $0) })
    // fireChannelRead can re-enter channelRead: when a handler further on writes and the
    // write fails (connection reset), NIO drains the socket's input synchronously before
    // closing. The inner call consumes what is buffered and may leave the bytes nil.
    repeat {
      while !failed, cumulation.bytes != nil {
        do {
          guard let pdu = try framer.next(from: &cumulation.bytes!) else { break }
          if let session {
            session.receive(pdu, from: context.channel)
          } else {
            context.fireChannelRead(wrapInboundOut(pdu))
          }
        } catch {
          failed = true
          cumulation.removeAll()
          context.fireErrorCaught(error)
          context.close(promise: nil)
          return
        }
      }
    } while !failed && cumulation.takeHeld(messageLength: { framer.lengthOfPDU(at: $0) })
  }

  func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
    encode(unwrapOutboundIn(data), context: context, promise: promise)
  }

  /// Headers and small segments of the PDUs written since the last flush, in one buffer:
  /// the commands that several NBD requests read together produce leave as one write of
  /// the channel (each write costs the channel's bookkeeping), not one per PDU.
  private var gathered: ByteBuffer?
  /// Data segments of at most this many bytes are copied into `gathered`.
  static let copiedSegment = 1024

  private func writeGathered(context: ChannelHandlerContext) {
    guard let buffer = gathered else { return }
    gathered = nil
    context.write(wrapOutboundOut(buffer), promise: nil)
  }

  private func encode(_ pdu: ISCSIPDU, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
    let length = pdu.data.readableBytes
    var head =
      gathered
      ?? context.channel.allocator.buffer(
        capacity: max(1024, 48 + 8 + (pdu.ahs?.readableBytes ?? 0) + (length <= PDUChannelHandler.copiedSegment ? length : 0)))
    gathered = nil
    encoder.writeHeader(pdu, into: &head)
    if length > 0 && length <= PDUChannelHandler.copiedSegment {
      // Small segments (text, NOP-Out data): copied in. Larger ones (a 4 KiB write's
      // immediate data) are not: a copy costs about what a write of its own does, and
      // more as the batch grows.
      var data = pdu.data
      head.writeBuffer(&data)
      encoder.writeTrailer(for: pdu.data, into: &head)
    } else if length > 0 {
      // Large segments go to the socket as they are: what is gathered first, then the
      // segment, then the padding and data digest when there are any (most Data-Out
      // segments are multiples of 4 without digests, and need no third buffer).
      context.write(wrapOutboundOut(head), promise: nil)
      guard length % 4 != 0 || encoder.parameters.dataDigest else {
        context.write(wrapOutboundOut(pdu.data), promise: promise)
        return
      }
      var trailer = context.channel.allocator.buffer(capacity: 8)
      encoder.writeTrailer(for: pdu.data, into: &trailer)
      context.write(wrapOutboundOut(pdu.data), promise: nil)
      context.write(wrapOutboundOut(trailer), promise: promise)
      return
    }
    if let promise {
      // A caller waits for this PDU: it goes to the channel now, with its promise.
      context.write(wrapOutboundOut(head), promise: promise)
    } else {
      gathered = head
    }
  }
}
