import XCTest

@testable import SCSI

/// PERSISTENT RESERVE IN / OUT at the byte level (SPC-4 6.15, 6.16).
final class PersistentReservationTests: XCTestCase {
  func testPersistentReserveInCDB() {
    XCTAssertEqual(
      CDB.persistentReserveIn(.readFullStatus, allocationLength: 0x1234), [0x5E, 0x03, 0, 0, 0, 0, 0, 0x12, 0x34, 0])
    XCTAssertEqual(CDB.persistentReserveIn(.readKeys, allocationLength: 8)[1], 0x00)
    XCTAssertEqual(CDB.persistentReserveIn(.readReservation, allocationLength: 8)[1], 0x01)
    XCTAssertEqual(CDB.persistentReserveIn(.reportCapabilities, allocationLength: 8)[1], 0x02)
  }

  func testPersistentReserveOutCDBCarriesActionScopeTypeAndListLength() {
    XCTAssertEqual(
      CDB.persistentReserveOut(.reserve, type: .writeExclusiveRegistrantsOnly), [0x5F, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0])
    XCTAssertEqual(CDB.persistentReserveOut(.register, type: nil), [0x5F, 0x00, 0x00, 0, 0, 0, 0, 0, 24, 0])
    XCTAssertEqual(CDB.persistentReserveOut(.preemptAndAbort, type: .exclusiveAccessAllRegistrants)[1...2], [0x05, 0x08])
    XCTAssertEqual(CDB.persistentReserveOut(.registerAndIgnoreExistingKey, type: nil)[1], 0x06)
    XCTAssertEqual(PRType.allCases.map(\.rawValue), [1, 3, 5, 6, 7, 8])
  }

  func testParameterListPutsKeysAndFlagsWhereSPC4Says() {
    let p = PROutParameters(
      key: 0x0102_0304_0506_0708, serviceActionKey: 0xA1A2_A3A4_A5A6_A7A8, allTargetPorts: true,
      persistThroughPowerLoss: true)
    XCTAssertEqual(
      p.bytes,
      [1, 2, 3, 4, 5, 6, 7, 8, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0, 0, 0, 0, 0x05, 0, 0, 0])
    XCTAssertEqual(PROutParameters(serviceActionKey: 1).bytes[20], 0)
  }

  func testReadKeysListsEveryRegisteredNexus() throws {
    var b: [UInt8] = [0, 0, 0, 7, 0, 0, 0, 16]
    b += [0, 0, 0, 0, 0, 0, 0xAB, 0xCD]
    b += [0, 0, 0, 0, 0, 0, 0xAB, 0xCD]
    let keys = try PRKeys(b)
    XCTAssertEqual(keys.generation, 7)
    XCTAssertEqual(keys.keys, [0xABCD, 0xABCD])
    // Nothing registered; a list cut by the allocation length keeps what is whole.
    XCTAssertEqual(try PRKeys([0, 0, 0, 1, 0, 0, 0, 0]).keys, [])
    XCTAssertEqual(try PRKeys(Array(b.prefix(20))).keys, [0xABCD])
    XCTAssertThrowsError(try PRKeys([0, 0, 0]))
    XCTAssertThrowsError(try PRKeys([0, 0, 0, 1, 0, 0, 0, 5, 1, 2, 3, 4, 5]), "a length that is no multiple of 8")
  }

  func testReadReservationWithAndWithoutAHolder() throws {
    let none = try PRReservation([0, 0, 0, 3, 0, 0, 0, 0])
    XCTAssertEqual(none.generation, 3)
    XCTAssertNil(none.reservation)
    var b: [UInt8] = [0, 0, 0, 4, 0, 0, 0, 0x10]
    b += [0, 0, 0, 0, 0, 0, 0x12, 0x34]  // key
    b += [0, 0, 0, 0, 0, 0x05, 0, 0]  // obsolete, reserved, scope/type, obsolete
    let held = try PRReservation(b)
    XCTAssertEqual(held.reservation?.key, 0x1234)
    XCTAssertEqual(held.reservation?.scope, 0)
    XCTAssertEqual(held.reservation?.type, .writeExclusiveRegistrantsOnly)
    XCTAssertEqual(held.reservation?.type?.description, "Write Exclusive, registrants only")
    XCTAssertThrowsError(try PRReservation(Array(b.prefix(12))))
  }

  func testReadFullStatusDecodesEachRegistrationAndItsISCSITransportID() throws {
    func descriptor(key: UInt8, holder: Bool, port: UInt8, name: String) -> [UInt8] {
      var id: [UInt8] = [0x45, 0, 0, 0] + Array(name.utf8) + [0]
      while id.count % 4 != 0 { id.append(0) }
      let idLength = UInt8(id.count - 4)
      id[3] = idLength
      var d: [UInt8] = [0, 0, 0, 0, 0, 0, 0, key, 0, 0, 0, 0, holder ? 0x01 : 0, holder ? 0x05 : 0, 0, 0, 0, 0, 0, port]
      d += [0, 0, 0, UInt8(id.count)]
      return d + id
    }
    let a = descriptor(key: 0xA, holder: true, port: 1, name: "iqn.2026-11.org.example:a,i,0x80aabbccddee")
    let b = descriptor(key: 0xB, holder: false, port: 2, name: "iqn.2026-11.org.example:b,i,0x801122334455")
    let bytes: [UInt8] = [0, 0, 0, 9, 0, 0, 0, UInt8(a.count + b.count)] + a + b
    let status = try PRFullStatus(bytes)
    XCTAssertEqual(status.generation, 9)
    XCTAssertEqual(status.registrations.map(\.key), [0xA, 0xB])
    XCTAssertEqual(status.registrations.map(\.holder), [true, false])
    XCTAssertEqual(status.registrations[0].type, .writeExclusiveRegistrantsOnly)
    XCTAssertEqual(status.registrations.map(\.relativeTargetPort), [1, 2])
    XCTAssertEqual(status.registrations[1].initiator, "iqn.2026-11.org.example:b,i,0x801122334455")
    // Cut inside the second descriptor: the first is kept.
    XCTAssertEqual(try PRFullStatus(Array(bytes.prefix(8 + a.count + 10))).registrations.count, 1)
    // Another protocol's TransportID (FC, 0): no iSCSI name.
    XCTAssertNil(PRFullStatus.iSCSIName([0x00, 0, 0, 4, 1, 2, 3, 4]))
  }

  func testReportCapabilities() throws {
    let c = try PRCapabilities([0, 8, 0x0D, 0x81, 0xE2, 0x01, 0, 0])
    XCTAssertTrue(c.persistThroughPowerLossCapable)
    XCTAssertTrue(c.allTargetPortsCapable)
    XCTAssertTrue(c.persistThroughPowerLossActive)
    XCTAssertEqual(
      c.types,
      [
        .writeExclusive, .writeExclusiveRegistrantsOnly, .exclusiveAccessRegistrantsOnly, .writeExclusiveAllRegistrants,
        .exclusiveAccessAllRegistrants,
      ])
    XCTAssertNil(try PRCapabilities([0, 8, 0, 0, 0xFF, 0xFF, 0, 0]).types, "type mask not valid without TMV")
  }
}
