import FoundationEssentials
import Glibc
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
import NIOConcurrencyHelpers
#endif

/// Where log lines and messages for the user go, for the whole process. A serving process
/// can outlive the terminal or pipe it was started from: a write that fails (a closed
/// pipe, a hung-up terminal) is never fatal; the process then stops writing there, points
/// the descriptor at /dev/null and logs to syslog (the journal) when there is one.
public enum LogOutput {
  public enum Destination: Equatable, Sendable {
    /// Standard error; `journal` when it is connected to journald (`<N>` prefixes).
    case standardError(journal: Bool)
    /// syslog(3): journald or a syslog daemon through /dev/log.
    case syslog
    /// A file of the user's (`--log-file`), appended to.
    case file(Int32)
    /// The kernel log (/dev/kmsg, opened once): a root-volume process in the initramfs,
    /// which has no journal yet and keeps no path to one after switch_root. journald
    /// imports these lines (`journalctl -t lunbridge`); dmesg and the console show them.
    case kernelLog(Int32)
    /// Nowhere (no terminal, no journal, no file).
    case discard
  }

  private struct State: Sendable {
    var current: Destination
    var syslogOpen = false
  }
  /// The lock also keeps lines whole: every write to a destination is made under it.
  private static let state = NIOLockedValueBox(State(current: .standardError(journal: SystemdNotify.underJournal)))

  public static var destination: Destination { state.withLockedValue { $0.current } }

  /// Sends later lines to `path` (created 0640 if missing, appended to). Throws when the
  /// file cannot be opened, so `--log-file` mistakes show at once.
  public static func useFile(_ path: String) throws {
    let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0o640)
    guard fd >= 0 else {
      throw BridgeError(.system, "cannot open log file \(path): \(String(cString: strerror(errno)).lowercased())")
    }
    state.withLockedValue { $0.current = .file(fd) }
  }

  /// Sends later lines to the kernel log (see `Destination.kernelLog`); false when
  /// /dev/kmsg cannot be opened (lines keep their destination).
  @discardableResult
  public static func useKernelLog() -> Bool {
    let fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC | O_NOCTTY)
    guard fd >= 0 else { return false }
    state.withLockedValue { $0.current = .kernelLog(fd) }
    return true
  }

  /// One /dev/kmsg record: `<facility*8+priority>lunbridge[PID]: text` (the kernel keeps
  /// lines of up to 1 KiB).
  static func kernelLogLine(_ text: String, priority: Int32, pid: Int32 = getpid()) -> String {
    let line = "<\(LOG_DAEMON + priority)>lunbridge[\(pid)]: \(text)"
    return String(line.prefix(1000)) + "\n"
  }

  /// The process has gone to the background: its standard descriptors point at /dev/null
  /// (the terminal or pipe it came from may go away), and lines go to a log file if one
  /// was given, else to syslog when there is one, else nowhere.
  public static func detachFromTerminal() {
    let devnull = open("/dev/null", O_RDWR | O_CLOEXEC)
    if devnull >= 0 {
      dup2(devnull, STDIN_FILENO)
      dup2(devnull, STDOUT_FILENO)
      dup2(devnull, STDERR_FILENO)
      close(devnull)
    }
    state.withLockedValue { state in
      if case .file = state.current { return }
      if case .kernelLog = state.current { return }
      state.current = fallback()
    }
  }

  /// syslog when /dev/log exists (journald or rsyslog), else nothing.
  private static func fallback() -> Destination {
    access("/dev/log", W_OK) == 0 ? .syslog : .discard
  }

  /// Logs one event: `text` (message and fields), its level's name, the logger's label
  /// and the syslog priority (0-7). Each destination gets its own form: `<N>text` for the
  /// journal, a timestamped line for a terminal, a pipe or a file, the text for syslog.
  public static func log(_ text: String, level: String, label: String, priority: Int32) {
    state.withLockedValue { state in write(text, level: level, label: label, priority: priority, state: &state) }
  }

  private static func write(_ text: String, level: String, label: String, priority: Int32, state: inout State) {
    if case .standardError(let journal) = state.current {
      let line = journal ? "<\(priority)>\(text)\n" : stamped(text, level: level, label: label)
      guard !writeAll(STDERR_FILENO, line) else { return }
      // A full non-blocking pipe: this line is lost, the reader may still catch up.
      if errno == EAGAIN { return }
      // The reader is gone: never write there again, and keep logging somewhere.
      let devnull = open("/dev/null", O_WRONLY | O_CLOEXEC)
      if devnull >= 0 {
        dup2(devnull, STDERR_FILENO)
        close(devnull)
      }
      state.current = fallback()
    }
    switch state.current {
    case .standardError: break
    case .file(let fd):
      if !writeAll(fd, stamped(text, level: level, label: label)), errno != EAGAIN { state.current = fallback() }
    case .syslog:
      if !state.syslogOpen {
        openlog("lunbridge", LOG_PID | LOG_NDELAY, LOG_DAEMON)
        state.syslogOpen = true
      }
      text.withCString { line in withVaList([line]) { vsyslog(priority, "%s", $0) } }
    case .kernelLog(let fd):
      // EAGAIN/EINVAL: the kernel's rate limit or a record it refuses; the next may pass.
      _ = writeAll(fd, kernelLogLine(text, priority: priority))
    case .discard:
      break
    }
  }

  static func stamped(_ text: String, level: String, label: String) -> String {
    "\(StderrLogHandler.timestamp(Date())) \(level) \(label): \(text)\n"
  }

  /// A message for the user on standard error (`lunbridge: error: ...`), never fatal.
  public static func writeStandardError(_ text: String) {
    state.withLockedValue { _ in _ = writeAll(STDERR_FILENO, text) }
  }

  /// write(2) until done; false on an error (EPIPE, EIO, EBADF, ...), retrying EINTR.
  @discardableResult
  static func writeAll(_ fd: Int32, _ text: String) -> Bool {
    var bytes = Array(text.utf8)
    var done = 0
    while done < bytes.count {
      let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
      if n < 0 {
        if errno == EINTR { continue }
        return false
      }
      done += n
    }
    return true
  }
}
