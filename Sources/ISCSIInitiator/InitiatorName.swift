import Foundation

/// Where the initiator's IQN comes from when `--initiator-name` is not given: open-iscsi's
/// file when present (so targets' ACLs written for open-iscsi keep working), else our own,
/// generated once and kept.
public enum InitiatorName {
  public static let openISCSIFile = "/etc/iscsi/initiatorname.iscsi"
  public static let lunbridgeFile = "/etc/lunbridge/initiatorname"

  /// Reads `InitiatorName=...` (open-iscsi format; comments with '#').
  public static func parse(_ text: String) -> String? {
    for line in text.split(whereSeparator: \.isNewline) {
      let t = line.trimmingCharacters(in: .whitespaces)
      guard !t.hasPrefix("#"), t.hasPrefix("InitiatorName=") else { continue }
      let v = t.dropFirst("InitiatorName=".count).trimmingCharacters(in: .whitespaces)
      if !v.isEmpty { return v }
    }
    return nil
  }

  public static func resolve(
    openISCSIPath: String = openISCSIFile, lunbridgePath: String = lunbridgeFile
  ) throws -> String {
    for path in [openISCSIPath, lunbridgePath] {
      if let text = try? String(contentsOfFile: path, encoding: .utf8), let name = parse(text) {
        return name
      }
    }
    let name = generate()
    do {
      let dir = (lunbridgePath as NSString).deletingLastPathComponent
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      try "InitiatorName=\(name)\n".write(toFile: lunbridgePath, atomically: true, encoding: .utf8)
    } catch {
      // Not root, or a read-only /etc: use the generated name for this run only.
    }
    return name
  }

  /// `iqn.2026-11.org.lunbridge:HOST-RANDOM` (RFC 3720 section 3.2.6.3.1 iqn form).
  public static func generate() -> String {
    let host = ProcessInfo.processInfo.hostName.lowercased().filter { $0.isLetter || $0.isNumber || $0 == "-" }
    let suffix = (0..<6).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.joined()
    return "iqn.2026-11.org.lunbridge:\(host.isEmpty ? "host" : host)-\(suffix)"
  }
}

/// Reads a secret (CHAP) from a file: one line, trailing newline removed. Refuses files
/// that group or others can read, as ssh does with keys.
public enum SecretFile {
  public static func read(_ path: String) throws -> [UInt8] {
    let attributes: [FileAttributeKey: Any]
    do {
      attributes = try FileManager.default.attributesOfItem(atPath: path)
    } catch {
      throw ISCSIErrorBridge.invalid("cannot read secret file \(path): no such file or not readable")
    }
    if let mode = attributes[.posixPermissions] as? NSNumber, mode.intValue & 0o077 != 0 {
      throw ISCSIErrorBridge.invalid(
        "secret file \(path) is readable by group or others (mode \(String(mode.intValue & 0o777, radix: 8))); run chmod 600 \(path)")
    }
    guard let data = FileManager.default.contents(atPath: path) else {
      throw ISCSIErrorBridge.invalid("cannot read secret file \(path)")
    }
    var bytes = [UInt8](data)
    while let last = bytes.last, last == 0x0a || last == 0x0d { bytes.removeLast() }
    guard !bytes.isEmpty else { throw ISCSIErrorBridge.invalid("secret file \(path) is empty") }
    return bytes
  }
}

import ISCSIProtocol

enum ISCSIErrorBridge {
  static func invalid(_ message: String) -> ISCSIError { ISCSIError(.invalidArgument, message) }
}
