/// A problem in a volume file, naming the file, the line and the key:
/// `/etc/lunbridge/volumes/db.toml: line 4: key 'timeout' must be an integer (seconds), got a string`.
/// Never carries a secret's contents.

import Failure

public struct VolumeConfigError: Error, CustomStringConvertible, Equatable, Sendable {
  public enum Kind: String, Sendable {
    /// Not TOML (or a TOML feature volume files do not use).
    case syntax
    case unknownKey
    case duplicateKey
    case wrongType
    /// The right type, but not an allowed value (range, enum, device name...).
    case invalidValue
    case missingKey
    case badURL
    /// A CHAP secret file that is missing, not a regular file, empty, unreadable, or
    /// readable by group or others.
    case secretFile
    /// The volume file itself: missing, unreadable, not UTF-8, writable by others.
    case volumeFile
    /// A volume name that cannot be a file name, a unit instance or /dev/lunbridge/NAME.
    case badName
  }

  public var kind: Kind
  public var file: String
  public var line: Int?
  public var key: String?
  /// The text after "FILE: line N: ".
  public var message: String
  /// For `.unknownKey`: the closest known key, if any is close.
  public var suggestion: String?

  public init(
    _ kind: Kind, file: String, line: Int? = nil, key: String? = nil, message: String, suggestion: String? = nil
  ) {
    self.kind = kind
    self.file = file
    self.line = line
    self.key = key
    self.message = message
    self.suggestion = suggestion
  }

  public var description: String {
    var parts = [file]
    if let line { parts.append("line \(line)") }
    parts.append(message)
    return parts.joined(separator: ": ")
  }
}

extension VolumeConfigError: LunbridgeError {
  public var errorCode: String { "volume-file.\(kind.rawValue)" }
  public var failureClass: FailureClass { .config }
}
