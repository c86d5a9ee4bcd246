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

  /// For every command, before any other thread runs: one malloc arena for all threads.
  /// glibc gives each thread that allocates an arena of its own (up to 8 per core), and
  /// returns such an arena's free pages with MADV_DONTNEED, which the kernel refuses on
  /// locked memory (`protectFromMemoryPressure`): under load the event loop's arena kept
  /// its peak for good, about 1 MB of the serving process's peak RSS. The main heap shrinks
  /// with brk, which locked memory allows. One thread does the I/O, so the arena's lock is
  /// not contended.
  public static func useOneMallocArena() {
    _ = glibcMallopt(-8, 1)  // M_ARENA_MAX (<malloc.h>)
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
  /// limit a later allocation past it would fail. Logs what was done; returns whether
  /// memory is locked (for `releaseStartupCode`).
  @discardableResult
  public static func protectFromMemoryPressure(logger: Logger) -> Bool {
    var done: [String] = []
    var locked = false
    if canLockAllMemory() {
      // MCL_CURRENT 1, MCL_FUTURE 2, MCL_ONFAULT 4 (<sys/mman.h>).
      if mlockall(1 | 2 | 4) == 0 || (errno == EINVAL && mlockall(1 | 2) == 0) {
        locked = true
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
    return locked
  }

  /// What `attach` and `serve` do before logging in: the descriptor limit raised, memory
  /// protected, and the pages the loader and argument parsing touched released (the rest of
  /// the start-up is released once serving). Returns whether memory is locked.
  public static func prepare(logger: Logger) -> Bool {
    raiseDescriptorLimit()
    let locked = protectFromMemoryPressure(logger: logger)
    releaseStartupCode(locked: locked, logger: logger)
    return locked
  }

  /// Called before login (`prepare`) and again once the device is served: unmaps the pages
  /// of the executable's code and read-only data that were touched while starting (the
  /// dynamic loader's symbol tables and relocations, argument parsing, configuration,
  /// discovery, login, the kernel handshake), so the resident size is what serving uses.
  /// Code that runs again later (a reconnect, a reload) maps its pages back from the page
  /// cache when it runs, and they are locked again as they are (when `locked`).
  ///
  /// Only mappings with no private copies are released: the relocated read-only data
  /// (RELRO) is a private copy of the file's bytes, and dropping it would bring back the
  /// file's unrelocated ones.
  ///
  /// Not done when re-reading the executable could need the device this process serves:
  /// when it lives on an NBD device, on a device built on one (device-mapper, md,
  /// partitions), on a loop device, or on a filesystem whose device cannot be told
  /// (btrfs, overlayfs, NFS...). An executable in tmpfs or ramfs (the initramfs) is
  /// always in memory and is released.
  public static func releaseStartupCode(locked: Bool, logger: Logger) {
    guard let executable = rereadableExecutable else {
      logger.debug("start-up code kept resident: the executable's filesystem may depend on a device this process serves")
      return
    }
    guard let smaps = try? String(contentsOfFile: "/proc/self/smaps", encoding: .utf8) else { return }
    var released = 0
    for range in releasableRanges(smaps: smaps, device: executable.device, inode: executable.inode) {
      let start = UnsafeMutableRawPointer(bitPattern: range.lowerBound)
      let length = Int(range.upperBound - range.lowerBound)
      _ = munlock(start, length)  // MADV_DONTNEED refuses locked pages
      if madvise(start, length, 4) == 0 { released += length }  // MADV_DONTNEED
      if locked { _ = glibcMlock2(start, length, 1) }  // MLOCK_ONFAULT: locked again as used
    }
    if released > 0 { logger.debug("released the executable's start-up pages (\(released >> 20) MiB mapped)") }
  }

  /// The executable's device and inode when it can be read back from its file without the
  /// devices this process serves, nil when it cannot (or cannot be told). Decided once: the
  /// executable's file and the devices its filesystem is built on stay while it runs.
  private static let rereadableExecutable: (device: UInt, inode: UInt64)? = {
    var st = stat()
    guard stat("/proc/self/exe", &st) == 0 else { return nil }
    let mountinfo = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
    let type = filesystemType(device: st.st_dev, mountinfo: mountinfo)
    guard executableCanBeReread(filesystemType: type, device: st.st_dev) else { return nil }
    return (st.st_dev, UInt64(st.st_ino))
  }()

  /// The executable's own mappings (by device and inode) that can be dropped and read back
  /// from its file: read-only (code `r-xp`, data `r--p`) with no anonymous pages, from a
  /// /proc/PID/smaps text. Matched by inode, not path, so an executable replaced on disk
  /// while running (" (deleted)") is still found. A mapping whose `Anonymous:` line is
  /// missing is kept.
  static func releasableRanges(smaps: String, device: UInt, inode: UInt64) -> [Range<UInt>] {
    let (major, minor) = deviceNumbers(device)
    var ranges: [Range<UInt>] = []
    var candidate: Range<UInt>?
    for line in smaps.split(separator: "\n") {
      let f = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
      guard let first = f.first else { continue }
      if first == "Anonymous:" {
        if let c = candidate, f.count >= 2, f[1] == "0" { ranges.append(c) }
        candidate = nil
        continue
      }
      guard !first.hasSuffix(":"), f.count >= 5, first.contains("-") else { continue }
      candidate = nil
      guard f[1] == "r-xp" || f[1] == "r--p", UInt64(f[4]) == inode else { continue }
      let dev = f[3].split(separator: ":")
      guard dev.count == 2, UInt(dev[0], radix: 16) == major, UInt(dev[1], radix: 16) == minor else { continue }
      let bounds = first.split(separator: "-")
      guard bounds.count == 2, let lo = UInt(bounds[0], radix: 16), let hi = UInt(bounds[1], radix: 16), lo < hi
      else { continue }
      candidate = lo..<hi
    }
    return ranges
  }

  /// Whether a file on this filesystem can be read back without the devices this process
  /// serves: in memory (tmpfs, ramfs), or on a block device with no NBD device under it.
  static func executableCanBeReread(filesystemType: String?, device: UInt, sysDevBlock: String = "/sys/dev/block")
    -> Bool
  {
    // The initramfs is "rootfs" (a ramfs or tmpfs).
    if let t = filesystemType, ["tmpfs", "ramfs", "rootfs"].contains(t) { return true }
    let (major, minor) = deviceNumbers(device)
    guard major != 0 else { return false }  // no block device of its own: cannot tell
    return !blockDeviceDependsOnNBD("\(sysDevBlock)/\(major):\(minor)", depth: 0)
  }

  /// Whether the block device at this sysfs directory is an NBD or loop device, or is built
  /// on one (its partition parent, device-mapper or md slaves, recursively). An unreadable
  /// directory counts as depending on one.
  static func blockDeviceDependsOnNBD(_ directory: String, depth: Int) -> Bool {
    guard depth < 16, let resolved = resolvedPath(directory) else { return true }
    let name = resolved.split(separator: "/").last.map(String.init) ?? ""
    if name.hasPrefix("nbd") || name.hasPrefix("loop") { return true }
    if access("\(resolved)/partition", F_OK) == 0 {
      let parent = String(resolved[..<(resolved.lastIndex(of: "/") ?? resolved.endIndex)])
      if blockDeviceDependsOnNBD(parent, depth: depth + 1) { return true }
    }
    for slave in directoryEntries("\(resolved)/slaves")
    where blockDeviceDependsOnNBD("\(resolved)/slaves/\(slave)", depth: depth + 1) {
      return true
    }
    return false
  }

  /// The type of the filesystem mounted from this device, from a /proc/PID/mountinfo text
  /// (`ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [TAGS...] - TYPE SOURCE OPTIONS`).
  static func filesystemType(device: UInt, mountinfo: String) -> String? {
    let (major, minor) = deviceNumbers(device)
    for line in mountinfo.split(separator: "\n") {
      let f = line.split(separator: " ", omittingEmptySubsequences: true)
      guard f.count > 3, f[2] == "\(major):\(minor)", let dash = f.firstIndex(of: "-"), dash + 1 < f.count
      else { continue }
      return String(f[dash + 1])
    }
    return nil
  }

  /// glibc's gnu_dev_major and gnu_dev_minor.
  static func deviceNumbers(_ device: UInt) -> (major: UInt, minor: UInt) {
    ((device >> 8) & 0xfff | (device >> 32) & ~UInt(0xfff), device & 0xff | (device >> 12) & ~UInt(0xff))
  }

  static func resolvedPath(_ path: String) -> String? {
    guard let p = realpath(path, nil) else { return nil }
    defer { free(p) }
    return String(cString: p)
  }

  static func directoryEntries(_ path: String) -> [String] {
    guard let dir = opendir(path) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
      }
      if name != "." && name != ".." { names.append(name) }
    }
    return names
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

// Not in Swift's Glibc module.
@_silgen_name("mlock2") private func glibcMlock2(_ address: UnsafeRawPointer?, _ length: Int, _ flags: UInt32) -> Int32
@_silgen_name("mallopt") private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
