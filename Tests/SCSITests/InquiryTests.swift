import XCTest

@testable import SCSI

final class InquiryTests: XCTestCase {
  /// Standard INQUIRY data as tgt (stgt) returns it for a disk LUN.
  private func tgtInquiry() -> [UInt8] {
    var b: [UInt8] = [
      0x00,  // qualifier 000b, type 0x00 (direct access)
      0x00,  // RMB 0
      0x05,  // VERSION: SPC-3
      0x12,  // HISUP, response data format 2
      0x3B,  // additional length 59 (96-byte data)
      0x10,  // TPGS = 01b (implicit ALUA)
      0x00,
      0x02,  // CMDQUE
    ]
    b += ascii("IET", 8) + ascii("VIRTUAL-DISK", 16) + ascii("0001", 4)
    b += [UInt8](repeating: 0, count: 96 - b.count)
    return b
  }

  func testStandardInquiryFromTgt() throws {
    let inq = try StandardInquiry(tgtInquiry())
    XCTAssertEqual(inq.peripheralQualifier, 0)
    XCTAssertEqual(inq.deviceType, PeripheralDeviceType.directAccess)
    XCTAssertFalse(inq.removable)
    XCTAssertEqual(inq.version, 0x05)
    XCTAssertEqual(inq.responseDataFormat, 2)
    XCTAssertEqual(inq.additionalLength, 59)
    XCTAssertEqual(inq.vendor, "IET")
    XCTAssertEqual(inq.product, "VIRTUAL-DISK")
    XCTAssertEqual(inq.revision, "0001")
    XCTAssertEqual(inq.tpgs, 1)
    XCTAssertTrue(inq.supportsALUA)
    XCTAssertTrue(inq.cmdQue)
    XCTAssertFalse(inq.protect)
    XCTAssertTrue(inq.isConnected)
  }

  func testStandardInquiryBits() throws {
    var b = tgtInquiry()
    b[0] = 0x7F  // qualifier 011b (no LU), type 0x1F
    b[1] = 0x80  // RMB
    b[5] = 0x39  // TPGS 11b, 3PC, PROTECT
    b[6] = 0x10  // MULTIP
    b[7] = 0x00  // no CMDQUE
    let inq = try StandardInquiry(b)
    XCTAssertEqual(inq.peripheralQualifier, 3)
    XCTAssertEqual(inq.deviceType, 0x1F)
    XCTAssertFalse(inq.isConnected)
    XCTAssertTrue(inq.removable)
    XCTAssertEqual(inq.tpgs, 3)
    XCTAssertTrue(inq.thirdPartyCopy)
    XCTAssertTrue(inq.protect)
    XCTAssertTrue(inq.multiPort)
    XCTAssertFalse(inq.cmdQue)
  }

  func testStandardInquiryTrimsNulsAndNonPrintable() throws {
    var b = tgtInquiry()
    b.replaceSubrange(8..<16, with: [0x20, 0x41, 0x42, 0x00, 0x00, 0x00, 0x00, 0x00])
    b[16] = 0x07  // BEL becomes "?"
    let inq = try StandardInquiry(b)
    XCTAssertEqual(inq.vendor, "AB")
    XCTAssertTrue(inq.product.hasPrefix("?IRTUAL"))
  }

  func testStandardInquiryTruncatedThrows() {
    for n in [0, 5, 35] {
      XCTAssertThrowsError(try StandardInquiry(Array(tgtInquiry().prefix(n)))) { error in
        XCTAssertEqual((error as? SCSIError)?.code, .truncated, "length \(n)")
      }
    }
  }

  // MARK: VPD

  func testSupportedPages() throws {
    let p = try VPDSupportedPages(vpd(0x00, [0x00, 0x80, 0x83, 0xB0, 0xB2]))
    XCTAssertEqual(p.pages, [0x00, 0x80, 0x83, 0xB0, 0xB2])
    XCTAssertTrue(p.contains(VPDPage.blockLimits))
    XCTAssertFalse(p.contains(VPDPage.blockDeviceCharacteristics))
  }

  func testVPDWrongPageAndTruncation() {
    XCTAssertThrowsError(try VPDSupportedPages(vpd(0x80, [0x00]))) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .invalidField)
    }
    // PAGE LENGTH says 5, only 3 body bytes present.
    XCTAssertThrowsError(try VPDSupportedPages([0x00, 0x00, 0x00, 0x05, 0x00, 0x80, 0x83])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
    XCTAssertThrowsError(try VPDSupportedPages([0x00, 0x00])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
    XCTAssertEqual(try VPDPage.totalLength([0x00, 0x83, 0x01, 0x00]), 260)
  }

  func testUnitSerialNumber() throws {
    // tgt pads the serial number with spaces.
    let s = try UnitSerialNumber(vpd(0x80, ascii("beaf11", 16)))
    XCTAssertEqual(s.serialNumber, "beaf11")
    XCTAssertEqual(try UnitSerialNumber(vpd(0x80, [])).serialNumber, "")
  }

  // tgt-style designation descriptors (SPC-4 7.8.6.1 Table 590).
  private let t10: [UInt8] = [0x02, 0x01, 0x00, 14] + ascii("IET", 8) + Array("beaf11".utf8)
  private let naa: [UInt8] =
    [0x01, 0x03, 0x00, 16] + [0x60, 0, 0, 0, 0, 0, 0, 0, 0x0E, 0, 0, 0, 0, 0x01, 0x00, 0x01]
  private let eui: [UInt8] = [0x01, 0x02, 0x00, 8, 0x00, 0x14, 0x05, 0xAB, 0xCD, 0xEF, 0x01, 0x23]
  // PIV=1, association target port (01b), type 4 / 5; protocol iSCSI (5).
  private let relPort: [UInt8] = [0x51, 0x94, 0x00, 4, 0x00, 0x00, 0x00, 0x02]
  private let tpg: [UInt8] = [0x51, 0x95, 0x00, 4, 0x00, 0x00, 0x00, 0x07]
  private let targetName: [UInt8] =
    [0x53, 0xA8, 0x00, 20] + Array("iqn.2001-04.com.ex".utf8) + [0, 0]  // target device name
  private let luName: [UInt8] = [0x03, 0x08, 0x00, 8] + Array("naa.abc".utf8) + [0]

  func testDeviceIdentificationFromTgt() throws {
    let page = try DeviceIdentification(vpd(0x83, t10 + naa + relPort + tpg))
    XCTAssertEqual(page.designators.count, 4)
    let first = page.designators[0]
    XCTAssertEqual(first.codeSet, DeviceIdentification.Designator.CodeSet.ascii)
    XCTAssertEqual(first.association, DeviceIdentification.Designator.Association.logicalUnit)
    XCTAssertEqual(first.type, DeviceIdentification.Designator.DesignatorType.t10VendorID)
    XCTAssertEqual(first.text, "IET     beaf11")
    let port = page.designators[2]
    XCTAssertTrue(port.piv)
    XCTAssertEqual(port.protocolIdentifier, 5)
    XCTAssertEqual(port.association, 1)
    XCTAssertEqual(port.bytes, [0, 0, 0, 2])
    XCTAssertEqual(page.preferredIdentifier, "60000000000000000e00000000010001")
    XCTAssertEqual(page.preferredDesignator?.type, 3)
    XCTAssertEqual(page.relativeTargetPortIdentifier, 2)
    XCTAssertEqual(page.targetPortGroup, 7)
  }

  func testPreferredIdentifierOrder() throws {
    // EUI-64 beats T10 vendor ID.
    XCTAssertEqual(try DeviceIdentification(vpd(0x83, t10 + eui)).preferredIdentifier, "001405abcdef0123")
    // NAA beats EUI-64 regardless of order.
    XCTAssertEqual(
      try DeviceIdentification(vpd(0x83, eui + naa)).preferredIdentifier, "60000000000000000e00000000010001")
    // T10 vendor ID as text, runs of spaces folded to one "_" (udev style).
    XCTAssertEqual(try DeviceIdentification(vpd(0x83, luName + t10)).preferredIdentifier, "IET_beaf11")
    // SCSI name string last; NULs trimmed.
    XCTAssertEqual(try DeviceIdentification(vpd(0x83, luName + relPort)).preferredIdentifier, "naa.abc")
    // Designators not associated with the LU are never chosen.
    let page = try DeviceIdentification(vpd(0x83, relPort + targetName))
    XCTAssertNil(page.preferredIdentifier)
    XCTAssertNil(page.targetPortGroup)
    XCTAssertEqual(page.relativeTargetPortIdentifier, 2)
    XCTAssertEqual(try DeviceIdentification(vpd(0x83, [])).designators, [])
  }

  func testDeviceIdentificationGarbled() {
    // Descriptor claims 16 bytes but the page ends after 8.
    let bad = [0x01, 0x03, 0x00, 16] + [UInt8](repeating: 0, count: 8)
    XCTAssertThrowsError(try DeviceIdentification(vpd(0x83, bad))) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
    // Two stray bytes after a valid descriptor.
    XCTAssertThrowsError(try DeviceIdentification(vpd(0x83, naa + [0x01, 0x03]))) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
    // Allocation length cut the page short.
    XCTAssertThrowsError(try DeviceIdentification(Array(vpd(0x83, t10 + naa).prefix(20))))
  }

  func testBlockLimits() throws {
    var body = [UInt8](repeating: 0, count: 0x3C)  // SBC-3 Table 185, page length 0x3C
    body[0] = 0x01  // byte 4: WSNZ
    body[1] = 0x01  // byte 5: max COMPARE AND WRITE length
    body[2] = 0x00; body[3] = 0x08  // bytes 6-7: optimal granularity 8
    body[4] = 0x00; body[5] = 0x00; body[6] = 0x20; body[7] = 0x00  // bytes 8-11: max transfer 8192
    body[8] = 0x00; body[9] = 0x00; body[10] = 0x04; body[11] = 0x00  // bytes 12-15: optimal 1024
    body[16] = 0x00; body[17] = 0x40; body[18] = 0x00; body[19] = 0x00  // 20-23: max unmap LBAs 0x400000
    body[20] = 0xFF; body[21] = 0xFF; body[22] = 0xFF; body[23] = 0xFF  // 24-27: max descriptors
    body[24] = 0x00; body[25] = 0x00; body[26] = 0x00; body[27] = 0x08  // 28-31: unmap granularity 8
    body[28] = 0x80; body[29] = 0x00; body[30] = 0x00; body[31] = 0x03  // 32-35: UGAVALID, align 3
    body[32...39] = [0, 0, 0, 0, 0, 0x01, 0x00, 0x00]  // 36-43: max write same 0x10000
    let b = try BlockLimits(vpd(0xB0, body))
    XCTAssertTrue(b.wsnz)
    XCTAssertEqual(b.maximumCompareAndWriteLength, 1)
    XCTAssertEqual(b.optimalTransferLengthGranularity, 8)
    XCTAssertEqual(b.maximumTransferLength, 8192)
    XCTAssertEqual(b.optimalTransferLength, 1024)
    XCTAssertEqual(b.maximumUnmapLBACount, 0x40_0000)
    XCTAssertEqual(b.maximumUnmapBlockDescriptorCount, 0xFFFF_FFFF)
    XCTAssertEqual(b.optimalUnmapGranularity, 8)
    XCTAssertTrue(b.unmapGranularityAlignmentValid)
    XCTAssertEqual(b.unmapGranularityAlignment, 3)
    XCTAssertEqual(b.maximumWriteSameLength, 0x10000)
  }

  func testBlockLimitsShortOldPage() throws {
    // SBC-2 era page: PAGE LENGTH 0x0C, only up to OPTIMAL TRANSFER LENGTH.
    var body = [UInt8](repeating: 0, count: 0x0C)
    body[7] = 0x80  // MAXIMUM TRANSFER LENGTH = 128 (bytes 8-11)
    let b = try BlockLimits(vpd(0xB0, body))
    XCTAssertEqual(b.maximumTransferLength, 128)
    XCTAssertEqual(b.maximumUnmapLBACount, 0)
    XCTAssertEqual(b.maximumWriteSameLength, 0)
    XCTAssertFalse(b.unmapGranularityAlignmentValid)
  }

  func testBlockDeviceCharacteristics() throws {
    func page(_ rate: UInt16) -> [UInt8] {
      vpd(0xB1, [UInt8(rate >> 8), UInt8(rate & 0xFF), 0x00, 0x03] + [UInt8](repeating: 0, count: 56))
    }
    let ssd = try BlockDeviceCharacteristics(page(1))
    XCTAssertEqual(ssd.mediumRotationRate, 1)
    XCTAssertEqual(ssd.isRotational, false)
    XCTAssertEqual(ssd.nominalFormFactor, 3)
    XCTAssertEqual(try BlockDeviceCharacteristics(page(7200)).isRotational, true)
    XCTAssertNil(try BlockDeviceCharacteristics(page(0)).isRotational)
    XCTAssertNil(try BlockDeviceCharacteristics(page(0x0200)).isRotational)  // reserved
    XCTAssertThrowsError(try BlockDeviceCharacteristics(vpd(0xB1, [0x00])))
  }

  func testLogicalBlockProvisioning() throws {
    // SBC-3 Table 186: byte 5 LBPU|LBPWS|LBPWS10|LBPRZ = 0xE4, byte 6 type 2.
    let p = try LogicalBlockProvisioning(vpd(0xB2, [0x00, 0xE4, 0x02, 0x00]))
    XCTAssertTrue(p.lbpu)
    XCTAssertTrue(p.lbpws)
    XCTAssertTrue(p.lbpws10)
    XCTAssertTrue(p.lbprz)
    XCTAssertFalse(p.anchorSupported)
    XCTAssertEqual(p.provisioningType, LogicalBlockProvisioning.ProvisioningType.thin)
    let q = try LogicalBlockProvisioning(vpd(0xB2, [0x09, 0x42, 0x01, 0x00]))
    XCTAssertFalse(q.lbpu)
    XCTAssertTrue(q.lbpws)
    XCTAssertFalse(q.lbprz)
    XCTAssertTrue(q.anchorSupported)
    XCTAssertEqual(q.thresholdExponent, 9)
    XCTAssertEqual(q.provisioningType, 1)
    XCTAssertThrowsError(try LogicalBlockProvisioning(vpd(0xB2, [0x00, 0x80])))
  }
}
