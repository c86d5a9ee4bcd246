import ISCSIProtocol

// What `lunbridge status`, the control socket and the metrics endpoint report about one
// volume: a plain Codable snapshot taken on the volume's event loop.

/// Latency counts in fixed buckets (upper bounds in seconds, the last bucket is +Inf).
/// `counts[i]` is the number of samples in bucket i alone (not cumulative).
public struct LatencyReport: Codable, Hashable, Sendable {
  public var upperBoundsSeconds: [Double]
  public var counts: [UInt64]
  public var sumSeconds: Double
  public var p50Seconds: Double?
  public var p99Seconds: Double?
  public var maxSeconds: Double?

  public init(
    upperBoundsSeconds: [Double], counts: [UInt64], sumSeconds: Double, p50Seconds: Double?, p99Seconds: Double?,
    maxSeconds: Double?
  ) {
    self.upperBoundsSeconds = upperBoundsSeconds
    self.counts = counts
    self.sumSeconds = sumSeconds
    self.p50Seconds = p50Seconds
    self.p99Seconds = p99Seconds
    self.maxSeconds = maxSeconds
  }

  public var total: UInt64 { counts.reduce(0, +) }
}

/// What a login negotiated (RFC 7143 section 13 keys) in JSON's terms: camelCase keys,
/// numbers and booleans as such, null for what the target did not send. The target's
/// MaxRecvDataSegmentLength is what we may send in one PDU. `info --json` shows it as its
/// `session`, `status --json` inside each path's `session`.
public struct NegotiatedReport: Codable, Hashable, Sendable {
  public var headerDigest: String
  public var dataDigest: String
  public var maxRecvDataSegmentLength: Int
  public var targetMaxRecvDataSegmentLength: Int
  public var firstBurstLength: Int
  public var maxBurstLength: Int
  public var initialR2T: Bool
  public var immediateData: Bool
  public var maxOutstandingR2T: Int
  public var maxConnections: Int
  public var defaultTime2Wait: Int
  public var defaultTime2Retain: Int
  public var errorRecoveryLevel: Int
  public var dataPDUInOrder: Bool
  public var dataSequenceInOrder: Bool
  public var targetPortalGroupTag: Int?
  public var targetAlias: String?
  public var tsih: Int

  public init(_ p: NegotiatedParameters) {
    headerDigest = p.headerDigest ? "CRC32C" : "None"
    dataDigest = p.dataDigest ? "CRC32C" : "None"
    maxRecvDataSegmentLength = p.maxRecvDataSegmentLength
    targetMaxRecvDataSegmentLength = p.maxSendDataSegmentLength
    firstBurstLength = p.firstBurstLength
    maxBurstLength = p.maxBurstLength
    initialR2T = p.initialR2T
    immediateData = p.immediateData
    maxOutstandingR2T = p.maxOutstandingR2T
    maxConnections = p.maxConnections
    defaultTime2Wait = p.defaultTime2Wait
    defaultTime2Retain = p.defaultTime2Retain
    errorRecoveryLevel = p.errorRecoveryLevel
    dataPDUInOrder = p.dataPDUInOrder
    dataSequenceInOrder = p.dataSequenceInOrder
    targetPortalGroupTag = p.targetPortalGroupTag
    targetAlias = p.targetAlias
    tsih = Int(p.tsih)
  }

  enum CodingKeys: String, CodingKey {
    case headerDigest, dataDigest, maxRecvDataSegmentLength, targetMaxRecvDataSegmentLength, firstBurstLength
    case maxBurstLength, initialR2T, immediateData, maxOutstandingR2T, maxConnections, defaultTime2Wait
    case defaultTime2Retain, errorRecoveryLevel, dataPDUInOrder, dataSequenceInOrder, targetPortalGroupTag
    case targetAlias, tsih
  }

  public func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(headerDigest, forKey: .headerDigest)
    try c.encode(dataDigest, forKey: .dataDigest)
    try c.encode(maxRecvDataSegmentLength, forKey: .maxRecvDataSegmentLength)
    try c.encode(targetMaxRecvDataSegmentLength, forKey: .targetMaxRecvDataSegmentLength)
    try c.encode(firstBurstLength, forKey: .firstBurstLength)
    try c.encode(maxBurstLength, forKey: .maxBurstLength)
    try c.encode(initialR2T, forKey: .initialR2T)
    try c.encode(immediateData, forKey: .immediateData)
    try c.encode(maxOutstandingR2T, forKey: .maxOutstandingR2T)
    try c.encode(maxConnections, forKey: .maxConnections)
    try c.encode(defaultTime2Wait, forKey: .defaultTime2Wait)
    try c.encode(defaultTime2Retain, forKey: .defaultTime2Retain)
    try c.encode(errorRecoveryLevel, forKey: .errorRecoveryLevel)
    try c.encode(dataPDUInOrder, forKey: .dataPDUInOrder)
    try c.encode(dataSequenceInOrder, forKey: .dataSequenceInOrder)
    try c.encode(targetPortalGroupTag, forKey: .targetPortalGroupTag)  // null, not left out
    try c.encode(targetAlias, forKey: .targetAlias)
    try c.encode(tsih, forKey: .tsih)
  }
}

/// A path's iSCSI session in `status`: what the login negotiated (the keys of
/// `NegotiatedReport`, at the same level in JSON), the timeouts in force, and the command
/// window and queue right now.
public struct SessionReport: Codable, Hashable, Sendable {
  public var negotiated: NegotiatedReport
  public var loginTimeoutSeconds: Double
  public var keepaliveIntervalSeconds: Double
  public var keepaliveTimeoutSeconds: Double
  public var commandTimeoutSeconds: Double
  public var recoveryTimeoutSeconds: Double
  /// ExpCmdSN and MaxCmdSN as last sent by the target, and how many more commands the
  /// window takes (nil while not connected).
  public var expCmdSN: UInt32?
  public var maxCmdSN: UInt32?
  public var windowAvailable: Int?
  /// Commands sent and not yet answered, and commands waiting (window or login).
  public var inFlight: Int
  public var queued: Int

  public init(
    negotiated: NegotiatedReport, loginTimeoutSeconds: Double, keepaliveIntervalSeconds: Double,
    keepaliveTimeoutSeconds: Double, commandTimeoutSeconds: Double, recoveryTimeoutSeconds: Double,
    expCmdSN: UInt32?, maxCmdSN: UInt32?, windowAvailable: Int?, inFlight: Int, queued: Int
  ) {
    self.negotiated = negotiated
    self.loginTimeoutSeconds = loginTimeoutSeconds
    self.keepaliveIntervalSeconds = keepaliveIntervalSeconds
    self.keepaliveTimeoutSeconds = keepaliveTimeoutSeconds
    self.commandTimeoutSeconds = commandTimeoutSeconds
    self.recoveryTimeoutSeconds = recoveryTimeoutSeconds
    self.expCmdSN = expCmdSN
    self.maxCmdSN = maxCmdSN
    self.windowAvailable = windowAvailable
    self.inFlight = inFlight
    self.queued = queued
  }

  enum CodingKeys: String, CodingKey {
    case loginTimeoutSeconds, keepaliveIntervalSeconds, keepaliveTimeoutSeconds, commandTimeoutSeconds
    case recoveryTimeoutSeconds, expCmdSN, maxCmdSN, windowAvailable, inFlight, queued
  }

  public init(from decoder: Decoder) throws {
    negotiated = try NegotiatedReport(from: decoder)
    let c = try decoder.container(keyedBy: CodingKeys.self)
    loginTimeoutSeconds = try c.decode(Double.self, forKey: .loginTimeoutSeconds)
    keepaliveIntervalSeconds = try c.decode(Double.self, forKey: .keepaliveIntervalSeconds)
    keepaliveTimeoutSeconds = try c.decode(Double.self, forKey: .keepaliveTimeoutSeconds)
    commandTimeoutSeconds = try c.decode(Double.self, forKey: .commandTimeoutSeconds)
    recoveryTimeoutSeconds = try c.decode(Double.self, forKey: .recoveryTimeoutSeconds)
    expCmdSN = try c.decodeIfPresent(UInt32.self, forKey: .expCmdSN)
    maxCmdSN = try c.decodeIfPresent(UInt32.self, forKey: .maxCmdSN)
    windowAvailable = try c.decodeIfPresent(Int.self, forKey: .windowAvailable)
    inFlight = try c.decode(Int.self, forKey: .inFlight)
    queued = try c.decode(Int.self, forKey: .queued)
  }

  public func encode(to encoder: Encoder) throws {
    try negotiated.encode(to: encoder)
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(loginTimeoutSeconds, forKey: .loginTimeoutSeconds)
    try c.encode(keepaliveIntervalSeconds, forKey: .keepaliveIntervalSeconds)
    try c.encode(keepaliveTimeoutSeconds, forKey: .keepaliveTimeoutSeconds)
    try c.encode(commandTimeoutSeconds, forKey: .commandTimeoutSeconds)
    try c.encode(recoveryTimeoutSeconds, forKey: .recoveryTimeoutSeconds)
    try c.encode(expCmdSN, forKey: .expCmdSN)
    try c.encode(maxCmdSN, forKey: .maxCmdSN)
    try c.encode(windowAvailable, forKey: .windowAvailable)
    try c.encode(inFlight, forKey: .inFlight)
    try c.encode(queued, forKey: .queued)
  }
}

/// One path (one iSCSI session) of a volume.
public struct PathReport: Codable, Hashable, Sendable {
  /// Stable number of the path within the volume (0, 1, ...).
  public var id: UInt32
  /// The path's URL without any password (with its `?iface=` / `?source=`).
  public var url: String
  /// HOST:PORT of the portal.
  public var portal: String
  /// The NIC the path is bound to (`?iface=`), if any.
  public var interface: String?
  /// The source address the path is bound to (`?source=`), if any.
  public var source: String?
  /// active, standby, failed, probing, disabled, unavailable or transitioning.
  public var state: String
  /// Why the path failed (when state is failed or probing).
  public var reason: String?
  public var group: Int
  public var priority: Int
  /// The session's ISID (12 hex digits) and its current TSIH (0 when not logged in).
  public var isid: String
  public var tsih: UInt16
  /// I/Os and bytes completed on this path since start.
  public var ios: UInt64
  public var bytes: UInt64
  public var errors: UInt64
  /// I/Os taken off this path because it failed.
  public var failovers: UInt64
  /// Times this path went from working to failed.
  public var failures: UInt64
  /// Times a failed path was reinstated after a probe.
  public var reinstatements: UInt64
  public var outstandingIOs: Int
  /// Over the last few seconds.
  public var iops: Double
  public var megabytesPerSecond: Double
  public var latency: LatencyReport
  /// With ALUA: the path's target port group and its asymmetric access state as last
  /// read (active/optimized, active/non-optimized, standby, unavailable, transitioning, ...).
  public var portGroup: UInt16? = nil
  public var alua: String? = nil
  /// The session as negotiated and as it runs (nil before its first login).
  public var session: SessionReport? = nil

  public init(
    id: UInt32, url: String, portal: String, interface: String?, source: String?, state: String, reason: String?,
    group: Int, priority: Int, isid: String, tsih: UInt16, ios: UInt64, bytes: UInt64, errors: UInt64,
    failovers: UInt64, failures: UInt64, reinstatements: UInt64, outstandingIOs: Int, iops: Double,
    megabytesPerSecond: Double, latency: LatencyReport
  ) {
    self.id = id
    self.url = url
    self.portal = portal
    self.interface = interface
    self.source = source
    self.state = state
    self.reason = reason
    self.group = group
    self.priority = priority
    self.isid = isid
    self.tsih = tsih
    self.ios = ios
    self.bytes = bytes
    self.errors = errors
    self.failovers = failovers
    self.failures = failures
    self.reinstatements = reinstatements
    self.outstandingIOs = outstandingIOs
    self.iops = iops
    self.megabytesPerSecond = megabytesPerSecond
    self.latency = latency
  }
}

/// Counts of the NBD requests a volume served, per type.
public struct RequestCounts: Codable, Hashable, Sendable {
  public var reads: UInt64 = 0
  public var writes: UInt64 = 0
  public var flushes: UInt64 = 0
  public var trims: UInt64 = 0
  public var writeZeroes: UInt64 = 0
  public var readBytes: UInt64 = 0
  public var writeBytes: UInt64 = 0
  /// Requests answered with an error (any type, including invalid ones).
  public var errors: UInt64 = 0

  public init() {}
}

/// One volume: what `lunbridge status --json` prints per volume.
public struct VolumeStatusReport: Codable, Hashable, Sendable {
  /// The volume name (the volume file's name, or `--name`); the control socket is
  /// `/run/lunbridge/NAME.sock`.
  public var name: String
  /// `/dev/nbdN` for attach, nil for serve.
  public var device: String?
  /// The NBD URI for serve, nil for attach.
  public var export: String?
  public var targetName: String
  public var lun: UInt16
  /// VPD page 0x83 designator the paths were checked against.
  public var deviceIdentifier: String?
  public var sizeBytes: UInt64
  public var blockSize: Int
  public var readOnly: Bool
  public var policy: String
  public var failback: String
  public var noPathRetrySeconds: Int
  /// I/Os waiting for a usable path right now.
  public var queuedIOs: Int
  /// I/Os that failed with EIO because no path came back within no-path-retry.
  public var noPathFailures: UInt64
  public var requests: RequestCounts
  /// Latency of NBD requests as the volume served them (all types, including failover waits).
  public var latency: LatencyReport
  public var paths: [PathReport]
  /// Seconds since the volume was opened.
  public var uptimeSeconds: Double
  /// Flow control and export admission (absent in reports of older versions).
  public var flow: FlowCounts?
  /// The persistent reservation key the volume keeps registered on its paths ("0x...").
  public var reservationKey: String?
  /// Requests the target refused with RESERVATION CONFLICT (absent in older reports).
  public var reservationConflicts: UInt64?
  /// Size changes applied since the volume was opened (rescan, 2A/09).
  public var capacityChanges: UInt64?

  public init(
    name: String, device: String?, export: String?, targetName: String, lun: UInt16, deviceIdentifier: String?,
    sizeBytes: UInt64, blockSize: Int, readOnly: Bool, policy: String, failback: String, noPathRetrySeconds: Int,
    queuedIOs: Int, noPathFailures: UInt64, requests: RequestCounts, latency: LatencyReport, paths: [PathReport],
    uptimeSeconds: Double, flow: FlowCounts? = nil
  ) {
    self.name = name
    self.device = device
    self.export = export
    self.targetName = targetName
    self.lun = lun
    self.deviceIdentifier = deviceIdentifier
    self.sizeBytes = sizeBytes
    self.blockSize = blockSize
    self.readOnly = readOnly
    self.policy = policy
    self.failback = failback
    self.noPathRetrySeconds = noPathRetrySeconds
    self.queuedIOs = queuedIOs
    self.noPathFailures = noPathFailures
    self.requests = requests
    self.latency = latency
    self.paths = paths
    self.uptimeSeconds = uptimeSeconds
    self.flow = flow
  }
}
