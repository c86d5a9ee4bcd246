// The human output of `lunbridge status`: per volume two header lines in the key=value
// manner of `multipath -ll`, then one aligned row per path. Pure: the same reports always
// give the same text.

public enum StatusFormatter {
  /// Column titles of the path table, in order.
  public static let pathColumns = [
    "PATH", "STATE", "NIC", "PORTAL", "SESSION", "IOPS", "MB/s", "P50", "P99", "ERRORS", "FAILOVERS", "REASON",
  ]

  /// A failure reason longer than this is cut in the table (`--json` has it whole).
  public static let reasonWidth = 48

  /// Every volume in the order given, separated by a blank line; ends with a newline.
  ///
  ///     db /dev/nbd0 -> iqn.2003-01.org.example:disk1 LUN 1
  ///     size=10.0 GiB id=naa.6001405abc policy=service-time failback=immediate queued=0 ...
  ///       PATH  STATE   NIC   PORTAL         SESSION         IOPS  MB/s  P50    P99    ERRORS  FAILOVERS  REASON
  ///       0     active  eth0  10.0.0.1:3260  400001370000/1  1523   5.9  180µs  1.2ms       0          0  -
  public static func renderStatusTable(_ reports: [VolumeStatusReport], sessions: Bool = false) -> String {
    reports.map { renderVolume($0, sessions: sessions) }.joined(separator: "\n")
  }

  /// One path's session in two lines (`status --sessions`): what the login negotiated,
  /// then the timeouts in force, the command window and the queue.
  public static func renderSession(_ p: PathReport) -> String {
    guard let session = p.session else { return "  path \(p.id): not logged in\n" }
    let s = session.negotiated
    func yn(_ b: Bool) -> String { b ? "Yes" : "No" }
    func secs(_ v: Double) -> String { v == v.rounded() ? "\(Int(v)) s" : "\(v) s" }
    var out = "  path \(p.id): HeaderDigest=\(s.headerDigest) DataDigest=\(s.dataDigest)"
    out += " MaxRecvDataSegmentLength=\(s.maxRecvDataSegmentLength)/\(s.targetMaxRecvDataSegmentLength) (ours/target's)"
    out += " FirstBurstLength=\(s.firstBurstLength) MaxBurstLength=\(s.maxBurstLength)"
    out += " InitialR2T=\(yn(s.initialR2T)) ImmediateData=\(yn(s.immediateData))"
    out += " MaxOutstandingR2T=\(s.maxOutstandingR2T) ErrorRecoveryLevel=\(s.errorRecoveryLevel)"
    out += " TPGT=\(s.targetPortalGroupTag.map(String.init) ?? "-")\n"
    out += "    timeouts: login \(secs(session.loginTimeoutSeconds)), keepalive every \(secs(session.keepaliveIntervalSeconds))"
    out += " (answer within \(secs(session.keepaliveTimeoutSeconds))), command \(secs(session.commandTimeoutSeconds)),"
    out += " recovery \(secs(session.recoveryTimeoutSeconds));"
    if let exp = session.expCmdSN, let max = session.maxCmdSN, let available = session.windowAvailable {
      out += " window \(available) (ExpCmdSN \(exp), MaxCmdSN \(max));"
    } else {
      out += " window -;"
    }
    out += " in flight \(session.inFlight), queued \(session.queued)\n"
    return out
  }

  static func renderVolume(_ r: VolumeStatusReport, sessions: Bool = false) -> String {
    let location = r.device ?? r.export ?? "-"
    var out = "\(r.name) \(location) -> \(r.targetName) LUN \(r.lun)\n"
    var facts = [
      "size=\(formatBytes(r.sizeBytes))",
      "block=\(r.blockSize)",
      "id=\(r.deviceIdentifier ?? "-")",
      "policy=\(r.policy)",
      "failback=\(r.failback)",
      "no-path-retry=\(r.noPathRetrySeconds)s",
      "queued=\(r.queuedIOs)",
      "no-path-failures=\(r.noPathFailures)",
      r.readOnly ? "ro" : "rw",
      "uptime=\(formatUptime(r.uptimeSeconds))",
    ]
    if let p50 = r.latency.p50Seconds, let p99 = r.latency.p99Seconds {
      facts.append("p50=\(formatDuration(p50)) p99=\(formatDuration(p99))")
    }
    // Flow control and export admission, only once something happened.
    if let f = r.flow, f.refusedConnections + f.handshakeTimeouts + f.paused + f.cancelled > 0 {
      facts.append(
        "refused-connections=\(f.refusedConnections) handshake-timeouts=\(f.handshakeTimeouts) paused=\(f.paused) cancelled=\(f.cancelled)"
      )
    }
    if r.reservationKey != nil || (r.reservationConflicts ?? 0) > 0 {
      facts.append("reservation-key=\(r.reservationKey ?? "-") reservation-conflicts=\(r.reservationConflicts ?? 0)")
    }
    out += facts.joined(separator: " ") + "\n"
    guard !r.paths.isEmpty else { return out + "  (no paths)\n" }
    let rows = r.paths.map { p -> [String] in
      // The state alone (with its ALUA state); the reason in the last column, cut to a
      // width, so a long one never pushes the other columns apart.
      var state = p.state
      if let alua = p.alua, p.reason?.isEmpty ?? true {
        state += " (ALUA \(alua)\(p.portGroup.map { ", port group \($0)" } ?? ""))"
      }
      var reason = p.reason.flatMap { $0.isEmpty ? nil : $0 } ?? "-"
      if reason.count > reasonWidth { reason = String(reason.prefix(reasonWidth - 1)) + "…" }
      return [
        String(p.id),
        state,
        p.interface ?? p.source ?? "-",
        p.portal,
        "\(p.isid)/\(p.tsih == 0 ? "-" : String(p.tsih))",
        formatFixed(p.iops, decimals: 0),
        formatFixed(p.megabytesPerSecond, decimals: 1),
        formatDuration(p.latency.p50Seconds),
        formatDuration(p.latency.p99Seconds),
        String(p.errors),
        String(p.failovers),
        reason,
      ]
    }
    // Numbers right-aligned, text left-aligned.
    let rightAligned: Set<Int> = [5, 6, 7, 8, 9, 10]
    out += table(header: pathColumns, rows: rows, rightAligned: rightAligned, indent: "  ")
    if sessions { out += r.paths.map(renderSession).joined() }
    return out
  }

  /// Columns two spaces apart, each as wide as its widest cell; no trailing blanks.
  static func table(header: [String], rows: [[String]], rightAligned: Set<Int>, indent: String) -> String {
    let all = [header] + rows
    var widths = [Int](repeating: 0, count: header.count)
    for row in all {
      for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) }
    }
    var out = ""
    for row in all {
      var line = indent
      for (i, cell) in row.enumerated() {
        let pad = String(repeating: " ", count: widths[i] - cell.count)
        let isLast = i == row.count - 1
        if rightAligned.contains(i) {
          line += pad + cell
        } else {
          line += cell + (isLast ? "" : pad)
        }
        if !isLast { line += "  " }
      }
      out += line + "\n"
    }
    return out
  }

  /// A latency in the unit that suits it: `850µs`, `12.5ms`, `250ms`, `1.50s`; `-` for none.
  public static func formatDuration(_ seconds: Double?) -> String {
    guard let seconds, seconds.isFinite, seconds >= 0 else { return "-" }
    let micros = (seconds * 1e6).rounded()
    if micros < 1000 { return "\(Int(micros))µs" }
    let millis = seconds * 1e3
    if (millis * 10).rounded() < 1000 { return formatFixed(millis, decimals: 1) + "ms" }
    if millis.rounded() < 1000 { return formatFixed(millis, decimals: 0) + "ms" }
    return formatFixed(seconds, decimals: 2) + "s"
  }

  /// A size in binary units: `512 B`, `4.0 KiB`, `10.0 GiB`.
  public static func formatBytes(_ bytes: UInt64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    guard bytes >= 1024 else { return "\(bytes) B" }
    var value = Double(bytes) / 1024
    var unit = 0
    while (value * 10).rounded() >= 10240, unit < units.count - 1 {
      value /= 1024
      unit += 1
    }
    return formatFixed(value, decimals: 1) + " " + units[unit]
  }

  /// `45s`, `12m05s`, `3h07m`, `2d04h`.
  public static func formatUptime(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "-" }
    let s = Int(seconds)
    func two(_ n: Int) -> String { n < 10 ? "0\(n)" : String(n) }
    if s < 60 { return "\(s)s" }
    if s < 3600 { return "\(s / 60)m\(two(s % 60))s" }
    if s < 86400 { return "\(s / 3600)h\(two(s % 3600 / 60))m" }
    return "\(s / 86400)d\(two(s % 86400 / 3600))h"
  }

  /// `value` with exactly `decimals` digits after the point, rounded half away from zero,
  /// whatever the locale.
  public static func formatFixed(_ value: Double, decimals: Int) -> String {
    guard value.isFinite else { return "-" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    guard scaled < 9e18 else { return String(value) }
    let n = UInt64(scaled)
    let whole = n / UInt64(scale)
    let sign = value < 0 && n != 0 ? "-" : ""
    guard decimals > 0 else { return "\(sign)\(whole)" }
    var fraction = String(n % UInt64(scale))
    fraction = String(repeating: "0", count: decimals - fraction.count) + fraction
    return "\(sign)\(whole).\(fraction)"
  }
}
