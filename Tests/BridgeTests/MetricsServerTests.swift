import Bridge
import Foundation
import Logging
import NIOCore
import NIOPosix
import XCTest

/// The metrics endpoint over a real TCP socket on 127.0.0.1 (port 0: the kernel picks).
final class MetricsServerTests: XCTestCase {
  let logger = Logger(label: "metrics-test", factory: { _ in SwiftLogNoOpLogHandler() })
  let reports = [StatusFixture.attached(), StatusFixture.served()]

  func start(failing: Bool = false) async throws -> MetricsServer {
    let reports = self.reports
    return try await MetricsServer.start(
      listen: "tcp:127.0.0.1:0",
      reports: {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        return failing ? loop.makeFailedFuture(BridgeError(.notFound, "no volume")) : loop.makeSucceededFuture(reports)
      }, logger: logger)
  }

  struct Response {
    var status: Int
    var headers: [String: String]
    var body: String
  }

  /// One request on a fresh connection, read until the server closes it.
  func http(_ request: String, port: Int) throws -> Response {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    XCTAssertGreaterThanOrEqual(fd, 0)
    defer { close(fd) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    XCTAssertEqual(rc, 0)
    let bytes = Array(request.utf8)
    XCTAssertEqual(send(fd, bytes, bytes.count, 0), bytes.count)
    var all = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = recv(fd, &buffer, buffer.count, 0)
      if n < 0 { throw BridgeError(.system, "recv: \(String(cString: strerror(errno)))") }
      if n == 0 { break }
      all += buffer[0..<n]
    }
    let text = String(decoding: all, as: UTF8.self)
    let parts = text.components(separatedBy: "\r\n\r\n")
    let head = parts[0].components(separatedBy: "\r\n")
    let statusWords = head[0].split(separator: " ")
    var headers: [String: String] = [:]
    for line in head.dropFirst() {
      guard let colon = line.firstIndex(of: ":") else { continue }
      headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(
        in: .whitespaces)
    }
    return Response(
      status: statusWords.count > 1 ? Int(statusWords[1]) ?? 0 : 0, headers: headers,
      body: parts.dropFirst().joined(separator: "\r\n\r\n"))
  }

  func testMetricsAreServedInTheTextFormat() async throws {
    let server = try await start()
    defer { Task { await server.stop() } }
    let port = try XCTUnwrap(server.boundPort)
    XCTAssertNotEqual(port, 0)
    let r = try http("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", port: port)
    XCTAssertEqual(r.status, 200)
    XCTAssertEqual(r.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
    XCTAssertEqual(r.headers["content-length"], String(r.body.utf8.count))
    XCTAssertEqual(r.body, PrometheusText.render(reports))
    XCTAssertNoThrow(try Exposition(parsing: r.body))
    // A query string does not change the path.
    XCTAssertEqual(try http("GET /metrics?name[]=x HTTP/1.1\r\nHost: l\r\n\r\n", port: port).status, 200)
    // HEAD: the headers only.
    let head = try http("HEAD /metrics HTTP/1.1\r\nHost: l\r\n\r\n", port: port)
    XCTAssertEqual(head.status, 200)
    XCTAssertEqual(head.body, "")
  }

  func testOtherPathsAreNotFoundAndOtherMethodsNotAllowed() async throws {
    let server = try await start()
    defer { Task { await server.stop() } }
    let port = try XCTUnwrap(server.boundPort)
    XCTAssertEqual(try http("GET / HTTP/1.1\r\nHost: l\r\n\r\n", port: port).status, 404)
    XCTAssertEqual(try http("GET /metricsx HTTP/1.1\r\nHost: l\r\n\r\n", port: port).status, 404)
    let post = try http("POST /metrics HTTP/1.1\r\nHost: l\r\nContent-Length: 3\r\n\r\nabc", port: port)
    XCTAssertEqual(post.status, 405)
    XCTAssertEqual(post.headers["allow"], "GET, HEAD")
    XCTAssertEqual(try http("DELETE /metrics HTTP/1.1\r\nHost: l\r\n\r\n", port: port).status, 405)
    XCTAssertEqual(try http("garbage\r\n\r\n", port: port).status, 400)
  }

  func testACollectionFailureIsA500() async throws {
    let server = try await start(failing: true)
    defer { Task { await server.stop() } }
    let r = try http("GET /metrics HTTP/1.1\r\nHost: l\r\n\r\n", port: try XCTUnwrap(server.boundPort))
    XCTAssertEqual(r.status, 500)
    XCTAssertTrue(r.body.contains("no volume"), r.body)
  }

  func testAddresses() throws {
    XCTAssertTrue(try MetricsServer.parseAddress("tcp:9100") == ("127.0.0.1", 9100))
    XCTAssertTrue(try MetricsServer.parseAddress("9100") == ("127.0.0.1", 9100))
    XCTAssertTrue(try MetricsServer.parseAddress("tcp:0.0.0.0:9100") == ("0.0.0.0", 9100))
    XCTAssertTrue(try MetricsServer.parseAddress("tcp:[::1]:0") == ("::1", 0))
    for bad in [
      "unix:/run/m.sock", "tcp:", "tcp:abc", "tcp:70000", "tcp:-1", "tcp::9100", "tcp:::1:9100",
      "tcp:[::1]9100",
    ] {
      XCTAssertThrowsError(try MetricsServer.parseAddress(bad), bad) {
        XCTAssertTrue("\($0)".hasPrefix("metrics address '\(bad)'"), "\($0)")
      }
    }
  }

  func testAPortInUseIsAnError() async throws {
    let server = try await start()
    defer { Task { await server.stop() } }
    let port = try XCTUnwrap(server.boundPort)
    do {
      let second = try await MetricsServer.start(
        listen: "tcp:127.0.0.1:\(port)",
        reports: { MultiThreadedEventLoopGroup.singleton.next().makeSucceededFuture([]) },
        logger: logger)
      await second.stop()
      XCTFail("bound a port in use")
    } catch let e as BridgeError {
      XCTAssertTrue(e.description.hasPrefix("cannot serve metrics on tcp:127.0.0.1:\(port)"), e.description)
    }
  }
}
