import FoundationEssentials
import XCTest

@testable import Bridge

final class FileErrorTests: XCTestCase {
  func testISIDIsTwelveHexDigits() {
    XCTAssertEqual(hex12(0x4000_0137_0001), "400001370001")
    XCTAssertEqual(hex12(0x1), "000000000001")
    XCTAssertEqual(hex12(0xFFFF_FFFF_FFFF_FFFF), "ffffffffffff", "6 bytes, never more")
  }

  func testAFileErrorIsOneLineWithThePathAndTheReason() {
    XCTAssertThrowsError(
      try FileManager.default.createDirectory(atPath: "/proc/self/no/such", withIntermediateDirectories: true)
    ) { error in
      let text = describeFileError(error)
      XCTAssertTrue(text.hasPrefix("/proc/self/no"), text)
      XCTAssertTrue(text.hasSuffix("No such file or directory"), text)
      XCTAssertFalse(text.contains("CocoaError"), text)
      XCTAssertEqual(describeError(error), text)
    }
  }
}
