import Foundation
import ISCSIProtocol
import NIOCore
import NIOPosix

/// TEST-ONLY: a broken iSCSI target, made of a real tgtd and a man in the middle on
/// 127.0.0.1. Everything passes through untouched until the test arms a fault; then the
/// next PDU from tgtd that the fault fits is rewritten once (header digests recomputed,
/// so the bad value arrives under a valid CRC, as when a target itself is wrong) and the
/// proxy goes back to passing everything through. No real target sends these; that is
/// the point: the initiator must refuse the data, never hand it on.
final class BrokenTargetProxy: @unchecked Sendable {
  enum Fault: String, CaseIterable, Sendable {
    /// The second Data-In of a read repeats the first one's BufferOffset (an overlap,
    /// and a hole where its data belonged).
    case repeatedOffset
    /// The second Data-In of a read is dropped and the later ones renumbered, so DataSN
    /// has no gap but the data does.
    case gap
    /// The second Data-In of a read starts 512 bytes early.
    case overlap
    /// The second Data-In of a read carries DataSN 2.
    case dataSNOutOfOrder
    /// The second Data-In of a read lies 64 MiB further on, past the end of the read.
    case beyondExpectedLength
    /// A read's status says 4096 bytes were not sent (underflow) although all were.
    case residualMismatch
    /// The first R2T of a write asks for data 64 MiB past the end of the command.
    case r2tOutsideCommand
  }

  let targetPort: Int
  let group = MultiThreadedEventLoopGroup.singleton
  private var server: Channel!
  private let lock = NSLock()
  private var armed: Fault?
  private var applied: [Fault] = []

  var port: Int { server.localAddress!.port! }

  init(targetPort: Int) throws {
    self.targetPort = targetPort
    server = try ServerBootstrap(group: group)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { [self] client in
        let forward = Forward()
        ClientBootstrap(group: client.eventLoop)
          .channelInitializer { upstream in
            upstream.eventLoop.makeCompletedFuture {
              try upstream.pipeline.syncOperations.addHandler(TargetToInitiator(proxy: self, peer: client))
            }
          }
          .connect(host: "127.0.0.1", port: targetPort)
          .whenComplete { result in
            switch result {
            case .success(let upstream): forward.attach(upstream)
            case .failure: client.close(promise: nil)
            }
          }
        return client.eventLoop.makeCompletedFuture { try client.pipeline.syncOperations.addHandler(forward) }
      }
      .bind(host: "127.0.0.1", port: 0).wait()
  }

  private var remaining = 0

  /// The next PDU this fault fits is rewritten (`times` PDUs: a target that is wrong
  /// every time).
  func arm(_ fault: Fault, times: Int = 1) {
    lock.withLock {
      armed = fault
      remaining = times
    }
  }

  func disarm() { lock.withLock { armed = nil } }

  /// The faults carried out so far, in order.
  var injected: [Fault] { lock.withLock { applied } }

  /// The armed fault if it fits a PDU of this kind; it is then spent.
  fileprivate func take(where fits: (Fault) -> Bool) -> Fault? {
    lock.withLock {
      guard let f = armed, fits(f) else { return nil }
      remaining -= 1
      if remaining <= 0 { armed = nil }
      applied.append(f)
      return f
    }
  }

  func stop() { try? server.close().wait() }
}

/// Initiator to target: bytes as they are (held until tgtd has answered the connect).
private final class Forward: ChannelInboundHandler, @unchecked Sendable {
  typealias InboundIn = ByteBuffer
  var peer: Channel?
  var held: [ByteBuffer] = []
  var closed = false

  /// On the client's event loop, which the upstream channel shares.
  func attach(_ upstream: Channel) {
    peer = upstream
    if closed { upstream.close(promise: nil) }
    for b in held { upstream.write(b, promise: nil) }
    held = []
    upstream.flush()
  }
  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    let bytes = unwrapInboundIn(data)
    if let peer { peer.writeAndFlush(bytes, promise: nil) } else { held.append(bytes) }
  }
  func channelInactive(context: ChannelHandlerContext) {
    closed = true
    peer?.close(promise: nil)
  }
  func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

/// Target to initiator: PDU by PDU, so one can be rewritten.
private final class TargetToInitiator: ChannelInboundHandler {
  typealias InboundIn = ByteBuffer
  let proxy: BrokenTargetProxy
  let peer: Channel
  var buffer = ByteBuffer()
  // Large enough for anything tgtd sends; digests switch on after login.
  var framer = PDUFramer(parameters: FramingParameters(maxRecvDataSegmentLength: 16 << 20))
  var encoder = PDUEncoder()
  var headerDigest = false
  var dataDigest = false
  /// Per task: how many Data-In were dropped (renumber the rest), and whether data came.
  var dropped: [UInt32: UInt32] = [:]
  var sawData: Set<UInt32> = []

  init(proxy: BrokenTargetProxy, peer: Channel) {
    self.proxy = proxy
    self.peer = peer
  }

  func channelInactive(context: ChannelHandlerContext) { peer.close(promise: nil) }
  func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var incoming = unwrapInboundIn(data)
    buffer.writeBuffer(&incoming)
    var out = ByteBuffer()
    do {
      while let pdu = try framer.next(from: &buffer) {
        if let rewritten = rewrite(pdu) { encoder.encode(rewritten, into: &out) }
        if pdu.opcode == .loginResponse { noteLogin(pdu) }
      }
    } catch {
      context.close(promise: nil)
      return
    }
    buffer.discardReadBytes()
    if out.readableBytes > 0 { peer.writeAndFlush(out, promise: nil) }
  }

  /// Digests start with the first PDU after the last Login Response (T bit, NSG 3).
  func noteLogin(_ pdu: ISCSIPDU) {
    for kv in (try? TextKeys.decode(pdu.data)) ?? [] {
      if kv.key == "HeaderDigest" { headerDigest = kv.value == "CRC32C" }
      if kv.key == "DataDigest" { dataDigest = kv.value == "CRC32C" }
    }
    if pdu.header.flags & 0x83 == 0x83 {
      let p = FramingParameters(
        headerDigest: headerDigest, dataDigest: dataDigest, maxRecvDataSegmentLength: 16 << 20,
        maxSendDataSegmentLength: 16 << 20)
      framer.parameters = p
      encoder.parameters = p
    }
  }

  /// The PDU with a read's status: the residual fault claims 4096 bytes were not sent.
  func endOfRead(_ pdu: inout ISCSIPDU) {
    let itt = pdu.header.initiatorTaskTag
    dropped[itt] = nil
    if sawData.remove(itt) != nil, pdu.header.flags & DataInFlags.underflow == 0,
      proxy.take(where: { $0 == .residualMismatch }) != nil
    {
      pdu.header.flags |= DataInFlags.underflow
      pdu.header.residualCount = 4096
    }
  }

  /// The PDU to pass on (nil: dropped).
  func rewrite(_ original: ISCSIPDU) -> ISCSIPDU? {
    var pdu = original
    let itt = pdu.header.initiatorTaskTag
    switch pdu.opcode {
    case .dataIn:
      if let n = dropped[itt] { pdu.header.dataSN &-= n }
      let status = pdu.header.flags & DataInFlags.status != 0
      if pdu.data.readableBytes > 0 { sawData.insert(itt) }
      if pdu.header.dataSN == 1 && !status && pdu.data.readableBytes > 0,
        let fault = proxy.take(where: {
          [.repeatedOffset, .gap, .overlap, .dataSNOutOfOrder, .beyondExpectedLength].contains($0)
        })
      {
        switch fault {
        case .repeatedOffset: pdu.header.bufferOffset = 0
        case .gap:
          dropped[itt, default: 0] += 1
          return nil
        case .overlap: pdu.header.bufferOffset -= 512
        case .dataSNOutOfOrder: pdu.header.dataSN = 2
        case .beyondExpectedLength: pdu.header.bufferOffset += 64 << 20
        default: break
        }
      }
      if status { endOfRead(&pdu) }
    case .scsiResponse:
      endOfRead(&pdu)
    case .readyToTransfer:
      if proxy.take(where: { $0 == .r2tOutsideCommand }) != nil {
        pdu.header.bufferOffset += 64 << 20
      }
    default:
      break
    }
    return pdu
  }
}
