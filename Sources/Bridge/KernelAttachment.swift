import Dispatch
import FoundationEssentials
import Glibc
import Logging
import NBDKernel
import NBDProtocol
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Settings of `attach`. Both kernel timeouts are always set explicitly (NOTES-KERNEL-NBD:
/// an unset TIMEOUT means the block layer waits forever).
public struct AttachOptions: Sendable {
  public var connections: Int
  /// Seconds before the kernel declares a request on a socket timed out.
  public var timeoutSeconds: UInt64 = 30
  /// Seconds the kernel waits for a RECONFIGURE when every socket is dead.
  public var deadConnectionTimeoutSeconds: UInt64 = 120
  public var index: UInt32?

  public init(connections: Int = ProcessInfo.processInfo.activeProcessorCount) {
    self.connections = max(1, connections)
  }
}

/// A volume handed to the kernel as /dev/nbdN: N socketpairs, one NBD connection each, on
/// the volume's event loop. A device already carrying this LUN's backend identifier whose
/// server is gone is taken over with NBD_CMD_RECONFIGURE, so mounts survive a restart.
public final class KernelAttachment: Sendable {
  public let volume: Volume
  public let index: UInt32
  public let backendIdentifier: String
  public let reattached: Bool
  let netlink: NBDNetlink
  let logger: Logger
  let channels: [Channel]
  private let closedPromise: EventLoopPromise<Void>

  public var devicePath: String { "/dev/nbd\(index)" }

  /// Names the LUN so a restarted attach finds its device: target, LUN and the LUN's own
  /// identifier (VPD 0x83), which tells a different LUN behind the same name apart.
  public static func backendIdentifier(for volume: Volume) -> String {
    "lunbridge:\(volume.targetName):\(volume.lun):\(volume.info.deviceIdentifier ?? "-")"
  }

  init(
    volume: Volume, index: UInt32, backendIdentifier: String, reattached: Bool, netlink: NBDNetlink,
    channels: [Channel], logger: Logger
  ) {
    self.volume = volume
    self.index = index
    self.backendIdentifier = backendIdentifier
    self.reattached = reattached
    self.netlink = netlink
    self.channels = channels
    self.logger = logger
    self.closedPromise = volume.eventLoop.makePromise()
    let remaining = ManagedCounter(channels.count)
    for c in channels {
      c.closeFuture.whenComplete { [closedPromise] _ in
        if remaining.decrement() == 0 { closedPromise.succeed(()) }
      }
    }
  }

  /// Attaches `volume`. Throws `NBDKernelError` with a one-line reason (module missing,
  /// not root, device busy).
  public static func attach(volume: Volume, options: AttachOptions, logger: Logger) async throws -> KernelAttachment {
    let netlink = try NBDNetlink(logger: logger)
    let identifier = backendIdentifier(for: volume)

    // A device left by an earlier run of this LUN whose server is gone: reconfigure it.
    var reuse: UInt32? = nil
    if let devices = try? netlink.status() {
      for d in devices where NBDNetlink.backendIdentifier(index: d.index) == identifier {
        if let pid = NBDNetlink.pid(index: d.index), pid > 0, kill(pid, 0) == 0, pid != getpid() {
          throw BridgeError(.alreadyRunning, "\(identifier) is already attached as /dev/nbd\(d.index) by process \(pid)")
        }
        if options.index == nil || options.index == d.index { reuse = d.index }
      }
    }

    var ours: [Int32] = []
    var theirs: [Int32] = []
    for _ in 0..<options.connections {
      var fds: [Int32] = [0, 0]
      guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
        for fd in ours + theirs { close(fd) }
        throw BridgeError(.system, "socketpair failed: \(String(cString: strerror(errno)))")
      }
      ours.append(fds[0])
      theirs.append(fds[1])
    }
    defer { for fd in theirs { close(fd) } }  // the kernel holds its own references

    var channels: [Channel] = []
    do {
      for fd in ours {
        let channel = try await ClientBootstrap(group: volume.eventLoop)
          .channelInitializer { ch in
            ch.eventLoop.makeCompletedFuture {
              try ch.pipeline.syncOperations.addHandler(
                NBDConnectionHandler(volume: volume, handshake: false, logger: logger))
            }
          }
          .withConnectedSocket(fd).get()
        channels.append(channel)
      }
    } catch {
      for c in channels { try? await c.close().get() }
      for fd in ours.dropFirst(channels.count) { close(fd) }
      throw BridgeError(.system, "cannot serve the NBD sockets", cause: error)
    }

    let index: UInt32
    do {
      if let reuse {
        try netlink.reconfigure(
          index: reuse, sockets: theirs, timeoutSeconds: options.timeoutSeconds,
          deadConnectionTimeoutSeconds: options.deadConnectionTimeoutSeconds, backendIdentifier: identifier)
        index = reuse
        logger.notice("reattached an existing device", metadata: ["device": "/dev/nbd\(reuse)"])
      } else {
        var flags: NBDServerFlags = [.hasFlags, .sendFlush, .sendFUA, .canMultiConn]
        let export = volume.export.transmissionFlags
        if export.contains(.readOnly) { flags.insert(.readOnly) }
        if export.contains(.sendTrim) { flags.insert(.sendTrim) }
        if export.contains(.sendWriteZeroes) { flags.insert(.sendWriteZeroes) }
        if export.contains(.rotational) { flags.insert(.rotational) }
        let request = NBDConnectRequest(
          sockets: theirs, sizeBytes: volume.export.size, blockSize: UInt64(volume.info.blockSize),
          serverFlags: flags, timeoutSeconds: options.timeoutSeconds,
          deadConnectionTimeoutSeconds: options.deadConnectionTimeoutSeconds, index: options.index,
          backendIdentifier: identifier)
        index = try netlink.connect(request)
      }
    } catch {
      for c in channels { try? await c.close().get() }
      throw error
    }
    return KernelAttachment(
      volume: volume, index: index, backendIdentifier: identifier, reattached: reuse != nil, netlink: netlink,
      channels: channels, logger: logger)
  }

  /// Watches the device from a thread of its own (netlink calls block): logs the kernel's
  /// LINK_DEAD notifications for this device, and ends the attachment once the kernel says
  /// the device is no longer connected. That matters after a RECONFIGURE: the kernel
  /// only takes as many of the new sockets as it had dead slots, and never closes the
  /// others, so waiting for every socket to close would wait forever.
  public func startWatching(interval: TimeInterval = 1) {
    let monitor = try? NBDLinkDeadMonitor()
    if monitor == nil { logger.warning("cannot subscribe to NBD link-dead notifications") }
    // A serial queue of its own: the loop below keeps one thread for the attachment's life.
    DispatchQueue(label: "lunbridge-nbd-watch").async { [self] in
      while true {
        usleep(UInt32(interval * 1_000_000))
        if let dead = try? monitor?.drain(), dead.contains(index) {
          logger.notice("the kernel reported a dead NBD socket", metadata: ["device": "\(devicePath)"])
        }
        if let status = try? netlink.status(index: index), let me = status.first(where: { $0.index == index }),
          !me.connected
        {
          logger.notice("\(devicePath) was disconnected")
          for c in channels { c.close(promise: nil) }
          closedPromise.succeed(())
          return
        }
        if !isConnected { return }
      }
    }
  }

  /// True while the kernel still holds at least one of our sockets.
  public var isConnected: Bool { channels.contains { $0.isActive } }

  /// Lets the block layer send requests as large as the LUN takes (up to 1 MiB) instead of
  /// the nbd driver's default 128 KiB, which cuts a 1 MiB write into eight NBD requests.
  /// Best effort: the kernel's own max_hw_sectors_kb caps it.
  public func raiseRequestSize() {
    let queue = "/sys/block/nbd\(index)/queue"
    let hw =
      (try? String(contentsOfFile: "\(queue)/max_hw_sectors_kb", encoding: .utf8))
      .flatMap { Int($0.trimmingWhitespace()) } ?? 1024
    var kb = min(1024, hw)
    let lunMax = volume.info.maxTransferBytes
    if lunMax > 0 { kb = min(kb, max(4, lunMax / 1024)) }
    do {
      try "\(kb)\n".write(toFile: "\(queue)/max_sectors_kb", atomically: false, encoding: .utf8)
    } catch {
      logger.info("could not raise max_sectors_kb", metadata: ["device": "\(devicePath)", "error": "\(error)"])
    }
  }

  /// Completes when the kernel has closed every socket (detach, or the device removed).
  public var closed: EventLoopFuture<Void> { closedPromise.futureResult }

  /// Asks the kernel to disconnect the device (as `lunbridge detach` does).
  public func disconnect() throws {
    try netlink.disconnect(index: index)
  }

  /// True while something holds the device exclusively: a mounted filesystem, a
  /// device-mapper or md device on top, or a program that opened it with O_EXCL (the
  /// kernel then refuses another exclusive open with EBUSY). Disconnecting such a device
  /// fails the holder's I/O.
  public var isInUse: Bool {
    let fd = open(devicePath, O_RDONLY | O_EXCL | O_NONBLOCK | O_CLOEXEC)
    if fd >= 0 {
      close(fd)
      return false
    }
    return errno == EBUSY
  }

  /// Gives the connected device a new size (NBD_CMD_RECONFIGURE with NBD_ATTR_SIZE_BYTES):
  /// the kernel sets the capacity and tells udev and the filesystem layer ("detected
  /// capacity change"). A shrink of a device something holds (a mounted filesystem) is
  /// refused: the blocks beyond the new end may be in use.
  public func resize(from old: UInt64, to new: UInt64) throws {
    if new < old, isInUse {
      throw BridgeError(
        .busy,
        "the LUN shrank from \(old) to \(new) bytes; \(devicePath) is in use (mounted?) and keeps \(old) bytes: shrink what is on it first, then rescan"
      )
    }
    try netlink.reconfigure(index: index, backendIdentifier: backendIdentifier, sizeBytes: new)
  }

  /// Leaves the device to the next attach of this LUN instead of disconnecting it: closes
  /// our ends of the sockets, so the kernel holds I/O for the dead-connection timeout and
  /// sends again what was in flight once a restarted attach takes the device over with
  /// NBD_CMD_RECONFIGURE (`systemctl restart` of a mounted volume).
  public func release() async {
    for c in channels { try? await c.close().get() }
  }
}

final class ManagedCounter: Sendable {
  private let value: NIOLockedValueBox<Int>
  init(_ value: Int) { self.value = NIOLockedValueBox(value) }
  func decrement() -> Int {
    value.withLockedValue {
      $0 -= 1
      return $0
    }
  }
}
