import CNetlink

/// Transmission flags the kernel is told the "server" (we) supports: NBD_ATTR_SERVER_FLAGS.
/// Values from <linux/nbd.h> and the NBD protocol (doc/proto.md, "Transmission flags");
/// the 6.1 UAPI header lacks ROTATIONAL and SEND_WRITE_ZEROES.
public struct NBDServerFlags: OptionSet, Hashable, Sendable {
  public let rawValue: UInt64
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  public static let hasFlags = NBDServerFlags(rawValue: 1 << 0)
  public static let readOnly = NBDServerFlags(rawValue: 1 << 1)
  public static let sendFlush = NBDServerFlags(rawValue: 1 << 2)
  public static let sendFUA = NBDServerFlags(rawValue: 1 << 3)
  public static let rotational = NBDServerFlags(rawValue: 1 << 4)
  public static let sendTrim = NBDServerFlags(rawValue: 1 << 5)
  /// Only kernels that implement NBD_CMD_WRITE_ZEROES use it; 6.1 ignores it.
  public static let sendWriteZeroes = NBDServerFlags(rawValue: 1 << 6)
  /// Required by the kernel when more than one socket is given.
  public static let canMultiConn = NBDServerFlags(rawValue: 1 << 8)
}

/// Client behaviour flags: NBD_ATTR_CLIENT_FLAGS (<linux/nbd.h> NBD_CFLAG_*).
///
/// lunbridge sends none by default. DESTROY_ON_DISCONNECT removes /dev/nbdN when it is
/// disconnected, so a later CONNECT with the same index recreates it rather than reusing
/// it; DISCONNECT_ON_CLOSE tears the device down when its last opener (mount, mkfs, a
/// VM) closes it, which a daemon that outlives its users must not want. Neither is
/// needed for RECONFIGURE, which only requires the device to still be configured.
public struct NBDClientFlags: OptionSet, Hashable, Sendable {
  public let rawValue: UInt64
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  public static let destroyOnDisconnect = NBDClientFlags(rawValue: 1 << 0)
  public static let disconnectOnClose = NBDClientFlags(rawValue: 1 << 1)
}

/// One NBD_CMD_CONNECT.
public struct NBDConnectRequest: Hashable, Sendable {
  /// The kernel's ends of the socket pairs (stream sockets that support shutdown).
  /// Socket k serves hardware queue k. The kernel takes its own reference to each one
  /// during CONNECT, so the caller may close these fds once connect() has returned.
  public var sockets: [Int32]
  public var sizeBytes: UInt64
  /// 0 lets the kernel pick its default (1024); otherwise a power of two from 512 up to
  /// the page size.
  public var blockSize: UInt64
  public var serverFlags: NBDServerFlags
  /// Per-request timeout; 0 means none (the block layer only warns every 30 s).
  public var timeoutSeconds: UInt64
  /// How long I/O waits for RECONFIGURE when no socket is alive; 0 fails it at once.
  public var deadConnectionTimeoutSeconds: UInt64
  /// A specific /dev/nbdN; nil lets the kernel take a free device or create one.
  public var index: UInt32?
  /// Shown in /sys/block/nbdN/backend; RECONFIGURE must then give the same one.
  public var backendIdentifier: String?
  public var clientFlags: NBDClientFlags

  public init(
    sockets: [Int32], sizeBytes: UInt64, blockSize: UInt64 = 512,
    serverFlags: NBDServerFlags = [.hasFlags, .sendFlush, .sendFUA],
    timeoutSeconds: UInt64, deadConnectionTimeoutSeconds: UInt64, index: UInt32? = nil,
    backendIdentifier: String? = nil, clientFlags: NBDClientFlags = []
  ) {
    self.sockets = sockets
    self.sizeBytes = sizeBytes
    self.blockSize = blockSize
    self.serverFlags = serverFlags
    self.timeoutSeconds = timeoutSeconds
    self.deadConnectionTimeoutSeconds = deadConnectionTimeoutSeconds
    self.index = index
    self.backendIdentifier = backendIdentifier
    self.clientFlags = clientFlags
  }
}

/// One device in an NBD_CMD_STATUS answer.
public struct NBDDeviceStatus: Hashable, Sendable {
  public var index: UInt32
  /// The device has a configuration (it was connected and not yet torn down).
  public var connected: Bool

  public init(index: UInt32, connected: Bool) {
    self.index = index
    self.connected = connected
  }
}

/// A generic netlink request for the "nbd" family: the command and its attribute
/// stream. The shim adds the nlmsghdr and genlmsghdr. Building is pure, so the exact
/// attributes are tested without the module.
public struct NBDNetlinkMessage: Hashable, Sendable {
  /// NBD_CMD_* from <linux/nbd-netlink.h>.
  public var command: UInt8
  public var attributes: [UInt8]

  public init(command: UInt8, attributes: [UInt8]) {
    self.command = command
    self.attributes = attributes
  }

  // <linux/nbd-netlink.h> constants as the widths the wire uses.
  public enum Command {
    public static let connect = UInt8(NBD_CMD_CONNECT)
    public static let disconnect = UInt8(NBD_CMD_DISCONNECT)
    public static let reconfigure = UInt8(NBD_CMD_RECONFIGURE)
    public static let linkDead = UInt8(NBD_CMD_LINK_DEAD)
    public static let status = UInt8(NBD_CMD_STATUS)
  }

  public enum Attribute {
    public static let index = UInt16(NBD_ATTR_INDEX)
    public static let sizeBytes = UInt16(NBD_ATTR_SIZE_BYTES)
    public static let blockSizeBytes = UInt16(NBD_ATTR_BLOCK_SIZE_BYTES)
    public static let timeout = UInt16(NBD_ATTR_TIMEOUT)
    public static let serverFlags = UInt16(NBD_ATTR_SERVER_FLAGS)
    public static let clientFlags = UInt16(NBD_ATTR_CLIENT_FLAGS)
    public static let sockets = UInt16(NBD_ATTR_SOCKETS)
    public static let deadConnectionTimeout = UInt16(NBD_ATTR_DEAD_CONN_TIMEOUT)
    public static let deviceList = UInt16(NBD_ATTR_DEVICE_LIST)
    public static let backendIdentifier = UInt16(NBD_ATTR_BACKEND_IDENTIFIER)
    // Nested levels.
    public static let sockItem = UInt16(NBD_SOCK_ITEM)
    public static let sockFD = UInt16(NBD_SOCK_FD)
    public static let deviceItem = UInt16(NBD_DEVICE_ITEM)
    public static let deviceIndex = UInt16(NBD_DEVICE_INDEX)
    public static let deviceConnected = UInt16(NBD_DEVICE_CONNECTED)
  }

  /// NBD_CMD_CONNECT. Checks locally what the kernel would only answer with EINVAL.
  public static func connect(_ request: NBDConnectRequest) throws -> NBDNetlinkMessage {
    func invalid(_ detail: String) -> NBDKernelError {
      NBDKernelError(
        code: .invalidArgument, operation: .connect, index: request.index, detail: detail)
    }
    guard !request.sockets.isEmpty else { throw invalid("no sockets to hand over") }
    if let bad = request.sockets.first(where: { $0 < 0 }) { throw invalid("socket fd \(bad) is not valid") }
    guard request.sockets.count == 1 || request.serverFlags.contains(.canMultiConn) else {
      throw invalid("\(request.sockets.count) sockets need NBD_FLAG_CAN_MULTI_CONN")
    }
    guard request.sizeBytes > 0 else { throw invalid("the size is 0") }
    let bs = request.blockSize
    guard bs == 0 || (bs >= 512 && bs <= 65536 && bs & (bs - 1) == 0) else {
      throw invalid("block size \(bs) is not a power of two from 512 up")
    }
    if request.sizeBytes / (bs == 0 ? 1024 : bs) == 0 { throw invalid("the size is smaller than a block") }
    try validate(backendIdentifier: request.backendIdentifier, operation: .connect, index: request.index)

    var w = NetlinkAttributeWriter()
    if let index = request.index { w.putU32(Attribute.index, index) }
    w.putU64(Attribute.sizeBytes, request.sizeBytes)
    w.putU64(Attribute.blockSizeBytes, request.blockSize)
    w.putU64(Attribute.serverFlags, request.serverFlags.rawValue)
    w.putU64(Attribute.timeout, request.timeoutSeconds)
    w.putU64(Attribute.deadConnectionTimeout, request.deadConnectionTimeoutSeconds)
    if !request.clientFlags.isEmpty { w.putU64(Attribute.clientFlags, request.clientFlags.rawValue) }
    putSockets(&w, request.sockets)
    if let id = request.backendIdentifier { w.putString(Attribute.backendIdentifier, id) }
    return NBDNetlinkMessage(command: Command.connect, attributes: w.bytes)
  }

  /// NBD_CMD_RECONFIGURE: new sockets fill dead slots; nil timeouts are left unchanged.
  public static func reconfigure(
    index: UInt32, sockets: [Int32], timeoutSeconds: UInt64?, deadConnectionTimeoutSeconds: UInt64?,
    backendIdentifier: String?, sizeBytes: UInt64? = nil
  ) throws -> NBDNetlinkMessage {
    if let bad = sockets.first(where: { $0 < 0 }) {
      throw NBDKernelError(
        code: .invalidArgument, operation: .reconfigure, index: index,
        detail: "socket fd \(bad) is not valid")
    }
    try validate(backendIdentifier: backendIdentifier, operation: .reconfigure, index: index)
    var w = NetlinkAttributeWriter()
    w.putU32(Attribute.index, index)
    if let t = timeoutSeconds { w.putU64(Attribute.timeout, t) }
    if let t = deadConnectionTimeoutSeconds { w.putU64(Attribute.deadConnectionTimeout, t) }
    // A new size (online resize; Linux 5.3 "nbd: add netlink reconfigure resize support").
    if let size = sizeBytes { w.putU64(Attribute.sizeBytes, size) }
    if !sockets.isEmpty { putSockets(&w, sockets) }
    if let id = backendIdentifier { w.putString(Attribute.backendIdentifier, id) }
    return NBDNetlinkMessage(command: Command.reconfigure, attributes: w.bytes)
  }

  public static func disconnect(index: UInt32) -> NBDNetlinkMessage {
    var w = NetlinkAttributeWriter()
    w.putU32(Attribute.index, index)
    return NBDNetlinkMessage(command: Command.disconnect, attributes: w.bytes)
  }

  /// NBD_CMD_STATUS for one device, or every device when `index` is nil.
  public static func status(index: UInt32?) -> NBDNetlinkMessage {
    var w = NetlinkAttributeWriter()
    if let index { w.putU32(Attribute.index, index) }
    return NBDNetlinkMessage(command: Command.status, attributes: w.bytes)
  }

  /// The device index in a CONNECT reply (NBD_ATTR_INDEX), nil if absent.
  public static func decodeConnectReply(_ attributes: [UInt8]) throws -> UInt32? {
    try NetlinkAttribute.parse(attributes).first(Attribute.index)?.u32()
  }

  /// NBD_ATTR_DEVICE_LIST { NBD_DEVICE_ITEM { NBD_DEVICE_INDEX u32, NBD_DEVICE_CONNECTED u8 } }.
  public static func decodeStatusReply(_ attributes: [UInt8]) throws -> [NBDDeviceStatus] {
    guard let list = try NetlinkAttribute.parse(attributes).first(Attribute.deviceList) else { return [] }
    var devices: [NBDDeviceStatus] = []
    for item in try list.nested() where item.type == Attribute.deviceItem {
      let fields = try item.nested()
      guard let index = try fields.first(Attribute.deviceIndex)?.u32() else {
        throw NetlinkAttributeError("NBD_DEVICE_ITEM without NBD_DEVICE_INDEX")
      }
      let connected = try fields.first(Attribute.deviceConnected)?.u8() ?? 0
      devices.append(NBDDeviceStatus(index: index, connected: connected != 0))
    }
    return devices
  }

  /// The device index of an NBD_CMD_LINK_DEAD notification's attributes.
  public static func decodeLinkDead(_ attributes: [UInt8]) throws -> UInt32? {
    try NetlinkAttribute.parse(attributes).first(Attribute.index)?.u32()
  }

  private static func putSockets(_ w: inout NetlinkAttributeWriter, _ sockets: [Int32]) {
    w.nest(Attribute.sockets) { list in
      for fd in sockets {
        list.nest(Attribute.sockItem) { item in item.putU32(Attribute.sockFD, UInt32(bitPattern: fd)) }
      }
    }
  }

  private static func validate(
    backendIdentifier: String?, operation: NBDKernelOperation, index: UInt32?
  ) throws {
    guard let id = backendIdentifier else { return }
    guard !id.isEmpty, !id.utf8.contains(0) else {
      throw NBDKernelError(
        code: .invalidArgument, operation: operation, index: index,
        detail: "the backend identifier must be non-empty text without NUL")
    }
  }
}
