import ArgumentParser
import Bridge
import FoundationEssentials
import Glibc

/// `lunbridge pr NAME|/dev/nbdN ...`: SCSI-3 persistent reservations of a running volume,
/// with mpathpersist's options, output and exit codes, so a script written for
/// `mpathpersist ... /dev/mapper/X` needs only its device argument changed. It goes through
/// the volume's control socket; the volume sends the command on its paths (a registration
/// on every path, everything else through one).
struct PersistentReserve: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pr",
    abstract: "Persistent reservations (SCSI-3 PR) of a running volume, as mpathpersist does them.",
    discussion: """
      Exit codes are mpathpersist's: 0 done, 64 usage error (as every lunbridge command), 5 the target refused the \
      request (ILLEGAL REQUEST), 11 reservation conflict, 12 no such running volume, \
      15 any other failure.
      """)

  @Argument(help: "The volume: its NAME, /dev/nbdN, nbdN or /dev/lunbridge/NAME.")
  var volume: String?

  @Option(name: [.customShort("d"), .long], help: "The volume, as the argument (mpathpersist's --device).")
  var device: String?

  @Flag(name: [.customShort("i"), .customLong("in")], help: "PERSISTENT RESERVE IN (implied by the operation).")
  var prIn = false
  @Flag(name: [.customShort("o"), .customLong("out")], help: "PERSISTENT RESERVE OUT (implied by the operation).")
  var prOut = false

  @Flag(name: [.customShort("k"), .customLong("read-keys")], help: "PR IN: the registered keys.")
  var readKeys = false
  @Flag(name: [.customShort("r"), .customLong("read-reservation")], help: "PR IN: the reservation held, if any.")
  var readReservation = false
  @Flag(name: [.customShort("s"), .customLong("read-full-status")], help: "PR IN: every registration and the holder.")
  var readFullStatus = false
  @Flag(name: [.customShort("c"), .customLong("report-capabilities")], help: "PR IN: what the target supports.")
  var reportCapabilities = false
  @Flag(name: [.customShort("G"), .customLong("register")], help: "PR OUT: register --param-sark (on every path).")
  var register = false
  @Flag(
    name: [.customShort("I"), .customLong("register-ignore")],
    help: "PR OUT: register --param-sark whatever key is registered now (on every path).")
  var registerIgnore = false
  @Flag(name: [.customShort("R"), .customLong("reserve")], help: "PR OUT: take a reservation of --prout-type.")
  var reserve = false
  @Flag(name: [.customShort("L"), .customLong("release")], help: "PR OUT: release the reservation.")
  var release = false
  @Flag(name: [.customShort("C"), .customLong("clear")], help: "PR OUT: remove every registration and the reservation.")
  var clear = false
  @Flag(name: [.customShort("P"), .customLong("preempt")], help: "PR OUT: remove the registrations of --param-sark.")
  var preempt = false
  @Flag(
    name: [.customShort("A"), .customLong("preempt-abort")],
    help: "PR OUT: preempt --param-sark and abort its commands (fencing).")
  var preemptAbort = false

  @Option(name: [.customShort("K"), .customLong("param-rk")], help: "Reservation key (hexadecimal, 0x optional).")
  var paramRK: String?
  @Option(
    name: [.customShort("S"), .customLong("param-sark")], help: "Service action reservation key (hexadecimal).")
  var paramSARK: String?
  @Option(
    name: [.customShort("T"), .customLong("prout-type")],
    help:
      "Reservation type: 1 WE, 3 EA, 5 WE registrants only, 6 EA registrants only, 7 WE all registrants, 8 EA all registrants.")
  var proutType: UInt8?
  @Flag(name: [.customShort("Z"), .customLong("param-aptpl")], help: "Keep the registrations across a target power loss.")
  var paramAPTPL = false
  @Flag(name: [.customShort("Y"), .customLong("param-alltgpt")], help: "Register on every target port at once.")
  var paramAllTargetPorts = false

  @Flag(help: "Print the reply as JSON (every key as a \"0x...\" string).")
  var json = false

  @Option(help: "Seconds to wait for the volume's answer.")
  var timeout: Double = 120

  /// mpathpersist's exit codes (MPATH_PR_* in mpath_persist.h).
  enum Exit {
    static let illegalRequest: Int32 = 5
    static let conflict: Int32 = 11
    static let noVolume: Int32 = 12
    static let other: Int32 = 15
  }

  func operation() throws -> PRRequest.Operation {
    let chosen: [(Bool, PRRequest.Operation)] = [
      (readKeys, .readKeys), (readReservation, .readReservation), (readFullStatus, .readFullStatus),
      (reportCapabilities, .reportCapabilities), (register, .register), (registerIgnore, .registerIgnore),
      (reserve, .reserve), (release, .release), (clear, .clear), (preempt, .preempt), (preemptAbort, .preemptAbort),
    ]
    let picked = chosen.filter(\.0).map(\.1)
    guard picked.count == 1 else {
      throw ValidationError(
        picked.isEmpty
          ? "name one operation: --read-keys, --read-reservation, --read-full-status, --report-capabilities, --register, --register-ignore, --reserve, --release, --clear, --preempt or --preempt-abort"
          : "name one operation, not \(picked.map { "--\($0.rawValue)" }.joined(separator: " and "))")
    }
    let operation = picked[0]
    if prIn && operation.inAction == nil { throw ValidationError("--in with a PR OUT operation (--\(operation.rawValue))") }
    if prOut && operation.outAction == nil { throw ValidationError("--out with a PR IN operation (--\(operation.rawValue))") }
    return operation
  }

  static func key(_ text: String?, option: String) throws -> UInt64 {
    guard var t = text else { return 0 }
    if t.hasPrefix("0x") || t.hasPrefix("0X") { t.removeFirst(2) }
    guard !t.isEmpty, t.count <= 16, let v = UInt64(t, radix: 16) else {
      throw ValidationError("\(option) '\(text!)' is not a key: up to 16 hexadecimal digits, 0x optional")
    }
    return v
  }

  func validate() throws {
    guard (volume == nil) != (device == nil) else {
      throw ValidationError("name the volume once: as the argument or with --device")
    }
    let operation = try operation()
    _ = try Self.key(paramRK, option: "--param-rk")
    _ = try Self.key(paramSARK, option: "--param-sark")
    if let problem = try request(operation).problem { throw ValidationError(problem) }
    guard timeout > 0, timeout <= 3600 else { throw ValidationError("--timeout must be between 0 and 3600 seconds") }
  }

  func request(_ operation: PRRequest.Operation) throws -> PRRequest {
    PRRequest(
      operation: operation, key: try Self.key(paramRK, option: "--param-rk"),
      serviceActionKey: try Self.key(paramSARK, option: "--param-sark"), type: proutType,
      persistThroughPowerLoss: paramAPTPL, allTargetPorts: paramAllTargetPorts)
  }

  func fail(_ code: Int32, _ message: String) -> ExitCode {
    LogOutput.writeStandardError("lunbridge: error: \(message)\n")
    return ExitCode(code)
  }

  func run() throws {
    let operation = try operation()
    let request = try request(operation)
    var selector = volume ?? device!
    if selector.hasPrefix("/dev/lunbridge/") { selector.removeFirst("/dev/lunbridge/".count) }
    let socket: String
    do {
      socket = try ControlDirectory(timeout: 5).socket(for: selector)
    } catch {
      throw fail(Exit.noVolume, "\(error)")
    }
    let reply: PRReply
    do {
      reply = try ControlClient.reservation(request, socket: socket, timeout: timeout)
    } catch {
      throw fail(Exit.other, "\(error)")
    }
    if json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
      print(String(decoding: try encoder.encode(reply), as: UTF8.self))
    } else if reply.ok {
      let text = reply.text(for: operation)
      if !text.isEmpty { print(text) }
    }
    guard reply.ok else {
      let error = reply.error ?? "\(operation.rawValue) failed"
      if reply.conflict { throw fail(Exit.conflict, "persistent reserve \(operation.rawValue): reservation conflict") }
      if error.contains("ILLEGAL REQUEST") {
        throw fail(Exit.illegalRequest, "persistent reserve \(operation.rawValue): \(error)")
      }
      throw fail(Exit.other, "persistent reserve \(operation.rawValue): \(error)")
    }
  }
}
