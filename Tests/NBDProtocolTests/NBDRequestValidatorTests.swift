import NIOCore
import XCTest

@testable import NBDProtocol

final class NBDRequestValidatorTests: XCTestCase {
  let fullFlags: NBDTransmissionFlags = [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero]

  func export(min: UInt32, size: UInt64 = 1 << 20, flags: NBDTransmissionFlags, max: UInt32 = 1 << 16)
    throws -> NBDExportInfo
  {
    try NBDExportInfo(
      name: "lun0", size: size, transmissionFlags: flags, minimumBlockSize: min,
      preferredBlockSize: Swift.max(min, 4096), maximumPayload: max)
  }

  struct Case {
    var name: String
    var request: NBDRequest
    var expected: NBDErrno?
    var line: UInt
  }

  func run(_ validator: NBDRequestValidator, _ cases: [Case]) {
    for c in cases {
      XCTAssertEqual(validator.validate(c.request), c.expected, c.name, line: c.line)
    }
  }

  func r(_ type: NBDCommand, _ offset: UInt64, _ length: UInt32, _ flags: NBDCommandFlags = []) -> NBDRequest {
    NBDRequest(flags: flags, type: type, handle: 42, offset: offset, length: length)
  }

  func testBlockSize512() throws {
    let v = NBDRequestValidator(export: try export(min: 512, flags: fullFlags))
    let size: UInt64 = 1 << 20
    run(
      v,
      [
        Case(name: "aligned read", request: r(.read, 512, 1024), expected: nil, line: #line),
        Case(name: "read to exact end", request: r(.read, size - 512, 512), expected: nil, line: #line),
        Case(name: "read past end", request: r(.read, size - 512, 1024), expected: .einval, line: #line),
        Case(name: "write past end", request: r(.write, size, 512), expected: .enospc, line: #line),
        Case(name: "write zeroes past end", request: r(.writeZeroes, size, 512), expected: .enospc, line: #line),
        Case(name: "trim past end", request: r(.trim, size, 512), expected: .einval, line: #line),
        Case(name: "offset+length overflows", request: r(.read, UInt64.max - 511, 512), expected: .einval, line: #line),
        Case(name: "misaligned offset", request: r(.read, 100, 512), expected: .einval, line: #line),
        Case(name: "misaligned length", request: r(.write, 0, 513), expected: .einval, line: #line),
        Case(name: "misaligned trim", request: r(.trim, 256, 512), expected: .einval, line: #line),
        Case(name: "read > max payload", request: r(.read, 0, (1 << 16) + 512), expected: .einval, line: #line),
        Case(name: "write > max payload", request: r(.write, 0, (1 << 16) + 512), expected: .einval, line: #line),
        Case(name: "trim > max payload ok", request: r(.trim, 0, 1 << 19), expected: nil, line: #line),
        Case(name: "zero-length read", request: r(.read, 0, 0), expected: .einval, line: #line),
        Case(name: "zero-length write", request: r(.write, 0, 0), expected: .einval, line: #line),
        Case(name: "flush", request: r(.flush, 0, 0), expected: nil, line: #line),
        Case(name: "flush with length", request: r(.flush, 0, 512), expected: .einval, line: #line),
        Case(name: "FUA write", request: r(.write, 0, 512, .fua), expected: nil, line: #line),
        Case(name: "FUA flush", request: r(.flush, 0, 0, .fua), expected: nil, line: #line),
        Case(name: "NO_HOLE on write zeroes", request: r(.writeZeroes, 0, 512, .noHole), expected: nil, line: #line),
        Case(name: "FAST_ZERO on write zeroes", request: r(.writeZeroes, 0, 512, .fastZero), expected: nil, line: #line),
        Case(name: "NO_HOLE on write", request: r(.write, 0, 512, .noHole), expected: .einval, line: #line),
        Case(name: "DF on read (no SEND_DF)", request: r(.read, 0, 512, .dontFragment), expected: .einval, line: #line),
        Case(name: "REQ_ONE on read", request: r(.read, 0, 512, .reqOne), expected: .einval, line: #line),
        Case(
          name: "unknown flag bit", request: r(.read, 0, 512, NBDCommandFlags(rawValue: 1 << 9)), expected: .einval,
          line: #line),
        Case(name: "unknown command", request: r(NBDCommand(rawValue: 99), 0, 512), expected: .einval, line: #line),
        Case(name: "resize (experimental)", request: r(NBDCommand(rawValue: 8), 0, 0), expected: .einval, line: #line),
        // Whether base:allocation was selected is the connection's check; here only the request.
        Case(name: "block status", request: r(.blockStatus, 0, 512), expected: nil, line: #line),
        Case(name: "block status REQ_ONE", request: r(.blockStatus, 0, 512, .reqOne), expected: nil, line: #line),
        Case(name: "block status of it all", request: r(.blockStatus, 0, 1 << 20), expected: nil, line: #line),
        Case(name: "block status beyond the end", request: r(.blockStatus, 512, 1 << 20), expected: .einval, line: #line),
        Case(name: "block status zero length", request: r(.blockStatus, 0, 0), expected: .einval, line: #line),
        Case(name: "block status misaligned", request: r(.blockStatus, 100, 512), expected: .einval, line: #line),
        Case(name: "NO_HOLE on block status", request: r(.blockStatus, 0, 512, .noHole), expected: .einval, line: #line),
        Case(name: "cache not advertised", request: r(.cache, 0, 512), expected: .einval, line: #line),
        Case(name: "disconnect", request: r(.disconnect, 0, 0), expected: nil, line: #line),
      ])
  }

  func testBlockSize4096() throws {
    let v = NBDRequestValidator(export: try export(min: 4096, flags: fullFlags))
    run(
      v,
      [
        Case(name: "aligned", request: r(.write, 8192, 4096), expected: nil, line: #line),
        Case(name: "512-aligned only", request: r(.write, 512, 4096), expected: .einval, line: #line),
        Case(name: "length 512", request: r(.read, 0, 512), expected: .einval, line: #line),
        Case(name: "trim misaligned", request: r(.trim, 4096, 2048), expected: .einval, line: #line),
        Case(name: "write past end", request: r(.write, (1 << 20) - 4096, 8192), expected: .enospc, line: #line),
      ])
  }

  func testReadOnly() throws {
    let v = NBDRequestValidator(export: try export(min: 512, flags: fullFlags.union(.readOnly)))
    run(
      v,
      [
        Case(name: "read ok", request: r(.read, 0, 512), expected: nil, line: #line),
        Case(name: "write", request: r(.write, 0, 512), expected: .eperm, line: #line),
        Case(name: "write past end still EPERM", request: r(.write, 1 << 30, 512), expected: .eperm, line: #line),
        Case(name: "trim", request: r(.trim, 0, 512), expected: .eperm, line: #line),
        Case(name: "write zeroes", request: r(.writeZeroes, 0, 512), expected: .eperm, line: #line),
        Case(name: "flush ok", request: r(.flush, 0, 0), expected: nil, line: #line),
      ])
  }

  func testUnadvertisedCommandsAndFlags() throws {
    let v = NBDRequestValidator(export: try export(min: 512, flags: []))
    run(
      v,
      [
        Case(name: "flush", request: r(.flush, 0, 0), expected: .einval, line: #line),
        Case(name: "trim", request: r(.trim, 0, 512), expected: .einval, line: #line),
        Case(name: "write zeroes", request: r(.writeZeroes, 0, 512), expected: .einval, line: #line),
        Case(name: "FUA without SEND_FUA", request: r(.write, 0, 512, .fua), expected: .einval, line: #line),
        Case(name: "plain write", request: r(.write, 0, 512), expected: nil, line: #line),
      ])
  }

  func testFastZeroNeedsSendFastZero() throws {
    let v = NBDRequestValidator(export: try export(min: 512, flags: [.sendWriteZeroes]))
    XCTAssertEqual(v.validate(r(.writeZeroes, 0, 512, .fastZero)), .einval)
    XCTAssertNil(v.validate(r(.writeZeroes, 0, 512, .noHole)))
  }

  func testEffectLengthLimit() throws {
    let v = NBDRequestValidator(export: try export(min: 512, flags: fullFlags), maximumEffectLength: 1 << 16)
    XCTAssertEqual(v.validate(r(.trim, 0, 1 << 17)), .eoverflow)
    XCTAssertEqual(v.validate(r(.writeZeroes, 0, 1 << 17)), .eoverflow)
    XCTAssertEqual(v.validate(r(.writeZeroes, 0, 1 << 17, .fastZero)), .enotsup)
    XCTAssertNil(v.validate(r(.trim, 0, 1 << 16)))
    // Block status answers for what it can; a long range is not an error.
    XCTAssertNil(v.validate(r(.blockStatus, 0, 1 << 17)))
  }

  func testKernelCommandSubset() throws {
    let v = NBDRequestValidator(
      export: try export(min: 512, flags: fullFlags.union(.sendCache)), commandSubset: NBDCommand.kernelCommands)
    XCTAssertEqual(v.validate(r(.cache, 0, 512)), .einval)
    XCTAssertNil(v.validate(r(.writeZeroes, 0, 512)))
    XCTAssertNil(v.validate(r(.disconnect, 0, 0)))
    let unrestricted = NBDRequestValidator(export: try export(min: 512, flags: fullFlags.union(.sendCache)))
    XCTAssertNil(unrestricted.validate(r(.cache, 0, 512)))
  }

  func testExportFlagNormalisationAndBlockSizeRules() throws {
    let e = try NBDExportInfo(name: "x", size: 0, transmissionFlags: [.sendDF, .sendFastZero, .readOnly])
    XCTAssertEqual(e.transmissionFlags, [.hasFlags, .readOnly])
    XCTAssertThrowsError(try NBDBlockSizeConstraints(minimum: 3, preferred: 4096, maximumPayload: 1 << 20))
    XCTAssertThrowsError(try NBDBlockSizeConstraints(minimum: 1 << 17, preferred: 1 << 17, maximumPayload: 1 << 20))
    XCTAssertThrowsError(try NBDBlockSizeConstraints(minimum: 512, preferred: 256, maximumPayload: 1 << 20))
    XCTAssertThrowsError(try NBDBlockSizeConstraints(minimum: 4096, preferred: 4096, maximumPayload: 2048))
    XCTAssertNoThrow(try NBDBlockSizeConstraints(minimum: 1, preferred: 512, maximumPayload: .max))
  }
}
