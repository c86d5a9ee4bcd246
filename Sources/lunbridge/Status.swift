import ArgumentParser
import Bridge
import FoundationEssentials
import Glibc

/// `lunbridge status [DEVICE|NAME] [--json]`: asks each running volume over its control
/// socket and prints its paths, their states, rates and latencies.
struct Status: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Show the running volumes: paths, states, rates, latencies.")

  @Argument(help: "/dev/nbdN, nbdN or a volume NAME (default: every volume).")
  var volume: String?

  @Flag(help: "Print a JSON array of status reports.")
  var json = false

  @Flag(help: "Also show each path's session: negotiated parameters, timeouts, command window and queue.")
  var sessions = false

  @Option(help: "Seconds to wait for each volume's answer.")
  var timeout: Double = 5

  func validate() throws {
    guard timeout > 0, timeout <= 3600 else {
      throw ValidationError("--timeout must be between 0 and 3600 seconds")
    }
  }

  func run() throws {
    let directory = ControlDirectory(timeout: timeout)
    let answers = try directory.reports(for: volume)
    for failure in answers.failures {
      LogOutput.writeStandardError("lunbridge: warning: \(failure)\n")
    }
    guard !answers.reports.isEmpty else {
      if answers.denied > 0 {
        throw BridgeError(
          .permission, "status needs root: the control sockets in \(directory.directory) are root's (run it with sudo)")
      }
      let why =
        answers.asked == 0
        ? "nothing in \(directory.directory)" : "no socket in \(directory.directory) answered"
      LogOutput.writeStandardError("lunbridge: no attached volumes (\(why))\n")
      // As iscsiadm -m session with no sessions: ISCSI_ERR_NO_OBJS_FOUND.
      throw ExitCode(ExitStatus.notFound.rawValue)
    }
    let reports = answers.reports.sorted { $0.name < $1.name }
    if json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
      encoder.nonConformingFloatEncodingStrategy = .convertToString(
        positiveInfinity: "+Inf", negativeInfinity: "-Inf", nan: "NaN")
      print(String(decoding: try encoder.encode(reports), as: UTF8.self))
    } else {
      print(StatusFormatter.renderStatusTable(reports, sessions: sessions), terminator: "")
    }
  }
}

/// `lunbridge reload NAME`: asks a running volume to read its volume file again.
struct Reload: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Ask a running volume to reload its volume file.")

  @Argument(help: "The volume NAME, /dev/nbdN or nbdN.")
  var volume: String

  func run() throws {
    let socket = try ControlDirectory().socket(for: volume)
    print(try ControlClient.reload(socket: socket))
  }
}

/// `lunbridge rescan NAME`: the LU grew (or shrank) on the array; re-read its capacity and
/// give the device the new size, as `iscsiadm -m session -R` and `multipathd resize map` do.
struct Rescan: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Re-read a running volume's capacity and give its device the new size (online resize).",
    discussion: """
      Growing applies at once (the kernel reports a capacity change; then grow the filesystem, \
      e.g. resize2fs or xfs_growfs).
      Shrinking is refused while the device is in use.
      A capacity change the target announces (unit attention 2A/09) is applied the same way.
      """)

  @Argument(help: "The volume NAME, /dev/nbdN or nbdN.")
  var volume: String

  func run() throws {
    let socket = try ControlDirectory().socket(for: volume)
    print(try ControlClient.action("rescan", socket: socket, timeout: 60))
  }
}

/// `lunbridge failback NAME`: with `--failback manual`, paths that came back wait until
/// this is run.
struct Failback: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Let reinstated paths that wait for a manual failback take I/O again.")

  @Argument(help: "The volume NAME, /dev/nbdN or nbdN.")
  var volume: String

  func run() throws {
    let socket = try ControlDirectory().socket(for: volume)
    print(try ControlClient.action("failback", socket: socket))
  }
}
