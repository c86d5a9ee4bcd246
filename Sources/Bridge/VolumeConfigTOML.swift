// The subset of TOML (https://toml.io/en/v1.0.0) that volume files use: top-level
// `key = value` pairs; values are basic or literal strings, integers, booleans and
// (possibly multi-line) arrays; `#` comments. Tables, inline tables, dotted keys,
// multi-line strings and dates are refused with the line they are on.

/// A value with the line it starts on.
struct TOMLNode: Equatable {
  var value: TOMLValue
  var line: Int
}

indirect enum TOMLValue: Equatable {
  case string(String)
  case integer(Int64)
  case float(Double)
  case boolean(Bool)
  case array([TOMLNode])

  /// "a string", "an integer", ... for error messages.
  var typeName: String {
    switch self {
    case .string: return "a string"
    case .integer: return "an integer"
    case .float: return "a float"
    case .boolean: return "a boolean"
    case .array: return "an array"
    }
  }
}

struct TOMLEntry: Equatable {
  var key: String
  var node: TOMLNode
  var line: Int { node.line }
}

struct TOMLSyntaxError: Error, Equatable {
  var line: Int
  var key: String?
  var message: String
}

struct TOMLParser {
  private let s: [Unicode.Scalar]
  private var i = 0
  private var line = 1
  private var currentKey: String?

  init(_ text: String) { s = Array(text.unicodeScalars) }

  static func parse(_ text: String) throws -> [TOMLEntry] {
    var p = TOMLParser(text)
    return try p.document()
  }

  private var atEnd: Bool { i >= s.count }
  private var peek: Unicode.Scalar? { i < s.count ? s[i] : nil }
  private func peek(_ offset: Int) -> Unicode.Scalar? { i + offset < s.count ? s[i + offset] : nil }

  private func fail(_ message: String) -> TOMLSyntaxError {
    TOMLSyntaxError(line: line, key: currentKey, message: message)
  }

  private mutating func advance() {
    if s[i] == "\n" { line += 1 }
    i += 1
  }

  /// Spaces and tabs.
  private mutating func skipBlanks() {
    while let c = peek, c == " " || c == "\t" { advance() }
  }

  private mutating func skipComment() {
    guard peek == "#" else { return }
    while let c = peek, c != "\n" { advance() }
  }

  /// Blanks, comments and newlines (between entries and inside arrays).
  private mutating func skipTrivia() {
    while let c = peek {
      if c == " " || c == "\t" || c == "\n" || c == "\r" {
        advance()
      } else if c == "#" {
        skipComment()
      } else {
        return
      }
    }
  }

  private mutating func document() throws -> [TOMLEntry] {
    var entries: [TOMLEntry] = []
    while true {
      currentKey = nil
      skipTrivia()
      guard let c = peek else { return entries }
      if c == "[" {
        throw fail("tables ([...]) are not used in volume files: put every key at the top level")
      }
      let keyLine = line
      let key = try parseKey()
      currentKey = key
      skipBlanks()
      guard peek == "=" else {
        if peek == "." { throw fail("dotted keys are not used in volume files: write '\(key)' without a dot") }
        throw fail("expected '=' after key '\(key)'")
      }
      advance()
      skipBlanks()
      guard let first = peek, first != "\n", first != "\r", first != "#" else {
        throw fail("key '\(key)' has no value")
      }
      var node = try parseValue()
      node.line = keyLine
      entries.append(TOMLEntry(key: key, node: node))
      skipBlanks()
      skipComment()
      if peek == "\r" { advance() }
      if let c = peek, c != "\n" {
        throw fail("unexpected '\(c)' after the value of key '\(key)' (one key per line)")
      }
    }
  }

  private static func isBare(_ c: Unicode.Scalar) -> Bool {
    ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || c == "_" || c == "-"
  }

  private mutating func parseKey() throws -> String {
    if peek == "\"" { return try basicString() }
    if peek == "'" { return try literalString() }
    var key = ""
    while let c = peek, Self.isBare(c) {
      key.unicodeScalars.append(c)
      advance()
    }
    if key.isEmpty {
      throw fail("expected a key (letters, digits, '_' and '-'), got '\(peek.map { String($0) } ?? "end of file")'")
    }
    return key
  }

  private mutating func parseValue() throws -> TOMLNode {
    let startLine = line
    guard let c = peek else { throw fail("missing value") }
    switch c {
    case "\"":
      if peek(1) == "\"" && peek(2) == "\"" { throw fail("multi-line strings are not used in volume files") }
      return TOMLNode(value: .string(try basicString()), line: startLine)
    case "'":
      if peek(1) == "'" && peek(2) == "'" { throw fail("multi-line strings are not used in volume files") }
      return TOMLNode(value: .string(try literalString()), line: startLine)
    case "[":
      return TOMLNode(value: .array(try array()), line: startLine)
    case "{":
      throw fail("inline tables ({...}) are not used in volume files")
    default:
      return TOMLNode(value: try scalar(), line: startLine)
    }
  }

  private mutating func array() throws -> [TOMLNode] {
    advance()  // [
    var items: [TOMLNode] = []
    while true {
      skipTrivia()
      guard let c = peek else { throw fail("unterminated array: missing ']'") }
      if c == "]" {
        advance()
        return items
      }
      items.append(try parseValue())
      skipTrivia()
      if peek == "," {
        advance()
      } else if peek == "]" {
        continue
      } else if atEnd {
        throw fail("unterminated array: missing ']'")
      } else {
        throw fail("expected ',' or ']' in array, got '\(peek!)'")
      }
    }
  }

  private mutating func basicString() throws -> String {
    advance()  // "
    var out = String.UnicodeScalarView()
    while true {
      guard let c = peek, c != "\n" else { throw fail("unterminated string: missing '\"'") }
      advance()
      if c == "\"" { return String(out) }
      if c != "\\" {
        out.append(c)
        continue
      }
      guard let e = peek else { throw fail("unterminated string: missing '\"'") }
      advance()
      switch e {
      case "b": out.append("\u{08}")
      case "t": out.append("\t")
      case "n": out.append("\n")
      case "f": out.append("\u{0C}")
      case "r": out.append("\r")
      case "\"": out.append("\"")
      case "\\": out.append("\\")
      case "u", "U":
        let n = e == "u" ? 4 : 8
        var hex = ""
        for _ in 0..<n {
          guard let h = peek, h.properties.isASCIIHexDigit else { throw fail("invalid \\\(e) escape in string") }
          hex.unicodeScalars.append(h)
          advance()
        }
        guard let v = UInt32(hex, radix: 16), let scalar = Unicode.Scalar(v) else {
          throw fail("invalid \\\(e)\(hex) escape in string")
        }
        out.append(scalar)
      default:
        throw fail("invalid escape '\\\(e)' in string (use '\\\\' for a backslash, or a 'literal string')")
      }
    }
  }

  private mutating func literalString() throws -> String {
    advance()  // '
    var out = String.UnicodeScalarView()
    while true {
      guard let c = peek, c != "\n" else { throw fail("unterminated string: missing \"'\"") }
      advance()
      if c == "'" { return String(out) }
      out.append(c)
    }
  }

  /// Booleans, integers, floats; anything else is a syntax error.
  private mutating func scalar() throws -> TOMLValue {
    var token = ""
    while let c = peek, Self.isBare(c) || c == "+" || c == "." || c == ":" {
      token.unicodeScalars.append(c)
      advance()
    }
    if token == "true" { return .boolean(true) }
    if token == "false" { return .boolean(false) }
    if let n = Self.integer(token) { return .integer(n) }
    if let d = Self.float(token) { return .float(d) }
    if token.isEmpty {
      throw fail("invalid value starting with '\(peek.map { String($0) } ?? "end of file")'")
    }
    let unsigned = token.first == "+" || token.first == "-" ? token.dropFirst() : Substring(token)
    if Self.digits(unsigned) && unsigned.first != "0" {
      throw fail("integer \(token) does not fit in 64 bits")
    }
    throw fail("invalid value '\(token)' (strings need quotes: \"\(token)\")")
  }

  private static func integer(_ token: String) -> Int64? {
    var t = Substring(token)
    var negative = false
    if t.first == "+" || t.first == "-" {
      negative = t.first == "-"
      t = t.dropFirst()
    }
    var radix = 10
    for (prefix, r) in [("0x", 16), ("0o", 8), ("0b", 2)] where t.hasPrefix(prefix) {
      if token.first == "+" || token.first == "-" { return nil }
      radix = r
      t = t.dropFirst(2)
    }
    guard let f = t.first, f != "_", t.last != "_", !t.contains("__") else { return nil }
    if radix == 10 && t.count > 1 && f == "0" { return nil }  // no leading zeros
    let digits = t.filter { $0 != "_" }
    guard let magnitude = UInt64(digits, radix: radix) else { return nil }
    if negative {
      guard magnitude <= UInt64(Int64.max) + 1 else { return nil }
      return magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude)
    }
    return magnitude <= UInt64(Int64.max) ? Int64(magnitude) : nil
  }

  /// One or more decimal digits, '_' only between two of them.
  private static func digits(_ s: Substring) -> Bool {
    guard let f = s.first, let l = s.last, f.isASCII, f.isNumber, l.isASCII, l.isNumber else { return false }
    return !s.contains("__") && s.allSatisfy { ($0.isASCII && $0.isNumber) || $0 == "_" }
  }

  private static func float(_ token: String) -> Double? {
    switch token {
    case "inf", "+inf": return .infinity
    case "-inf": return -.infinity
    case "nan", "+nan", "-nan": return .nan
    default: break
    }
    // TOML 1.0: [+-] integer-part ( '.' digits | [eE] [+-] digits | both ), the integer
    // part without leading zeros, '_' only between two digits.
    var t = Substring(token)
    if t.first == "+" || t.first == "-" { t = t.dropFirst() }
    let exponentAt = t.firstIndex { $0 == "e" || $0 == "E" }
    let mantissa = exponentAt.map { t[..<$0] } ?? t
    var exponent = exponentAt.map { t[t.index(after: $0)...] }
    let dot = mantissa.firstIndex(of: ".")
    let whole = dot.map { mantissa[..<$0] } ?? mantissa
    let fraction = dot.map { mantissa[mantissa.index(after: $0)...] }
    if exponent?.first == "+" || exponent?.first == "-" { exponent = exponent?.dropFirst() }
    guard fraction != nil || exponent != nil, digits(whole), whole.first != "0" || whole.count == 1,
      fraction.map(digits) ?? true, exponent.map(digits) ?? true
    else { return nil }
    return Double(token.filter { $0 != "_" })
  }
}
