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
    var thinProvisioned, unmapSupported, writeSameUnmapSupported, fua, readOnly, aluaSupported: Bool
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
        "physicalBlockSize", "blockCount", "maxTransferBytes", "optimalTransferBytes", "thinProvisioned",
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
}
