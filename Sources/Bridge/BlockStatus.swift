import NBDProtocol
import NIOCore
import SCSI

/// NBD_CMD_BLOCK_STATUS (`base:allocation`) answered from GET LBA STATUS. Pure.
enum BlockStatus {
  /// The extents of the `blocks` blocks from `lba` on, as the descriptors describe them:
  /// deallocated blocks are holes, and read as zeros when the LU says so (LBPRZ); anchored
  /// ones have storage but read as zeros under LBPRZ; mapped ones are data. Runs of the
  /// same state are merged, and nothing goes beyond the request. The answer stops at the
  /// first gap, overlap or descriptor that does not continue where the last one ended
  /// (the client asks again for the rest). With nothing usable, the whole range is
  /// reported as data: "allocated, or the server could not tell" is always true.
  /// `one` (NBD_CMD_FLAG_REQ_ONE): only the first extent.
  static func extents(
    _ status: LBAStatus, lba: UInt64, blocks: UInt32, blockSize: Int, unmappedReadsZero: Bool, one: Bool
  ) -> [NBDExtent] {
    let bs = UInt64(blockSize)
    let end = lba + UInt64(blocks)
    var next = lba
    var extents: [NBDExtent] = []
    for d in status.descriptors where next < end {
      let (stop, overflow) = d.lba.addingReportingOverflow(UInt64(d.blocks))
      guard !overflow, d.lba <= next, stop > next else { break }
      let covered = min(stop, end)
      let flags: NBDBlockState
      switch d.provisioning {
      case .deallocated: flags = unmappedReadsZero ? [.hole, .zero] : [.hole]
      case .anchored: flags = unmappedReadsZero ? [.zero] : []
      case .mapped, .reserved: flags = []
      }
      let length = UInt32((covered - next) * bs)
      if let last = extents.last, last.flags == flags {
        extents[extents.count - 1].length += length
      } else {
        extents.append(NBDExtent(length: length, flags: flags))
      }
      next = covered
    }
    if extents.isEmpty { return [allocated(blocks: blocks, blockSize: blockSize)] }
    return one ? [extents[0]] : extents
  }

  /// The whole range as data: for an LU without thin provisioning, or one that does not
  /// know GET LBA STATUS.
  static func allocated(blocks: UInt32, blockSize: Int) -> NBDExtent {
    NBDExtent(length: UInt32(UInt64(blocks) * UInt64(blockSize)), flags: [])
  }
}

extension BlockStatus {
  /// The descriptors as they go into the reply (`NBDReplyEncoder.writeBlockStatus`).
  static func encoded(_ extents: [NBDExtent]) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.reserveCapacity(8 * extents.count)
    NBDExtent.write(extents, into: &buffer)
    return buffer
  }

  /// The reply payload saying every block of the range is data.
  static func allData(blocks: UInt32, blockSize: Int) -> [ByteBuffer] {
    [encoded([allocated(blocks: blocks, blockSize: blockSize)])]
  }
}
