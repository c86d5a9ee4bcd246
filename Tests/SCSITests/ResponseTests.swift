import XCTest

@testable import SCSI

final class ResponseTests: XCTestCase {
  // MARK: READ CAPACITY

  func testReadCapacity10() throws {
    // tgt, 1 GiB LU: last LBA 0x1FFFFF, 512-byte blocks (SBC-3 Table 63).
    let r = try ReadCapacity10([0x00, 0x1F, 0xFF, 0xFF, 0x00, 0x00, 0x02, 0x00])
    XCTAssertEqual(r.lastLBA, 0x1F_FFFF)
    XCTAssertEqual(r.blockLength, 512)
    XCTAssertEqual(r.blockCount, 0x20_0000)
    XCTAssertEqual(r.sizeBytes, 1 << 30)
    XCTAssertFalse(r.needsReadCapacity16)
    XCTAssertTrue(try ReadCapacity10([0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 2, 0]).needsReadCapacity16)
    XCTAssertThrowsError(try ReadCapacity10([0, 0, 0, 0, 0, 0, 2])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
  }

  func testReadCapacity16() throws {
    var b = [UInt8](repeating: 0, count: 32)
    b[0...7] = [0, 0, 0, 0x01, 0xFF, 0xFF, 0xFF, 0xFF]  // last LBA 0x1_FFFF_FFFF
    b[8...11] = [0, 0, 0x02, 0x00]  // 512
    b[12] = 0x03  // P_TYPE 001b (type 2), PROT_EN
    b[13] = 0x23  // P_I_EXPONENT 2, LB per PB exponent 3
    b[14] = 0xC1  // LBPME, LBPRZ, lowest aligned LBA high bits 0x01
    b[15] = 0x07
    let r = try ReadCapacity16(b)
    XCTAssertEqual(r.lastLBA, 0x1_FFFF_FFFF)
    XCTAssertEqual(r.blockLength, 512)
    XCTAssertEqual(r.blockCount, 0x2_0000_0000)
    XCTAssertEqual(r.sizeBytes, 1 << 42)
    XCTAssertTrue(r.protectionEnabled)
    XCTAssertEqual(r.protection, 2)
    XCTAssertEqual(r.protectionIntervalExponent, 2)
    XCTAssertEqual(r.logicalBlocksPerPhysicalBlockExponent, 3)
    XCTAssertEqual(r.physicalBlockLength, 4096)
    XCTAssertTrue(r.lbpme)
    XCTAssertTrue(r.lbprz)
    XCTAssertEqual(r.lowestAlignedLBA, 0x0107)
  }

  func testReadCapacity16PlainAndEdges() throws {
    // tgt without thin provisioning: everything past byte 11 zero.
    let plain = try ReadCapacity16([0, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, 0, 0, 0x10, 0x00] + [UInt8](repeating: 0, count: 20))
    XCTAssertNil(plain.protection)
    XCTAssertFalse(plain.lbpme)
    XCTAssertEqual(plain.physicalBlockLength, 4096)
    XCTAssertEqual(plain.sizeBytes, 0x20_0000 * 4096)
    // Only the 12 mandatory bytes.
    XCTAssertEqual(try ReadCapacity16([0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 2, 0]).blockCount, 10)
    // Saturates rather than traps.
    let huge = try ReadCapacity16([UInt8](repeating: 0xFF, count: 8) + [0, 0, 2, 0])
    XCTAssertEqual(huge.blockCount, UInt64.max)
    XCTAssertEqual(huge.sizeBytes, UInt64.max)
    XCTAssertThrowsError(try ReadCapacity16([UInt8](repeating: 0, count: 11)))
  }

  // MARK: MODE SENSE

  /// Caching page (SBC-3 6.4.5 Table 173), page_0 format, length 0x12.
  private func cachingPage(_ byte2: UInt8, ps: Bool = false) -> [UInt8] {
    [(ps ? 0x80 : 0) | 0x08, 0x12, byte2] + [UInt8](repeating: 0, count: 17)
  }
  private let controlPage: [UInt8] = [0x0A, 0x0A] + [UInt8](repeating: 0, count: 10)

  func testModeSense6WithBlockDescriptor() throws {
    // Header: MDL, medium type, DSP (DPOFUA), BDL 8 (SPC-4 Table 451).
    let body = [0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00] + cachingPage(0x14) + controlPage
    let data = [UInt8(3 + body.count), 0x00, 0x10, 0x08] + body
    let m = try ModeSense(mode6: data)
    XCTAssertFalse(m.isTenByte)
    XCTAssertEqual(m.modeDataLength, 43)
    XCTAssertEqual(m.totalLength, 44)
    XCTAssertEqual(m.blockDescriptorLength, 8)
    XCTAssertFalse(m.writeProtect)
    XCTAssertTrue(m.dpofua)
    XCTAssertEqual(m.pages.map(\.pageCode), [0x08, 0x0A])
    XCTAssertEqual(m.writeCacheEnabled, true)  // byte 2 bit 2 (0x14 = DISC | WCE)
    XCTAssertEqual(m.readCacheDisabled, false)
    XCTAssertFalse(m.isTruncated)
    XCTAssertEqual(m.page(0x0A)?.bytes.count, 12)
  }

  func testModeSense10WriteProtectAndSubpage() throws {
    let subpage: [UInt8] = [0x4A, 0x01, 0x00, 0x04, 1, 2, 3, 4]  // SPF=1, control extension
    let body = cachingPage(0x01, ps: true) + subpage
    let mdl = UInt16(6 + body.count)
    // SPC-4 Table 452: MDL 0-1, medium 2, DSP 3 (WP), LONGLBA 4, BDL 6-7 = 0.
    let data = [UInt8(mdl >> 8), UInt8(mdl & 0xFF), 0x00, 0x80, 0x00, 0x00, 0x00, 0x00] + body
    let m = try ModeSense(mode10: data)
    XCTAssertTrue(m.isTenByte)
    XCTAssertTrue(m.writeProtect)
    XCTAssertFalse(m.dpofua)
    XCTAssertEqual(m.writeCacheEnabled, false)
    XCTAssertEqual(m.readCacheDisabled, true)
    XCTAssertEqual(m.pages.count, 2)
    XCTAssertTrue(m.pages[0].parametersSaveable)
    XCTAssertEqual(m.page(0x0A, subpage: 0x01)?.bytes, subpage)
    XCTAssertNil(m.page(0x0A))
  }

  func testModeSenseTruncatedByAllocationLength() throws {
    let body = cachingPage(0x04) + controlPage
    let data = [UInt8(3 + body.count), 0x00, 0x00, 0x00] + body
    let cut = try ModeSense(mode6: Array(data.prefix(10)))  // caching page cut in half
    XCTAssertTrue(cut.isTruncated)
    XCTAssertNil(cut.writeCacheEnabled)
    XCTAssertEqual(cut.totalLength, data.count)
    let headerOnly = try ModeSense(mode6: Array(data.prefix(4)))
    XCTAssertTrue(headerOnly.isTruncated)
    XCTAssertTrue(headerOnly.pages.isEmpty)
  }

  func testModeSenseGarbledThrows() {
    // Header too short.
    XCTAssertThrowsError(try ModeSense(mode6: [0x03, 0x00, 0x00])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
    XCTAssertThrowsError(try ModeSense(mode10: [0, 6, 0, 0, 0, 0, 0]))
    // Page length 0x12 overruns a mode data length that says all was sent.
    let bad = [UInt8(3 + 6), 0, 0, 0] + [0x08, 0x12, 0x04, 0, 0, 0]
    XCTAssertThrowsError(try ModeSense(mode6: bad)) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .invalidField)
    }
    // Block descriptor length beyond the mode data.
    XCTAssertThrowsError(try ModeSense(mode6: [3, 0, 0, 8])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .invalidField)
    }
    // Mode data length smaller than the 10-byte header itself.
    XCTAssertThrowsError(try ModeSense(mode10: [0, 2, 0, 0, 0, 0, 0, 0]))
  }

  // MARK: REPORT LUNS

  func testReportLunsFromTgt() throws {
    // tgt: LUN 0 (controller), LUN 1, and LUN 300 with flat addressing (0x41 0x2C).
    let data: [UInt8] =
      [0, 0, 0, 24, 0, 0, 0, 0]
      + [0, 0, 0, 0, 0, 0, 0, 0]
      + [0, 1, 0, 0, 0, 0, 0, 0]
      + [0x41, 0x2C, 0, 0, 0, 0, 0, 0]
    let r = try ReportLuns(data)
    XCTAssertEqual(r.luns, [0, 1, 300])
    XCTAssertEqual(r.lunListLength, 24)
    XCTAssertFalse(r.isTruncated)
    XCTAssertEqual(r.rawLuns[2], 0x412C_0000_0000_0000)
  }

  func testReportLunsSkipsOtherAddressingAndTruncation() throws {
    let data: [UInt8] =
      [0, 0, 0, 32, 0, 0, 0, 0]
      + [0x80, 0x05, 0, 0, 0, 0, 0, 0]  // logical unit addressing (10b): not decoded
      + [0x01, 0x02, 0, 0, 0, 0, 0, 0]  // peripheral with bus id 1: not single level
      + [0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0]  // two-level hierarchical
    let r = try ReportLuns(data)
    XCTAssertEqual(r.rawLuns.count, 3)
    XCTAssertEqual(r.luns, [])
    XCTAssertTrue(r.isTruncated)  // 4 LUNs announced, 3 received
    XCTAssertEqual(r.requiredAllocationLength, 40)
    XCTAssertThrowsError(try ReportLuns([0, 0, 0, 12, 0, 0, 0, 0])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .invalidField)
    }
    XCTAssertThrowsError(try ReportLuns([0, 0, 0, 8])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
    // A partial trailing entry is ignored, not misread.
    XCTAssertEqual(try ReportLuns([0, 0, 0, 8, 0, 0, 0, 0, 0, 7, 0]).luns, [])
  }

  func testLUNAddressEncoding() throws {
    XCTAssertEqual(try LUNAddress.encode(5), [0, 5, 0, 0, 0, 0, 0, 0])
    XCTAssertEqual(try LUNAddress.encode(300), [0x41, 0x2C, 0, 0, 0, 0, 0, 0])
    XCTAssertEqual(try LUNAddress.encode64(0x3FFF), 0x7FFF_0000_0000_0000)
    XCTAssertThrowsError(try LUNAddress.encode(0x4000))
    for lun: UInt16 in [0, 1, 255, 256, 0x3FFF] {
      XCTAssertEqual(LUNAddress.decode(try LUNAddress.encode64(lun)), lun)
    }
  }

  // MARK: REPORT TARGET PORT GROUPS

  private let groupA: [UInt8] = [0x80, 0x8F, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 2]
  private let groupB: [UInt8] = [0x01, 0x0F, 0x00, 0x02, 0x00, 0x02, 0x00, 0x01, 0, 0, 0, 3]

  func testRTPGLengthOnlyHeader() throws {
    let data = [0, 0, 0, 28] + groupA + groupB
    let r = try ReportTargetPortGroups(data)
    XCTAssertFalse(r.extendedHeader)
    XCTAssertFalse(r.isTruncated)
    XCTAssertEqual(r.groups.count, 2)
    let a = r.groups[0]
    XCTAssertTrue(a.preferred)
    XCTAssertEqual(a.asymmetricAccessState, .activeOptimized)
    XCTAssertEqual(a.groupID, 1)
    XCTAssertEqual(a.supportedStates, 0x8F)
    XCTAssertEqual(a.relativeTargetPortIDs, [1, 2])
    let b = r.groups[1]
    XCTAssertFalse(b.preferred)
    XCTAssertEqual(b.asymmetricAccessState, .activeNonOptimized)
    XCTAssertTrue(b.asymmetricAccessState.allowsIO)
    XCTAssertEqual(b.statusCode, 2)
    XCTAssertEqual(b.relativeTargetPortIDs, [3])
    XCTAssertEqual(r.group(forRelativeTargetPort: 3)?.groupID, 2)
    XCTAssertNil(r.group(forRelativeTargetPort: 9))
  }

  func testRTPGExtendedHeaderAndStates() throws {
    // SPC-4 Table 205: FORMAT TYPE 001b in byte 4, implicit transition time 60 s.
    let group: [UInt8] = [0x0F, 0x0F, 0x00, 0x05, 0, 0, 0, 0]
    let r = try ReportTargetPortGroups([0, 0, 0, 12, 0x10, 60, 0, 0] + group)
    XCTAssertTrue(r.extendedHeader)
    XCTAssertEqual(r.implicitTransitionTime, 60)
    XCTAssertEqual(r.groups.first?.asymmetricAccessState, .transitioning)
    XCTAssertFalse(ReportTargetPortGroups.AccessState.transitioning.allowsIO)
    XCTAssertEqual(ReportTargetPortGroups.AccessState.standby.rawValue, 2)
    XCTAssertEqual(ReportTargetPortGroups.AccessState.unavailable.rawValue, 3)
    XCTAssertEqual(ReportTargetPortGroups.AccessState(rawValue: 0x2).description, "standby")
  }

  func testRTPGExtendedHeaderWhoseLengthCountsOnlyTheDescriptors() throws {
    // LIO: RETURN DATA LENGTH 28 = two descriptors of 12 and 16 bytes... minus the 4 header
    // bytes after it; the descriptors end at 8 + 28.
    let a: [UInt8] = [0x02, 0x0F, 0x00, 10, 0, 0, 0, 1, 0, 0, 0, 1]
    let b: [UInt8] = [0x80, 0x0F, 0x00, 20, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]
    let r = try ReportTargetPortGroups([0, 0, 0, 28, 0x10, 0, 0, 0] + a + b)
    XCTAssertEqual(r.groups.map(\.groupID), [10, 20])
    XCTAssertEqual(r.groups.map(\.asymmetricAccessState), [.standby, .activeOptimized])
    XCTAssertEqual(r.groups.last?.preferred, true)
    XCTAssertFalse(r.isTruncated)
    // The same counted the standard way (32) reads the same.
    XCTAssertEqual(try ReportTargetPortGroups([0, 0, 0, 32, 0x10, 0, 0, 0] + a + b).groups.count, 2)
  }

  func testRTPGTruncatedAndGarbled() throws {
    let data = [0, 0, 0, 28] + groupA + groupB
    let cut = try ReportTargetPortGroups(Array(data.prefix(24)))
    XCTAssertTrue(cut.isTruncated)
    XCTAssertEqual(cut.groups.count, 1)
    XCTAssertEqual(cut.requiredAllocationLength, 32)
    // Return data length 12, but group A needs 16 bytes.
    XCTAssertThrowsError(try ReportTargetPortGroups([0, 0, 0, 12] + groupA)) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .invalidField)
    }
    XCTAssertThrowsError(try ReportTargetPortGroups([0, 0, 0])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
  }
}
