import Bridge
import Foundation
import XCTest

/// The manual pages `make man` builds (lunbridge(8) from the commands' own help plus the
/// hand-written end, lunbridge.toml(5) by hand) and the shell completions `make install`
/// generates: each renders without a warning, documents what the code has, and each
/// completion script loads in its shell and completes a subcommand.
final class ManualTests: XCTestCase {
  var repo: String { CommandLineTools.repo.path }
  var manualDirectory: String { repo + "/.build/man" }

  func tool(_ name: String, package: String) throws -> String {
    try Command.locate(name, hint: "install the Debian package \(package) (make deps)")
  }

  func page(_ name: String) throws -> String {
    let path = manualDirectory + "/" + name
    guard FileManager.default.fileExists(atPath: path) else {
      throw TGTDError("\(path) is missing: run make man (make test does)")
    }
    return path
  }

  func testManualPagesRenderWithoutWarnings() throws {
    let mandoc = try tool("mandoc", package: "mandoc")
    let groff = try tool("groff", package: "groff-base")
    let man = try tool("man", package: "man-db")
    for name in ["lunbridge.8", "lunbridge.toml.5"] {
      let path = try page(name)
      let lint = try Command.run(mandoc, ["-T", "lint", "-W", "warning", path])
      XCTAssertEqual(lint.status, 0, "mandoc -T lint \(name):\n\(lint.stdout)\(lint.stderr)")
      XCTAssertEqual(lint.stdout + lint.stderr, "", name)
      let typeset = try Command.run(groff, ["-wall", "-mandoc", "-Tutf8", "-z", path])
      XCTAssertEqual(typeset.status, 0, name)
      XCTAssertEqual(typeset.stderr, "", "groff -wall \(name)")
      let shown = try Command.run("/usr/bin/env", ["MANWIDTH=80", man, "-l", path])
      XCTAssertEqual(shown.status, 0, "man -l \(name): \(shown.stderr)")
      XCTAssertGreaterThan(shown.stdout.split(separator: "\n").count, 60, "man -l \(name) shows too little")
    }
  }

  /// Every command the parser has is in lunbridge(8), with its options.
  func testLunbridge8HasEveryCommandAndTheHandWrittenSections() throws {
    let text = try String(contentsOfFile: try page("lunbridge.8"), encoding: .utf8)
    for command in [
      "discover", "info", "serve", "attach", "detach", "list", "status", "reload", "failback", "rescan", "pr", "config",
    ] {
      XCTAssertTrue(text.contains(command), "lunbridge.8 lacks \(command)")
    }
    for option in ["chap-secret-file", "socket-mode", "no-path-retry", "luns"] {
      XCTAssertTrue(text.contains(option), "lunbridge.8 lacks --\(option)")
    }
    for section in ["ENVIRONMENT", "FILES", "EXIT STATUS", "EXAMPLES", "DIAGNOSTICS", "SEE ALSO"] {
      XCTAssertTrue(text.contains(".Sh \(section)"), "lunbridge.8 lacks \(section)")
    }
    XCTAssertFalse(text.contains("systemd-generator"), "a hidden command is in the manual")
  }

  /// lunbridge(8)'s EXIT STATUS lists the same statuses as the README's table.
  func testExitStatusesAgreeWithTheREADME() throws {
    let text = try String(contentsOfFile: try page("lunbridge.8"), encoding: .utf8)
    guard let start = text.range(of: ".Sh EXIT STATUS"), let end = text.range(of: ".Sh EXAMPLES") else {
      return XCTFail("no EXIT STATUS section")
    }
    let manual = Set(
      text[start.upperBound..<end.lowerBound].split(separator: "\n").compactMap { line -> Int? in
        line.hasPrefix(".It ") ? Int(line.dropFirst(4)) : nil
      })
    let readme = try String(contentsOfFile: repo + "/README.md", encoding: .utf8)
    let table = Set(
      readme.split(separator: "\n").compactMap { line -> Int? in
        guard line.hasPrefix("| "), line.contains("|---") == false else { return nil }
        let cell = line.dropFirst(2).prefix { $0 != " " && $0 != "|" }
        return Int(cell)
      })
    XCTAssertGreaterThanOrEqual(manual.count, 13)
    XCTAssertEqual(manual, table.intersection(0...255), "lunbridge.8 and the README's exit status table differ")
  }

  /// Every key the volume file reader knows is in lunbridge.toml(5) and in the example.
  func testEveryVolumeKeyIsDocumented() throws {
    let text = try String(contentsOfFile: try page("lunbridge.toml.5"), encoding: .utf8)
    let example = try String(contentsOfFile: repo + "/systemd/example.toml", encoding: .utf8)
    for key in VolumeConfig.knownKeys {
      XCTAssertTrue(text.contains("Cm \(key) "), "lunbridge.toml.5 does not document \(key)")
      XCTAssertTrue(example.contains("\(key) ="), "systemd/example.toml does not show \(key)")
    }
  }

  /// Every error line the code can print is in lunbridge(8)'s DIAGNOSTICS: the constant
  /// start (up to the first interpolation) of the message of each `BridgeError(.code, "...")`,
  /// `ISCSIError(.code, "...")`, `ISCSIURLError("...")` and `ValidationError("...")` in
  /// Sources is in that section of the hand-written tail, read without its macros and
  /// whitespace. Starts shorter than 8 characters say too little to look for.
  func testDiagnosticsListEveryErrorMessage() throws {
    let tailPath = repo + "/Sources/lunbridge/Manual/lunbridge.8.tail"
    let tail = try String(contentsOfFile: tailPath, encoding: .utf8)
    guard let start = tail.range(of: ".Sh DIAGNOSTICS\n") else {
      return XCTFail("\(tailPath) has no .Sh DIAGNOSTICS section")
    }
    let rest = tail[start.upperBound...]
    let section = rest.range(of: "\n.Sh ").map { rest[..<$0.lowerBound] } ?? rest
    let catalogue = Self.comparable(Self.manualText(String(section)))
    let messages = try Self.errorMessages(in: repo + "/Sources")
    XCTAssertGreaterThan(messages.count, 150, "too few error messages found in Sources: the scan is broken")
    for message in messages where !Self.notErrorLines.contains(message.text) {
      XCTAssertTrue(
        catalogue.contains(Self.comparable(message.text)),
        "DIAGNOSTICS in Sources/lunbridge/Manual/lunbridge.8.tail lacks \"\(message.text)\" (\(message.place)): "
          + "add it under its exit status")
    }
  }

  /// Messages that never reach the error line: a test hook, and failures that a running
  /// process only logs (its control socket, the flush at exit, one I/O of a path).
  static let notErrorLines: Set<String> = [
    "dropped for testing",  // ISCSISession.dropConnectionForTesting
    "no answer within",  // flushBeforeExit: a warning
    "path has no logical unit",  // an I/O retried on another path, EIO to the NBD client
    "the login reached target portal group",  // a fencing login: a warning, then a retry
    "cannot create",  // ControlServer.start: Observability logs a warning
    "cannot create a temporary directory in",
    "control socket directory",
    "cannot put the control socket at",
  ]

  struct ErrorMessage {
    /// The literal's start, up to its first interpolation, trimmed.
    var text: String
    /// `Sources/FILE:LINE` of the call.
    var place: String
  }

  /// The error types whose message is the first argument (`ISCSIError`'s and `BridgeError`'s
  /// after their code).
  static let errorTypes = ["BridgeError", "ValidationError", "ISCSIURLError", "ISCSIError"]
  static let typesWithCode: Set<String> = ["BridgeError", "ISCSIError"]

  /// Every call `TYPE(` of `errorTypes` in the Swift files under `sources` whose message is
  /// a string literal with at least 8 constant characters before any interpolation.
  static func errorMessages(in sources: String) throws -> [ErrorMessage] {
    let names = errorTypes.map { (type: $0, scalars: Array(($0 + "(").unicodeScalars)) }
    let files = try FileManager.default.subpathsOfDirectory(atPath: sources).filter { $0.hasSuffix(".swift") }.sorted()
    var found: [ErrorMessage] = []
    for file in files {
      let s = try Array(String(contentsOfFile: sources + "/" + file, encoding: .utf8).unicodeScalars)
      var line = 1
      for i in s.indices {
        if s[i] == "\n" {
          line += 1
          continue
        }
        guard i == 0 || !isIdentifier(s[i - 1]) else { continue }
        for name in names where matches(s, name.scalars, at: i) {
          let start = i + name.scalars.count
          if let text = message(in: s, from: start, afterCode: typesWithCode.contains(name.type)), text.count >= 8 {
            found.append(ErrorMessage(text: text, place: "Sources/\(file):\(line)"))
          }
        }
      }
    }
    return found
  }

  static func matches(_ s: [Unicode.Scalar], _ word: [Unicode.Scalar], at i: Int) -> Bool {
    guard i + word.count <= s.count else { return false }
    for k in word.indices where s[i + k] != word[k] { return false }
    return true
  }

  static func isIdentifier(_ c: Unicode.Scalar) -> Bool {
    ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || c == "_"
  }

  static func skipWhitespace(_ s: [Unicode.Scalar], from start: Int) -> Int {
    var j = start
    while j < s.count, s[j] == " " || s[j] == "\n" || s[j] == "\t" || s[j] == "\r" { j += 1 }
    return j
  }

  /// The constant start of the string literal at `start` (after the code argument, a
  /// `.code` or an expression, when `afterCode`), with `\"` and `\\` unescaped, trimmed;
  /// nil when the argument is not a plain literal.
  static func message(in s: [Unicode.Scalar], from start: Int, afterCode: Bool) -> String? {
    var j = skipWhitespace(s, from: start)
    if afterCode {
      var depth = 0
      while j < s.count, depth > 0 || (s[j] != "," && s[j] != ")" && s[j] != "\"") {
        if s[j] == "(" { depth += 1 } else if s[j] == ")" { depth -= 1 }
        j += 1
      }
      guard j < s.count, s[j] == "," else { return nil }
      j = skipWhitespace(s, from: j + 1)
    }
    guard j < s.count, s[j] == "\"" else { return nil }
    var text = String.UnicodeScalarView()
    j += 1
    while j < s.count, s[j] != "\"", s[j] != "\n" {
      if s[j] == "\\", j + 1 < s.count {
        let escaped = s[j + 1]
        if escaped == "(" { break }  // an interpolation: the constant start ends here
        text.append(escaped == "n" || escaped == "t" ? " " : escaped)
        j += 2
      } else {
        text.append(s[j])
        j += 1
      }
    }
    return String(text).trimmingCharacters(in: .whitespaces)
  }

  /// mdoc source as its words read: comment lines and macro names dropped (`Fl` gives its
  /// argument its dash), the escapes for quotes, dashes and backslashes resolved.
  static func manualText(_ source: String) -> String {
    let macros: Set<String> = [
      "Ar", "No", "Ns", "Li", "Ql", "Nm", "Cm", "Pa", "Ic", "Sy", "Em", "Dq", "Sq", "Qq", "Pq", "Xr", "Ev", "Op",
      "Dv", "Er", "Va", "Ap", "Po", "Pc", "Oo", "Oc",
    ]
    var words: [String] = []
    for line in source.split(separator: "\n") {
      if line.hasPrefix(".\\\"") { continue }
      guard line.hasPrefix(".") else {
        words.append(String(line))
        continue
      }
      var dash = false
      for word in line.split(separator: " ").dropFirst() {
        if word == "Fl" {
          dash = true
        } else if !macros.contains(String(word)) {
          words.append((dash ? "-" : "") + String(word))
          dash = false
        }
      }
    }
    return words.joined(separator: " ")
      .replacingOccurrences(of: "\\&", with: "")
      .replacingOccurrences(of: "\\(aq", with: "'")
      .replacingOccurrences(of: "\\(dq", with: "\"")
      .replacingOccurrences(of: "\\-", with: "-")
      .replacingOccurrences(of: "\\e", with: "\\")
  }

  /// Without whitespace: line breaks and mdoc's spacing do not matter.
  static func comparable(_ text: String) -> String {
    text.filter { !$0.isWhitespace }
  }

  func completionScript(_ shell: String) throws -> String {
    try CommandLineTools.require()
    let dir = NSTemporaryDirectory() + "lunbridge-completion-\(getpid())-\(shell)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
    let name = ["bash": "lunbridge", "zsh": "_lunbridge", "fish": "lunbridge.fish"][shell]!
    let r = try Command.run(CommandLineTools.lunbridge, ["--generate-completion-script", shell])
    XCTAssertEqual(r.status, 0)
    try r.stdout.write(toFile: dir + "/" + name, atomically: false, encoding: .utf8)
    return dir + "/" + name
  }

  var path: String { (CommandLineTools.lunbridge as NSString).deletingLastPathComponent + ":/usr/bin:/bin" }

  func testBashCompletesSubcommands() throws {
    let bash = try tool("bash", package: "bash")
    let library = "/usr/share/bash-completion/bash_completion"
    guard FileManager.default.fileExists(atPath: library) else {
      return XCTFail("\(library) is missing: install the Debian package bash-completion (make deps)")
    }
    let script = try completionScript("bash")
    for (word, expected) in [("di", "discover"), ("de", "detach"), ("st", "status")] {
      let r = try Command.run(
        "/usr/bin/env",
        [
          "PATH=\(path)", bash, "-c",
          "source \(library); source \(script); COMP_WORDS=(lunbridge \(word)); COMP_CWORD=1; COMP_LINE='lunbridge \(word)'; COMP_POINT=${#COMP_LINE}; _lunbridge lunbridge \(word) lunbridge; printf '%s\\n' \"${COMPREPLY[@]}\"",
        ])
      XCTAssertEqual(r.status, 0, r.stderr)
      XCTAssertEqual(r.stdout.split(separator: "\n").map(String.init), [expected], "bash: lunbridge \(word)<TAB>")
    }
  }

  func testFishCompletesSubcommands() throws {
    let fish = try tool("fish", package: "fish")
    let script = try completionScript("fish")
    let r = try Command.run("/usr/bin/env", ["PATH=\(path)", fish, "-c", "source \(script); complete -C 'lunbridge d'"])
    XCTAssertEqual(r.status, 0, r.stderr)
    let words = r.stdout.split(separator: "\n").map { String($0.prefix { $0 != "\t" }) }
    XCTAssertEqual(Set(words), ["discover", "detach"], "fish: lunbridge d<TAB>: \(r.stdout)")
  }

  /// zsh completes only inside its line editor: an interactive zsh in a pseudo-terminal
  /// (zsh/zpty) gets `lunbridge d<TAB>` and lists the candidates.
  func testZshCompletesSubcommands() throws {
    let zsh = try tool("zsh", package: "zsh")
    let script = try completionScript("zsh")
    let dir = (script as NSString).deletingLastPathComponent
    let driver = dir + "/complete.zsh"
    try """
    zmodload zsh/zpty
    zpty z zsh -f -i
    zpty -w z "PS1=''; fpath=(\(dir) \\$fpath); autoload -U compinit; compinit -u -D; zstyle ':completion:*' list-prompt ''; LISTMAX=1000; print READY-MARK"
    zpty -r z line '*READY-MARK*'
    zpty -r z line '*READY-MARK*'
    zpty -w -n z $'lunbridge d\\t'
    sleep 2
    out=""
    while zpty -r -t z chunk 2>/dev/null; do out+=$chunk; done
    print -r -- "$out"
    zpty -d z
    """.write(toFile: driver, atomically: false, encoding: .utf8)
    // A dumb terminal: the listing without colour and cursor sequences.
    let r = try Command.run("/usr/bin/env", ["-i", "PATH=\(path)", "TERM=dumb", zsh, "-f", driver], timeout: 30)
    XCTAssertEqual(r.status, 0, r.stderr)
    let plain = r.stdout.replacingOccurrences(of: "\u{1B}\\[[0-9;?]*[A-Za-z]", with: "", options: .regularExpression)
    let lines = plain.split(whereSeparator: \.isNewline)  // "\r\n" is one Character
    XCTAssertTrue(lines.contains { $0.hasPrefix("discover ") }, "zsh: lunbridge d<TAB>: \(plain.debugDescription)")
    XCTAssertTrue(lines.contains { $0.hasPrefix("detach ") }, "zsh: lunbridge d<TAB>: \(plain.debugDescription)")
    XCTAssertFalse(lines.contains { $0.hasPrefix("status ") }, "zsh offered more than the d... commands")
  }
}
