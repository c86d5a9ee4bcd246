import Bridge
import XCTest

/// `--listen` addresses: parsing, the URI clients use, and the rule that a LUN is served
/// to a network only with TLS or the user's explicit --insecure.
final class ListenAddressTests: XCTestCase {
  func testParsingAndURIs() throws {
    XCTAssertEqual(try ListenAddress(parsing: "unix:/run/x.sock"), .unix("/run/x.sock"))
    XCTAssertEqual(try ListenAddress(parsing: "tcp:10809"), .tcp(host: "127.0.0.1", port: 10809))
    XCTAssertEqual(try ListenAddress(parsing: "tcp:[::1]:10809").uri, "nbd://[::1]:10809/")
    XCTAssertEqual(try ListenAddress(parsing: "tcp:0.0.0.0:10809").uri(tls: true), "nbds://0.0.0.0:10809/")
    XCTAssertEqual(ListenAddress.unix("/s").uri(tls: true), "nbds+unix:///?socket=/s")
    XCTAssertThrowsError(try ListenAddress(parsing: "tcp:host:99999"))
  }

  func testANetworkAddressNeedsTLSOrInsecure() throws {
    for local in ["unix:/run/x.sock", "tcp:10809", "tcp:127.0.0.2:10809", "tcp:localhost:10809", "tcp:[::1]:10809"] {
      XCTAssertNoThrow(try ListenAddress(parsing: local).checkExposure(tls: false, insecure: false), local)
    }
    for exposed in ["tcp:0.0.0.0:10809", "tcp:[::]:10809", "tcp:198.18.0.1:10809"] {
      let a = try ListenAddress(parsing: exposed)
      XCTAssertThrowsError(try a.checkExposure(tls: false, insecure: false)) {
        XCTAssertTrue("\($0)".contains("--tls-certificates DIR"), "\($0)")
        XCTAssertTrue("\($0)".contains("--insecure"), "\($0)")
      }
      XCTAssertNoThrow(try a.checkExposure(tls: true, insecure: false))
      XCTAssertNoThrow(try a.checkExposure(tls: false, insecure: true))
    }
  }
}
