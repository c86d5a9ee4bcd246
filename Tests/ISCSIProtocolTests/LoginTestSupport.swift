import NIOCore
import XCTest

@testable import ISCSIProtocol

/// Plays the target: builds Login Responses by hand.
struct FakeTarget {
  var statSN: UInt32 = 100
  var tsih: UInt16 = 0x1234

  mutating func response(
    to request: ISCSIPDU, transit: Bool, csg: UInt8? = nil, nsg: UInt8 = 0, continues: Bool = false,
    keys: [TextKeyValue] = [], raw: [UInt8]? = nil, statusClass: UInt8 = 0, statusDetail: UInt8 = 0,
    itt: UInt32? = nil, version: UInt8 = 0, final: Bool = false
  ) -> ISCSIPDU {
    let req = request.header
    var h = BasicHeaderSegment(opcode: .loginResponse)
    var flags: UInt8 = (csg ?? req.loginCSGRaw) << 2
    if transit { flags |= 0x80 | nsg }
    if continues { flags |= 0x40 }
    h.flags = flags
    h.byte2 = 0
    h.byte3 = version
    h.isid = req.isid
    h.tsih = (final || (transit && nsg == 3)) ? tsih : req.tsih
    h.initiatorTaskTag = itt ?? req.initiatorTaskTag
    h.statSN = statSN
    statSN &+= 1
    h.expCmdSN = req.cmdSN
    h.maxCmdSN = req.cmdSN &+ 31
    h.word9 = UInt32(statusClass) << 24 | UInt32(statusDetail) << 16
    var data = ByteBuffer()
    data.writeBytes(raw ?? (try! TextKeys.encode(keys)))
    h.dataSegmentLength = UInt32(data.readableBytes)
    return ISCSIPDU(header: h, data: data)
  }
}

func keys(of pdu: ISCSIPDU) throws -> [TextKeyValue] {
  try TextKeys.decode(pdu.data)
}

func dict(_ pdu: ISCSIPDU) throws -> [String: String] {
  var d: [String: String] = [:]
  for p in try keys(of: pdu) { d[p.key] = p.value }
  return d
}

extension LoginAction {
  var sentPDU: ISCSIPDU? {
    if case .send(let p) = self { return p }
    return nil
  }
}

/// Deterministic "random" bytes: 0x10, 0x11, ... for any count.
let fixedRandom: RandomBytes = { n in (0..<n).map { UInt8((0x10 + $0) & 0xff) } }

func assertThrows(
  _ code: ISCSIError.Code, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void
) {
  do {
    try body()
    XCTFail("expected \(code) error", file: file, line: line)
  } catch let e as ISCSIError {
    XCTAssertEqual(e.code, code, "message: \(e.message)", file: file, line: line)
  } catch {
    XCTFail("unexpected error \(error)", file: file, line: line)
  }
}
