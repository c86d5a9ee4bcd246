import Foundation
import XCTest

/// `lunbridge initramfs-files`, which lunbridge's initramfs-tools hook runs: one line per
/// file of the onboot volumes, and a failed build (non-zero exit, the reason on stderr)
/// when a volume cannot boot from the initramfs. The whole hook runs in `make sanboot-test`.
final class InitramfsFilesTests: XCTestCase {
  var tmp: String!
  let url = "iscsi://192.0.2.1/iqn.2026-11.org.example:t/1"

  override func setUpWithError() throws {
    tmp = NSTemporaryDirectory() + "lunbridge-initramfs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: tmp + "/volumes", withIntermediateDirectories: true)
  }

  override func tearDownWithError() throws {
    try? FileManager.default.removeItem(atPath: tmp)
  }

  func write(_ path: String, _ text: String, mode: mode_t = 0o600) throws {
    try text.write(toFile: path, atomically: false, encoding: .utf8)
    chmod(path, mode)
  }

  func testOnlyOnbootVolumesWithTheirSecretsAreListed() throws {
    try CommandLineTools.require()
    try write(tmp + "/root.secret", "a-secret-of-16-chars\n")
    try write(
      tmp + "/volumes/root.toml",
      """
      paths = ["\(url)"]
      startup = "onboot"
      initiator_name = "iqn.2026-11.org.example:host"
      chap_user = "host"
      chap_secret_file = "\(tmp!)/root.secret"
      """)
    try write(tmp + "/volumes/data.toml", "paths = [\"\(url)\"]\nstartup = \"automatic\"\n")
    let r = try Command.run(CommandLineTools.lunbridge, ["initramfs-files", "--directory", tmp + "/volumes"])
    XCTAssertEqual(r.status, 0, r.stderr)
    XCTAssertEqual(r.stdout, "volume \(tmp!)/volumes/root.toml\nsecret \(tmp!)/root.secret\n")
    // Named explicitly, a volume goes in whatever its startup.
    let named = try Command.run(CommandLineTools.lunbridge, ["initramfs-files", "--directory", tmp + "/volumes", "data"])
    XCTAssertEqual(named.status, 0, named.stderr)
    XCTAssertTrue(named.stdout.hasPrefix("volume \(tmp!)/volumes/data.toml\n"), named.stdout)
  }

  func testAVolumeThatCannotBootFromTheInitramfsFailsTheBuild() throws {
    // A secret readable by others, then a secret from a systemd credential.
    try write(tmp + "/root.secret", "a-secret-of-16-chars\n", mode: 0o644)
    let text =
      "paths = [\"\(url)\"]\nstartup = \"onboot\"\ninitiator_name = \"iqn.2026-11.org.example:host\"\nchap_user = \"host\"\n"
    try write(tmp + "/volumes/root.toml", text + "chap_secret_file = \"\(tmp!)/root.secret\"\n")
    let open = try Command.run(CommandLineTools.lunbridge, ["initramfs-files", "--directory", tmp + "/volumes"])
    XCTAssertNotEqual(open.status, 0)
    XCTAssertEqual(open.stdout, "")
    XCTAssertTrue(open.stderr.hasPrefix("lunbridge: error: \(tmp!)/volumes/root.toml: line 5:"), open.stderr)
    try write(tmp + "/volumes/root.toml", text + "chap_secret_credential = \"root.chap\"\n")
    let credential = try Command.run(CommandLineTools.lunbridge, ["initramfs-files", "--directory", tmp + "/volumes"])
    XCTAssertEqual(credential.status, 6, "a volume file problem: exit 6")
    XCTAssertTrue(credential.stderr.contains("the initramfs has no systemd credentials"), credential.stderr)
  }
}
