import Foundation
import XCTest

/// `lunbridge info --json` against tgtd: every key the text shows, camelCase, with JSON's
/// own types (numbers, booleans, null for unknown), and the URL's slashes unescaped.
final class InfoJSONTests: XCTestCase {
  static let iqn = "iqn.2026-11.org.lunbridge.test:infojson"

  /// The types each key must have: JSONDecoder takes no number for a Bool, no string for
  /// an Int, so decoding checks them; the key sets are compared separately (nulls included).
  struct Info: Decodable {
    var url, vendor, product, revision: String
    var serial, deviceIdentifier, wwn, accessState: String?
    var sizeBytes, blockSize, physicalBlockSize, blockCount, maxTransferBytes, optimalTransferBytes: Int
    var maxUnmapBlocks, maxWriteSameBlocks, tpgs: Int
    var targetPortGroup, accessStateCode: Int?
    var thinProvisioned, unmappedReadsZero, unmapSupported, writeSameUnmapSupported, fua, readOnly, aluaSupported: Bool
    var writeCache, rotational, preferredPortGroup: Bool?
    var session: Session
  }

  struct Session: Decodable {
    var headerDigest, dataDigest: String
    var maxRecvDataSegmentLength, targetMaxRecvDataSegmentLength, maxBurstLength, firstBurstLength: Int
    var maxOutstandingR2T, maxConnections, defaultTime2Wait, defaultTime2Retain, errorRecoveryLevel, tsih: Int
    var initialR2T, immediateData, dataPDUInOrder, dataSequenceInOrder: Bool
    var targetPortalGroupTag: Int?
    var targetAlias: String?
  }

  func testKeysAndTypes() throws {
    try CommandLineTools.require()
    let tgtd = try TGTD()
    defer { tgtd.stop() }
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 16)
    try tgtd.bindAll(tid: 1)
    let url = "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1"
    let r = try Command.run(CommandLineTools.lunbridge, ["info", url, "--json"], timeout: 60)
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertTrue(r.stdout.contains("\"url\" : \"\(url)\""), "slashes unescaped: \(r.stdout)")
    let data = Data(r.stdout.utf8)
    let info = try JSONDecoder().decode(Info.self, from: data)
    XCTAssertEqual(info.url, url)
    XCTAssertEqual(info.sizeBytes, 16 << 20)
    XCTAssertEqual(info.blockSize, 512)
    XCTAssertEqual(info.session.headerDigest, "None")
    // tgtd's LUs carry an NAA designator: the wwn udev names the disk by, "0x" + hex.
    XCTAssertTrue(info.wwn?.hasPrefix("0x") == true && info.wwn!.count > 4, "wwn: \(info.wwn ?? "null")")

    let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    XCTAssertEqual(
      Set(object.keys),
      [
        "url", "vendor", "product", "revision", "serial", "deviceIdentifier", "wwn", "sizeBytes", "blockSize",
        "physicalBlockSize", "blockCount", "maxTransferBytes", "optimalTransferBytes", "thinProvisioned", "unmappedReadsZero",
        "unmapSupported", "writeSameUnmapSupported", "maxUnmapBlocks", "maxWriteSameBlocks", "writeCache", "fua",
        "readOnly", "rotational", "aluaSupported", "tpgs", "targetPortGroup", "accessState", "accessStateCode",
        "preferredPortGroup", "session",
      ])
    let session = try XCTUnwrap(object["session"] as? [String: Any])
    XCTAssertEqual(
      Set(session.keys),
      [
        "headerDigest", "dataDigest", "maxRecvDataSegmentLength", "targetMaxRecvDataSegmentLength", "maxBurstLength",
        "firstBurstLength", "initialR2T", "immediateData", "maxOutstandingR2T", "maxConnections", "defaultTime2Wait",
        "defaultTime2Retain", "errorRecoveryLevel", "dataPDUInOrder", "dataSequenceInOrder", "targetPortalGroupTag",
        "targetAlias", "tsih",
      ])
  }

  struct DiscoveredTarget: Decodable {
    struct Portal: Decodable {
      var address: String
      var portalGroupTag: Int?
    }
    struct LUN: Decodable {
      var lun: Int
      var urls: [String]
      var sizeBytes: Int?
      var vendor, product, deviceIdentifier, error: String?
    }
    var name: String
    var portals: [Portal]
    var luns: [LUN]
    var error: String?
  }

  /// `discover --luns --json`, `--urls` and `--luns` against tgtd with two LUNs.
  func testDiscoverListsEachTargetsLUNsWithReadyURLs() throws {
    try CommandLineTools.require()
    let tgtd = try TGTD()
    defer { tgtd.stop() }
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 16)
    _ = try tgtd.addLUN(tid: 1, lun: 2, sizeMiB: 8)
    try tgtd.bindAll(tid: 1)
    let portal = "127.0.0.1:\(tgtd.port)"
    let lb = CommandLineTools.lunbridge

    let j = try Command.run(lb, ["discover", portal, "--luns", "--json"], timeout: 60)
    XCTAssertEqual(j.status, 0, j.stderr)
    let targets = try JSONDecoder().decode([DiscoveredTarget].self, from: Data(j.stdout.utf8))
    let t = try XCTUnwrap(targets.first { $0.name == Self.iqn }, j.stdout)
    XCTAssertNil(t.error)
    let disks = t.luns.filter { $0.error == nil }
    XCTAssertEqual(disks.map(\.lun), [1, 2], j.stdout)
    XCTAssertEqual(disks.map(\.sizeBytes), [16 << 20, 8 << 20])
    XCTAssertTrue(disks.allSatisfy { $0.deviceIdentifier != nil && $0.vendor != nil }, j.stdout)
    XCTAssertTrue(
      t.luns.contains { $0.lun == 0 && $0.error?.contains("not a disk") == true }, "tgtd's controller LUN 0: \(j.stdout)")
    let url1 = "iscsi://\(portal)/\(Self.iqn)/1"
    XCTAssertTrue(disks[0].urls.contains(url1), "\(disks[0].urls)")

    let u = try Command.run(lb, ["discover", portal, "--urls"], timeout: 60)
    XCTAssertEqual(u.status, 0, u.stderr)
    let lines = u.stdout.split(separator: "\n").map(String.init)
    XCTAssertTrue(lines.contains(url1), u.stdout)
    XCTAssertTrue(lines.contains("iscsi://\(portal)/\(Self.iqn)/2"), u.stdout)
    XCTAssertFalse(lines.contains { $0.hasSuffix("/0") }, "the controller LUN is not a URL to use: \(u.stdout)")
    // What --urls prints is accepted as it is.
    let info = try Command.run(lb, ["info", url1], timeout: 60)
    XCTAssertEqual(info.status, 0, info.stderr)

    let text = try Command.run(lb, ["discover", portal, "--luns"], timeout: 60)
    XCTAssertEqual(text.status, 0, text.stderr)
    XCTAssertTrue(text.stdout.contains("    LUN 1  16 MiB  "), text.stdout)
    XCTAssertTrue(text.stdout.contains("    LUN 2  8 MiB  "), text.stdout)
  }

  /// `status --json` of a running `serve` against tgtd: the keys and their JSON types
  /// (numbers as numbers, booleans as booleans), per volume, path and session.
  func testStatusJSONKeysAndTypes() throws {
    try CommandLineTools.require()
    let tgtd = try TGTD()
    defer { tgtd.stop() }
    try tgtd.addTarget(tid: 1, iqn: Self.iqn)
    _ = try tgtd.addLUN(tid: 1, lun: 1, sizeMiB: 16)
    try tgtd.bindAll(tid: 1)
    let scratch = "/dev/shm/lunbridge-status-json-\(getpid())"
    try FileManager.default.createDirectory(atPath: scratch + "/run", withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let serve = Process()
    serve.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    serve.arguments = [
      "LUNBRIDGE_RUN_DIR=\(scratch)/run", CommandLineTools.lunbridge, "serve", "iscsi://127.0.0.1:\(tgtd.port)/\(Self.iqn)/1",
      "--listen", "unix:\(scratch)/nbd.sock", "--name", "golden",
    ]
    serve.standardOutput = FileHandle.nullDevice
    serve.standardError = FileHandle.nullDevice
    try serve.run()
    defer {
      serve.terminate()
      serve.waitUntilExit()
    }
    for _ in 0..<300 where !FileManager.default.fileExists(atPath: scratch + "/run/golden.sock") { usleep(100_000) }
    let r = try Command.run(
      "/usr/bin/env", ["LUNBRIDGE_RUN_DIR=\(scratch)/run", CommandLineTools.lunbridge, "status", "golden", "--json"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertFalse(r.stdout.contains("\\/"), "escaped slashes: \(r.stdout)")
    let volumes = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
    let volume = try XCTUnwrap(volumes.first)
    func kinds(_ object: [String: Any]) -> [String: String] {
      object.mapValues { v in
        switch v {
        case is NSNull: return "null"
        // JSONSerialization gives booleans as NSNumbers of type "c" (Bool), numbers as "q"/"d".
        case let n as NSNumber: return String(cString: n.objCType) == "c" ? "boolean" : "number"
        case is String: return "string"
        case is [Any]: return "array"
        default: return "object"
        }
      }
    }
    XCTAssertEqual(
      kinds(volume),
      [
        "name": "string", "export": "string", "targetName": "string", "lun": "number", "deviceIdentifier": "string",
        "sizeBytes": "number", "blockSize": "number", "readOnly": "boolean", "policy": "string", "failback": "string",
        "noPathRetrySeconds": "number", "queuedIOs": "number", "noPathFailures": "number", "requests": "object",
        "latency": "object", "paths": "array", "uptimeSeconds": "number", "flow": "object",
        "reservationConflicts": "number", "capacityChanges": "number",
      ])
    let path = try XCTUnwrap((volume["paths"] as? [[String: Any]])?.first)
    XCTAssertEqual(
      kinds(path),
      [
        "id": "number", "url": "string", "portal": "string", "state": "string", "group": "number", "priority": "number",
        "isid": "string", "tsih": "number", "ios": "number", "bytes": "number", "errors": "number", "failovers": "number",
        "failures": "number", "reinstatements": "number", "outstandingIOs": "number", "iops": "number",
        "megabytesPerSecond": "number", "latency": "object", "session": "object",
      ])
    let session = try XCTUnwrap(path["session"] as? [String: Any])
    XCTAssertEqual(
      kinds(session),
      [
        "headerDigest": "string", "dataDigest": "string", "maxRecvDataSegmentLength": "number",
        "targetMaxRecvDataSegmentLength": "number", "maxBurstLength": "number", "firstBurstLength": "number",
        "initialR2T": "boolean", "immediateData": "boolean", "maxOutstandingR2T": "number", "maxConnections": "number",
        "defaultTime2Wait": "number", "defaultTime2Retain": "number", "errorRecoveryLevel": "number",
        "dataPDUInOrder": "boolean", "dataSequenceInOrder": "boolean", "targetPortalGroupTag": "number",
        "targetAlias": "null", "tsih": "number", "loginTimeoutSeconds": "number", "keepaliveIntervalSeconds": "number",
        "keepaliveTimeoutSeconds": "number", "commandTimeoutSeconds": "number", "recoveryTimeoutSeconds": "number",
        "expCmdSN": "number", "maxCmdSN": "number", "windowAvailable": "number", "inFlight": "number", "queued": "number",
      ])
    XCTAssertEqual(
      kinds(try XCTUnwrap(volume["requests"] as? [String: Any])),
      [
        "reads": "number", "writes": "number", "flushes": "number", "trims": "number", "writeZeroes": "number",
        "errors": "number", "readBytes": "number", "writeBytes": "number",
      ])
  }
}
