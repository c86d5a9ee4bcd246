import NIOCore

/// The 48-byte Basic Header Segment (RFC 7143 section 11.2.1), held as plain fields so a
/// PDU header costs no allocation. Bytes 20...47 are seven opcode-specific words
/// (`word5` ... `word11`); the typed accessors in `BasicHeaderSegment+Fields.swift`
/// name them per opcode.
public struct BasicHeaderSegment: Equatable, Sendable {
  public static let length = 48

  public var opcode: Opcode
  /// The I bit: an immediate PDU does not advance CmdSN (RFC 7143 section 4.2.2.1).
  public var immediate: Bool
  /// Byte 1: the F bit and opcode-specific flags.
  public var flags: UInt8
  public var byte2: UInt8
  public var byte3: UInt8
  /// TotalAHSLength in 4-byte words; set by the encoder from the PDU's AHS.
  public var totalAHSLength: UInt8
  /// DataSegmentLength (24 bits, padding not counted); set by the encoder from the data.
  public var dataSegmentLength: UInt32
  /// Bytes 8...15: the LUN, or ISID and TSIH in login PDUs.
  public var lun: UInt64
  public var initiatorTaskTag: UInt32
  public var word5: UInt32
  public var word6: UInt32
  public var word7: UInt32
  public var word8: UInt32
  public var word9: UInt32
  public var word10: UInt32
  public var word11: UInt32

  public init(opcode: Opcode, immediate: Bool = false, flags: UInt8 = 0) {
    self.opcode = opcode
    self.immediate = immediate
    self.flags = flags
    self.byte2 = 0
    self.byte3 = 0
    self.totalAHSLength = 0
    self.dataSegmentLength = 0
    self.lun = 0
    self.initiatorTaskTag = 0
    self.word5 = 0
    self.word6 = 0
    self.word7 = 0
    self.word8 = 0
    self.word9 = 0
    self.word10 = 0
    self.word11 = 0
  }

  /// Writes the 48 bytes, big-endian, at the buffer's writer index.
  @inlinable
  public func write(to buffer: inout ByteBuffer) {
    buffer.writeMultipleIntegers(
      (immediate ? 0x40 : 0) | opcode.rawValue, flags, byte2, byte3,
      (UInt32(totalAHSLength) << 24) | (dataSegmentLength & 0x00ff_ffff),
      lun, initiatorTaskTag, word5, word6, word7, word8, word9, word10, word11)
  }

  /// Reads 48 bytes; nil when fewer are readable.
  @inlinable
  public static func read(from buffer: inout ByteBuffer) -> BasicHeaderSegment? {
    guard
      let (b0, flags, b2, b3, lenWord, lun, itt, w5, w6, w7, w8, w9, w10, w11) =
        buffer.readMultipleIntegers(
          as: (
            UInt8, UInt8, UInt8, UInt8, UInt32, UInt64, UInt32, UInt32, UInt32, UInt32, UInt32,
            UInt32, UInt32, UInt32
          ).self)
    else { return nil }
    var h = BasicHeaderSegment(opcode: Opcode(rawValue: b0), immediate: b0 & 0x40 != 0, flags: flags)
    h.byte2 = b2
    h.byte3 = b3
    h.totalAHSLength = UInt8(lenWord >> 24)
    h.dataSegmentLength = lenWord & 0x00ff_ffff
    h.lun = lun
    h.initiatorTaskTag = itt
    h.word5 = w5
    h.word6 = w6
    h.word7 = w7
    h.word8 = w8
    h.word9 = w9
    h.word10 = w10
    h.word11 = w11
    return h
  }
}

/// A whole PDU: header, optional Additional Header Segments, and data segment.
/// Digests and padding are added by `PDUEncoder` and removed by `PDUFramer`.
public struct ISCSIPDU: Sendable {
  public var header: BasicHeaderSegment
  /// The AHS bytes, a multiple of 4 in length (RFC 7143 section 11.2.2).
  public var ahs: ByteBuffer?
  public var data: ByteBuffer

  public init(header: BasicHeaderSegment, ahs: ByteBuffer? = nil, data: ByteBuffer = ByteBuffer()) {
    self.header = header
    self.ahs = ahs
    self.data = data
  }

  public var opcode: Opcode { header.opcode }
}

/// The "F" (final) bit of byte 1, shared by most PDUs.
public let finalFlag: UInt8 = 0x80
/// The reserved Initiator/Target Transfer Tag value (RFC 7143 section 11.18, 11.19).
public let reservedTag: UInt32 = 0xffff_ffff
