import NIOCore

/// One `key=value` pair of a text or login data segment (RFC 7143 section 6.1).
public struct TextKeyValue: Equatable, Sendable, CustomStringConvertible {
  public var key: String
  public var value: String

  public init(_ key: String, _ value: String) {
    self.key = key
    self.value = value
  }

  /// CHAP secrets never travel, but CHAP responses and challenges are not for logs either.
  public var description: String {
    TextKeys.isBinaryCHAPKey(key) ? "\(key)=<\(value.utf8.count) chars>" : "\(key)=\(value)"
  }
}

/// Encoding and decoding of the `key=value\0` text of Login and Text PDUs
/// (RFC 7143 section 6.1, "Text Format").
public enum TextKeys {
  /// RFC 7143 section 6.1: "A key-name ... MUST NOT exceed 63 bytes."
  public static let maxKeyLength = 63
  /// RFC 7143 section 6.1: values are at most 255 bytes unless the key says otherwise.
  public static let maxValueLength = 255
  /// RFC 7143 section 12.1.3: CHAP_C and CHAP_R are binary values of at most 1024 bytes;
  /// in hex that is "0x" + 2048 digits.
  public static let maxCHAPBinaryLength = 1024
  public static let maxCHAPEncodedLength = 2 + 2 * maxCHAPBinaryLength

  /// The keys whose values are long binary strings (RFC 7143 section 12.1.3).
  static func isBinaryCHAPKey(_ key: String) -> Bool { key == "CHAP_C" || key == "CHAP_R" }

  static func maxEncodedValueLength(for key: String) -> Int {
    isBinaryCHAPKey(key) ? maxCHAPEncodedLength : maxValueLength
  }

  /// RFC 7143 section 6.1: key-name characters are letters, digits, '.', '-', '+', '@', '_'.
  static func isValidKeyName(_ key: String) -> Bool {
    let utf8 = key.utf8
    guard !utf8.isEmpty, utf8.count <= maxKeyLength else { return false }
    for c in utf8 {
      switch c {
      case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
        UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"),
        UInt8(ascii: "+"), UInt8(ascii: "@"), UInt8(ascii: "_"), UInt8(ascii: "#"):
        // '#' appears in the IANA-registered extension form "X#name" (section 13.22).
        continue
      default: return false
      }
    }
    return true
  }

  /// Encodes pairs in order, each terminated by NUL (RFC 7143 section 6.1). Throws on a
  /// pair this side must never send (bad key name, over-long value, NUL inside).
  public static func encode(_ pairs: [TextKeyValue]) throws -> [UInt8] {
    var out = [UInt8]()
    for pair in pairs {
      try validate(key: pair.key, value: pair.value)
      out.append(contentsOf: pair.key.utf8)
      out.append(UInt8(ascii: "="))
      out.append(contentsOf: pair.value.utf8)
      out.append(0)
    }
    return out
  }

  public static func encode(_ pairs: [TextKeyValue], into buffer: inout ByteBuffer) throws {
    buffer.writeBytes(try encode(pairs))
  }

  /// Decodes a whole text (all continuation segments joined), preserving order and
  /// duplicates (SendTargets repeats TargetName and TargetAddress). Trailing NUL bytes
  /// (padding some targets count in DataSegmentLength) are tolerated; anything else that
  /// breaks section 6.1 is a protocol violation.
  public static func decode(_ bytes: [UInt8]) throws -> [TextKeyValue] {
    var end = bytes.count
    // Tolerate extra NULs after the last terminator, not a missing terminator.
    while end >= 2 && bytes[end - 1] == 0 && bytes[end - 2] == 0 { end -= 1 }
    guard end > 0 else { return [] }
    guard bytes[end - 1] == 0 else {
      throw ISCSIError(.protocolViolation, "text data does not end with a NUL terminator (RFC 7143 section 6.1)")
    }
    var pairs = [TextKeyValue]()
    var start = 0
    while start < end {
      var nul = start
      while bytes[nul] != 0 { nul += 1 }
      let record = bytes[start..<nul]
      guard let eq = record.firstIndex(of: UInt8(ascii: "=")) else {
        throw ISCSIError(.protocolViolation, "text record without '=' (RFC 7143 section 6.1)")
      }
      guard let key = String(validating: bytes[start..<eq], as: UTF8.self),
        let value = String(validating: bytes[(eq + 1)..<nul], as: UTF8.self)
      else {
        throw ISCSIError(.protocolViolation, "text record is not valid UTF-8 (RFC 7143 section 6.1)")
      }
      try validate(key: key, value: value)
      pairs.append(TextKeyValue(key, value))
      start = nul + 1
    }
    return pairs
  }

  public static func decode(_ buffer: ByteBuffer) throws -> [TextKeyValue] {
    try decode(Array(buffer.readableBytesView))
  }

  static func validate(key: String, value: String) throws {
    guard isValidKeyName(key) else {
      let shown = key.utf8.count > maxKeyLength ? "a \(key.utf8.count)-byte key" : "key \"\(key)\""
      throw ISCSIError(
        .protocolViolation, "invalid text key: \(shown) (RFC 7143 section 6.1: 1-63 bytes of [A-Za-z0-9.-+@_])")
    }
    let limit = maxEncodedValueLength(for: key)
    guard value.utf8.count <= limit else {
      throw ISCSIError(
        .protocolViolation, "value of \(key) is \(value.utf8.count) bytes, over the limit of \(limit) (RFC 7143 section 6.1)")
    }
    guard !value.utf8.contains(0) else {
      throw ISCSIError(.protocolViolation, "value of \(key) contains a NUL byte")
    }
  }
}

/// Binary and numeric value encodings (RFC 7143 section 6.1: decimal-constant,
/// hex-constant "0x", base64-constant "0b").
public enum TextValue {
  /// Decodes a binary value given as hex (`0x`/`0X`) or base64 (`0b`/`0B`).
  public static func decodeBinary(_ text: String) throws -> [UInt8] {
    let utf8 = Array(text.utf8)
    guard utf8.count >= 2, utf8[0] == UInt8(ascii: "0") else {
      throw ISCSIError(.protocolViolation, "binary value lacks a 0x or 0b prefix (RFC 7143 section 6.1)")
    }
    let body = utf8[2...]
    switch utf8[1] {
    case UInt8(ascii: "x"), UInt8(ascii: "X"): return try decodeHex(body)
    case UInt8(ascii: "b"), UInt8(ascii: "B"): return try decodeBase64(body)
    default:
      throw ISCSIError(.protocolViolation, "binary value lacks a 0x or 0b prefix (RFC 7143 section 6.1)")
    }
  }

  /// "0x" followed by lowercase hex digits.
  public static func encodeHex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8(ascii: "0"), UInt8(ascii: "x")]
    out.reserveCapacity(2 + bytes.count * 2)
    for b in bytes {
      out.append(digits[Int(b >> 4)])
      out.append(digits[Int(b & 0xf)])
    }
    return String(decoding: out, as: UTF8.self)
  }

  static func decodeHex(_ digits: ArraySlice<UInt8>) throws -> [UInt8] {
    guard !digits.isEmpty else { throw ISCSIError(.protocolViolation, "empty hex value") }
    func nibble(_ c: UInt8) throws -> UInt8 {
      switch c {
      case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
      case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
      case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
      default: throw ISCSIError(.protocolViolation, "invalid hex digit in binary value")
      }
    }
    var nibbles = try digits.map(nibble)
    // An odd number of digits: the value is right-aligned (an implied leading zero).
    if nibbles.count % 2 == 1 { nibbles.insert(0, at: 0) }
    var out = [UInt8]()
    out.reserveCapacity(nibbles.count / 2)
    var i = 0
    while i < nibbles.count {
      out.append(nibbles[i] << 4 | nibbles[i + 1])
      i += 2
    }
    return out
  }

  static func decodeBase64(_ chars: ArraySlice<UInt8>) throws -> [UInt8] {
    func sextet(_ c: UInt8) -> UInt8? {
      switch c {
      case UInt8(ascii: "A")...UInt8(ascii: "Z"): return c - UInt8(ascii: "A")
      case UInt8(ascii: "a")...UInt8(ascii: "z"): return c - UInt8(ascii: "a") + 26
      case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0") + 52
      case UInt8(ascii: "+"): return 62
      case UInt8(ascii: "/"): return 63
      default: return nil
      }
    }
    let bad = ISCSIError(.protocolViolation, "invalid base64 binary value")
    var body = Array(chars)
    guard !body.isEmpty, body.count % 4 == 0 else { throw bad }
    var padding = 0
    while let last = body.last, last == UInt8(ascii: "=") {
      body.removeLast()
      padding += 1
    }
    guard padding <= 2 else { throw bad }
    var out = [UInt8]()
    var acc: UInt32 = 0
    var bits = 0
    for c in body {
      guard let v = sextet(c) else { throw bad }
      acc = (acc << 6) | UInt32(v)
      bits += 6
      if bits >= 8 {
        bits -= 8
        out.append(UInt8((acc >> UInt32(bits)) & 0xff))
      }
    }
    return out
  }

  /// RFC 7143 section 6.1 decimal-constant (also accepts hex numbers, which the RFC allows
  /// for numerical values).
  public static func decodeNumber(_ text: String) -> UInt64? {
    if text.hasPrefix("0x") || text.hasPrefix("0X") {
      return UInt64(text.dropFirst(2), radix: 16)
    }
    guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
      return nil
    }
    return UInt64(text)
  }
}

/// Joins the data segments of a multi-PDU text (Login or Text Response with the C bit,
/// RFC 7143 sections 11.11.2 and 11.13.7): a key=value pair may be split across PDUs, so
/// nothing is decoded until a PDU arrives with C clear. The total is bounded.
public struct TextAccumulator: Sendable {
  public static let defaultLimit = 64 * 1024
  public let limit: Int
  private var bytes: [UInt8] = []

  public init(limit: Int = TextAccumulator.defaultLimit) {
    self.limit = limit
  }

  public var isEmpty: Bool { bytes.isEmpty }

  /// Adds one segment. Returns the decoded pairs when `continues` is false (and resets),
  /// nil while more segments are expected.
  public mutating func append(_ segment: ByteBuffer, continues: Bool) throws -> [TextKeyValue]? {
    guard bytes.count + segment.readableBytes <= limit else {
      bytes = []
      throw ISCSIError(
        .protocolViolation, "text spanning several PDUs exceeds \(limit) bytes (RFC 7143 section 6.1)")
    }
    bytes.append(contentsOf: segment.readableBytesView)
    guard !continues else { return nil }
    defer { bytes = [] }
    return try TextKeys.decode(bytes)
  }
}
