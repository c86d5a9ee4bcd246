import FoundationEssentials
import Glibc
import ISCSIProtocol

/// Where the initiator's IQN comes from when `--initiator-name` is not given: open-iscsi's
/// file when present (so targets' ACLs written for open-iscsi keep working), else our own,
/// generated once and kept.
public enum InitiatorName {
  public static let openISCSIFile = "/etc/iscsi/initiatorname.iscsi"
  public static let lunbridgeFile = "/etc/lunbridge/initiatorname"

  /// Reads `InitiatorName=...` (open-iscsi format; comments with '#').
  public static func parse(_ text: String) -> String? {
    for line in text.split(whereSeparator: \.isNewline) {
      let t = line.trimmingWhitespace()
      guard !t.hasPrefix("#"), t.hasPrefix("InitiatorName=") else { continue }
      let v = t.dropFirst("InitiatorName=".count).trimmingWhitespace()
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
      let dir = FilePath.directory(lunbridgePath)
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
/// CHAP secret files. A secret file is opened without following a symbolic link and
/// checked on the open descriptor (no race between the check and the read): a regular
/// file, owned by root or by the user running lunbridge, not readable or writable by group
/// or others, at most `maximumSize` bytes. Once a secret is loaded the process is marked
/// not dumpable, so no core dump (and no unprivileged ptrace) can expose it.
public enum SecretFile {
  /// CHAP secrets are at most a few hundred bytes (RFC 7143 section 12.1.3 allows up to
  /// 1024 hex digits of CHAP_C); anything larger is not a secret file.
  public static let maximumSize = 4096

  public static func read(_ path: String) throws -> [UInt8] {
    let bytes = try load(path)
    _ = linuxPrctl(4)  // PR_SET_DUMPABLE (<linux/prctl.h>) = 4, value 0
    return bytes
  }

  /// The secret, or an error whose text says what is wrong with the file and how to fix it.
  public static func load(_ path: String) throws -> [UInt8] {
    func invalid(_ text: String) -> ISCSIError { ISCSIErrorBridge.invalid("secret file \(path) \(text)") }
    let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
    guard fd >= 0 else {
      switch errno {
      case ENOENT: throw invalid("does not exist")
      case ELOOP: throw invalid("is a symbolic link; name the file itself")
      case EACCES: throw invalid("is not readable by this user")
      default: throw invalid("cannot be opened (\(String(cString: strerror(errno))))")
      }
    }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw invalid("cannot be examined (\(String(cString: strerror(errno))))") }
    guard st.st_mode & S_IFMT == S_IFREG else { throw invalid("is not a regular file") }
    guard st.st_uid == 0 || st.st_uid == geteuid() else {
      throw invalid("is owned by uid \(st.st_uid), not by root or this user; run chown root \(path)")
    }
    let mode = Int(st.st_mode & 0o777)
    guard mode & 0o077 == 0 else {
      throw invalid("is readable by group or others (mode \(String(mode, radix: 8))); run chmod 600 \(path)")
    }
    guard st.st_size <= maximumSize else {
      throw invalid("is \(st.st_size) bytes; a CHAP secret file holds at most \(maximumSize)")
    }
    var buffer = [UInt8](repeating: 0, count: maximumSize + 1)
    var count = 0
    while count < buffer.count {
      let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + count, $0.count - count) }
      if n < 0 && errno == EINTR { continue }
      guard n >= 0 else { throw invalid("cannot be read (\(String(cString: strerror(errno))))") }
      if n == 0 { break }
      count += n
    }
    guard count <= maximumSize else { throw invalid("grew past \(maximumSize) bytes while being read") }
    var bytes = Array(buffer[..<count])
    for i in buffer.indices { buffer[i] = 0 }
    while let last = bytes.last, last == 0x0a || last == 0x0d { bytes.removeLast() }
    guard !bytes.isEmpty else { throw invalid("is empty") }
    return bytes
  }
}

enum ISCSIErrorBridge {
  static func invalid(_ message: String) -> ISCSIError { ISCSIError(.invalidArgument, message) }
}

/// prctl(2), looked up at run time: <sys/prctl.h> is not in Swift's Glibc module, and the
/// call is variadic in C. Returns -1 with errno ENOSYS when it cannot be found.
public func linuxPrctl(_ option: Int32, _ arg2: UInt = 0, _ arg3: UInt = 0, _ arg4: UInt = 0, _ arg5: UInt = 0)
  -> Int32
{
  typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
  guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "prctl") else {
    errno = ENOSYS
    return -1
  }
  return unsafeBitCast(symbol, to: Prctl.self)(option, arg2, arg3, arg4, arg5)
}
