import Bridge
import Foundation
import ISCSIInitiator
import ISCSIProtocol
import Logging
import NIOCore
import XCTest

/// The export with TLS (NBD_OPT_STARTTLS, client certificates), checked from outside with
/// libnbd: nbdinfo and a pattern written and read back with the right credentials; no
/// credentials, or a certificate from another CA, are refused. Certificates are made here
/// with openssl, valid for a day.
final class ExportTLSTests: XCTestCase {
  static let iqn = "iqn.2026-11.org.lunbridge.test:tls"
  var tgtd: TGTD!
  var server: NBDExportServer!
  var scratch: String!
  var port = 0

  override func setUp() async throws {
    scratch = "/dev/shm/lunbridge-tls-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    try makeCertificates()
    tgtd = try TGTD()
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 16)
    try tgtd.bindAll(tid: 1)
    let login = LoginConfiguration(initiatorName: "iqn.2026-11.org.lunbridge.test:tls-init", targetName: Self.iqn)
    let config = SessionConfiguration(portal: Portal(host: "127.0.0.1", port: tgtd.port), login: login)
    let url = ISCSIURL(portal: config.portal, targetName: Self.iqn, lun: 1)
    let logger = Logger(label: "tls-test")
    let volume = try await Volume.open(paths: [PathSpec(url: url, configuration: config)], logger: logger)
    let tls = try ExportTLS(directory: scratch + "/server")
    server = try await NBDExportServer.start(
      volume: volume, address: .tcp(host: "127.0.0.1", port: 0), tls: tls, logger: logger)
    port = try XCTUnwrap(server.boundPort)
  }

  override func tearDown() async throws {
    if let server {
      await server.stop()
      await server.volume.close()
    }
    tgtd?.stop()
    if let scratch { try? FileManager.default.removeItem(atPath: scratch) }
  }

  func openssl(_ args: [String]) throws {
    let r = try Command.run(try Command.locate("openssl", hint: "install the Debian package openssl (make deps)"), args)
    guard r.status == 0 else { throw TGTDError("openssl \(args.joined(separator: " ")): \(r.stderr)") }
  }

  /// A CA, a server certificate for 127.0.0.1 and a client certificate, in the layouts
  /// lunbridge (server/) and libnbd (client/) read; and a client of another CA (rogue/).
  func makeCertificates() throws {
    let d = scratch!
    for sub in ["server", "client", "rogue"] {
      try FileManager.default.createDirectory(atPath: "\(d)/\(sub)", withIntermediateDirectories: true)
    }
    func ca(_ name: String) throws {
      try openssl([
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=lunbridge test \(name)",
        "-keyout", "\(d)/\(name)-key.pem", "-out", "\(d)/\(name)-cert.pem",
      ])
    }
    func leaf(_ out: String, cn: String, ca: String, ext: String) throws {
      try ext.write(toFile: "\(d)/\(cn).ext", atomically: true, encoding: .utf8)
      try openssl([
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=\(cn)", "-keyout", "\(out)-key.pem", "-out",
        "\(d)/\(cn).csr",
      ])
      try openssl([
        "x509", "-req", "-in", "\(d)/\(cn).csr", "-CA", "\(d)/\(ca)-cert.pem", "-CAkey", "\(d)/\(ca)-key.pem",
        "-CAcreateserial", "-days", "1", "-out", "\(out)-cert.pem", "-extfile", "\(d)/\(cn).ext",
      ])
    }
    try ca("ca")
    try ca("rogue-ca")
    try leaf(
      "\(d)/server/server", cn: "localhost", ca: "ca",
      ext: "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    try leaf("\(d)/client/client", cn: "client", ca: "ca", ext: "extendedKeyUsage=clientAuth\n")
    try leaf("\(d)/rogue/client", cn: "rogue", ca: "rogue-ca", ext: "extendedKeyUsage=clientAuth\n")
    for dir in ["server", "client"] {
      try FileManager.default.copyItem(atPath: "\(d)/ca-cert.pem", toPath: "\(d)/\(dir)/ca-cert.pem")
    }
    // The rogue client trusts the real CA (it can check the server) but is not trusted.
    try FileManager.default.copyItem(atPath: "\(d)/ca-cert.pem", toPath: "\(d)/rogue/ca-cert.pem")
  }

  func nbdinfo(_ uri: String) throws -> CommandResult {
    try Command.run(
      try Command.locate("nbdinfo", hint: "install the Debian package libnbd-bin (make deps)"), ["--json", uri],
      timeout: 60)
  }

  func testRightClientCertificateGetsTheExportAndItsData() throws {
    let uri = "nbds://127.0.0.1:\(port)/?tls-certificates=\(scratch!)/client"
    let r = try nbdinfo(uri)
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertTrue(r.stdout.contains("\"export-size\": \(16 << 20)"), r.stdout)
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
      .appendingPathComponent("../scripts/nbd-pattern.py").standardized.path
    let w = try Command.run("/usr/bin/python3", [script, uri, "write", "0", "1048576", "tls"], timeout: 60)
    let c = try Command.run("/usr/bin/python3", [script, uri, "check", "0", "1048576", "tls"], timeout: 60)
    XCTAssertEqual(w.stdout + c.stdout, "ok\nok\n", w.stderr + c.stderr)
    // nbdcopy through TLS too: the whole LUN out to a file, its first MiB is the pattern.
    let copy = "\(scratch!)/copy.img"
    let n = try Command.run(
      try Command.locate("nbdcopy", hint: "install the Debian package libnbd-bin (make deps)"), [uri, copy],
      timeout: 60)
    XCTAssertEqual(n.status, 0, n.stderr)
    XCTAssertEqual((try? FileManager.default.attributesOfItem(atPath: copy)[.size] as? Int) ?? 0, 16 << 20)
  }

  func testPlainClientGetsTLSRequiredAndForeignCertificatesAreRefused() throws {
    let plain = try nbdinfo("nbd://127.0.0.1:\(port)/")
    XCTAssertNotEqual(plain.status, 0, "a plain client read the export: \(plain.stdout)")
    // On the wire: NBD_REP_ERR_TLS_REQD (2^31 + 5) with a message saying so.
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
      .appendingPathComponent("../scripts/nbd-hostile-client.py").standardized.path
    let go = try Command.run("/usr/bin/python3", [script, "plain-go", "127.0.0.1:\(port)"], timeout: 30)
    XCTAssertTrue(go.stdout.hasPrefix("reply 0x80000005 this export requires TLS"), go.stdout + go.stderr)
    let rogue = try nbdinfo("nbds://127.0.0.1:\(port)/?tls-certificates=\(scratch!)/rogue")
    XCTAssertNotEqual(rogue.status, 0, "a client certificate of another CA was accepted: \(rogue.stdout)")
    let none = try nbdinfo("nbds://127.0.0.1:\(port)/?tls-verify-peer=false")
    XCTAssertNotEqual(none.status, 0, "a client without a certificate was accepted: \(none.stdout)")
  }
}
