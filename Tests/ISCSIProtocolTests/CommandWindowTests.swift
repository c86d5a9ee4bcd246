import ISCSIProtocol
import XCTest

final class CommandWindowTests: XCTestCase {
  func testSerialComparisonWrapsAround() {
    XCTAssertTrue(SerialNumber(0xffff_fff0) < SerialNumber(5))
    XCTAssertTrue(SerialNumber(5) > SerialNumber(0xffff_fff0))
    XCTAssertFalse(SerialNumber(5) < SerialNumber(5))
    XCTAssertTrue(SerialNumber(1) < SerialNumber(2))
    // 2^31 apart: undefined, neither is smaller (RFC 1982 section 3.2).
    XCTAssertFalse(SerialNumber(0) < SerialNumber(0x8000_0000))
    XCTAssertFalse(SerialNumber(0x8000_0000) < SerialNumber(0))
  }

  func testWindowOpensAndClosesWithMaxCmdSN() {
    var w = CommandWindow(cmdSN: 10, expCmdSN: 10, maxCmdSN: 11)
    XCTAssertEqual(w.available, 2)
    XCTAssertEqual(w.take(), 10)
    XCTAssertEqual(w.take(), 11)
    XCTAssertFalse(w.isOpen, "CmdSN 12 > MaxCmdSN 11: closed")
    XCTAssertEqual(w.immediateCmdSN, 12, "immediate PDUs carry the next CmdSN without taking it")
    XCTAssertEqual(w.update(expCmdSN: 12, maxCmdSN: 12), .applied)
    XCTAssertTrue(w.isOpen)
  }

  func testWindowNeverMovesBackwards() {
    var w = CommandWindow(cmdSN: 100, expCmdSN: 100, maxCmdSN: 131)
    if case .applied = w.update(expCmdSN: 100, maxCmdSN: 120) { XCTFail("a backwards MaxCmdSN was applied") }
    XCTAssertEqual(w.maxCmdSN, 131)
    w.update(expCmdSN: 90, maxCmdSN: 131)
    XCTAssertEqual(w.expCmdSN, 100)
  }

  func testInvalidUpdateIsIgnored() {
    var w = CommandWindow(cmdSN: 100, expCmdSN: 100, maxCmdSN: 131)
    // MaxCmdSN < ExpCmdSN - 1 is invalid (RFC 7143 section 4.2.2.1).
    XCTAssertNotEqual(w.update(expCmdSN: 200, maxCmdSN: 150), .applied)
    XCTAssertEqual(w.expCmdSN, 100)
    XCTAssertEqual(w.maxCmdSN, 131)
    // MaxCmdSN = ExpCmdSN - 1 is valid: a closed window.
    var z = CommandWindow(cmdSN: 5, expCmdSN: 5, maxCmdSN: 4)
    XCTAssertFalse(z.isOpen)
    XCTAssertEqual(z.update(expCmdSN: 5, maxCmdSN: 4), .applied)
    XCTAssertFalse(z.isOpen)
  }

  func testWrapAround() {
    var w = CommandWindow(cmdSN: 0xffff_ffff, expCmdSN: 0xffff_ffff, maxCmdSN: 1)
    XCTAssertEqual(w.available, 3)
    XCTAssertEqual(w.take(), 0xffff_ffff)
    XCTAssertEqual(w.take(), 0)
    XCTAssertEqual(w.take(), 1)
    XCTAssertFalse(w.isOpen)
  }
}
