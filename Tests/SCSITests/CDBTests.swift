import XCTest

@testable import SCSI

final class CDBTests: XCTestCase {
  func testTestUnitReady() {
    // SPC-4 6.47 Table 208: opcode 0x00, 6 bytes, everything else reserved.
    XCTAssertEqual(CDB.testUnitReady(), [0x00, 0, 0, 0, 0, 0])
  }

  func testInquiry() {
    // SPC-4 6.6.1 Table 142: EVPD=0, page 0, allocation length bytes 3-4 BE.
    XCTAssertEqual(CDB.inquiry(allocationLength: 36), [0x12, 0x00, 0x00, 0x00, 0x24, 0x00])
    XCTAssertEqual(CDB.inquiry(allocationLength: 0x1234), [0x12, 0x00, 0x00, 0x12, 0x34, 0x00])
  }

  func testInquiryVPD() {
    // EVPD = byte 1 bit 0, page code byte 2.
    XCTAssertEqual(
      CDB.inquiryVPD(page: 0x83, allocationLength: 0x0200), [0x12, 0x01, 0x83, 0x02, 0x00, 0x00])
    XCTAssertEqual(CDB.inquiryVPD(page: 0xB0, allocationLength: 64), [0x12, 0x01, 0xB0, 0x00, 0x40, 0x00])
  }

  func testReadCapacity10() {
    // SBC-3 5.15 Table 62: opcode 0x25, LBA 0, PMI 0.
    XCTAssertEqual(CDB.readCapacity10(), [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])
  }

  func testReadCapacity16() {
    // SBC-3 5.16 Table 64: 0x9E, service action 0x10, alloc length bytes 10-13.
    XCTAssertEqual(
      CDB.readCapacity16(),
      [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x20, 0, 0])
    XCTAssertEqual(
      CDB.readCapacity16(allocationLength: 0x0102_0304),
      [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0, 0])
  }

  func testRead10AndWrite10() {
    // SBC-3 Table 40/95: FUA byte 1 bit 3, LBA bytes 2-5, length bytes 7-8.
    XCTAssertEqual(
      CDB.read10(lba: 0x1122_3344, blocks: 0x0008),
      [0x28, 0x00, 0x11, 0x22, 0x33, 0x44, 0x00, 0x00, 0x08, 0x00])
    XCTAssertEqual(
      CDB.write10(lba: 0xDEAD_BEEF, blocks: 0xFFFF, fua: true),
      [0x2A, 0x08, 0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0xFF, 0xFF, 0x00])
    XCTAssertEqual(CDB.read10(lba: 0, blocks: 1, fua: true)[1], 0x08)
  }

  func testRead16AndWrite16() {
    // SBC-3 Table 42/97: FUA byte 1 bit 3, LBA bytes 2-9, length bytes 10-13.
    XCTAssertEqual(
      CDB.read16(lba: 0x0102_0304_0506_0708, blocks: 0x0A0B_0C0D),
      [0x88, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x0A, 0x0B, 0x0C, 0x0D, 0x00, 0x00])
    XCTAssertEqual(
      CDB.write16(lba: 0x1_0000_0000, blocks: 0x10000, fua: true),
      [0x8A, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00])
  }

  func testReadWriteChooses10Or16() {
    // Fits 10-byte: LBA <= 0xFFFFFFFF, blocks <= 0xFFFF.
    XCTAssertEqual(CDB.read(lba: 0xFFFF_FFFF, blocks: 0xFFFF), CDB.read10(lba: 0xFFFF_FFFF, blocks: 0xFFFF))
    XCTAssertEqual(CDB.write(lba: 7, blocks: 1, fua: true), CDB.write10(lba: 7, blocks: 1, fua: true))
    // LBA too large.
    XCTAssertEqual(CDB.read(lba: 0x1_0000_0000, blocks: 1), CDB.read16(lba: 0x1_0000_0000, blocks: 1))
    // Block count too large.
    XCTAssertEqual(CDB.write(lba: 0, blocks: 0x10000), CDB.write16(lba: 0, blocks: 0x10000))
    // Forced.
    XCTAssertEqual(CDB.read(lba: 0, blocks: 1, prefer16: true).count, 16)
    XCTAssertEqual(CDB.read(lba: 0, blocks: 1, fua: true, prefer16: true), CDB.read16(lba: 0, blocks: 1, fua: true))
    XCTAssertEqual(CDB.write(lba: 0, blocks: 1).count, 10)
  }

  func testSynchronizeCache() {
    // SBC-3 5.22 Table 110: 0x35, LBA bytes 2-5, blocks bytes 7-8.
    XCTAssertEqual(CDB.synchronizeCache10(), [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    XCTAssertEqual(
      CDB.synchronizeCache10(lba: 0x0000_0100, blocks: 0x0200),
      [0x35, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x02, 0x00, 0x00])
    // SBC-3 5.23 Table 111: 0x91, LBA bytes 2-9, blocks bytes 10-13.
    XCTAssertEqual(CDB.synchronizeCache16(), [0x91] + [UInt8](repeating: 0, count: 15))
    XCTAssertEqual(
      CDB.synchronizeCache16(lba: 0xAB, blocks: 0xCD),
      [0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0xAB, 0, 0, 0, 0xCD, 0, 0])
  }

  func testUnmap() throws {
    // SBC-3 5.28 Table 126: 0x42, parameter list length bytes 7-8.
    XCTAssertEqual(CDB.unmap(parameterListLength: 40), [0x42, 0, 0, 0, 0, 0, 0, 0x00, 0x28, 0])
    // SBC-3 Table 127/128: header (data length = 6 + 16n, descriptor length
    // = 16n), descriptors LBA(8) + blocks(4) + reserved(4).
    let list = try CDB.unmapParameterList(ranges: [(lba: 0x10, blocks: 0x20), (lba: 0x1_0000_0000, blocks: 1)])
    XCTAssertEqual(
      list,
      [
        0x00, 0x26, 0x00, 0x20, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0, 0, 0,
        0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0,
      ])
    XCTAssertEqual(try CDB.unmapParameterList(ranges: []), [0x00, 0x06, 0x00, 0x00, 0, 0, 0, 0])
  }

  func testUnmapTooManyDescriptorsThrows() {
    let ranges = [(lba: UInt64, blocks: UInt32)](
      repeating: (lba: 0, blocks: 1), count: CDB.maxUnmapDescriptorsPerList + 1)
    XCTAssertThrowsError(try CDB.unmapParameterList(ranges: ranges)) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .invalidArgument)
    }
    let max = [(lba: UInt64, blocks: UInt32)](
      repeating: (lba: 0, blocks: 1), count: CDB.maxUnmapDescriptorsPerList)
    XCTAssertEqual(try CDB.unmapParameterList(ranges: max).count, 8 + 16 * 4095)
  }

  func testWriteSame16() {
    // SBC-3 5.43 Table 153: byte 1 ANCHOR bit 4, UNMAP bit 3, NDOB bit 0 (SBC-4).
    XCTAssertEqual(
      CDB.writeSame16(lba: 0x0102, blocks: 0x0304, unmap: true),
      [0x93, 0x08, 0, 0, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0x03, 0x04, 0, 0])
    XCTAssertEqual(CDB.writeSame16(lba: 0, blocks: 1, unmap: false)[1], 0x00)
    XCTAssertEqual(CDB.writeSame16(lba: 0, blocks: 1, unmap: true, anchor: true)[1], 0x18)
    XCTAssertEqual(CDB.writeSame16(lba: 0, blocks: 1, unmap: true, noDataOut: true)[1], 0x09)
  }

  func testReportLuns() {
    // SPC-4 6.33 Table 180: 0xA0, 12 bytes, allocation length bytes 6-9.
    XCTAssertEqual(CDB.reportLuns(allocationLength: 0x1000), [0xA0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x10, 0x00, 0, 0])
  }

  func testModeSense() {
    // SPC-4 6.11 Table 166: DBD byte 1 bit 3, page byte 2, subpage 3, alloc 4.
    XCTAssertEqual(CDB.modeSense6(page: 0x08, allocationLength: 0xFF), [0x1A, 0x08, 0x08, 0x00, 0xFF, 0x00])
    XCTAssertEqual(
      CDB.modeSense6(page: 0x3F, subpage: 0xFF, allocationLength: 192, dbd: false),
      [0x1A, 0x00, 0x3F, 0xFF, 0xC0, 0x00])
    // SPC-4 6.12 Table 170: alloc length bytes 7-8.
    XCTAssertEqual(
      CDB.modeSense10(page: 0x08, allocationLength: 0x0100),
      [0x5A, 0x08, 0x08, 0x00, 0, 0, 0, 0x01, 0x00, 0x00])
    // PC bits (7-6) stay 0 (current values) even if a caller passes junk.
    XCTAssertEqual(CDB.modeSense10(page: 0xC8, allocationLength: 1, dbd: false)[2], 0x08)
  }

  func testReportTargetPortGroups() {
    // SPC-4 6.36 Table 203: 0xA3, service action 0x0A, alloc bytes 6-9.
    XCTAssertEqual(
      CDB.reportTargetPortGroups(allocationLength: 0x0001_0000),
      [0xA3, 0x0A, 0, 0, 0, 0, 0x00, 0x01, 0x00, 0x00, 0, 0])
    // PARAMETER DATA FORMAT 001b (extended header) in byte 1 bits 7-5.
    XCTAssertEqual(CDB.reportTargetPortGroups(allocationLength: 4096, extendedHeader: true)[1], 0x2A)
  }

  func testSetTargetPortGroups() {
    // SPC-4 6.44: 0xA4, service action 0x0A, parameter list length bytes 6-9; the list:
    // 4 reserved bytes, then (state, reserved, group) per descriptor.
    XCTAssertEqual(
      CDB.setTargetPortGroups(parameterListLength: 8), [0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0])
    XCTAssertEqual(
      CDB.setTargetPortGroupsParameterList(groups: [(group: 0x0114, state: 0)]), [0, 0, 0, 0, 0, 0, 0x01, 0x14])
  }
}

/// The inline CDBs of the I/O path carry the same bytes as the array builders.
final class CDBBytesTests: XCTestCase {
  func testReadAndWriteMatchTheArrayBuilders() {
    let cases: [(UInt64, UInt32, Bool, Bool)] = [
      (0, 1, false, false), (0x1234_5678, 0xabcd, true, false), (UInt64(UInt32.max), 0xffff, false, false),
      (UInt64(UInt32.max) + 1, 8, false, false), (0x0102_0304_0506_0708, 0x0a0b_0c0d, true, false),
      (7, 0x1_0000, false, false), (42, 8, true, true), (0xffff_ffff_ffff_fffe, 1, false, false),
    ]
    for (lba, blocks, fua, prefer16) in cases {
      let r = CDBBytes.read(lba: lba, blocks: blocks, fua: fua, prefer16: prefer16)
      XCTAssertEqual(r.array, CDB.read(lba: lba, blocks: blocks, fua: fua, prefer16: prefer16), "READ \(lba) \(blocks)")
      let w = CDBBytes.write(lba: lba, blocks: blocks, fua: fua, prefer16: prefer16)
      XCTAssertEqual(w.array, CDB.write(lba: lba, blocks: blocks, fua: fua, prefer16: prefer16), "WRITE \(lba) \(blocks)")
    }
  }

  func testBytesRoundTripAndPadWithZeros() {
    let bytes: [UInt8] = [0x12, 0x01, 0x83, 0x00, 0xff, 0x00]
    let c = CDBBytes(bytes)
    XCTAssertEqual(c.count, 6)
    XCTAssertEqual(c.array, bytes)
    XCTAssertEqual(c.opcode, 0x12)
    XCTAssertEqual(c.words.0, 0x1201_8300)
    XCTAssertEqual(c.words.1, 0xff00_0000)
    XCTAssertEqual(c.words.2, 0)
    XCTAssertEqual(CDBBytes(count: 0).opcode, nil)
    var d = CDBBytes(count: 16)
    d[15] = 0xaa
    d[0] = 0x88
    XCTAssertEqual(d.words.3, 0xaa)
    XCTAssertEqual(d, CDBBytes([0x88] + [UInt8](repeating: 0, count: 14) + [0xaa]))
  }
}
