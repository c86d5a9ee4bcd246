import NIOCore

/// Digest and size settings that frame PDUs on one connection. They change once, when the
/// login phase ends (RFC 7143 section 13.1: digests start with the first PDU of the full
/// feature phase).
public struct FramingParameters: Equatable, Sendable {
  public var headerDigest: Bool
  public var dataDigest: Bool
  /// The largest data segment we accept: the MaxRecvDataSegmentLength we declared.
  public var maxRecvDataSegmentLength: Int
  /// The largest data segment we may send: what the target declared (8192 if it did not).
  public var maxSendDataSegmentLength: Int

  public init(
    headerDigest: Bool = false, dataDigest: Bool = false, maxRecvDataSegmentLength: Int = 8192,
    maxSendDataSegmentLength: Int = 8192
  ) {
    self.headerDigest = headerDigest
    self.dataDigest = dataDigest
    self.maxRecvDataSegmentLength = maxRecvDataSegmentLength
    self.maxSendDataSegmentLength = maxSendDataSegmentLength
  }

  /// The login phase: no digests, 8192-byte segments (RFC 7143 section 13.12).
  public static let login = FramingParameters()
}

/// Cuts PDUs out of a byte stream. Pure: feed it the cumulated bytes, it returns whole
/// PDUs whose data segments are slices of the input (no copy). Every length is checked
/// against the negotiated limits before anything waits for or reserves that many bytes.
public struct PDUFramer: Sendable {
  public var parameters: FramingParameters

  public init(parameters: FramingParameters = .login) {
    self.parameters = parameters
  }

  /// Returns the next whole PDU, or nil when more bytes are needed. Throws on a PDU that
  /// breaks the framing rules; the connection must then be dropped.
  public func next(from buffer: inout ByteBuffer) throws -> ISCSIPDU? {
    guard buffer.readableBytes >= BasicHeaderSegment.length else { return nil }
    let start = buffer.readerIndex
    var peek = buffer
    guard let header = BasicHeaderSegment.read(from: &peek) else { return nil }

    guard header.opcode.isTargetOpcode else {
      throw ISCSIError(.protocolViolation, "target sent a PDU with unknown or initiator opcode \(header.opcode)")
    }
    let dataLength = Int(header.dataSegmentLength)
    // A Login Response can carry up to 8192 bytes even before anything is negotiated.
    let limit = max(parameters.maxRecvDataSegmentLength, 8192)
    guard dataLength <= limit else {
      throw ISCSIError(
        .protocolViolation,
        "target sent a \(header.opcode) with DataSegmentLength \(dataLength), beyond the \(limit) bytes we declared")
    }
    let layout = layout(totalAHSLength: header.totalAHSLength, dataSegmentLength: header.dataSegmentLength)
    let total = layout.total
    guard buffer.readableBytes >= total else {
      // Room for the whole PDU now (its length is within the limits checked above).
      var whole: ByteBuffer? = buffer
      whole.reserveForMessage(total)
      buffer = whole!
      return nil
    }

    if parameters.headerDigest {
      let covered = buffer.getSlice(at: start, length: BasicHeaderSegment.length + layout.ahs)!
      let expected = CRC32C.checksum(covered)
      let got = buffer.getInteger(at: start + BasicHeaderSegment.length + layout.ahs, endianness: .little, as: UInt32.self)!
      guard expected == got else {
        throw ISCSIError(.digestMismatch, "header digest mismatch on a \(header.opcode) from the target")
      }
    }
    var ahs: ByteBuffer? = nil
    if layout.ahs > 0 {
      ahs = buffer.getSlice(at: start + BasicHeaderSegment.length, length: layout.ahs)
    }
    let dataStart = start + BasicHeaderSegment.length + layout.ahs + layout.headerDigest
    let data = buffer.getSlice(at: dataStart, length: dataLength)!
    if layout.dataDigest > 0 {
      let expected = CRC32C.checksum(data, padding: layout.paddedData - dataLength)
      let got = buffer.getInteger(at: dataStart + layout.paddedData, endianness: .little, as: UInt32.self)!
      guard expected == got else {
        throw ISCSIError(.digestMismatch, "data digest mismatch on a \(header.opcode) from the target")
      }
    }
    buffer.moveReaderIndex(to: start + total)
    return ISCSIPDU(header: header, ahs: ahs, data: data)
  }

  /// The length on the wire of the PDU whose header starts at the buffer's reader index,
  /// or nil while its header is not all there. Not checked against the limits (`next` does
  /// that before anything is reserved for it). Reads only the two length fields (BHS bytes
  /// 4 to 7).
  public func lengthOfPDU(at buffer: ByteBuffer) -> Int? {
    guard buffer.readableBytes >= BasicHeaderSegment.length,
      let lengths = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt32.self)
    else { return nil }
    return layout(totalAHSLength: UInt8(lengths >> 24), dataSegmentLength: lengths & 0xff_ffff).total
  }

  /// Where the parts of a PDU lie on the wire, in bytes: AHS, header digest, data segment
  /// with its padding, data digest, and all of it with the 48-byte BHS.
  struct Layout {
    var ahs: Int
    var headerDigest: Int
    var paddedData: Int
    var dataDigest: Int
    var total: Int { BasicHeaderSegment.length + ahs + headerDigest + paddedData + dataDigest }
  }

  func layout(totalAHSLength: UInt8, dataSegmentLength: UInt32) -> Layout {
    let dataLength = Int(dataSegmentLength)
    return Layout(
      ahs: Int(totalAHSLength) * 4,
      headerDigest: parameters.headerDigest ? 4 : 0,
      paddedData: (dataLength + 3) & ~3,
      dataDigest: (parameters.dataDigest && dataLength > 0) ? 4 : 0)
  }
}

/// Turns PDUs into bytes. The header part (BHS, AHS, header digest) is written into a
/// buffer; the data segment is handed back untouched so the caller can write it without a
/// copy, followed by `trailer` (padding and data digest).
public struct PDUEncoder: Sendable {
  public var parameters: FramingParameters

  public init(parameters: FramingParameters = .login) {
    self.parameters = parameters
  }

  /// Writes BHS + AHS + header digest of `pdu` into `out`, after fixing the length fields.
  public func writeHeader(_ pdu: ISCSIPDU, into out: inout ByteBuffer) {
    var header = pdu.header
    header.dataSegmentLength = UInt32(pdu.data.readableBytes)
    header.totalAHSLength = UInt8((pdu.ahs?.readableBytes ?? 0) / 4)
    let start = out.writerIndex
    header.write(to: &out)
    if var ahs = pdu.ahs { out.writeBuffer(&ahs) }
    if parameters.headerDigest {
      // Checksum in place: a slice of `out` alive across the write below would make
      // `out` shared, and the write would copy the whole buffer (copy-on-write).
      let digest = out.withUnsafeReadableBytes { bytes in
        CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[(start - out.readerIndex)...]))
      }
      out.writeInteger(digest, endianness: .little)
    }
  }

  /// Writes the padding and data digest that follow `data`.
  public func writeTrailer(for data: ByteBuffer, into out: inout ByteBuffer) {
    let length = data.readableBytes
    guard length > 0 else { return }
    let pad = (4 - length % 4) % 4
    if pad > 0 { out.writeRepeatingByte(0, count: pad) }
    if parameters.dataDigest {
      out.writeInteger(CRC32C.checksum(data, padding: pad), endianness: .little)
    }
  }

  /// Everything in one buffer (copies the data): for tests, login and small PDUs.
  public func encode(_ pdu: ISCSIPDU, into out: inout ByteBuffer) {
    writeHeader(pdu, into: &out)
    var data = pdu.data
    out.writeBuffer(&data)
    writeTrailer(for: pdu.data, into: &out)
  }
}
