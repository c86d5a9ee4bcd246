import Failure
import FoundationEssentials
import Glibc
import ISCSIInitiator
import ISCSIProtocol
import Logging
import Multipath
import NBDProtocol
import NIOCore
import NIOPosix
import SCSI

/// One path to open: a URL's portal, its session settings (with its NIC or source binding)
/// and its place among the paths.
public struct PathSpec: Sendable {
  public var url: ISCSIURL
  public var configuration: SessionConfiguration
  /// Failover policy: all I/O goes to the best group (lowest number among equal priority).
  public var group: Int
  public var priority: Int

  public init(url: ISCSIURL, configuration: SessionConfiguration, group: Int = 0, priority: Int = 0) {
    self.url = url
    self.configuration = configuration
    self.group = group
    self.priority = priority
  }
}

/// What happened inside a volume, in order, for tests that check the write-ordering rule.
public enum VolumeEvent: Hashable, Sendable {
  /// An I/O was sent on a path (`attempt` 1 is its first send).
  case dispatched(io: UInt64, isWrite: Bool, path: UInt32, attempt: Int)
  case pathFailed(path: UInt32)
  /// Nothing sent earlier on the path can reach the LU any more.
  case fenced(path: UInt32)
  case completed(io: UInt64, success: Bool)
}

/// Why a URL cannot be one of a volume's paths: what the command line and volume files
/// both check.
public enum PathURLProblem: Error, Equatable, CustomStringConvertible {
  /// A query parameter other than one non-empty `iface=` or `source=`.
  case badParameter(String)
  /// Another target or LUN than the volume's first path.
  case otherLogicalUnit(String)

  public var description: String {
    switch self {
    case .badParameter(let m), .otherLogicalUnit(let m): return m
    }
  }

  /// nil when `url` can be a path of a volume whose first path is `first`.
  public static func check(_ url: ISCSIURL, first: ISCSIURL?) -> PathURLProblem? {
    for key in url.query.keys.sorted() where key != "iface" && key != "source" {
      return .badParameter("unknown parameter '\(key)' in \(url): use ?iface=NIC or ?source=ADDRESS")
    }
    if url.query["iface"] != nil && url.query["source"] != nil {
      return .badParameter("\(url) names both iface= and source=: give one")
    }
    if url.query["iface"]?.isEmpty == true || url.query["source"]?.isEmpty == true {
      return .badParameter("empty iface= or source= in \(url)")
    }
    if let first, first.targetName != url.targetName || first.lun != url.lun {
      return .otherLogicalUnit(
        "every path must reach the same target and LUN (\(first.targetName)/\(first.lun), not \(url.targetName)/\(url.lun))"
      )
    }
    return nil
  }
}

/// How a volume schedules its paths and what it calls itself.
public struct VolumeOptions: Sendable {
  public var multipath = MultipathConfiguration(
    probeBackoff: ProbeBackoff(initial: .milliseconds(500), maximum: .seconds(16), jitterPercent: 20))
  public var readOnly = false
  /// The export name (NBD) and the name in `status`.
  public var name = ""
  /// Flow control (see `IOBudget`): requests one NBD connection may have in flight (the
  /// kernel's default queue depth per socket is 128), bytes one connection and the whole
  /// volume may hold in requests and unsent replies. Past a bound the connection stops
  /// reading its socket until replies have been written.
  public var maxRequestsPerConnection = 128
  public var maxBytesPerConnection = 64 << 20
  public var maxBytesInFlight = 256 << 20
  /// `reservation_key`: registered on every path at open (REGISTER AND IGNORE EXISTING
  /// KEY) and on every path that is added or reinstated later while it is still registered.
  public var reservationKey: UInt64?

  public init() {}
}

/// One LUN served over NBD through one or more iSCSI sessions (paths). NBD requests become
/// block operations; a multipath scheduler (`Multipath.MultipathStateMachine`) picks the
/// path of each, takes the I/O of a failed path elsewhere, probes failed paths and takes
/// them back.
///
/// Everything (all sessions, every NBD connection of the volume) runs on one event loop,
/// so the data path needs no locks and no thread hops.
///
/// Write ordering: a write caught on a failed path is sent again on another path only once
/// the old path can no longer deliver it. The old session is *fenced* first: a login with
/// its ISID (and TSIH 0), through a working portal of the same portal group or through its
/// own portal once that answers again, reinstates the session on the target, which ends
/// every task of the old one before it answers the login (RFC 7143 section 6.3.5). Only
/// then are its writes re-sent. Reads are re-sent at once.
public final class Volume: @unchecked Sendable {
  // `@unchecked Sendable`: a volume is handed between threads (tasks, the control
  // socket), but its mutable state is confined to `eventLoop`. Public methods hop there
  // (`report`, `reconfigure`, `failback`, `observe`, ...) and return futures; the one
  // mutable property other files of this module touch, `flow`, checks (in debug builds)
  // that it is used there. The rest is private and used by code running on the loop.
  public let eventLoop: EventLoop
  public let export: NBDExportInfo
  public let readOnly: Bool
  public let info: LUNInfo
  public let targetName: String
  public let lun: UInt16
  public let options: VolumeOptions
  private var validator: NBDRequestValidator
  /// The LU's size in effect: the size at open, then what a rescan applied.
  private var capacity: UInt64
  /// Capacity changes applied (rescans and 2A/09 unit attentions that changed the size).
  private var capacityChanges: UInt64 = 0
  /// Applies a new size to whatever serves the volume (the kernel device for attach);
  /// set once, before I/O. Runs off the event loop; throws to refuse the size.
  private var resizeHandler: (@Sendable (_ old: UInt64, _ new: UInt64) throws -> Void)?
  let logger: Logger
  /// Largest NBD payload we accept and advertise (proto.md: servers should allow 32 MiB).
  public static let maximumPayload: UInt32 = 32 << 20

  final class Path {
    let id: PathID
    let spec: PathSpec
    let session: ISCSISession
    var unit: LogicalUnit?
    /// Taken away by a reload: never probed again; its session is closed.
    var removed = false
    var probing = false
    var failures: UInt64 = 0
    var reinstatements: UInt64 = 0
    var deadLog = DeadPathLog()
    /// (time, ios, bytes) once a second, for IOPS and MB/s over the last seconds.
    var samples: [(NIODeadline, UInt64, UInt64)] = []
    init(id: PathID, spec: PathSpec, session: ISCSISession) {
      self.id = id
      self.spec = spec
      self.session = session
    }
  }

  enum Operation {
    case read(lba: UInt64, blocks: UInt32)
    case write(lba: UInt64, data: ByteBuffer, fua: Bool)
    case flush
    case trim(lba: UInt64, blocks: UInt32)
    case writeZeroes(lba: UInt64, blocks: UInt32, fua: Bool)
    /// NBD_CMD_BLOCK_STATUS: GET LBA STATUS; `one` for NBD_CMD_FLAG_REQ_ONE.
    case blockStatus(lba: UInt64, blocks: UInt32, one: Bool)
  }

  /// The end of an I/O and when it ended (the one clock read at completion).
  typealias Reply = (Result<[ByteBuffer], Error>, NIODeadline) -> Void

  /// Who waits for an I/O, kept in its record: the end is handed to it by `deliver`.
  enum Requester {
    /// An NBD request: its type and length (for the counters), when it arrived (for its
    /// latency), and the connection's reply.
    case nbd(NBDCommand, length: UInt32, arrived: NIODeadline, reply: (Result<[ByteBuffer], NBDErrno>) -> Void)
    /// The volume itself (the flush on exit).
    case volume(Reply)
  }

  /// The I/O's part of its one record, which the scheduler holds (`MultipathStateMachine.Entry`).
  struct PendingIO {
    var operation: Operation
    /// Given the I/O's end once (on the event loop), through `deliver`.
    var requester: Requester
    var path: PathID?
    var attempt = 0
    var dispatched: NIODeadline
    /// The NBD connection that asked (0: none), so its queued work can be cancelled.
    var owner: UInt64 = 0
    /// Times the target broke the protocol on this I/O; it fails with EIO at
    /// `ISCSISession.maxProtocolViolationsPerCommand`.
    var violations = 0
  }

  private var machine: MultipathStateMachine<ContinuousClock, PendingIO>
  private var fencer: FenceStateMachine<ContinuousClock>
  private var paths: [PathID: Path] = [:]
  private var order: [PathID] = []
  private var nextIO: UInt64 = 1
  private var timers: [TimerID: Scheduled<Void>] = [:]
  private var sampler: RepeatedTask?
  private var closed = false
  private let opened = NIODeadline.now()
  /// The LU refused GET LBA STATUS as unknown: block status reports data without asking.
  private var lbaStatusUnsupported = false

  /// Called on the event loop with every `VolumeEvent` (tests only; nil otherwise).
  private var observer: ((VolumeEvent) -> Void)?

  /// Counters for `status`, metrics and tests.
  private var counts = RequestCounts()
  private var _flow = FlowCounts()
  /// Flow control and export admission counters (status, metrics, tests); on the event loop.
  var flow: FlowCounts {
    get {
      eventLoop.assertInEventLoop()
      return _flow
    }
    _modify {
      eventLoop.assertInEventLoop()
      yield &_flow
    }
  }
  var currentFlow: FlowCounts {
    var f = flow
    f.bytesInFlight = budget.bytes
    return f
  }
  /// Bytes and requests in flight over all NBD connections (see `IOBudget`).
  let budget: IOBudget
  private var noPathFailures: UInt64 = 0
  private var latency = LatencyHistogram()
  /// The persistent reservation key this volume keeps registered on its paths (from
  /// `reservation_key`, or the last `lunbridge pr --register`); nil: none.
  private var registrationKey: UInt64?
  /// Requests the target answered with RESERVATION CONFLICT.
  private var reservationConflicts: UInt64 = 0

  private init(
    eventLoop: EventLoop, info: LUNInfo, targetName: String, lun: UInt16, options: VolumeOptions, logger: Logger
  ) throws {
    self.eventLoop = eventLoop
    self.info = info
    self.targetName = targetName
    self.lun = lun
    self.options = options
    self.budget = IOBudget(maxBytes: options.maxBytesInFlight)
    self.logger = logger
    self.readOnly = options.readOnly || info.readOnly
    self.export = try NBDExportInfo(
      name: options.name, description: info.deviceIdentifier.map { "iSCSI LUN \($0)" } ?? "iSCSI LUN",
      size: info.sizeBytes, transmissionFlags: Volume.flags(for: info, readOnly: self.readOnly),
      minimumBlockSize: UInt32(info.blockSize),
      preferredBlockSize: UInt32(max(info.blockSize, min(info.physicalBlockSize, 65536))),
      maximumPayload: Volume.maximumPayload)
    self.validator = NBDRequestValidator(export: export)
    self.capacity = info.sizeBytes
    self.machine = MultipathStateMachine(configuration: options.multipath, clock: ContinuousClock())
    self.fencer = FenceStateMachine(clock: ContinuousClock(), bound: options.multipath.noPathRetry)
    self.registrationKey = options.reservationKey
  }

  // MARK: - Opening and closing

  /// Logs in on every path at once and checks they reach the same logical unit (VPD page
  /// 0x83). A path that cannot log in now is kept as failed and probed later, as long as
  /// one path works; with none working, the first path's error is thrown.
  public static func open(
    paths specs: [PathSpec], options: VolumeOptions = VolumeOptions(), logger: Logger,
    on eventLoop: EventLoop = MultiThreadedEventLoopGroup.singleton.next()
  ) async throws -> Volume {
    precondition(!specs.isEmpty, "a volume needs at least one path")
    var sessionConfigs: [SessionConfiguration] = []
    for spec in specs {
      var c = spec.configuration
      c.failFast = true
      sessionConfigs.append(c)
    }
    let sessions = sessionConfigs.map { ISCSISession.unconnected($0, on: eventLoop, logger: logger) }
    // Log in everywhere concurrently.
    let logins: [EventLoopFuture<LogicalUnit>] = sessions.enumerated().map { (i, session) in
      session.reconnect().flatMap {
        let promise = eventLoop.makePromise(of: LogicalUnit.self)
        promise.completeWithTask { try await LogicalUnit.open(session: session, lun: specs[i].url.lun) }
        return promise.futureResult
      }
    }
    let results = try await EventLoopFuture.whenAllComplete(logins, on: eventLoop).get()
    func closeAll() async {
      for s in sessions { await s.close(timeout: .seconds(1)) }
    }
    guard let firstIndex = results.firstIndex(where: { if case .success = $0 { return true } else { return false } }),
      case .success(let reference) = results[firstIndex]
    else {
      await closeAll()
      if case .failure(let error) = results[0] { throw error }
      throw BridgeError(.noPath, "no path could log in")
    }
    // Every working path must reach the same LU as the first working one.
    for (i, r) in results.enumerated() {
      guard case .success(let unit) = r else { continue }
      if let problem = Volume.identityProblem(
        reference: reference.info, referenceURL: specs[firstIndex].url, other: unit.info, otherURL: specs[i].url)
      {
        await closeAll()
        throw BridgeError(.pathMismatch, problem)
      }
    }
    let volume = try Volume(
      eventLoop: eventLoop, info: reference.info, targetName: specs[firstIndex].url.targetName,
      lun: specs[firstIndex].url.lun, options: options, logger: logger)
    try await eventLoop.submit {
      volume.machine.setALUAMode(reference.info.aluaSupported ? ALUAMode(tpgs: reference.info.tpgs) : nil)
      for (i, spec) in specs.enumerated() {
        let path = Path(id: PathID(UInt32(i)), spec: spec, session: sessions[i])
        if case .success(let unit) = results[i] { path.unit = unit }
        // With ALUA the port group's state places the path; a standby or unavailable one
        // stays logged in and carries no I/O until its group becomes active.
        if case .failure(let error) = results[i] {
          // Never logged in: its first line says so ("path failed"), not "path active".
          volume.add(path, alua: nil, quiet: true)
          path.failures += 1
          volume.run(
            volume.machine.pathFailed(
              path.id,
              reason: PathFailure(.probeFailed, context: "could not log in; probing it later: \(describeError(error))")))
        } else {
          volume.add(path, alua: path.unit?.info)
        }
      }
      volume.sampler = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
        volume.sample()
      }
    }.get()
    if let key = options.reservationKey {
      do {
        try await volume.registerAtOpen(key)
      } catch {
        await volume.close()
        throw error
      }
    }
    return volume
  }

  /// nil when `other` is the same LU as `reference`; otherwise why not, naming both.
  static func identityProblem(reference: LUNInfo, referenceURL: ISCSIURL, other: LUNInfo, otherURL: ISCSIURL)
    -> String?
  {
    if let a = reference.deviceIdentifier, let b = other.deviceIdentifier {
      if a != b {
        return "path \(otherURL) reaches logical unit \(b), not \(a) like \(referenceURL): refusing it"
      }
    } else if reference.deviceIdentifier != nil || other.deviceIdentifier != nil {
      return
        "path \(otherURL) reports device identifier \(other.deviceIdentifier ?? "none") but \(referenceURL) reports \(reference.deviceIdentifier ?? "none"): refusing it"
    }
    if reference.sizeBytes != other.sizeBytes || reference.blockSize != other.blockSize {
      return
        "path \(otherURL) reaches a LUN of \(other.sizeBytes) bytes in \(other.blockSize)-byte blocks, but \(referenceURL) one of \(reference.sizeBytes) bytes in \(reference.blockSize)-byte blocks: refusing it"
    }
    return nil
  }

  /// `quiet`: the scheduler's "added" line is not logged (a path that never logged in).
  private func add(_ path: Path, alua info: LUNInfo? = nil, quiet: Bool = false) {
    paths[path.id] = path
    order.append(path.id)
    let id = path.id
    path.session.onConnectionLost = { [weak self] reason in
      self?.connectionLost(id, reason: reason)
    }
    path.session.onAnnouncement = { [weak self] sense in
      self?.announced(sense, on: id)
    }
    func carryOut(_ actions: [MultipathStateMachine<ContinuousClock, PendingIO>.Action]) {
      run(quiet ? actions.filter { if case .log = $0 { return false } else { return true } } : actions)
    }
    if let info, let group = info.targetPortGroup, let code = info.accessStateCode, let access = PortAccess(code: code) {
      carryOut(
        machine.addPath(
          id, group: path.spec.group, priority: path.spec.priority, portGroup: group, access: access,
          preferred: info.preferredPortGroup == true))
    } else {
      carryOut(machine.addPath(id, group: path.spec.group, priority: path.spec.priority))
      if let group = info?.targetPortGroup { machine.assignPortGroup(id, group) }
    }
  }

  /// Flushes nothing; logs out of every session (in-flight I/O gets `timeout` to finish).
  public func close(timeout: TimeAmount = .seconds(5)) async {
    let sessions: [ISCSISession] =
      (try? await eventLoop.submit { [self] in
        closed = true
        sampler?.cancel()
        for (_, t) in timers { t.cancel() }
        timers = [:]
        return order.compactMap { paths[$0]?.session }
      }.get()) ?? []
    await withTaskGroup(of: Void.self) { group in
      for s in sessions { group.addTask { await s.close(timeout: timeout) } }
    }
  }

  // MARK: - NBD requests

  /// What the LUN can do, in NBD transmission flags (proto.md "Transmission flags").
  public static func flags(for info: LUNInfo, readOnly: Bool) -> NBDTransmissionFlags {
    var flags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .canMultiConn]
    if readOnly {
      flags.insert(.readOnly)
    } else {
      flags.insert(.sendWriteZeroes)
      if info.unmapSupported || info.writeSameUnmapSupported { flags.insert(.sendTrim) }
    }
    if info.rotational == true { flags.insert(.rotational) }
    return flags
  }

  /// Validates and runs one request. The future never fails: an error becomes the errno
  /// of the reply. A successful READ returns its data: the Data-In segments the target
  /// sent, in order, to be written to the socket as they are. Call on the event loop.
  public func handle(_ request: NBDRequest, payload: ByteBuffer?, owner: UInt64 = 0)
    -> EventLoopFuture<Result<[ByteBuffer], NBDErrno>>
  {
    let promise = eventLoop.makePromise(of: Result<[ByteBuffer], NBDErrno>.self)
    handle(request, payload: payload, owner: owner) { promise.succeed($0) }
    return promise.futureResult
  }

  /// As `handle(_:payload:owner:)`, without a future: `reply` is called once, on the
  /// event loop (at once for a request that fails validation). The NBD connections use
  /// this one: a request is one record (the scheduler's entry) from here to its reply.
  public func handle(
    _ request: NBDRequest, payload: ByteBuffer?, owner: UInt64 = 0,
    reply: @escaping (Result<[ByteBuffer], NBDErrno>) -> Void
  ) {
    if let errno = validator.validate(request) {
      counts.errors += 1
      return reply(.failure(errno))
    }
    let bs = UInt64(info.blockSize)
    let lba = request.offset / bs
    let blocks = UInt32(UInt64(request.length) / bs)
    let fua = request.flags.contains(.fua)
    let operation: Operation
    switch request.type {
    case .read:
      counts.reads += 1
      operation = .read(lba: lba, blocks: blocks)
    case .write:
      counts.writes += 1
      guard let payload else { return reply(.failure(.einval)) }
      operation = .write(lba: lba, data: payload, fua: fua)
    case .flush:
      counts.flushes += 1
      operation = .flush
    case .trim:
      counts.trims += 1
      operation = .trim(lba: lba, blocks: blocks)
    case .writeZeroes:
      counts.writeZeroes += 1
      operation = .writeZeroes(lba: lba, blocks: blocks, fua: fua)
    case .blockStatus:
      // Without thin provisioning every block has storage: no need to ask the target.
      guard info.thinProvisioned, !lbaStatusUnsupported else {
        return reply(.success(BlockStatus.allData(blocks: blocks, blockSize: info.blockSize)))
      }
      operation = .blockStatus(lba: lba, blocks: blocks, one: request.flags.contains(.reqOne))
    default:
      counts.errors += 1
      return reply(.failure(.einval))
    }
    // One clock read at arrival (here) and one at completion (`finished`).
    let arrived = NIODeadline.now()
    // Block status moves no data: it counts as an I/O of no bytes (path load, MB/s).
    let bytes = request.type == .blockStatus ? 0 : Int(request.length)
    submit(
      operation, bytes: bytes, owner: owner, at: arrived,
      .nbd(request.type, length: request.length, arrived: arrived, reply: reply))
  }

  /// Hands an I/O's end to whoever waits for it: an NBD request's counters, latency and
  /// reply (its errno), or the volume's own callback.
  private func deliver(_ io: PendingIO, _ result: Result<[ByteBuffer], Error>, at ended: NIODeadline) {
    switch io.requester {
    case .volume(let reply):
      reply(result, ended)
    case .nbd(let type, let length, let arrived, let reply):
      answer(type, length: length, arrived: arrived, reply: reply, result, at: ended)
    }
  }

  private func answer(
    _ type: NBDCommand, length: UInt32, arrived: NIODeadline, reply: (Result<[ByteBuffer], NBDErrno>) -> Void,
    _ result: Result<[ByteBuffer], Error>, at ended: NIODeadline
  ) {
    latency.record(.nanoseconds((ended - arrived).nanoseconds))
    switch result {
    case .success(let data):
      switch type {
      case .read: counts.readBytes += UInt64(length)
      case .write: counts.writeBytes += UInt64(length)
      default: break
      }
      reply(.success(data))
    case .failure(let error):
      if error is CancelledByClient { return reply(.failure(.eio)) }  // nobody to reply to
      counts.errors += 1
      if (error as? SCSIOperationError)?.isReservationConflict == true {
        // Another initiator holds the reservation: the I/O fails, no path does. Logged
        // the first time and then every thousandth (a fenced node may keep writing).
        reservationConflicts += 1
        if reservationConflicts % 1000 == 1 {
          logger.warning(
            "reservation conflict: the target refused the request (another initiator holds the reservation)",
            metadata: ["type": "\(type)", "conflicts": "\(reservationConflicts)"])
        }
      } else {
        logger.warning("NBD request failed", metadata: ["type": "\(type)", "error": "\(describeError(error))"])
      }
      reply(.failure(Volume.errno(for: error)))
    }
  }

  /// SYNCHRONIZE CACHE through whichever path works (for a clean exit).
  public func synchronizeCache() -> EventLoopFuture<Void> {
    eventLoop.flatSubmit {
      let promise = self.eventLoop.makePromise(of: Void.self)
      self.submit(.flush, bytes: 0, at: .now(), .volume({ result, _ in promise.completeWith(result.map { _ in }) }))
      return promise.futureResult
    }
  }

  /// The session part of a path's status: negotiated keys, timeouts, window, queue.
  /// On the event loop.
  static func sessionReport(_ session: ISCSISession) -> SessionReport? {
    guard let p = session.parameters else { return nil }
    let c = session.configuration
    func seconds(_ t: TimeAmount) -> Double { Double(t.nanoseconds) / 1e9 }
    let window = session.commandWindow
    let depth = session.queueDepth
    return SessionReport(
      negotiated: NegotiatedReport(p), loginTimeoutSeconds: seconds(c.loginTimeout),
      keepaliveIntervalSeconds: seconds(c.keepaliveInterval), keepaliveTimeoutSeconds: seconds(c.keepaliveTimeout),
      commandTimeoutSeconds: seconds(c.commandTimeout), recoveryTimeoutSeconds: seconds(c.recoveryTimeout),
      expCmdSN: window?.expCmdSN, maxCmdSN: window?.maxCmdSN, windowAvailable: window?.available,
      inFlight: depth.inFlight, queued: depth.queued)
  }

  /// The errno an NBD client sees for a failed operation.
  public static func errno(for error: Error) -> NBDErrno {
    guard let e = error as? SCSIOperationError, case .fail(let errno) = e.outcome else { return .eio }
    // The NBD protocol carries only a few errno values (NBD's proto.md "Error values");
    // the rest become EIO.
    switch errno {
    case 1, 30: return .eperm  // EROFS: a write-protected LU, as before
    case 52: return .eperm  // EBADE: RESERVATION CONFLICT, not permitted for this initiator
    case 22: return .einval
    case 28: return .enospc
    case 95: return .enotsup
    default: return .eio
    }
  }

  /// The NBD connection `owner` is gone: its requests still waiting for a path are dropped
  /// (never sent). Requests already on a path finish, since the target may have them.
  func cancelQueued(owner: UInt64) {
    eventLoop.assertInEventLoop()
    guard owner != 0 else { return }
    let theirs = machine.payloads.filter { $0.1.owner == owner }.map(\.0)
    for token in theirs {
      guard let entry = machine.cancelQueued(token) else { continue }
      flow.cancelled += 1
      deliver(entry.payload, .failure(CancelledByClient()), at: .now())
    }
  }

  struct CancelledByClient: Error {}

  private var clientLogLimiter = LogRateLimiter()

  /// Logs something a client did wrong, at most a few lines per 10 s for all clients of
  /// this volume: a fuzzing or flooding client must not flood the journal.
  func logClientProblem(_ level: Logger.Level, _ message: String, _ metadata: Logger.Metadata) {
    let (allowed, held) = clientLogLimiter.allow(now: NIODeadline.now().uptimeNanoseconds.asInt64)
    guard allowed else { return }
    var m = metadata
    if held > 0 { m["suppressed"] = "\(held)" }
    logger.log(level: level, "\(message)", metadata: m)
  }

  private func submit(_ operation: Operation, bytes: Int, owner: UInt64 = 0, at now: NIODeadline, _ requester: Requester) {
    eventLoop.assertInEventLoop()
    let record = PendingIO(operation: operation, requester: requester, dispatched: now, owner: owner)
    guard !closed else { return deliver(record, .failure(BridgeError(.closing, "the volume is closing")), at: .now()) }
    let isWrite: Bool
    switch operation {
    case .read, .flush, .blockStatus: isWrite = false
    case .write, .trim, .writeZeroes: isWrite = true
    }
    let token = IOToken(id: nextIO, bytes: bytes, isWrite: isWrite)
    nextIO &+= 1
    if let path = machine.submitToPath(token, record) {
      start(token, on: path)
    } else {
      run(machine.submit(token, record))
    }
  }

  private func start(_ io: IOToken, on pathID: PathID) {
    guard let path = paths[pathID],
      let (attempt, operation) = machine.updatePayload(
        of: io.id,
        { entry in
          entry.path = pathID
          entry.attempt += 1
          // The first attempt is dated by the request's arrival (no clock read); a re-sent
          // one from now, so a path's latency is its own.
          if entry.attempt > 1 { entry.dispatched = .now() }
          return (entry.attempt, entry.operation)
        })
    else { return }
    observer?(.dispatched(io: io.id, isWrite: io.isWrite, path: pathID.rawValue, attempt: attempt))
    guard let unit = path.unit else {
      // Cannot happen (a path without a LU is never usable); treat it as a path failure.
      finished(io.id, on: pathID, attempt: attempt, .failure(ISCSIError(.pathDown, "path has no logical unit")))
      return
    }
    let work: EventLoopFuture<[ByteBuffer]>
    switch operation {
    case .read(let lba, let blocks) where blocks <= unit.maxBlocksPerCommand:
      // The common case: one command, one closure from the session back to here, no future.
      unit.session.execute(unit.readCommand(lba: lba, blocks: blocks)) { [self] result in
        finished(io.id, on: pathID, attempt: attempt, unit.readResult(result, lba: lba, blocks: blocks))
      }
      return
    case .write(let lba, let data, let fua)
    where data.readableBytes / unit.info.blockSize <= Int(unit.maxBlocksPerCommand) && (!fua || unit.info.fua):
      unit.session.execute(unit.writeCommand(lba: lba, data: data, fua: fua)) { [self] result in
        finished(io.id, on: pathID, attempt: attempt, LogicalUnit.writeResult(result))
      }
      return
    case .read(let lba, let blocks):
      work = unit.readSegments(lba: lba, blocks: blocks)
    case .write(let lba, let data, let fua):
      work = unit.write(lba: lba, data: data, fua: fua).map { [] }
    case .flush:
      work = unit.synchronizeCache().map { [] }
    case .trim(let lba, let blocks):
      work = unit.unmap(lba: lba, blocks: blocks).map { [] }
    case .writeZeroes(let lba, let blocks, let fua):
      var w = unit.writeZeroes(lba: lba, blocks: blocks)
      if fua { w = w.flatMap { unit.synchronizeCache() } }
      work = w.map { [] }
    case .blockStatus(let lba, let blocks, let one):
      work = blockStatus(lba: lba, blocks: blocks, one: one, on: unit)
    }
    work.whenComplete { [self] result in finished(io.id, on: pathID, attempt: attempt, result) }
  }

  /// The extents of a block status request, encoded for the reply. A LU that refuses GET
  /// LBA STATUS (ILLEGAL REQUEST: unknown command or field) gets "data" for the range, and
  /// is not asked again; other failures take the usual way (path failure: sent elsewhere).
  private func blockStatus(lba: UInt64, blocks: UInt32, one: Bool, on unit: LogicalUnit) -> EventLoopFuture<[ByteBuffer]> {
    let info = unit.info
    return unit.lbaStatus(lba: lba).map { status in
      [
        BlockStatus.encoded(
          BlockStatus.extents(
            status, lba: lba, blocks: blocks, blockSize: info.blockSize, unmappedReadsZero: info.unmappedReadsZero,
            one: one))
      ]
    }.flatMapErrorThrowing { [self] error in
      guard let e = error as? SCSIOperationError, let sense = e.sense, sense.senseKey == .illegalRequest,
        sense.asc == 0x20 || sense.asc == 0x24
      else { throw error }
      if !lbaStatusUnsupported {
        lbaStatusUnsupported = true
        logger.info(
          "the LU does not support GET LBA STATUS; block status reports every block as data",
          metadata: ["error": "\(e)"])
      }
      return BlockStatus.allData(blocks: blocks, blockSize: info.blockSize)
    }
  }

  private func finished(_ id: UInt64, on pathID: PathID, attempt: Int, _ result: Result<[ByteBuffer], Error>) {
    // Only the latest attempt counts: a read already sent elsewhere is stale here.
    // Read in place: the record (its reply closure, a write's data) is not copied.
    guard
      let (dispatched, violations) = machine.updatePayload(
        of: id, { p in p.path == pathID && p.attempt == attempt ? (p.dispatched, p.violations) : nil }) ?? nil,
      let token = machine.token(of: id)
    else { return }
    let now = NIODeadline.now()
    let latency = Duration.nanoseconds((now - dispatched).nanoseconds)
    switch result {
    case .success(let data):
      observer?(.completed(io: id, success: true))
      var actions: [MultipathStateMachine<ContinuousClock, PendingIO>.Action] = []
      let entry = machine.completed(token, path: pathID, latency: latency, success: true, into: &actions)
      run(actions)
      if let entry { deliver(entry.payload, .success(data), at: now) }
    case .failure(let error)
    where Volume.isPathError(error)
      && !(Volume.isProtocolViolation(error)
        && violations + 1 >= ISCSISession.maxProtocolViolationsPerCommand):
      // The path is down: the scheduler re-sends reads now and fences writes first. An I/O
      // the target answered with broken PDUs is sent again too, a bounded number of times.
      if Volume.isProtocolViolation(error) { machine.updatePayload(of: id) { $0.violations += 1 } }
      if let e = error as? SCSIOperationError {
        // The target refused it on this port, so it did not carry it out: the I/O is placed
        // again at once, a write too, without a fence.
        let access = e.sense?.portAccessState.flatMap { PortAccess(code: $0.rawValue) }
        if machine.portGroup(of: pathID) != nil, access != nil || SCSIOutcome.isAccessStateChange(e.sense) {
          // ALUA: the port's group is standby, unavailable or transitioning (or the states
          // just changed): the scheduler regroups the port and re-reads the port groups;
          // the path stays logged in and is not failed.
          run(machine.rejected(token, path: pathID, access: access))
        } else {
          // Without ALUA the path stops, and every failed path is probed now.
          failPath(pathID, PathFailure(.targetReported, context: describeError(error)))
          run(machine.rejected(token, path: pathID))
          probeFailedPathsNow(except: pathID)
        }
      } else {
        failPath(pathID, PathFailure(.connectionLost, context: describeError(error)))
      }
    case .failure(let error):
      observer?(.completed(io: id, success: false))
      var actions: [MultipathStateMachine<ContinuousClock, PendingIO>.Action] = []
      let entry = machine.completed(token, path: pathID, latency: latency, success: false, into: &actions)
      run(actions)
      if let entry { deliver(entry.payload, .failure(error), at: now) }
    }
  }

  static func isPathError(_ error: Error) -> Bool {
    if let e = error as? SCSIOperationError { return e.outcome.isPathProblem }
    guard let e = error as? ISCSIError else { return false }
    return e.code == .pathDown || e.code == .protocolViolation
  }

  /// The session dropped the path because the target broke the protocol on this I/O.
  static func isProtocolViolation(_ error: Error) -> Bool {
    (error as? ISCSIError)?.code == .protocolViolation
  }

  // MARK: - Path events

  private func connectionLost(_ id: PathID, reason: String) {
    failPath(id, PathFailure(.connectionLost, context: reason))
  }

  private func failPath(_ id: PathID, _ failure: PathFailure) {
    guard let state = machine.state(of: id) else { return }
    switch state {
    case .active, .standby, .unavailable, .transitioning:
      paths[id]?.failures += 1
      observer?(.pathFailed(path: id.rawValue))
      run(machine.pathFailed(id, reason: failure))
    case .probing:
      run(machine.pathFailed(id, reason: failure))
    case .failed, .disabled:
      break
    }
  }

  /// Carries out the scheduler's actions, in order.
  private func run(_ actions: [MultipathStateMachine<ContinuousClock, PendingIO>.Action]) {
    for action in actions {
      switch action {
      case .dispatch(let io, let path):
        start(io, on: path)
      case .fail(let io, let error):
        guard let entry = machine.take(io) else { continue }
        noPathFailures += 1
        deliver(entry.payload, .failure(error), at: .now())
      case .fencePath(let path):
        fence(path)
      case .scheduleTimer(let id, let deadline):
        arm(id, at: deadline)
      case .cancelTimer(let id):
        timers.removeValue(forKey: id)?.cancel()
      case .scheduleProbe(let path, let deadline):
        arm(.probe(path), at: deadline)
      case .startProbe(let path):
        probe(path)
      case .log(let event):
        log(event)
      case .readPortGroups(let via):
        readPortGroups(via: via)
      case .activatePortGroup(let group, let via):
        activatePortGroup(group, via: via)
      }
    }
  }

  // MARK: - ALUA and announcements

  /// REPORT TARGET PORT GROUPS through the path, for the scheduler.
  private func readPortGroups(via id: PathID) {
    guard let unit = paths[id]?.unit, !closed else {
      run(machine.portGroupsReadFailed(via: id))
      return
    }
    logger.debug("reading the port groups (REPORT TARGET PORT GROUPS)", metadata: ["path": "\(id)"])
    unit.portGroups().whenComplete { [self] result in
      guard !closed else { return }
      switch result {
      case .success(let report):
        let groups = report.groups.map { "\($0.groupID) \($0.asymmetricAccessState)" }.joined(separator: ", ")
        logger.debug("port groups: \(groups)", metadata: ["path": "\(id)"])
        run(machine.portGroupsRead(Volume.portGroupReport(report), via: id))
      case .failure(let error):
        logger.info("reading the port groups failed", metadata: ["path": "\(id)", "error": "\(describeError(error))"])
        run(machine.portGroupsReadFailed(via: id))
      }
    }
  }

  /// SET TARGET PORT GROUPS through the path (explicit ALUA), for the scheduler.
  private func activatePortGroup(_ group: UInt16, via id: PathID) {
    guard let unit = paths[id]?.unit, !closed else {
      run(machine.portGroupActivated(via: id, success: false))
      return
    }
    logger.notice(
      "no port group carries I/O: activating port group \(group) (SET TARGET PORT GROUPS)", metadata: ["path": "\(id)"])
    unit.activatePortGroup(group).whenComplete { [self] result in
      guard !closed else { return }
      if case .failure(let error) = result {
        logger.warning(
          "activating port group \(group) failed", metadata: ["path": "\(id)", "error": "\(describeError(error))"])
      }
      run(machine.portGroupActivated(via: id, success: (try? result.get()) != nil))
    }
  }

  static func portGroupReport(_ r: ReportTargetPortGroups) -> PortGroupReport {
    var groups: [UInt16: PortGroupReport.Group] = [:]
    for g in r.groups {
      guard let access = PortAccess(code: g.asymmetricAccessState.rawValue) else { continue }
      groups[g.groupID] = PortGroupReport.Group(access: access, preferred: g.preferred)
    }
    let transition: Duration? =
      r.extendedHeader && r.implicitTransitionTime > 0 ? .seconds(Int(r.implicitTransitionTime)) : nil
    return PortGroupReport(groups: groups, transitionTimeout: transition)
  }

  /// The target told a session something about the LU (the command that carried it is
  /// retried or ended by the session as usual).
  private func announced(_ sense: SenseData, on id: PathID) {
    guard !closed else { return }
    switch (sense.asc, sense.ascq) {
    case (0x2A, 0x06), (0x2A, 0x07), (0x04, _):
      // Access states changed, an implicit transition failed, or a port refused I/O
      // because of its state: re-read the port groups (nothing without ALUA).
      run(machine.accessMayHaveChanged())
    case (0x2A, 0x09):
      capacityChanged(on: id)
    case (0x3F, 0x03), (0x3F, 0x0E):
      recheckIdentity(of: id, because: sense.description)
    default:
      logger.info("the target reported: \(sense)", metadata: ["path": "\(id)"])
    }
  }

  /// UNIT ATTENTION 2A/09: the LU's capacity changed on the target: rescan.
  private func capacityChanged(on id: PathID) {
    rescan(reason: "the target reported a capacity change (2A/09) on \(id)").whenFailure { [logger] error in
      logger.warning("the target reports a capacity change, but it was not applied: \(describeError(error))")
    }
  }

  /// Who applies a new size; the attach sets it (for `serve` the export's clients keep the
  /// size they negotiated until they connect again).
  public func setResizeHandler(_ handler: @escaping @Sendable (_ old: UInt64, _ new: UInt64) throws -> Void) {
    eventLoop.execute { self.resizeHandler = handler }
  }

  /// Reads the LU's capacity again (READ CAPACITY on an active path) and, if it changed,
  /// applies it: the resize handler (the kernel device), then the bounds requests are
  /// checked against. Answers what happened, or why the new size was refused.
  public func rescan(reason: String = "rescan") -> EventLoopFuture<String> {
    eventLoop.flatSubmit { [self] in
      let loggedIn = paths.values.filter { $0.unit != nil && !$0.removed && $0.session.state == .fullFeature }
      guard let unit = loggedIn.min(by: { $0.id.rawValue < $1.id.rawValue })?.unit else {
        return eventLoop.makeFailedFuture(
          BridgeError(.noPath, "no path is logged in to read the capacity; try again once one is"))
      }
      return unit.capacityBytes().flatMap { new in self.apply(capacity: new, reason: reason) }
    }
  }

  private func apply(capacity new: UInt64, reason: String) -> EventLoopFuture<String> {
    let old = capacity
    guard new != old else { return eventLoop.makeSucceededFuture("the size is unchanged: \(old) bytes") }
    guard new % UInt64(info.blockSize) == 0 else {
      return eventLoop.makeFailedFuture(BridgeError(.target, "the target reports \(new) bytes, not a multiple of the block size"))
    }
    let applied: EventLoopFuture<Void>
    if let handler = resizeHandler {
      // Netlink and the in-use check are system calls: on NIO's blocking-work pool.
      applied = NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) { try handler(old, new) }
    } else if new < old {
      applied = eventLoop.makeFailedFuture(
        BridgeError(.busy, "the LUN shrank from \(old) to \(new) bytes: refused while it is served"))
    } else {
      applied = eventLoop.makeSucceededVoidFuture()
    }
    return applied.assumeIsolated().map { [self] in
      capacity = new
      capacityChanges += 1
      validator = NBDRequestValidator(
        exportSize: new, blockSizes: validator.blockSizes, transmissionFlags: validator.transmissionFlags,
        commandSubset: validator.commandSubset, maximumEffectLength: validator.maximumEffectLength)
      let verb = new > old ? "grew" : "shrank"
      logger.notice("the LUN \(verb) from \(old) to \(new) bytes (\(reason)); applied", metadata: ["bytes": "\(new)"])
      return "the LUN \(verb) from \(old) to \(new) bytes; applied"
    }.nonisolated().flatMapErrorThrowing { [logger] error in
      logger.warning("the LUN's size changed from \(old) to \(new) bytes (\(reason)), not applied: \(describeError(error))")
      throw error
    }
  }

  /// UNIT ATTENTION 3F/03 (inquiry data changed) or 3F/0E (reported LUNs changed): the
  /// LU is opened again on that path and must still be the volume's; otherwise the path
  /// fails, and its probes keep refusing it until it is.
  private func recheckIdentity(of id: PathID, because why: String) {
    guard let path = paths[id], !path.probing else { return }
    let session = path.session
    let lun = path.spec.url.lun
    logger.notice("re-checking the logical unit's identity: \(why)", metadata: ["path": "\(id)"])
    let promise = eventLoop.makePromise(of: LogicalUnit.self)
    promise.completeWithTask { try await LogicalUnit.open(session: session, lun: lun) }
    promise.futureResult.whenComplete { [self] result in
      guard !closed, let path = paths[id] else { return }
      switch result {
      case .success(let unit):
        if let problem = Volume.identityProblem(
          reference: info, referenceURL: path.spec.url, other: unit.info, otherURL: path.spec.url)
        {
          path.unit = nil
          failPath(id, PathFailure(.targetReported, context: problem))
        } else {
          path.unit = unit
        }
      case .failure(let error):
        logger.info("re-checking the logical unit failed", metadata: ["path": "\(id)", "error": "\(describeError(error))"])
      }
    }
  }

  private func arm(_ id: TimerID, at deadline: ContinuousClock.Instant) {
    timers.removeValue(forKey: id)?.cancel()
    guard !closed else { return }
    let delay = ContinuousClock.now.duration(to: deadline)
    let nanos = max(0, delay.nanosecondsSaturating)
    timers[id] = eventLoop.scheduleTask(in: .nanoseconds(nanos)) { [self] in
      timers[id] = nil
      run(machine.timerFired(id))
    }
  }

  private func log(_ event: PathEvent) {
    let url = paths[event.path].map { "\($0.spec.url)" } ?? "-"
    var metadata: Logger.Metadata = ["path": "\(event.path)", "url": "\(url)"]
    if let from = event.from { metadata["from"] = "\(from.name)" }
    let what: String
    switch event.to {
    case .failed?: what = "path failed"
    case .active? where event.from != nil && event.from != .standby: what = "path reinstated"
    case .active?: what = "path active"
    case .standby?: what = "path standby"
    case .probing?: what = "probing path"
    case .disabled?: what = "path disabled"
    case .unavailable?: what = "path unavailable"
    case .transitioning?: what = "path transitioning"
    case nil: what = "path removed"
    }
    // A path that stays down is said once, then reminded at a low rate (DeadPathLog).
    var level: Logger.Level = .notice
    var text = "\(what): \(event.reason)"
    let now = NIODeadline.now()
    switch (event.from, event.to) {
    case (_, .probing?):
      level = .debug
    case (.probing?, .failed?):
      if let path = paths[event.path] {
        let (l, reminder) = path.deadLog.probeFailed(now: now)
        level = l
        if reminder, let since = path.deadLog.downSince {
          text =
            "path still failed after \(path.deadLog.failedProbes) probes (\(Int((now - since).nanoseconds / 1_000_000_000)) s): \(event.reason)"
        }
      }
    case (_, .failed?):
      level = paths[event.path]?.deadLog.failed(now: now) ?? .notice
    case (.failed?, _), (.probing?, _):
      if let path = paths[event.path], let down = path.deadLog.recovered(now: now) {
        text += " (down \(Int(down.nanoseconds / 1_000_000_000)) s)"
      }
    default:
      break
    }
    logger.log(level: level, "\(text)", metadata: metadata)
    // Back from failed or probing to working (serving or standing by): reinstated.
    if let from = event.from?.name, from == "failed" || from == "probing",
      let to = event.to?.name, ["active", "standby", "unavailable", "transitioning"].contains(to)
    {
      paths[event.path]?.reinstatements += 1
    }
  }

  /// Makes sure nothing sent on the failed path can still reach the LU, then lets the
  /// scheduler re-send its writes. The rules (and their timing) are `FenceStateMachine`'s;
  /// this carries out its actions.
  private func fence(_ id: PathID) {
    guard let path = paths[id], !closed else { return }
    guard
      fencer.begin(
        id, portalGroup: path.session.parameters?.targetPortalGroupTag, reinstatements: path.session.reinstatements)
    else { return }
    attemptFence(id)
  }

  private func attemptFence(_ id: PathID) {
    guard !closed, let path = paths[id] else { return }
    let helpers = order.compactMap { self.paths[$0] }.map {
      FenceStateMachine<ContinuousClock>.Helper(
        id: $0.id, loggedIn: $0.session.state == .fullFeature,
        portalGroup: $0.session.parameters?.targetPortalGroupTag)
    }
    // A path taken away by a reload is being logged out: its fence goes through the
    // other paths, not through the portal being taken away.
    run(
      fencer.attempt(
        id, loggedIn: path.session.state == .fullFeature && !path.removed, reinstatements: path.session.reinstatements,
        helpers: helpers))
  }

  private func run(_ actions: [FenceStateMachine<ContinuousClock>.Action]) {
    for action in actions {
      switch action {
      case .login(let id, let through):
        fencingLogin(id, through: through)
      case .retry(let id, let at):
        let delay = ContinuousClock.now.duration(to: at).nanosecondsSaturating
        eventLoop.scheduleTask(in: .nanoseconds(max(0, delay))) { [self] in attemptFence(id) }
      case .fenced(let id, let how):
        logger.info("path fenced: \(how)", metadata: ["path": "\(id)"])
        observer?(.fenced(path: id.rawValue))
        run(machine.pathFenced(id))
      case .abandon(let id):
        // No way to end the old session within no-path-retry: its writes fail with EIO
        // rather than wait forever (re-sending them is what must not happen).
        logger.warning(
          "could not fence a failed path within no-path-retry; failing its unfinished writes",
          metadata: ["path": "\(id)"])
        run(machine.abandonFenced(id))
      }
    }
  }

  /// A login with the failed session's own settings (initiator name, ISID, CHAP) through
  /// the helper's portal and NIC (or the failed path's own), which reinstates (and so
  /// ends) the old session; then a logout. It counts only if it reached the old session's
  /// portal group: with the same ISID, a login to another group (after a redirect, say)
  /// makes a new session beside the old one.
  private func fencingLogin(_ id: PathID, through helperID: PathID) {
    guard let path = paths[id], let helper = paths[helperID] else {
      run(fencer.loginFinished(id, success: false))
      return
    }
    let group = fencer.portalGroup(of: id)
    var config = path.session.configuration
    config.portal = helper.spec.configuration.portal
    config.interface = helper.spec.configuration.interface
    config.sourceAddress = helper.spec.configuration.sourceAddress
    config.failFast = true
    config.loginTimeout = min(config.loginTimeout, .seconds(5))
    let fenceSession = ISCSISession.unconnected(config, on: eventLoop, logger: logger)
    let portal = "\(helper.spec.url.portal)"
    fenceSession.reconnect().flatMap { () -> EventLoopFuture<Int?> in
      let reached = fenceSession.parameters?.targetPortalGroupTag
      return fenceSession.close(timeout: .seconds(1)).map { reached }
    }.flatMapThrowing { reached in
      guard group == nil || reached == group else {
        throw BridgeError(
          .pathMismatch,
          "the login reached target portal group \(reached.map(String.init) ?? "unknown"), not the failed session's \(group!)")
      }
    }.whenComplete { [self] result in
      if case .failure(let error) = result {
        logger.warning(
          "fencing login failed; retrying",
          metadata: ["path": "\(id)", "through": "\(portal)", "error": "\(describeError(error))"])
      }
      guard !closed else { return }
      run(fencer.loginFinished(id, success: (try? result.get()) != nil))
    }
  }

  /// Probes every failed path at once (their probes re-read ALUA states).
  private func probeFailedPathsNow(except skipped: PathID) {
    for id in order where id != skipped {
      guard let state = machine.state(of: id), case .failed = state else { continue }
      probe(id)
    }
  }

  /// Reconnect (a login with the same ISID), open the LU if it never was, check it is the
  /// same LU; then, with ALUA, the port group's state (REPORT TARGET PORT GROUPS) places
  /// the path and says whether it may carry I/O; without, TEST UNIT READY.
  private func probe(_ id: PathID) {
    guard let path = paths[id], !path.probing, !path.removed, !closed else { return }
    path.probing = true
    let session = path.session
    let lun = path.spec.url.lun
    // Isolated futures: the closures run on this event loop, where the volume's state lives.
    session.reconnect().assumeIsolated().flatMap { [self] () -> EventLoopFuture<LogicalUnit> in
      if let unit = path.unit { return eventLoop.makeSucceededFuture(unit) }
      let promise = eventLoop.makePromise(of: LogicalUnit.self)
      promise.completeWithTask { try await LogicalUnit.open(session: session, lun: lun) }
      return promise.futureResult.assumeIsolated().flatMapThrowing { [self] unit in
        // Compared with another path that has its LU open (else the volume's own LU).
        let other = paths.values.first { $0.unit != nil && $0.id != id }
        if let problem = Volume.identityProblem(
          reference: other?.unit?.info ?? info, referenceURL: other?.spec.url ?? path.spec.url, other: unit.info,
          otherURL: path.spec.url)
        {
          throw BridgeError(.pathMismatch, problem)
        }
        path.unit = unit
        return unit
      }.nonisolated()
    }.flatMap { [self] unit in
      // A registered volume registers the path before it carries I/O (its I_T nexus may be
      // new, or the target may have lost it), unless the key is gone from the LU.
      keepRegistered(unit, path: id).map { unit }
    }.flatMap { unit in
      // With ALUA, REPORT TARGET PORT GROUPS answers (standby and unavailable ports refuse
      // TEST UNIT READY by design), and its states go to the scheduler, which places the
      // path by its group's state; without, TEST UNIT READY.
      guard unit.info.aluaSupported, let group = unit.info.targetPortGroup else { return unit.testUnitReady() }
      return unit.portGroups().assumeIsolated().map { [self] report in
        machine.assignPortGroup(id, group)
        run(machine.portGroupsRead(Volume.portGroupReport(report), via: id))
      }.nonisolated()
    }.whenComplete { [self] result in
      path.probing = false
      guard !closed else { return }
      switch result {
      case .success:
        run(
          fencer.reinstated(
            id, reinstatements: session.reinstatements, portalGroup: session.parameters?.targetPortalGroupTag))
        run(machine.probeSucceeded(id))
      case .failure(let error):
        logger.info("probe failed", metadata: ["path": "\(id)", "error": "\(describeError(error))"])
        run(machine.probeFailed(id, reason: PathFailure(.probeFailed, context: describeError(error))))
      }
    }
  }

  // MARK: - Persistent reservations

  /// The paths that can carry a command now (logged in, LU open, not failed), the ones
  /// serving I/O first.
  private func workingPaths() -> [Path] {
    let working = order.compactMap { id -> Path? in
      guard let p = paths[id], !p.removed, p.unit != nil, let state = machine.state(of: id) else { return nil }
      switch state {
      case .failed, .probing, .disabled: return nil
      default: return p
      }
    }
    return working.filter { machine.state(of: $0.id) == .active } + working.filter { machine.state(of: $0.id) != .active }
  }

  /// `reservation_key` at open: REGISTER AND IGNORE EXISTING KEY on every path that logged
  /// in. A path that cannot register is failed (its probe registers it later); none
  /// registering is an error.
  func registerAtOpen(_ key: UInt64) async throws {
    let units = try await eventLoop.submit { self.workingPaths().map { ($0.id, $0.unit!) } }.get()
    var firstError: Error?
    var registered = 0
    for (id, unit) in units {
      do {
        try await unit.persistentReserveOut(
          .registerAndIgnoreExistingKey, type: nil, parameters: PROutParameters(serviceActionKey: key)
        ).get()
        registered += 1
      } catch {
        firstError = firstError ?? error
        logger.warning(
          "path could not register the reservation key; probing it later",
          metadata: ["path": "\(id)", "key": "\(PRReply.hex(key))", "error": "\(describeError(error))"])
        try await eventLoop.submit {
          self.failPath(id, PathFailure(.probeFailed, context: "reservation key not registered"))
        }.get()
      }
    }
    if registered == 0, let firstError {
      throw BridgeError(.reservation, "cannot register reservation key \(PRReply.hex(key))", cause: firstError)
    }
    logger.notice("reservation key registered", metadata: ["key": "\(PRReply.hex(key))", "paths": "\(registered)"])
  }

  /// Before a path added or reinstated later carries I/O: if the volume keeps a key
  /// registered and the LU still lists it (registered through another of its paths, or
  /// this nexus before), the path registers it too (REGISTER AND IGNORE EXISTING KEY). A key
  /// the LU no longer lists was preempted or cleared by another node: the path is not
  /// registered, so a fenced node does not let itself back in (multipathd's rule).
  private func keepRegistered(_ unit: LogicalUnit, path id: PathID) -> EventLoopFuture<Void> {
    guard let key = registrationKey else { return eventLoop.makeSucceededVoidFuture() }
    return unit.persistentReserveIn(.readKeys).flatMapThrowing { try PRKeys($0) }.flatMap { [self] listed in
      guard listed.keys.contains(key) else {
        logger.warning(
          "reservation key no longer registered on the LU (preempted or cleared): the path is not registered",
          metadata: ["path": "\(id)", "key": "\(PRReply.hex(key))"])
        return eventLoop.makeSucceededVoidFuture()
      }
      return unit.persistentReserveOut(
        .registerAndIgnoreExistingKey, type: nil, parameters: PROutParameters(serviceActionKey: key))
    }
  }

  /// One `lunbridge pr` operation. PR IN and the LU-wide PR OUT (reserve, release, clear,
  /// preempt) go through one working path, the next one if a path fails; registration
  /// goes through every working path, and the key is kept for paths that come later.
  public func persistentReservation(_ request: PRRequest) -> EventLoopFuture<PRReply> {
    let promise = eventLoop.makePromise(of: PRReply.self)
    eventLoop.execute { [self] in
      if let problem = request.problem { return promise.succeed(PRReply(ok: false, error: problem)) }
      let working = workingPaths()
      guard !working.isEmpty else {
        return promise.succeed(PRReply(ok: false, error: "no path of volume \(options.name) can carry a command now"))
      }
      let type = request.type.flatMap { PRType(rawValue: $0) }
      let parameters = PROutParameters(
        key: request.key, serviceActionKey: request.serviceActionKey, allTargetPorts: request.allTargetPorts,
        persistThroughPowerLoss: request.persistThroughPowerLoss)
      var results: [PRReply.PathResult] = []
      var conflicts = 0
      var inReply: PRReply?
      // Through the paths one after another: all of them for a registration, else until one
      // answers (a path problem tries the next; a SCSI answer is the answer).
      func step(_ index: Int) {
        guard index < working.count else { return finish() }
        let path = working[index]
        let unit = path.unit!
        let work: EventLoopFuture<PRReply?>
        if let action = request.operation.inAction {
          work = Volume.persistentReserveIn(action, on: unit).map { Optional($0) }
        } else {
          work = unit.persistentReserveOut(request.operation.outAction!, type: type, parameters: parameters).map { nil }
        }
        work.assumeIsolated().whenComplete { result in
          var r = PRReply.PathResult(
            path: path.id.rawValue, url: "\(path.spec.url)", isid: hex12(path.session.configuration.login.isid))
          switch result {
          case .success(let answer):
            if let answer { inReply = answer }
          case .failure(let error):
            r.error = describeError(error)
            if (error as? SCSIOperationError)?.isReservationConflict == true { conflicts += 1 }
          }
          results.append(r)
          let answered = r.error == nil || !Volume.isPathError(error: result)
          if request.operation.outAction?.isRegistration == true || !answered {
            step(index + 1)
          } else {
            finish()
          }
        }
      }
      func finish() {
        let failed = results.filter { $0.error != nil }
        let succeeded = results.count - failed.count
        var reply = inReply ?? PRReply(ok: true)
        reply.paths = results
        if succeeded == 0 || (request.operation.outAction?.isRegistration == true && !failed.isEmpty) {
          reply.ok = false
          reply.conflict = conflicts > 0 && conflicts == failed.count
          reply.error =
            reply.conflict
            ? "reservation conflict"
            : failed.map { "path \($0.path): \($0.error!)" }.joined(separator: "; ")
        }
        if succeeded > 0 {
          switch request.operation {
          case .register, .registerIgnore:
            registrationKey = request.serviceActionKey == 0 ? nil : request.serviceActionKey
          case .clear:
            registrationKey = nil
          default:
            break
          }
        }
        reply.registeredKey = registrationKey.map(PRReply.hex)
        if request.operation.outAction != nil {
          logger.notice(
            "persistent reservation: \(request.operation.rawValue) \(reply.ok ? "done" : "failed")",
            metadata: [
              "paths": "\(results.map { "\($0.path)" }.joined(separator: ","))",
              "error": "\(reply.error ?? "-")",
            ])
        }
        promise.succeed(reply)
      }
      step(0)
    }
    return promise.futureResult
  }

  /// PERSISTENT RESERVE IN through `unit`, decoded. A target without READ FULL STATUS
  /// (tgtd answers ILLEGAL REQUEST) gets READ KEYS and READ RESERVATION instead, and the
  /// reply says it was built from them (no initiator names then).
  static func persistentReserveIn(_ action: PRInAction, on unit: LogicalUnit) -> EventLoopFuture<PRReply> {
    let answer = unit.persistentReserveIn(action).flatMapThrowing { try PRReply.decoded(action, $0) }
    guard action == .readFullStatus else { return answer }
    return answer.flatMapError { error in
      guard let e = error as? SCSIOperationError, e.errorClass == .illegalRequest else {
        return unit.session.eventLoop.makeFailedFuture(error)
      }
      return unit.persistentReserveIn(.readKeys).and(unit.persistentReserveIn(.readReservation)).flatMapThrowing {
        try PRReply.fullStatus(keys: PRKeys($0.0), reservation: PRReservation($0.1))
      }
    }
  }

  /// A failure that is the path's (try the next path), not the target's answer.
  static func isPathError(error result: Result<PRReply?, Error>) -> Bool {
    guard case .failure(let error) = result else { return false }
    return isPathError(error) || !(error is SCSIOperationError)
  }

  // MARK: - Reload

  /// Applies a reloaded configuration without detaching: paths no longer listed are taken
  /// away (their I/O moves to the others, writes after fencing), new ones are added and
  /// probed, the policy, failback and no-path-retry change, and every session takes the
  /// new keepalive and command timeouts. Paths are matched by URL (with its ?iface= or
  /// ?source=) and session number. Returns a one-line summary.
  public func reconfigure(paths specs: [PathSpec], multipath: MultipathConfiguration) -> EventLoopFuture<String> {
    eventLoop.submit { [self] in
      guard !closed else { throw BridgeError(.closing, "the volume is closing") }
      let running = order.compactMap { id in paths[id].flatMap { $0.removed ? nil : (id, "\($0.spec.url)") } }
      let plan = ReloadPlan(running: running, wanted: specs) { "\($0.url)" }
      for id in plan.removed {
        guard let p = paths[id] else { continue }
        p.removed = true
        timers.removeValue(forKey: .probe(p.id))?.cancel()
        logger.notice("removing path", metadata: ["path": "\(p.id)", "url": "\(p.spec.url)"])
        run(machine.removePath(p.id))
        let session = p.session
        session.close(timeout: .seconds(5)).whenComplete { _ in }
      }
      run(machine.reconfigure(multipath))
      fencer.bound = machine.configuration.noPathRetry
      for (id, spec) in plan.kept {
        paths[id]?.session.updateTimeouts(
          keepaliveInterval: spec.configuration.keepaliveInterval,
          keepaliveTimeout: spec.configuration.keepaliveTimeout,
          commandTimeout: spec.configuration.commandTimeout)
      }
      for spec in plan.added {
        var config = spec.configuration
        config.failFast = true
        let id = PathID((order.map(\.rawValue).max() ?? 0) + 1)
        let path = Path(id: id, spec: spec, session: ISCSISession.unconnected(config, on: eventLoop, logger: logger))
        add(path)
        // Not logged in yet: it takes I/O once its first probe succeeds.
        run(machine.pathFailed(id, reason: PathFailure(.probeFailed, context: "new path, not logged in yet")))
      }
      let (added, removed) = (plan.added.count, plan.removed.count)
      let summary =
        "reloaded: \(specs.count) path(s), \(added) added, \(removed) removed, policy \(multipath.policy), no-path-retry \(multipath.noPathRetry.components.seconds) s"
      logger.notice("\(summary)")
      return summary
    }
  }

  /// Manual failback: reinstated paths held back take I/O again.
  public func failback() -> EventLoopFuture<String> {
    eventLoop.submit { [self] in
      let held = machine.status().filter { $0.state == .standby }.count
      run(machine.failback())
      let summary = "failback: \(held) standby path(s) considered"
      logger.notice("\(summary)")
      return summary
    }
  }

  // MARK: - Status

  private func sample() {
    let now = NIODeadline.now()
    let status = machine.status()
    for row in status {
      guard let path = paths[row.path] else { continue }
      path.samples.append((now, row.statistics.ios, row.statistics.bytes))
      if path.samples.count > 6 { path.samples.removeFirst(path.samples.count - 6) }
    }
  }

  /// A snapshot for `status`, the control socket and metrics.
  public func report(device: String? = nil, export exportURI: String? = nil) -> EventLoopFuture<VolumeStatusReport> {
    eventLoop.submit { [self] in
      let now = NIODeadline.now()
      let rows = machine.status()
      var reports: [PathReport] = []
      for row in rows {
        guard let path = paths[row.path] else { continue }
        var iops = 0.0
        var mbps = 0.0
        if let first = path.samples.first {
          let seconds = Double((now - first.0).nanoseconds) / 1e9
          if seconds > 0.2 {
            iops = Double(row.statistics.ios &- first.1) / seconds
            mbps = Double(row.statistics.bytes &- first.2) / seconds / 1e6
          }
        }
        let state = row.state.name
        var reason: String? = nil
        switch row.state {
        case .failed(let why): reason = why.description
        case .probing: reason = path.session.lastError
        default: break
        }
        let config = path.spec.configuration
        var report =
          PathReport(
            id: row.path.rawValue, url: path.spec.url.description, portal: "\(path.spec.url.portal)",
            interface: config.interface, source: config.sourceAddress, state: state, reason: reason,
            group: row.group, priority: row.priority,
            isid: hex12(path.session.configuration.login.isid),
            tsih: path.session.state == .fullFeature ? path.session.tsih : 0,
            ios: row.statistics.ios, bytes: row.statistics.bytes, errors: row.statistics.errors,
            failovers: row.statistics.failovers, failures: path.failures, reinstatements: path.reinstatements,
            outstandingIOs: row.statistics.outstandingIOs, iops: iops, megabytesPerSecond: mbps,
            latency: Volume.latencyReport(row.statistics.latency))
        report.portGroup = row.portGroup
        report.alua = row.access?.description
        report.session = Volume.sessionReport(path.session)
        reports.append(report)
      }
      var report = VolumeStatusReport(
        name: options.name, device: device, export: exportURI, targetName: targetName, lun: lun,
        deviceIdentifier: info.deviceIdentifier, sizeBytes: capacity, blockSize: info.blockSize,
        readOnly: readOnly, policy: "\(machine.configuration.policy)",
        failback: Volume.describe(machine.configuration.failback),
        noPathRetrySeconds: Int(machine.configuration.noPathRetry.components.seconds), queuedIOs: machine.queuedIOs,
        noPathFailures: noPathFailures, requests: counts, latency: Volume.latencyReport(latency), paths: reports,
        uptimeSeconds: Double((now - opened).nanoseconds) / 1e9, flow: currentFlow)
      report.reservationKey = registrationKey.map(PRReply.hex)
      report.reservationConflicts = reservationConflicts
      report.capacityChanges = capacityChanges
      return report
    }
  }

  static func describe(_ failback: FailbackPolicy) -> String {
    switch failback {
    case .immediate: return "immediate"
    case .manual: return "manual"
    case .deferred(let s): return "\(s)"
    }
  }

  static func latencyReport(_ h: LatencyHistogram) -> LatencyReport {
    func seconds(_ d: Duration?) -> Double? { d.map { Double($0.nanosecondsSaturating) / 1e9 } }
    return LatencyReport(
      upperBoundsSeconds: LatencyHistogram.upperBounds.map { Double($0) / 1e9 }, counts: h.counts,
      sumSeconds: Double(h.sum.nanosecondsSaturating) / 1e9, p50Seconds: seconds(h.quantile(0.5)),
      p99Seconds: seconds(h.quantile(0.99)), maxSeconds: h.total > 0 ? seconds(h.maximum) : nil)
  }

  /// Path states, for tests: "active", "failed", ...
  public func pathStates() -> EventLoopFuture<[String]> {
    report().map { $0.paths.map(\.state) }
  }

  /// Sets `observer` on the event loop.
  public func observe(_ observer: @escaping @Sendable (VolumeEvent) -> Void) -> EventLoopFuture<Void> {
    eventLoop.submit { self.observer = observer }
  }

  /// Gives up on a path's connection as a black hole would (keepalive timeout) but
  /// leaves it open, so the target keeps the old session (for tests).
  public func abandonPathForTesting(_ index: Int) {
    eventLoop.execute { [self] in paths[PathID(UInt32(index))]?.session.abandonConnectionForTesting() }
  }

  /// Drops a path's connection as a cable pull would (for tests).
  public func dropPathForTesting(_ index: Int) {
    eventLoop.execute { [self] in paths[PathID(UInt32(index))]?.session.dropConnectionForTesting() }
  }
}

extension Duration {
  /// Whole nanoseconds, saturating.
  var nanosecondsSaturating: Int64 {
    let (seconds, attoseconds) = components
    let (ns, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
    if overflow { return seconds < 0 ? .min : .max }
    return ns &+ attoseconds / 1_000_000_000
  }
}

/// A short description of an error for logs and status.
public func describeError(_ error: Error) -> String {
  if let e = error as? LunbridgeError { return e.errorMessage }
  if let e = error as? CocoaError { return describeFileError(e) }
  return plainDescription(of: error)
}

/// A file operation's error as one line: the path and the system's reason
/// (FoundationEssentials' errors print as structures).
func describeFileError(_ error: Error) -> String {
  guard let e = error as? CocoaError else { return "\(error)" }
  let path = e.filePath.map { "\($0): " } ?? ""
  if let posix = e.underlying as? POSIXError { return path + String(cString: strerror(posix.code.rawValue)) }
  return path + "file operation failed (code \(e.code.rawValue))"
}

extension NBDErrno: Error {}

/// An ISID as 12 hex digits (6 bytes), as iscsiadm and the target logs show it.
func hex12(_ value: UInt64) -> String {
  let digits = String(value & 0xFFFF_FFFF_FFFF, radix: 16)
  return String(repeating: "0", count: max(0, 12 - digits.count)) + digits
}

extension PathURLProblem: LunbridgeError {
  public var errorCode: String {
    switch self {
    case .badParameter: return "path.bad-parameter"
    case .otherLogicalUnit: return "path.other-logical-unit"
    }
  }
  public var failureClass: FailureClass { .usage }
}
