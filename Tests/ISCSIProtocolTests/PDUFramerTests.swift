import ISCSIProtocol
import NIOCore
import XCTest

final class PDUFramerTests: XCTestCase {
  func nopIn(itt: UInt32 = 7, data: [UInt8] = []) -> ISCSIPDU {
    var h = BasicHeaderSegment(opcode: .nopIn, flags: finalFlag)
    h.initiatorTaskTag = itt
    h.targetTransferTag = reservedTag
    h.statSN = 10
    h.expCmdSN = 11
    h.maxCmdSN = 20
    var b = ByteBuffer()
    b.writeBytes(data)
    return ISCSIPDU(header: h, data: b)
  }

  func encode(_ pdu: ISCSIPDU, _ p: FramingParameters) -> ByteBuffer {
    var out = ByteBuffer()
    PDUEncoder(parameters: p).encode(pdu, into: &out)
    return out
  }

  func testRoundTripWithAndWithoutDigestsAndPadding() throws {
    for hd in [false, true] {
      for dd in [false, true] {
        for size in [0, 1, 3, 4, 5, 4096] {
          let p = FramingParameters(headerDigest: hd, dataDigest: dd, maxRecvDataSegmentLength: 8192)
          let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 * 7) }
          var bytes = encode(nopIn(data: payload), p)
          let expectedLength = 48 + (hd ? 4 : 0) + ((size + 3) & ~3) + (dd && size > 0 ? 4 : 0)
          XCTAssertEqual(bytes.readableBytes, expectedLength)
          XCTAssertEqual(PDUFramer(parameters: p).lengthOfPDU(at: bytes), expectedLength)
          XCTAssertNil(PDUFramer(parameters: p).lengthOfPDU(at: bytes.getSlice(at: bytes.readerIndex, length: 47)!))
          let pdu = try XCTUnwrap(try PDUFramer(parameters: p).next(from: &bytes))
          XCTAssertEqual(pdu.opcode, .nopIn)
          XCTAssertEqual(pdu.header.initiatorTaskTag, 7)
          XCTAssertEqual(pdu.header.maxCmdSN, 20)
          XCTAssertEqual(Array(pdu.data.readableBytesView), payload)
          XCTAssertEqual(bytes.readableBytes, 0, "the whole PDU was consumed")
        }
      }
    }
  }

  func testAPDUWithAnAHSIsFramedWhole() throws {
    // An AHS (8 bytes, TotalAHSLength 2) between the header and its digest, then data.
    for hd in [false, true] {
      let p = FramingParameters(headerDigest: hd, dataDigest: true, maxRecvDataSegmentLength: 8192)
      var pdu = nopIn(data: [1, 2, 3, 4, 5])
      pdu.ahs = ByteBuffer(bytes: [0, 6, 1, 0, 9, 9, 9, 9])
      var bytes = encode(pdu, p)
      bytes.writeBytes([0xee])  // the next PDU's first byte
      let expectedLength = 48 + 8 + (hd ? 4 : 0) + 8 + 4
      XCTAssertEqual(PDUFramer(parameters: p).lengthOfPDU(at: bytes), expectedLength)
      let framed = try XCTUnwrap(try PDUFramer(parameters: p).next(from: &bytes))
      XCTAssertEqual(framed.ahs.map { Array($0.readableBytesView) }, [0, 6, 1, 0, 9, 9, 9, 9])
      XCTAssertEqual(Array(framed.data.readableBytesView), [1, 2, 3, 4, 5])
      XCTAssertEqual(Array(bytes.readableBytesView), [0xee])
    }
  }

  func testPartialInputWaitsByteByByte() throws {
    let p = FramingParameters(headerDigest: true, dataDigest: true)
    let whole = encode(nopIn(data: [9, 8, 7]), p)
    var feed = ByteBuffer()
    let framer = PDUFramer(parameters: p)
    for i in 0..<whole.readableBytes {
      XCTAssertNil(try framer.next(from: &feed), "complete after \(i) bytes?")
      feed.writeBytes([whole.getInteger(at: i, as: UInt8.self)!])
    }
    XCTAssertNotNil(try framer.next(from: &feed))
  }

  func testAPartialPDUGetsItsWholeBufferOnceNotByDoublingAsItArrives() throws {
    // A 256 KiB data segment arriving in 64 KiB reads: once the header is known the
    // cumulation gets room for the whole PDU (NIO rounds capacities up to a power of
    // two), and does not grow, copying what it holds, with every read.
    let p = FramingParameters(headerDigest: false, dataDigest: false, maxRecvDataSegmentLength: 256 << 10)
    let whole = encode(nopIn(data: [UInt8](repeating: 5, count: 256 << 10)), p)
    let framer = PDUFramer(parameters: p)
    var cumulation: ByteBuffer? = nil
    var offset = 0
    var pdu: ISCSIPDU? = nil
    while pdu == nil, offset < whole.readableBytes {
      let n = min(64 << 10, whole.readableBytes - offset)
      cumulation.cumulate(whole.getSlice(at: offset, length: n)!)
      offset += n
      pdu = try framer.next(from: &cumulation!)
      if pdu == nil { XCTAssertEqual(cumulation!.capacity, 512 << 10, "after \(offset) bytes") }
    }
    XCTAssertEqual(pdu?.data.readableBytes, 256 << 10)
    XCTAssertEqual(cumulation!.capacity, 512 << 10)
    XCTAssertGreaterThan(512 << 10, whole.readableBytes)
  }

  func testALargePDUsBufferTakesNoBytesOfTheNextAndTheOrderIsKept() throws {
    // PDUs of every kind of size, back to back, read in chunks of random sizes; framed as
    // PDUChannelHandler does: the bytes after a large PDU wait until it has been taken.
    let p = FramingParameters(headerDigest: true, dataDigest: true, maxRecvDataSegmentLength: 256 << 10)
    let sizes = [0, 100, 256 << 10, 3, 64 << 10, (64 << 10) + 1, 256 << 10, 256 << 10, 7, 200 << 10, 0]
    var stream = ByteBuffer()
    for (i, size) in sizes.enumerated() {
      var pdu = encode(nopIn(itt: UInt32(i), data: (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ i) }), p)
      stream.writeBuffer(&pdu)
    }
    let framer = PDUFramer(parameters: p)
    var generator = SystemRandomNumberGenerator()
    for round in 0..<20 {
      var cumulation = Cumulation()
      var framed: [ISCSIPDU] = []
      var largeOnes = 0
      let storage = { (b: ByteBuffer?) in b?.withVeryUnsafeBytes { UInt(bitPattern: $0.baseAddress) } }
      func take(_ incoming: ByteBuffer) {
        let length = cumulation.bytes.flatMap(framer.lengthOfPDU(at:))
        let before = storage(cumulation.bytes)
        let wasBuffered = cumulation.bytes?.readableBytes ?? 0
        cumulation.append(incoming, messageLength: framer.lengthOfPDU(at:))
        if let length, length >= MessageBuffers.threshold, let before, (cumulation.bytes?.capacity ?? 0) >= length {
          XCTAssertEqual(storage(cumulation.bytes), before, "a large PDU's buffer was copied, not appended to")
        }
        if let length, length >= MessageBuffers.threshold, wasBuffered < length,
          wasBuffered + incoming.readableBytes > length
        {
          // The read ran past a large PDU: only its own bytes went into its buffer.
          XCTAssertEqual(cumulation.bytes?.readableBytes, length)
          largeOnes += 1
        }
      }
      var offset = 0
      while offset < stream.readableBytes {
        let n = min(Int.random(in: 1...(96 << 10), using: &generator), stream.readableBytes - offset)
        take(stream.getSlice(at: offset, length: n)!)
        offset += n
        repeat {
          while cumulation.bytes != nil, let pdu = try framer.next(from: &cumulation.bytes!) { framed.append(pdu) }
        } while cumulation.takeHeld(messageLength: framer.lengthOfPDU(at:))
      }
      XCTAssertEqual(framed.map { $0.header.initiatorTaskTag }, (0..<sizes.count).map(UInt32.init), "round \(round)")
      for (i, pdu) in framed.enumerated() {
        XCTAssertEqual(
          Array(pdu.data.readableBytesView), (0..<sizes[i]).map { UInt8(truncatingIfNeeded: $0 &+ i) }, "PDU \(i)")
      }
      XCTAssertNil(cumulation.bytes)
      XCTAssertGreaterThan(largeOnes, 0, "round \(round): no read ran past a large PDU")
    }
  }

  func testReserveKeepsWhatIsBufferedAndNeverShrinks() {
    var c: ByteBuffer? = ByteBuffer(bytes: [1, 2, 3, 4])
    c!.moveReaderIndex(forwardBy: 1)
    c.reserveForMessage(100)
    XCTAssertEqual(Array(c!.readableBytesView), [2, 3, 4])
    XCTAssertEqual(c!.capacity, 128)
    c.reserveForMessage(50)
    XCTAssertEqual(c!.capacity, 128, "room enough already")
    var empty: ByteBuffer? = nil
    empty.reserveForMessage(10)
    XCTAssertNil(empty, "nothing buffered: the next read becomes the cumulation")
  }

  func testOversizedDataSegmentIsRefusedBeforeItArrives() {
    // Only the 48-byte header of a PDU announcing 1 MiB: refused at once, without
    // waiting for (or buffering) the megabyte.
    var h = BasicHeaderSegment(opcode: .dataIn)
    h.dataSegmentLength = 1 << 20
    var b = ByteBuffer()
    h.write(to: &b)
    let p = FramingParameters(maxRecvDataSegmentLength: 65536)
    XCTAssertThrowsError(try PDUFramer(parameters: p).next(from: &b)) { error in
      XCTAssertEqual((error as? ISCSIError)?.code, .protocolViolation)
    }
  }

  func testUnknownAndInitiatorOpcodesAreProtocolViolations() {
    for raw: UInt8 in [0x01, 0x05, 0x1c, 0x3e] {
      var b = ByteBuffer()
      BasicHeaderSegment(opcode: Opcode(rawValue: raw)).write(to: &b)
      XCTAssertThrowsError(try PDUFramer().next(from: &b), "opcode 0x\(String(raw, radix: 16))")
    }
  }

  func testCorruptDigestsAreDetected() {
    let p = FramingParameters(headerDigest: true, dataDigest: true)
    let good = encode(nopIn(data: [1, 2, 3, 4]), p)
    // Flip one bit in the header, then one in the data.
    for (offset, code) in [(20, ISCSIError.Code.digestMismatch), (52, .digestMismatch)] {
      var bad = good
      let byte = bad.getInteger(at: offset, as: UInt8.self)!
      bad.setInteger(byte ^ 0x10, at: offset)
      XCTAssertThrowsError(try PDUFramer(parameters: p).next(from: &bad)) { error in
        XCTAssertEqual((error as? ISCSIError)?.code, code, "bit flipped at byte \(offset)")
      }
    }
  }

  func testDataSegmentIsASliceNotACopy() throws {
    var bytes = encode(nopIn(data: [UInt8](repeating: 0xab, count: 4096)), .login)
    let pdu = try XCTUnwrap(try PDUFramer().next(from: &bytes))
    // A slice shares storage: its reader index starts after the header within the input.
    XCTAssertEqual(pdu.data.readableBytes, 4096)
    bytes.withUnsafeReadableBytes { all in
      pdu.data.withUnsafeReadableBytes { slice in
        XCTAssertEqual(slice.baseAddress, all.baseAddress.map { $0 - 4096 })
      }
    }
  }

  func testBHSFieldPositions() {
    // A SCSI Command header, byte by byte (RFC 7143 section 11.3).
    var h = BasicHeaderSegment(opcode: .scsiCommand, immediate: true, flags: 0xc1)
    h.lun = LUNEncoding.encode(1)
    h.initiatorTaskTag = 0x0102_0304
    h.expectedDataTransferLength = 4096
    h.cmdSN = 0x11
    h.expStatSN = 0x22
    h.cdb = [0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]
    h.dataSegmentLength = 5
    var b = ByteBuffer()
    h.write(to: &b)
    let bytes = Array(b.readableBytesView)
    XCTAssertEqual(bytes.count, 48)
    XCTAssertEqual(bytes[0], 0x41)
    XCTAssertEqual(bytes[1], 0xc1)
    XCTAssertEqual(Array(bytes[5...7]), [0, 0, 5])
    XCTAssertEqual(Array(bytes[8...9]), [0, 1])
    XCTAssertEqual(Array(bytes[16...19]), [1, 2, 3, 4])
    XCTAssertEqual(Array(bytes[20...23]), [0, 0, 0x10, 0])
    XCTAssertEqual(Array(bytes[24...27]), [0, 0, 0, 0x11])
    XCTAssertEqual(Array(bytes[28...31]), [0, 0, 0, 0x22])
    XCTAssertEqual(Array(bytes[32...41]), [0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0])
    var r = b
    XCTAssertEqual(BasicHeaderSegment.read(from: &r), h)
  }
}
