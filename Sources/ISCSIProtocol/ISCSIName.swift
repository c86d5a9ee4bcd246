/// iSCSI names (RFC 3720 section 3.2.6, RFC 3722): `iqn.YYYY-MM.reversed.domain[:...]`,
/// `eui.` and 16 hex digits, `naa.` and 16 or 32 hex digits. Names are case-insensitive;
/// RFC 3722's profile maps them to lower case, which is what targets compare against, so
/// a name typed with capitals is sent in lower case.
public enum ISCSIName {
  /// The most bytes a name may have (RFC 3720 section 3.2.6.1).
  public static let maximumLength = 223

  /// The name as it goes on the wire: ASCII letters in lower case.
  public static func normalized(_ name: String) -> String {
    String(
      String.UnicodeScalarView(
        name.unicodeScalars.map { s in
          (65...90).contains(s.value) ? Unicode.Scalar(s.value + 32)! : s
        }))
  }

  /// Why `name` is not a valid iSCSI name, nil when it is (checked after normalising).
  public static func problem(_ name: String) -> String? {
    let n = normalized(name)
    guard !n.isEmpty else { return "an iSCSI name cannot be empty" }
    guard n.utf8.count <= maximumLength else { return "'\(name)' is longer than \(maximumLength) bytes" }
    if let bad = n.unicodeScalars.first(where: { $0.value <= 0x20 || $0.value == 0x7f || $0 == "/" }) {
      return "'\(name)' contains \(bad.value == 0x20 ? "a space" : "the character U+\(String(bad.value, radix: 16))")"
    }
    let hex = Set("0123456789abcdef".unicodeScalars)
    if n.hasPrefix("eui.") {
      let digits = n.dropFirst(4).unicodeScalars
      return digits.count == 16 && digits.allSatisfy(hex.contains)
        ? nil : "'\(name)': an eui. name is eui. and 16 hex digits"
    }
    if n.hasPrefix("naa.") {
      let digits = n.dropFirst(4).unicodeScalars
      return (digits.count == 16 || digits.count == 32) && digits.allSatisfy(hex.contains)
        ? nil : "'\(name)': an naa. name is naa. and 16 or 32 hex digits"
    }
    if n.hasPrefix("iqn.") {
      // iqn. + YYYY-MM + . + a naming authority (at least one character).
      let rest = Array(n.dropFirst(4).unicodeScalars)
      let digit: (Unicode.Scalar) -> Bool = { ("0"..."9").contains($0) }
      guard rest.count >= 9, rest[0..<4].allSatisfy(digit), rest[4] == "-", rest[5..<7].allSatisfy(digit),
        rest[7] == "."
      else {
        return "'\(name)': an iqn. name is iqn.YYYY-MM.reversed.domain[:identifier], as iqn.2004-10.com.example:disk1"
      }
      return nil
    }
    return "'\(name)' is not an iSCSI name: expected iqn.YYYY-MM.reversed.domain[:identifier], eui.HEX16 or naa.HEX16/32"
  }
}
