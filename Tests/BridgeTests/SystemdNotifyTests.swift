import Bridge
import Foundation
import XCTest

final class SystemdNotifyTests: XCTestCase {
  func testSendsOneDatagramToNotifySocket() throws {
    let path = NSTemporaryDirectory() + "lb-notify-\(getpid()).sock"
    unlink(path)
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
    XCTAssertGreaterThanOrEqual(fd, 0)
    defer {
      close(fd)
      unlink(path)
    }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
      for (i, b) in path.utf8.enumerated() { raw[i] = b }
    }
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    XCTAssertEqual(rc, 0)
    setenv("NOTIFY_SOCKET", path, 1)
    defer { unsetenv("NOTIFY_SOCKET") }
    XCTAssertTrue(SystemdNotify.send("READY=1\nSTATUS=/dev/nbd0 attached"))
    var buf = [UInt8](repeating: 0, count: 256)
    let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
    XCTAssertEqual(String(decoding: buf[0..<max(0, n)], as: UTF8.self), "READY=1\nSTATUS=/dev/nbd0 attached")
  }

  func testDoesNothingOutsideSystemd() {
    unsetenv("NOTIFY_SOCKET")
    XCTAssertFalse(SystemdNotify.send("READY=1"))
  }
}
