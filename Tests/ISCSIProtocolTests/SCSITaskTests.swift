import NIOCore
import XCTest

@testable import ISCSIProtocol

/// How a write's data is cut into immediate data, unsolicited Data-Out and R2T-solicited
/// Data-Out, and how Data-In is assembled (RFC 7143 sections 4.2.5.2, 11.7, 11.8, 13.10-13.14).
final class SCSITaskTests: XCTestCase {
  func payload(_ n: Int) -> ByteBuffer {
    var b = ByteBuffer()
    for i in 0..<n { b.writeInteger(UInt8(truncatingIfNeeded: i)) }
    return b
  }

  func writeTask(_ n: Int, _ limits: DataTransferLimits) -> SCSITask {
    SCSITask(itt: 5, command: SCSICommand(lun: 1, cdb: [0x2a], direction: .write(payload(n))), limits: limits)
  }

  func testCommandsWithoutDataCarryNeitherReadNorWrite() {
    let rw = SCSICommandFlags.read | SCSICommandFlags.write
    for direction in [SCSICommand.Direction.none, .read(0), .write(ByteBuffer())] {
      let pdu = SCSITask(itt: 1, command: SCSICommand(lun: 0, cdb: [0x00], direction: direction), limits: .init())
        .makeCommandPDUs().command
      XCTAssertEqual(pdu.header.flags & rw, 0, "\(direction)")
      XCTAssertEqual(pdu.header.expectedDataTransferLength, 0)
      XCTAssertNotEqual(pdu.header.flags & SCSICommandFlags.final, 0)
    }
    let read = SCSITask(itt: 1, command: SCSICommand(lun: 0, cdb: [0x12], direction: .read(96)), limits: .init())
      .makeCommandPDUs().command
    XCTAssertEqual(read.header.flags & rw, SCSICommandFlags.read)
  }

  func testImmediateAndUnsolicitedDataStopAtFirstBurstLength() {
    let limits = DataTransferLimits(
      maxSendDataSegmentLength: 512, firstBurstLength: 2048, maxBurstLength: 4096, initialR2T: false,
      immediateData: true)
    let (cmd, unsolicited) = writeTask(10_000, limits).makeCommandPDUs()
    XCTAssertEqual(cmd.data.readableBytes, 512, "immediate data limited by the target's MaxRecvDataSegmentLength")
    XCTAssertEqual(cmd.header.flags & SCSICommandFlags.final, 0, "F clear: unsolicited Data-Out follows")
    XCTAssertEqual(cmd.header.expectedDataTransferLength, 10_000)
    XCTAssertEqual(unsolicited.map { Int($0.header.bufferOffset) }, [512, 1024, 1536])
    XCTAssertEqual(unsolicited.map { $0.data.readableBytes }, [512, 512, 512])
    XCTAssertEqual(unsolicited.map { $0.header.dataSN }, [0, 1, 2])
    XCTAssertEqual(unsolicited.map { $0.header.flags & finalFlag != 0 }, [false, false, true])
    XCTAssertTrue(unsolicited.allSatisfy { $0.header.targetTransferTag == reservedTag })
    let total = cmd.data.readableBytes + unsolicited.reduce(0) { $0 + $1.data.readableBytes }
    XCTAssertEqual(total, 2048, "immediate + unsolicited = FirstBurstLength")
  }

  func testInitialR2TYesAndImmediateDataNoSendsNothingUnsolicited() {
    let limits = DataTransferLimits(initialR2T: true, immediateData: false)
    let (cmd, unsolicited) = writeTask(4096, limits).makeCommandPDUs()
    XCTAssertEqual(cmd.data.readableBytes, 0)
    XCTAssertTrue(unsolicited.isEmpty)
    XCTAssertNotEqual(cmd.header.flags & SCSICommandFlags.final, 0)
    XCTAssertNotEqual(cmd.header.flags & SCSICommandFlags.write, 0)
  }

  func testSmallWriteFitsInImmediateData() {
    let limits = DataTransferLimits(maxSendDataSegmentLength: 8192, initialR2T: false, immediateData: true)
    let (cmd, unsolicited) = writeTask(4096, limits).makeCommandPDUs()
    XCTAssertEqual(cmd.data.readableBytes, 4096)
    XCTAssertTrue(unsolicited.isEmpty)
    XCTAssertNotEqual(cmd.header.flags & SCSICommandFlags.final, 0)
  }

  func testR2TIsAnsweredWithSegmentsOfTheRequestedRange() throws {
    var task = writeTask(
      10_000, DataTransferLimits(maxSendDataSegmentLength: 1000, maxBurstLength: 4096, initialR2T: true, immediateData: false))
    var r2t = BasicHeaderSegment(opcode: .readyToTransfer, flags: finalFlag)
    r2t.initiatorTaskTag = 5
    r2t.targetTransferTag = 0xabc
    r2t.dataSN = 0  // R2TSN
    r2t.bufferOffset = 4096
    r2t.desiredDataTransferLength = 2500
    let out = try task.handleR2T(r2t)
    XCTAssertEqual(out.map { Int($0.header.bufferOffset) }, [4096, 5096, 6096])
    XCTAssertEqual(out.map { $0.data.readableBytes }, [1000, 1000, 500])
    XCTAssertEqual(out.map { $0.header.dataSN }, [0, 1, 2], "DataSN restarts at 0 for each R2T")
    XCTAssertTrue(out.allSatisfy { $0.header.targetTransferTag == 0xabc })
    XCTAssertEqual(out.last!.header.flags & finalFlag, finalFlag)
    XCTAssertEqual(out[0].data.getInteger(at: out[0].data.readerIndex, as: UInt8.self), UInt8(truncatingIfNeeded: 4096))
    // The next R2T must carry R2TSN 1.
    r2t.bufferOffset = 0
    r2t.desiredDataTransferLength = 100
    XCTAssertThrowsError(try task.handleR2T(r2t), "R2TSN 0 again")
  }

  /// Outside recovery an R2T never asks again for bytes an earlier one asked for: a
  /// target repeating R2Ts would get the same burst of Data-Out over and over.
  func testAnR2TForBytesAlreadyAskedForIsRefused() throws {
    var task = writeTask(
      8192, DataTransferLimits(maxSendDataSegmentLength: 1024, maxBurstLength: 4096, initialR2T: true, immediateData: false))
    var r2t = BasicHeaderSegment(opcode: .readyToTransfer, flags: finalFlag)
    r2t.initiatorTaskTag = 5
    r2t.bufferOffset = 0
    r2t.desiredDataTransferLength = 4096
    XCTAssertEqual(try task.handleR2T(r2t).count, 4)
    r2t.dataSN = 1
    r2t.bufferOffset = 2048  // half of it again
    XCTAssertThrowsError(try task.handleR2T(r2t)) { error in
      XCTAssertEqual((error as? ISCSIError)?.code, .protocolViolation)
      XCTAssertTrue("\(error)".contains("already asked for"), "\(error)")
    }
    // The rest of the write, asked for once, is sent.
    var fresh = writeTask(
      8192, DataTransferLimits(maxSendDataSegmentLength: 1024, maxBurstLength: 4096, initialR2T: true, immediateData: false))
    r2t.dataSN = 0
    r2t.bufferOffset = 4096
    XCTAssertEqual(try fresh.handleR2T(r2t).map { Int($0.header.bufferOffset) }, [4096, 5120, 6144, 7168])
    r2t.dataSN = 1
    r2t.bufferOffset = 0
    XCTAssertEqual(try fresh.handleR2T(r2t).count, 4, "an earlier range, not asked for before")
    r2t.dataSN = 2
    XCTAssertThrowsError(try fresh.handleR2T(r2t), "the whole write again")
  }

  func testR2TOutsideTheBufferOrBeyondMaxBurstIsRefused() {
    var task = writeTask(4096, DataTransferLimits(maxBurstLength: 2048))
    var r2t = BasicHeaderSegment(opcode: .readyToTransfer)
    r2t.bufferOffset = 0
    r2t.desiredDataTransferLength = 4096
    XCTAssertThrowsError(try task.handleR2T(r2t), "beyond MaxBurstLength")
    var task2 = writeTask(4096, DataTransferLimits(maxBurstLength: 65536))
    r2t.bufferOffset = 2048
    r2t.desiredDataTransferLength = 4096
    XCTAssertThrowsError(try task2.handleR2T(r2t), "beyond the end of the write")
  }

  func dataIn(offset: Int, bytes: [UInt8], dataSN: UInt32, status: Bool) -> ISCSIPDU {
    var h = BasicHeaderSegment(opcode: .dataIn, flags: status ? (DataInFlags.final | DataInFlags.status) : 0)
    h.initiatorTaskTag = 9
    h.bufferOffset = UInt32(offset)
    h.dataSN = dataSN
    var b = ByteBuffer()
    b.writeBytes(bytes)
    return ISCSIPDU(header: h, data: b)
  }

  func testDataInIsAssembledInOrderAndCompletesOnStatus() throws {
    var task = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x28], direction: .read(8)), limits: .init())
    XCTAssertNil(try task.handleDataIn(dataIn(offset: 0, bytes: [1, 2, 3, 4], dataSN: 0, status: false), allocator: .init()))
    let done = try XCTUnwrap(
      try task.handleDataIn(dataIn(offset: 4, bytes: [5, 6, 7, 8], dataSN: 1, status: true), allocator: .init()))
    XCTAssertEqual(done.status, 0)
    XCTAssertEqual(Array(done.data.readableBytesView), [1, 2, 3, 4, 5, 6, 7, 8])
  }

  func testInOrderDataInIsKeptAsSegmentsAndOutOfOrderIsCopiedIntoPlace() throws {
    var task = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x28], direction: .read(8192)), limits: .init())
    let first = (0..<4096).map { UInt8(truncatingIfNeeded: $0) }
    _ = try task.handleDataIn(dataIn(offset: 0, bytes: first, dataSN: 0, status: false), allocator: .init())
    let done = try XCTUnwrap(
      try task.handleDataIn(
        dataIn(offset: 4096, bytes: [UInt8](repeating: 7, count: 4096), dataSN: 1, status: true), allocator: .init()))
    XCTAssertEqual(done.segments.count, 2, "two Data-In PDUs of 4 KiB, two segments, no copy")
    XCTAssertEqual(done.dataLength, 8192)
    XCTAssertEqual(Array(done.data.readableBytesView), first + [UInt8](repeating: 7, count: 4096))

    var shuffled = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x28], direction: .read(8)), limits: relaxed)
    _ = try shuffled.handleDataIn(dataIn(offset: 4, bytes: [5, 6, 7, 8], dataSN: 0, status: false), allocator: .init())
    let put = try XCTUnwrap(
      try shuffled.handleDataIn(dataIn(offset: 0, bytes: [1, 2, 3, 4], dataSN: 1, status: true), allocator: .init()))
    XCTAssertEqual(put.segments.count, 1)
    XCTAssertEqual(Array(put.data.readableBytesView), [1, 2, 3, 4, 5, 6, 7, 8])
  }

  /// A target that sends a read in tiny segments gets them copied into one buffer: a slice
  /// of a few bytes would keep its whole socket buffer (and its own 48-byte header) alive.
  func testTinyDataInSegmentsAreCopiedTogetherNotKeptAsSlices() throws {
    for limits in [DataTransferLimits(), relaxed] {
      var task = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x28], direction: .read(20_000)), limits: limits)
      var done: SCSICompletion?
      for i in 0..<20_000 {
        done = try task.handleDataIn(
          dataIn(offset: i, bytes: [UInt8(truncatingIfNeeded: i * 7)], dataSN: UInt32(i), status: i == 19_999),
          allocator: .init())
      }
      let completion = try XCTUnwrap(done)
      XCTAssertEqual(completion.segments.count, 1, "20,000 one-byte segments kept as slices")
      XCTAssertEqual(Array(completion.data.readableBytesView), (0..<20_000).map { UInt8(truncatingIfNeeded: $0 * 7) })
    }
    // A small segment that ends the read is kept as it came (a 4 KiB read's only segment,
    // or the tail of a longer one).
    var tail = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x28], direction: .read(4096 + 512)), limits: .init())
    _ = try tail.handleDataIn(
      dataIn(offset: 0, bytes: [UInt8](repeating: 1, count: 4096), dataSN: 0, status: false), allocator: .init())
    let both = try XCTUnwrap(
      try tail.handleDataIn(
        dataIn(offset: 4096, bytes: [UInt8](repeating: 2, count: 512), dataSN: 1, status: true), allocator: .init()))
    XCTAssertEqual(both.segments.map(\.readableBytes), [4096, 512])
  }

  func testDataInBeyondTheExpectedLengthOrOutOfSequenceIsRefused() {
    var task = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x28], direction: .read(8)), limits: .init())
    XCTAssertThrowsError(
      try task.handleDataIn(dataIn(offset: 6, bytes: [1, 2, 3, 4], dataSN: 0, status: true), allocator: .init()))
    var task2 = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x28], direction: .read(8)), limits: .init())
    XCTAssertThrowsError(try task2.handleDataIn(dataIn(offset: 0, bytes: [1], dataSN: 3, status: false), allocator: .init()))
    var task3 = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x2a], direction: .write(payload(8))), limits: .init())
    XCTAssertThrowsError(try task3.handleDataIn(dataIn(offset: 0, bytes: [1], dataSN: 0, status: false), allocator: .init()))
  }

  func testSCSIResponseCarriesSenseAndResidual() throws {
    let task = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x28], direction: .read(512)), limits: .init())
    var h = BasicHeaderSegment(opcode: .scsiResponse, flags: finalFlag | DataInFlags.underflow)
    h.scsiStatus = 0x02
    h.residualCount = 512
    var data = ByteBuffer()
    data.writeInteger(UInt16(18))
    data.writeBytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0])
    let c = try task.handleResponse(ISCSIPDU(header: h, data: data))
    XCTAssertEqual(c.status, 0x02)
    XCTAssertEqual(c.sense.count, 18)
    XCTAssertEqual(c.sense[2], 0x05)
    XCTAssertEqual(c.residual, 512)
  }

  // MARK: - Data-In accounting: every byte exactly once, or the data is refused

  let relaxed = DataTransferLimits(dataPDUInOrder: false, dataSequenceInOrder: false)

  func readTask(_ n: Int, _ limits: DataTransferLimits = .init()) -> SCSITask {
    SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x28], direction: .read(n)), limits: limits)
  }

  func bytes(_ n: Int, _ v: UInt8) -> [UInt8] { [UInt8](repeating: v, count: n) }

  /// Feeds Data-In PDUs (offset, length, status) and returns the first error's text, or nil.
  func feed(_ task: inout SCSITask, _ pdus: [(Int, Int, Bool)], flags: UInt8 = 0, residual: UInt32 = 0) -> String? {
    for (sn, (offset, length, status)) in pdus.enumerated() {
      var pdu = dataIn(offset: offset, bytes: bytes(length, UInt8(sn + 1)), dataSN: UInt32(sn), status: status)
      if status {
        pdu.header.flags |= flags
        pdu.header.residualCount = residual
      }
      do { _ = try task.handleDataIn(pdu, allocator: .init()) } catch let e as ISCSIError {
        XCTAssertEqual(e.code, .protocolViolation, e.description)
        return e.description
      } catch { return "\(error)" }
    }
    return nil
  }

  func testInOrderDataInMustStartWhereThePreviousEnded() {
    var repeated = readTask(12)
    XCTAssertNotNil(feed(&repeated, [(0, 4, false), (0, 4, false)]), "repeated BufferOffset")
    var gap = readTask(12)
    XCTAssertNotNil(feed(&gap, [(0, 4, false), (8, 4, true)]), "a hole at 4..<8")
    var overlap = readTask(12)
    XCTAssertNotNil(feed(&overlap, [(0, 4, false), (2, 4, false)]), "overlap")
    var good = readTask(12)
    XCTAssertNil(feed(&good, [(0, 4, false), (4, 4, false), (8, 4, true)]))
  }

  func testOutOfOrderDataInMayNotOverlapAndMustCoverEveryByte() {
    var shuffled = readTask(12, relaxed)
    XCTAssertNil(feed(&shuffled, [(8, 4, false), (0, 4, false), (4, 4, true)]), "any order, each byte once")
    var overlap = readTask(12, relaxed)
    XCTAssertNotNil(feed(&overlap, [(8, 4, false), (6, 4, false)]))
    var repeated = readTask(12, relaxed)
    XCTAssertNotNil(feed(&repeated, [(4, 4, false), (4, 4, false)]))
    var hole = readTask(12, relaxed)
    let e = feed(&hole, [(8, 4, false), (0, 4, true)])
    XCTAssertTrue(e?.contains("8 of 12 bytes") ?? false, e ?? "accepted a read with a hole")
  }

  func testStatusWithTooFewBytesAndNoResidualIsRefused() {
    var short = readTask(12)
    let e = feed(&short, [(0, 4, false), (4, 4, true)])
    XCTAssertTrue(e?.contains("8 of 12 bytes") ?? false, e ?? "a short read was accepted")
  }

  func testReportedUnderflowIsHonouredAndMustMatchTheData() throws {
    var honest = readTask(12)
    XCTAssertNil(feed(&honest, [(0, 4, false), (4, 4, true)], flags: DataInFlags.underflow, residual: 4))
    var liar = readTask(12)
    XCTAssertNotNil(
      feed(&liar, [(0, 4, false), (4, 4, false), (8, 4, true)], flags: DataInFlags.underflow, residual: 4096),
      "underflow larger than the command")
    var liar2 = readTask(12)
    XCTAssertNotNil(
      feed(&liar2, [(0, 4, false), (4, 4, false), (8, 4, true)], flags: DataInFlags.underflow, residual: 4),
      "all 12 bytes came, but the target says 4 are missing")
    var both = readTask(12)
    XCTAssertNotNil(
      feed(&both, [(0, 12, true)], flags: DataInFlags.underflow | DataInFlags.overflow, residual: 0))
  }

  func testSCSIResponseAfterIncompleteDataInIsRefused() throws {
    var task = readTask(8)
    _ = try task.handleDataIn(dataIn(offset: 0, bytes: [1, 2, 3, 4], dataSN: 0, status: false), allocator: .init())
    var h = BasicHeaderSegment(opcode: .scsiResponse, flags: finalFlag)
    h.scsiStatus = 0
    XCTAssertThrowsError(try task.handleResponse(ISCSIPDU(header: h))) {
      XCTAssertEqual(($0 as? ISCSIError)?.code, .protocolViolation)
    }
    // CHECK CONDITION carries no data the caller uses: no accounting.
    h.scsiStatus = 0x02
    XCTAssertNoThrow(try task.handleResponse(ISCSIPDU(header: h)))
    _ = try task.handleDataIn(dataIn(offset: 4, bytes: [5, 6, 7, 8], dataSN: 1, status: false), allocator: .init())
    h.scsiStatus = 0
    XCTAssertEqual(try task.handleResponse(ISCSIPDU(header: h)).dataLength, 8)
  }

  func testByteRangesMergeAndRefuseOverlaps() {
    var r = ByteRanges()
    XCTAssertTrue(r.insert(10..<20))
    XCTAssertTrue(r.insert(30..<40))
    XCTAssertFalse(r.insert(15..<16))
    XCTAssertFalse(r.insert(19..<31))
    XCTAssertTrue(r.insert(20..<30))
    XCTAssertEqual(r.ranges, [10..<40])
    XCTAssertTrue(r.insert(0..<5))
    XCTAssertFalse(r.insert(0..<1))
    XCTAssertTrue(r.insert(5..<10))
    XCTAssertEqual(r.ranges, [0..<40])
  }

  func testShortNonMediumDataIsAcceptedAsItCameButNeverWithAHole() throws {
    // INQUIRY with a 255-byte allocation answered with 36 bytes and no U bit.
    var inquiry = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x12], direction: .read(255)), limits: .init())
    let c = try XCTUnwrap(
      try inquiry.handleDataIn(dataIn(offset: 0, bytes: bytes(36, 1), dataSN: 0, status: true), allocator: .init()))
    XCTAssertEqual(c.dataLength, 36, "not padded to 255")
    var holed = SCSITask(itt: 9, command: SCSICommand(lun: 0, cdb: [0x12], direction: .read(255)), limits: relaxed)
    _ = try holed.handleDataIn(dataIn(offset: 8, bytes: bytes(8, 1), dataSN: 0, status: false), allocator: .init())
    XCTAssertThrowsError(
      try holed.handleDataIn(dataIn(offset: 20, bytes: bytes(4, 1), dataSN: 1, status: true), allocator: .init()))
  }

  func testAWriteTheTargetDidNotTakeWholeIsNotAcknowledged() throws {
    let task = writeTask(8192, .init())
    var h = BasicHeaderSegment(opcode: .scsiResponse, flags: finalFlag | DataInFlags.underflow)
    h.residualCount = 4096
    XCTAssertThrowsError(try task.handleResponse(ISCSIPDU(header: h))) {
      XCTAssertEqual(($0 as? ISCSIError)?.code, .protocolViolation)
    }
    h.flags = finalFlag
    h.residualCount = 0
    XCTAssertEqual(try task.handleResponse(ISCSIPDU(header: h)).status, 0)
    // A parameter list taken in part is fine (tgtd answers UNMAP with a residual).
    let unmap = SCSITask(
      itt: 5, command: SCSICommand(lun: 1, cdb: [0x42], direction: .write(payload(48))), limits: .init())
    h.flags = finalFlag | DataInFlags.underflow
    h.residualCount = 24
    XCTAssertEqual(try unmap.handleResponse(ISCSIPDU(header: h)).residual, 24)
  }

  func testRecoveredErrorDataIsCheckedLikeGood() throws {
    var task = readTask(8)
    _ = try task.handleDataIn(dataIn(offset: 0, bytes: [1, 2, 3, 4], dataSN: 0, status: false), allocator: .init())
    var h = BasicHeaderSegment(opcode: .scsiResponse, flags: finalFlag)
    h.scsiStatus = 0x02
    var sense = ByteBuffer()
    sense.writeInteger(UInt16(18))
    sense.writeBytes([0x70, 0, 0x01, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x17, 0x01, 0, 0, 0, 0])  // RECOVERED ERROR
    XCTAssertThrowsError(try task.handleResponse(ISCSIPDU(header: h, data: sense)), "half the data, used as good")
    // COMPLETED (sense key 0xF) is a success too (SPC-4), checked the same way; a sense
    // that cannot be read is a failure, whose data nobody uses.
    for (key, throwsError) in [(UInt8(0x0f), true), (0x03, false)] {
      var t = readTask(8)
      _ = try t.handleDataIn(dataIn(offset: 0, bytes: [1, 2, 3, 4], dataSN: 0, status: false), allocator: .init())
      var s = ByteBuffer()
      s.writeInteger(UInt16(18))
      s.writeBytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
      if throwsError {
        XCTAssertThrowsError(try t.handleResponse(ISCSIPDU(header: h, data: s)), "sense key \(key): half the data")
      } else {
        XCTAssertNoThrow(try t.handleResponse(ISCSIPDU(header: h, data: s)), "MEDIUM ERROR: a failure, data unused")
      }
    }
    var garbled = readTask(8)
    _ = try garbled.handleDataIn(dataIn(offset: 0, bytes: [1, 2, 3, 4], dataSN: 0, status: false), allocator: .init())
    var junk = ByteBuffer()
    junk.writeInteger(UInt16(3))
    junk.writeBytes([0x00, 0x01, 0x02])
    XCTAssertNoThrow(try garbled.handleResponse(ISCSIPDU(header: h, data: junk)))
  }
}
