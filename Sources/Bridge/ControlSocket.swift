import Failure
import FoundationEssentials
import Glibc
import ISCSIInitiator
import Logging
import NIOCore
import NIOPosix

// The control socket of one served volume: `DIR/NAME.sock` (DIR is /run/lunbridge unless
// LUNBRIDGE_RUN_DIR says otherwise), a Unix stream socket only root may connect to.
//
// Protocol: the client sends one line, `status`, `reload`, `failback`, `rescan` or `pr JSON`; the
// server answers one line of JSON and closes the connection.
//   status  -> the VolumeStatusReport (keys sorted)
//   reload  -> {"ok":true,"message":"..."} or {"ok":false,"error":"..."}
//   pr JSON -> a PRRequest in, a PRReply out (persistent reservations)
//   other   -> {"ok":false,"error":"unknown command '...'"}
// A request line longer than 4 KiB, or one that does not arrive within a few seconds, ends
// the connection.

/// The answer to every control command but `status`.
public struct ControlReply: Codable, Hashable, Sendable {
  public var ok: Bool
  public var message: String?
  public var error: String?
  /// The class of the failure (the command line's exit status), when it has one.
  public var kind: FailureClass?

  public init(ok: Bool, message: String? = nil, error: String? = nil, kind: FailureClass? = nil) {
    self.ok = ok
    self.message = message
    self.error = error
    self.kind = kind
  }

  /// A failed command's reply: the error's message and, for lunbridge's errors, its class
  /// (the command line that relays it exits as the process that raised it would have).
  public init(failure error: Error) {
    let typed = error as? LunbridgeError
    self.init(ok: false, error: describeError(error), kind: typed?.failureClass)
  }
}

/// JSON as the control socket speaks it: one line, keys sorted, non-finite numbers as strings.
enum ControlJSON {
  static func encoder() -> JSONEncoder {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    e.nonConformingFloatEncodingStrategy = .convertToString(
      positiveInfinity: "+Inf", negativeInfinity: "-Inf", nan: "NaN")
    return e
  }

  static func decoder() -> JSONDecoder {
    let d = JSONDecoder()
    d.nonConformingFloatDecodingStrategy = .convertFromString(
      positiveInfinity: "+Inf", negativeInfinity: "-Inf", nan: "NaN")
    return d
  }
}

/// Serves `status` and `reload` for one volume on `DIR/NAME.sock`.
public final class ControlServer: Sendable {
  /// Longest request line accepted, newline included.
  public static let maximumRequestLength = 4096

  /// Where control sockets live: `$LUNBRIDGE_RUN_DIR` when set, else /run/lunbridge.
  public static var defaultDirectory: String {
    if let dir = ProcessInfo.processInfo.environment["LUNBRIDGE_RUN_DIR"], !dir.isEmpty { return dir }
    return "/run/lunbridge"
  }

  /// The socket path of volume `name` in `directory`; throws for a name that cannot be a
  /// file name (empty, `/`, leading dot, control characters) or a path too long for a socket.
  public static func socketPath(name: String, directory: String = ControlServer.defaultDirectory) throws
    -> String
  {
    guard !name.isEmpty, !name.hasPrefix("."), !name.contains("/"),
      !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f })
    else {
      throw BridgeError(
        .controlSocket, "'\(name)' cannot name a volume's control socket (no '/', no leading '.', no control characters)")
    }
    let path = directory.hasSuffix("/") ? "\(directory)\(name).sock" : "\(directory)/\(name).sock"
    guard path.utf8.count < unixPathCapacity else {
      throw BridgeError(.usage, "control socket path \(path) is longer than a Unix socket path may be")
    }
    return path
  }

  /// Throws when another lunbridge answers on volume `name`'s control socket. Checked
  /// before logging in: the sessions of a volume have stable ISIDs, so a second process
  /// logging in as the same volume would take the running one's sessions over.
  public static func refuseIfServed(name: String, directory: String = ControlServer.defaultDirectory) throws {
    guard let path = try? socketPath(name: name, directory: directory), FileIdentity(path: path)?.isSocket == true,
      isListening(unixPath: path)
    else { return }
    throw BridgeError(.alreadyRunning, "volume \(name) is already served by another lunbridge (socket \(path))")
  }

  /// The socket's path.
  public let path: String
  private let channel: Channel
  private let identity: FileIdentity?
  private let logger: Logger

  private init(path: String, channel: Channel, identity: FileIdentity?, logger: Logger) {
    self.path = path
    self.channel = channel
    self.identity = identity
    self.logger = logger
  }

  /// Binds `DIR/NAME.sock` (mode 0600, the directory created with mode 0755 if missing)
  /// and serves it on a loop of `MultiThreadedEventLoopGroup.singleton`. A socket file
  /// nobody listens on any more is replaced; one that still answers means another
  /// lunbridge serves the volume, and that is an error.
  public static func start(
    name: String, directory: String = ControlServer.defaultDirectory,
    report: @escaping @Sendable () -> EventLoopFuture<VolumeStatusReport>,
    reload: (@Sendable () -> EventLoopFuture<String>)? = nil,
    failback: (@Sendable () -> EventLoopFuture<String>)? = nil,
    rescan: (@Sendable () -> EventLoopFuture<String>)? = nil,
    reservation: (@Sendable (PRRequest) -> EventLoopFuture<PRReply>)? = nil,
    requestTimeout: TimeAmount = .seconds(5),
    logger: Logger
  ) async throws -> ControlServer {
    let path = try socketPath(name: name, directory: directory)
    do {
      try FileManager.default.createDirectory(
        atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
    } catch {
      throw BridgeError(.system, "cannot create \(directory): \(describeFileError(error))")
    }
    if let existing = FileIdentity(path: path) {
      guard existing.isSocket else {
        throw BridgeError(.busy, "\(path) exists and is not a socket; remove it if no lunbridge uses it")
      }
      try refuseIfServed(name: name, directory: directory)
      // Stale: the rename below replaces it.
    }

    // Bind inside a private (0700) directory, set the mode, then rename into place: the
    // socket is never reachable under a mode wider than 0600.
    var template = Array("\(directory)/.control-XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
      throw BridgeError(
        .system, "cannot create a temporary directory in \(directory): \(String(cString: strerror(errno)))")
    }
    let privateDirectory = String(cString: made)
    defer { rmdir(privateDirectory) }
    let temporaryPath = "\(privateDirectory)/s"
    guard temporaryPath.utf8.count < unixPathCapacity else {
      throw BridgeError(.usage, "control socket directory \(directory) is too long a path for a Unix socket")
    }

    let commands = ControlCommands(
      report: report, reload: reload, failback: failback, rescan: rescan, reservation: reservation,
      timeout: requestTimeout,
      logger: logger)
    let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .childChannelOption(.allowRemoteHalfClosure, value: true)
      .childChannelInitializer { child in
        child.eventLoop.makeCompletedFuture {
          try child.pipeline.syncOperations.addHandler(ControlConnectionHandler(commands: commands))
        }
      }
    let channel: Channel
    do {
      channel = try await bootstrap.bind(unixDomainSocketPath: temporaryPath).get()
    } catch {
      unlink(temporaryPath)
      throw BridgeError(.system, "cannot listen on \(path): \(plainDescription(of: error))")
    }
    guard chmod(temporaryPath, 0o600) == 0, rename(temporaryPath, path) == 0 else {
      let reason = String(cString: strerror(errno))
      try? await channel.close().get()
      unlink(temporaryPath)
      throw BridgeError(.system, "cannot put the control socket at \(path): \(reason)")
    }
    logger.debug("control socket ready", metadata: ["socket": "\(path)"])
    return ControlServer(path: path, channel: channel, identity: FileIdentity(path: path), logger: logger)
  }

  /// Stops accepting and removes the socket file (unless another process has put its own
  /// socket there since).
  public func stop() async {
    try? await channel.close().get()
    if let identity, FileIdentity(path: path) == identity {
      unlink(path)
    }
  }
}

/// What a control connection can ask for.
struct ControlCommands: Sendable {
  let report: @Sendable () -> EventLoopFuture<VolumeStatusReport>
  let reload: (@Sendable () -> EventLoopFuture<String>)?
  /// `failback`: paths waiting for a manual failback take I/O again.
  var failback: (@Sendable () -> EventLoopFuture<String>)? = nil
  /// `rescan`: read the LU's capacity again and apply a new size.
  var rescan: (@Sendable () -> EventLoopFuture<String>)? = nil
  /// `pr JSON`: one persistent reservation operation.
  var reservation: (@Sendable (PRRequest) -> EventLoopFuture<PRReply>)? = nil
  /// How long a request line may take to arrive (the answer may take longer).
  let timeout: TimeAmount
  let logger: Logger
}

/// One control connection: reads a line, answers it, closes.
final class ControlConnectionHandler: ChannelInboundHandler {
  typealias InboundIn = ByteBuffer
  typealias OutboundOut = ByteBuffer

  private let commands: ControlCommands
  private var request: ByteBuffer?
  private var answered = false
  private var deadline: Scheduled<Void>?

  init(commands: ControlCommands) {
    self.commands = commands
  }

  func channelActive(context: ChannelHandlerContext) {
    deadline = context.eventLoop.assumeIsolated().scheduleTask(in: commands.timeout) {
      context.close(promise: nil)
    }
    context.fireChannelActive()
  }

  func channelInactive(context: ChannelHandlerContext) {
    deadline?.cancel()
    deadline = nil
    context.fireChannelInactive()
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var incoming = unwrapInboundIn(data)
    guard !answered else { return }
    if request == nil {
      request = incoming
    } else {
      request!.writeBuffer(&incoming)
    }
    guard let buffer = request else { return }
    if let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
      let length = newline - buffer.readerIndex
      guard length < ControlServer.maximumRequestLength else { return refuseOverlong(context: context) }
      answer(buffer.getString(at: buffer.readerIndex, length: length) ?? "", context: context)
    } else if buffer.readableBytes >= ControlServer.maximumRequestLength {
      refuseOverlong(context: context)
    }
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    // A client that shuts its side down without a newline sent its whole request.
    if let event = event as? ChannelEvent, event == .inputClosed, !answered {
      if let buffer = request, buffer.readableBytes > 0 {
        answer(buffer.getString(at: buffer.readerIndex, length: buffer.readableBytes) ?? "", context: context)
      } else {
        answered = true
        context.close(promise: nil)
      }
      return
    }
    context.fireUserInboundEventTriggered(event)
  }

  func errorCaught(context: ChannelHandlerContext, error: Error) {
    commands.logger.debug("control connection failed", metadata: ["error": "\(error)"])
    context.close(promise: nil)
  }

  private func refuseOverlong(context: ChannelHandlerContext) {
    answered = true
    send(
      Self.encode(
        ControlReply(ok: false, error: "request longer than \(ControlServer.maximumRequestLength) bytes")),
      context: context)
  }

  private func answer(_ line: String, context: ChannelHandlerContext) {
    answered = true
    request = nil
    deadline?.cancel()
    deadline = nil
    let command = line.trimmingWhitespace()
    let reply: EventLoopFuture<Data>
    if command.hasPrefix("pr ") {
      guard let reservation = commands.reservation else {
        return send(Self.encode(ControlReply(ok: false, error: "this volume has no persistent reservations")), context: context)
      }
      guard let request = try? ControlJSON.decoder().decode(PRRequest.self, from: Data(command.dropFirst(3).utf8)) else {
        return send(Self.encode(ControlReply(ok: false, error: "pr: the request is not valid JSON")), context: context)
      }
      reply = reservation(request).flatMapThrowing { try ControlJSON.encoder().encode($0) }
      reply.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
        switch result {
        case .success(let data): self.send(data, context: context)
        case .failure(let error): self.send(Self.encode(ControlReply(ok: false, error: "\(error)")), context: context)
        }
      }
      return
    }
    switch command {
    case "status":
      reply = commands.report().flatMapThrowing { try ControlJSON.encoder().encode($0) }
    case "reload":
      guard let reload = commands.reload else {
        return send(
          Self.encode(ControlReply(ok: false, error: "this volume cannot reload")), context: context)
      }
      reply = reload().map { Self.encode(ControlReply(ok: true, message: $0)) }
    case "failback":
      guard let failback = commands.failback else {
        return send(
          Self.encode(ControlReply(ok: false, error: "this volume cannot fail back")), context: context)
      }
      reply = failback().map { Self.encode(ControlReply(ok: true, message: $0)) }
    case "rescan":
      guard let rescan = commands.rescan else {
        return send(Self.encode(ControlReply(ok: false, error: "this volume cannot rescan")), context: context)
      }
      reply = rescan().map { Self.encode(ControlReply(ok: true, message: $0)) }
    default:
      let shown = command.count > 64 ? String(command.prefix(64)) + "..." : command
      return send(Self.encode(ControlReply(ok: false, error: "unknown command '\(shown)'")), context: context)
    }
    reply.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
      switch result {
      case .success(let data):
        self.send(data, context: context)
      case .failure(let error):
        self.send(Self.encode(ControlReply(failure: error)), context: context)
      }
    }
  }

  private func send(_ json: Data, context: ChannelHandlerContext) {
    guard context.channel.isActive else { return }
    var buffer = context.channel.allocator.buffer(capacity: json.count + 1)
    buffer.writeBytes(json)
    buffer.writeInteger(UInt8(ascii: "\n"))
    context.writeAndFlush(wrapOutboundOut(buffer)).assumeIsolated().whenComplete { _ in
      context.close(promise: nil)
    }
  }

  private static func encode(_ reply: ControlReply) -> Data {
    // Encoding strings and booleans cannot fail.
    (try? ControlJSON.encoder().encode(reply)) ?? Data(#"{"ok":false}"#.utf8)
  }
}

/// A small blocking client of the control socket, for the command line.
public enum ControlClient {
  /// Largest answer accepted (a status report of a volume with many paths is a few KiB).
  public static let maximumReplyLength = 16 << 20

  /// Sends `command` on the socket at `path` and returns the answer line (without its
  /// newline). Throws a BridgeError when nobody listens, or no full answer arrives within
  /// `timeout` seconds.
  public static func request(_ command: String, socket path: String, timeout: Double = 5) throws -> Data {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw BridgeError(.system, "socket: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    guard var address = unixAddress(path) else {
      throw BridgeError(.usage, "control socket path \(path) is longer than a Unix socket path may be")
    }
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    guard connected == 0 else {
      switch errno {
      case ECONNREFUSED:
        // The file is there and nobody listens: the process that made it is gone.
        throw BridgeError(.notFound, "\(path) is a stale socket: the lunbridge that served it is gone")
      case EACCES, EPERM:
        throw BridgeError(.permission, "cannot connect to \(path): permission denied (the control sockets are root's)")
      case let code:
        throw BridgeError(.controlSocket, "cannot connect to \(path): \(String(cString: strerror(code)).lowercased())")
      }
    }
    let deadline = Date().addingTimeInterval(timeout)

    let line = Array("\(command)\n".utf8)
    var sent = 0
    while sent < line.count {
      try waitFor(fd, events: Int16(POLLOUT), until: deadline, path: path)
      let n = line[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
      if n < 0 {
        if errno == EINTR || errno == EAGAIN { continue }
        throw BridgeError(.system, "cannot send to \(path): \(String(cString: strerror(errno)))")
      }
      sent += n
    }

    var reply = Data()
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
      try waitFor(fd, events: Int16(POLLIN), until: deadline, path: path)
      let n = recv(fd, &chunk, chunk.count, 0)
      if n < 0 {
        if errno == EINTR || errno == EAGAIN { continue }
        throw BridgeError(.system, "cannot read from \(path): \(String(cString: strerror(errno)))")
      }
      if n == 0 { break }
      reply.append(contentsOf: chunk[0..<n])
      if let newline = reply.firstIndex(of: UInt8(ascii: "\n")) {
        return Data(reply.prefix(upTo: newline))
      }
      guard reply.count <= maximumReplyLength else {
        throw BridgeError(.controlSocket, "\(path) answered more than \(maximumReplyLength) bytes")
      }
    }
    guard !reply.isEmpty else { throw BridgeError(.controlSocket, "\(path) closed the connection without an answer") }
    return reply
  }

  /// The volume's status report.
  public static func status(socket path: String, timeout: Double = 5) throws -> VolumeStatusReport {
    let data = try request("status", socket: path, timeout: timeout)
    if let report = try? ControlJSON.decoder().decode(VolumeStatusReport.self, from: data) { return report }
    if let reply = try? ControlJSON.decoder().decode(ControlReply.self, from: data), let error = reply.error {
      // The volume's own error, with its class (exit status), as reload and pr relay theirs.
      throw BridgeError(relayed: "\(path): \(error)", class: reply.kind)
    }
    throw BridgeError(.controlSocket, "\(path) answered something that is not a status report")
  }

  /// Asks the volume to reload its configuration; returns its message, or throws its error.
  public static func reload(socket path: String, timeout: Double = 30) throws -> String {
    try action("reload", socket: path, timeout: timeout)
  }

  /// Runs a command answered with a `ControlReply` (`reload`, `failback`): its message, or
  /// its error thrown.
  public static func action(_ command: String, socket path: String, timeout: Double = 30) throws -> String {
    let data = try request(command, socket: path, timeout: timeout)
    guard let reply = try? ControlJSON.decoder().decode(ControlReply.self, from: data) else {
      throw BridgeError(.controlSocket, "\(path) answered something that is not a \(command) reply")
    }
    guard reply.ok else { throw BridgeError(relayed: reply.error ?? "\(command) failed", class: reply.kind) }
    return reply.message ?? "done"
  }

  /// Sends one persistent reservation operation (`pr JSON`) and returns the reply; a
  /// volume that does not know the command answers with a `ControlReply`, thrown here.
  public static func reservation(_ request: PRRequest, socket path: String, timeout: Double = 120) throws -> PRReply {
    let body = String(decoding: try ControlJSON.encoder().encode(request), as: UTF8.self)
    let data = try self.request("pr \(body)", socket: path, timeout: timeout)
    if let reply = try? ControlJSON.decoder().decode(PRReply.self, from: data) { return reply }
    if let reply = try? ControlJSON.decoder().decode(ControlReply.self, from: data) {
      throw BridgeError(relayed: reply.error ?? "pr failed", class: reply.kind)
    }
    throw BridgeError(.controlSocket, "\(path) answered something that is not a pr reply")
  }

  private static func waitFor(_ fd: Int32, events: Int16, until deadline: Date, path: String) throws {
    while true {
      let remaining = deadline.timeIntervalSinceNow
      guard remaining > 0 else { throw BridgeError(.controlSocket, "\(path) did not answer within the timeout") }
      var entry = pollfd(fd: fd, events: events, revents: 0)
      let rc = poll(&entry, 1, Int32(min(remaining * 1000, Double(Int32.max)).rounded(.up)))
      if rc > 0 { return }
      if rc < 0 && errno != EINTR {
        throw BridgeError(.system, "cannot wait for \(path): \(String(cString: strerror(errno)))")
      }
    }
  }
}

/// Bytes a Unix socket path may have (sun_path, with its terminating NUL).
let unixPathCapacity = MemoryLayout<sockaddr_un>.size - MemoryLayout<sa_family_t>.size

func unixAddress(_ path: String) -> sockaddr_un? {
  let bytes = Array(path.utf8)
  guard bytes.count < unixPathCapacity else { return nil }
  var address = sockaddr_un()
  address.sun_family = sa_family_t(AF_UNIX)
  withUnsafeMutableBytes(of: &address.sun_path) { raw in
    for (i, b) in bytes.enumerated() { raw[i] = b }
  }
  return address
}

/// Which file a path names (device and inode), and whether it is a socket.
struct FileIdentity: Equatable, Sendable {
  var device: UInt64
  var inode: UInt64
  var isSocket: Bool

  init?(path: String) {
    var st = stat()
    guard lstat(path, &st) == 0 else { return nil }
    device = UInt64(st.st_dev)
    inode = UInt64(st.st_ino)
    isSocket = (st.st_mode & S_IFMT) == S_IFSOCK
  }
}
