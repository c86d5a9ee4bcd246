import Bridge
import Foundation
import ISCSIProtocol
import XCTest

final class StatusFormatterTests: XCTestCase {
  func testVolumeHeaderNamesDeviceTargetSizeIdentifierPolicyAndQueue() {
    let lines = StatusFormatter.renderStatusTable([StatusFixture.attached()]).split(separator: "\n").map(
      String.init)
    XCTAssertEqual(lines[0], "db /dev/nbd0 -> iqn.2003-01.org.example:disk1 LUN 1")
    for fact in [
      "size=10.0 GiB", "id=naa.60014055f1b3c1a2d5e4", "policy=service-time", "failback=immediate", "queued=3",
      "no-path-failures=4", "rw", "uptime=1h02m", "p50=500µs", "p99=2.5ms",
    ] {
      XCTAssertTrue(lines[1].split(separator: " ").contains(Substring(fact)) || lines[1].contains(fact), fact)
    }
  }

  func testPathRowsCarryStateNicPortalSessionRatesLatenciesAndCounts() throws {
    let lines = StatusFormatter.renderStatusTable([StatusFixture.attached()]).split(separator: "\n").map(
      String.init)
    XCTAssertEqual(lines.count, 5)
    XCTAssertEqual(cells(lines[2]), StatusFormatter.pathColumns)
    XCTAssertEqual(
      cells(lines[3]),
      ["0", "active", "eth0", "10.0.0.1:3260", "400001370000/7", "1523", "5.9", "180µs", "1.2ms", "0", "0", "-"])
    // The failure reason has its own last column; an unbound path shows its source
    // address; a session that is not logged in has no TSIH.
    let failed = cells(lines[4])
    XCTAssertEqual(failed[1], "failed")
    XCTAssertEqual(failed.last, "connection reset by peer")
    XCTAssertEqual(failed[failed.count - 2], "12")
    XCTAssertTrue(lines[4].contains("10.0.1.5"))
    XCTAssertTrue(lines[4].contains("400001370001/-"))
  }

  func testColumnsAreAligned() throws {
    let lines = StatusFormatter.renderStatusTable([StatusFixture.attached()]).split(separator: "\n").map(
      String.init)
    let header = lines[2]
    let rows = Array(lines[3...])
    // Text columns start where their title starts.
    let portalStart = try XCTUnwrap(header.range(of: "PORTAL")).lowerBound
    let portalOffset = header.distance(from: header.startIndex, to: portalStart)
    for (row, portal) in zip(rows, ["10.0.0.1:3260", "10.0.0.2:3260"]) {
      let start = try XCTUnwrap(row.range(of: portal)).lowerBound
      XCTAssertEqual(row.distance(from: row.startIndex, to: start), portalOffset, row)
    }
    // Number columns end where their title ends; no trailing blanks.
    let errorsEnd = header.distance(
      from: header.startIndex, to: try XCTUnwrap(header.range(of: "ERRORS")).upperBound)
    XCTAssertEqual(Array(rows[1])[errorsEnd - 1], "3")
    for line in lines { XCTAssertFalse(line.hasSuffix(" "), line) }
    // The reason column starts at its title in every row, however long the reason.
    let reasonOffset = header.distance(
      from: header.startIndex, to: try XCTUnwrap(header.range(of: "REASON")).lowerBound)
    XCTAssertEqual(rows[0].dropFirst(reasonOffset).first, "-")
    XCTAssertTrue(rows[1].dropFirst(reasonOffset).hasPrefix("connection reset by peer"), rows[1])
  }

  func testALongReasonIsCutInTheTableAndTheStateColumnStaysNarrow() throws {
    var r = StatusFixture.attached()
    r.paths[1].reason = String(repeating: "x", count: 200)
    let lines = StatusFormatter.renderStatusTable([r]).split(separator: "\n").map(String.init)
    let row = cells(lines[4])
    XCTAssertEqual(row[1], "failed")
    XCTAssertEqual(row.last?.count, StatusFormatter.reasonWidth)
    XCTAssertEqual(row.last?.last, "…")
  }

  func testSessionsShowWhatTheLoginNegotiatedTimeoutsWindowAndQueue() throws {
    var r = StatusFixture.attached()
    var n = NegotiatedParameters()
    n.headerDigest = true
    n.maxRecvDataSegmentLength = 1_048_576
    n.maxSendDataSegmentLength = 262_144
    n.firstBurstLength = 65_536
    n.maxBurstLength = 262_144
    n.initialR2T = false
    n.immediateData = true
    n.targetPortalGroupTag = 1
    r.paths[0].session = SessionReport(
      negotiated: NegotiatedReport(n), loginTimeoutSeconds: 15, keepaliveIntervalSeconds: 5, keepaliveTimeoutSeconds: 5,
      commandTimeoutSeconds: 30, recoveryTimeoutSeconds: 120, expCmdSN: 1200, maxCmdSN: 1231, windowAvailable: 29,
      inFlight: 3, queued: 0)
    // The JSON the control socket sends decodes to the same report (keys flat in `session`).
    let json = try JSONEncoder().encode(r.paths[0])
    XCTAssertEqual(try JSONDecoder().decode(PathReport.self, from: json), r.paths[0])
    let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: json) as? [String: Any])
    let session = try XCTUnwrap(object["session"] as? [String: Any])
    XCTAssertEqual(session["maxBurstLength"] as? Int, 262_144)
    XCTAssertEqual(session["commandTimeoutSeconds"] as? Double, 30)
    XCTAssertNil(session["negotiated"], "flat, not nested")
    XCTAssertFalse(StatusFormatter.renderStatusTable([r]).contains("HeaderDigest"), "only with sessions: true")
    let text = StatusFormatter.renderStatusTable([r], sessions: true)
    let lines = text.split(separator: "\n").map(String.init)
    XCTAssertEqual(
      lines[5],
      "  path 0: HeaderDigest=CRC32C DataDigest=None MaxRecvDataSegmentLength=1048576/262144 (ours/target's)"
        + " FirstBurstLength=65536 MaxBurstLength=262144 InitialR2T=No ImmediateData=Yes MaxOutstandingR2T=1"
        + " ErrorRecoveryLevel=0 TPGT=1")
    XCTAssertEqual(
      lines[6],
      "    timeouts: login 15 s, keepalive every 5 s (answer within 5 s), command 30 s, recovery 120 s;"
        + " window 29 (ExpCmdSN 1200, MaxCmdSN 1231); in flight 3, queued 0")
    XCTAssertEqual(lines[7], "  path 1: not logged in")
  }

  func testServedVolumeShowsItsExportAndReadOnly() {
    let text = StatusFormatter.renderStatusTable([StatusFixture.served()])
    XCTAssertTrue(
      text.hasPrefix("scratch nbd+unix:///?socket=/run/lb.sock -> iqn.2003-01.org.example:disk1 LUN 1\n"))
    XCTAssertTrue(text.contains(" ro "))
  }

  func testFlowCountersShowOnceSomethingHappened() {
    var r = StatusFixture.served()
    XCTAssertFalse(StatusFormatter.renderStatusTable([r]).contains("refused-connections"), "quiet when nothing happened")
    var flow = FlowCounts()
    flow.refusedConnections = 19_936
    flow.handshakeTimeouts = 64
    r.flow = flow
    XCTAssertTrue(
      StatusFormatter.renderStatusTable([r]).contains(
        "refused-connections=19936 handshake-timeouts=64 paused=0 cancelled=0"))
  }

  func testVolumeWithoutPathsSaysSo() {
    var r = StatusFixture.attached()
    r.paths = []
    XCTAssertTrue(StatusFormatter.renderStatusTable([r]).hasSuffix("\n  (no paths)\n"))
  }

  func testVolumesAreSeparatedByABlankLineInTheOrderGiven() {
    let reports = [StatusFixture.attached(name: "b"), StatusFixture.served(name: "a")]
    let text = StatusFormatter.renderStatusTable(reports)
    XCTAssertEqual(text, StatusFormatter.renderStatusTable(reports))
    let blocks = text.components(separatedBy: "\n\n")
    XCTAssertEqual(blocks.count, 2)
    XCTAssertTrue(blocks[0].hasPrefix("b /dev/nbd0"))
    XCTAssertTrue(blocks[1].hasPrefix("a nbd+unix"))
    XCTAssertEqual(StatusFormatter.renderStatusTable([]), "")
  }

  func testDurationsUseMicrosecondsMillisecondsOrSeconds() {
    let cases: [(Double?, String)] = [
      (nil, "-"), (0, "0µs"), (0.000_000_4, "0µs"), (0.000_123, "123µs"), (0.000_999_4, "999µs"),
      (0.000_999_6, "1.0ms"), (0.001_2, "1.2ms"), (0.012_5, "12.5ms"), (0.099_94, "99.9ms"), (0.25, "250ms"),
      (0.999_6, "1.00s"), (1.5, "1.50s"), (12, "12.00s"), (.infinity, "-"), (-1, "-"),
    ]
    for (seconds, text) in cases {
      XCTAssertEqual(StatusFormatter.formatDuration(seconds), text, "\(String(describing: seconds))")
    }
  }

  func testSizesUseBinaryUnits() {
    XCTAssertEqual(StatusFormatter.formatBytes(0), "0 B")
    XCTAssertEqual(StatusFormatter.formatBytes(1023), "1023 B")
    XCTAssertEqual(StatusFormatter.formatBytes(1024), "1.0 KiB")
    XCTAssertEqual(StatusFormatter.formatBytes(1536), "1.5 KiB")
    XCTAssertEqual(StatusFormatter.formatBytes(1_048_575), "1.0 MiB")
    XCTAssertEqual(StatusFormatter.formatBytes(10 << 30), "10.0 GiB")
    XCTAssertEqual(StatusFormatter.formatBytes(3 << 40), "3.0 TiB")
    XCTAssertEqual(StatusFormatter.formatBytes(UInt64.max), "16.0 EiB")
  }

  func testFixedDecimalsAndUptime() {
    XCTAssertEqual(StatusFormatter.formatFixed(2.25, decimals: 1), "2.3")
    XCTAssertEqual(StatusFormatter.formatFixed(-1.25, decimals: 1), "-1.3")
    XCTAssertEqual(StatusFormatter.formatFixed(0, decimals: 2), "0.00")
    XCTAssertEqual(StatusFormatter.formatFixed(1523.4, decimals: 0), "1523")
    XCTAssertEqual(StatusFormatter.formatFixed(0.04, decimals: 1), "0.0")
    XCTAssertEqual(StatusFormatter.formatFixed(-0.01, decimals: 1), "0.0")
    XCTAssertEqual(StatusFormatter.formatUptime(45), "45s")
    XCTAssertEqual(StatusFormatter.formatUptime(725), "12m05s")
    XCTAssertEqual(StatusFormatter.formatUptime(3 * 3600 + 7 * 60), "3h07m")
    XCTAssertEqual(StatusFormatter.formatUptime(2 * 86400 + 4 * 3600 + 59), "2d04h")
  }

  private func cells(_ line: String) -> [String] {
    // Cells are separated by at least two blanks; "failed (reason)" has single blanks.
    line.trimmingCharacters(in: .whitespaces).components(separatedBy: "  ").map {
      $0.trimmingCharacters(in: .whitespaces)
    }.filter { !$0.isEmpty }
  }
}
