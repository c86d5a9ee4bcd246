import NIOCore

/// What the server must do next during the handshake.
public enum NBDHandshakeAction: Hashable, Sendable {
  /// Write these bytes to the client.
  case send(ByteBuffer)
  /// The handshake is over: the transmission phase starts with this export. Bytes still
  /// in the input buffer belong to the transmission phase (feed them to `NBDRequestDecoder`).
  case enterTransmission(export: NBDExportInfo)
  /// Close the connection (hard disconnect, or after the ACK of `NBD_OPT_ABORT`).
  case close(reason: String)
  /// After writing what came before (the ACK of `NBD_OPT_STARTTLS`), start the TLS
  /// handshake on the connection; the option haggling goes on inside TLS.
  case startTLS
}

/// What the client negotiated for the transmission phase.
public struct NBDTransmissionOptions: Hashable, Sendable {
  /// Replies to NBD_CMD_READ (and errors of reads and block status) are structured chunks.
  public var structuredReplies = false
  /// The id of `base:allocation` when the client selected it: NBD_CMD_BLOCK_STATUS is
  /// answered; nil: it gets EINVAL.
  public var baseAllocation: UInt32?

  public init(structuredReplies: Bool = false, baseAllocation: UInt32? = nil) {
    self.structuredReplies = structuredReplies
    self.baseAllocation = baseAllocation
  }
}

/// Server side of the fixed-newstyle handshake — proto.md "Newstyle negotiation",
/// "Fixed newstyle negotiation", "Option types", "Option reply types". Structured replies
/// (`NBD_OPT_STRUCTURED_REPLY`) and the one metadata context `base:allocation`
/// (`NBD_OPT_LIST_META_CONTEXT`, `NBD_OPT_SET_META_CONTEXT`) are offered; what the client
/// chose is `transmission` once the handshake is over. No extended headers:
/// `NBD_OPT_EXTENDED_HEADERS` and any unknown option get `NBD_REP_ERR_UNSUP`.
///
/// TLS (proto.md "TLS support"): without it (`tls: .none`, "NOTLS mode")
/// `NBD_OPT_STARTTLS` gets `NBD_REP_ERR_UNSUP`. With `tls: .required` ("FORCEDTLS
/// mode") every option but `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` gets
/// `NBD_REP_ERR_TLS_REQD` until TLS is up, and `NBD_OPT_EXPORT_NAME`, which cannot carry
/// an error, ends the connection.
///
/// Pure: `start()` gives the greeting, `receive(_:)` consumes whole messages from the
/// accumulated input and returns actions; with incomplete input it returns `[]` and
/// consumes nothing of the partial message. After `.enterTransmission` or `.close`,
/// further calls return `[]` and consume nothing.
public struct NBDHandshakeStateMachine: Sendable {
  public enum State: Hashable, Sendable {
    case awaitingClientFlags
    case awaitingOption
    /// `NBD_OPT_STARTTLS` was acknowledged: nothing more is read until `tlsStarted()`.
    case awaitingTLS
    case transmission
    case closed
  }

  public enum TLSMode: Hashable, Sendable {
    case none
    case required
  }

  public let exports: [NBDExportInfo]
  /// Option data larger than this closes the connection (proto.md lets a server hard
  /// disconnect a client it believes is a denial of service; the largest legitimate
  /// option is a 4096-byte name plus a few info requests).
  public let maxOptionLength: UInt32
  public private(set) var state: State = .awaitingClientFlags
  public private(set) var clientFlags: NBDClientFlags = []
  /// True once the client's final `NBD_OPT_GO` listed `NBD_INFO_BLOCK_SIZE`, i.e. it
  /// promised to honour the size constraints ("Size constraints").
  public private(set) var clientAcknowledgedBlockSizes = false
  public let tls: TLSMode
  /// True once the TLS handshake that followed `NBD_OPT_STARTTLS` is done.
  public private(set) var tlsActive = false
  /// True once `NBD_OPT_STRUCTURED_REPLY` was acknowledged.
  public private(set) var structuredReplies = false
  /// The export for which the last `NBD_OPT_SET_META_CONTEXT` selected `base:allocation`.
  private var baseAllocationExport: String?
  /// What the transmission phase uses, set when it starts.
  public private(set) var transmission = NBDTransmissionOptions()

  static let advertisedHandshakeFlags: NBDHandshakeFlags = [.fixedNewstyle, .noZeroes]
  static let optionHeaderSize = 16  // IHAVEOPT 8 + option 4 + length 4

  /// The default export (requested by an empty name) is the one named "" if present,
  /// otherwise the first one.
  public init(exports: [NBDExportInfo], maxOptionLength: UInt32 = 64 * 1024, tls: TLSMode = .none) {
    self.exports = exports
    self.maxOptionLength = maxOptionLength
    self.tls = tls
  }

  /// The TLS handshake after `.startTLS` succeeded: option haggling goes on.
  public mutating func tlsStarted() {
    guard state == .awaitingTLS else { return }
    tlsActive = true
    state = .awaitingOption
  }

  /// The server greeting: NBDMAGIC, IHAVEOPT, handshake flags FIXED_NEWSTYLE|NO_ZEROES
  /// (18 bytes, "Newstyle negotiation").
  public func start(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
    var buffer = allocator.buffer(capacity: 18)
    buffer.writeInteger(NBDMagic.initPasswd)
    buffer.writeInteger(NBDMagic.iHaveOpt)
    buffer.writeInteger(Self.advertisedHandshakeFlags.rawValue)
    return buffer
  }

  public mutating func receive(_ buffer: inout ByteBuffer) throws -> [NBDHandshakeAction] {
    var actions: [NBDHandshakeAction] = []
    loop: while true {
      switch state {
      case .transmission, .closed, .awaitingTLS:
        break loop
      case .awaitingClientFlags:
        guard let raw = buffer.readInteger(as: UInt32.self) else { break loop }
        let flags = NBDClientFlags(rawValue: raw)
        // "Client flags": the server MUST drop the connection on an unknown flag or one it
        // did not advertise (we advertise both NO_ZEROES and FIXED_NEWSTYLE).
        guard NBDClientFlags([.fixedNewstyle, .noZeroes]).isSuperset(of: flags) else {
          actions.append(close("unknown client flags 0x\(String(raw, radix: 16))"))
          break loop
        }
        clientFlags = flags
        state = .awaitingOption
      case .awaitingOption:
        guard buffer.readableBytes >= Self.optionHeaderSize else { break loop }
        let base = buffer.readerIndex
        let magic = buffer.getInteger(at: base, as: UInt64.self)!
        let option = NBDOption(rawValue: buffer.getInteger(at: base + 8, as: UInt32.self)!)
        let length = buffer.getInteger(at: base + 12, as: UInt32.self)!
        guard magic == NBDMagic.iHaveOpt else {
          actions.append(close("bad option magic 0x\(String(magic, radix: 16))"))
          break loop
        }
        guard length <= maxOptionLength else {
          actions.append(close("\(option) with \(length) bytes of data exceeds \(maxOptionLength)"))
          break loop
        }
        guard buffer.readableBytes >= Self.optionHeaderSize + Int(length) else { break loop }
        buffer.moveReaderIndex(forwardBy: Self.optionHeaderSize)
        var data = buffer.readSlice(length: Int(length))!
        actions += handle(option, data: &data)
        if state == .awaitingTLS && buffer.readableBytes > 0 {
          // The client must wait for the ACK before its TLS handshake: plaintext sent
          // after STARTTLS would be taken as if it had come through TLS.
          actions.removeAll { $0 == .startTLS }
          actions.append(close("data after NBD_OPT_STARTTLS before the TLS handshake"))
          break loop
        }
      }
    }
    return actions
  }

  // MARK: - Options

  private mutating func handle(_ option: NBDOption, data: inout ByteBuffer) -> [NBDHandshakeAction] {
    if tls == .required {
      if option == .startTLS {
        guard !tlsActive else {
          return [.send(reply(option, .errInvalid, message: "TLS is already active"))]
        }
        guard data.readableBytes == 0 else {
          return [.send(reply(option, .errInvalid, message: "NBD_OPT_STARTTLS takes no data"))]
        }
        state = .awaitingTLS
        return [.send(reply(option, .ack)), .startTLS]
      }
      if !tlsActive && option != .abort {
        guard option != .exportName else {
          return [close("NBD_OPT_EXPORT_NAME without TLS on an export that requires TLS")]
        }
        return [.send(reply(option, .errTLSRequired, message: "this export requires TLS (NBD_OPT_STARTTLS)"))]
      }
    }
    switch option {
    case .exportName:
      return exportName(data: data)
    case .abort:
      // "The server MUST reply with NBD_REP_ACK"; data SHOULD be ignored.
      return [.send(reply(option, .ack)), close("client sent NBD_OPT_ABORT")]
    case .list:
      guard data.readableBytes == 0 else {
        return [.send(reply(option, .errInvalid, message: "NBD_OPT_LIST takes no data"))]
      }
      var out = ByteBuffer()
      for export in exports {
        var payload = ByteBuffer()
        payload.writeInteger(UInt32(export.name.utf8.count))
        payload.writeString(export.name)
        payload.writeString(export.description)
        writeReply(option, .server, payload: payload, into: &out)
      }
      writeReply(option, .ack, into: &out)
      return [.send(out)]
    case .info, .go:
      return infoOrGo(option, data: &data)
    case .structuredReply:
      guard data.readableBytes == 0 else {
        return [.send(reply(option, .errInvalid, message: "NBD_OPT_STRUCTURED_REPLY takes no data"))]
      }
      structuredReplies = true
      return [.send(reply(option, .ack))]
    case .listMetaContext, .setMetaContext:
      return metaContext(option, data: &data)
    default:
      return [.send(reply(option, .errUnsupported, message: "\(option) is not supported"))]
    }
  }

  /// "NBD_OPT_EXPORT_NAME": size 64, transmission flags 16, 124 zero bytes unless the
  /// client set NBD_FLAG_C_NO_ZEROES. An unknown export MUST terminate the session.
  private mutating func exportName(data: ByteBuffer) -> [NBDHandshakeAction] {
    let name = data.getBytes(at: data.readerIndex, length: data.readableBytes) ?? []
    guard let export = lookup(name) else {
      return [close("NBD_OPT_EXPORT_NAME for unknown export '\(Self.printable(name))'")]
    }
    var out = ByteBuffer()
    out.writeInteger(export.size)
    out.writeInteger(export.transmissionFlags.rawValue)
    if !clientFlags.contains(.noZeroes) { out.writeRepeatingByte(0, count: 124) }
    enterTransmission(export)
    clientAcknowledgedBlockSizes = false
    return [.send(out), .enterTransmission(export: export)]
  }

  /// "NBD_OPT_INFO and NBD_OPT_GO": name length 32, name, count 16, count × info type 16.
  private mutating func infoOrGo(_ option: NBDOption, data: inout ByteBuffer) -> [NBDHandshakeAction] {
    let total = data.readableBytes
    guard total >= 6, let nameLength = data.readInteger(as: UInt32.self), Int(nameLength) <= total - 6,
      let name = data.readBytes(length: Int(nameLength)),
      let count = data.readInteger(as: UInt16.self), data.readableBytes == Int(count) * 2
    else {
      return [.send(reply(option, .errInvalid, message: "malformed \(option) data"))]
    }
    var requested: Set<NBDInfoType> = []
    for _ in 0..<count { requested.insert(NBDInfoType(rawValue: data.readInteger(as: UInt16.self)!)) }

    guard let export = lookup(name) else {
      // SHOULD NOT send NBD_REP_INFO before NBD_REP_ERR_UNKNOWN.
      return [
        .send(reply(option, .errUnknown, message: "unknown export '\(Self.printable(name))'"))
      ]
    }
    var out = ByteBuffer()
    // NBD_INFO_EXPORT is mandatory before an ACK: type 16, size 64, flags 16 (length 12).
    var info = ByteBuffer()
    info.writeInteger(NBDInfoType.export.rawValue)
    info.writeInteger(export.size)
    info.writeInteger(export.transmissionFlags.rawValue)
    writeReply(option, .info, payload: info, into: &out)
    if requested.contains(.name) {
      info.clear()
      info.writeInteger(NBDInfoType.name.rawValue)
      info.writeString(export.name)
      writeReply(option, .info, payload: info, into: &out)
    }
    if requested.contains(.description), !export.description.isEmpty {
      info.clear()
      info.writeInteger(NBDInfoType.description.rawValue)
      info.writeString(export.description)
      writeReply(option, .info, payload: info, into: &out)
    }
    // Always sent (even unrequested): the server may send unrequested info and clients
    // MUST ignore what they do not understand. Length 14.
    info.clear()
    info.writeInteger(NBDInfoType.blockSize.rawValue)
    info.writeInteger(export.minimumBlockSize)
    info.writeInteger(export.preferredBlockSize)
    info.writeInteger(export.maximumPayload)
    writeReply(option, .info, payload: info, into: &out)
    writeReply(option, .ack, into: &out)

    guard option == .go else { return [.send(out)] }
    enterTransmission(export)
    clientAcknowledgedBlockSizes = requested.contains(.blockSize)
    return [.send(out), .enterTransmission(export: export)]
  }

  /// "NBD_OPT_LIST_META_CONTEXT", "NBD_OPT_SET_META_CONTEXT": export name length 32, name,
  /// number of queries 32, each query length 32 and string. Only after structured replies.
  /// LIST with no query, or the query "base:", lists `base:allocation` (id 0, as LIST
  /// replies carry no id); SET selects it for the named export when asked by its full name,
  /// and replaces whatever an earlier SET selected.
  private mutating func metaContext(_ option: NBDOption, data: inout ByteBuffer) -> [NBDHandshakeAction] {
    guard structuredReplies else {
      return [.send(reply(option, .errInvalid, message: "\(option) needs NBD_OPT_STRUCTURED_REPLY first"))]
    }
    guard let request = Self.metaContextRequest(&data) else {
      return [.send(reply(option, .errInvalid, message: "malformed \(option) data"))]
    }
    let (name, queries) = request
    guard let export = lookup(name) else {
      return [.send(reply(option, .errUnknown, message: "unknown export '\(Self.printable(name))'"))]
    }
    let list = option == .listMetaContext
    let selected =
      (list && queries.isEmpty)
      || queries.contains { query in
        query.elementsEqual(NBDMetaContext.baseAllocation.utf8) || (list && query.elementsEqual("base:".utf8))
      }
    var out = ByteBuffer()
    if selected {
      var payload = ByteBuffer()
      payload.writeInteger(list ? 0 : NBDMetaContext.baseAllocationID)
      payload.writeString(NBDMetaContext.baseAllocation)
      writeReply(option, .metaContext, payload: payload, into: &out)
    }
    writeReply(option, .ack, into: &out)
    if !list { baseAllocationExport = selected ? export.name : nil }
    return [.send(out)]
  }

  /// The export name and the queries of a meta context option; nil when the data is not
  /// exactly that.
  private static func metaContextRequest(_ data: inout ByteBuffer) -> (name: [UInt8], queries: [[UInt8]])? {
    guard let nameLength = data.readInteger(as: UInt32.self), nameLength <= NBDLimits.maxStringLength,
      let name = data.readBytes(length: Int(nameLength)), let count = data.readInteger(as: UInt32.self),
      UInt64(count) * 4 <= UInt64(data.readableBytes)
    else { return nil }
    var queries: [[UInt8]] = []
    for _ in 0..<count {
      guard let length = data.readInteger(as: UInt32.self), length <= NBDLimits.maxStringLength,
        let query = data.readBytes(length: Int(length))
      else { return nil }
      queries.append(query)
    }
    return data.readableBytes == 0 ? (name, queries) : nil
  }

  private mutating func enterTransmission(_ export: NBDExportInfo) {
    state = .transmission
    transmission = NBDTransmissionOptions(
      structuredReplies: structuredReplies,
      baseAllocation: structuredReplies && baseAllocationExport == export.name ? NBDMetaContext.baseAllocationID : nil)
  }

  // MARK: - Helpers

  /// A client-supplied name for a message: at most 256 bytes, so messages stay far below
  /// the 4096-byte string limit ("Conventions").
  private static func printable(_ name: [UInt8]) -> String {
    String(decoding: name.prefix(256), as: UTF8.self)
  }

  private func lookup(_ name: [UInt8]) -> NBDExportInfo? {
    if let exact = exports.first(where: { $0.name.utf8.elementsEqual(name) }) { return exact }
    return name.isEmpty ? exports.first : nil
  }

  private mutating func close(_ reason: String) -> NBDHandshakeAction {
    state = .closed
    return .close(reason: reason)
  }

  /// Option reply ("Fixed newstyle negotiation"): magic 64, option 32, type 32, length 32, data.
  private func writeReply(
    _ option: NBDOption, _ type: NBDOptionReplyType, payload: ByteBuffer? = nil, into out: inout ByteBuffer
  ) {
    out.writeInteger(NBDMagic.optionReply)
    out.writeInteger(option.rawValue)
    out.writeInteger(type.rawValue)
    out.writeInteger(UInt32(payload?.readableBytes ?? 0))
    if let payload { out.writeImmutableBuffer(payload) }
  }

  /// A single reply; error replies carry a human-readable message ("All error replies MAY
  /// have some data set").
  private func reply(_ option: NBDOption, _ type: NBDOptionReplyType, message: String? = nil) -> ByteBuffer {
    var out = ByteBuffer()
    var payload: ByteBuffer?
    if let message {
      var p = ByteBuffer()
      p.writeString(message)
      payload = p
    }
    writeReply(option, type, payload: payload, into: &out)
    return out
  }
}
