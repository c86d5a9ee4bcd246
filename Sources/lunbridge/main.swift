import ArgumentParser
import Bridge
import Foundation
import ISCSIInitiator
import ISCSIProtocol
import Logging
import NIOCore
import NIOPosix

/// Options every command that logs in to a target shares.
struct LoginOptions: ParsableArguments {
  @Option(help: "Initiator IQN (default: /etc/iscsi/initiatorname.iscsi, else /etc/lunbridge/initiatorname).")
  var initiatorName: String?

  @Option(help: "CHAP user name (the target authenticates us).")
  var chapUser: String?

  @Option(help: "File holding the CHAP secret (mode 600).")
  var chapSecretFile: String?

  @Option(help: "Mutual CHAP: the user name the target answers with.")
  var mutualUser: String?

  @Option(help: "Mutual CHAP: file holding the target's secret (mode 600).")
  var mutualSecretFile: String?

  @Option(help: "CHAP algorithms to offer, in order: md5, sha1, sha256 (comma-separated).")
  var chapAlgorithms: String = "md5"

  @Option(help: "Header digest: none, crc32c, or a preference list such as crc32c,none.")
  var headerDigest: String = "none"

  @Option(help: "Data digest: none, crc32c, or a preference list such as crc32c,none.")
  var dataDigest: String = "none"

  @Option(help: "Seconds allowed for connecting and logging in.")
  var loginTimeout: Int = 15

  @Flag(name: .shortAndLong, help: "Log protocol events to stderr.")
  var verbose = false

  func digests(_ text: String, option: String) throws -> [Digest] {
    try text.split(separator: ",").map {
      switch $0.lowercased() {
      case "none": return .none
      case "crc32c": return .crc32c
      default: throw ValidationError("--\(option): unknown digest '\($0)' (use none or crc32c)")
      }
    }
  }

  func algorithms() throws -> [CHAPAlgorithm] {
    try chapAlgorithms.split(separator: ",").map {
      switch $0.lowercased() {
      case "md5": return .md5
      case "sha1": return .sha1
      case "sha256", "sha-256": return .sha256
      default: throw ValidationError("--chap-algorithms: unknown algorithm '\($0)' (use md5, sha1, sha256)")
      }
    }
  }

  /// Builds the session settings for `portal`; `urlUser`/`urlPassword` come from the URL.
  func sessionConfiguration(
    portal: Portal, targetName: String?, urlUser: String?, urlPassword: String?
  ) throws -> SessionConfiguration {
    let name = try initiatorName ?? InitiatorName.resolve()
    var chap: CHAPConfiguration? = nil
    let user = chapUser ?? urlUser
    if let user {
      let secret: [UInt8]
      if let file = chapSecretFile {
        secret = try SecretFile.read(file)
      } else if let urlPassword {
        secret = Array(urlPassword.utf8)
      } else {
        throw ValidationError("CHAP user '\(user)' given without a secret: add --chap-secret-file FILE")
      }
      var mutual: (username: String, secret: [UInt8])? = nil
      if let mu = mutualUser {
        guard let mf = mutualSecretFile else {
          throw ValidationError("--mutual-user needs --mutual-secret-file")
        }
        mutual = (mu, try SecretFile.read(mf))
      } else if mutualSecretFile != nil {
        throw ValidationError("--mutual-secret-file needs --mutual-user")
      }
      chap = try CHAPConfiguration(username: user, secret: secret, algorithms: algorithms(), mutual: mutual)
    } else if chapSecretFile != nil || mutualUser != nil {
      throw ValidationError("--chap-secret-file and --mutual-user need --chap-user")
    }
    let login = LoginConfiguration(
      initiatorName: name, targetName: targetName, chap: chap,
      headerDigest: try digests(headerDigest, option: "header-digest"),
      dataDigest: try digests(dataDigest, option: "data-digest"))
    var config = SessionConfiguration(portal: portal, login: login)
    config.loginTimeout = .seconds(Int64(loginTimeout))
    // A command-line tool fails fast instead of waiting for a lost target to return.
    config.recoveryTimeout = .seconds(Int64(loginTimeout))
    return config
  }
}

func makeLogger(verbose: Bool) -> Logger {
  LoggingSystem.bootstrap { label in
    var h = StreamLogHandler.standardError(label: label)
    h.logLevel = verbose ? .debug : .warning
    return h
  }
  return Logger(label: "lunbridge")
}

func printJSON(_ value: some Encodable) throws {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
  print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

struct Discover: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "List the targets and portals a portal reports (SendTargets).")

  @Argument(help: "Portal: HOST[:PORT], IPv6 as [ADDR]:PORT.")
  var portal: String

  @OptionGroup var options: LoginOptions

  @Flag(help: "Print JSON.")
  var json = false

  func run() async throws {
    let logger = makeLogger(verbose: options.verbose)
    let portal = try Portal(parsing: portal.hasPrefix("iscsi://") ? String(portal.dropFirst(8).prefix { $0 != "/" }) : portal)
    let config = try options.sessionConfiguration(portal: portal, targetName: nil, urlUser: nil, urlPassword: nil)
    let group = MultiThreadedEventLoopGroup.singleton
    let targets = try await Discovery.sendTargets(config, on: group.next(), logger: logger)
    if json {
      try printJSON(targets)
    } else {
      for t in targets {
        for p in t.portals { print("\(p.address),\(p.portalGroupTag ?? 1) \(t.name)") }
      }
    }
  }
}

struct Info: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Log in to a LUN and show what it is and what the session negotiated.")

  @Argument(help: "iscsi://[USER@]HOST[:PORT]/TARGET-IQN/LUN")
  var url: String

  @OptionGroup var options: LoginOptions

  @Flag(help: "Print JSON.")
  var json = false

  func run() async throws {
    let logger = makeLogger(verbose: options.verbose)
    let url = try ISCSIURL(parsing: url)
    if url.passwordInURL {
      warn("the CHAP secret in the URL shows in ps and shell history; use --chap-secret-file")
    }
    let config = try options.sessionConfiguration(
      portal: url.portal, targetName: url.targetName, urlUser: url.user, urlPassword: url.password)
    let group = MultiThreadedEventLoopGroup.singleton
    let session = try await ISCSISession.connect(config, on: group.next(), logger: logger)
    do {
      let unit = try await LogicalUnit.open(session: session, lun: url.lun)
      let info = unit.info
      let negotiated = session.parameters?.summary ?? []
      await session.close()
      if json {
        try printJSON(InfoReport(url: url.description, lun: info, session: Dictionary(uniqueKeysWithValues: negotiated)))
      } else {
        print(info.text(url: url.description))
        print("Session:")
        for (k, v) in negotiated { print("  \(k): \(v)") }
      }
    } catch {
      await session.close()
      throw error
    }
  }
}

/// Blocks until SIGINT or SIGTERM arrives.
func waitForTerminationSignal() async -> Int32 {
  await withCheckedContinuation { (cont: CheckedContinuation<Int32, Never>) in
    let queue = DispatchQueue(label: "lunbridge.signals")
    var sources: [DispatchSourceSignal] = []
    let once = OnceFlag()
    for sig in [SIGINT, SIGTERM] {
      signal(sig, SIG_IGN)
      let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
      source.setEventHandler {
        if once.set() { cont.resume(returning: sig) }
      }
      source.resume()
      sources.append(source)
    }
    signalSources = sources
  }
}

nonisolated(unsafe) var signalSources: [DispatchSourceSignal] = []

final class OnceFlag: @unchecked Sendable {
  private let lock = NSLock()
  private var done = false
  func set() -> Bool { lock.withLock { if done { return false }; done = true; return true } }
}

/// Logs in to the LUN of `url` and opens it: what serve and attach share.
func openVolume(url text: String, options: LoginOptions, readOnly: Bool, logger: Logger) async throws -> Volume {
  let url = try ISCSIURL(parsing: text)
  if url.passwordInURL {
    warn("the CHAP secret in the URL shows in ps and shell history; use --chap-secret-file")
  }
  var config = try options.sessionConfiguration(
    portal: url.portal, targetName: url.targetName, urlUser: url.user, urlPassword: url.password)
  config.recoveryTimeout = .seconds(120)
  let session = try await ISCSISession.connect(config, on: MultiThreadedEventLoopGroup.singleton.next(), logger: logger)
  do {
    let unit = try await LogicalUnit.open(session: session, lun: url.lun)
    return try Volume(unit: unit, readOnly: readOnly, logger: logger)
  } catch {
    await session.close()
    throw error
  }
}

struct Serve: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Serve a LUN as an NBD export on a socket until SIGINT or SIGTERM.")

  @Argument(help: "iscsi://[USER@]HOST[:PORT]/TARGET-IQN/LUN")
  var url: String

  @Option(help: "unix:PATH or tcp:[HOST:]PORT (default host 127.0.0.1).")
  var listen: String

  @Flag(help: "Refuse writes.")
  var readOnly = false

  @OptionGroup var options: LoginOptions

  func run() async throws {
    let logger = makeLogger(verbose: options.verbose)
    let address = try ListenAddress(parsing: listen)
    let volume = try await openVolume(url: url, options: options, readOnly: readOnly, logger: logger)
    let server = try await NBDExportServer.start(volume: volume, address: address, logger: logger)
    var shown = address
    if case .tcp(let h, 0) = address, let p = server.boundPort { shown = .tcp(host: h, port: p) }
    FileHandle.standardError.write(Data("lunbridge: serving \(url) at \(shown.uri)\n".utf8))
    let sig = await waitForTerminationSignal()
    logger.notice("stopping", metadata: ["signal": "\(sig)"])
    await server.stop()
    try? await volume.unit.synchronizeCache().get()
    await volume.unit.session.close()
  }
}

struct InfoReport: Encodable {
  var url: String
  var lun: LUNInfo
  var session: [String: String]

  enum CodingKeys: String, CodingKey { case url, session }

  func encode(to encoder: Encoder) throws {
    try lun.encode(to: encoder)  // LUN keys at the top level (sizeBytes, blockSize, ...)
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(url, forKey: .url)
    try c.encode(session, forKey: .session)
  }
}

func warn(_ message: String) {
  FileHandle.standardError.write(Data("lunbridge: warning: \(message)\n".utf8))
}

@main
struct Lunbridge: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "lunbridge",
    abstract: "A user-space iSCSI initiator that serves LUNs as NBD devices.",
    subcommands: [Discover.self, Info.self, Serve.self])

  /// One line `lunbridge: error: ...` and a non-zero exit for every failure; usage
  /// errors keep ArgumentParser's help text.
  static func main() async {
    do {
      var command = try parseAsRoot()
      if var async = command as? AsyncParsableCommand {
        try await async.run()
      } else {
        try command.run()
      }
    } catch let error as ISCSIError {
      fail(error.description)
    } catch let error as ISCSIURLError {
      fail(error.description)
    } catch let error as SCSIOperationError {
      fail(error.description)
    } catch let error as BridgeError {
      fail(error.description)
    } catch {
      exit(withError: error)
    }
  }

  static func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("lunbridge: error: \(message)\n".utf8))
    Foundation.exit(1)
  }
}
