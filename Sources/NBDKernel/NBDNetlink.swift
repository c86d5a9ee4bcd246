import CNetlink
import FoundationEssentials
import Glibc
import Logging
import Synchronization

/// The kernel's NBD driver over generic netlink: one libnl socket, the "nbd" family id
/// resolved once at init. Calls block until the kernel's ack and are serialized.
///
/// Call it off the event loop that serves the device's sockets: DISCONNECT makes the
/// kernel send NBD_CMD_DISC on every socket, which waits if a socket's buffer is full
/// of requests nobody is reading.
public final class NBDNetlink: @unchecked Sendable {
  // `@unchecked Sendable`: the libnl socket (a C pointer) is used only under `lock` (a Mutex).
  private let handle: OpaquePointer
  private let lock = Mutex(())
  private let logger: Logger

  /// The id the kernel gave the "nbd" family.
  public let familyID: Int32

  /// Throws `.moduleNotLoaded` when no "nbd" family is registered.
  public init(logger: Logger = Logger(label: "lunbridge.nbd-kernel")) throws {
    var status = lb_nl_status()
    guard let handle = lb_nbd_nl_open(&status) else {
      throw NBDKernelError(status, operation: .open, index: nil)
    }
    self.handle = handle
    self.familyID = lb_nbd_nl_family_id(handle)
    self.logger = logger
  }

  deinit { lb_nbd_nl_close(handle) }

  /// NBD_CMD_CONNECT: returns the index of the /dev/nbdN the kernel configured.
  @discardableResult
  public func connect(_ request: NBDConnectRequest) throws -> UInt32 {
    let message = try NBDNetlinkMessage.connect(request)
    let reply = try send(message, operation: .connect, index: request.index)
    let index: UInt32?
    do {
      index = try NBDNetlinkMessage.decodeConnectReply(reply ?? [])
    } catch let error as NetlinkAttributeError {
      throw NBDKernelError(code: .unexpectedReply, operation: .connect, index: request.index, malformedReply: error)
    }
    // The kernel drops its reply silently if it cannot allocate it; the ack still says
    // the device is up. Only a requested index can be trusted then.
    guard let result = index ?? request.index else {
      throw NBDKernelError(
        code: .unexpectedReply, operation: .connect,
        detail: "the device was configured but its index was not reported")
    }
    logger.debug(
      "nbd connected",
      metadata: ["index": "\(result)", "sockets": "\(request.sockets.count)", "size": "\(request.sizeBytes)"])
    return result
  }

  /// NBD_CMD_RECONFIGURE. Each new socket takes the place of a dead one (a socket with
  /// no dead slot is ignored by the kernel, which still answers success); nil timeouts
  /// are left as they are. `backendIdentifier` must match the one given at CONNECT.
  public func reconfigure(
    index: UInt32, sockets: [Int32] = [], timeoutSeconds: UInt64? = nil,
    deadConnectionTimeoutSeconds: UInt64? = nil, backendIdentifier: String? = nil, sizeBytes: UInt64? = nil
  ) throws {
    let message = try NBDNetlinkMessage.reconfigure(
      index: index, sockets: sockets, timeoutSeconds: timeoutSeconds,
      deadConnectionTimeoutSeconds: deadConnectionTimeoutSeconds, backendIdentifier: backendIdentifier,
      sizeBytes: sizeBytes)
    _ = try send(message, operation: .reconfigure, index: index)
    logger.debug("nbd reconfigured", metadata: ["index": "\(index)", "sockets": "\(sockets.count)"])
  }

  /// NBD_CMD_DISCONNECT: the kernel sends NBD_CMD_DISC on each socket, shuts them down
  /// and fails the I/O in flight. Succeeds for a device that is not connected.
  public func disconnect(index: UInt32) throws {
    _ = try send(NBDNetlinkMessage.disconnect(index: index), operation: .disconnect, index: index)
    logger.debug("nbd disconnected", metadata: ["index": "\(index)"])
  }

  /// NBD_CMD_STATUS (needs no privilege). With an index that has no device the list is
  /// empty.
  public func status(index: UInt32? = nil) throws -> [NBDDeviceStatus] {
    let reply = try send(NBDNetlinkMessage.status(index: index), operation: .status, index: index)
    do {
      return try NBDNetlinkMessage.decodeStatusReply(reply ?? [])
    } catch let error as NetlinkAttributeError {
      throw NBDKernelError(code: .unexpectedReply, operation: .status, index: index, malformedReply: error)
    }
  }

  /// Sends one request and returns the attributes of the reply, if the kernel sent one.
  private func send(
    _ message: NBDNetlinkMessage, operation: NBDKernelOperation, index: UInt32?
  ) throws -> [UInt8]? {
    try lock.withLock { _ in try sendLocked(message, operation: operation, index: index) }
  }

  private func sendLocked(
    _ message: NBDNetlinkMessage, operation: NBDKernelOperation, index: UInt32?
  ) throws -> [UInt8]? {
    var status = lb_nl_status()
    var reply: UnsafeMutableRawPointer? = nil
    var replyLength = 0
    let rc = message.attributes.withUnsafeBytes { attrs in
      lb_nbd_nl_request(
        handle, message.command, attrs.baseAddress, attrs.count, &reply, &replyLength, &status)
    }
    guard rc == 0 else {
      let error = NBDKernelError(status, operation: operation, index: index)
      logger.debug(
        "nbd netlink request failed",
        metadata: [
          "command": "\(message.command)", "stage": "\(status.stage)", "nle": "\(status.nl_error)",
          "errno": "\(status.sys_errno)",
        ])
      throw error
    }
    guard let reply else { return nil }
    defer { lb_nl_free(reply) }
    return Array(UnsafeRawBufferPointer(start: reply, count: replyLength))
  }

  /// The backend identifier given at CONNECT (/sys/block/nbdN/backend), nil if there is
  /// none or the device does not exist.
  public static func backendIdentifier(index: UInt32) -> String? {
    guard let text = readSysfs("/sys/block/nbd\(index)/backend") else { return nil }
    return text.isEmpty ? nil : text
  }

  /// The process serving the device (/sys/block/nbdN/pid: the one that sent CONNECT),
  /// nil when it is not connected.
  public static func pid(index: UInt32) -> Int32? {
    readSysfs("/sys/block/nbd\(index)/pid").flatMap { Int32($0) }
  }

  static func readSysfs(_ path: String) -> String? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    // One value per sysfs file, ended by a newline.
    var text = Substring(String(decoding: data, as: UTF8.self))
    while let last = text.last, last.isWhitespace { text = text.dropLast() }
    while let first = text.first, first.isWhitespace { text = text.dropFirst() }
    return String(text)
  }
}

/// Whether the nbd driver is present (/sys/module/nbd: a module, or built in, since it
/// has parameters). A cheap pre-check before NBDNetlink().
public func isNBDModuleLoaded() -> Bool {
  FileManager.default.fileExists(atPath: "/sys/module/nbd")
}

extension NBDKernelError {
  init(_ status: lb_nl_status, operation: NBDKernelOperation, index: UInt32?) {
    self.init(
      stage: Stage(rawValue: status.stage) ?? .none, libnlError: status.nl_error, errno: status.sys_errno,
      operation: operation, index: index)
  }
}
