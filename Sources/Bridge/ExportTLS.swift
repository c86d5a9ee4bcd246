import FoundationEssentials
import Glibc
import ISCSIProtocol
import NIOSSL

/// TLS for the socket export, as `qemu-nbd --tls-creds` with x509 credentials: a
/// directory holding `ca-cert.pem`, `server-cert.pem` and `server-key.pem` (the layout of
/// QEMU's tls-creds-x509 and of libnbd's `tls-certificates=DIR`). Clients must present a
/// certificate signed by `ca-cert.pem`; TLS 1.2 at least.
public struct ExportTLS: Sendable {
  public let directory: String
  let context: NIOSSLContext

  public init(directory: String) throws {
    self.directory = directory
    func file(_ name: String) throws -> String {
      let path = FilePath.join(directory, name)
      guard FileManager.default.isReadableFile(atPath: path) else {
        throw BridgeError(.config, "--tls-certificates \(directory): \(name) is missing or not readable")
      }
      return path
    }
    do {
      let ca = try NIOSSLCertificate.fromPEMFile(try file("ca-cert.pem"))
      let chain = try NIOSSLCertificate.fromPEMFile(try file("server-cert.pem"))
      let key = try NIOSSLPrivateKey(file: try file("server-key.pem"), format: .pem)
      var config = TLSConfiguration.makeServerConfiguration(
        certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
      config.minimumTLSVersion = .tlsv12
      config.trustRoots = .certificates(ca)
      // Client certificates are required and checked against the CA (no host name: the
      // client's address says nothing about who it is).
      config.certificateVerification = .noHostnameVerification
      context = try NIOSSLContext(configuration: config)
    } catch let e as BridgeError {
      throw e
    } catch {
      throw BridgeError(.config, "--tls-certificates \(directory)", cause: error)
    }
  }
}

extension ListenAddress {
  /// Whether only this machine can reach the address: a Unix socket, or TCP on a loopback
  /// address (127.0.0.0/8, ::1, localhost).
  public var isLocalOnly: Bool {
    switch self {
    case .unix: return true
    case .tcp(let host, _):
      return host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
  }

  /// Serving the LUN unauthenticated to a network needs the user's explicit word.
  public func checkExposure(tls: Bool, insecure: Bool) throws {
    guard !isLocalOnly, !tls, !insecure else { return }
    throw BridgeError(
      .usage,
      "--listen \(self) serves the LUN to anyone who can reach it: give --tls-certificates DIR (client certificates required), or --insecure to serve it without TLS"
    )
  }
}
