import FoundationEssentials
import Glibc
import ISCSIInitiator
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

// Prometheus metrics of the served volumes: the text exposition format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/), served over HTTP at
// GET /metrics.
//
// Per volume (labels volume, device; device is "" for an export):
//   lunbridge_volume_info{..., export, target, lun, device_identifier, policy} 1
//   lunbridge_size_bytes, lunbridge_uptime_seconds, lunbridge_queued_ios      gauges
//   lunbridge_requests_total{type=read|write|flush|trim|write_zeroes}          counter
//   lunbridge_bytes_total{direction=read|write}                               counter
//   lunbridge_request_errors_total, lunbridge_no_path_failures_total          counters
//   lunbridge_request_latency_seconds                                         histogram
// Per path (labels volume, path, portal, interface; interface is "" when unbound):
//   lunbridge_path_state{state=active|standby|probing|failed|disabled}       gauge, one-hot:
//     exactly one of the five series is 1 (a state outside the five gets a series of its own)
//   lunbridge_path_ios_total, _bytes_total, _errors_total, _failovers_total,
//     _failures_total, _reinstatements_total                                  counters
//   lunbridge_path_outstanding_ios                                            gauge
//   lunbridge_path_latency_seconds                                            histogram

public enum PrometheusText {
  /// The content type of the 0.0.4 text format.
  public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

  /// The path states `lunbridge_path_state` always has a series for.
  public static let pathStates = ["active", "standby", "probing", "failed", "disabled"]

  /// Every metric family, HELP and TYPE once each, then its samples for all volumes.
  /// Families without samples (no volumes, no paths) still get their HELP and TYPE.
  public static func render(_ reports: [VolumeStatusReport]) -> String {
    var families: [Family] = []
    func volumeFamily(
      _ name: String, _ type: String, _ help: String,
      _ samples: (VolumeStatusReport, Labels, inout Family) -> Void
    ) {
      var family = Family(name: name, type: type, help: help)
      for r in reports { samples(r, volumeLabels(r), &family) }
      families.append(family)
    }
    func pathFamily(
      _ name: String, _ type: String, _ help: String,
      _ samples: (PathReport, Labels, inout Family) -> Void
    ) {
      var family = Family(name: name, type: type, help: help)
      for r in reports {
        for p in r.paths { samples(p, pathLabels(r, p), &family) }
      }
      families.append(family)
    }

    volumeFamily("lunbridge_volume_info", "gauge", "The volume's target, LUN and policy; always 1.") {
      r, l, f in
      f.add(
        l + [
          ("export", r.export ?? ""), ("target", r.targetName), ("lun", String(r.lun)),
          ("device_identifier", r.deviceIdentifier ?? ""), ("policy", r.policy),
        ], "1")
    }
    volumeFamily("lunbridge_size_bytes", "gauge", "Size of the LUN in bytes.") { r, l, f in
      f.add(l, String(r.sizeBytes))
    }
    volumeFamily("lunbridge_uptime_seconds", "gauge", "Seconds since the volume was opened.") { r, l, f in
      f.add(l, number(r.uptimeSeconds))
    }
    volumeFamily("lunbridge_requests_total", "counter", "NBD requests served, by type.") { r, l, f in
      let q = r.requests
      for (type, n) in [
        ("read", q.reads), ("write", q.writes), ("flush", q.flushes), ("trim", q.trims),
        ("write_zeroes", q.writeZeroes),
      ] {
        f.add(l + [("type", type)], String(n))
      }
    }
    volumeFamily("lunbridge_bytes_total", "counter", "Bytes read and written by NBD requests.") { r, l, f in
      f.add(l + [("direction", "read")], String(r.requests.readBytes))
      f.add(l + [("direction", "write")], String(r.requests.writeBytes))
    }
    volumeFamily("lunbridge_request_errors_total", "counter", "NBD requests answered with an error.") {
      r, l, f in
      f.add(l, String(r.requests.errors))
    }
    volumeFamily(
      "lunbridge_request_latency_seconds", "histogram",
      "Latency of NBD requests as the volume served them, failover waits included."
    ) { r, l, f in
      f.addHistogram(l, r.latency)
    }
    volumeFamily("lunbridge_queued_ios", "gauge", "I/Os waiting for a usable path.") { r, l, f in
      f.add(l, String(r.queuedIOs))
    }
    volumeFamily(
      "lunbridge_no_path_failures_total", "counter",
      "I/Os failed because no path came back within no-path-retry."
    ) { r, l, f in
      f.add(l, String(r.noPathFailures))
    }
    volumeFamily(
      "lunbridge_reservation_conflicts_total", "counter",
      "Requests the target refused with RESERVATION CONFLICT (another initiator holds the reservation)."
    ) { r, l, f in
      f.add(l, String(r.reservationConflicts ?? 0))
    }
    let flowCounters: [(String, String, KeyPath<FlowCounts, UInt64>)] = [
      (
        "lunbridge_export_refused_connections_total", "Export connections refused over the connection caps.",
        \.refusedConnections
      ),
      (
        "lunbridge_export_handshake_timeouts_total",
        "Export connections closed for not finishing the NBD handshake in time.", \.handshakeTimeouts
      ),
      (
        "lunbridge_flow_paused_total",
        "Times an NBD connection stopped being read because its requests reached a bound.", \.paused
      ),
      (
        "lunbridge_cancelled_requests_total",
        "Requests dropped before reaching the target because their client had gone.", \.cancelled
      ),
    ]
    for (name, help, counter) in flowCounters {
      volumeFamily(name, "counter", help) { r, l, f in f.add(l, String(r.flow?[keyPath: counter] ?? 0)) }
    }
    volumeFamily("lunbridge_inflight_bytes", "gauge", "Bytes of NBD requests and unsent replies held.") { r, l, f in
      f.add(l, String(r.flow?.bytesInFlight ?? 0))
    }

    pathFamily(
      "lunbridge_path_state", "gauge",
      "1 for the path's current state (active, standby, probing, failed, disabled), 0 for the others."
    ) { p, l, f in
      var states = pathStates
      if !states.contains(p.state) { states.append(p.state) }
      for s in states { f.add(l + [("state", s)], s == p.state ? "1" : "0") }
    }
    // One sample per path, one value each.
    let perPath: [(name: String, type: String, help: String, value: (PathReport) -> String)] = [
      ("lunbridge_path_ios_total", "counter", "I/Os completed on the path.", { String($0.ios) }),
      ("lunbridge_path_bytes_total", "counter", "Bytes of the I/Os completed on the path.", { String($0.bytes) }),
      ("lunbridge_path_errors_total", "counter", "I/Os completed on the path with an error.", { String($0.errors) }),
      (
        "lunbridge_path_failovers_total", "counter", "I/Os taken off the path because it failed.",
        { String($0.failovers) }
      ),
      (
        "lunbridge_path_failures_total", "counter", "Times the path went from working to failed.",
        { String($0.failures) }
      ),
      (
        "lunbridge_path_reinstatements_total", "counter", "Times the failed path was reinstated after a probe.",
        { String($0.reinstatements) }
      ),
      ("lunbridge_path_outstanding_ios", "gauge", "I/Os in flight on the path.", { String($0.outstandingIOs) }),
    ]
    for metric in perPath {
      pathFamily(metric.name, metric.type, metric.help) { p, l, f in f.add(l, metric.value(p)) }
    }
    pathFamily("lunbridge_path_latency_seconds", "histogram", "Completion latency of I/Os on the path.") {
      p, l, f in
      f.addHistogram(l, p.latency)
    }

    return families.map { $0.text }.joined()
  }

  typealias Labels = [(String, String)]

  static func volumeLabels(_ r: VolumeStatusReport) -> Labels {
    [("volume", r.name), ("device", r.device ?? "")]
  }

  static func pathLabels(_ r: VolumeStatusReport, _ p: PathReport) -> Labels {
    [("volume", r.name), ("path", String(p.id)), ("portal", p.portal), ("interface", p.interface ?? "")]
  }

  struct Family {
    var name: String
    var type: String
    var help: String
    var lines: [String] = []

    mutating func add(_ labels: Labels, _ value: String, suffix: String = "") {
      lines.append("\(name)\(suffix)\(PrometheusText.labelSet(labels)) \(value)")
    }

    /// `_bucket` per finite bound (cumulative) and `+Inf`, then `_sum` and `_count`. Counts
    /// beyond the finite bounds (the overflow bucket) only show in `+Inf`.
    mutating func addHistogram(_ labels: Labels, _ latency: LatencyReport) {
      var cumulative: UInt64 = 0
      let finite = latency.upperBoundsSeconds.prefix(while: { $0.isFinite })
      for (i, bound) in finite.enumerated() where i < latency.counts.count {
        cumulative += latency.counts[i]
        add(labels + [("le", PrometheusText.number(bound))], String(cumulative), suffix: "_bucket")
      }
      let total = latency.total
      add(labels + [("le", "+Inf")], String(total), suffix: "_bucket")
      add(labels, PrometheusText.number(latency.sumSeconds), suffix: "_sum")
      add(labels, String(total), suffix: "_count")
    }

    var text: String {
      var out = "# HELP \(name) \(PrometheusText.escapeHelp(help))\n# TYPE \(name) \(type)\n"
      for line in lines { out += line + "\n" }
      return out
    }
  }

  static func labelSet(_ labels: Labels) -> String {
    guard !labels.isEmpty else { return "" }
    return "{" + labels.map { "\($0.0)=\"\(escapeLabelValue($0.1))\"" }.joined(separator: ",") + "}"
  }

  /// Label values escape backslash, double quote and line feed.
  public static func escapeLabelValue(_ s: String) -> String {
    var out = ""
    for c in s.unicodeScalars {
      switch c {
      case "\\": out += "\\\\"
      case "\"": out += "\\\""
      case "\n": out += "\\n"
      default: out.unicodeScalars.append(c)
      }
    }
    return out
  }

  /// HELP text escapes backslash and line feed.
  public static func escapeHelp(_ s: String) -> String {
    s.replacing("\\", with: "\\\\").replacing("\n", with: "\\n")
  }

  /// A sample value or bound: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
  public static func number(_ v: Double) -> String {
    if v.isNaN { return "NaN" }
    if v == .infinity { return "+Inf" }
    if v == -.infinity { return "-Inf" }
    if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
    return "\(v)"
  }
}

/// Serves `GET /metrics` (Prometheus text format) on a TCP address; other paths get 404,
/// other methods 405. One request per connection.
public final class MetricsServer: Sendable {
  /// How long one connection may stay open.
  static let connectionTimeout: TimeAmount = .seconds(10)

  public let host: String
  public let port: Int
  private let channel: Channel

  private init(host: String, port: Int, channel: Channel) {
    self.host = host
    self.port = port
    self.channel = channel
  }

  /// The port actually bound (for port 0).
  public var boundPort: Int? { channel.localAddress?.port }

  /// `tcp:[HOST:]PORT` (or the same without `tcp:`): host default 127.0.0.1, IPv6 as
  /// `[::1]:PORT`, port 0 picks a free port.
  public static func parseAddress(_ text: String) throws -> (host: String, port: Int) {
    if text.hasPrefix("unix:") {
      throw BridgeError(.usage, "metrics address '\(text)': metrics are served over TCP: expected tcp:[HOST:]PORT")
    }
    let rest = text.hasPrefix("tcp:") ? String(text.dropFirst(4)) : text
    let (host, portText) = try splitHostPort(rest, what: "metrics address '\(text)'")
    guard !host.isEmpty else { throw BridgeError(.usage, "metrics address '\(text)': empty host") }
    guard let port = Int(portText), (0...65535).contains(port) else {
      throw BridgeError(.usage, "metrics address '\(text)': '\(portText)' is not a port number")
    }
    return (host, port)
  }

  /// Listens on `listen` (see `parseAddress`) on a loop of
  /// `MultiThreadedEventLoopGroup.singleton`; each scrape calls `reports`.
  public static func start(
    listen: String, reports: @escaping @Sendable () -> EventLoopFuture<[VolumeStatusReport]>, logger: Logger
  ) async throws -> MetricsServer {
    let (host, port) = try parseAddress(listen)
    let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .childChannelInitializer { child in
        child.eventLoop.makeCompletedFuture {
          try child.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
          try child.pipeline.syncOperations.addHandler(MetricsHTTPHandler(reports: reports, logger: logger))
        }
      }
    let channel: Channel
    do {
      channel = try await bootstrap.bind(host: host, port: port).get()
    } catch {
      throw BridgeError(listenFailureCode(error), "cannot serve metrics on \(listen): \(plainDescription(of: error))")
    }
    logger.debug(
      "metrics endpoint ready", metadata: ["address": "\(host):\(channel.localAddress?.port ?? port)"])
    return MetricsServer(host: host, port: port, channel: channel)
  }

  public func stop() async {
    try? await channel.close().get()
  }
}

final class MetricsHTTPHandler: ChannelInboundHandler {
  typealias InboundIn = HTTPServerRequestPart
  typealias OutboundOut = HTTPServerResponsePart

  private let reports: @Sendable () -> EventLoopFuture<[VolumeStatusReport]>
  private let logger: Logger
  private var head: HTTPRequestHead?
  private var responding = false
  private var deadline: Scheduled<Void>?

  init(reports: @escaping @Sendable () -> EventLoopFuture<[VolumeStatusReport]>, logger: Logger) {
    self.reports = reports
    self.logger = logger
  }

  func handlerAdded(context: ChannelHandlerContext) {
    deadline = context.eventLoop.assumeIsolated().scheduleTask(in: MetricsServer.connectionTimeout) {
      context.close(promise: nil)
    }
  }

  func handlerRemoved(context: ChannelHandlerContext) {
    deadline?.cancel()
    deadline = nil
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head(let h):
      head = h
    case .body:
      break
    case .end:
      guard let head, !responding else { return }
      responding = true
      respond(to: head, context: context)
    }
  }

  func errorCaught(context: ChannelHandlerContext, error: Error) {
    logger.debug("metrics connection failed", metadata: ["error": "\(error)"])
    context.close(promise: nil)
  }

  private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
    let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
    guard path == "/metrics" else {
      return send(.notFound, body: "not found; metrics are at /metrics\n", head: head, context: context)
    }
    guard head.method == .GET || head.method == .HEAD else {
      return send(
        .methodNotAllowed, body: "method not allowed\n", head: head, extraHeaders: [("Allow", "GET, HEAD")],
        context: context)
    }
    reports().hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
      switch result {
      case .success(let reports):
        self.send(
          .ok, body: PrometheusText.render(reports), contentType: PrometheusText.contentType, head: head,
          context: context)
      case .failure(let error):
        self.logger.warning("metrics: cannot collect the status", metadata: ["error": "\(error)"])
        self.send(
          .internalServerError, body: "cannot collect the status: \(error)\n", head: head, context: context)
      }
    }
  }

  private func send(
    _ status: HTTPResponseStatus, body: String, contentType: String = "text/plain; charset=utf-8",
    head: HTTPRequestHead, extraHeaders: [(String, String)] = [], context: ChannelHandlerContext
  ) {
    guard context.channel.isActive else { return }
    var headers = HTTPHeaders([
      ("Content-Type", contentType), ("Content-Length", String(body.utf8.count)), ("Connection", "close"),
    ])
    headers.add(contentsOf: extraHeaders)
    let response = HTTPResponseHead(version: head.version, status: status, headers: headers)
    context.write(wrapOutboundOut(.head(response)), promise: nil)
    if head.method != .HEAD {
      var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
      buffer.writeString(body)
      context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
    }
    context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
      context.close(promise: nil)
    }
  }
}
