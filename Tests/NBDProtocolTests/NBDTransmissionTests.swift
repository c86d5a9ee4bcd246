import NIOCore
import XCTest

@testable import NBDProtocol

final class NBDTransmissionTests: XCTestCase {
  func bytes(_ b: ByteBuffer) -> [UInt8] { Array(b.readableBytesView) }

  func testDecodeReadRequestByteExact() throws {
    var buffer = ByteBuffer(bytes: [
      0x25, 0x60, 0x95, 0x13,  // magic
      0x00, 0x01,  // flags: FUA
      0x00, 0x00,  // READ
      0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,  // cookie
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00,  // offset 4096
      0x00, 0x00, 0x02, 0x00,  // length 512
      0xAA,  // next request's first byte stays
    ])
    var decoder = NBDRequestDecoder()
    let event = try XCTUnwrap(try decoder.next(from: &buffer))
    XCTAssertEqual(
      event.request, NBDRequest(flags: .fua, type: .read, handle: 0x0102_0304_0506_0708, offset: 4096, length: 512))
    XCTAssertNil(event.payload)
    XCTAssertEqual(bytes(buffer), [0xAA])
    XCTAssertNil(try decoder.next(from: &buffer))
  }

  func testRequestWriteRoundTrip() throws {
    let request = NBDRequest(flags: [.fua, .noHole], type: .writeZeroes, handle: 7, offset: 1 << 40, length: 1 << 20)
    var buffer = ByteBuffer()
    request.write(into: &buffer)
    XCTAssertEqual(buffer.readableBytes, 28)
    XCTAssertEqual(
      bytes(buffer),
      [0x25, 0x60, 0x95, 0x13, 0, 3, 0, 6, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x10, 0, 0])
    var decoder = NBDRequestDecoder()
    XCTAssertEqual(try decoder.next(from: &buffer)?.request, request)
    XCTAssertEqual(buffer.readableBytes, 0)
  }

  func testWritePayloadIsASliceSharingStorage() throws {
    var buffer = ByteBuffer()
    NBDRequest(type: .write, handle: 1, offset: 0, length: 8).write(into: &buffer)
    buffer.writeBytes([1, 2, 3, 4, 5, 6, 7, 8])
    NBDRequest(type: .flush, handle: 2, offset: 0, length: 0).write(into: &buffer)
    let base = buffer.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress!) }

    var decoder = NBDRequestDecoder()
    let event = try XCTUnwrap(try decoder.next(from: &buffer))
    let payload = try XCTUnwrap(event.payload)
    XCTAssertEqual(bytes(payload), [1, 2, 3, 4, 5, 6, 7, 8])
    let payloadBase = payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress!) }
    XCTAssertEqual(payloadBase, base + 28, "payload must be a slice of the input, not a copy")
    XCTAssertEqual(try decoder.next(from: &buffer)?.request.type, .flush)
    XCTAssertEqual(buffer.readableBytes, 0)
  }

  func testPartialInputWaitsAndConsumesNothing() throws {
    var whole = ByteBuffer()
    NBDRequest(type: .write, handle: 9, offset: 512, length: 4).write(into: &whole)
    whole.writeBytes([9, 8, 7, 6])
    var decoder = NBDRequestDecoder()
    var buffer = ByteBuffer()
    var events: [NBDRequestEvent] = []
    for byte in whole.readableBytesView {
      buffer.writeInteger(byte)
      if let event = try decoder.next(from: &buffer) { events.append(event) }
      if events.isEmpty { XCTAssertEqual(buffer.readerIndex, 0, "nothing consumed while incomplete") }
    }
    XCTAssertEqual(events.count, 1)
    XCTAssertEqual(events.first?.request.handle, 9)
    XCTAssertEqual(events.first?.payload.map(bytes), [9, 8, 7, 6])
  }

  func testOversizeWriteRefusedBeforePayloadArrives() {
    var buffer = ByteBuffer()
    NBDRequest(type: .write, handle: 1, offset: 0, length: (32 << 20) + 1).write(into: &buffer)
    var decoder = NBDRequestDecoder(maxPayload: 32 << 20)
    XCTAssertThrowsError(try decoder.next(from: &buffer)) { error in
      XCTAssertEqual(
        error as? NBDProtocolError, .writePayloadTooLarge(length: (32 << 20) + 1, limit: 32 << 20))
    }
    // Poisoned afterwards.
    XCTAssertThrowsError(try decoder.next(from: &buffer)) { XCTAssertEqual($0 as? NBDProtocolError, .decoderFailed) }
  }

  func testWriteAtLimitWaitsForPayload() throws {
    var buffer = ByteBuffer()
    NBDRequest(type: .write, handle: 1, offset: 0, length: 32 << 20).write(into: &buffer)
    var decoder = NBDRequestDecoder(maxPayload: 32 << 20)
    XCTAssertNil(try decoder.next(from: &buffer))
    XCTAssertEqual(buffer.readableBytes, 28)
  }

  func testLargeLengthOnNonWriteIsNotAPayload() throws {
    var buffer = ByteBuffer()
    NBDRequest(type: .trim, handle: 1, offset: 0, length: .max).write(into: &buffer)
    var decoder = NBDRequestDecoder(maxPayload: 1 << 25)
    XCTAssertEqual(try decoder.next(from: &buffer)?.request.length, .max)
  }

  func testBadMagicThrows() {
    var buffer = ByteBuffer(repeating: 0, count: 28)
    buffer.setInteger(NBDMagic.extendedRequest, at: 0)
    var decoder = NBDRequestDecoder()
    XCTAssertThrowsError(try decoder.next(from: &buffer)) { error in
      XCTAssertEqual(error as? NBDProtocolError, .badRequestMagic(NBDMagic.extendedRequest))
    }
  }

  func testSimpleReplyByteExact() {
    var out = ByteBuffer()
    NBDReplyEncoder.writeSimpleReply(handle: 0x1122_3344_5566_7788, error: nil, into: &out)
    NBDReplyEncoder.writeSimpleReply(handle: 1, error: .enospc, into: &out)
    XCTAssertEqual(
      bytes(out),
      [
        0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
        0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 1,
      ])
    XCTAssertEqual(bytes(NBDReplyEncoder.simpleReply(handle: 5, error: .eperm)).count, 16)
  }

  func testConstantValues() {
    XCTAssertEqual(NBDOptionReplyType.errUnsupported.rawValue, 0x8000_0001)
    XCTAssertEqual(NBDOptionReplyType.errTooBig.rawValue, 0x8000_0009)
    XCTAssertTrue(NBDOptionReplyType.errUnknown.isError)
    XCTAssertFalse(NBDOptionReplyType.ack.isError)
    XCTAssertEqual(NBDTransmissionFlags.sendFastZero.rawValue, 0x0800)
    XCTAssertEqual(NBDTransmissionFlags.sendCache.rawValue, 0x0400)
    XCTAssertEqual(NBDCommandFlags.fastZero.rawValue, 16)
    XCTAssertEqual(NBDErrno.eshutdown.rawValue, 108)
    XCTAssertEqual(NBDMagic.optionReply, 0x0003_e889_0455_65a9)
  }
}
