import Foundation
import XCTest

@testable import Bridge

/// The volume file reader against Python's tomllib (the reference TOML 1.0 parser in
/// Debian 12's python3): on every document of the corpus, both give the same values or
/// both refuse it. Documents that use TOML the reader leaves out on purpose (tables,
/// inline tables, dotted keys, multi-line strings, dates) must be valid for tomllib and
/// refused by the reader with a message that says so.
final class TOMLDifferentialTests: XCTestCase {
  static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

  /// Documents both should accept with the same values, or both refuse.
  static let corpus: [String] = [
    "a = 1",
    "a = -17\nb = +42\nc = 0\nd = 1_000_000",
    "a = 0x1f\nb = 0o17\nc = 0b101\nd = 0xdead_beef",
    "a = 9223372036854775807\nb = -9223372036854775808",
    // (9223372036854775808: TOML 1.0 says an integer that does not fit 64 bits is an
    // error; tomllib takes Python's unbounded ints. The reader refuses it: a unit test.)
    "a = 007", "a = 1__0", "a = _1", "a = 1_", "a = +0x10", "a = 0X10",
    "a = 1.5\nb = -0.25\nc = 6.02e23\nd = 1e-3\ne = 1_000.5", "a = 1.", "a = .5", "a = 1.e3", "a = 1e", "a = 01.5",
    "a = inf\nb = -inf\nc = +inf", "a = Infinity", "a = 1.5_", "a = 3_.14",
    "a = true\nb = false", "a = True", "a = yes",
    #"a = "plain"\#nb = 'literal \d'"#,
    #"a = "tab\there \"q\" back\\slash \u00e9 \U0001F600""#,
    #"a = "bad \x escape""#, #"a = "\u12""#, #"a = "\uD800""#, #"a = "unterminated"#, "a = 'unterminated",
    #"a = "new\#nline""#,
    "a = \"\"\nb = ''",
    "a = []\nb = [1, 2, 3]\nc = [\"x\", 'y',]\nd = [[1, 2], [\"a\"]]\ne = [ 1 , 2 ]",
    "a = [\n  \"x\", # first\n  \"y\"\n  # trailing comment\n]",
    "a = [1, \"mixed\", true]",
    "a = [,]", "a = [1,,2]", "a = [1 2]", "a = [1",
    "# only a comment\n\n   \n",
    "a = 1 # trailing comment\nb = \"# not a comment\"",
    "a = 1\na = 2", "a = 1 b = 2", "a =", "= 1", "a 1", "a = 1\n\n\nb",
    "\"quoted key\" = 1", "bare-key_1 = 2", "1234 = 3", "a b = 1",
    "a = \"x\" \"y\"",
    "\u{FEFF}a = 1",
    "a = 1\r\nb = 2\r\n",
    "a = \"é ü ✓\"",
    "paths = [\"iscsi://192.0.2.1/iqn.2026-11.org.example:t/1?iface=eth1\"]\nread_only = true\ntimeout = 30",
  ]

  /// Valid TOML the reader refuses on purpose, each with a message saying so.
  static let leftOut: [String] = [
    "[table]\na = 1",
    "[[array]]\na = 1",
    "a = { b = 1 }",
    "a.b = 1",
    "a = \"\"\"multi\nline\"\"\"",
    "a = '''multi\nline'''",
    "a = 1979-05-27T07:32:00Z",
    "a = 1979-05-27",
    "a = 07:32:00",
  ]

  /// The reader's view of a document, in the form the Python side prints.
  static func canonical(_ value: TOMLValue) -> Any {
    switch value {
    case .string(let s): return ["string", s]
    case .integer(let n): return ["integer", String(n)]
    case .float(let d): return ["float", d.isNaN ? "nan" : d.isInfinite ? (d < 0 ? "-inf" : "inf") : String(d)]
    case .boolean(let b): return ["boolean", b ? "true" : "false"]
    case .array(let items): return ["array", items.map { canonical($0.value) }]
    }
  }

  static func ours(_ text: String) -> (values: String?, error: String?) {
    do {
      let entries = try TOMLParser.parse(text)
      var object: [String: Any] = [:]
      for e in entries {
        // Refused one level up (VolumeConfig: "key 'a' is set twice"), as TOML requires.
        if object[e.key] != nil { return (nil, "key '\(e.key)' is set twice") }
        object[e.key] = canonical(e.node.value)
      }
      let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
      return (String(decoding: data, as: UTF8.self), nil)
    } catch let e as TOMLSyntaxError {
      return (nil, e.message)
    } catch {
      return (nil, "\(error)")
    }
  }

  /// tomllib's view of each document: the canonical JSON, or null where it refuses.
  static let python = """
    import json, math, sys, tomllib
    def canon(v):
        if isinstance(v, bool): return ["boolean", "true" if v else "false"]
        if isinstance(v, int): return ["integer", str(v)]
        if isinstance(v, float):
            if math.isnan(v): return ["float", "nan"]
            if math.isinf(v): return ["float", "-inf" if v < 0 else "inf"]
            return ["float", "FLOAT:" + repr(v)]
        if isinstance(v, str): return ["string", v]
        if isinstance(v, list): return ["array", [canon(x) for x in v]]
        return ["other", type(v).__name__]
    out = []
    for doc in json.load(sys.stdin):
        try:
            d = tomllib.loads(doc)
            out.append(json.dumps({k: canon(v) for k, v in d.items()}, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
        except tomllib.TOMLDecodeError:
            out.append(None)
    json.dump(out, sys.stdout)
    """

  func reference(_ documents: [String]) throws -> [String?] {
    let python = "/usr/bin/python3"
    guard FileManager.default.isExecutableFile(atPath: python) else {
      struct Missing: Error, CustomStringConvertible {
        var description = "/usr/bin/python3 (3.11, tomllib) is missing: install python3"
      }
      throw Missing()
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = ["-c", Self.python]
    let input = Pipe()
    let output = Pipe()
    let errors = Pipe()
    p.standardInput = input
    p.standardOutput = output
    p.standardError = errors
    try p.run()
    input.fileHandleForWriting.write(try JSONSerialization.data(withJSONObject: documents))
    try input.fileHandleForWriting.close()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    let err = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    XCTAssertEqual(p.terminationStatus, 0, "python3 tomllib: \(err)")
    let list = try JSONSerialization.jsonObject(with: data) as? [Any] ?? []
    return list.map { $0 as? String }
  }

  /// Python prints floats with repr(); ours with String(Double): both shortest round-trip
  /// forms, compared as numbers.
  func sameValues(_ a: String, _ b: String) -> Bool {
    if a == b { return true }
    let pattern = try! NSRegularExpression(pattern: #"\["float","(?:FLOAT:)?([^"]*)"\]"#)
    func floats(_ s: String) -> ([Double], String) {
      let ns = s as NSString
      let values = pattern.matches(in: s, range: NSRange(location: 0, length: ns.length)).map {
        Double(ns.substring(with: $0.range(at: 1))) ?? .nan
      }
      return (values, pattern.stringByReplacingMatches(in: s, range: NSRange(location: 0, length: ns.length), withTemplate: "F"))
    }
    let (fa, ra) = floats(a)
    let (fb, rb) = floats(b)
    return ra == rb && fa == fb
  }

  func testReaderAgreesWithTomllib() throws {
    var documents = Self.corpus
    // The shipped example and the test suites' own volume files.
    documents.append(try String(contentsOfFile: Self.repo + "/systemd/example.toml", encoding: .utf8))
    documents.append(try String(contentsOfFile: Self.repo + "/Tests/vm/boot/volumes/bootvol.toml", encoding: .utf8))
    let theirs = try reference(documents)
    XCTAssertEqual(theirs.count, documents.count)
    var agreed = 0
    for (doc, reference) in zip(documents, theirs) {
      let mine = Self.ours(doc)
      switch (mine.values, reference) {
      case (let m?, let r?):
        XCTAssertTrue(sameValues(m, r), "different values for \(doc.debugDescription):\n ours    \(m)\n tomllib \(r)")
      case (nil, nil): break
      case (let m?, nil):
        XCTFail("accepted what tomllib refuses: \(doc.debugDescription) -> \(m)")
      case (nil, let r?):
        XCTFail("refused what tomllib accepts: \(doc.debugDescription) (\(mine.error ?? "")); tomllib: \(r)")
      }
      agreed += 1
    }
    XCTAssertEqual(agreed, documents.count)
    // Both sides refused something and accepted something: the corpus tests both ways.
    XCTAssertGreaterThan(theirs.filter { $0 == nil }.count, 10)
    XCTAssertGreaterThan(theirs.filter { $0 != nil }.count, 15)
  }

  /// TOML 1.0: "If an integer cannot be represented losslessly, an error must be thrown"
  /// (where tomllib keeps Python's unbounded integer).
  func testAnIntegerBeyond64BitsIsRefused() {
    XCTAssertEqual(Self.ours("a = 9223372036854775808").error, "integer 9223372036854775808 does not fit in 64 bits")
    XCTAssertEqual(Self.ours("a = -9223372036854775809").error, "integer -9223372036854775809 does not fit in 64 bits")
  }

  func testWhatTheReaderLeavesOutIsValidTOMLAndRefusedWithAReason() throws {
    let theirs = try reference(Self.leftOut)
    for (doc, reference) in zip(Self.leftOut, theirs) {
      XCTAssertNotNil(reference, "tomllib refuses \(doc.debugDescription): not a left-out feature")
      let mine = Self.ours(doc)
      XCTAssertNil(mine.values, "the reader accepted \(doc.debugDescription)")
      XCTAssertNotNil(mine.error)
      let error = mine.error ?? ""
      XCTAssertTrue(
        error.contains("not used in volume files") || error.contains("strings need quotes") || error.contains("invalid value"),
        "\(doc.debugDescription): \(error)")
    }
  }
}
