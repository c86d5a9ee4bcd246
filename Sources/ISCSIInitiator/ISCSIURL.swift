import ISCSIProtocol

/// An iSCSI URL as libiscsi and QEMU write it:
/// `iscsi://[user[%password]@]host[:port]/TARGET-IQN/LUN`, IPv6 hosts as `[::1]`.
/// A password in the URL is accepted for compatibility; `passwordInURL` lets the command
/// line warn about it (it shows in `ps` and shell history).
public struct ISCSIURL: Equatable, Sendable, CustomStringConvertible {
  public var portal: Portal
  public var targetName: String
  public var lun: UInt16
  public var user: String?
  public var password: String?
  /// `?key=value` parameters (for path options such as `iface=` and `source=`).
  public var query: [String: String]

  public var passwordInURL: Bool { password != nil }

  public init(portal: Portal, targetName: String, lun: UInt16 = 0, user: String? = nil) {
    self.portal = portal
    self.targetName = targetName
    self.lun = lun
    self.user = user
    self.password = nil
    self.query = [:]
  }

  public init(parsing given: String) throws {
    // Errors quote the URL as typed, but never its password (stderr, the journal).
    let text = Self.withoutPassword(given)
    let scheme = "iscsi://"
    guard text.lowercased().hasPrefix(scheme) else {
      throw ISCSIURLError("'\(text)' is not an iSCSI URL: expected iscsi://HOST[:PORT]/TARGET-IQN/LUN")
    }
    var rest = Substring(given.dropFirst(scheme.count))
    query = [:]
    if let q = rest.firstIndex(of: "?") {
      for pair in rest[rest.index(after: q)...].split(separator: "&") where !pair.isEmpty {
        let kv = pair.split(separator: "=", maxSplits: 1)
        query[String(kv[0])] = kv.count > 1 ? String(kv[1]) : ""
      }
      rest = rest[..<q]
    }
    guard let slash = rest.firstIndex(of: "/") else {
      throw ISCSIURLError("'\(text)' names no target: expected iscsi://HOST[:PORT]/TARGET-IQN/LUN")
    }
    var authority = rest[..<slash]
    let path = rest[rest.index(after: slash)...]
    user = nil
    password = nil
    if let at = authority.lastIndex(of: "@") {
      let credentials = authority[..<at]
      authority = authority[authority.index(after: at)...]
      if let pct = credentials.firstIndex(of: "%") {
        user = String(credentials[..<pct])
        password = String(credentials[credentials.index(after: pct)...])
      } else {
        user = String(credentials)
      }
      if user?.isEmpty == true { throw ISCSIURLError("empty user name in '\(text)'") }
    }
    guard !authority.isEmpty else { throw ISCSIURLError("'\(text)' names no host") }
    portal = try Portal(parsing: String(authority))
    let parts = path.split(separator: "/", omittingEmptySubsequences: false)
    guard let target = parts.first, !target.isEmpty else {
      throw ISCSIURLError("'\(text)' names no target: expected iscsi://HOST[:PORT]/TARGET-IQN/LUN")
    }
    // iSCSI names are case-insensitive and compared in lower case (RFC 3722).
    targetName = ISCSIName.normalized(String(target))
    switch parts.count {
    case 1:
      throw ISCSIURLError("'\(text)' names no LUN: expected iscsi://HOST[:PORT]/TARGET-IQN/LUN")
    case 2:
      guard let n = UInt16(parts[1]), n < 16384 else {
        throw ISCSIURLError("invalid LUN '\(parts[1])' in '\(text)': expected a number from 0 to 16383")
      }
      lun = n
    default:
      throw ISCSIURLError("'\(text)' has extra path parts: expected iscsi://HOST[:PORT]/TARGET-IQN/LUN")
    }
  }

  /// `iscsi://user%secret@host/...` → `iscsi://user@host/...`: what messages may show of
  /// a URL as typed.
  public static func withoutPassword(_ text: String) -> String {
    guard let scheme = text.firstRange(of: "://") else { return text }
    let rest = text[scheme.upperBound...]
    let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
    guard let at = rest[..<authorityEnd].lastIndex(of: "@"),
      let pct = rest[..<at].firstIndex(of: "%")
    else { return text }
    return String(text[..<pct]) + String(rest[at...])
  }

  /// The URL without the password.
  public var description: String {
    var s = "iscsi://"
    if let user { s += user + "@" }
    s += portal.description + "/" + targetName + "/" + String(lun)
    if !query.isEmpty {
      s += "?" + query.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "&")
    }
    return s
  }
}
