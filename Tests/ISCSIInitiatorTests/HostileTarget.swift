import ISCSIProtocol
import NIOCore
import NIOPosix

/// A TEST-ONLY, deliberately broken iSCSI target on 127.0.0.1: it logs initiators in
/// (no authentication, no digests) and then sends what a real target such as tgtd never
/// will, to prove the initiator ends each case with a clean error. It is not an iSCSI
/// target for anything else.
final class HostileTarget: @unchecked Sendable {
  enum Misbehaviour: Sendable {
    /// A Data-In announcing a 16 MiB data segment (beyond what the initiator declared).
    case oversizedDataSegment
    /// A PDU with reserved opcode 0x1c.
    case unknownOpcode
    /// Data-In for an Initiator Task Tag the initiator never used.
    case dataInForUnknownTask
    /// Half a header, then the connection closes.
    case truncatedPDUThenClose
    /// Every login is redirected to this same portal.
    case endlessRedirect
    /// Commands complete, but each response moves MaxCmdSN backwards.
    case maxCmdSNBackwards
    /// Commands are never answered (and neither are task management requests).
    case silent
    /// The first command is never answered; ABORT TASK is, and later commands too.
    case loseFirstCommand
    /// A login offering AuthMethod=None is answered by closing the connection, with no
    /// Login Response (what LIO does when it requires CHAP).
    case closeOnAuthMethodNone
  }

  let misbehaviour: Misbehaviour
  let group = MultiThreadedEventLoopGroup.singleton
  private(set) var channel: Channel!
  var port: Int { channel.localAddress!.port! }

  init(_ misbehaviour: Misbehaviour) throws {
    self.misbehaviour = misbehaviour
    let m = misbehaviour
    channel = try ServerBootstrap(group: group)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { [weak self] child in
        child.eventLoop.makeCompletedFuture {
          try child.pipeline.syncOperations.addHandler(
            HostileConnection(misbehaviour: m, port: { self?.port ?? 0 }))
        }
      }
      .bind(host: "127.0.0.1", port: 0).wait()
  }

  func stop() {
    try? channel.close().wait()
  }
}

final class HostileConnection: ChannelInboundHandler {
  typealias InboundIn = ByteBuffer
  typealias OutboundOut = ByteBuffer

  let misbehaviour: HostileTarget.Misbehaviour
  let port: () -> Int
  var buffer = ByteBuffer()
  var statSN: UInt32 = 1
  var maxCmdSN: UInt32 = 0
  var backwards: UInt32 = 0
  var commands = 0

  init(misbehaviour: HostileTarget.Misbehaviour, port: @escaping () -> Int) {
    self.misbehaviour = misbehaviour
    self.port = port
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var incoming = unwrapInboundIn(data)
    buffer.writeBuffer(&incoming)
    while buffer.readableBytes >= 48 {
      var peek = buffer
      let h = BasicHeaderSegment.read(from: &peek)!
      let length = 48 + Int(h.totalAHSLength) * 4 + ((Int(h.dataSegmentLength) + 3) & ~3)
      guard buffer.readableBytes >= length else { return }
      buffer.moveReaderIndex(forwardBy: 48 + Int(h.totalAHSLength) * 4)
      let data = buffer.readSlice(length: Int(h.dataSegmentLength))!
      buffer.moveReaderIndex(forwardBy: ((Int(h.dataSegmentLength) + 3) & ~3) - Int(h.dataSegmentLength))
      handle(h, data, context)
    }
  }

  func send(_ pdu: ISCSIPDU, _ context: ChannelHandlerContext) {
    var out = ByteBuffer()
    PDUEncoder().encode(pdu, into: &out)
    context.writeAndFlush(wrapOutboundOut(out), promise: nil)
  }

  func targetHeader(_ opcode: Opcode, itt: UInt32, cmdSN: UInt32, flags: UInt8 = finalFlag) -> BasicHeaderSegment {
    var r = BasicHeaderSegment(opcode: opcode, flags: flags)
    r.initiatorTaskTag = itt
    r.statSN = statSN
    statSN &+= 1
    r.expCmdSN = cmdSN &+ 1
    if maxCmdSN == 0 { maxCmdSN = cmdSN &+ 64 }
    r.maxCmdSN = maxCmdSN
    return r
  }

  func handle(_ h: BasicHeaderSegment, _ data: ByteBuffer, _ context: ChannelHandlerContext) {
    switch h.opcode {
    case .loginRequest:
      login(h, data, context)
    case .scsiCommand:
      command(h, context)
    case .nopOut where h.initiatorTaskTag != reservedTag:
      var r = targetHeader(.nopIn, itt: h.initiatorTaskTag, cmdSN: h.cmdSN &- 1)
      r.targetTransferTag = reservedTag
      send(ISCSIPDU(header: r), context)
    case .taskManagementRequest where misbehaviour == .loseFirstCommand:
      var r = targetHeader(.taskManagementResponse, itt: h.initiatorTaskTag, cmdSN: h.cmdSN &- 1)
      r.response = 0  // function complete
      send(ISCSIPDU(header: r), context)
    case .logoutRequest:
      send(ISCSIPDU(header: targetHeader(.logoutResponse, itt: h.initiatorTaskTag, cmdSN: h.cmdSN &- 1)), context)
      context.close(promise: nil)
    default:
      break
    }
  }

  func login(_ h: BasicHeaderSegment, _ data: ByteBuffer, _ context: ChannelHandlerContext) {
    var r = BasicHeaderSegment(opcode: .loginResponse)
    r.isid = h.isid
    r.tsih = 0x42
    r.initiatorTaskTag = h.initiatorTaskTag
    r.statSN = statSN
    r.expCmdSN = h.cmdSN
    r.maxCmdSN = h.cmdSN &+ 64
    maxCmdSN = r.maxCmdSN
    var keys: [TextKeyValue] = []
    if misbehaviour == .endlessRedirect {
      // Status-Class 1 (redirection), detail 1 (temporary): RFC 7143 section 11.13.5.
      r.word9 = 0x0101_0000
      keys = [TextKeyValue("TargetAddress", "127.0.0.1:\(port()),1")]
      var b = ByteBuffer()
      try! TextKeys.encode(keys, into: &b)
      send(ISCSIPDU(header: r, data: b), context)
      return
    }
    if misbehaviour == .closeOnAuthMethodNone,
      ((try? TextKeys.decode(data)) ?? []).contains(where: { $0.key == "AuthMethod" && $0.value == "None" })
    {
      context.close(promise: nil)
      return
    }
    let csg = (h.flags >> 2) & 3
    let transit = h.flags & 0x80 != 0
    let nsg = h.flags & 3
    r.flags = (transit ? 0x80 : 0) | (csg << 2) | (transit ? nsg : 0)
    // Answer each offered key with the offered value (a target agreeing to everything),
    // except the ones a target declares or must pick from a list.
    for kv in (try? TextKeys.decode(data)) ?? [] {
      switch kv.key {
      case "InitiatorName", "TargetName", "SessionType", "InitiatorAlias": continue
      case "AuthMethod": keys.append(TextKeyValue(kv.key, "None"))
      case "HeaderDigest", "DataDigest": keys.append(TextKeyValue(kv.key, "None"))
      case "MaxRecvDataSegmentLength": keys.append(TextKeyValue(kv.key, "8192"))
      default: keys.append(kv)
      }
    }
    if csg == 0 { keys.append(TextKeyValue("TargetPortalGroupTag", "1")) }
    var b = ByteBuffer()
    try! TextKeys.encode(keys, into: &b)
    send(ISCSIPDU(header: r, data: b), context)
  }

  func command(_ h: BasicHeaderSegment, _ context: ChannelHandlerContext) {
    var out = ByteBuffer()
    switch misbehaviour {
    case .oversizedDataSegment:
      var r = targetHeader(.dataIn, itt: h.initiatorTaskTag, cmdSN: h.cmdSN, flags: 0)
      r.dataSegmentLength = 0x00ff_ffff
      r.write(to: &out)
      context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    case .unknownOpcode:
      targetHeader(Opcode(rawValue: 0x1c), itt: h.initiatorTaskTag, cmdSN: h.cmdSN).write(to: &out)
      context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    case .dataInForUnknownTask:
      var payload = ByteBuffer()
      payload.writeRepeatingByte(0xee, count: 512)
      let r = targetHeader(.dataIn, itt: 0xdead_beef, cmdSN: h.cmdSN, flags: 0)
      send(ISCSIPDU(header: r, data: payload), context)
    case .truncatedPDUThenClose:
      targetHeader(.scsiResponse, itt: h.initiatorTaskTag, cmdSN: h.cmdSN).write(to: &out)
      let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
      context.writeAndFlush(wrapOutboundOut(out.getSlice(at: 0, length: 20)!)).whenComplete { _ in
        bound.value.close(promise: nil)
      }
    case .maxCmdSNBackwards:
      // Good status, then MaxCmdSN 10 lower than the last one each time.
      var r = targetHeader(.scsiResponse, itt: h.initiatorTaskTag, cmdSN: h.cmdSN)
      backwards += 10
      r.maxCmdSN = maxCmdSN &- backwards
      r.scsiStatus = 0
      send(ISCSIPDU(header: r), context)
    case .loseFirstCommand:
      commands += 1
      if commands > 1 {
        send(ISCSIPDU(header: targetHeader(.scsiResponse, itt: h.initiatorTaskTag, cmdSN: h.cmdSN)), context)
      }
    case .silent, .endlessRedirect, .closeOnAuthMethodNone:
      break
    }
  }
}
