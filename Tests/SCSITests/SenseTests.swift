import XCTest

@testable import SCSI

final class SenseTests: XCTestCase {
  /// Fixed format sense (SPC-4 4.5.3 Table 45), 18 bytes.
  private func fixed(
    key: UInt8, asc: UInt8, ascq: UInt8, info: UInt32? = nil, code: UInt8 = 0x70
  ) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: 18)
    b[0] = code | (info != nil ? 0x80 : 0)  // VALID bit 7
    b[2] = key
    if let info { b[3...6] = [UInt8(info >> 24), UInt8((info >> 16) & 0xFF), UInt8((info >> 8) & 0xFF), UInt8(info & 0xFF)] }
    b[7] = 10  // ADDITIONAL SENSE LENGTH
    b[12] = asc
    b[13] = ascq
    return b
  }

  /// Descriptor format sense (SPC-4 4.5.2 Table 26) with descriptors.
  private func descriptor(key: UInt8, asc: UInt8, ascq: UInt8, code: UInt8 = 0x72, descriptors: [UInt8] = [])
    -> [UInt8]
  {
    [code, key, asc, ascq, 0, 0, 0, UInt8(descriptors.count)] + descriptors
  }

  func testFixedSense() throws {
    let s = try SenseData(fixed(key: 0x03, asc: 0x11, ascq: 0x00, info: 0x1234))
    XCTAssertEqual(s.responseCode, 0x70)
    XCTAssertFalse(s.isDescriptorFormat)
    XCTAssertFalse(s.deferred)
    XCTAssertEqual(s.senseKey, .mediumError)
    XCTAssertEqual(s.asc, 0x11)
    XCTAssertEqual(s.ascq, 0x00)
    XCTAssertEqual(s.information, 0x1234)
    XCTAssertTrue(s.description.hasPrefix("MEDIUM ERROR (asc 0x11 ascq 0x00: unrecovered read error)"))
  }

  func testFixedSenseWithoutValidAndDeferred() throws {
    let s = try SenseData(fixed(key: 0x06, asc: 0x29, ascq: 0x00, code: 0x71))
    XCTAssertNil(s.information)
    XCTAssertTrue(s.deferred)
    XCTAssertEqual(s.senseKey, .unitAttention)
    XCTAssertEqual(s.description, "UNIT ATTENTION (asc 0x29 ascq 0x00: power on, reset, or bus device reset occurred) [deferred]")
  }

  func testFixedSenseSenseKeySpecificAndILI() throws {
    var b = fixed(key: 0x25, asc: 0x24, ascq: 0x00)  // 0x20 = ILI, key 5
    b[15] = 0xC0  // SKSV, C/D: field pointer
    b[16] = 0x00
    b[17] = 0x02
    let s = try SenseData(b)
    XCTAssertEqual(s.senseKey, .illegalRequest)
    XCTAssertTrue(s.ili)
    XCTAssertEqual(s.senseKeySpecific, [0xC0, 0x00, 0x02])
    XCTAssertEqual(s.description, "ILLEGAL REQUEST (asc 0x24 ascq 0x00: invalid field in cdb)")
  }

  func testShortFixedSenseHonoursAdditionalLength() throws {
    // ADDITIONAL SENSE LENGTH 0: ASC/ASCQ are not present even if bytes follow.
    var b = fixed(key: 0x02, asc: 0x04, ascq: 0x01)
    b[7] = 0
    let s = try SenseData(b)
    XCTAssertEqual(s.senseKey, .notReady)
    XCTAssertEqual(s.asc, 0)
    XCTAssertEqual(s.ascq, 0)
    // Just the first three bytes is enough for the sense key.
    XCTAssertEqual(try SenseData([0x70, 0x00, 0x05]).senseKey, .illegalRequest)
  }

  func testDescriptorSense() throws {
    // Information descriptor (SPC-4 4.5.2.2): type 0, length 0x0A, VALID.
    let info: [UInt8] = [0x00, 0x0A, 0x80, 0x00, 0, 0, 0, 0, 0, 0, 0x12, 0x34]
    // Block commands descriptor (SBC-3 4.18.2): type 5, length 2, ILI.
    let block: [UInt8] = [0x05, 0x02, 0x00, 0x20]
    let s = try SenseData(descriptor(key: 0x03, asc: 0x11, ascq: 0x00, descriptors: info + block))
    XCTAssertTrue(s.isDescriptorFormat)
    XCTAssertFalse(s.deferred)
    XCTAssertEqual(s.senseKey, .mediumError)
    XCTAssertEqual(s.asc, 0x11)
    XCTAssertEqual(s.information, 0x1234)
    XCTAssertTrue(s.ili)
    XCTAssertEqual(s.description, "MEDIUM ERROR (asc 0x11 ascq 0x00: unrecovered read error) info 0x1234")
  }

  func testDescriptorSenseDeferredAndPartialDescriptor() throws {
    // Sense key specific descriptor (type 2, length 6) then a cut descriptor.
    let sks: [UInt8] = [0x02, 0x06, 0, 0, 0x80, 0x12, 0x34, 0]
    var b = descriptor(key: 0x0B, asc: 0x47, ascq: 0x00, code: 0x73, descriptors: sks + [0x00, 0x0A, 0x80])
    let s = try SenseData(b)
    XCTAssertTrue(s.deferred)
    XCTAssertEqual(s.senseKey, .abortedCommand)
    XCTAssertEqual(s.senseKeySpecific, [0x80, 0x12, 0x34])
    XCTAssertNil(s.information)
    // Info descriptor without VALID.
    b = descriptor(key: 0x03, asc: 0x11, ascq: 0, descriptors: [0x00, 0x0A, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 9])
    XCTAssertNil(try SenseData(b).information)
  }

  func testSenseGarbledThrows() {
    XCTAssertThrowsError(try SenseData([])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
    XCTAssertThrowsError(try SenseData([0x70, 0x00])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
    XCTAssertThrowsError(try SenseData([0x72])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
    XCTAssertThrowsError(try SenseData([0x00, 0x00, 0x05, 0, 0, 0, 0, 0])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .invalidField)
    }
  }

  func testISCSIDataSegment() throws {
    let sense = fixed(key: 0x05, asc: 0x20, ascq: 0x00)
    // RFC 7143 11.4.7.2: SenseLength (2 bytes) + sense + optional response data.
    let s = try SenseData.fromISCSIDataSegment([0x00, 18] + sense + [0xAA, 0xBB])
    XCTAssertEqual(s?.senseKey, .illegalRequest)
    XCTAssertEqual(s?.asc, 0x20)
    XCTAssertEqual(s?.bytes.count, 18)
    XCTAssertNil(try SenseData.fromISCSIDataSegment([]))
    XCTAssertNil(try SenseData.fromISCSIDataSegment([0x00, 0x00]))
    XCTAssertThrowsError(try SenseData.fromISCSIDataSegment([0x00])) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
    XCTAssertThrowsError(try SenseData.fromISCSIDataSegment([0x00, 0x20] + sense)) { error in
      XCTAssertEqual((error as? SCSIError)?.code, .truncated)
    }
  }

  func testStatusConstants() {
    // SAM-5 Table 37.
    XCTAssertEqual(SCSIStatus.good.rawValue, 0x00)
    XCTAssertEqual(SCSIStatus.checkCondition.rawValue, 0x02)
    XCTAssertEqual(SCSIStatus.conditionMet.rawValue, 0x04)
    XCTAssertEqual(SCSIStatus.busy.rawValue, 0x08)
    XCTAssertEqual(SCSIStatus.reservationConflict.rawValue, 0x18)
    XCTAssertEqual(SCSIStatus.taskSetFull.rawValue, 0x28)
    XCTAssertEqual(SCSIStatus.acaActive.rawValue, 0x30)
    XCTAssertEqual(SCSIStatus.taskAborted.rawValue, 0x40)
    XCTAssertEqual(SenseKey.dataProtect.rawValue, 0x07)
    XCTAssertEqual(SenseKey.abortedCommand.rawValue, 0x0B)
  }

  // MARK: Classification

  func testClassificationTable() throws {
    typealias Row = (status: UInt8, key: UInt8?, asc: UInt8, ascq: UInt8, expected: SCSIErrorClass?, line: UInt)
    let rows: [Row] = [
      (0x00, nil, 0, 0, nil, #line),
      (0x04, nil, 0, 0, nil, #line),
      (0x08, nil, 0, 0, .retryable, #line),  // BUSY
      (0x28, nil, 0, 0, .retryable, #line),  // TASK SET FULL
      (0x40, nil, 0, 0, .aborted, #line),  // TASK ABORTED
      (0x18, nil, 0, 0, .reservationConflict, #line),
      (0x30, nil, 0, 0, .other, #line),  // ACA ACTIVE
      (0x02, nil, 0, 0, .other, #line),  // CHECK CONDITION without sense
      (0x02, 0x1, 0x17, 0x01, nil, #line),  // RECOVERED ERROR = success
      (0x02, 0x6, 0x29, 0x00, .unitAttention, #line),
      (0x02, 0x6, 0x2A, 0x06, .unitAttention, #line),  // ALUA state changed
      (0x02, 0x2, 0x04, 0x01, .retryable, #line),  // becoming ready
      (0x02, 0x2, 0x04, 0x0A, .path, #line),  // ALUA transition
      (0x02, 0x2, 0x04, 0x0B, .path, #line),  // standby
      (0x02, 0x2, 0x04, 0x0C, .path, #line),  // unavailable
      (0x02, 0x2, 0x3A, 0x00, .notReady, #line),  // medium not present
      (0x02, 0x2, 0x04, 0x02, .notReady, #line),  // initializing command required
      (0x02, 0x3, 0x11, 0x00, .medium, #line),
      (0x02, 0x4, 0x44, 0x00, .hardware, #line),
      (0x02, 0x5, 0x24, 0x00, .illegalRequest, #line),
      (0x02, 0x7, 0x27, 0x00, .dataProtect, #line),
      (0x02, 0xB, 0x47, 0x00, .retryable, #line),  // ABORTED COMMAND
      (0x02, 0xB, 0x10, 0x01, .medium, #line),  // PI guard check
      (0x02, 0xE, 0x1D, 0x00, .other, #line),  // MISCOMPARE
    ]
    for r in rows {
      let sense = try r.key.map { try SenseData(fixed(key: $0, asc: r.asc, ascq: r.ascq)) }
      XCTAssertEqual(classify(status: r.status, sense: sense), r.expected, line: r.line)
    }
    XCTAssertEqual(classify(status: SCSIStatus.busy, sense: nil), .retryable)
  }

  func testCommandErrorAndErrno() throws {
    XCTAssertNil(SCSICommandError(status: 0x00, sense: nil))
    func err(_ key: UInt8, _ asc: UInt8, _ ascq: UInt8) throws -> SCSICommandError {
      try XCTUnwrap(SCSICommandError(status: 0x02, sense: try SenseData(fixed(key: key, asc: asc, ascq: ascq))))
    }
    let medium = try err(0x3, 0x11, 0x00)
    XCTAssertEqual(medium.errorClass, .medium)
    XCTAssertEqual(medium.errnoValue, 5)  // EIO
    XCTAssertEqual(
      medium.description, "CHECK CONDITION: MEDIUM ERROR (asc 0x11 ascq 0x00: unrecovered read error)")
    XCTAssertEqual(try err(0x7, 0x27, 0x07).errnoValue, 28)  // ENOSPC
    XCTAssertEqual(try err(0x7, 0x27, 0x00).errnoValue, 30)  // EROFS
    XCTAssertEqual(try err(0x7, 0x74, 0x71).errnoValue, 1)  // EPERM
    XCTAssertEqual(try err(0x5, 0x20, 0x00).errnoValue, 95)  // EOPNOTSUPP
    XCTAssertEqual(try err(0x5, 0x21, 0x00).errnoValue, 22)  // EINVAL
    XCTAssertEqual(try err(0x2, 0x04, 0x0A).errnoValue, 67)  // ENOLINK
    XCTAssertEqual(try err(0x2, 0x3A, 0x00).errnoValue, 123)  // ENOMEDIUM
    XCTAssertEqual(try err(0xB, 0x10, 0x01).errnoValue, 84)  // EILSEQ
    XCTAssertEqual(SCSICommandError(status: 0x18, sense: nil)?.errnoValue, 52)  // EBADE
    XCTAssertEqual(SCSICommandError(status: 0x08, sense: nil)?.errnoValue, 11)  // EAGAIN
    XCTAssertEqual(SCSICommandError(status: 0x18, sense: nil)?.description, "RESERVATION CONFLICT")
  }

  func testDescribeUnknownCode() throws {
    XCTAssertNil(SenseData.describe(asc: 0x7E, ascq: 0x7E))
    let s = try SenseData(fixed(key: 0x4, asc: 0x7E, ascq: 0x01))
    XCTAssertEqual(s.description, "HARDWARE ERROR (asc 0x7e ascq 0x01)")
  }
}
