import FoundationEssentials
import Glibc

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (a path, or an
/// abstract socket when it starts with '@'). Does nothing outside systemd.
public enum SystemdNotify {
  @discardableResult
  public static func send(_ state: String) -> Bool {
    guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty else { return false }
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    var bytes = Array(path.utf8)
    if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
      for (i, b) in bytes.enumerated() { raw[i] = b }
    }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
    let message = Array(state.utf8)
    let sent = withUnsafePointer(to: &addr) { p in
      p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
        message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, length) }
      }
    }
    return sent == message.count
  }

  /// journald reads a `<N>` prefix on each stderr line as the priority when stderr is the
  /// journal (JOURNAL_STREAM is set).
  public static var underJournal: Bool { ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil }
}
