import FoundationEssentials
import Glibc
import Logging

/// One line per event through `LogOutput`: on stderr under systemd (stderr is the
/// journal) each line starts with the syslog priority in angle brackets, which journald
/// takes as the priority; elsewhere it starts with a timestamp and the level. In the
/// background, or once stderr is gone, lines go to syslog or `--log-file`. Secrets never
/// reach a logger.
public struct StderrLogHandler: LogHandler {
  public var logLevel: Logger.Level
  public var metadata: Logger.Metadata = [:]
  let label: String

  public init(label: String, level: Logger.Level) {
    self.label = label
    self.logLevel = level
  }

  public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
    get { metadata[key] }
    set { metadata[key] = newValue }
  }

  /// syslog priorities (RFC 5424 severity) for journald's `<N>` prefix.
  static func priority(_ level: Logger.Level) -> Int {
    switch level {
    case .trace, .debug: return 7
    case .info: return 6
    case .notice: return 5
    case .warning: return 4
    case .error: return 3
    case .critical: return 2
    }
  }

  public func log(event: LogEvent) {
    var all = metadata
    if let extra = event.metadata { all.merge(extra) { $1 } }
    let fields = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
    let text = fields.isEmpty ? "\(event.message)" : "\(event.message) (\(fields))"
    // Never fatal: a closed pipe or terminal makes LogOutput switch to syslog or nothing.
    LogOutput.log(text, level: "\(event.level)", label: label, priority: Int32(Self.priority(event.level)))
  }

  static func timestamp(_ date: Date) -> String {
    date.formatted(.iso8601)
  }
}
