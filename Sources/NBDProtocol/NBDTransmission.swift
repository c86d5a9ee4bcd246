import Failure
import NIOCore

/// One transmission-phase request header — proto.md "Request message" (28 bytes):
/// magic 32, command flags 16, type 16, cookie 64, offset 64, length 32.
public struct NBDRequest: Hashable, Sendable {
  public var flags: NBDCommandFlags
  public var type: NBDCommand
  /// The client's cookie ("handle" in older texts); echoed verbatim in the reply.
  public var handle: UInt64
  public var offset: UInt64
  public var length: UInt32

  public init(flags: NBDCommandFlags = [], type: NBDCommand, handle: UInt64, offset: UInt64, length: UInt32) {
    self.flags = flags
    self.type = type
    self.handle = handle
    self.offset = offset
    self.length = length
  }

  /// Writes the 28-byte header (client side; used by tests and tools).
  public func write(into buffer: inout ByteBuffer) {
    buffer.writeInteger(NBDMagic.request)
    buffer.writeInteger(flags.rawValue)
    buffer.writeInteger(type.rawValue)
    buffer.writeInteger(handle)
    buffer.writeInteger(offset)
    buffer.writeInteger(length)
  }
}

/// A decoded request. `payload` is set only for `NBD_CMD_WRITE`: a slice of the input
/// buffer (shares its storage, no copy), exactly `request.length` bytes.
public struct NBDRequestEvent: Sendable {
  public var request: NBDRequest
  public var payload: ByteBuffer?

  public init(request: NBDRequest, payload: ByteBuffer? = nil) {
    self.request = request
    self.payload = payload
  }
}

/// Transmission-phase protocol violations. The only right reaction is a hard disconnect
/// (proto.md "Termination of the session during option haggling": a party that detects a
/// violation of a mandatory condition MAY initiate a hard disconnect).
public enum NBDProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
  /// The request did not start with `NBD_REQUEST_MAGIC`; the stream cannot be resynchronised.
  case badRequestMagic(UInt32)
  /// A WRITE announced more payload than `maxPayload`.
  case writePayloadTooLarge(length: UInt32, limit: UInt32)
  /// `next(from:)` was called again after it had thrown.
  case decoderFailed

  public var description: String {
    switch self {
    case .badRequestMagic(let m):
      if m == NBDMagic.extendedRequest {
        return "extended request header received but extended headers were not negotiated"
      }
      return "bad NBD request magic 0x\(String(m, radix: 16))"
    case .writePayloadTooLarge(let length, let limit):
      return "NBD_CMD_WRITE of \(length) bytes exceeds the \(limit)-byte payload limit"
    case .decoderFailed:
      return "NBD request decoder used after a protocol violation"
    }
  }
}

/// Incremental decoder for transmission requests (server side). Pure: feed it the
/// accumulated input, it consumes whole requests only.
///
/// Oversized writes: proto.md "Size constraints" lets either side hard-disconnect when a
/// payload is large enough to be deemed a denial of service, but says payloads up to 2^25
/// SHOULD NOT be considered one. The decoder therefore checks `length` against
/// `maxPayload` (default 2^25, never set it lower than 2^25 for interoperability) as soon
/// as the 28-byte header is complete and throws *before* buffering any payload; the caller
/// closes the connection. We do not skip the data and reply EINVAL instead, because that
/// would still mean reading up to 4 GiB from a misbehaving peer. Writes above the
/// *advertised* maximum payload but within `maxPayload` are decoded normally and then
/// refused with `NBD_EINVAL` by `NBDRequestValidator` (the stream stays in sync).
public struct NBDRequestDecoder: Sendable {
  public let maxPayload: UInt32
  private var failed = false

  public init(maxPayload: UInt32 = NBDLimits.defaultMaxPayload) {
    self.maxPayload = maxPayload
  }

  /// Returns the next complete request, or nil when more bytes are needed (nothing is
  /// consumed in that case). Throws `NBDProtocolError` on a violation; the buffer is left
  /// as it was, and the decoder keeps throwing afterwards.
  public mutating func next(from buffer: inout ByteBuffer) throws -> NBDRequestEvent? {
    if failed { throw NBDProtocolError.decoderFailed }
    guard buffer.readableBytes >= NBDLimits.requestHeaderSize else { return nil }
    let base = buffer.readerIndex
    let magic = buffer.getInteger(at: base, as: UInt32.self)!
    guard magic == NBDMagic.request else {
      failed = true
      throw NBDProtocolError.badRequestMagic(magic)
    }
    let request = NBDRequest(
      flags: NBDCommandFlags(rawValue: buffer.getInteger(at: base + 4, as: UInt16.self)!),
      type: NBDCommand(rawValue: buffer.getInteger(at: base + 6, as: UInt16.self)!),
      handle: buffer.getInteger(at: base + 8, as: UInt64.self)!,
      offset: buffer.getInteger(at: base + 16, as: UInt64.self)!,
      length: buffer.getInteger(at: base + 24, as: UInt32.self)!)

    guard request.type == .write else {
      buffer.moveReaderIndex(forwardBy: NBDLimits.requestHeaderSize)
      return NBDRequestEvent(request: request)
    }
    // Only NBD_CMD_WRITE carries data ("Request message"); check before waiting for it.
    guard request.length <= maxPayload else {
      failed = true
      throw NBDProtocolError.writePayloadTooLarge(length: request.length, limit: maxPayload)
    }
    let length = Int(request.length)
    guard buffer.readableBytes >= NBDLimits.requestHeaderSize + length else { return nil }
    buffer.moveReaderIndex(forwardBy: NBDLimits.requestHeaderSize)
    let payload = buffer.readSlice(length: length)!
    return NBDRequestEvent(request: request, payload: payload)
  }
}

/// Simple reply writer — proto.md "Simple reply message": magic 32, error 32, cookie 64.
/// The READ data (if the error is zero) follows the header; the caller writes it
/// separately (e.g. as a second buffer in the same flush) so it is never copied here.
public enum NBDReplyEncoder {
  /// Appends the 16-byte header. `error == nil` means success (error field 0).
  public static func writeSimpleReply(handle: UInt64, error: NBDErrno?, into buffer: inout ByteBuffer) {
    buffer.writeInteger(NBDMagic.simpleReply)
    buffer.writeInteger(error?.rawValue ?? 0)
    buffer.writeInteger(handle)
  }

  /// A fresh 16-byte header buffer.
  public static func simpleReply(
    handle: UInt64, error: NBDErrno?, allocator: ByteBufferAllocator = ByteBufferAllocator()
  ) -> ByteBuffer {
    var buffer = allocator.buffer(capacity: NBDLimits.simpleReplyHeaderSize)
    writeSimpleReply(handle: handle, error: error, into: &buffer)
    return buffer
  }
}

/// One `base:allocation` descriptor of a block status reply: a length in bytes and its state.
public struct NBDExtent: Hashable, Sendable {
  public var length: UInt32
  public var flags: NBDBlockState

  public init(length: UInt32, flags: NBDBlockState) {
    self.length = length
    self.flags = flags
  }

  /// Appends the descriptors as they go on the wire: length 32, status flags 32 each.
  public static func write(_ extents: [NBDExtent], into buffer: inout ByteBuffer) {
    for e in extents {
      buffer.writeInteger(e.length)
      buffer.writeInteger(e.flags.rawValue)
    }
  }
}

/// Structured reply chunks — proto.md "Structured reply chunk message" and "Structured reply
/// types". Every reply here is one chunk with `NBD_REPLY_FLAG_DONE`.
extension NBDReplyEncoder {
  /// The 20-byte chunk header: magic, flags, type, cookie, payload length.
  public static func writeChunkHeader(
    handle: UInt64, type: NBDReplyType, flags: NBDReplyFlags = .done, payloadLength: Int, into buffer: inout ByteBuffer
  ) {
    buffer.writeInteger(NBDMagic.structuredReply)
    buffer.writeInteger(flags.rawValue)
    buffer.writeInteger(type.rawValue)
    buffer.writeInteger(handle)
    buffer.writeInteger(UInt32(payloadLength))
  }

  /// `NBD_REPLY_TYPE_OFFSET_DATA` for a whole read: header and offset (28 bytes); the
  /// `dataLength` bytes of data follow, written by the caller without a copy.
  public static func writeReadChunk(handle: UInt64, offset: UInt64, dataLength: Int, into buffer: inout ByteBuffer) {
    writeChunkHeader(handle: handle, type: .offsetData, payloadLength: 8 + dataLength, into: &buffer)
    buffer.writeInteger(offset)
  }

  /// `NBD_REPLY_TYPE_ERROR`: the reply to a read or block status that failed (a simple
  /// reply is not allowed for a read once structured replies are on).
  public static func writeErrorChunk(handle: UInt64, error: NBDErrno, message: String = "", into buffer: inout ByteBuffer) {
    let text = message.utf8.prefix(NBDLimits.maxStringLength)
    writeChunkHeader(handle: handle, type: .error, payloadLength: 6 + text.count, into: &buffer)
    buffer.writeInteger(error.rawValue)
    buffer.writeInteger(UInt16(text.count))
    buffer.writeBytes(text)
  }

  /// `NBD_REPLY_TYPE_BLOCK_STATUS` for one metadata context; `descriptors` holds the
  /// extents as `NBDExtent.write` lays them out.
  public static func writeBlockStatus(
    handle: UInt64, context: UInt32, descriptors: ByteBuffer, into buffer: inout ByteBuffer
  ) {
    writeChunkHeader(handle: handle, type: .blockStatus, payloadLength: 4 + descriptors.readableBytes, into: &buffer)
    buffer.writeInteger(context)
    buffer.writeImmutableBuffer(descriptors)
  }
}

extension NBDProtocolError: LunbridgeError {
  public var errorCode: String {
    switch self {
    case .badRequestMagic: return "nbd.bad-request-magic"
    case .writePayloadTooLarge: return "nbd.write-payload-too-large"
    case .decoderFailed: return "nbd.decoder-failed"
    }
  }
  public var failureClass: FailureClass { .protocolError }
}
