import Failure
import FoundationEssentials
import Glibc

/// The control sockets in a run directory, and which of them serves a volume NAME or a
/// device: what `lunbridge status` and `lunbridge reload` look up.
public struct ControlDirectory: Sendable {
  public var directory: String
  /// Seconds to wait for each socket's answer.
  public var timeout: Double

  public init(directory: String = ControlServer.defaultDirectory, timeout: Double = 5) {
    self.directory = directory
    self.timeout = timeout
  }

  /// Every `*.sock` in the directory, sorted; none when the directory does not exist.
  public func sockets() -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return names.filter { $0.hasSuffix(".sock") && !$0.hasPrefix(".") }.sorted().map { "\(directory)/\($0)" }
  }

  /// `/dev/nbdN` or `nbdN` gives "nbdN"; anything else nil.
  public static func deviceName(_ text: String) -> String? {
    let name = text.hasPrefix("/dev/") ? String(text.dropFirst(5)) : text
    let digits = name.dropFirst(3)
    guard name.hasPrefix("nbd"), !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else {
      return nil
    }
    return name
  }

  /// What came back from asking several sockets.
  public struct Answers: Sendable {
    public var reports: [VolumeStatusReport] = []
    /// One line per socket that did not answer, naming it.
    public var failures: [String] = []
    /// How many sockets were asked.
    public var asked = 0
    /// How many refused us for lack of permission (not root).
    public var denied = 0
  }

  /// The reports of every volume (`selector` nil), of the volume NAME, or of the volumes
  /// serving a device (`/dev/nbdN`, `nbdN`: the socket named after the device and any
  /// volume whose report names the device). Throws when the NAME has no socket or does
  /// not answer; sockets that do not answer while scanning are listed in `failures`.
  public func reports(for selector: String?) throws -> Answers {
    var answers = Answers()
    if let selector, Self.deviceName(selector) == nil {
      answers.asked = 1
      answers.reports = [try ControlClient.status(socket: try socket(named: selector), timeout: timeout)]
      return answers
    }
    let device = selector.flatMap(Self.deviceName)
    for socket in sockets() {
      answers.asked += 1
      do {
        let report = try ControlClient.status(socket: socket, timeout: timeout)
        if let device, socket != "\(directory)/\(device).sock", report.device != "/dev/\(device)" { continue }
        answers.reports.append(report)
      } catch let e as BridgeError where e.failureClass == .notFound {
        // A socket left by a lunbridge that was killed: removed (when we may), so the
        // next look does not trip on it, and said once.
        if unlink(socket) == 0 {
          answers.failures.append("removed \(socket): its lunbridge is gone")
        } else {
          answers.failures.append("\(e)")
        }
      } catch let e as BridgeError where e.failureClass == .permission {
        answers.denied += 1
        answers.failures.append("\(e)")
      } catch {
        answers.failures.append("\(error)")
      }
    }
    if let device, answers.reports.isEmpty {
      throw BridgeError(.notFound, "/dev/\(device) is not served by a running lunbridge (no answer from \(directory))")
    }
    return answers
  }

  /// The socket of the volume NAME, or of the volume serving a device.
  public func socket(for selector: String) throws -> String {
    guard let device = Self.deviceName(selector) else { return try socket(named: selector) }
    let own = "\(directory)/\(device).sock"
    if FileManager.default.fileExists(atPath: own) { return own }
    for socket in sockets() {
      if let report = try? ControlClient.status(socket: socket, timeout: timeout),
        report.device == "/dev/\(device)"
      {
        return socket
      }
    }
    throw BridgeError(.notFound, "/dev/\(device) is not served by a running lunbridge (no answer from \(directory))")
  }

  func socket(named name: String) throws -> String {
    guard let path = try? ControlServer.socketPath(name: name, directory: directory) else {
      throw BridgeError(.usage, "'\(name)' is neither a volume name nor an NBD device (/dev/nbdN)")
    }
    guard FileManager.default.fileExists(atPath: path) else {
      throw BridgeError(.notFound, "no running volume named '\(name)' (no \(path))")
    }
    return path
  }
}
