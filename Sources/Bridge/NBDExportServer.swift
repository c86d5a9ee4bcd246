import FoundationEssentials
import Glibc
import ISCSIInitiator
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Where `serve` listens: `unix:PATH` or `tcp:[HOST:]PORT` (host default 127.0.0.1,
/// IPv6 as `[::1]:PORT`), as `qemu-nbd` users write socket addresses.
/// `[HOST:]PORT` as written after `tcp:`: host default 127.0.0.1, IPv6 in brackets
/// (`[::1]:PORT`). The port is returned as text for the caller to range-check.
func splitHostPort(_ rest: String, what: String) throws -> (host: String, portText: String) {
  if rest.hasPrefix("[") {
    guard let close = rest.firstIndex(of: "]"), rest[rest.index(after: close)...].hasPrefix(":") else {
      throw BridgeError(.usage, "\(what): expected tcp:[ADDR]:PORT for IPv6")
    }
    return (String(rest[rest.index(after: rest.startIndex)..<close]), String(rest[rest.index(close, offsetBy: 2)...]))
  }
  guard let colon = rest.lastIndex(of: ":") else { return ("127.0.0.1", rest) }
  let host = String(rest[..<colon])
  if host.contains(":") {
    throw BridgeError(.usage, "\(what): write an IPv6 address in brackets, as tcp:[::1]:9100")
  }
  return (host, String(rest[rest.index(after: colon)...]))
}

public enum ListenAddress: Equatable, CustomStringConvertible, Sendable {
  case unix(String)
  case tcp(host: String, port: Int)

  public init(parsing text: String) throws {
    if text.hasPrefix("unix:") {
      let path = String(text.dropFirst(5))
      guard !path.isEmpty else { throw BridgeError(.usage, "--listen unix: needs a socket path, as in unix:/run/lb.sock") }
      self = .unix(path)
      return
    }
    guard text.hasPrefix("tcp:") else {
      throw BridgeError(.usage, "--listen '\(text)': expected unix:PATH or tcp:[HOST:]PORT")
    }
    let (host, portText) = try splitHostPort(String(text.dropFirst(4)), what: "--listen '\(text)'")
    guard let port = Int(portText), (1...65535).contains(port) else {
      throw BridgeError(.usage, "--listen '\(text)': '\(portText)' is not a port number")
    }
    self = .tcp(host: host, port: port)
  }

  public var description: String {
    switch self {
    case .unix(let p): return "unix:\(p)"
    case .tcp(let h, let p): return h.contains(":") ? "tcp:[\(h)]:\(p)" : "tcp:\(h):\(p)"
    }
  }

  /// The NBD URI a client such as nbdinfo or fio uses.
  public var uri: String { uri(tls: false) }

  /// The URI with TLS: `nbds://` and `nbds+unix://` (the client adds its credentials,
  /// libnbd as `?tls-certificates=DIR`).
  public func uri(tls: Bool) -> String {
    let scheme = tls ? "nbds" : "nbd"
    switch self {
    case .unix(let p): return "\(scheme)+unix:///?socket=\(p)"
    case .tcp(let h, let p): return h.contains(":") ? "\(scheme)://[\(h)]:\(p)/" : "\(scheme)://\(h):\(p)/"
    }
  }
}

/// The volume as a standard NBD export on a socket (fixed-newstyle handshake, simple
/// replies, several connections at once).
public final class NBDExportServer: Sendable {
  public let volume: Volume
  public let address: ListenAddress
  let channel: Channel
  let logger: Logger
  private let registry: ConnectionRegistry

  init(volume: Volume, address: ListenAddress, channel: Channel, registry: ConnectionRegistry, logger: Logger) {
    self.volume = volume
    self.address = address
    self.channel = channel
    self.registry = registry
    self.logger = logger
  }

  /// The port actually bound (for `tcp:HOST:0`).
  public var boundPort: Int? { channel.localAddress?.port }

  public static func start(
    volume: Volume, address: ListenAddress, limits: ExportLimits = ExportLimits(), tls: ExportTLS? = nil,
    logger: Logger
  ) async throws -> NBDExportServer {
    let tlsContext = tls?.context
    let loop = volume.eventLoop
    let holder = ConnectionRegistry()
    let bootstrap = ServerBootstrap(group: loop, childGroup: loop)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .serverChannelOption(.backlog, value: 256)
      .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
      .childChannelInitializer { child in
        // Over a cap the connection is closed at once, before anything is read or written:
        // its descriptor comes back and nothing is logged per connection (only counted).
        let peer = child.remoteAddress?.ipAddress
        if let refusal = holder.admit(child, peer: peer, limits: limits) {
          volume.flow.refusedConnections += 1
          volume.logClientProblem(.notice, "NBD connection refused", ["reason": "\(refusal)"])
          return child.close()
        }
        // The slot is given back however the connection ends, even one that never became active.
        child.closeFuture.whenComplete { _ in holder.remove(child) }
        return child.eventLoop.makeCompletedFuture {
          try child.pipeline.syncOperations.addHandler(
            NBDConnectionHandler(
              volume: volume, handshake: true, logger: logger, handshakeTimeout: limits.handshakeTimeout,
              tls: tlsContext))
        }
      }
    let channel: Channel
    do {
      switch address {
      case .unix(let path):
        if try address.checkAvailable() {
          // A socket left by a process that is gone may be replaced; a live one may not.
          unlink(path)
        }
        channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
      case .tcp(let host, let port):
        channel = try await bootstrap.bind(host: host, port: port).get()
      }
    } catch let e as BridgeError {
      throw e
    } catch {
      throw BridgeError(listenFailureCode(error), "cannot listen on \(address): \(plainDescription(of: error))")
    }
    return NBDExportServer(volume: volume, address: address, channel: channel, registry: holder, logger: logger)
  }

  /// Stops accepting, lets in-flight requests finish (up to `timeout`), closes the
  /// connections and removes a Unix socket.
  public func stop(timeout: TimeAmount = .seconds(10)) async {
    try? await channel.close().get()
    let deadline = NIODeadline.now() + timeout
    // Each connection takes no new request and closes once its replies are written.
    for c in registry.all() {
      c.pipeline.fireUserInboundEventTriggered(NBDConnectionHandler.Drain())
    }
    while NIODeadline.now() < deadline, registry.all().contains(where: { $0.isActive }) {
      try? await Task.sleep(nanoseconds: 20_000_000)
    }
    for c in registry.all() { try? await c.close().get() }
    if case .unix(let path) = address { try? FileManager.default.removeItem(atPath: path) }
  }
}

/// What an export admits: connections at once, per peer address (TCP), and how long a
/// client may take to finish the handshake (QEMU's NBD server allows 10 s).
public struct ExportLimits: Sendable, Equatable {
  public var maxConnections = 64
  public var maxConnectionsPerPeer = 16
  public var handshakeTimeout: TimeAmount = .seconds(10)
  public init() {}
}

/// The export's connections (their channels' loops may differ from the caller's: locked).
final class ConnectionRegistry: Sendable {
  private struct State {
    var channels: [ObjectIdentifier: (channel: Channel, peer: String?)] = [:]
    var perPeer: [String: Int] = [:]
  }
  private let state = NIOLockedValueBox(State())

  /// Registers `c`, or says why it is refused.
  func admit(_ c: Channel, peer: String?, limits: ExportLimits) -> String? {
    state.withLockedValue { s in
      guard s.channels.count < limits.maxConnections else {
        return "the export has \(limits.maxConnections) connections (its cap)"
      }
      if let peer {
        guard s.perPeer[peer, default: 0] < limits.maxConnectionsPerPeer else {
          return "\(peer) has \(limits.maxConnectionsPerPeer) connections (the cap per peer)"
        }
        s.perPeer[peer, default: 0] += 1
      }
      s.channels[ObjectIdentifier(c)] = (c, peer)
      return nil
    }
  }

  func remove(_ c: Channel) {
    state.withLockedValue { s in
      guard let entry = s.channels.removeValue(forKey: ObjectIdentifier(c)), let peer = entry.peer else { return }
      s.perPeer[peer]! -= 1
      if s.perPeer[peer] == 0 { s.perPeer[peer] = nil }
    }
  }

  func all() -> [Channel] { state.withLockedValue { $0.channels.values.map(\.channel) } }
  var count: Int { state.withLockedValue { $0.channels.count } }
}

/// True when something accepts connections on the Unix socket at `path`.
extension ListenAddress {
  /// Throws (busy) when the address is taken: a Unix socket a live process listens on, a
  /// path that is something other than a socket (never removed), a TCP port bound by
  /// someone else. `serve` asks before it logs in, so a wrong address costs no login.
  /// True when a stale socket (its process gone) is there, to be replaced.
  @discardableResult
  public func checkAvailable() throws -> Bool {
    switch self {
    case .unix(let path):
      var st = stat()
      guard lstat(path, &st) == 0 else { return false }
      guard st.st_mode & S_IFMT == S_IFSOCK else {
        throw BridgeError(.busy, "cannot listen on \(self): \(path) exists and is not a socket")
      }
      if isListening(unixPath: path) {
        throw BridgeError(.busy, "\(path) is in use by another process")
      }
      return true
    case .tcp(let host, let port):
      let address: SocketAddress
      do {
        address = try SocketAddress.makeAddressResolvingHost(host, port: port)
      } catch {
        throw BridgeError(.usage, "cannot listen on \(self): \(plainDescription(of: error))")
      }
      let family: Int32 = address.protocol == .inet6 ? AF_INET6 : AF_INET
      let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
      guard fd >= 0 else { return false }
      defer { close(fd) }
      // As the server will bind: with SO_REUSEADDR (NIO's default), so a port in
      // TIME_WAIT is not taken for busy.
      var one: Int32 = 1
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
      let rc = address.withSockAddr { bind(fd, $0, socklen_t($1)) }
      if rc != 0 {
        let code = errno
        throw BridgeError(
          code == EADDRINUSE ? .busy : .system, "cannot listen on \(self): \(String(cString: strerror(code)).lowercased())")
      }
      return false
    }
  }
}

func isListening(unixPath path: String) -> Bool {
  let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
  guard fd >= 0 else { return false }
  defer { close(fd) }
  var addr = sockaddr_un()
  addr.sun_family = sa_family_t(AF_UNIX)
  let bytes = Array(path.utf8)
  guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
  withUnsafeMutableBytes(of: &addr.sun_path) { raw in
    for (i, b) in bytes.enumerated() { raw[i] = b }
  }
  let rc = withUnsafePointer(to: &addr) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
  }
  return rc == 0
}

/// An address in use is busy (exit status 28); anything else is a failure of the system.
func listenFailureCode(_ error: Error) -> BridgeError.Code {
  (error as? IOError)?.errnoCode == EADDRINUSE ? .busy : .system
}
