import ArgumentParser
import Bridge
import CBuildInfo
import Dispatch
import FoundationEssentials
import Glibc
import ISCSIInitiator
import ISCSIProtocol
import Logging
import Multipath
import NBDKernel
import NIOConcurrencyHelpers
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

  @Option(help: "CHAP algorithms to offer, in order: md5, sha1, sha256 (comma-separated; default md5).")
  var chapAlgorithms: String?

  @Option(help: "Header digest: none, crc32c, or a preference list such as crc32c,none (default none).")
  var headerDigest: String?

  @Option(help: "Data digest: none, crc32c, or a preference list such as crc32c,none (default none).")
  var dataDigest: String?

  @Option(help: "Seconds allowed for connecting and logging in (default 15).")
  var loginTimeout: Int?

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

  func algorithms(_ chapAlgorithms: String) throws -> [CHAPAlgorithm] {
    try chapAlgorithms.split(separator: ",").map {
      switch $0.lowercased() {
      case "md5": return .md5
      case "sha1": return .sha1
      case "sha256", "sha-256": return .sha256
      default: throw ValidationError("--chap-algorithms: unknown algorithm '\($0)' (use md5, sha1, sha256)")
      }
    }
  }

  /// Parses `text` and builds the session settings for its LUN, warning once about a
  /// password in the URL: what info, serve and attach share.
  func sessionConfiguration(url text: String, volume: VolumeConfig? = nil) throws -> (ISCSIURL, SessionConfiguration) {
    let url = try ISCSIURL(parsing: text)
    if url.passwordInURL {
      warn("the CHAP secret in the URL shows in ps and shell history; use --chap-secret-file")
    }
    let config = try sessionConfiguration(
      portal: url.portal, targetName: url.targetName, urlUser: url.user, urlPassword: url.password, volume: volume)
    return (url, config)
  }

  /// Builds the session settings for `portal`; `urlUser`/`urlPassword` come from the URL,
  /// the rest from these options, then the volume file (if any), then the defaults.
  func sessionConfiguration(
    portal: Portal, targetName: String?, urlUser: String?, urlPassword: String?, volume: VolumeConfig? = nil
  ) throws -> SessionConfiguration {
    let given = try initiatorName ?? volume?.initiatorName ?? InitiatorName.resolve()
    if let problem = ISCSIName.problem(given) {
      let source =
        initiatorName != nil
        ? "--initiator-name"
        : volume?.initiatorName != nil
          ? "initiator_name" : "InitiatorName in \(InitiatorName.openISCSIFile) or \(InitiatorName.lunbridgeFile)"
      throw BridgeError(initiatorName != nil ? .usage : .config, "\(source): \(problem)")
    }
    let name = ISCSIName.normalized(given)
    var chap: CHAPConfiguration? = nil
    let user = chapUser ?? urlUser ?? volume?.chapUser
    let secretFile = try chapSecretFile ?? volume?.secretPath("chap_secret_file")
    let mutualName = mutualUser ?? volume?.mutualUser
    let mutualFile = try mutualSecretFile ?? volume?.secretPath("mutual_secret_file")
    if let user {
      let secret: [UInt8]
      if let file = secretFile {
        secret = try SecretFile.read(file)
      } else if let urlPassword {
        secret = Array(urlPassword.utf8)
      } else {
        throw ValidationError("CHAP user '\(user)' given without a secret: add --chap-secret-file FILE")
      }
      var mutual: (username: String, secret: [UInt8])? = nil
      if let mu = mutualName {
        guard let mf = mutualFile else {
          throw ValidationError("--mutual-user needs --mutual-secret-file")
        }
        mutual = (mu, try SecretFile.read(mf))
      } else if mutualFile != nil {
        throw ValidationError("--mutual-secret-file needs --mutual-user")
      }
      let algorithms = try chapAlgorithms.map { try self.algorithms($0) } ?? volume?.chapAlgorithms ?? [.md5]
      chap = CHAPConfiguration(username: user, secret: secret, algorithms: algorithms, mutual: mutual)
    } else if secretFile != nil || mutualName != nil {
      throw ValidationError("--chap-secret-file and --mutual-user need --chap-user")
    }
    let login = LoginConfiguration(
      initiatorName: name, targetName: targetName, chap: chap,
      headerDigest: try headerDigest.map { try digests($0, option: "header-digest") } ?? volume?.headerDigest ?? [.none],
      dataDigest: try dataDigest.map { try digests($0, option: "data-digest") } ?? volume?.dataDigest ?? [.none])
    var config = SessionConfiguration(portal: portal, login: login)
    let seconds = loginTimeout ?? volume?.loginTimeout ?? 15
    config.loginTimeout = .seconds(Int64(seconds))
    // A command-line tool fails fast instead of waiting for a lost target to return.
    config.recoveryTimeout = .seconds(Int64(seconds))
    if let v = volume?.keepaliveInterval { config.keepaliveInterval = .seconds(Int64(v)) }
    if let v = volume?.keepaliveTimeout { config.keepaliveTimeout = .seconds(Int64(v)) }
    return config
  }
}

func makeLogger(verbose: Bool) -> Logger {
  LoggingSystem.bootstrap { label in
    // Notices (logins, path state changes, failovers) show on a terminal and in the
    // journal; --verbose adds protocol detail.
    StderrLogHandler(label: label, level: verbose ? .debug : .notice)
  }
  return Logger(label: "lunbridge")
}

func printJSON(_ value: some Encodable) throws {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
  print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

struct Discover: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "List the targets and portals a portal reports (SendTargets), and with --luns or --urls their LUNs.")

  @Argument(help: "Portal: HOST[:PORT], IPv6 as [ADDR]:PORT.")
  var portal: String

  @OptionGroup var options: LoginOptions

  @Flag(help: "Also log in to each target and list its LUNs: number, size, vendor and product, device identifier, URL.")
  var luns = false

  @Flag(help: "Print only a ready-to-use iscsi:// URL per LUN and portal (logs in to each target, as --luns).")
  var urls = false

  @Flag(help: "Print JSON.")
  var json = false

  func run() async throws {
    let logger = makeLogger(verbose: options.verbose)
    let asked = try Portal(parsing: portal.hasPrefix("iscsi://") ? String(portal.dropFirst(8).prefix { $0 != "/" }) : portal)
    let config = try options.sessionConfiguration(portal: asked, targetName: nil, urlUser: nil, urlPassword: nil)
    let group = MultiThreadedEventLoopGroup.singleton
    let targets = try await Discovery.sendTargets(config, on: group.next(), logger: logger)
    guard luns || urls else {
      if json {
        try printJSON(targets)
      } else {
        for t in targets {
          for p in t.portals { print("\(p.address),\(p.portalGroupTag ?? 1) \(t.name)") }
        }
      }
      return
    }
    var listings: [DiscoveredTarget] = []
    var firstFailure: Error?
    for t in targets {
      var entry = DiscoveredTarget(name: t.name, portals: t.portals, luns: [], error: nil)
      do {
        entry.luns = try await lunsOf(t, asked: asked, logger: logger)
      } catch {
        let failure = CommandFailure(error)?.message ?? "\(error)"
        warn("target \(t.name): cannot list its LUNs: \(failure)")
        entry.error = failure
        firstFailure = firstFailure ?? error
      }
      listings.append(entry)
    }
    if json {
      try printJSON(listings)
    } else if urls {
      for t in listings {
        for l in t.luns where l.error == nil { for u in l.urls { print(u) } }
      }
    } else {
      for t in listings {
        for p in t.portals { print("\(p.address),\(p.portalGroupTag ?? 1) \(t.name)") }
        for l in t.luns {
          if let error = l.error {
            print("    LUN \(l.lun)  \(error)")
          } else {
            let size = l.sizeBytes.map(humanSize) ?? "-"
            let what = [l.vendor, l.product].compactMap { $0 }.joined(separator: " ")
            print("    LUN \(l.lun)  \(size)  \(what)  \(l.deviceIdentifier ?? "-")  \(l.urls.first ?? "")")
          }
        }
      }
    }
    // Some target could not be asked: the command says so in its status too.
    if let firstFailure { throw firstFailure }
  }

  /// Logs in to the target (through the portal asked when the target lists it) and
  /// reads each LUN it reports.
  func lunsOf(_ target: TargetListing, asked: Portal, logger: Logger) async throws -> [DiscoveredLUN] {
    let addresses = target.portals.map(\.address)
    let via = addresses.contains(asked.description) ? asked : try Portal(parsing: addresses.first ?? asked.description)
    let config = try options.sessionConfiguration(portal: via, targetName: target.name, urlUser: nil, urlPassword: nil)
    let session = try await ISCSISession.connect(config, on: MultiThreadedEventLoopGroup.singleton.next(), logger: logger)
    do {
      var found: [DiscoveredLUN] = []
      for lun in try await LogicalUnit.reportLUNs(session: session) {
        var entry = DiscoveredLUN(lun: lun, urls: addresses.map { "iscsi://\($0)/\(target.name)/\(lun)" })
        do {
          let info = try await LogicalUnit.open(session: session, lun: lun).info
          entry.sizeBytes = info.sizeBytes
          entry.vendor = info.vendor
          entry.product = info.product
          entry.deviceIdentifier = info.deviceIdentifier
        } catch {
          // A controller LUN (tgtd's LUN 0) or one that does not answer: listed, not a disk.
          entry.error = CommandFailure(error)?.message ?? "\(error)"
        }
        found.append(entry)
      }
      await session.close()
      return found
    } catch {
      await session.close()
      throw error
    }
  }
}

struct DiscoveredTarget: Encodable {
  var name: String
  var portals: [TargetListing.PortalEntry]
  var luns: [DiscoveredLUN]
  var error: String?

  enum CodingKeys: String, CodingKey { case name, portals, luns, error }
  func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(name, forKey: .name)
    try c.encode(portals, forKey: .portals)
    try c.encode(luns, forKey: .luns)
    try c.encode(error, forKey: .error)
  }
}

struct DiscoveredLUN: Encodable {
  var lun: UInt16
  var urls: [String]
  var sizeBytes: UInt64?
  var vendor: String?
  var product: String?
  var deviceIdentifier: String?
  /// Why the LUN is not a disk lunbridge can serve (a controller LUN, no answer).
  var error: String?

  enum CodingKeys: String, CodingKey { case lun, urls, sizeBytes, vendor, product, deviceIdentifier, error }
  func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(lun, forKey: .lun)
    try c.encode(urls, forKey: .urls)
    try c.encode(sizeBytes, forKey: .sizeBytes)
    try c.encode(vendor, forKey: .vendor)
    try c.encode(product, forKey: .product)
    try c.encode(deviceIdentifier, forKey: .deviceIdentifier)
    try c.encode(error, forKey: .error)
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
    let (url, parsed) = try options.sessionConfiguration(url: url)
    var config = parsed
    // The URL's ?iface= / ?source= as serve and attach take them: one path can be tried
    // with info before it is attached.
    if let problem = PathURLProblem.check(url, first: nil) { throw BridgeError(.usage, "\(problem)") }
    config.interface = url.query["iface"]
    config.sourceAddress = url.query["source"]
    let group = MultiThreadedEventLoopGroup.singleton
    let session = try await ISCSISession.connect(config, on: group.next(), logger: logger)
    do {
      let unit: LogicalUnit
      do {
        unit = try await LogicalUnit.open(session: session, lun: url.lun)
      } catch let e as ISCSIError where e.code == .targetNotFound {
        // A wrong LUN: say which ones the target has.
        guard let luns = try? await LogicalUnit.reportLUNs(session: session) else { throw e }
        let list = luns.isEmpty ? "none" : luns.map(String.init).joined(separator: ", ")
        throw ISCSIError(.targetNotFound, "\(e.message); the target's LUNs: \(list)")
      }
      let info = unit.info
      let parameters = try await session.snapshot().get().parameters
      let negotiated = parameters?.summary ?? []
      await session.close()
      if json {
        try printJSON(InfoReport(url: url.description, lun: info, session: parameters.map(NegotiatedReport.init)))
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

/// SIGINT and SIGTERM are ignored for the rest of the process's life; `report` is called
/// with each one that arrives.
func ignoreTerminationSignals(_ report: @escaping @Sendable (Int32) -> Void) {
  let queue = DispatchQueue(label: "lunbridge.signals")
  for sig in [SIGINT, SIGTERM] {
    signal(sig, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
    source.setEventHandler { report(sig) }
    source.resume()
    signalSources.append(source)
  }
}

final class OnceFlag: Sendable {
  private let done = NIOLockedValueBox(false)
  func set() -> Bool {
    done.withLockedValue {
      if $0 { return false }
      $0 = true
      return true
    }
  }
}

/// SYNCHRONIZE CACHE before exiting, but never longer than `seconds`: a target that is
/// gone must not keep Ctrl-C or systemd's stop waiting for the recovery timeout.
func flushBeforeExit(_ volume: Volume, logger: Logger, seconds: Int64 = 10) async {
  let loop = volume.eventLoop
  let done = loop.makePromise(of: Void.self)
  let once = OnceFlag()
  volume.synchronizeCache().whenComplete { result in if once.set() { done.completeWith(result) } }
  loop.scheduleTask(in: .seconds(seconds)) {
    if once.set() { done.fail(BridgeError(.timeout, "no answer within \(seconds) s")) }
  }
  do {
    try await done.futureResult.get()
  } catch {
    logger.warning("could not flush the target's cache before exiting: \(error)")
  }
}

/// How a volume uses its paths: what serve and attach share.
struct PathOptions: ParsableArguments {
  @Option(help: "Path selector: service-time (default), queue-length, round-robin[:N] (N I/Os per turn), failover.")
  var policy: String?

  @Option(help: "When a better reinstated path takes I/O again: immediate (default), manual, or SECONDS after it recovered.")
  var failback: String?

  @Option(help: "Seconds I/O waits while every path is down before it fails with EIO (default 60; 0 fails at once).")
  var noPathRetry: Int?

  @Option(
    help:
      "With ALUA: seconds between re-reads of the target port groups' states (default 10; also after every state-change unit attention)."
  )
  var aluaCheckInterval: Int?

  @Option(help: "iSCSI sessions per URL (default 1).")
  var sessionsPerPath: Int?

  @Option(
    help:
      "Persistent reservation key (hexadecimal) to register on every path at start and keep registered, as multipath.conf's reservation_key."
  )
  var reservationKey: String?

  @Option(help: "Seconds between NOP-Out pings on a quiet connection (default 2).")
  var keepaliveInterval: Int?

  @Option(help: "Seconds without an answer before a path counts as failed (default 2).")
  var keepaliveTimeout: Int?

  @Option(help: "Seconds a SCSI command may take before its path counts as failed (default 30).")
  var commandTimeout: Int?

  @Flag(help: "Add a path for every other portal the target reports in SendTargets discovery.")
  var discoverPortals = false

  func validate() throws {
    if let n = sessionsPerPath, !(1...16).contains(n) {
      throw ValidationError("--sessions-per-path must be between 1 and 16")
    }
    if let n = noPathRetry, n < 0 { throw ValidationError("--no-path-retry must be 0 or more seconds") }
    if let n = aluaCheckInterval, !(1...3600).contains(n) {
      throw ValidationError("--alua-check-interval must be between 1 and 3600 seconds")
    }
    for (name, value) in [
      ("keepalive-interval", keepaliveInterval), ("keepalive-timeout", keepaliveTimeout),
      ("command-timeout", commandTimeout),
    ] {
      if let v = value, !(1...3600).contains(v) { throw ValidationError("--\(name) must be between 1 and 3600 seconds") }
    }
    _ = try selectorPolicy(volume: nil)
    _ = try failbackPolicy(volume: nil)
    if let reservationKey, VolumeConfig.parseReservationKey(reservationKey) == nil {
      throw ValidationError("--reservation-key '\(reservationKey)' is not a non-zero key of up to 16 hexadecimal digits")
    }
  }

  func selectorPolicy(volume: VolumeConfig?) throws -> SelectorPolicy {
    if let policy {
      guard let p = SelectorPolicy(argument: policy) else {
        throw ValidationError(
          "unknown --policy '\(policy)': use service-time, queue-length, round-robin, round-robin:N or failover")
      }
      return p
    }
    return volume.flatMap { SelectorPolicy(argument: $0.policy.rawValue) } ?? .serviceTime
  }

  func failbackPolicy(volume: VolumeConfig?) throws -> FailbackPolicy {
    guard let failback = failback ?? volume?.failback else { return .immediate }
    switch failback {
    case "immediate": return .immediate
    case "manual": return .manual
    default:
      guard let n = Int64(failback), n >= 0 else {
        throw ValidationError("unknown --failback '\(failback)': use immediate, manual or a number of seconds")
      }
      return n == 0 ? .immediate : .deferred(seconds: n)
    }
  }

  func volumeOptions(name: String, readOnly: Bool, volume: VolumeConfig?) throws -> VolumeOptions {
    var o = VolumeOptions()
    o.name = name
    o.readOnly = readOnly
    o.multipath.policy = try selectorPolicy(volume: volume)
    o.multipath.failback = try failbackPolicy(volume: volume)
    o.multipath.noPathRetry = .seconds(Int64(noPathRetry ?? volume?.noPathRetry ?? VolumeConfig.Defaults.noPathRetry))
    o.multipath.portGroupCheckInterval = .seconds(
      Int64(aluaCheckInterval ?? volume?.aluaCheckInterval ?? VolumeConfig.Defaults.aluaCheckInterval))
    o.reservationKey = try reservationKey.flatMap(VolumeConfig.parseReservationKey) ?? volume?.resolvedReservationKey()
    return o
  }
}

/// Builds one `PathSpec` per URL and session: the URL's `?iface=`/`?source=` bind it to a
/// NIC or address; URLs in the order given form the failover groups (first = preferred).
///
/// `identity` (the volume's name, or its device) makes each session's ISID stable across
/// restarts; without one (a serve with no --name) ISIDs are random, so two such processes
/// on one LU never take each other's sessions over.
func pathSpecs(
  urls texts: [String], options: LoginOptions, paths: PathOptions, volume: VolumeConfig?, identity: String?,
  logger: Logger
) async throws -> [PathSpec] {
  var urls: [ISCSIURL] = []
  for text in texts {
    let url = try ISCSIURL(parsing: text)
    if url.passwordInURL && !urls.contains(where: \.passwordInURL) {
      warn("the CHAP secret in the URL shows in ps and shell history; use --chap-secret-file")
    }
    if let problem = PathURLProblem.check(url, first: urls.first) { throw BridgeError(.usage, "\(problem)") }
    urls.append(url)
  }
  if paths.discoverPortals, let first = urls.first {
    urls += try await discoveredPortals(for: first, known: urls, options: options, logger: logger)
  }
  var specs: [PathSpec] = []
  for (index, url) in urls.enumerated() {
    for session in 0..<(paths.sessionsPerPath ?? volume?.sessionsPerPath ?? VolumeConfig.Defaults.sessionsPerPath) {
      var config = try options.sessionConfiguration(
        portal: url.portal, targetName: url.targetName, urlUser: url.user, urlPassword: url.password, volume: volume)
      if let identity, !identity.isEmpty {
        // The path is its portal, LU and NIC, not its place in the list: reordering the
        // URLs keeps every ISID.
        let key = [
          identity, config.login.initiatorName, url.targetName, "\(url.portal)", "\(url.lun)",
          url.query["iface"] ?? "", url.query["source"] ?? "", "\(session)",
        ]
        config.login.isid = LoginConfiguration.stableISID(identity: key.joined(separator: "\u{0}"))
      }
      config.interface = url.query["iface"]
      config.sourceAddress = url.query["source"]
      typealias D = VolumeConfig.Defaults
      config.keepaliveInterval = .seconds(Int64(paths.keepaliveInterval ?? volume?.keepaliveInterval ?? D.keepaliveInterval))
      config.keepaliveTimeout = .seconds(Int64(paths.keepaliveTimeout ?? volume?.keepaliveTimeout ?? D.keepaliveTimeout))
      config.commandTimeout = .seconds(Int64(paths.commandTimeout ?? volume?.commandTimeout ?? D.commandTimeout))
      specs.append(PathSpec(url: url, configuration: config, group: index, priority: 0))
    }
  }
  return specs
}

/// SendTargets through the first URL's portal: every other portal of the same target.
func discoveredPortals(for url: ISCSIURL, known: [ISCSIURL], options: LoginOptions, logger: Logger) async throws
  -> [ISCSIURL]
{
  let config = try options.sessionConfiguration(
    portal: url.portal, targetName: nil, urlUser: url.user, urlPassword: url.password)
  let listing = try await Discovery.sendTargets(config, on: MultiThreadedEventLoopGroup.singleton.next(), logger: logger)
  var out: [ISCSIURL] = []
  for target in listing where target.name == url.targetName {
    for entry in target.portals {
      guard let portal = try? Portal(parsing: entry.address) else { continue }
      if known.contains(where: { $0.portal == portal }) || out.contains(where: { $0.portal == portal }) { continue }
      var u = url
      u.portal = portal
      out.append(u)
    }
  }
  return out
}

/// Logs in on every path and opens the volume: what serve and attach share.
func openVolume(
  urls: [String], options: LoginOptions, paths: PathOptions, name: String, identity: String?, readOnly: Bool,
  logger: Logger, volume: VolumeConfig? = nil, maxInflightBytes: Int? = nil
) async throws -> Volume {
  let specs = try await pathSpecs(
    urls: urls, options: options, paths: paths, volume: volume, identity: identity, logger: logger)
  var volumeOptions = try paths.volumeOptions(name: name, readOnly: readOnly, volume: volume)
  if let maxInflightBytes { volumeOptions.maxBytesInFlight = maxInflightBytes }
  return try await Volume.open(paths: specs, options: volumeOptions, logger: logger)
}

/// The control socket (`lunbridge status`, `lunbridge reload`) and, if asked, the
/// Prometheus endpoint of one running volume. Neither is essential to serving I/O: a
/// failure to start them is a warning.
struct Observability {
  var control: ControlServer?
  var metrics: MetricsServer?

  static func start(
    name: String, volume: Volume, device: String?, export: String?, metrics address: String?,
    reload: (@Sendable () -> EventLoopFuture<String>)?, logger: Logger
  ) async throws -> Observability {
    var o = Observability()
    let report: @Sendable () -> EventLoopFuture<VolumeStatusReport> = {
      volume.report(device: device, export: export)
    }
    do {
      o.control = try await ControlServer.start(
        name: name, report: report, reload: reload, failback: { volume.failback() },
        rescan: { volume.rescan(reason: "lunbridge rescan") }, reservation: { volume.persistentReservation($0) },
        logger: logger)
    } catch {
      logger.warning("no control socket, so no `lunbridge status` for this volume: \(error)")
    }
    if let address {
      // An explicit request: failing to serve it is an error (and removes the control socket).
      let server: MetricsServer
      do {
        server = try await MetricsServer.start(listen: address, reports: { report().map { [$0] } }, logger: logger)
      } catch {
        await o.control?.stop()
        throw error
      }
      logger.notice("metrics at http://\(server.host):\(server.boundPort ?? server.port)/metrics")
      o.metrics = server
    }
    return o
  }

  func stop() async {
    await control?.stop()
    await metrics?.stop()
  }
}

struct Serve: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Serve a LUN as an NBD export on a socket until SIGINT or SIGTERM.")

  @Argument(
    help:
      "iscsi://[USER@]HOST[:PORT]/TARGET-IQN/LUN[?iface=NIC|?source=ADDR] (one per path), or the NAME of /etc/lunbridge/volumes/NAME.toml, or a volume file's path"
  )
  var urls: [String]

  @Option(help: "unix:PATH or tcp:[HOST:]PORT (default host 127.0.0.1).")
  var listen: String

  @Option(help: "Name of the volume in status and metrics (default serve-PID).")
  var name: String?

  @Option(help: "Serve Prometheus metrics over HTTP at tcp:[HOST:]PORT (default host 127.0.0.1).")
  var metrics: String?

  @Flag(help: "Refuse writes.")
  var readOnly = false

  @Option(help: "Export connections at once; more are closed as they arrive (default 64).")
  var maxConnections: Int?

  @Option(help: "Export connections at once from one TCP peer address (default 16).")
  var maxConnectionsPerPeer: Int?

  @Option(help: "Seconds a client may take to finish the NBD handshake (default 10).")
  var handshakeTimeout: Int?

  @Option(help: "MiB of requests and unsent replies held for all clients; past it clients wait (default 256).")
  var maxInflightMib: Int?

  @Option(help: "Append log lines to this file instead of stderr.")
  var logFile: String?

  @Option(
    help: ArgumentHelp(
      "Require TLS with client certificates: DIR holds ca-cert.pem, server-cert.pem, server-key.pem (as qemu-nbd --tls-creds).",
      valueName: "DIR"))
  var tlsCertificates: String?

  @Flag(help: "Allow --listen on a non-loopback TCP address without TLS (anyone who reaches it can use the LUN).")
  var insecure = false

  @Option(
    help: "Permissions of a unix: export socket, in octal, e.g. 660 with --socket-group (default: only its owner may connect).")
  var socketMode: String?

  @Option(help: "Group of a unix: export socket (a name or a number), e.g. kvm or libvirt-qemu for a non-root QEMU.")
  var socketGroup: String?

  @OptionGroup var paths: PathOptions

  @OptionGroup var options: LoginOptions

  func exportLimits() throws -> ExportLimits {
    var l = ExportLimits()
    if let n = maxConnections {
      guard n >= 1 else { throw BridgeError(.usage, "--max-connections must be at least 1") }
      l.maxConnections = n
    }
    if let n = maxConnectionsPerPeer {
      guard n >= 1 else { throw BridgeError(.usage, "--max-connections-per-peer must be at least 1") }
      l.maxConnectionsPerPeer = n
    }
    if let n = handshakeTimeout {
      guard n >= 1 else { throw BridgeError(.usage, "--handshake-timeout must be at least 1 second") }
      l.handshakeTimeout = .seconds(Int64(n))
    }
    return l
  }

  func run() async throws {
    if let logFile { try LogOutput.useFile(logFile) }
    let logger = makeLogger(verbose: options.verbose)
    let address = try ListenAddress(parsing: listen)
    try address.checkExposure(tls: tlsCertificates != nil, insecure: insecure)
    let socketAccess = try SocketAccess(mode: socketMode, group: socketGroup, address: address)
    let tls = try tlsCertificates.map { try ExportTLS(directory: $0) }
    let limits = try exportLimits()
    if let m = maxInflightMib, m < 33 {
      throw BridgeError(.usage, "--max-inflight-mib must be at least 33 (one 32 MiB request and room for others)")
    }
    let memoryLocked = ServingProcess.prepare(logger: logger)
    // A volume NAME (its file's paths and settings, as attach NAME takes them) or URLs.
    if urls.count > 1, let bad = urls.first(where: { !$0.lowercased().hasPrefix("iscsi://") }) {
      throw ValidationError("'\(bad)': several paths must all be iscsi:// URLs (a volume NAME stands alone)")
    }
    let volumeFile =
      urls[0].lowercased().hasPrefix("iscsi://")
      ? nil : urls[0].contains("/") ? try VolumeConfig.check(path: urls[0]) : try VolumeConfig.check(name: urls[0])
    let urls = volumeFile.map { $0.paths.map(\.description) } ?? urls
    let name = name ?? volumeFile?.name
    let url = urls[0]
    if let name { try ControlServer.refuseIfServed(name: name) }
    // Before logging in: a listen address that is taken costs no login.
    try address.checkAvailable()
    let volume = try await openVolume(
      urls: urls, options: options, paths: paths, name: name ?? "serve-\(getpid())", identity: name,
      readOnly: readOnly || (volumeFile?.readOnly ?? false), logger: logger, volume: volumeFile,
      maxInflightBytes: maxInflightMib.map { $0 << 20 })
    let server: NBDExportServer
    let observability: Observability
    var shown = address
    do {
      server = try await NBDExportServer.start(
        volume: volume, address: address, limits: limits, tls: tls, logger: logger)
      if case .tcp(let h, 0) = address, let p = server.boundPort { shown = .tcp(host: h, port: p) }
      do {
        observability = try await Observability.start(
          name: volume.options.name, volume: volume, device: nil, export: shown.uri(tls: tls != nil),
          metrics: metrics ?? volumeFile?.metrics, reload: nil,
          logger: logger)
      } catch {
        await server.stop(timeout: .seconds(1))
        throw error
      }
    } catch {
      // A failed start leaves nothing behind: no socket, no session on the target.
      await volume.close()
      throw error
    }
    ServingProcess.releaseStartupCode(locked: memoryLocked, logger: logger)
    if let socketAccess, case .unix(let path) = address {
      do {
        try socketAccess.apply(to: path)
      } catch {
        await observability.stop()
        await server.stop(timeout: .seconds(1))
        await volume.close()
        throw error
      }
    }
    LogOutput.writeStandardError("lunbridge: serving \(url) at \(shown.uri(tls: tls != nil))\n")
    let sig = await waitForTerminationSignal()
    logger.notice("stopping", metadata: ["signal": "\(sig)"])
    await observability.stop()
    await server.stop()
    await flushBeforeExit(volume, logger: logger)
    await volume.close()
  }
}

struct Attach: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Attach a LUN as /dev/nbdN through the kernel's NBD driver (needs root and the nbd module).",
    discussion: """
      Prints the device once it is live, then goes to the background, as nbd-client and
      qemu-nbd -c do. --foreground keeps it in the foreground (for systemd). A restarted
      attach of the same LUN takes over its old device, so mounts survive.
      """)

  @Argument(
    help:
      "iscsi://[USER@]HOST[:PORT]/TARGET-IQN/LUN[?iface=NIC|?source=ADDR] (one per path), or the NAME of /etc/lunbridge/volumes/NAME.toml"
  )
  var targets: [String] = []

  @Option(help: "A volume file to attach (command-line options override it).")
  var config: String?

  @Option(help: "Use this device, as /dev/nbdN or N (default: the kernel picks a free one).")
  var device: String?

  @Option(help: "NBD sockets = kernel hardware queues (default: the number of CPUs).")
  var connections: Int?

  @Option(help: "Seconds before the kernel times out a request on a socket (default 30).")
  var timeout: UInt64?

  @Option(help: "Seconds the kernel holds I/O while no socket is alive: the restart window (default 120).")
  var deadConnTimeout: UInt64?

  @Flag(help: "Attach read-only.")
  var readOnly = false

  @Flag(help: "Stay in the foreground.")
  var foreground = false

  @Flag(
    help:
      "Serve the root filesystem from the initramfs (boot from SAN): the process survives switch_root and shutdown (argv[0] '@lunbridge'), logs to the kernel log and ignores SIGTERM."
  )
  var initramfs = false

  /// `--initramfs`, or started as a storage daemon (argv[0] '@...') by another tool.
  var servesRoot: Bool { initramfs || Initramfs.isStorageDaemon(argv0: CommandLine.arguments.first ?? "") }

  @Option(help: "Append log lines to this file (default: stderr in the foreground, syslog/the journal in the background).")
  var logFile: String?

  @Option(help: "Serve Prometheus metrics over HTTP at tcp:[HOST:]PORT (default host 127.0.0.1).")
  var metrics: String?

  @OptionGroup var paths: PathOptions

  @OptionGroup var options: LoginOptions

  var target: String? { targets.first }

  func validate() throws {
    if targets.count > 1, let bad = targets.first(where: { !$0.lowercased().hasPrefix("iscsi://") }) {
      throw ValidationError("'\(bad)': several paths must all be iscsi:// URLs (a volume NAME stands alone)")
    }
    if let connections, !(1...64).contains(connections) {
      throw ValidationError("--connections must be between 1 and 64")
    }
  }

  /// The volume file named by --config or by a NAME argument, checked (secret files
  /// included) before anything connects.
  func volumeConfig() throws -> VolumeConfig? {
    if let config {
      if target != nil { throw ValidationError("give either --config FILE or a URL/NAME, not both") }
      return try VolumeConfig.check(path: config)
    }
    guard let target else { throw ValidationError("attach needs a URL, a volume NAME or --config FILE") }
    if target.lowercased().hasPrefix("iscsi://") { return nil }
    return try VolumeConfig.check(name: target)
  }

  func run() async throws {
    let volumeFile = try volumeConfig()
    if !foreground {
      try daemonize()
    }
    if ProcessInfo.processInfo.environment["LUNBRIDGE_DAEMON_CHILD"] == "1" {
      // A session of its own: the caller's terminal hanging up sends it nothing.
      _ = setsid()
    }
    if let logFile {
      try LogOutput.useFile(logFile)
    } else if servesRoot {
      LogOutput.useKernelLog()
    }
    let logger = makeLogger(verbose: options.verbose)
    // After switch_root this process still sees the initramfs as its root: files of the
    // system (a reload's volume file) are read through PID 1's root (Initramfs.systemPath).
    if servesRoot { Initramfs.enterProcfs() }
    // WatchdogSec= in the unit: pings from the start (systemd counts from it), sent only
    // while every event loop turns.
    let watchdog = SystemdWatchdog.start()
    if watchdog != nil {
      logger.debug(
        "systemd watchdog on: WATCHDOG=1 every \(SystemdWatchdog.period().map { "\($0.nanoseconds / 1_000_000) ms" } ?? "-")")
    }
    defer { watchdog?.stop() }
    guard getuid() == 0 else {
      throw BridgeError(.permission, "attach needs root (CAP_SYS_ADMIN) to configure NBD devices")
    }
    guard isNBDModuleLoaded() else {
      throw BridgeError(.nbdMissing, "the nbd kernel module is not loaded: run modprobe nbd")
    }
    let memoryLocked = ServingProcess.prepare(logger: logger)
    let urls = volumeFile.map { $0.paths.map(\.description) } ?? targets
    let url = urls[0]
    var attachOptions = AttachOptions(
      connections: connections ?? volumeFile?.connections ?? ProcessInfo.processInfo.activeProcessorCount)
    attachOptions.timeoutSeconds = timeout ?? volumeFile.map { UInt64($0.timeout) } ?? 30
    attachOptions.deadConnectionTimeoutSeconds = deadConnTimeout ?? volumeFile.map { UInt64($0.deadConnTimeout) } ?? 120
    if let device { attachOptions.index = try parseDeviceIndex(device) } else { attachOptions.index = volumeFile?.device }
    // The ISIDs' identity: the volume's name, else its device, else its URL (one device
    // per URL: a second attach of a URL that is served is refused below, before login).
    let shownURL = try ISCSIURL(parsing: url).description
    let identity = volumeFile?.name ?? attachOptions.index.map { "nbd\($0)" } ?? "url:\(shownURL)"
    if volumeFile != nil || attachOptions.index != nil { try ControlServer.refuseIfServed(name: identity) }
    try refuseIfAttached(url: shownURL)
    let volume = try await openVolume(
      urls: urls, options: options, paths: paths, name: volumeFile?.name ?? "",
      identity: identity, readOnly: readOnly || (volumeFile?.readOnly ?? false), logger: logger, volume: volumeFile)
    let attachment: KernelAttachment
    do {
      attachment = try await KernelAttachment.attach(volume: volume, options: attachOptions, logger: logger)
    } catch {
      await volume.close()
      throw error
    }
    attachment.startWatching()
    attachment.raiseRequestSize()
    // A new capacity (rescan, 2A/09) goes to the kernel device.
    volume.setResizeHandler { old, new in try attachment.resize(from: old, to: new) }
    let urlFile = recordURL(shownURL, index: attachment.index)
    // udev names /dev/lunbridge/NAME, /dev/disk/by-path/ip-...-iscsi-...-lun-N and
    // /dev/disk/by-id/wwn-0x... from this record (systemd/99-lunbridge.rules); a URL attach
    // has no name but the other links.
    try? VolumeNameRecord.write(
      name: volumeFile?.name ?? "", backendIdentifier: attachment.backendIdentifier, index: attachment.index,
      byPath: VolumeNameRecord.byPath(try ISCSIURL(parsing: url)), wwn: volume.info.wwn)
    let reload: @Sendable () -> EventLoopFuture<String> = { [self] in
      reloadVolumeFile(volume, file: volumeFile.map { Initramfs.systemPath($0.file) }, logger: logger)
    }
    let observability: Observability
    do {
      observability = try await Observability.start(
        name: volumeFile?.name ?? "nbd\(attachment.index)", volume: volume, device: attachment.devicePath,
        export: nil, metrics: metrics ?? volumeFile?.metrics, reload: reload, logger: logger)
    } catch {
      // Before the device is announced: the caller (the parent in the background, systemd)
      // gets the error and a failure, not a device that goes away.
      logger.error("cannot start serving \(attachment.devicePath): \(plainDescription(of: error))")
      // A failed start leaves nothing behind: the device is let go (disconnected unless
      // something already holds it) and the records removed.
      if attachment.isInUse {
        await attachment.release()
      } else {
        try? attachment.disconnect()
        _ = try? await attachment.closed.get()
      }
      await volume.close()
      if let urlFile { unlink(urlFile) }
      VolumeNameRecord.remove(index: attachment.index)
      throw error
    }
    // Announced once everything it serves is up (device, control socket, metrics).
    print(attachment.devicePath)
    fflush(nil)  // all streams (stdout is a C global Swift 6 will not touch)
    SystemdNotify.send("READY=1\nSTATUS=\(attachment.devicePath) attached to \(shownURL)")
    if ProcessInfo.processInfo.environment["LUNBRIDGE_DAEMON_CHILD"] == "1" {
      // The parent has what it waited for. In the background nothing of the caller's may
      // be written to (its terminal or pipe can go away at any time): stdin, stdout and
      // stderr become /dev/null, logs go to --log-file, else to syslog (the journal).
      LogOutput.detachFromTerminal()
    }
    logger.notice("attached", metadata: ["device": "\(attachment.devicePath)", "lun": "\(url)"])
    // SIGHUP reloads the volume file, as daemons do.
    signal(SIGHUP, SIG_IGN)
    let hangup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: DispatchQueue(label: "lunbridge.sighup"))
    hangup.setEventHandler {
      _ = reload()  // logs its outcome
    }
    hangup.resume()
    ServingProcess.releaseStartupCode(locked: memoryLocked, logger: logger)
    // Whichever comes first: a signal (we disconnect the device) or a detach (the kernel
    // closed our sockets or reports the device disconnected).
    let stop = volume.eventLoop.makePromise(of: Void.self)
    let once = OnceFlag()
    attachment.closed.whenComplete { _ in if once.set() { stop.succeed(()) } }
    if servesRoot {
      // The root filesystem lives on this device: stopping would leave it without I/O
      // until power-off. systemd's shutdown spares '@' processes; anything else that
      // sends SIGTERM (killall) is logged and ignored. `lunbridge detach` still works.
      ignoreTerminationSignals {
        logger.warning(
          "ignoring signal \($0): this process serves the root filesystem on \(attachment.devicePath); it ends with the device (lunbridge detach)"
        )
      }
    } else {
      Task {
        let sig = await waitForTerminationSignal()
        logger.notice("stopping", metadata: ["signal": "\(sig)"])
        if once.set() { stop.succeed(()) }
      }
    }
    try? await stop.futureResult.get()
    SystemdNotify.send("STOPPING=1")
    hangup.cancel()
    await observability.stop()
    if attachment.isConnected, attachment.isInUse {
      // Mounted: disconnecting would fail the filesystem's I/O. Leave the device (and its
      // records) to the next attach, e.g. the one `systemctl restart` starts.
      logger.notice(
        "stopping: \(attachment.devicePath) is in use; leaving it for the next attach of this LUN (I/O waits up to \(attachOptions.deadConnectionTimeoutSeconds) s)"
      )
      await attachment.release()
      await flushBeforeExit(volume, logger: logger)
      await volume.close()
      Glibc.exit(0)
    }
    if attachment.isConnected {
      logger.notice("stopping: disconnecting \(attachment.devicePath)")
      await flushBeforeExit(volume, logger: logger)
      try? attachment.disconnect()
      _ = try? await attachment.closed.get()
    }
    await flushBeforeExit(volume, logger: logger)
    await volume.close()
    if let urlFile { unlink(urlFile) }
    VolumeNameRecord.remove(index: attachment.index)
    Glibc.exit(0)
  }

  /// Re-reads the volume file (command-line options still override it) and applies it
  /// without detaching: paths, policy, failback, no-path-retry, timeouts.
  func reloadVolumeFile(_ volume: Volume, file: String?, logger: Logger) -> EventLoopFuture<String> {
    let promise = volume.eventLoop.makePromise(of: String.self)
    // systemctl reload (ExecReload=lunbridge reload %i) shows the unit as reloading until
    // READY=1; SIGHUP and `lunbridge reload` by hand get the same.
    SystemdNotify.send("RELOADING=1")
    promise.futureResult.whenComplete { result in
      switch result {
      case .success(let summary):
        logger.notice("reloaded \(file ?? "")", metadata: ["summary": "\(summary)"])
        SystemdNotify.send("READY=1\nSTATUS=reloaded: \(summary)")
      case .failure(let error):
        // The volume keeps what it had; the caller (lunbridge reload) gets the reason too.
        logger.error("reload failed, the volume keeps its settings: \(plainDescription(of: error))")
        SystemdNotify.send("READY=1\nSTATUS=reload failed: \(plainDescription(of: error))")
      }
    }
    promise.completeWithTask {
      guard let file else {
        throw BridgeError(.usage, "attached from a URL: there is no volume file to reload")
      }
      let config = try VolumeConfig.check(path: file)
      let specs = try await pathSpecs(
        urls: config.paths.map(\.description), options: options, paths: paths, volume: config, identity: config.name,
        logger: logger)
      let o = try paths.volumeOptions(name: config.name, readOnly: readOnly || config.readOnly, volume: config)
      return try await volume.reconfigure(paths: specs, multipath: o.multipath).get()
    }
    return promise.futureResult
  }

  /// Runs this command again in the background with --foreground and waits for the device
  /// path on a pipe; exits with the child's status when it fails first.
  func daemonize() throws -> Never {
    // The resolved path, so ps and pgrep show "lunbridge attach ..." for the child.
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "/proc/self/exe"
    var env = ProcessInfo.processInfo.environment
    env["LUNBRIDGE_DAEMON_CHILD"] = "1"
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0, fcntl(fds[0], F_SETFD, FD_CLOEXEC) == 0, fcntl(fds[1], F_SETFD, FD_CLOEXEC) == 0 else {
      throw BridgeError(.system, "cannot start the background process: pipe: \(String(cString: strerror(errno)))")
    }
    // The child's stdin is /dev/null and its stdout the pipe, on which it writes the
    // device path once attached.
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
    // A root volume's process is named '@lunbridge': systemd's shutdown leaves it alone.
    let argv0 = servesRoot ? Initramfs.processName : exe
    let argv = ([argv0] + CommandLine.arguments.dropFirst() + ["--foreground"]).map { strdup($0) } + [nil]
    let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for p in argv + envp { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, exe, &actions, nil, argv, envp)
    close(fds[1])
    guard rc == 0 else {
      close(fds[0])
      throw BridgeError(.system, "cannot start the background process \(exe): \(String(cString: strerror(rc)))")
    }
    let line = readLine(from: fds[0])
    close(fds[0])
    if let line, line.hasPrefix("/dev/") {
      print(line)
      Glibc.exit(0)
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    // Exited: its code (1 if it said 0 without a device); killed by a signal: 128 + signal.
    let signal = status & 0x7f
    let code = signal == 0 ? (status >> 8) & 0xff : 128 + signal
    Glibc.exit(code == 0 ? 1 : code)
  }
}

/// Where `list` finds the URL (without password) a device was attached from.
let runDirectory = "/run/lunbridge"

func recordURL(_ url: String, index: UInt32) -> String? {
  let path = "\(runDirectory)/nbd\(index).url"
  do {
    try FileManager.default.createDirectory(
      atPath: runDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
    try (url + "\n").write(toFile: path, atomically: true, encoding: .utf8)
    return path
  } catch {
    return nil
  }
}

/// Throws when a live lunbridge serves `url` on some /dev/nbdN already (its URL record and
/// the device's server pid say so): checked before logging in, since a second login with
/// the volume's ISIDs would take the running process's sessions over.
func refuseIfAttached(url: String) throws {
  guard let names = try? FileManager.default.contentsOfDirectory(atPath: runDirectory) else { return }
  for name in names where name.hasPrefix("nbd") && name.hasSuffix(".url") {
    guard let index = UInt32(name.dropFirst(3).dropLast(4)), recordedURL(index: index) == url,
      let pid = NBDNetlink.pid(index: index), pid > 0, pid != getpid(), kill(pid, 0) == 0
    else { continue }
    throw BridgeError(.alreadyRunning, "\(url) is already attached as /dev/nbd\(index) by process \(pid)")
  }
}

func recordedURL(index: UInt32) -> String? {
  (try? String(contentsOfFile: "\(runDirectory)/nbd\(index).url", encoding: .utf8))?
    .trimmingWhitespace()
}

/// One line from a descriptor, read a byte at a time (nothing past the newline is
/// consumed); nil at end of file with nothing read.
func readLine(from fd: Int32) -> String? {
  var bytes: [UInt8] = []
  var byte: UInt8 = 0
  while true {
    let n = read(fd, &byte, 1)
    if n < 0 && errno == EINTR { continue }
    guard n == 1 else { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
    if byte == 0x0a { return String(decoding: bytes, as: UTF8.self) }
    bytes.append(byte)
  }
}

func parseDeviceIndex(_ text: String) throws -> UInt32 {
  let digits = text.hasPrefix("/dev/nbd") ? String(text.dropFirst(8)) : text
  guard let n = UInt32(digits) else {
    throw ValidationError("'\(text)' is not an NBD device: expected /dev/nbdN or N")
  }
  return n
}

struct Detach: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Detach /dev/nbdN: the serving process flushes, logs out and exits.")

  @Argument(help: "/dev/nbdN")
  var device: String

  func run() throws {
    let index = try parseDeviceIndex(device)
    guard isNBDModuleLoaded() else {
      throw BridgeError(.nbdMissing, "the nbd kernel module is not loaded: run modprobe nbd")
    }
    let netlink = try NBDNetlink()
    let known = try netlink.status(index: index)
    guard let d = known.first(where: { $0.index == index }), d.connected else {
      throw BridgeError(.notFound, "/dev/nbd\(index) is not attached")
    }
    try netlink.disconnect(index: index)
  }
}

struct ConfigCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "config", abstract: "Volume files in /etc/lunbridge/volumes.",
    subcommands: [ConfigCheck.self, ConfigShow.self])
}

/// `lunbridge config show NAME|FILE`: every key of a volume with the value in effect.
struct ConfigShow: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "show",
    abstract:
      "Print a volume's effective configuration: every key, defaults filled in, with its open-iscsi, multipath or nbd-client counterpart."
  )

  @Argument(help: "Volume NAME or a file path.")
  var name: String

  @Option(help: "Where volume files live.")
  var directory: String = VolumeConfig.directory

  func run() throws {
    let config =
      name.contains("/") ? try VolumeConfig.check(path: name) : try VolumeConfig.check(name: name, directory: directory)
    // The initiator name attach would use, read without creating one.
    let initiator =
      [InitiatorName.openISCSIFile, InitiatorName.lunbridgeFile].lazy.compactMap {
        (try? String(contentsOfFile: $0, encoding: .utf8)).flatMap(InitiatorName.parse)
      }.first
    print("# \(config.file): the settings in effect (the file's, else the defaults)")
    var settings = config.effectiveSettings(
      initiator: initiator ?? "", processors: ProcessInfo.processInfo.activeProcessorCount)
    if initiator == nil, config.initiatorName == nil, let i = settings.firstIndex(where: { $0.key == "initiator_name" }) {
      settings[i].value = nil
      settings[i].counterpart += " (none yet: lunbridge makes one at the first attach)"
    }
    // Valid TOML: what is not set is a comment, so the output can be a volume file.
    let lines = settings.map { s in s.value.map { "\(s.key) = \($0)" } ?? "# \(s.key): not set" }
    let width = lines.map(\.count).max() ?? 0
    for (line, s) in zip(lines, settings) {
      print(line + String(repeating: " ", count: width - line.count + 2) + "# " + s.counterpart)
    }
  }
}

/// `lunbridge systemd-generator NORMAL [EARLY LATE]`, or the binary run as
/// `lunbridge-generator`: pulls lunbridge@NAME.service into multi-user.target for every
/// volume with `startup = "automatic"` (SystemdGenerator).
struct SystemdGeneratorCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "systemd-generator",
    abstract: "systemd generator: start lunbridge@NAME at boot for volumes with startup = \"automatic\".",
    shouldDisplay: false)

  @Argument(help: "systemd's generator directories (normal, early, late); links go into the first.")
  var directories: [String] = []

  @Option(help: "Where volume files live.")
  var directory: String = VolumeConfig.directory

  func run() throws {
    guard let normal = directories.first else {
      throw ValidationError("needs the generator output directory (systemd passes three)")
    }
    for line in SystemdGenerator.run(normal: normal, directory: directory) {
      LogOutput.writeStandardError("lunbridge-generator: \(line)\n")
    }
  }
}

/// `lunbridge initramfs-files [NAME...]`: for lunbridge's initramfs-tools hook, one
/// "KIND PATH" line per file the initramfs needs to attach the root volumes: the named
/// volumes, else every volume with `startup = "onboot"` (Initramfs.files).
struct InitramfsFilesCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "initramfs-files",
    abstract: "initramfs-tools hook: the files the initramfs needs for volumes with startup = \"onboot\".",
    shouldDisplay: false)

  @Argument(help: "Volume names (default: every volume with startup = \"onboot\").")
  var names: [String] = []

  @Option(help: "Where volume files live.")
  var directory: String = VolumeConfig.directory

  func run() throws {
    let volumes: [VolumeConfig]
    if names.isEmpty {
      let all = FileManager.default.fileExists(atPath: directory) ? try VolumeConfig.names(directory: directory) : []
      volumes = try all.map { try VolumeConfig.load(path: VolumeConfig.path(name: $0, directory: directory)) }
        .filter { $0.startup == .onboot }
    } else {
      volumes = try names.map { try VolumeConfig.load(path: VolumeConfig.path(name: $0, directory: directory)) }
    }
    // Secret files are checked (present, private) now, not at the next boot.
    for volume in volumes { try volume.check() }
    for file in try Initramfs.files(for: volumes, initiatorFile: try Initramfs.initiatorFile()) { print(file) }
  }
}

struct ConfigCheck: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "check", abstract: "Check volume files (syntax, keys, URLs, secret files) without connecting.")

  @Argument(help: "Volume NAME or a file path (default: every file in --directory).")
  var name: String?

  @Option(help: "Where volume files live.")
  var directory: String = VolumeConfig.directory

  func run() throws {
    var files: [String]
    if let name {
      if !name.contains("/"),
        let problem = VolumeConfig.nameProblem(
          name.hasSuffix(".toml") ? String(name.dropLast(5)) : name)
      {
        throw VolumeConfigError(.badName, file: VolumeConfig.path(name: name, directory: directory), message: problem)
      }
      files = [name.contains("/") ? name : VolumeConfig.path(name: name, directory: directory)]
    } else {
      files = try VolumeConfig.names(directory: directory).map { VolumeConfig.path(name: $0, directory: directory) }
      if files.isEmpty { print("no volume files in \(directory) (NAME.toml)") }
    }
    // Every problem of every file, one line each, not just the first.
    var failed = 0
    for file in files {
      let problems = VolumeConfig.problems(path: file)
      if problems.isEmpty {
        let note: String
        switch (try? VolumeConfig.load(path: file))?.startup {
        case .automatic: note = " (startup automatic: started at boot)"
        case .onboot: note = " (startup onboot: attached by the initramfs; run update-initramfs -u after a change)"
        default: note = ""
        }
        print("\(file): ok\(note)")
      }
      for problem in problems { LogOutput.writeStandardError("lunbridge: error: \(problem)\n") }
      if !problems.isEmpty { failed += 1 }
    }
    if failed > 0 { throw ExitCode(ExitStatus.config.rawValue) }
  }
}

struct DeviceListing: Encodable {
  var device: String
  var url: String?
  var connected: Bool
  var backend: String
  var pid: Int32?
}

struct List: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "List the NBD devices lunbridge serves.")

  @Flag(help: "Print JSON.")
  var json = false

  func run() throws {
    guard isNBDModuleLoaded() else {
      throw BridgeError(.nbdMissing, "the nbd kernel module is not loaded: run modprobe nbd")
    }
    let netlink = try NBDNetlink()
    var rows: [DeviceListing] = []
    for d in try netlink.status() {
      guard let backend = NBDNetlink.backendIdentifier(index: d.index), backend.hasPrefix("lunbridge:") else { continue }
      rows.append(
        DeviceListing(
          device: "/dev/nbd\(d.index)", url: recordedURL(index: d.index), connected: d.connected, backend: backend,
          pid: NBDNetlink.pid(index: d.index)))
    }
    if json {
      try printJSON(rows)
    } else {
      for r in rows {
        print(
          "\(r.device)\t\(r.connected ? "connected" : "disconnected")\tpid \(r.pid.map { String($0) } ?? "-")\t"
            + "\(r.url ?? "-")\t\(r.backend)")
      }
    }
  }
}

struct InfoReport: Encodable {
  var url: String
  var lun: LUNInfo
  var session: NegotiatedReport?

  enum CodingKeys: String, CodingKey {
    case url, session
    case serial, deviceIdentifier, wwn, writeCache, rotational, targetPortGroup, accessState, accessStateCode
    case preferredPortGroup
  }

  func encode(to encoder: Encoder) throws {
    try lun.encode(to: encoder)  // LUN keys at the top level (sizeBytes, blockSize, ...)
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(url, forKey: .url)
    try c.encode(session, forKey: .session)
    // What the text shows as "unknown" or "-" is null here, not left out.
    if lun.serial == nil { try c.encodeNil(forKey: .serial) }
    if lun.deviceIdentifier == nil { try c.encodeNil(forKey: .deviceIdentifier) }
    if lun.wwn == nil { try c.encodeNil(forKey: .wwn) }
    if lun.writeCache == nil { try c.encodeNil(forKey: .writeCache) }
    if lun.rotational == nil { try c.encodeNil(forKey: .rotational) }
    if lun.targetPortGroup == nil { try c.encodeNil(forKey: .targetPortGroup) }
    if lun.accessState == nil { try c.encodeNil(forKey: .accessState) }
    if lun.accessStateCode == nil { try c.encodeNil(forKey: .accessStateCode) }
    if lun.preferredPortGroup == nil { try c.encodeNil(forKey: .preferredPortGroup) }
  }
}

/// `serve --socket-mode/--socket-group`: who may use a unix: export socket (a non-root
/// QEMU or libvirt, through a group), checked before anything logs in.
struct SocketAccess {
  var mode: mode_t?
  var group: gid_t?

  init?(mode: String?, group: String?, address: ListenAddress) throws {
    guard mode != nil || group != nil else { return nil }
    guard case .unix = address else {
      throw BridgeError(.usage, "--socket-mode and --socket-group apply to a unix: socket, not \(address)")
    }
    if let mode {
      guard let m = mode_t(mode, radix: 8), m <= 0o777 else {
        throw BridgeError(.usage, "--socket-mode '\(mode)': expected an octal mode such as 600 or 660")
      }
      self.mode = m
    }
    if let group {
      if let gid = gid_t(group) {
        self.group = gid
      } else if let entry = getgrnam(group) {
        self.group = entry.pointee.gr_gid
      } else {
        throw BridgeError(.usage, "--socket-group '\(group)': no such group")
      }
    }
  }

  func apply(to path: String) throws {
    if let group, chown(path, uid_t.max, group) != 0 {
      throw BridgeError(.system, "cannot give \(path) to group \(group): \(String(cString: strerror(errno)).lowercased())")
    }
    if let mode, chmod(path, mode) != 0 {
      throw BridgeError(.system, "cannot set the mode of \(path): \(String(cString: strerror(errno)).lowercased())")
    }
  }
}

/// The release this source is; `--version` adds the commit of the build.
let lunbridgeVersion = "0.1.0"

func warn(_ message: String) {
  LogOutput.writeStandardError("lunbridge: warning: \(message)\n")
}

@main
struct Lunbridge: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "lunbridge",
    abstract: "A user-space iSCSI initiator that serves LUNs as NBD devices.",
    discussion: """
      Manual pages: lunbridge(8) for every command, exit status and file, and \
      lunbridge.toml(5) for volume files (man lunbridge, man lunbridge.toml).
      """,
    version: "lunbridge \(lunbridgeVersion) (commit \(String(cString: lunbridge_build_commit())))",
    subcommands: [
      Discover.self, Info.self, Serve.self, Attach.self, Detach.self, List.self, Status.self, Reload.self, Failback.self,
      Rescan.self, PersistentReserve.self,
      ConfigCommand.self, SystemdGeneratorCommand.self, InitramfsFilesCommand.self,
    ])

  /// One line `lunbridge: error: ...` and the exit status of its class for every
  /// failure (ExitStatus); option mistakes print the failing subcommand's usage.
  static func main() async {
    ServingProcess.useOneMallocArena()
    ServingProcess.ignoreSIGPIPE()
    let command: ParsableCommand
    do {
      // As systemd's generator (a link named lunbridge-generator), called with its three
      // output directories.
      let arguments = Array(CommandLine.arguments.dropFirst())
      let invokedAs = FilePath.lastComponent(CommandLine.arguments.first ?? "")
      command = try parseAsRoot(invokedAs == "lunbridge-generator" ? ["systemd-generator"] + arguments : arguments)
    } catch {
      parserFailure(error, in: Lunbridge.self)
    }
    do {
      var command = command
      if var async = command as? AsyncParsableCommand {
        try await async.run()
      } else {
        try command.run()
      }
    } catch {
      guard let failure = CommandFailure(error) else {
        // The argument parser's own: a ValidationError from run() shows the usage of the
        // subcommand that threw it, not the top level's.
        parserFailure(error, in: type(of: command))
      }
      fail(failure.message, status: failure.status)
    }
  }

  /// An option mistake: `lunbridge: error: ...` as every other failure, then the usage
  /// of the (sub)command, exit 64. Help and --version print as the argument parser does.
  static func parserFailure(_ error: Error, in command: ParsableCommand.Type) -> Never {
    let code = command.exitCode(for: error)
    guard code != .success else { command.exit(withError: error) }
    var text = command.fullMessage(for: error)
    // A command that said what failed itself and then threw ExitCode: nothing more to print.
    if error is ExitCode, text.isEmpty { Glibc.exit(code.rawValue) }
    if text.hasPrefix("Error: ") { text = "lunbridge: error: " + text.dropFirst("Error: ".count) }
    if command != Lunbridge.self {
      // A subcommand's own usage names it alone ("serve ..."): the full command line.
      let name = command._commandName
      text = text.replacing("Usage: \(name) ", with: "Usage: lunbridge \(name) ")
        .replacing("See '\(name) --help'", with: "See 'lunbridge \(name) --help'")
    }
    LogOutput.writeStandardError(text.hasSuffix("\n") ? text : text + "\n")
    Glibc.exit(code.rawValue)
  }

  static func fail(_ message: String, status: ExitStatus = .failure) -> Never {
    LogOutput.writeStandardError("lunbridge: error: \(message)\n")
    Glibc.exit(status.rawValue)
  }
}
