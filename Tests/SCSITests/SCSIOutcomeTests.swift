import XCTest

@testable import SCSI

/// The one status -> outcome table: each line is status, sense key/ASC/ASCQ, retries
/// spent -> what the initiator does.
final class SCSIOutcomeTests: XCTestCase {
  private func sense(_ key: UInt8, _ asc: UInt8, _ ascq: UInt8) -> SenseData {
    var b = [UInt8](repeating: 0, count: 18)
    b[0] = 0x70
    b[2] = key
    b[7] = 10
    b[12] = asc
    b[13] = ascq
    return try! SenseData(b)
  }

  func testTheNotReadyCodesOfAPortsAccessStateAreOneTable() {
    XCTAssertEqual(sense(0x02, 0x04, 0x0A).portAccessState, .transitioning)
    XCTAssertEqual(sense(0x02, 0x04, 0x0B).portAccessState, .standby)
    XCTAssertEqual(sense(0x02, 0x04, 0x0C).portAccessState, .unavailable)
    XCTAssertEqual(sense(0x02, 0x04, 0x12).portAccessState, .offline)
    XCTAssertNil(sense(0x02, 0x04, 0x01).portAccessState, "becoming ready is not a port state")
    XCTAssertNil(sense(0x06, 0x04, 0x0B).portAccessState, "only with NOT READY")
    // Standby and unavailable send the command to another path; offline is the LU's.
    XCTAssertEqual(outcome(0x02, sense(0x02, 0x04, 0x0B)), .failPath)
    XCTAssertEqual(outcome(0x02, sense(0x02, 0x04, 0x0C)), .failPath)
    XCTAssertEqual(outcome(0x02, sense(0x02, 0x04, 0x0A)), .recheckPath)
    XCTAssertEqual(
      outcome(0x02, sense(0x02, 0x04, 0x12)),
      .fail(errno: SCSICommandError(status: 0x02, sense: sense(0x02, 0x04, 0x12))!.errnoValue))
  }

  private func outcome(_ status: UInt8, _ s: SenseData? = nil, retries: Int = 0) -> SCSIOutcome {
    SCSIOutcome(status: status, sense: s, retries: retries, maxRetries: 8)
  }

  func testTable() {
    let good: UInt8 = 0x00
    let check: UInt8 = 0x02
    let busy: UInt8 = 0x08
    let conflict: UInt8 = 0x18
    let full: UInt8 = 0x28
    let aborted: UInt8 = 0x40
    let lines: [(String, SCSIOutcome, SCSIOutcome)] = [
      ("GOOD", outcome(good), .done),
      ("CONDITION MET", outcome(0x04), .done),
      ("RECOVERED ERROR", outcome(check, sense(0x1, 0x17, 0x01)), .done),
      ("BUSY, first", outcome(busy), .retry(afterMilliseconds: 10)),
      ("BUSY, 3rd retry", outcome(busy, retries: 3), .retry(afterMilliseconds: 40)),
      ("BUSY, retries spent", outcome(busy, retries: 8), .fail(errno: 5)),
      ("TASK SET FULL", outcome(full), .retry(afterMilliseconds: 10)),
      ("TASK ABORTED", outcome(aborted), .retry(afterMilliseconds: 0)),
      ("UNIT ATTENTION power on", outcome(check, sense(0x6, 0x29, 0x00)), .retry(afterMilliseconds: 0)),
      ("UNIT ATTENTION capacity changed", outcome(check, sense(0x6, 0x2A, 0x09)), .retry(afterMilliseconds: 0)),
      ("UNIT ATTENTION ALUA changed", outcome(check, sense(0x6, 0x2A, 0x06)), .recheckPath),
      ("UNIT ATTENTION ALUA changed, spent", outcome(check, sense(0x6, 0x2A, 0x06), retries: 8), .failPath),
      ("UNIT ATTENTION ALUA transition failed", outcome(check, sense(0x6, 0x2A, 0x07)), .recheckPath),
      ("UNIT ATTENTION ALUA transition failed, spent", outcome(check, sense(0x6, 0x2A, 0x07), retries: 8), .failPath),
      ("UNIT ATTENTION, retries spent", outcome(check, sense(0x6, 0x29, 0x00), retries: 8), .fail(errno: 5)),
      ("NOT READY becoming ready", outcome(check, sense(0x2, 0x04, 0x01)), .retry(afterMilliseconds: 10)),
      ("NOT READY ALUA transition", outcome(check, sense(0x2, 0x04, 0x0A)), .recheckPath),
      ("NOT READY ALUA transition, spent", outcome(check, sense(0x2, 0x04, 0x0A), retries: 8), .failPath),
      ("NOT READY standby port", outcome(check, sense(0x2, 0x04, 0x0B)), .failPath),
      ("NOT READY unavailable port", outcome(check, sense(0x2, 0x04, 0x0C)), .failPath),
      ("NOT READY medium absent", outcome(check, sense(0x2, 0x3A, 0x00)), .fail(errno: 123)),
      ("MEDIUM ERROR", outcome(check, sense(0x3, 0x11, 0x00)), .fail(errno: 5)),
      ("ABORTED COMMAND", outcome(check, sense(0xB, 0x47, 0x00)), .retry(afterMilliseconds: 0)),
      ("ABORTED COMMAND PI check", outcome(check, sense(0xB, 0x10, 0x01)), .fail(errno: 84)),
      ("ILLEGAL REQUEST LBA range", outcome(check, sense(0x5, 0x21, 0x00)), .fail(errno: 22)),
      ("ILLEGAL REQUEST opcode", outcome(check, sense(0x5, 0x20, 0x00)), .fail(errno: 95)),
      ("DATA PROTECT thin pool full", outcome(check, sense(0x7, 0x27, 0x07)), .fail(errno: 28)),
      ("DATA PROTECT write protected", outcome(check, sense(0x7, 0x27, 0x00)), .fail(errno: 30)),
      ("RESERVATION CONFLICT", outcome(conflict), .fail(errno: 52)),
      ("CHECK CONDITION without sense", outcome(check), .fail(errno: 5)),
      ("ACA ACTIVE", outcome(0x30), .fail(errno: 5)),
    ]
    for (name, got, want) in lines {
      XCTAssertEqual(got, want, name)
    }
    XCTAssertTrue(SCSIOutcome.failPath.isPathProblem)
    XCTAssertTrue(SCSIOutcome.recheckPath.isPathProblem)
    XCTAssertFalse(SCSIOutcome.fail(errno: 5).isPathProblem)
  }

  func testRetriesNeverExceedTheBound() {
    // Whatever the status, a command retried `maxRetries` times is never retried again.
    for status: UInt8 in [0x02, 0x08, 0x28, 0x40] {
      for s in [nil, sense(0x6, 0x29, 0), sense(0x2, 0x04, 0x01), sense(0xB, 0, 0)] {
        let o = SCSIOutcome(status: status, sense: s, retries: 5, maxRetries: 5)
        if case .retry = o { XCTFail("retried past the bound: \(status) \(String(describing: s))") }
        XCTAssertNotEqual(o, .recheckPath)
      }
    }
  }
}
