import XCTest

@testable import SCSI

final class SplittingTests: XCTestCase {
  private func pairs(_ r: [(lba: UInt64, blocks: UInt32)]) -> [[UInt64]] {
    r.map { [$0.lba, UInt64($0.blocks)] }
  }

  func testEmptyRange() {
    XCTAssertTrue(splitRange(lba: 100, blocks: 0, maxBlocksPerCommand: 8).isEmpty)
  }

  func testExactMultiple() {
    XCTAssertEqual(pairs(splitRange(lba: 10, blocks: 16, maxBlocksPerCommand: 8)), [[10, 8], [18, 8]])
  }

  func testRemainder() {
    XCTAssertEqual(
      pairs(splitRange(lba: 0, blocks: 17, maxBlocksPerCommand: 8)), [[0, 8], [8, 8], [16, 1]])
  }

  func testSmallerThanLimit() {
    XCTAssertEqual(pairs(splitRange(lba: 5, blocks: 3, maxBlocksPerCommand: 8)), [[5, 3]])
  }

  func testZeroMaxMeansDefault() {
    let r = splitRange(lba: 0, blocks: 0x10000, maxBlocksPerCommand: 0)
    XCTAssertEqual(pairs(r), [[0, 0xFFFF], [0xFFFF, 1]])
    XCTAssertEqual(TransferSplitter(maxBlocksPerCommand: 0).maxBlocksPerCommand, TransferSplitter.defaultMaxBlocks)
  }

  func testLargeLimitAllowsSixteenByteChunks() {
    let r = splitRange(lba: 0xFFFF_FFFF, blocks: 0x2_0000, maxBlocksPerCommand: 0x1_0000)
    XCTAssertEqual(pairs(r), [[0xFFFF_FFFF, 0x1_0000], [0x1_0000_FFFF, 0x1_0000]])
  }

  func testEndOfAddressSpaceDoesNotTrap() {
    let r = splitRange(lba: UInt64.max - 1, blocks: 10, maxBlocksPerCommand: 1)
    XCTAssertEqual(pairs(r), [[UInt64.max - 1, 1], [UInt64.max, 1]])
    XCTAssertEqual(pairs(splitRange(lba: UInt64.max, blocks: 1, maxBlocksPerCommand: 4)), [[UInt64.max, 1]])
  }

  func testSplitterFromBlockLimitsAndByteCap() throws {
    var page = [UInt8](repeating: 0, count: 64)
    page[1] = 0xB0
    page[3] = 0x3C
    page[11] = 0x80  // MAXIMUM TRANSFER LENGTH = 128 blocks (bytes 8-11)
    let limits = try BlockLimits(page)
    XCTAssertEqual(TransferSplitter(blockLimits: limits, blockLength: 512).maxBlocksPerCommand, 128)
    // 32 KiB / 512 = 64 < 128.
    XCTAssertEqual(
      TransferSplitter(blockLimits: limits, blockLength: 512, maxBytes: 32768).maxBlocksPerCommand, 64)
    // No device limit: byte cap alone.
    XCTAssertEqual(TransferSplitter(blockLimits: nil, blockLength: 4096, maxBytes: 1 << 20).maxBlocksPerCommand, 256)
    // Byte cap below one block still allows 1 block.
    XCTAssertEqual(TransferSplitter(blockLimits: nil, blockLength: 4096, maxBytes: 100).maxBlocksPerCommand, 1)
    XCTAssertEqual(TransferSplitter(blockLimits: nil, blockLength: 512).maxBlocksPerCommand, 0xFFFF)
  }
}
