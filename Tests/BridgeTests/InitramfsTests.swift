import Foundation
import XCTest

@testable import Bridge

/// Boot from SAN: which files lunbridge's initramfs-tools hook copies, the kernel-log line
/// format of a root volume's process, and its storage-daemon name.
final class InitramfsTests: XCTestCase {
  let url = "iscsi://192.0.2.1/iqn.2026-11.org.example:t/1"

  func volume(_ name: String, _ text: String) throws -> VolumeConfig {
    try VolumeConfig(parsing: "paths = [\"\(url)\"]\n" + text, file: "/etc/lunbridge/volumes/\(name).toml", name: name)
  }

  func testTheVolumeFileItsSecretsAndTheInitiatorNameGoIntoTheInitramfs() throws {
    let root = try volume(
      "root",
      """
      startup = "onboot"
      chap_user = "host"
      chap_secret_file = "/etc/lunbridge/root.secret"
      mutual_user = "target"
      mutual_secret_file = "/etc/lunbridge/root.mutual"
      reservation_key = "file:/etc/lunbridge/root.key"
      """)
    // A second volume with the same secret and its own initiator name: nothing twice, and
    // no initiator name file for it.
    let data = try volume(
      "data",
      "chap_user = \"host\"\nchap_secret_file = \"/etc/lunbridge/root.secret\"\ninitiator_name = \"iqn.2026-11.org.example:h\"")
    let files = try Initramfs.files(for: [root, data], initiatorFile: "/etc/iscsi/initiatorname.iscsi")
    XCTAssertEqual(
      files.map(\.description),
      [
        "volume /etc/lunbridge/volumes/root.toml", "secret /etc/lunbridge/root.secret", "secret /etc/lunbridge/root.mutual",
        "secret /etc/lunbridge/root.key", "initiator /etc/iscsi/initiatorname.iscsi",
        "volume /etc/lunbridge/volumes/data.toml",
      ])
    // With its own initiator name only, the initiator file is not even looked for.
    let named = try volume("n", "initiator_name = \"iqn.2026-11.org.example:h\"")
    XCTAssertEqual(
      try Initramfs.files(
        for: [named],
        initiatorFile: { () throws -> String? in
          XCTFail("asked"); return nil
        }()
      ).map(\.description),
      ["volume /etc/lunbridge/volumes/n.toml"])
  }

  func testASecretFromASystemdCredentialIsRefusedWithWhatToUseInstead() throws {
    let root = try volume("root", "chap_user = \"host\"\nchap_secret_credential = \"root.chap\"")
    XCTAssertThrowsError(try Initramfs.files(for: [root], initiatorFile: nil)) { error in
      XCTAssertEqual(
        "\(error)",
        "/etc/lunbridge/volumes/root.toml: the initramfs has no systemd credentials: give the root volume chap_secret_file / mutual_secret_file instead of *_secret_credential"
      )
    }
  }

  func testKernelLogLinesCarryTheDaemonFacilityThePriorityAndTheProcess() {
    // LOG_DAEMON (3 << 3) + notice (5) = 29: journald files it under lunbridge.
    XCTAssertEqual(LogOutput.kernelLogLine("attached", priority: 5, pid: 42), "<29>lunbridge[42]: attached\n")
    XCTAssertEqual(LogOutput.kernelLogLine("x", priority: 3, pid: 1), "<27>lunbridge[1]: x\n")
    // The kernel keeps records of up to 1 KiB: a longer line is cut, still one record.
    let long = LogOutput.kernelLogLine(String(repeating: "a", count: 5000), priority: 6, pid: 7)
    XCTAssertEqual(long.count, 1001)
    XCTAssertTrue(long.hasSuffix("a\n"))
  }

  func testTheStorageDaemonNameAndPathsOutsideTheInitramfs() {
    XCTAssertEqual(Initramfs.processName, "@lunbridge")
    XCTAssertTrue(Initramfs.isStorageDaemon(argv0: "@lunbridge"))
    XCTAssertFalse(Initramfs.isStorageDaemon(argv0: "/usr/local/bin/lunbridge"))
    XCTAssertFalse(Initramfs.isStorageDaemon(argv0: "lunbridge"))
    // An ordinary process reads paths as given.
    XCTAssertEqual(Initramfs.systemPath("/etc/lunbridge/volumes/root.toml"), "/etc/lunbridge/volumes/root.toml")
  }
}
