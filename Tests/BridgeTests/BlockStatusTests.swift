import NBDProtocol
import SCSI
import XCTest

@testable import Bridge

/// GET LBA STATUS data -> NBD base:allocation extents, as input -> expected lines.
final class BlockStatusTests: XCTestCase {
  typealias D = LBAStatus.Descriptor

  func extents(
    _ descriptors: [D], lba: UInt64 = 0, blocks: UInt32, zero: Bool = true, one: Bool = false
  ) throws -> [NBDExtent] {
    // Through the wire format, so the parser is in the loop.
    let status = try LBAStatus(LBAStatus.bytes(descriptors))
    XCTAssertEqual(status.descriptors, descriptors)
    return BlockStatus.extents(status, lba: lba, blocks: blocks, blockSize: 512, unmappedReadsZero: zero, one: one)
  }

  func e(_ length: UInt32, _ flags: NBDBlockState = []) -> NBDExtent { NBDExtent(length: length, flags: flags) }

  func testMappedAndDeallocatedRunsBecomeDataAndHoles() throws {
    let d = [
      D(lba: 0, blocks: 16, provisioning: .deallocated), D(lba: 16, blocks: 8, provisioning: .mapped),
      D(lba: 24, blocks: 1000, provisioning: .deallocated),
    ]
    XCTAssertEqual(try extents(d, blocks: 64), [e(8192, [.hole, .zero]), e(4096), e(20480, [.hole, .zero])])
    // Without LBPRZ a hole is not known to read as zeros; anchored blocks have storage.
    XCTAssertEqual(try extents(d, blocks: 64, zero: false), [e(8192, .hole), e(4096), e(20480, .hole)])
    let anchored = [D(lba: 0, blocks: 8, provisioning: .anchored), D(lba: 8, blocks: 8, provisioning: .mapped)]
    XCTAssertEqual(try extents(anchored, blocks: 16), [e(4096, .zero), e(4096)])
    XCTAssertEqual(try extents(anchored, blocks: 16, zero: false), [e(8192)], "same state merged")
  }

  func testTheAnswerStaysInsideTheRequestAndStartsAtItsFirstBlock() throws {
    // The first descriptor may start before the request; the last may run past it.
    let d = [D(lba: 90, blocks: 20, provisioning: .mapped), D(lba: 110, blocks: 100, provisioning: .deallocated)]
    XCTAssertEqual(try extents(d, lba: 100, blocks: 20), [e(5120), e(5120, [.hole, .zero])])
    XCTAssertEqual(try extents(d, lba: 100, blocks: 5), [e(2560)])
    XCTAssertEqual(try extents(d, lba: 100, blocks: 20, one: true), [e(5120)], "REQ_ONE: the first extent only")
  }

  func testGapsOverlapsAndEmptyAnswersAreNotBelieved() throws {
    // A descriptor that does not continue where the last ended: stop there (the client
    // asks again for the rest).
    let gap = [D(lba: 0, blocks: 8, provisioning: .deallocated), D(lba: 10, blocks: 8, provisioning: .mapped)]
    XCTAssertEqual(try extents(gap, blocks: 32), [e(4096, [.hole, .zero])])
    // Nothing that covers the first block: the whole range is reported as data.
    XCTAssertEqual(try extents([D(lba: 4, blocks: 8, provisioning: .deallocated)], blocks: 32), [e(16384)])
    XCTAssertEqual(try extents([], blocks: 32), [e(16384)])
    XCTAssertEqual(try extents([D(lba: 0, blocks: 0, provisioning: .deallocated)], blocks: 32), [e(16384)])
    let huge = [D(lba: UInt64.max - 1, blocks: 8, provisioning: .deallocated)]
    XCTAssertEqual(try extents(huge, lba: UInt64.max - 1, blocks: 1), [e(512)], "overflowing descriptor ignored")
  }

  func testParserKeepsWholeDescriptorsOnly() throws {
    var bytes = LBAStatus.bytes([D(lba: 7, blocks: 9, provisioning: .reserved(5)), D(lba: 16, blocks: 1, provisioning: .mapped)])
    XCTAssertEqual(try LBAStatus(bytes).descriptors.count, 2)
    bytes.removeLast(3)  // cut by the allocation length
    XCTAssertEqual(try LBAStatus(bytes).descriptors, [D(lba: 7, blocks: 9, provisioning: .reserved(5))])
    XCTAssertThrowsError(try LBAStatus([0, 0, 0]))
    // PARAMETER DATA LENGTH smaller than the data: only what it names counts.
    var short = LBAStatus.bytes([D(lba: 0, blocks: 1, provisioning: .mapped), D(lba: 1, blocks: 1, provisioning: .mapped)])
    short[3] = 20
    XCTAssertEqual(try LBAStatus(short).descriptors.count, 1)
  }

  func testGetLBAStatusCDB() {
    XCTAssertEqual(
      CDB.getLBAStatus(lba: 0x0102_0304_0506_0708, allocationLength: 4104),
      [0x9E, 0x12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x10, 0x08, 0, 0])
  }
}

extension LBAStatus {
  /// GET LBA STATUS parameter data for `descriptors` (SBC-3 5.6: an 8-byte header whose
  /// first four bytes give the length that follows, then 16 bytes per descriptor: LBA,
  /// block count, provisioning status in the low four bits of byte 12).
  static func bytes(_ descriptors: [Descriptor]) -> [UInt8] {
    func bigEndian<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
    var b = bigEndian(UInt32(4 + 16 * descriptors.count)) + [0, 0, 0, 0]
    for d in descriptors {
      let status: UInt8
      switch d.provisioning {
      case .mapped: status = 0
      case .deallocated: status = 1
      case .anchored: status = 2
      case .reserved(let code): status = code & 0x0F
      }
      b += bigEndian(d.lba) + bigEndian(d.blocks) + [status, 0, 0, 0]
    }
    return b
  }
}
