import FoundationEssentials
import Glibc
import ISCSIInitiator

/// `/run/lunbridge/nbdN.name`: which volume a device serves, for the udev rule
/// (systemd/99-lunbridge.rules) that makes `/dev/lunbridge/NAME`.
///
/// Lines: the volume name (empty for an attach by URL), the device's backend identifier
/// (`lunbridge:<target-iqn>:<lun>:<device-identifier>`), then open-iscsi's by-path name
/// of the first path (`ip-HOST:PORT-iscsi-IQN-lun-N`) and the LU's NAA identifier as
/// udev's wwn- names show it (`0x...`), each empty when there is none. The rule uses the
/// record only while the device's `backend` attribute equals the second line, so a stale
/// record (a crash left it; another LUN now has nbdN) never names the wrong disk.
public enum VolumeNameRecord {
  public static let runDirectory = "/run/lunbridge"

  public static func path(index: UInt32, runDirectory: String = VolumeNameRecord.runDirectory) -> String {
    "\(runDirectory)/nbd\(index).name"
  }

  public static func contents(name: String, backendIdentifier: String, byPath: String? = nil, wwn: String? = nil)
    -> String
  {
    "\(name)\n\(backendIdentifier)\n\(byPath ?? "")\n\(wwn ?? "")\n"
  }

  /// The name open-iscsi's udev rules give a LUN under /dev/disk/by-path:
  /// `ip-192.0.2.10:3260-iscsi-iqn.2003-01.org.example:disk1-lun-0` (an IPv6 address as
  /// it is, without brackets, as udev's path_id writes it).
  public static func byPath(_ url: ISCSIURL) -> String {
    "ip-\(url.portal.host):\(url.portal.port)-iscsi-\(url.targetName)-lun-\(url.lun)"
  }

  /// Writes the record (atomically), then asks udev to look at the device again: the
  /// kernel's "change" uevent for the connect may have come before the record existed.
  /// Call once the device is connected, before READY=1.
  public static func write(
    name: String, backendIdentifier: String, index: UInt32, byPath: String? = nil, wwn: String? = nil,
    runDirectory: String = VolumeNameRecord.runDirectory, sysfs: String = "/sys"
  ) throws {
    try FileManager.default.createDirectory(
      atPath: runDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
    try contents(name: name, backendIdentifier: backendIdentifier, byPath: byPath, wwn: wwn)
      .write(toFile: path(index: index, runDirectory: runDirectory), atomically: true, encoding: .utf8)
    triggerChange(index: index, sysfs: sysfs)
  }

  /// Removes the record (after the device is disconnected). Missing is fine.
  public static func remove(index: UInt32, runDirectory: String = VolumeNameRecord.runDirectory) {
    try? FileManager.default.removeItem(atPath: path(index: index, runDirectory: runDirectory))
  }

  /// `echo change > /sys/block/nbdN/uevent`; errors ignored (no udev, read-only /sys).
  public static func triggerChange(index: UInt32, sysfs: String = "/sys") {
    let path = "\(sysfs)/block/nbd\(index)/uevent"
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    defer { close(fd) }
    _ = Glibc.write(fd, "change\n", 7)
  }

  /// The name in a record, if its backend line matches `backendIdentifier`.
  public static func read(
    index: UInt32, backendIdentifier: String, runDirectory: String = VolumeNameRecord.runDirectory
  ) -> String? {
    guard let text = try? String(contentsOfFile: path(index: index, runDirectory: runDirectory), encoding: .utf8)
    else { return nil }
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    guard lines.count >= 2, lines[1] == backendIdentifier, !lines[0].isEmpty else { return nil }
    return String(lines[0])
  }
}
