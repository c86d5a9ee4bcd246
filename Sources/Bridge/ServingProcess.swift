import FoundationEssentials
import Glibc
import ISCSIInitiator
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// What a process that serves a block device does for itself at start (`attach`, `serve`).
public enum ServingProcess {
  /// For every command: a write to a closed pipe or socket returns EPIPE instead of
  /// killing the process (a client that goes away, a log reader that exits).
  public static func ignoreSIGPIPE() {
    signal(SIGPIPE, SIG_IGN)
  }

  /// Raises the soft limit on open descriptors to the hard limit: the export's connection
  /// cap then leaves a large reserve for the iSCSI paths, the control socket and metrics.
  /// Returns the new soft limit.
  @discardableResult
  public static func raiseDescriptorLimit() -> UInt64 {
    var limit = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
    if limit.rlim_cur < limit.rlim_max {
      var raised = limit
      raised.rlim_cur = limit.rlim_max
      if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { return UInt64(raised.rlim_cur) }
    }
    return UInt64(limit.rlim_cur)
  }

  /// Keeps the process able to serve while the kernel reclaims memory by writing to the
  /// very device it serves (the classic NBD deadlock):
  /// - mlockall: its pages are never paged out, so serving a request never waits for a
  ///   page-in (MCL_ONFAULT where the kernel has it: pages are locked as they are used,
  ///   not all reserved address space at once, so the resident size stays what it was);
  /// - PR_SET_IO_FLUSHER (Linux 5.6): allocations it makes while serving do not recurse
  ///   into I/O on the filesystems it serves.
  /// Memory is locked only with CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK: with a small
  /// limit a later allocation past it would fail. Returns what was done, for the log.
  public static func protectFromMemoryPressure(logger: Logger) {
    var done: [String] = []
    if canLockAllMemory() {
      // MCL_CURRENT 1, MCL_FUTURE 2, MCL_ONFAULT 4 (<sys/mman.h>).
      if mlockall(1 | 2 | 4) == 0 || (errno == EINVAL && mlockall(1 | 2) == 0) {
        done.append("memory locked")
      } else {
        logger.notice("could not lock memory (mlockall: \(String(cString: strerror(errno))))")
      }
    } else {
      logger.notice(
        "memory not locked: no CAP_IPC_LOCK and a limited RLIMIT_MEMLOCK (run as root, or LimitMEMLOCK=infinity)")
    }
    // PR_SET_IO_FLUSHER = 57 (<linux/prctl.h>); needs CAP_SYS_RESOURCE.
    if linuxPrctl(57, 1) == 0 {
      done.append("PR_SET_IO_FLUSHER")
    } else {
      logger.info("PR_SET_IO_FLUSHER not set: \(String(cString: strerror(errno)))")
    }
    if !done.isEmpty { logger.info("protected from memory pressure: \(done.joined(separator: ", "))") }
  }

  static func canLockAllMemory() -> Bool {
    var limit = rlimit()
    let memlock = __rlimit_resource_t(8)  // RLIMIT_MEMLOCK (<bits/resource.h>)
    if getrlimit(memlock, &limit) == 0, limit.rlim_cur == rlim_t.max { return true }  // RLIM_INFINITY
    return hasCapability(14)  // CAP_IPC_LOCK
  }

  /// Whether bit `cap` is set in the effective capability set (/proc/self/status CapEff).
  static func hasCapability(_ cap: Int) -> Bool {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
      let line = text.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
      let value = UInt64(line.dropFirst("CapEff:".count).trimmingWhitespace(), radix: 16)
    else { return false }
    return value & (1 << UInt64(cap)) != 0
  }
}
