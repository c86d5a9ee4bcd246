/// A target portal: where an iSCSI target listens. IPv6 hosts are held without brackets.

import Failure

public struct Portal: Hashable, Sendable, CustomStringConvertible {
  public static let defaultPort = 3260
  public var host: String
  public var port: Int

  public init(host: String, port: Int = Portal.defaultPort) {
    self.host = host
    self.port = port
  }

  /// Parses `host`, `host:port`, `[v6]`, `[v6]:port` (and a bare IPv6 address).
  public init(parsing text: String) throws {
    func port(_ s: Substring) throws -> Int {
      guard let p = Int(s), (1...65535).contains(p) else {
        throw ISCSIURLError("invalid port '\(s)' in portal '\(text)'")
      }
      return p
    }
    if text.hasPrefix("[") {
      guard let close = text.firstIndex(of: "]") else { throw ISCSIURLError("missing ']' in portal '\(text)'") }
      host = String(text[text.index(after: text.startIndex)..<close])
      let rest = text[text.index(after: close)...]
      if rest.isEmpty {
        self.port = Portal.defaultPort
      } else if rest.hasPrefix(":") {
        self.port = try port(rest.dropFirst())
      } else {
        throw ISCSIURLError("unexpected '\(rest)' after ']' in portal '\(text)'")
      }
    } else if text.filter({ $0 == ":" }).count > 1 {
      host = text  // a bare IPv6 address
      self.port = Portal.defaultPort
    } else if let colon = text.firstIndex(of: ":") {
      host = String(text[..<colon])
      self.port = try port(text[text.index(after: colon)...])
    } else {
      host = text
      self.port = Portal.defaultPort
    }
    guard !host.isEmpty else { throw ISCSIURLError("missing host in portal '\(text)'") }
  }

  /// `host:port`, with IPv6 hosts in brackets (as iscsiadm prints portals).
  public var description: String {
    host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
  }
}

/// A malformed URL or portal; the message says what is wrong and where.
public struct ISCSIURLError: Error, CustomStringConvertible, Equatable {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

extension ISCSIURLError: LunbridgeError {
  public var errorCode: String { "url.malformed" }
  public var failureClass: FailureClass { .usage }
}
