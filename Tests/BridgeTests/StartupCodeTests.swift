import Foundation
import Logging
import XCTest

@testable import Bridge

/// Releasing the executable's start-up code pages once serving: which mappings, which
/// filesystems and devices allow it, and the release itself on this test process.
final class StartupCodeTests: XCTestCase {
  let logger = Logger(label: "startup-code-test", factory: { _ in SwiftLogNoOpLogHandler() })

  /// The executable's read-only mappings with no private copies: its code and its
  /// read-only data, not the relocated RELRO copy, its writable data, another file's
  /// code, nor a file of the same inode on another device.
  func testReleasableRangesAreTheExecutablesOwnCleanReadOnlyMappings() {
    func mapping(_ header: String, anonymous: Int?) -> String {
      var lines = [header, "Size:                 32 kB", "Rss:                  16 kB"]
      if let anonymous { lines.append("Anonymous:      \(anonymous) kB") }
      lines.append("Locked:                0 kB")
      return lines.joined(separator: "\n")
    }
    let smaps = [
      mapping("5600000000-5600001000 r--p 00000000 fe:01 1234 /usr/bin/lunbridge", anonymous: 0),
      mapping("5600001000-5600009000 r-xp 00001000 fe:01 1234 /usr/bin/lunbridge (deleted)", anonymous: 0),
      mapping("5600009000-560000b000 r--p 00009000 fe:01 1234 /usr/bin/lunbridge", anonymous: 8),
      mapping("560000b000-560000c000 rw-p 0000b000 fe:01 1234 /usr/bin/lunbridge", anonymous: 0),
      mapping("560000c000-560000d000 r--p 0000c000 fe:01 1234 /usr/bin/lunbridge", anonymous: nil),
      mapping("7f0000000000-7f0000100000 r-xp 00000000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6", anonymous: 0),
      mapping("7f0000200000-7f0000300000 r-xp 00000000 08:01 1234 /mnt/other/lunbridge", anonymous: 0),
      mapping("7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]", anonymous: 0),
    ].joined(separator: "\n")
    let device = UInt(0xfe) << 8 | 0x01
    XCTAssertEqual(
      ServingProcess.releasableRanges(smaps: smaps, device: device, inode: 1234),
      [0x56_0000_0000..<0x56_0000_1000, 0x56_0000_1000..<0x56_0000_9000])
    XCTAssertEqual(ServingProcess.releasableRanges(smaps: smaps, device: device, inode: 4321), [])
  }

  func testFilesystemTypeComesFromTheMountOfThatDevice() {
    let mountinfo = """
      22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
      23 22 0:21 / /dev/shm rw,nosuid,nodev shared:2 - tmpfs tmpfs rw
      24 22 0:22 / /sys rw shared:3 master:1 - sysfs sysfs rw
      """
    XCTAssertEqual(ServingProcess.filesystemType(device: UInt(254) << 8 | 1, mountinfo: mountinfo), "ext4")
    XCTAssertEqual(ServingProcess.filesystemType(device: 21, mountinfo: mountinfo), "tmpfs")
    XCTAssertNil(ServingProcess.filesystemType(device: 99, mountinfo: mountinfo))
  }

  /// A sysfs tree of its own: sda1 (a partition of sda), nbd0 and its partition nbd0p1,
  /// dm-0 on nbd0p1, dm-1 on sda1, md0 on dm-1 and dm-0, loop0.
  func testCodeIsKeptWhenItsDeviceMayBeServedByThisProcess() throws {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent(
      "lbsys-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    defer { try? FileManager.default.removeItem(at: root) }
    let fm = FileManager.default
    func dir(_ p: String) throws { try fm.createDirectory(at: root.appendingPathComponent(p), withIntermediateDirectories: true) }
    func file(_ p: String) throws { try Data("1\n".utf8).write(to: root.appendingPathComponent(p)) }
    func link(_ p: String, _ to: String) throws {
      try fm.createSymbolicLink(atPath: root.appendingPathComponent(p).path, withDestinationPath: to)
    }
    for d in [
      "block/sda/sda1", "block/nbd0/nbd0p1", "block/dm-0/slaves", "block/dm-1/slaves", "block/md0/slaves",
      "block/loop0", "dev",
    ] {
      try dir(d)
    }
    try file("block/sda/sda1/partition")
    try file("block/nbd0/nbd0p1/partition")
    try link("block/dm-0/slaves/nbd0p1", "../../nbd0/nbd0p1")
    try link("block/dm-1/slaves/sda1", "../../sda/sda1")
    try link("block/md0/slaves/dm-1", "../../dm-1")
    try link("dev/8:0", "../block/sda")
    try link("dev/8:1", "../block/sda/sda1")
    try link("dev/43:0", "../block/nbd0")
    try link("dev/43:1", "../block/nbd0/nbd0p1")
    try link("dev/253:0", "../block/dm-0")
    try link("dev/253:1", "../block/dm-1")
    try link("dev/9:0", "../block/md0")
    try link("dev/7:0", "../block/loop0")
    let sys = root.appendingPathComponent("dev").path
    func rereadable(_ type: String?, _ major: UInt, _ minor: UInt) -> Bool {
      ServingProcess.executableCanBeReread(filesystemType: type, device: major << 8 | minor, sysDevBlock: sys)
    }
    XCTAssertTrue(rereadable("ext4", 8, 0))
    XCTAssertTrue(rereadable("ext4", 8, 1), "a partition of a local disk")
    XCTAssertTrue(rereadable("xfs", 253, 1), "device-mapper on a local partition")
    XCTAssertFalse(rereadable("ext4", 43, 0), "an NBD device")
    XCTAssertFalse(rereadable("ext4", 43, 1), "a partition of an NBD device")
    XCTAssertFalse(rereadable("ext4", 253, 0), "device-mapper on an NBD partition")
    XCTAssertTrue(rereadable("ext4", 9, 0), "md on local device-mapper")
    try link("block/md0/slaves/dm-0", "../../dm-0")
    XCTAssertFalse(rereadable("ext4", 9, 0), "md with one leg on NBD")
    XCTAssertFalse(rereadable("ext4", 7, 0), "a loop device (its file could be anywhere)")
    XCTAssertFalse(rereadable("ext4", 8, 7), "a device sysfs does not know")
    XCTAssertFalse(rereadable("btrfs", 0, 40), "no block device of its own")
    XCTAssertFalse(rereadable("overlay", 0, 41))
    XCTAssertTrue(rereadable("tmpfs", 0, 42))
    XCTAssertTrue(rereadable("rootfs", 0, 2), "the initramfs")
  }

  /// On this process: the test executable's code and read-only data pages leave the
  /// resident set (when its filesystem allows it, else they stay), and the code still runs
  /// afterwards, its relocated data intact.
  func testReleaseOnThisProcess() throws {
    var st = stat()
    XCTAssertEqual(stat("/proc/self/exe", &st), 0)
    let mountinfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
    let releasable = ServingProcess.executableCanBeReread(
      filesystemType: ServingProcess.filesystemType(device: st.st_dev, mountinfo: mountinfo), device: st.st_dev)
    let before = try residentCodeKiB(inode: UInt64(st.st_ino))
    XCTAssertGreaterThan(before, 0)
    ServingProcess.releaseStartupCode(locked: false, logger: logger)
    let after = try residentCodeKiB(inode: UInt64(st.st_ino))
    if releasable {
      XCTAssertLessThan(after, before / 2, "code pages still resident: \(after) KiB of \(before)")
    } else {
      XCTAssertEqual(after, before, "code released although its filesystem may depend on a served device")
    }
    // The code runs on: pages come back from the page cache.
    XCTAssertEqual(ServingProcess.deviceNumbers(UInt(254) << 8 | 3).major, 254)
    // Metadata reached through relocated pointers: type names, a dynamic cast.
    let value: Any = [UInt(7): "seven"]
    XCTAssertEqual((value as? [UInt: String])?[7], "seven")
    XCTAssertEqual(String(describing: type(of: logger)), "Logger")
    XCTAssertGreaterThan(try residentCodeKiB(inode: UInt64(st.st_ino)), after)
  }

  /// Resident file pages (Rss less Anonymous) of the executable's read-only mappings.
  private func residentCodeKiB(inode: UInt64) throws -> Int {
    let smaps = try String(contentsOfFile: "/proc/self/smaps", encoding: .utf8)
    var total = 0
    var inCode = false
    for line in smaps.split(separator: "\n") {
      let f = line.split(separator: " ", omittingEmptySubsequences: true)
      if let first = f.first, first.contains("-"), f.count >= 5, !first.hasSuffix(":") {
        inCode = (f[1] == "r-xp" || f[1] == "r--p") && UInt64(f[4]) == inode
      } else if inCode, f.count >= 2, let kib = Int(f[1]) {
        if f.first == "Rss:" { total += kib }
        if f.first == "Anonymous:" { total -= kib }
      }
    }
    return total
  }
}
