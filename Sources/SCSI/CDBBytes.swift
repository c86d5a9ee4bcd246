/// A CDB of at most 16 bytes held inline: no heap array per command. The bytes are kept
/// as four big-endian 32-bit words, the layout of the CDB field of an iSCSI SCSI Command
/// PDU (RFC 7143 section 11.3.5), so the header takes them as they are.
public struct CDBBytes: Sendable, Hashable {
  /// Bytes 0-3, 4-7, 8-11, 12-15, most significant byte first; bytes past `count` are 0.
  public private(set) var words: (UInt32, UInt32, UInt32, UInt32)
  /// The CDB's length in bytes (6, 10, 12 or 16 for the commands lunbridge sends).
  public let count: Int

  /// The longest CDB that fits the SCSI Command PDU without an extended-CDB AHS.
  public static let capacity = 16

  /// A CDB of `count` zero bytes.
  public init(count: Int) {
    precondition(count >= 0 && count <= Self.capacity, "CDBs longer than 16 bytes need an extended-CDB AHS")
    self.count = count
    self.words = (0, 0, 0, 0)
  }

  public init(_ bytes: [UInt8]) {
    self.init(count: bytes.count)
    for (i, b) in bytes.enumerated() { self[i] = b }
  }

  public subscript(i: Int) -> UInt8 {
    get {
      precondition(i >= 0 && i < count, "CDB index out of range")
      return UInt8(truncatingIfNeeded: word(i / 4) >> (24 - 8 * UInt32(i % 4)))
    }
    set {
      precondition(i >= 0 && i < count, "CDB index out of range")
      let shift = 24 - 8 * UInt32(i % 4)
      let w = word(i / 4) & ~(0xff << shift) | UInt32(newValue) << shift
      switch i / 4 {
      case 0: words.0 = w
      case 1: words.1 = w
      case 2: words.2 = w
      default: words.3 = w
      }
    }
  }

  /// The operation code (byte 0), nil for an empty CDB.
  public var opcode: UInt8? { count > 0 ? self[0] : nil }

  public var array: [UInt8] { (0..<count).map { self[$0] } }

  private func word(_ n: Int) -> UInt32 {
    switch n {
    case 0: return words.0
    case 1: return words.1
    case 2: return words.2
    default: return words.3
    }
  }

  public static func == (a: CDBBytes, b: CDBBytes) -> Bool {
    a.count == b.count && a.words.0 == b.words.0 && a.words.1 == b.words.1 && a.words.2 == b.words.2
      && a.words.3 == b.words.3
  }

  public func hash(into hasher: inout Hasher) {
    hasher.combine(count)
    hasher.combine(words.0)
    hasher.combine(words.1)
    hasher.combine(words.2)
    hasher.combine(words.3)
  }

  // MARK: The I/O path's READ and WRITE

  /// READ(10) or READ(16) as `CDB.read(lba:blocks:fua:prefer16:)`, without an array.
  public static func read(lba: UInt64, blocks: UInt32, fua: Bool = false, prefer16: Bool = false) -> CDBBytes {
    readWrite(CDB.Opcode.read10, CDB.Opcode.read16, lba: lba, blocks: blocks, fua: fua, prefer16: prefer16)
  }

  /// WRITE(10) or WRITE(16) as `CDB.write(lba:blocks:fua:prefer16:)`, without an array.
  public static func write(lba: UInt64, blocks: UInt32, fua: Bool = false, prefer16: Bool = false) -> CDBBytes {
    readWrite(CDB.Opcode.write10, CDB.Opcode.write16, lba: lba, blocks: blocks, fua: fua, prefer16: prefer16)
  }

  /// SBC-3 Tables 40/42 (10) and 95/97 (16): opcode, byte 1 with FUA (bit 3), the LBA in
  /// bytes 2-5 (10) or 2-9 (16), the block count in bytes 7-8 (10) or 10-13 (16).
  private static func readWrite(
    _ op10: UInt8, _ op16: UInt8, lba: UInt64, blocks: UInt32, fua: Bool, prefer16: Bool
  ) -> CDBBytes {
    let byte1: UInt32 = fua ? UInt32(CDB.fuaBit) : 0
    if CDB.needs16(lba: lba, blocks: blocks, prefer16: prefer16) {
      var c = CDBBytes(count: 16)
      c.words = (
        UInt32(op16) << 24 | byte1 << 16 | UInt32(truncatingIfNeeded: lba >> 48),
        UInt32(truncatingIfNeeded: lba >> 16),
        UInt32(truncatingIfNeeded: lba) << 16 | blocks >> 16,
        (blocks & 0xffff) << 16
      )
      return c
    }
    var c = CDBBytes(count: 10)
    let lba32 = UInt32(truncatingIfNeeded: lba)
    c.words = (
      UInt32(op10) << 24 | byte1 << 16 | lba32 >> 16,
      (lba32 & 0xffff) << 16 | (blocks >> 8 & 0xff),
      (blocks & 0xff) << 24,
      0
    )
    return c
  }
}
