import FoundationEssentials
import Glibc
import ISCSIProtocol

/// lunbridge's systemd generator (systemd.generator(7)): at every boot and daemon-reload,
/// `lunbridge@NAME.service` is pulled into multi-user.target for each volume file with
/// `startup = "automatic"`, as `systemctl enable lunbridge@NAME` would, without a link in
/// /etc (open-iscsi's node.startup = automatic). Installed as
/// PREFIX/lib/systemd/system-generators/lunbridge-generator, a link to the binary.
public enum SystemdGenerator {
  /// Where `systemctl enable` would put the link ([Install] WantedBy= of the unit).
  public static let wantedBy = "multi-user.target"
  public static let template = "lunbridge@.service"
  /// Unit directories searched for the template, in systemd's order of precedence.
  public static let unitDirectories = [
    "/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system",
    "/lib/systemd/system",
  ]

  /// What to link for these volumes: the unit names to pull in, and one line per volume
  /// file that is skipped because it cannot be read (its unit would fail the same way).
  public static func plan(_ volumes: [(name: String, result: Result<VolumeConfig, VolumeConfigError>)]) -> (
    units: [String], problems: [String]
  ) {
    var units: [String] = []
    var problems: [String] = []
    for (name, result) in volumes {
      switch result {
      case .success(let config) where config.startup == .automatic: units.append("lunbridge@\(name).service")
      case .success: break
      case .failure(let error): problems.append("\(name): not started at boot: \(error)")
      }
    }
    return (units, problems)
  }

  /// Parses every volume file in `directory` (syntax and keys only: secret files are the
  /// unit's business) and writes the wants links into `normal`. Returns the lines to log.
  public static func run(normal: String, directory: String = VolumeConfig.directory) -> [String] {
    let names = (try? VolumeConfig.names(directory: directory)) ?? []
    let volumes = names.map { name -> (name: String, result: Result<VolumeConfig, VolumeConfigError>) in
      do {
        return (name, .success(try VolumeConfig.load(path: VolumeConfig.path(name: name, directory: directory))))
      } catch let e as VolumeConfigError {
        return (name, .failure(e))
      } catch {
        return (name, .failure(VolumeConfigError(.volumeFile, file: name, message: "\(error)")))
      }
    }
    var (units, log) = plan(volumes)
    guard !units.isEmpty else { return log }
    let target =
      unitDirectories.map { FilePath.join($0, template) }.first { FileManager.default.fileExists(atPath: $0) }
      ?? FilePath.join(unitDirectories[0], template)
    let wants = FilePath.join(normal, "\(wantedBy).wants")
    mkdir(normal, 0o755)
    mkdir(wants, 0o755)
    for unit in units {
      let link = FilePath.join(wants, unit)
      unlink(link)
      if symlink(target, link) != 0 {
        log.append("\(unit): cannot link \(link): \(String(cString: strerror(errno)))")
        units.removeAll { $0 == unit }
      }
    }
    if !units.isEmpty { log.append("started at boot (startup = automatic): \(units.joined(separator: " "))") }
    return log
  }
}
