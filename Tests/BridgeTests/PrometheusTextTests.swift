import Bridge
import XCTest

/// A strict reader of the Prometheus text format 0.0.4, to check what `PrometheusText`
/// writes: every line is a HELP, a TYPE or a sample `name{labels} value`; each family has
/// HELP and TYPE once, before its samples, and its samples are contiguous; no series twice;
/// histogram buckets are cumulative, end in `+Inf` and agree with `_count`.
struct Exposition {
  struct Sample: Hashable {
    var name: String
    var labels: [String: String]
    var value: Double
  }

  struct Family {
    var name: String
    var help: String?
    var type: String?
    var samples: [Sample] = []
  }

  struct Malformed: Error, CustomStringConvertible {
    var description: String
    init(_ line: Int, _ why: String) { description = "line \(line): \(why)" }
  }

  private(set) var families: [Family] = []

  subscript(name: String) -> Family? { families.first { $0.name == name } }

  /// The value of the one sample with this name and exactly these labels.
  func value(_ name: String, _ labels: [String: String]) -> Double? {
    families.lazy.flatMap(\.samples).first { $0.name == name && $0.labels == labels }?.value
  }

  init(parsing text: String) throws {
    guard text.isEmpty || text.hasSuffix("\n") else { throw Malformed(0, "no newline at the end") }
    var seriesSeen = Set<String>()
    for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().enumerated() {
      let n = index + 1
      if line.isEmpty { throw Malformed(n, "empty line") }
      if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") {
        let isHelp = line.hasPrefix("# HELP ")
        let rest = line.dropFirst(7)
        let name = String(rest.prefix { $0 != " " })
        guard Self.isMetricName(name) else { throw Malformed(n, "bad metric name '\(name)'") }
        let payload = String(rest.dropFirst(name.count + 1))
        if families.last?.name != name {
          guard self[name] == nil else { throw Malformed(n, "family \(name) is not contiguous") }
          families.append(Family(name: name))
        }
        var family = families.removeLast()
        guard family.samples.isEmpty else { throw Malformed(n, "HELP/TYPE of \(name) after its samples") }
        if isHelp {
          guard family.help == nil else { throw Malformed(n, "second HELP for \(name)") }
          guard !payload.isEmpty else { throw Malformed(n, "empty HELP for \(name)") }
          family.help = payload
        } else {
          guard family.type == nil else { throw Malformed(n, "second TYPE for \(name)") }
          guard ["counter", "gauge", "histogram", "summary", "untyped"].contains(payload) else {
            throw Malformed(n, "unknown type '\(payload)'")
          }
          family.type = payload
        }
        families.append(family)
        continue
      }
      if line.hasPrefix("#") { throw Malformed(n, "unexpected comment") }
      let sample = try Self.parseSample(String(line), line: n)
      guard var family = families.popLast() else { throw Malformed(n, "sample before any HELP/TYPE") }
      guard family.help != nil, family.type != nil else {
        throw Malformed(n, "\(family.name) lacks HELP or TYPE")
      }
      let allowed =
        family.type == "histogram"
        ? ["_bucket", "_sum", "_count"].map { family.name + $0 } : [family.name]
      guard allowed.contains(sample.name) else {
        throw Malformed(n, "sample \(sample.name) inside family \(family.name)")
      }
      let key =
        sample.name + "|"
        + sample.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
      guard seriesSeen.insert(key).inserted else { throw Malformed(n, "series \(key) twice") }
      family.samples.append(sample)
      families.append(family)
    }
    for family in families where family.type == "histogram" { try Self.checkHistogram(family) }
    for family in families where family.help == nil || family.type == nil {
      throw Malformed(0, "\(family.name) lacks HELP or TYPE")
    }
  }

  static func isMetricName(_ s: String) -> Bool {
    guard let first = s.unicodeScalars.first else { return false }
    let head = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
    let tail = head.union(CharacterSet(charactersIn: "0123456789"))
    return head.contains(first) && s.unicodeScalars.allSatisfy { tail.contains($0) }
  }

  static func parseSample(_ line: String, line n: Int) throws -> Sample {
    let scalars = Array(line.unicodeScalars)
    var i = 0
    let nameEnd = scalars.firstIndex { $0 == "{" || $0 == " " } ?? scalars.count
    let name = String(String.UnicodeScalarView(scalars[0..<nameEnd]))
    guard isMetricName(name) else { throw Malformed(n, "bad metric name '\(name)'") }
    i = nameEnd
    var labels: [String: String] = [:]
    if i < scalars.count, scalars[i] == "{" {
      i += 1
      while true {
        guard i < scalars.count else { throw Malformed(n, "unterminated label set") }
        let labelEnd = scalars[i...].firstIndex(of: "=") ?? scalars.count
        let label = String(String.UnicodeScalarView(scalars[i..<labelEnd]))
        guard isMetricName(label), !label.contains(":"), !label.hasPrefix("__") else {
          throw Malformed(n, "bad label name '\(label)'")
        }
        i = labelEnd + 1
        guard i < scalars.count, scalars[i] == "\"" else { throw Malformed(n, "label value not quoted") }
        i += 1
        var value = ""
        while true {
          guard i < scalars.count else { throw Malformed(n, "unterminated label value") }
          let c = scalars[i]
          if c == "\"" { break }
          if c == "\n" { throw Malformed(n, "raw newline in a label value") }
          if c == "\\" {
            guard i + 1 < scalars.count else { throw Malformed(n, "dangling backslash") }
            switch scalars[i + 1] {
            case "\\": value += "\\"
            case "\"": value += "\""
            case "n": value += "\n"
            default: throw Malformed(n, "unknown escape \\\(scalars[i + 1])")
            }
            i += 2
            continue
          }
          value.unicodeScalars.append(c)
          i += 1
        }
        i += 1
        guard labels.updateValue(value, forKey: label) == nil else {
          throw Malformed(n, "label \(label) twice")
        }
        guard i < scalars.count else { throw Malformed(n, "unterminated label set") }
        if scalars[i] == "}" {
          i += 1
          break
        }
        guard scalars[i] == "," else { throw Malformed(n, "expected ',' or '}'") }
        i += 1
      }
    }
    guard i < scalars.count, scalars[i] == " " else {
      throw Malformed(n, "expected one blank before the value")
    }
    let valueText = String(String.UnicodeScalarView(scalars[(i + 1)...]))
    guard let value = parseValue(valueText) else { throw Malformed(n, "bad value '\(valueText)'") }
    return Sample(name: name, labels: labels, value: value)
  }

  static func parseValue(_ s: String) -> Double? {
    switch s {
    case "+Inf": return .infinity
    case "-Inf": return -.infinity
    case "NaN": return .nan
    default:
      guard !s.isEmpty, !s.contains(" "), s.lowercased() != "inf", s.lowercased() != "nan" else { return nil }
      return Double(s)
    }
  }

  static func checkHistogram(_ family: Family) throws {
    var groups: [[String: String]: (buckets: [(Double, Double)], sum: Double?, count: Double?)] = [:]
    for s in family.samples {
      var key = s.labels
      let le = key.removeValue(forKey: "le")
      var g = groups[key] ?? ([], nil, nil)
      switch s.name {
      case family.name + "_bucket":
        guard let le, let bound = parseValue(le) else {
          throw Malformed(0, "\(family.name) bucket without le")
        }
        g.buckets.append((bound, s.value))
      case family.name + "_sum": g.sum = s.value
      default: g.count = s.value
      }
      groups[key] = g
    }
    for (labels, g) in groups {
      let what = "\(family.name)\(labels)"
      guard let count = g.count, g.sum != nil else { throw Malformed(0, "\(what): no _sum or _count") }
      guard let last = g.buckets.last, last.0 == .infinity else {
        throw Malformed(0, "\(what): no +Inf bucket")
      }
      guard last.1 == count else { throw Malformed(0, "\(what): +Inf bucket \(last.1) != _count \(count)") }
      for (a, b) in zip(g.buckets, g.buckets.dropFirst()) {
        guard a.0 < b.0 else { throw Malformed(0, "\(what): le not increasing") }
        guard a.1 <= b.1 else { throw Malformed(0, "\(what): buckets not cumulative") }
      }
    }
  }
}

final class PrometheusTextTests: XCTestCase {
  let reports = [StatusFixture.attached(), StatusFixture.served()]

  func testOutputIsStrictlyValidAndHasEveryFamilyWithItsType() throws {
    let text = PrometheusText.render(reports)
    let parsed = try Exposition(parsing: text)
    let expected: [String: String] = [
      "lunbridge_volume_info": "gauge", "lunbridge_size_bytes": "gauge", "lunbridge_uptime_seconds": "gauge",
      "lunbridge_requests_total": "counter", "lunbridge_bytes_total": "counter",
      "lunbridge_request_errors_total": "counter", "lunbridge_request_latency_seconds": "histogram",
      "lunbridge_queued_ios": "gauge", "lunbridge_no_path_failures_total": "counter",
      "lunbridge_reservation_conflicts_total": "counter",
      "lunbridge_export_refused_connections_total": "counter", "lunbridge_export_handshake_timeouts_total": "counter",
      "lunbridge_flow_paused_total": "counter", "lunbridge_cancelled_requests_total": "counter",
      "lunbridge_inflight_bytes": "gauge",
      "lunbridge_path_state": "gauge", "lunbridge_path_ios_total": "counter",
      "lunbridge_path_bytes_total": "counter", "lunbridge_path_errors_total": "counter",
      "lunbridge_path_failovers_total": "counter", "lunbridge_path_failures_total": "counter",
      "lunbridge_path_reinstatements_total": "counter", "lunbridge_path_outstanding_ios": "gauge",
      "lunbridge_path_latency_seconds": "histogram",
    ]
    XCTAssertEqual(
      Dictionary(uniqueKeysWithValues: parsed.families.map { ($0.name, $0.type ?? "") }), expected)
  }

  func testVolumeSamplesCarryTheReportedNumbers() throws {
    let parsed = try Exposition(parsing: PrometheusText.render(reports))
    let db = ["volume": "db", "device": "/dev/nbd0"]
    XCTAssertEqual(parsed.value("lunbridge_requests_total", db.merging(["type": "read"]) { $1 }), 100)
    XCTAssertEqual(parsed.value("lunbridge_requests_total", db.merging(["type": "write_zeroes"]) { $1 }), 1)
    XCTAssertEqual(parsed.value("lunbridge_bytes_total", db.merging(["direction": "write"]) { $1 }), 204_800)
    XCTAssertEqual(parsed.value("lunbridge_request_errors_total", db), 3)
    XCTAssertEqual(parsed.value("lunbridge_queued_ios", db), 3)
    XCTAssertEqual(parsed.value("lunbridge_no_path_failures_total", db), 4)
    XCTAssertEqual(parsed.value("lunbridge_size_bytes", db), Double(10 << 30))
    // An export has no device: the label is empty.
    XCTAssertEqual(
      parsed.value("lunbridge_size_bytes", ["volume": "scratch", "device": ""]), Double(10 << 30))
    // Request latency: counts [0, 5, 60, 70, 20, 3] accumulate to 158 by 2.5 ms.
    let le = { (b: String) in db.merging(["le": b]) { $1 } }
    XCTAssertEqual(parsed.value("lunbridge_request_latency_seconds_bucket", le("5e-05")), 0)
    XCTAssertEqual(parsed.value("lunbridge_request_latency_seconds_bucket", le("0.0001")), 5)
    XCTAssertEqual(parsed.value("lunbridge_request_latency_seconds_bucket", le("0.0025")), 158)
    XCTAssertEqual(parsed.value("lunbridge_request_latency_seconds_bucket", le("1")), 158)
    XCTAssertEqual(parsed.value("lunbridge_request_latency_seconds_bucket", le("+Inf")), 158)
    XCTAssertEqual(parsed.value("lunbridge_request_latency_seconds_count", db), 158)
    XCTAssertEqual(parsed.value("lunbridge_request_latency_seconds_sum", db), 0.07)
  }

  func testPathSamplesAndOneHotState() throws {
    let parsed = try Exposition(parsing: PrometheusText.render(reports))
    let failed = ["volume": "db", "path": "1", "portal": "10.0.0.2:3260", "interface": ""]
    XCTAssertEqual(parsed.value("lunbridge_path_failovers_total", failed), 12)
    XCTAssertEqual(parsed.value("lunbridge_path_failures_total", failed), 2)
    XCTAssertEqual(parsed.value("lunbridge_path_errors_total", failed), 3)
    let active = ["volume": "db", "path": "0", "portal": "10.0.0.1:3260", "interface": "eth0"]
    XCTAssertEqual(parsed.value("lunbridge_path_outstanding_ios", active), 4)
    XCTAssertEqual(parsed.value("lunbridge_path_bytes_total", active), 491_520_000)
    // The failed path's two latencies lie beyond 2.5 s: only +Inf counts them.
    XCTAssertEqual(
      parsed.value("lunbridge_path_latency_seconds_bucket", failed.merging(["le": "2.5"]) { $1 }), 0)
    XCTAssertEqual(
      parsed.value("lunbridge_path_latency_seconds_bucket", failed.merging(["le": "+Inf"]) { $1 }), 2)

    let states = try XCTUnwrap(parsed["lunbridge_path_state"]).samples
    for (labels, state) in [(active, "active"), (failed, "failed")] {
      let mine = states.filter { $0.labels.filter { $0.key != "state" } == labels }
      XCTAssertEqual(mine.count, PrometheusText.pathStates.count)
      XCTAssertEqual(mine.filter { $0.value == 1 }.map { $0.labels["state"] }, [state])
      XCTAssertEqual(mine.map(\.value).reduce(0, +), 1)
    }
  }

  func testAnUnknownPathStateStillGetsItsOwnSeries() throws {
    var r = StatusFixture.attached()
    r.paths[0].state = "quiescing"
    let parsed = try Exposition(parsing: PrometheusText.render([r]))
    let labels = [
      "volume": "db", "path": "0", "portal": "10.0.0.1:3260", "interface": "eth0", "state": "quiescing",
    ]
    XCTAssertEqual(parsed.value("lunbridge_path_state", labels), 1)
  }

  func testLabelValuesAreEscapedAndReadBackUnchanged() throws {
    let odd = "we\"ird\\vol\nx"
    var r = StatusFixture.attached(name: odd)
    r.targetName = "iqn.2003-01.org.example:\"q\""
    let text = PrometheusText.render([r])
    XCTAssertTrue(text.contains(#"volume="we\"ird\\vol\nx""#))
    let parsed = try Exposition(parsing: text)
    XCTAssertEqual(parsed.value("lunbridge_queued_ios", ["volume": odd, "device": "/dev/nbd0"]), 3)
    XCTAssertEqual(PrometheusText.escapeLabelValue("a\\b\"c\nd"), #"a\\b\"c\nd"#)
    XCTAssertEqual(PrometheusText.escapeHelp("a\\b\nc\"d"), #"a\\b\nc"d"#)
  }

  func testNoVolumesStillGivesHelpAndTypeForEveryFamily() throws {
    let parsed = try Exposition(parsing: PrometheusText.render([]))
    XCTAssertEqual(parsed.families.count, 24)
    XCTAssertTrue(parsed.families.allSatisfy { $0.samples.isEmpty })
  }

  func testABoundOfInfinityIsNotASecondInfBucket() throws {
    var r = StatusFixture.attached()
    r.latency = LatencyReport(
      upperBoundsSeconds: [0.001, 0.01, .infinity], counts: [1, 2, 3], sumSeconds: 1, p50Seconds: nil,
      p99Seconds: nil, maxSeconds: nil)
    let parsed = try Exposition(parsing: PrometheusText.render([r]))
    let db = ["volume": "db", "device": "/dev/nbd0"]
    XCTAssertEqual(
      parsed.value("lunbridge_request_latency_seconds_bucket", db.merging(["le": "0.01"]) { $1 }), 3)
    XCTAssertEqual(
      parsed.value("lunbridge_request_latency_seconds_bucket", db.merging(["le": "+Inf"]) { $1 }), 6)
    XCTAssertEqual(parsed.value("lunbridge_request_latency_seconds_count", db), 6)
  }

  func testNumbers() {
    XCTAssertEqual(PrometheusText.number(1), "1")
    XCTAssertEqual(PrometheusText.number(2.5), "2.5")
    XCTAssertEqual(Double(PrometheusText.number(0.00005)), 0.00005)
    XCTAssertEqual(PrometheusText.number(.infinity), "+Inf")
    XCTAssertEqual(PrometheusText.number(-.infinity), "-Inf")
    XCTAssertEqual(PrometheusText.number(.nan), "NaN")
    XCTAssertEqual(PrometheusText.number(1e300), "1e+300")
  }

  /// The reader above must itself refuse what the format forbids, or the tests prove nothing.
  func testTheStrictReaderRefusesBrokenText() {
    let broken = [
      "x 1\n",  // no HELP/TYPE
      "# HELP x h\nx 1\n",  // no TYPE
      "# HELP x h\n# TYPE x gauge\nx 1",  // no final newline
      "# HELP x h\n# TYPE x gauge\nx{a=\"b\"}  1\n",  // two blanks
      "# HELP x h\n# TYPE x gauge\nx{a=\"b\\t\"} 1\n",  // unknown escape
      "# HELP x h\n# TYPE x gauge\nx{a=b} 1\n",  // unquoted
      "# HELP x h\n# TYPE x gauge\nx 1\nx 2\n",  // same series twice
      "# HELP x h\n# TYPE x gauge\nx 1\n# HELP y h\n# TYPE y gauge\ny 1\n# HELP x h\n",  // not contiguous
      "# HELP x h\n# TYPE x gauge\nx 1\n# TYPE x gauge\n",  // TYPE after samples
      "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
      "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
      "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
      "# HELP x h\n# TYPE x gauge\nx one\n",
    ]
    for text in broken {
      XCTAssertThrowsError(try Exposition(parsing: text), text)
    }
    XCTAssertNoThrow(try Exposition(parsing: "# HELP x h\n# TYPE x gauge\nx{a=\"\\\"\"} 1\n"))
  }
}
