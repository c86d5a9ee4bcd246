import XCTest

@testable import Bridge
@testable import SCSI

/// `lunbridge pr` prints what mpathpersist prints for the same answer.
final class ReservationTextTests: XCTestCase {
  func testReadKeysAndReservationAsMpathpersistPrintsThem() throws {
    var keys: [UInt8] = [0, 0, 0, 4, 0, 0, 0, 16]
    keys += [0, 0, 0, 0, 0, 0, 0x1a, 0x2b] + [0, 0, 0, 0, 0, 0, 0x1a, 0x2b]
    XCTAssertEqual(
      try PRReply.decoded(.readKeys, keys).text(for: .readKeys),
      "  PR generation=0x4, \t2 registered reservation keys follow:\n    0x1a2b\n    0x1a2b")
    XCTAssertEqual(
      try PRReply.decoded(.readKeys, [0, 0, 0, 1, 0, 0, 0, 0]).text(for: .readKeys),
      "  PR generation=0x1, \t0 registered reservation key.")
    var held: [UInt8] = [0, 0, 0, 4, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0x1a, 0x2b]
    held += [0, 0, 0, 0, 0, 0x05, 0, 0]
    XCTAssertEqual(
      try PRReply.decoded(.readReservation, held).text(for: .readReservation),
      "  PR generation=0x4, Reservation follows:\n   Key = 0x1a2b\n  scope = LU_SCOPE, type = Write Exclusive, registrants only")
    XCTAssertEqual(
      try PRReply.decoded(.readReservation, [0, 0, 0, 9, 0, 0, 0, 0]).text(for: .readReservation),
      "  PR generation=0x9, there is NO reservation held")
  }

  func testFullStatusFromKeysMarksOneHolder() throws {
    let keys = PRKeys(generation: 3, keys: [0xa, 0xb, 0xb])
    let reservation = PRReservation(
      generation: 3, reservation: .init(key: 0xb, scope: 0, type: .exclusiveAccess, rawType: 3))
    let reply = PRReply.fullStatus(keys: keys, reservation: reservation)
    XCTAssertEqual(reply.registrations?.map(\.holder), [false, true, false])
    XCTAssertEqual(reply.registrations?[1].typeName, "Exclusive Access")
    XCTAssertEqual(reply.fromKeys, true)
    XCTAssertTrue(reply.text(for: .readFullStatus).contains("from READ KEYS and READ RESERVATION"))
  }

  func testAReservationTypeIsRequiredWhereTheOperationTakesOne() {
    XCTAssertNotNil(PRRequest(operation: .reserve, key: 1).problem)
    XCTAssertNotNil(PRRequest(operation: .preempt, key: 1, serviceActionKey: 2, type: 2).problem, "2 is obsolete")
    XCTAssertNil(PRRequest(operation: .preemptAbort, key: 1, serviceActionKey: 2, type: 8).problem)
    XCTAssertNil(PRRequest(operation: .register, serviceActionKey: 2).problem)
    XCTAssertNil(PRRequest(operation: .readKeys).problem)
  }
}
