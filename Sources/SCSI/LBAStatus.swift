/// GET LBA STATUS parameter data (SBC-3 5.8.2, Tables 34 and 35): an 8-byte header
/// (PARAMETER DATA LENGTH in bytes 0-3, the bytes that follow it) and 16-byte descriptors,
/// each a run of blocks and its provisioning status. The first descriptor holds the
/// starting LBA of the command; the target returns as many as the allocation length holds.
public struct LBAStatus: Sendable, Equatable {
  /// PROVISIONING STATUS, byte 12 bits 3-0 of a descriptor (SBC-3 Table 36).
  public enum Provisioning: Sendable, Equatable {
    /// Mapped (or the target cannot tell): holds data.
    case mapped
    /// Deallocated: no storage behind it; reads give zeros when LBPRZ is set.
    case deallocated
    /// Anchored: storage reserved, no data written; reads give zeros when LBPRZ is set.
    case anchored
    /// A value SBC-3 reserves.
    case reserved(UInt8)

    init(_ code: UInt8) {
      switch code {
      case 0: self = .mapped
      case 1: self = .deallocated
      case 2: self = .anchored
      default: self = .reserved(code)
      }
    }
  }

  public struct Descriptor: Sendable, Equatable {
    /// LBA STATUS LOGICAL BLOCK ADDRESS, bytes 0-7.
    public var lba: UInt64
    /// NUMBER OF LOGICAL BLOCKS, bytes 8-11.
    public var blocks: UInt32
    public var provisioning: Provisioning

    public init(lba: UInt64, blocks: UInt32, provisioning: Provisioning) {
      self.lba = lba
      self.blocks = blocks
      self.provisioning = provisioning
    }
  }

  public let descriptors: [Descriptor]

  public init(descriptors: [Descriptor]) { self.descriptors = descriptors }

  /// Parses what the target sent; a descriptor cut short by the allocation length (or by
  /// the data) is left out.
  public init(_ bytes: [UInt8]) throws {
    try require(bytes, 8, "GET LBA STATUS data")
    let end = min(bytes.count, 4 + Int(be32(bytes, 0)))
    var list: [Descriptor] = []
    var i = 8
    while i + 16 <= end {
      list.append(
        Descriptor(lba: be64(bytes, i), blocks: be32(bytes, i + 8), provisioning: Provisioning(bytes[i + 12] & 0x0F)))
      i += 16
    }
    descriptors = list
  }
}
