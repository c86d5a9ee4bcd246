import XCTest

@testable import ISCSIProtocol

final class StringHelpersTests: XCTestCase {
  func testTrimmingWhitespace() {
    XCTAssertEqual("  up\n".trimmingWhitespace(), "up")
    XCTAssertEqual("\tInitiatorName = x \r\n".trimmingWhitespace(), "InitiatorName = x")
    XCTAssertEqual(" \n\t".trimmingWhitespace(), "")
    XCTAssertEqual("".trimmingWhitespace(), "")
    XCTAssertEqual("a b".trimmingWhitespace(), "a b")
    XCTAssertEqual("x y ".split(separator: ",")[0].trimmingWhitespace(), "x y")
  }

  func testJoin() {
    XCTAssertEqual(FilePath.join("/etc/lunbridge", "a.toml"), "/etc/lunbridge/a.toml")
    XCTAssertEqual(FilePath.join("/etc/lunbridge/", "a.toml"), "/etc/lunbridge/a.toml")
    XCTAssertEqual(FilePath.join("/etc/lunbridge/", "/a.toml"), "/etc/lunbridge/a.toml")
    XCTAssertEqual(FilePath.join("", "a"), "a")
    XCTAssertEqual(FilePath.join("dir", "a"), "dir/a")
  }

  func testComponents() {
    XCTAssertEqual(FilePath.lastComponent("/etc/lunbridge/db.toml"), "db.toml")
    XCTAssertEqual(FilePath.lastComponent("/etc/lunbridge/"), "lunbridge")
    XCTAssertEqual(FilePath.lastComponent("db.toml"), "db.toml")
    XCTAssertEqual(FilePath.lastComponent("/"), "/")
    XCTAssertEqual(FilePath.directory("/etc/lunbridge/initiatorname"), "/etc/lunbridge")
    XCTAssertEqual(FilePath.directory("/initiatorname"), "/")
    XCTAssertEqual(FilePath.directory("initiatorname"), "")
    XCTAssertEqual(FilePath.directory("/etc/lunbridge/"), "/etc")
  }
}
