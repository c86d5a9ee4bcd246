import ISCSIProtocol
import XCTest

final class ISCSINameTests: XCTestCase {
  func testNamesAreNormalisedToLowerCase() {
    XCTAssertEqual(ISCSIName.normalized("IQN.2004-10.COM.Example:Disk1"), "iqn.2004-10.com.example:disk1")
    XCTAssertEqual(ISCSIName.normalized("eui.02004567A425678D"), "eui.02004567a425678d")
    XCTAssertEqual(ISCSIName.normalized("iqn.2004-10.com.example:ä"), "iqn.2004-10.com.example:ä")
  }

  func testValidNamesPass() {
    for name in [
      "iqn.2004-10.com.example:disk1", "IQN.2004-10.COM.EXAMPLE", "iqn.2003-01.org.linux-iscsi.host.x8664:sn.1234",
      "eui.02004567A425678D", "naa.52004567BA64678D", "naa.62004567BA64678D0123456789ABCDEF",
    ] {
      XCTAssertNil(ISCSIName.problem(name), name)
    }
  }

  func testInvalidNamesAreExplained() {
    XCTAssertEqual(
      ISCSIName.problem("notaniqn"),
      "'notaniqn' is not an iSCSI name: expected iqn.YYYY-MM.reversed.domain[:identifier], eui.HEX16 or naa.HEX16/32")
    XCTAssertNotNil(ISCSIName.problem("iqn.2004.com.example"))
    XCTAssertNotNil(ISCSIName.problem("iqn.2004-10."))
    XCTAssertNotNil(ISCSIName.problem("eui.0200"))
    XCTAssertNotNil(ISCSIName.problem("naa.zz004567BA64678D"))
    XCTAssertEqual(ISCSIName.problem("iqn.2004-10.com.example:a b"), "'iqn.2004-10.com.example:a b' contains a space")
    XCTAssertNotNil(ISCSIName.problem(""))
    XCTAssertNotNil(ISCSIName.problem("iqn.2004-10.com.example:" + String(repeating: "x", count: 200)))
  }
}
