import CNetlink
import Synchronization

/// NBD_CMD_LINK_DEAD notifications from the "nbd_mc_group" multicast group.
///
/// The kernel sends one when a socket of a device is declared dead (a request timed
/// out on it, or it failed); it names the device, not the socket. Put
/// `fileDescriptor` on an event loop or poll it from a thread, and call `drain()` when
/// it is readable. If `overruns` grew, notifications were lost (the socket's receive
/// buffer overflowed): check your devices with NBDNetlink.status() and your sockets.
public final class NBDLinkDeadMonitor: @unchecked Sendable {
  // `@unchecked Sendable`: the libnl socket (a C pointer) is drained only under the
  // mutex; its descriptor number never changes.
  private let handle: OpaquePointer
  private let overrunCount = Mutex(0)

  /// Throws `.moduleNotLoaded` when no "nbd" family is registered.
  public init() throws {
    var status = lb_nl_status()
    guard let handle = lb_nbd_monitor_open(&status) else {
      throw NBDKernelError(status, operation: .monitor, index: nil)
    }
    self.handle = handle
  }

  deinit { lb_nbd_monitor_close(handle) }

  /// Non-blocking; readable when notifications are queued. Owned by the monitor.
  public var fileDescriptor: Int32 { lb_nbd_monitor_fd(handle) }

  /// How many times the kernel reported dropped notifications.
  public var overruns: Int {
    overrunCount.withLock { $0 }
  }

  /// The device indexes of every LINK_DEAD notification queued, oldest first (an index
  /// may repeat); empty if there are none. Never blocks.
  public func drain() throws -> [UInt32] {
    try overrunCount.withLock { overruns in
      var status = lb_nl_status()
      var indexes: UnsafeMutablePointer<UInt32>? = nil
      var count = 0
      var overrun: Int32 = 0
      guard lb_nbd_monitor_drain(handle, &indexes, &count, &overrun, &status) == 0 else {
        throw NBDKernelError(status, operation: .monitor, index: nil)
      }
      if overrun != 0 { overruns += 1 }
      guard let indexes else { return [] }
      defer { lb_nl_free(indexes) }
      return Array(UnsafeBufferPointer(start: indexes, count: count))
    }
  }
}
