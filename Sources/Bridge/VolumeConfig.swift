import FoundationEssentials
import Glibc
import ISCSIInitiator
import ISCSIProtocol

/// One volume for boot-time attach: `/etc/lunbridge/volumes/NAME.toml`, attached by
/// `lunbridge@NAME.service` (`lunbridge attach NAME --foreground`).
///
/// Parsing (`init(parsing:file:name:)`, `load`) checks syntax, keys, types and values; it
/// touches no other file. `validate()` does the filesystem checks (secret files exist,
/// are regular, non-empty, readable, and not readable by group or others). Neither
/// connects to anything, and neither reads a secret's contents into memory.
///
/// Unset keys take the defaults `lunbridge attach` uses.
public struct VolumeConfig: Equatable, Sendable {
  public static let directory = "/etc/lunbridge/volumes"
  public static let fileExtension = "toml"

  public enum Startup: String, Sendable, CaseIterable {
    case manual
    case automatic
    /// Attached in the initramfs, before the root filesystem is mounted, by lunbridge's
    /// initramfs-tools script (open-iscsi's node.startup = onboot): the root volume.
    case onboot
  }

  /// Multipath path selector.
  public enum Policy: String, Sendable, CaseIterable {
    case serviceTime = "service-time"
    case queueLength = "queue-length"
    case roundRobin = "round-robin"
    case failover
  }

  /// The volume's name (the file name without `.toml`): the unit instance
  /// (`lunbridge@NAME`) and the link `/dev/lunbridge/NAME`.
  public var name: String
  /// The file it was parsed from (for messages).
  public var file: String

  /// At least one; more are paths to the same LUN (multipath). Passwords in URLs are refused.
  public var paths: [ISCSIURL]
  /// nil: /etc/iscsi/initiatorname.iscsi, else /etc/lunbridge/initiatorname.
  public var initiatorName: String?
  /// `chap_user`, else the user of the first URL that names one.
  public var chapUser: String?
  public var chapSecretFile: String?
  public var mutualUser: String?
  public var mutualSecretFile: String?
  /// The CHAP secrets as systemd credentials (`LoadCredential=NAME:FILE` in the unit): read
  /// from `$CREDENTIALS_DIRECTORY/NAME` when the volume logs in, instead of a secret file.
  public var chapSecretCredential: String?
  public var mutualSecretCredential: String?
  /// `automatic`: lunbridge's systemd generator starts `lunbridge@NAME` at every boot
  /// (open-iscsi's node.startup); `onboot`: the initramfs attaches it (boot from SAN) and
  /// its process serves it until power-off; `manual` (the default): only if the unit is
  /// enabled.
  public var startup: Startup = .manual
  public var chapAlgorithms: [CHAPAlgorithm] = [.md5]
  public var headerDigest: [Digest] = [.none]
  public var dataDigest: [Digest] = [.none]
  public var policy: Policy = .serviceTime
  /// Seconds between NOP-Out pings on an idle connection (nil: the initiator's default).
  public var keepaliveInterval: Int?
  /// Seconds without a NOP-In answer before a connection counts as dead (nil: default).
  public var keepaliveTimeout: Int?
  public var loginTimeout: Int = 15
  /// Seconds before the kernel times out a request on an NBD socket (`--timeout`).
  public var timeout: Int = 30
  /// Seconds the kernel holds I/O while no NBD socket is alive (`--dead-conn-timeout`).
  public var deadConnTimeout: Int = 120
  /// Seconds to queue I/O while every path is down before failing it (nil: default).
  public var noPathRetry: Int?
  /// With ALUA: seconds between re-reads of the port groups' states (nil: default 10).
  public var aluaCheckInterval: Int?
  /// `reservation_key`: "0xHEX", or "file:PATH" naming a file that holds one (as
  /// multipath.conf's reservation_key); nil: the volume registers nothing by itself.
  public var reservationKey: String?
  /// nil: the kernel picks a free device.
  public var device: UInt32?
  public var readOnly: Bool = false
  /// NBD sockets (nil: the number of CPUs), 1...64.
  public var connections: Int?
  /// iSCSI sessions per path URL (nil: 1).
  public var sessionsPerPath: Int?
  /// `immediate`, `manual`, or seconds (nil: immediate).
  public var failback: String?
  /// Seconds a SCSI command may take before its path counts as failed (nil: default).
  public var commandTimeout: Int?
  /// `tcp:[HOST:]PORT` for Prometheus metrics (nil: none).
  public var metrics: String?

  /// The line each key was set on, for `validate()`'s messages.
  public var lines: [String: Int] = [:]

  public static let knownKeys: [String] = [
    "paths", "initiator_name", "chap_user", "chap_secret_file", "mutual_user", "mutual_secret_file",
    "chap_secret_credential", "mutual_secret_credential", "startup", "chap_algorithms", "header_digest", "data_digest", "policy",
    "keepalive_interval", "keepalive_timeout",
    "login_timeout", "timeout", "dead_conn_timeout", "no_path_retry", "device", "read_only", "connections",
    "sessions_per_path", "failback", "command_timeout", "metrics", "alua_check_interval",
    "reservation_key",
  ]

  /// Keys people write from habit (command-line spellings are caught by the edit distance).
  static let aliases: [String: String] = [
    "url": "paths", "urls": "paths", "path": "paths", "portal": "paths", "portals": "paths", "target": "paths",
    "readonly": "read_only", "ro": "read_only", "nbd": "device", "dev": "device", "initiator": "initiator_name",
    "iqn": "initiator_name", "username": "chap_user", "user": "chap_user", "secret_file": "chap_secret_file",
    "password": "chap_secret_file", "secret": "chap_secret_file", "chap_secret": "chap_secret_file",
    "mutual_secret": "mutual_secret_file", "digest": "header_digest", "multipath_policy": "policy",
    "path_selector": "policy", "node.startup": "startup", "autostart": "startup", "auto": "startup",
    "credential": "chap_secret_credential", "chap_credential": "chap_secret_credential",
  ]

  // MARK: loading

  /// `directory/NAME.toml` (a trailing `.toml` on `name` is ignored).
  public static func path(name: String, directory: String = VolumeConfig.directory) -> String {
    let base = name.hasSuffix(".\(fileExtension)") ? String(name.dropLast(fileExtension.count + 1)) : name
    return FilePath.join(directory, "\(base).\(fileExtension)")
  }

  public static func load(name: String, directory: String = VolumeConfig.directory) throws -> VolumeConfig {
    let base = name.hasSuffix(".\(fileExtension)") ? String(name.dropLast(fileExtension.count + 1)) : name
    let file = path(name: base, directory: directory)
    if let problem = nameProblem(base) {
      throw VolumeConfigError(.badName, file: file, message: problem)
    }
    return try load(path: file)
  }

  /// Parses `path`; the volume's name is the file name without `.toml`.
  public static func load(path: String) throws -> VolumeConfig {
    let name = volumeName(path: path)
    if let problem = nameProblem(name) {
      throw VolumeConfigError(.badName, file: path, message: problem)
    }
    guard FileManager.default.fileExists(atPath: path) else {
      throw VolumeConfigError(
        .volumeFile, file: path,
        message:
          "no such volume file (volumes are \(directory)/NAME.\(fileExtension); `make install` puts an example in \(directory)/example.toml.sample)"
      )
    }
    guard let data = FileManager.default.contents(atPath: path) else {
      throw VolumeConfigError(.volumeFile, file: path, message: "cannot read the volume file (permissions?)")
    }
    guard let text = String(data: data, encoding: .utf8) else {
      throw VolumeConfigError(.volumeFile, file: path, message: "the volume file is not UTF-8 text")
    }
    return try VolumeConfig(parsing: text, file: path, name: name)
  }

  /// Every problem of the file at `path` (`lunbridge config check`): all wrong keys and
  /// values, or the one syntax or file error that stops reading; when the keys are right,
  /// the filesystem checks (`validate()`). Empty: the file is good.
  public static func problems(path: String) -> [VolumeConfigError] {
    do {
      try load(path: path).validate()
      return []
    } catch let e as VolumeConfigError {
      switch e.kind {
      case .volumeFile, .badName, .syntax, .secretFile: return [e]  // nothing more to read, or validate()'s
      default: return collected(path: path)  // a wrong key or value: all of them
      }
    } catch {
      return [VolumeConfigError(.volumeFile, file: path, message: "\(error)")]
    }
  }

  private static func collected(path: String) -> [VolumeConfigError] {
    let text = String(decoding: FileManager.default.contents(atPath: path) ?? Data(), as: UTF8.self)
    var problems: [VolumeConfigError] = []
    do {
      _ = try VolumeConfig(parsing: text, file: path, name: volumeName(path: path), problems: &problems)
    } catch let e as VolumeConfigError {
      return [e]
    } catch {
      return [VolumeConfigError(.volumeFile, file: path, message: "\(error)")]
    }
    return problems
  }

  /// Parse + validate, without connecting (`lunbridge config check NAME`).
  @discardableResult
  public static func check(name: String, directory: String = VolumeConfig.directory) throws -> VolumeConfig {
    let config = try load(name: name, directory: directory)
    try config.check()
    return config
  }

  @discardableResult
  public static func check(path: String) throws -> VolumeConfig {
    let config = try load(path: path)
    try config.check()
    return config
  }

  /// The volume names in `directory` (files ending in `.toml`), sorted. An absent
  /// directory has none.
  public static func names(directory: String = VolumeConfig.directory) throws -> [String] {
    guard FileManager.default.fileExists(atPath: directory) else { return [] }
    return try FileManager.default.contentsOfDirectory(atPath: directory)
      .filter { $0.hasSuffix(".\(fileExtension)") && !$0.hasPrefix(".") }
      .map { volumeName(path: $0) }
      .sorted()
  }

  static func volumeName(path: String) -> String {
    let base = FilePath.lastComponent(path)
    return base.hasSuffix(".\(fileExtension)") ? String(base.dropLast(fileExtension.count + 1)) : base
  }

  /// Why `name` cannot name a volume, or nil. Names become a file name, a systemd unit
  /// instance (`%i`) and `/dev/lunbridge/NAME`: letters, digits, '_', '.', '-'.
  public static func nameProblem(_ name: String) -> String? {
    if name.isEmpty { return "empty volume name" }
    if name.hasPrefix(".") || name.hasPrefix("-") {
      return "volume name '\(name)' must not start with '.' or '-'"
    }
    if name.count > 64 { return "volume name '\(name)' is longer than 64 characters" }
    let ok = name.unicodeScalars.allSatisfy {
      ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "_.-".unicodeScalars.contains($0)
    }
    if !ok { return "volume name '\(name)' may only hold letters, digits, '_', '.' and '-'" }
    return nil
  }

  // MARK: checks

  /// `validate()`: the checks that need the filesystem. Call after parsing.
  public func check() throws {
    try validate()
  }

  /// Filesystem checks: each secret file exists, is a regular file, is not empty, is
  /// readable by this process, and is not readable by group or others; the volume file
  /// is not writable by group or others. Reads no secret.
  public func validate() throws {
    try checkVolumeFileMode()
    _ = try resolvedReservationKey()
    for (key, path) in [("chap_secret_file", chapSecretFile), ("mutual_secret_file", mutualSecretFile)] {
      guard let path else { continue }
      try checkSecretFile(key: key, path: path)
    }
    // A credential exists only inside the unit that loads it: checked there (attach), and
    // by `config check` when it runs with $CREDENTIALS_DIRECTORY set.
    if Self.credentialsDirectory != nil {
      for key in ["chap_secret_credential", "mutual_secret_credential"] where lines[key] != nil {
        _ = try secretPath(key)
      }
    }
  }

  /// systemd's `$CREDENTIALS_DIRECTORY` (set for a unit with LoadCredential=), or nil.
  public static var credentialsDirectory: String? {
    guard let d = ProcessInfo.processInfo.environment["CREDENTIALS_DIRECTORY"], !d.isEmpty else { return nil }
    return d
  }

  /// The file that holds the CHAP secret (`chap_secret_file` or `chap_secret_credential`), or
  /// the mutual one (`mutual_...`); nil when the volume names none. A credential outside a
  /// unit that loads it is a configuration error that says what to add.
  public func secretPath(_ key: String) throws -> String? {
    let mutual = key.hasPrefix("mutual")
    // A root volume's process reads the system's files through PID 1's root (Initramfs).
    if let file = mutual ? mutualSecretFile : chapSecretFile { return Initramfs.systemPath(file) }
    guard let credential = mutual ? mutualSecretCredential : chapSecretCredential else { return nil }
    let credentialKey = mutual ? "mutual_secret_credential" : "chap_secret_credential"
    guard let directory = Self.credentialsDirectory else {
      throw VolumeConfigError(
        .secretFile, file: file, line: lines[credentialKey], key: credentialKey,
        message:
          "key '\(credentialKey)': $CREDENTIALS_DIRECTORY is not set; run from lunbridge@\(name).service with LoadCredential=\(credential):FILE, or use \(mutual ? "mutual_secret_file" : "chap_secret_file")"
      )
    }
    let path = FilePath.join(directory, credential)
    guard FileManager.default.fileExists(atPath: path) else {
      throw VolumeConfigError(
        .secretFile, file: file, line: lines[credentialKey], key: credentialKey,
        message:
          "key '\(credentialKey)': no credential '\(credential)' in \(directory); add LoadCredential=\(credential):FILE to the unit (systemctl edit lunbridge@\(name))"
      )
    }
    try checkSecretFile(key: credentialKey, path: path)
    return path
  }

  private func checkVolumeFileMode() throws {
    var st = stat()
    guard stat(file, &st) == 0 else { return }  // parsed from text, not a file
    let mode = st.st_mode & 0o777
    if mode & 0o022 != 0 {
      throw VolumeConfigError(
        .volumeFile, file: file,
        message:
          "the volume file is writable by group or others (mode \(String(mode, radix: 8))); run chmod 644 \(file)")
    }
  }

  private func checkSecretFile(key: String, path: String) throws {
    // The same checks as when the secret is used (SecretFile), on the file itself.
    do {
      _ = try SecretFile.load(Initramfs.systemPath(path))
    } catch let e as ISCSIError {
      var text = e.description
      if text.hasPrefix("invalid argument: ") { text.removeFirst("invalid argument: ".count) }
      if text.contains("not readable by this user") { text += "; lunbridge@.service runs as root" }
      throw VolumeConfigError(.secretFile, file: file, line: lines[key], key: key, message: "key '\(key)': \(text)")
    }
  }

  /// "0x1a2b" or "1a2b" (hexadecimal, as mpathpersist takes keys); nil if not a non-zero key.
  public static func parseReservationKey(_ text: String) -> UInt64? {
    var t = text.trimmingWhitespace()
    if t.hasPrefix("0x") || t.hasPrefix("0X") { t.removeFirst(2) }
    guard !t.isEmpty, t.count <= 16, let v = UInt64(t, radix: 16), v != 0 else { return nil }
    return v
  }

  /// The reservation key, read from its file for "file:PATH"; nil when none is set.
  public func resolvedReservationKey() throws -> UInt64? {
    guard let reservationKey else { return nil }
    guard reservationKey.hasPrefix("file:") else { return VolumeConfig.parseReservationKey(reservationKey) }
    let path = String(reservationKey.dropFirst(5))
    guard let data = FileManager.default.contents(atPath: Initramfs.systemPath(path)) else {
      throw VolumeConfigError(
        .invalidValue, file: file, line: lines["reservation_key"], key: "reservation_key",
        message: "key 'reservation_key': cannot read \(path)")
    }
    guard let key = VolumeConfig.parseReservationKey(String(decoding: data, as: UTF8.self)) else {
      throw VolumeConfigError(
        .invalidValue, file: file, line: lines["reservation_key"], key: "reservation_key",
        message: "key 'reservation_key': \(path) does not hold a key (up to 16 hexadecimal digits)")
    }
    return key
  }

  // MARK: parsing

  public init(parsing text: String, file: String, name: String) throws {
    var problems: [VolumeConfigError] = []
    try self.init(parsing: text, file: file, name: name, problems: &problems)
    if let first = problems.first { throw first }
  }

  /// Parses on past a wrong key or value and collects every such problem in `problems`
  /// (`lunbridge config check` shows them all); throws only for a syntax error, after
  /// which nothing can be read.
  public init(parsing text: String, file: String, name: String, problems: inout [VolumeConfigError]) throws {
    self.name = name
    self.file = file
    self.paths = []
    let entries: [TOMLEntry]
    do {
      entries = try TOMLParser.parse(text)
    } catch let e as TOMLSyntaxError {
      throw VolumeConfigError(.syntax, file: file, line: e.line, key: e.key, message: e.message)
    }
    let d = Decoder(file: file)
    for entry in entries {
      do {
        if let first = lines[entry.key] {
          throw d.error(.duplicateKey, entry, "key '\(entry.key)' is set twice (first on line \(first))")
        }
        lines[entry.key] = entry.line
        try apply(entry, d)
      } catch let e as VolumeConfigError {
        problems.append(e)
      }
    }
    if lines["paths"] == nil {
      problems.append(
        VolumeConfigError(
          .missingKey, file: file, key: "paths",
          message: "key 'paths' is missing: add paths = [\"iscsi://HOST[:PORT]/TARGET-IQN/LUN\"]"))
    }
    // Combinations only once each key read well (a key that failed would show up again).
    guard problems.isEmpty else { return }
    do {
      try checkCombinations()
    } catch let e as VolumeConfigError {
      problems.append(e)
    }
  }

  private mutating func apply(_ entry: TOMLEntry, _ d: Decoder) throws {
    switch entry.key {
    case "paths":
      paths = try d.urls(entry)
    case "initiator_name":
      let v = try d.string(entry)
      guard ["iqn.", "eui.", "naa."].contains(where: { v.lowercased().hasPrefix($0) }), !v.contains(" ") else {
        throw d.error(.invalidValue, entry, "key 'initiator_name' must be an iSCSI name (iqn..., eui... or naa...), got '\(v)'")
      }
      initiatorName = v
    case "chap_user": chapUser = try d.nonEmptyString(entry)
    case "chap_secret_file": chapSecretFile = try d.absolutePath(entry)
    case "mutual_user": mutualUser = try d.nonEmptyString(entry)
    case "mutual_secret_file": mutualSecretFile = try d.absolutePath(entry)
    case "chap_secret_credential": chapSecretCredential = try d.credentialName(entry)
    case "mutual_secret_credential": mutualSecretCredential = try d.credentialName(entry)
    case "startup":
      let v = try d.string(entry)
      guard let s = Startup(rawValue: v.lowercased()) else {
        throw d.error(.invalidValue, entry, "key 'startup' must be \"automatic\", \"onboot\" or \"manual\", got '\(v)'")
      }
      startup = s
    case "chap_algorithms":
      chapAlgorithms = try d.list(entry, of: "CHAP algorithms", allowed: "md5, sha1, sha256") {
        switch $0.lowercased() {
        case "md5": return .md5
        case "sha1", "sha-1": return .sha1
        case "sha256", "sha-256": return .sha256
        default: return nil
        }
      }
    case "header_digest", "data_digest":
      let digests: [Digest] = try d.list(entry, of: "digests", allowed: "none, crc32c") {
        switch $0.lowercased() {
        case "none": return Digest.none
        case "crc32c": return .crc32c
        default: return nil
        }
      }
      if entry.key == "header_digest" { headerDigest = digests } else { dataDigest = digests }
    case "policy":
      let v = try d.string(entry)
      guard let p = Policy(rawValue: v.lowercased()) else {
        throw d.error(
          .invalidValue, entry,
          "key 'policy' must be one of \(Policy.allCases.map(\.rawValue).joined(separator: ", ")), got '\(v)'")
      }
      policy = p
    case "keepalive_interval": keepaliveInterval = try d.seconds(entry, min: 1)
    case "keepalive_timeout": keepaliveTimeout = try d.seconds(entry, min: 1)
    case "login_timeout": loginTimeout = try d.seconds(entry, min: 1)
    case "timeout": timeout = try d.seconds(entry, min: 1)
    case "dead_conn_timeout": deadConnTimeout = try d.seconds(entry, min: 0)
    case "no_path_retry": noPathRetry = try d.seconds(entry, min: 0)
    case "alua_check_interval": aluaCheckInterval = try d.seconds(entry, min: 1)
    case "reservation_key":
      let v = try d.string(entry)
      if v.hasPrefix("file:") {
        guard v.dropFirst(5).hasPrefix("/") else {
          throw d.error(.invalidValue, entry, "key 'reservation_key' file must be an absolute path (file:/etc/...), got '\(v)'")
        }
      } else if VolumeConfig.parseReservationKey(v) == nil {
        throw d.error(
          .invalidValue, entry,
          "key 'reservation_key' must be a non-zero key of up to 16 hexadecimal digits (\"0x1a2b\") or \"file:PATH\", got '\(v)'")
      }
      reservationKey = v
    case "device": device = try d.device(entry)
    case "read_only": readOnly = try d.boolean(entry)
    case "connections":
      let n = try d.integer(entry, what: "an integer")
      guard (1...64).contains(n) else {
        throw d.error(.invalidValue, entry, "key 'connections' must be between 1 and 64, got \(n)")
      }
      connections = Int(n)
    case "sessions_per_path":
      let n = try d.integer(entry, what: "an integer")
      guard (1...16).contains(n) else {
        throw d.error(.invalidValue, entry, "key 'sessions_per_path' must be between 1 and 16, got \(n)")
      }
      sessionsPerPath = Int(n)
    case "failback":
      if case .integer(let n) = entry.node.value {
        guard n >= 0 else { throw d.error(.invalidValue, entry, "key 'failback' must be 0 or more seconds, got \(n)") }
        failback = String(n)
      } else {
        let v = try d.string(entry).lowercased()
        guard v == "immediate" || v == "manual" || Int(v).map({ $0 >= 0 }) == true else {
          throw d.error(
            .invalidValue, entry, "key 'failback' must be \"immediate\", \"manual\" or a number of seconds, got '\(v)'")
        }
        failback = v
      }
    case "command_timeout": commandTimeout = try d.seconds(entry, min: 1)
    case "metrics":
      let v = try d.string(entry)
      guard v.hasPrefix("tcp:") else {
        throw d.error(.invalidValue, entry, "key 'metrics' must be tcp:[HOST:]PORT, got '\(v)'")
      }
      metrics = v
    default:
      let suggestion = Self.closestKey(to: entry.key)
      throw VolumeConfigError(
        .unknownKey, file: file, line: entry.line, key: entry.key,
        message: "unknown key '\(entry.key)'" + (suggestion.map { " (did you mean '\($0)'?)" } ?? ""),
        suggestion: suggestion)
    }
  }

  private func checkCombinations() throws {
    func error(_ key: String, _ message: String) -> VolumeConfigError {
      VolumeConfigError(.invalidValue, file: file, line: lines[key], key: key, message: message)
    }
    for (file, credential) in [
      ("chap_secret_file", "chap_secret_credential"), ("mutual_secret_file", "mutual_secret_credential"),
    ]
    where lines[file] != nil && lines[credential] != nil {
      throw error(credential, "keys '\(file)' and '\(credential)' both name the secret: keep one")
    }
    let chapSecret = chapSecretFile != nil || chapSecretCredential != nil
    let mutualSecret = mutualSecretFile != nil || mutualSecretCredential != nil
    let user = chapUser ?? paths.lazy.compactMap(\.user).first
    if let user, !chapSecret {
      throw error(
        lines["chap_user"] != nil ? "chap_user" : "paths",
        "CHAP user '\(user)' has no secret: add chap_secret_file = \"/etc/lunbridge/NAME.secret\" (mode 600) or chap_secret_credential = \"NAME\" (LoadCredential=)"
      )
    }
    if user == nil, chapSecret {
      let key = chapSecretFile != nil ? "chap_secret_file" : "chap_secret_credential"
      throw error(key, "key '\(key)' needs chap_user")
    }
    if mutualUser != nil, !mutualSecret {
      throw error("mutual_user", "key 'mutual_user' needs mutual_secret_file or mutual_secret_credential")
    }
    if mutualSecret, mutualUser == nil {
      let key = mutualSecretFile != nil ? "mutual_secret_file" : "mutual_secret_credential"
      throw error(key, "key '\(key)' needs mutual_user")
    }
    if mutualUser != nil, user == nil {
      throw error("mutual_user", "mutual CHAP (key 'mutual_user') needs chap_user as well")
    }
  }

  /// The known key closest to `key` by edit distance (after '-' → '_'), if close enough.
  public static func closestKey(to key: String) -> String? {
    let k = key.lowercased().replacing("-", with: "_")
    if let alias = aliases[k] { return alias }
    var best: (key: String, distance: Int)?
    for candidate in knownKeys {
      let d = editDistance(k, candidate)
      if best == nil || d < best!.distance { best = (candidate, d) }
    }
    guard let best, best.distance <= max(2, k.count / 3) else { return nil }
    return best.key
  }

  /// Optimal string alignment distance: insertions, deletions, substitutions and
  /// transpositions of neighbours ("tiemout" is one typo from "timeout").
  static func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a)
    let b = Array(b)
    var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
    for i in 0...a.count { d[i][0] = i }
    for j in 0...b.count { d[0][j] = j }
    for i in stride(from: 1, through: a.count, by: 1) {
      for j in stride(from: 1, through: b.count, by: 1) {
        let cost = a[i - 1] == b[j - 1] ? 0 : 1
        d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
        if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
          d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
        }
      }
    }
    return d[a.count][b.count]
  }

  // MARK: effective settings

  /// What a volume uses where its file says nothing (attach and serve take these too).
  public enum Defaults {
    public static let keepaliveInterval = 2
    public static let keepaliveTimeout = 2
    public static let commandTimeout = 30
    public static let noPathRetry = 60
    public static let aluaCheckInterval = 10
    public static let sessionsPerPath = 1
    public static let failback = "immediate"
  }

  /// Every key with the value in effect (the file's, else the default), and the setting of
  /// open-iscsi, multipath-tools or nbd-client it corresponds to: what `lunbridge config
  /// show` prints. `initiator` is the name in effect when the file names none;
  /// `processors` the default number of NBD connections.
  /// A nil value: not set, and nothing in its place.
  public func effectiveSettings(initiator: String, processors: Int) -> [(key: String, value: String?, counterpart: String)] {
    func list(_ items: [String]) -> String { "[" + items.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
    func quoted(_ s: String?) -> String? { s.map { "\"\($0)\"" } }
    func algorithm(_ a: CHAPAlgorithm) -> String {
      switch a {
      case .md5: return "md5"
      case .sha1: return "sha1"
      case .sha256: return "sha256"
      }
    }
    return [
      ("paths", list(paths.map(\.description)), "iscsiadm -m node -T TARGET -p PORTAL (one node record per path)"),
      (
        "startup", quoted(startup.rawValue),
        "node.startup (automatic: started at boot by lunbridge's generator; onboot: attached by the initramfs, for the root filesystem)"
      ),
      ("initiator_name", quoted(initiatorName ?? initiator), "InitiatorName in /etc/iscsi/initiatorname.iscsi"),
      ("chap_user", quoted(chapUser), "node.session.auth.username"),
      ("chap_secret_file", quoted(chapSecretFile), "node.session.auth.password (here a file, mode 600)"),
      ("mutual_user", quoted(mutualUser), "node.session.auth.username_in"),
      ("mutual_secret_file", quoted(mutualSecretFile), "node.session.auth.password_in"),
      ("chap_secret_credential", quoted(chapSecretCredential), "(none: a systemd credential, LoadCredential=NAME:FILE)"),
      ("mutual_secret_credential", quoted(mutualSecretCredential), "(none: a systemd credential, LoadCredential=NAME:FILE)"),
      ("chap_algorithms", list(chapAlgorithms.map(algorithm)), "node.session.auth.chap_algs"),
      ("header_digest", list(headerDigest.map { $0.rawValue.lowercased() }), "node.conn[0].iscsi.HeaderDigest"),
      ("data_digest", list(dataDigest.map { $0.rawValue.lowercased() }), "node.conn[0].iscsi.DataDigest"),
      ("login_timeout", "\(loginTimeout)", "node.conn[0].timeo.login_timeout"),
      ("keepalive_interval", "\(keepaliveInterval ?? Defaults.keepaliveInterval)", "node.conn[0].timeo.noop_out_interval"),
      ("keepalive_timeout", "\(keepaliveTimeout ?? Defaults.keepaliveTimeout)", "node.conn[0].timeo.noop_out_timeout"),
      ("command_timeout", "\(commandTimeout ?? Defaults.commandTimeout)", "the SCSI disk's /sys/block/sdX/device/timeout"),
      ("sessions_per_path", "\(sessionsPerPath ?? Defaults.sessionsPerPath)", "node.session.nr_sessions"),
      ("policy", quoted(policy.rawValue), "multipath.conf path_selector (and path_grouping_policy)"),
      ("failback", quoted(failback ?? Defaults.failback), "multipath.conf failback"),
      ("no_path_retry", "\(noPathRetry ?? Defaults.noPathRetry)", "multipath.conf no_path_retry (here seconds, not checks)"),
      (
        "alua_check_interval", "\(aluaCheckInterval ?? Defaults.aluaCheckInterval)",
        "multipath.conf polling_interval (for ALUA states)"
      ),
      ("reservation_key", quoted(reservationKey), "multipath.conf reservation_key"),
      ("device", quoted(device.map { "/dev/nbd\($0)" }), "nbd-client's device argument (not set: the first free one)"),
      ("connections", "\(connections ?? processors)", "nbd-client -connections"),
      ("timeout", "\(timeout)", "nbd-client -timeout"),
      ("dead_conn_timeout", "\(deadConnTimeout)", "the nbd driver's dead_conn_timeout (NBD_ATTR_DEAD_CONN_TIMEOUT)"),
      ("read_only", "\(readOnly)", "nbd-client -readonly"),
      ("metrics", quoted(metrics), "(none: a Prometheus endpoint, tcp:[HOST:]PORT)"),
    ]
  }

  // MARK: summary

  /// The settings in effect, one `key = value` a line (secret file paths, never secrets).
  public var summary: String {
    func list(_ items: [String]) -> String { "[" + items.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
    var out: [String] = []
    out.append("paths = " + list(paths.map(\.description)))
    if let initiatorName { out.append("initiator_name = \"\(initiatorName)\"") }
    if let chapUser { out.append("chap_user = \"\(chapUser)\"") }
    if let chapSecretFile { out.append("chap_secret_file = \"\(chapSecretFile)\"") }
    if let mutualUser { out.append("mutual_user = \"\(mutualUser)\"") }
    if let mutualSecretFile { out.append("mutual_secret_file = \"\(mutualSecretFile)\"") }
    if let chapSecretCredential { out.append("chap_secret_credential = \"\(chapSecretCredential)\"") }
    if let mutualSecretCredential { out.append("mutual_secret_credential = \"\(mutualSecretCredential)\"") }
    if startup != .manual { out.append("startup = \"\(startup.rawValue)\"") }
    out.append("chap_algorithms = " + list(chapAlgorithms.map { "\($0)".lowercased() }))
    out.append("header_digest = " + list(headerDigest.map { $0.rawValue.lowercased() }))
    out.append("data_digest = " + list(dataDigest.map { $0.rawValue.lowercased() }))
    out.append("policy = \"\(policy.rawValue)\"")
    if let keepaliveInterval { out.append("keepalive_interval = \(keepaliveInterval)") }
    if let keepaliveTimeout { out.append("keepalive_timeout = \(keepaliveTimeout)") }
    out.append("login_timeout = \(loginTimeout)")
    out.append("timeout = \(timeout)")
    out.append("dead_conn_timeout = \(deadConnTimeout)")
    if let noPathRetry { out.append("no_path_retry = \(noPathRetry)") }
    if let aluaCheckInterval { out.append("alua_check_interval = \(aluaCheckInterval)") }
    if let reservationKey { out.append("reservation_key = \"\(reservationKey)\"") }
    if let device { out.append("device = \"/dev/nbd\(device)\"") }
    out.append("read_only = \(readOnly)")
    if let connections { out.append("connections = \(connections)") }
    return out.joined(separator: "\n")
  }
}

/// Turns TOML values into settings, with errors that name the file, line and key.
private struct Decoder {
  var file: String

  func error(_ kind: VolumeConfigError.Kind, _ entry: TOMLEntry, _ message: String, line: Int? = nil)
    -> VolumeConfigError
  {
    VolumeConfigError(kind, file: file, line: line ?? entry.line, key: entry.key, message: message)
  }

  func wrongType(_ entry: TOMLEntry, _ expected: String, got node: TOMLNode? = nil) -> VolumeConfigError {
    let n = node ?? entry.node
    return error(.wrongType, entry, "key '\(entry.key)' must be \(expected), got \(n.value.typeName)", line: n.line)
  }

  func string(_ entry: TOMLEntry) throws -> String {
    guard case .string(let s) = entry.node.value else { throw wrongType(entry, "a string") }
    return s
  }

  func nonEmptyString(_ entry: TOMLEntry) throws -> String {
    let s = try string(entry)
    guard !s.isEmpty else { throw error(.invalidValue, entry, "key '\(entry.key)' must not be empty") }
    return s
  }

  func absolutePath(_ entry: TOMLEntry) throws -> String {
    let s = try nonEmptyString(entry)
    guard s.hasPrefix("/") else {
      throw error(.invalidValue, entry, "key '\(entry.key)' must be an absolute path, got '\(s)'")
    }
    return s
  }

  /// A systemd credential name: a file name in $CREDENTIALS_DIRECTORY.
  func credentialName(_ entry: TOMLEntry) throws -> String {
    let s = try nonEmptyString(entry)
    guard !s.contains("/"), s != ".", s != "..", s.count <= 255 else {
      throw error(
        .invalidValue, entry, "key '\(entry.key)' must be a credential name (LoadCredential=NAME:FILE), not a path; got '\(s)'")
    }
    return s
  }

  func boolean(_ entry: TOMLEntry) throws -> Bool {
    guard case .boolean(let b) = entry.node.value else { throw wrongType(entry, "a boolean (true or false)") }
    return b
  }

  func integer(_ entry: TOMLEntry, what: String) throws -> Int64 {
    guard case .integer(let n) = entry.node.value else { throw wrongType(entry, what) }
    return n
  }

  func seconds(_ entry: TOMLEntry, min: Int64) throws -> Int {
    let n = try integer(entry, what: "an integer (seconds)")
    guard n >= min, n <= 86_400 * 365 else {
      throw error(
        .invalidValue, entry,
        "key '\(entry.key)' must be \(min == 0 ? "0 or more" : "at least \(min)") seconds (and at most a year), got \(n)")
    }
    return Int(n)
  }

  /// An array of strings, or one string (comma-separated, like the command line).
  func strings(_ entry: TOMLEntry, expected: String) throws -> [(String, Int)] {
    switch entry.node.value {
    case .string(let s):
      return s.split(separator: ",").map { ($0.trimmingWhitespace(), entry.line) }
    case .array(let items):
      return try items.map {
        guard case .string(let s) = $0.value else {
          throw error(
            .wrongType, entry, "key '\(entry.key)' must be \(expected), got an array holding \($0.value.typeName)",
            line: $0.line)
        }
        return (s, $0.line)
      }
    default:
      throw wrongType(entry, expected)
    }
  }

  func list<T>(_ entry: TOMLEntry, of what: String, allowed: String, _ convert: (String) -> T?) throws -> [T] {
    let items = try strings(entry, expected: "a string or an array of strings (\(what): \(allowed))")
    guard !items.isEmpty else { throw error(.invalidValue, entry, "key '\(entry.key)' is empty (use \(allowed))") }
    return try items.map { item, line in
      guard let v = convert(item) else {
        throw error(.invalidValue, entry, "key '\(entry.key)': unknown value '\(item)' (use \(allowed))", line: line)
      }
      return v
    }
  }

  func urls(_ entry: TOMLEntry) throws -> [ISCSIURL] {
    guard case .array(let items) = entry.node.value else {
      if case .string(let s) = entry.node.value {
        throw error(
          .wrongType, entry, "key 'paths' must be an array of iscsi:// URLs, got a string: write paths = [\"\(s)\"]")
      }
      throw wrongType(entry, "an array of iscsi:// URLs")
    }
    guard !items.isEmpty else {
      throw error(.invalidValue, entry, "key 'paths' is empty: give at least one iscsi://HOST[:PORT]/TARGET-IQN/LUN")
    }
    var urls: [ISCSIURL] = []
    var seen: [String: Int] = [:]
    for item in items {
      guard case .string(let s) = item.value else {
        throw error(
          .wrongType, entry, "key 'paths' must be an array of iscsi:// URLs, got an array holding \(item.value.typeName)",
          line: item.line)
      }
      let url: ISCSIURL
      do {
        url = try ISCSIURL(parsing: s)
      } catch {
        // ISCSIURLError quotes the text without its password.
        throw self.error(.badURL, entry, "key 'paths': \(error)", line: item.line)
      }
      if url.passwordInURL {
        throw error(
          .badURL, entry,
          "key 'paths': \(url) carries a CHAP secret in the URL; remove it and use chap_secret_file (mode 600)",
          line: item.line)
      }
      switch PathURLProblem.check(url, first: urls.first) {
      case .badParameter(let m)?: throw error(.badURL, entry, "key 'paths': \(m)", line: item.line)
      case .otherLogicalUnit(let m)?: throw error(.invalidValue, entry, "key 'paths': \(m)", line: item.line)
      case nil: break
      }
      if let first = seen[url.description] {
        throw error(.invalidValue, entry, "key 'paths': \(url) is listed twice (first on line \(first))", line: item.line)
      }
      seen[url.description] = item.line
      urls.append(url)
    }
    return urls
  }

  func device(_ entry: TOMLEntry) throws -> UInt32 {
    switch entry.node.value {
    case .integer(let n):
      guard n >= 0, n <= Int64(UInt32.max) else {
        throw error(.invalidValue, entry, "key 'device' must be 0 or more, got \(n)")
      }
      return UInt32(n)
    case .string(let s):
      let digits = s.hasPrefix("/dev/nbd") ? String(s.dropFirst("/dev/nbd".count)) : s
      guard let n = UInt32(digits), digits.allSatisfy(\.isASCII) else {
        throw error(.invalidValue, entry, "key 'device' must be /dev/nbdN or N, got '\(s)'")
      }
      return n
    default:
      throw wrongType(entry, "an NBD device (\"/dev/nbdN\" or an index)")
    }
  }
}
