/// Splits a block range into per-command chunks.
///
/// `maxBlocksPerCommand` is usually the device's MAXIMUM TRANSFER LENGTH
/// (VPD 0xB0 bytes 8-11, SBC-3 6.6.3), possibly lowered by the initiator's
/// own byte limit. 0 means the device reports no limit; the splitter then
/// uses `defaultMaxBlocks` (65535, the largest READ(10)/WRITE(10) TRANSFER
/// LENGTH, SBC-3 Table 40), which also keeps a single command at or under
/// 32 MiB with 512-byte blocks.
public struct TransferSplitter: Sendable, Equatable {
  public static let defaultMaxBlocks: UInt32 = 0xFFFF

  /// The effective limit (never 0).
  public let maxBlocksPerCommand: UInt32

  public init(maxBlocksPerCommand: UInt32) {
    self.maxBlocksPerCommand = maxBlocksPerCommand == 0 ? Self.defaultMaxBlocks : maxBlocksPerCommand
  }

  /// Limit from the Block Limits page and an optional byte cap (e.g. what the
  /// initiator is willing to buffer): the smaller of MAXIMUM TRANSFER LENGTH
  /// (0 = none) and `maxBytes / blockLength`, at least 1 block.
  public init(blockLimits: BlockLimits?, blockLength: UInt32, maxBytes: UInt64? = nil) {
    var limit = UInt64(blockLimits?.maximumTransferLength ?? 0)
    if let maxBytes, blockLength > 0 {
      let byBytes = max(1, maxBytes / UInt64(blockLength))
      limit = limit == 0 ? byBytes : min(limit, byBytes)
    }
    self.init(maxBlocksPerCommand: UInt32(min(limit, UInt64(UInt32.max))))
  }

  /// Chunks of at most `maxBlocksPerCommand` blocks covering
  /// [lba, lba + blocks), in order. Empty for 0 blocks. A range that would
  /// run past LBA 2^64 - 1 is cut at the end of the address space. The
  /// result has ceil(blocks / max) entries, so callers should bound `blocks`.
  public func split(lba: UInt64, blocks: UInt64) -> [(lba: UInt64, blocks: UInt32)] {
    var out: [(lba: UInt64, blocks: UInt32)] = []
    var next = lba
    var remaining = min(blocks, UInt64.max - lba)  // blocks addressable from lba
    if remaining < blocks { remaining += 1 }  // the last LBA itself is addressable
    let step = UInt64(maxBlocksPerCommand)
    out.reserveCapacity(Int(min(remaining / step + 1, 1 << 16)))
    while remaining > 0 {
      let n = min(remaining, step)
      out.append((lba: next, blocks: UInt32(n)))
      remaining -= n
      if remaining > 0 { next += n }
    }
    return out
  }
}

/// `TransferSplitter(maxBlocksPerCommand:).split(lba:blocks:)`; a maximum of 0
/// means "no device limit" and uses `TransferSplitter.defaultMaxBlocks`.
public func splitRange(lba: UInt64, blocks: UInt64, maxBlocksPerCommand: UInt32) -> [(lba: UInt64, blocks: UInt32)] {
  TransferSplitter(maxBlocksPerCommand: maxBlocksPerCommand).split(lba: lba, blocks: blocks)
}
