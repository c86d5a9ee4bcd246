import Foundation
import ISCSIInitiator
import ISCSIProtocol
import XCTest

@testable import Bridge

final class VolumeConfigTests: XCTestCase {
  let file = "/etc/lunbridge/volumes/db.toml"

  func parse(_ text: String) throws -> VolumeConfig {
    try VolumeConfig(parsing: text, file: file, name: "db")
  }

  /// The error `text` fails with (fails the test if it parses).
  func error(_ text: String, line: UInt = #line) -> VolumeConfigError? {
    do {
      _ = try parse(text)
      XCTFail("parsed, expected an error", line: line)
    } catch let e as VolumeConfigError {
      return e
    } catch {
      XCTFail("not a VolumeConfigError: \(error)", line: line)
    }
    return nil
  }

  static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

  var tmp: String!

  override func setUpWithError() throws {
    tmp = NSTemporaryDirectory() + "lunbridge-volumeconfig-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
  }

  override func tearDownWithError() throws {
    try? FileManager.default.removeItem(atPath: tmp)
  }

  func write(_ text: String, to name: String, mode: Int) throws -> String {
    let path = "\(tmp!)/\(name)"
    try text.write(toFile: path, atomically: false, encoding: .utf8)
    try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
    return path
  }

  // MARK: parsing

  func testFullExample() throws {
    let c = try parse(
      """
      # database volume
      paths = [
        "iscsi://192.0.2.10/iqn.2003-01.org.example:storage/0",   # controller A
        'iscsi://host1@[2001:db8::1]:3261/iqn.2003-01.org.example:storage/0',
      ]
      initiator_name = "iqn.2026-11.org.lunbridge:host1"
      chap_user = "host1"
      chap_secret_file = "/etc/lunbridge/db.secret"
      mutual_user = "storage"
      mutual_secret_file = "/etc/lunbridge/db.mutual"
      chap_algorithms = ["sha256", "md5"]
      header_digest = ["crc32c", "none"]
      data_digest = "crc32c"
      policy = "queue-length"
      keepalive_interval = 5
      keepalive_timeout = 10
      login_timeout = 20
      timeout = 60
      dead_conn_timeout = 300
      no_path_retry = 1_000
      device = "/dev/nbd3"
      read_only = true
      connections = 4
      """)
    XCTAssertEqual(c.name, "db")
    XCTAssertEqual(
      c.paths.map(\.description),
      [
        "iscsi://192.0.2.10:3260/iqn.2003-01.org.example:storage/0",
        "iscsi://host1@[2001:db8::1]:3261/iqn.2003-01.org.example:storage/0",
      ].map { try! ISCSIURL(parsing: $0).description })
    XCTAssertEqual(c.initiatorName, "iqn.2026-11.org.lunbridge:host1")
    XCTAssertEqual(c.chapUser, "host1")
    XCTAssertEqual(c.chapSecretFile, "/etc/lunbridge/db.secret")
    XCTAssertEqual(c.mutualUser, "storage")
    XCTAssertEqual(c.mutualSecretFile, "/etc/lunbridge/db.mutual")
    XCTAssertEqual(c.chapAlgorithms, [.sha256, .md5])
    XCTAssertEqual(c.headerDigest, [.crc32c, .none])
    XCTAssertEqual(c.dataDigest, [.crc32c])
    XCTAssertEqual(c.policy, .queueLength)
    XCTAssertEqual(c.keepaliveInterval, 5)
    XCTAssertEqual(c.keepaliveTimeout, 10)
    XCTAssertEqual(c.loginTimeout, 20)
    XCTAssertEqual(c.timeout, 60)
    XCTAssertEqual(c.deadConnTimeout, 300)
    XCTAssertEqual(c.noPathRetry, 1000)
    XCTAssertEqual(c.device, 3)
    XCTAssertEqual(c.readOnly, true)
    XCTAssertEqual(c.connections, 4)
    XCTAssertEqual(c.lines["paths"], 2)
    XCTAssertEqual(c.lines["connections"], 23)
  }

  /// `config show`: every known key once, the file's value or the default, each with
  /// its open-iscsi / multipath / nbd-client counterpart.
  func testEffectiveSettingsNameEveryKeyWithDefaultsFilledIn() throws {
    let c = try parse(
      "paths = [\"iscsi://10.0.0.1/iqn.2026-11.org.example:t/1\"]\nno_path_retry = 30\nheader_digest = [\"crc32c\", \"none\"]\n")
    let settings = c.effectiveSettings(initiator: "iqn.2026-11.org.example:host", processors: 4)
    XCTAssertEqual(settings.map(\.key).sorted(), VolumeConfig.knownKeys.sorted(), "every key, once")
    let value = Dictionary(uniqueKeysWithValues: settings.map { ($0.key, $0.value) })
    XCTAssertEqual(value["no_path_retry"], "30", "the file's")
    XCTAssertEqual(value["header_digest"], "[\"crc32c\", \"none\"]")
    XCTAssertEqual(value["keepalive_interval"], "2", "default")
    XCTAssertEqual(value["command_timeout"], "30")
    XCTAssertEqual(value["alua_check_interval"], "10")
    XCTAssertEqual(value["connections"], "4", "one per processor")
    XCTAssertEqual(value["failback"], "\"immediate\"")
    XCTAssertEqual(value["initiator_name"], "\"iqn.2026-11.org.example:host\"")
    XCTAssertNil(value["chap_user"] ?? nil, "not set")
    XCTAssertNil(value["device"] ?? nil, "not set: the first free device")
    XCTAssertTrue(settings.allSatisfy { !$0.counterpart.isEmpty })
    XCTAssertEqual(
      settings.first { $0.key == "keepalive_interval" }?.counterpart, "node.conn[0].timeo.noop_out_interval")
    // What config show prints is a volume file that reads back to the same settings.
    let text = settings.map { s in s.value.map { "\(s.key) = \($0)" } ?? "# \(s.key): not set" }.joined(separator: "\n")
    let again = try parse(text).effectiveSettings(initiator: "iqn.2026-11.org.example:other", processors: 8)
    XCTAssertEqual(again.map(\.key), settings.map(\.key))
    XCTAssertEqual(again.map(\.value), settings.map(\.value), text)
  }

  func testReservationKeyInlineOrFromAFile() throws {
    let paths = "paths = [\"iscsi://10.0.0.1/iqn.2026-11.org.example:t/1\"]\n"
    XCTAssertEqual(try parse(paths + "reservation_key = \"0x1A2b\"").resolvedReservationKey(), 0x1a2b)
    XCTAssertEqual(try parse(paths + "reservation_key = \"1a2b\"").resolvedReservationKey(), 0x1a2b)
    XCTAssertNil(try parse(paths).resolvedReservationKey())
    XCTAssertEqual(error(paths + "reservation_key = \"0xZZ\"")?.key, "reservation_key")
    XCTAssertEqual(error(paths + "reservation_key = \"0x0\"")?.key, "reservation_key", "0 is no key")
    XCTAssertEqual(error(paths + "reservation_key = \"0x11112222333344445\"")?.key, "reservation_key", "17 digits")
    XCTAssertEqual(error(paths + "reservation_key = \"file:relative\"")?.key, "reservation_key")
    let keyFile = tmp + "/db.prkey"
    try "0xc0ffee\n".write(toFile: keyFile, atomically: true, encoding: .utf8)
    XCTAssertEqual(try parse(paths + "reservation_key = \"file:\(keyFile)\"").resolvedReservationKey(), 0xc0ffee)
    try "not a key".write(toFile: keyFile, atomically: true, encoding: .utf8)
    XCTAssertThrowsError(try parse(paths + "reservation_key = \"file:\(keyFile)\"").resolvedReservationKey())
    XCTAssertThrowsError(try parse(paths + "reservation_key = \"file:\(tmp!)/missing\"").resolvedReservationKey())
  }

  func testDefaults() throws {
    let c = try parse("paths = [\"iscsi://h/iqn.2003-01.org.example:t/1\"]\n")
    XCTAssertEqual(c.paths.count, 1)
    XCTAssertEqual(c.paths[0].lun, 1)
    XCTAssertNil(c.initiatorName)
    XCTAssertNil(c.chapUser)
    XCTAssertEqual(c.chapAlgorithms, [.md5])
    XCTAssertEqual(c.headerDigest, [.none])
    XCTAssertEqual(c.dataDigest, [.none])
    XCTAssertEqual(c.policy, .serviceTime)
    XCTAssertEqual(c.loginTimeout, 15)
    XCTAssertEqual(c.timeout, 30)
    XCTAssertEqual(c.deadConnTimeout, 120)
    XCTAssertNil(c.noPathRetry)
    XCTAssertNil(c.device)
    XCTAssertFalse(c.readOnly)
    XCTAssertNil(c.connections)
  }

  func testDeviceForms() throws {
    let p = "paths = [\"iscsi://h/iqn.x:t/0\"]\n"
    XCTAssertEqual(try parse(p + "device = 7").device, 7)
    XCTAssertEqual(try parse(p + "device = \"7\"").device, 7)
    XCTAssertEqual(try parse(p + "device = \"/dev/nbd12\"").device, 12)
    let e = error(p + "device = \"/dev/sda\"")
    XCTAssertEqual(e?.kind, .invalidValue)
    XCTAssertEqual(e?.description, "\(file): line 2: key 'device' must be /dev/nbdN or N, got '/dev/sda'")
    XCTAssertEqual(error(p + "device = true")?.kind, .wrongType)
  }

  func testURLUserIsTheCHAPUser() throws {
    let c = try parse(
      """
      paths = ["iscsi://host1@h/iqn.x:t/0"]
      chap_secret_file = "/etc/lunbridge/db.secret"
      """)
    XCTAssertEqual(c.paths[0].user, "host1")
    XCTAssertNil(c.chapUser)
  }

  func testTheExampleFileParses() throws {
    let text = try String(contentsOfFile: "\(Self.repo)/systemd/example.toml", encoding: .utf8)
    let c = try VolumeConfig(parsing: text, file: "example.toml", name: "example")
    XCTAssertEqual(c.paths.count, 2)
    XCTAssertEqual(c.policy, .serviceTime)
    XCTAssertEqual(c.loginTimeout, 15)
    XCTAssertEqual(c.timeout, 30)
    XCTAssertEqual(c.deadConnTimeout, 120)
    XCTAssertEqual(c.paths.map { $0.query["iface"] }, ["eth1", "eth2"])
    XCTAssertEqual(c.sessionsPerPath, 1)
    XCTAssertEqual(c.failback, "immediate")
    XCTAssertEqual(c.keepaliveInterval, 2)
    XCTAssertEqual(c.commandTimeout, 30)
    XCTAssertEqual(c.noPathRetry, 60)
    XCTAssertEqual(c.aluaCheckInterval, 10)
  }

  func testALUACheckIntervalIsChecked() {
    XCTAssertTrue(
      (error("paths = [\"iscsi://h/iqn.x:t/0\"]\nalua_check_interval = 0\n")?.description ?? "").contains(
        "alua_check_interval"))
  }

  func testMultipathKeysAreChecked() {
    XCTAssertTrue(
      (error("paths = [\"iscsi://h/iqn.x:t/0?nic=eth1\"]\n")?.description ?? "").contains("unknown parameter 'nic'"))
    XCTAssertTrue(
      (error("paths = [\"iscsi://h/iqn.x:t/0\", \"iscsi://h2/iqn.x:other/0\"]\n")?.description ?? "").contains(
        "same target and LUN"))
    XCTAssertTrue(
      (error("paths = [\"iscsi://h/iqn.x:t/0\"]\nsessions_per_path = 40\n")?.description ?? "").contains("between 1 and 16"))
    XCTAssertTrue((error("paths = [\"iscsi://h/iqn.x:t/0\"]\nfailback = \"later\"\n")?.description ?? "").contains("failback"))
    XCTAssertTrue((error("paths = [\"iscsi://h/iqn.x:t/0\"]\nmetrics = \"9617\"\n")?.description ?? "").contains("tcp:"))
  }

  // MARK: errors name the file, the line and the key

  func testWrongTypeNamesFileLineAndKey() {
    let e = error(
      """
      paths = ["iscsi://h/iqn.x:t/0"]

      # comment
      timeout = "30"
      """)
    XCTAssertEqual(e?.kind, .wrongType)
    XCTAssertEqual(e?.file, file)
    XCTAssertEqual(e?.line, 4)
    XCTAssertEqual(e?.key, "timeout")
    XCTAssertEqual(e?.description, "\(file): line 4: key 'timeout' must be an integer (seconds), got a string")
  }

  func testOtherTypeErrors() {
    let p = "paths = [\"iscsi://h/iqn.x:t/0\"]\n"
    XCTAssertEqual(
      error(p + "read_only = \"yes\"")?.description,
      "\(file): line 2: key 'read_only' must be a boolean (true or false), got a string")
    XCTAssertEqual(
      error(p + "connections = 2.5")?.description, "\(file): line 2: key 'connections' must be an integer, got a float")
    XCTAssertEqual(
      error(p + "chap_user = 5")?.description, "\(file): line 2: key 'chap_user' must be a string, got an integer")
    XCTAssertEqual(
      error(p + "policy = [\"failover\"]")?.description, "\(file): line 2: key 'policy' must be a string, got an array")
    // An element of a multi-line array: its own line.
    let e = error(p + "chap_algorithms = [\n  \"md5\",\n  5,\n]")
    XCTAssertEqual(e?.line, 4)
    XCTAssertEqual(e?.key, "chap_algorithms")
    XCTAssertEqual(e?.kind, .wrongType)
    let s = error("paths = \"iscsi://h/iqn.x:t/0\"")
    XCTAssertEqual(s?.kind, .wrongType)
    XCTAssertTrue(s?.description.contains("paths = [\"iscsi://h/iqn.x:t/0\"]") == true, s?.description ?? "")
  }

  func testInvalidValues() {
    let p = "paths = [\"iscsi://h/iqn.x:t/0\"]\n"
    let cases: [(String, String)] = [
      ("policy = \"fastest\"", "key 'policy' must be one of service-time, queue-length, round-robin, failover, got 'fastest'"),
      ("header_digest = \"crc32\"", "key 'header_digest': unknown value 'crc32' (use none, crc32c)"),
      ("data_digest = []", "key 'data_digest' is empty (use none, crc32c)"),
      ("chap_algorithms = [\"md4\"]", "key 'chap_algorithms': unknown value 'md4' (use md5, sha1, sha256)"),
      ("timeout = 0", "key 'timeout' must be at least 1 seconds (and at most a year), got 0"),
      ("dead_conn_timeout = -1", "key 'dead_conn_timeout' must be 0 or more seconds (and at most a year), got -1"),
      ("connections = 65", "key 'connections' must be between 1 and 64, got 65"),
      ("initiator_name = \"host1\"", "key 'initiator_name' must be an iSCSI name (iqn..., eui... or naa...), got 'host1'"),
      ("chap_secret_file = \"db.secret\"", "key 'chap_secret_file' must be an absolute path, got 'db.secret'"),
    ]
    for (line, message) in cases {
      let e = error(p + line)
      XCTAssertEqual(e?.kind, .invalidValue, line)
      XCTAssertEqual(e?.description, "\(file): line 2: \(message)", line)
    }
  }

  func testUnknownKeySuggestsTheClosest() {
    let p = "paths = [\"iscsi://h/iqn.x:t/0\"]\n"
    let e = error(p + "\ntimout = 30")
    XCTAssertEqual(e?.kind, .unknownKey)
    XCTAssertEqual(e?.line, 3)
    XCTAssertEqual(e?.key, "timout")
    XCTAssertEqual(e?.suggestion, "timeout")
    XCTAssertEqual(e?.description, "\(file): line 3: unknown key 'timout' (did you mean 'timeout'?)")
    XCTAssertEqual(error(p + "dead-conn-timeout = 30")?.suggestion, "dead_conn_timeout")
    XCTAssertEqual(error(p + "chap_secert_file = \"/x\"")?.suggestion, "chap_secret_file")
    XCTAssertEqual(error(p + "readonly = true")?.suggestion, "read_only")
    XCTAssertEqual(error("url = \"iscsi://h/iqn.x:t/0\"")?.suggestion, "paths")
    let far = error(p + "colour = \"blue\"")
    XCTAssertNil(far?.suggestion)
    XCTAssertEqual(far?.description, "\(file): line 2: unknown key 'colour'")
  }

  func testMissingPaths() {
    let e = error("timeout = 30\n")
    XCTAssertEqual(e?.kind, .missingKey)
    XCTAssertEqual(e?.key, "paths")
    XCTAssertNil(e?.line)
    XCTAssertEqual(
      e?.description, "\(file): key 'paths' is missing: add paths = [\"iscsi://HOST[:PORT]/TARGET-IQN/LUN\"]")
    XCTAssertEqual(error("paths = []")?.kind, .invalidValue)
  }

  func testBadURLNamesItsLine() {
    let e = error(
      """
      paths = [
        "iscsi://h/iqn.x:t/0",
        "iscsi://h/iqn.x:t",
      ]
      """)
    XCTAssertEqual(e?.kind, .badURL)
    XCTAssertEqual(e?.line, 3)
    XCTAssertEqual(e?.key, "paths")
    XCTAssertEqual(
      e?.description,
      "\(file): line 3: key 'paths': 'iscsi://h/iqn.x:t' names no LUN: expected iscsi://HOST[:PORT]/TARGET-IQN/LUN")
    XCTAssertEqual(error("paths = [\"http://h/x/0\"]")?.kind, .badURL)
    let twice = error("paths = [\"iscsi://h/iqn.x:t/0\", \"iscsi://h:3260/iqn.x:t/0\"]")
    XCTAssertEqual(twice?.kind, .invalidValue)
  }

  func testPasswordsInURLsAreRefusedAndNeverShown() {
    let e = error("paths = [\"iscsi://u%hunter2@h/iqn.x:t/0\"]")
    XCTAssertEqual(e?.kind, .badURL)
    XCTAssertFalse(e!.description.contains("hunter2"), e!.description)
    XCTAssertTrue(e!.description.contains("chap_secret_file"), e!.description)
    // A URL that fails to parse does not show its password either.
    let bad = error("paths = [\"iscsi://u%hunter2@h/iqn.x:t\"]")
    XCTAssertEqual(bad?.kind, .badURL)
    XCTAssertFalse(bad!.description.contains("hunter2"), bad!.description)
    // Nor on the command line, where the URL's own error is the message.
    for url in ["iscsi://u%hunter2@h/iqn.x:t", "iscsi://u%hunter2@h/iqn.x:t/99999", "iscsi://u%hunter2@/iqn.x:t/0"] {
      XCTAssertThrowsError(try ISCSIURL(parsing: url)) { error in
        XCTAssertFalse("\(error)".contains("hunter2"), "\(error)")
        XCTAssertTrue("\(error)".contains("u@"), "\(error)")
      }
    }
    XCTAssertEqual(ISCSIURL.withoutPassword("iscsi://u%p@h/t/0?iface=eth0"), "iscsi://u@h/t/0?iface=eth0")
    XCTAssertEqual(ISCSIURL.withoutPassword("iscsi://h/iqn.x:t/0?a=b%c@d"), "iscsi://h/iqn.x:t/0?a=b%c@d")
  }

  func testDuplicateKey() {
    let e = error("paths = [\"iscsi://h/iqn.x:t/0\"]\ntimeout = 3\ntimeout = 4")
    XCTAssertEqual(e?.kind, .duplicateKey)
    XCTAssertEqual(e?.description, "\(file): line 3: key 'timeout' is set twice (first on line 2)")
  }

  func testCHAPCombinations() {
    let p = "paths = [\"iscsi://h/iqn.x:t/0\"]\n"
    let noSecret = error(p + "chap_user = \"u\"")
    XCTAssertEqual(noSecret?.key, "chap_user")
    XCTAssertEqual(noSecret?.line, 2)
    XCTAssertEqual(
      noSecret?.description,
      "\(file): line 2: CHAP user 'u' has no secret: add chap_secret_file = \"/etc/lunbridge/NAME.secret\" (mode 600) or chap_secret_credential = \"NAME\" (LoadCredential=)"
    )
    XCTAssertEqual(error(p + "chap_secret_file = \"/s\"")?.key, "chap_secret_file")
    XCTAssertEqual(
      error(p + "chap_user = \"u\"\nchap_secret_file = \"/s\"\nmutual_user = \"m\"")?.key, "mutual_user")
    XCTAssertEqual(
      error(p + "chap_user = \"u\"\nchap_secret_file = \"/s\"\nmutual_secret_file = \"/m\"")?.key,
      "mutual_secret_file")
  }

  func testSyntaxErrorsNameTheLine() {
    let p = "paths = [\"iscsi://h/iqn.x:t/0\"]\n"
    let unquoted = error(p + "policy = failover")
    XCTAssertEqual(unquoted?.kind, .syntax)
    XCTAssertEqual(unquoted?.line, 2)
    XCTAssertEqual(unquoted?.key, "policy")
    XCTAssertEqual(
      unquoted?.description, "\(file): line 2: invalid value 'failover' (strings need quotes: \"failover\")")
    XCTAssertEqual(error(p + "\n[volume]\n")?.line, 3)
    XCTAssertEqual(error(p + "timeout 30")?.line, 2)
    XCTAssertEqual(error(p + "timeout = 30 40")?.kind, .syntax)
    XCTAssertEqual(error(p + "chap_user = \"u")?.kind, .syntax)
    let open = error("paths = [\n \"iscsi://h/iqn.x:t/0\",\n")
    XCTAssertEqual(open?.kind, .syntax)
    XCTAssertEqual(open?.key, "paths")
    XCTAssertEqual(error(p + "timeout = 030")?.kind, .syntax)
  }

  func testTOMLScalars() throws {
    let e = try TOMLParser.parse(
      """
      a = "x\\ty\\u00e9\\"" # c
      b = 'C:\\path'
      d = +1_000
      e = [ ]
      f = [["nested"], 1]
      g = false
      "quoted key" = -9223372036854775808
      h = 1e3
      """)
    XCTAssertEqual(e.map(\.key), ["a", "b", "d", "e", "f", "g", "quoted key", "h"])
    XCTAssertEqual(e[0].node.value, .string("x\tyé\""))
    XCTAssertEqual(e[1].node.value, .string("C:\\path"))
    XCTAssertEqual(e[2].node.value, .integer(1000))
    XCTAssertEqual(e[3].node.value, .array([]))
    XCTAssertEqual(
      e[4].node.value,
      .array([
        TOMLNode(value: .array([TOMLNode(value: .string("nested"), line: 5)]), line: 5), TOMLNode(value: .integer(1), line: 5),
      ]))
    XCTAssertEqual(e[5].node.value, .boolean(false))
    XCTAssertEqual(e[6].node.value, .integer(Int64.min))
    XCTAssertEqual(e[7].node.value, .float(1000))
  }

  // MARK: loading by name

  func testLoadByNameAndBadNames() throws {
    _ = try write("paths = [\"iscsi://h/iqn.x:t/0\"]\n", to: "db.toml", mode: 0o644)
    let c = try VolumeConfig.load(name: "db", directory: tmp)
    XCTAssertEqual(c.name, "db")
    XCTAssertEqual(c.file, "\(tmp!)/db.toml")
    XCTAssertEqual(try VolumeConfig.load(name: "db.toml", directory: tmp).name, "db")
    XCTAssertEqual(try VolumeConfig.load(path: "\(tmp!)/db.toml").name, "db")
    for bad in ["../db", "a/b", "", ".hidden", "-x", "with space"] {
      XCTAssertThrowsError(try VolumeConfig.load(name: bad, directory: tmp), bad) {
        XCTAssertEqual(($0 as? VolumeConfigError)?.kind, .badName, bad)
      }
    }
    XCTAssertThrowsError(try VolumeConfig.load(name: "absent", directory: tmp)) {
      XCTAssertEqual(($0 as? VolumeConfigError)?.kind, .volumeFile)
      XCTAssertTrue("\($0)".hasPrefix("\(self.tmp!)/absent.toml: no such volume file"), "\($0)")
    }
    XCTAssertEqual(VolumeConfig.directory, "/etc/lunbridge/volumes")
    XCTAssertEqual(try VolumeConfig.names(directory: tmp), ["db"])
    XCTAssertEqual(try VolumeConfig.names(directory: "\(tmp!)/none"), [])
  }

  // MARK: validate(): secret files

  func volume(secret: String, mutual: String? = nil) throws -> VolumeConfig {
    var text = """
      paths = ["iscsi://h/iqn.x:t/0"]
      chap_user = "u"
      chap_secret_file = "\(secret)"

      """
    if let mutual { text += "mutual_user = \"m\"\nmutual_secret_file = \"\(mutual)\"\n" }
    let path = try write(text, to: "vol.toml", mode: 0o644)
    return try VolumeConfig.load(path: path)
  }

  func testSecretFileMode644IsRefused() throws {
    let secret = try write("hunter2\n", to: "db.secret", mode: 0o644)
    let c = try volume(secret: secret)
    XCTAssertThrowsError(try c.validate()) { error in
      guard let e = error as? VolumeConfigError else { return XCTFail("\(error)") }
      XCTAssertEqual(e.kind, .secretFile)
      XCTAssertEqual(e.file, "\(self.tmp!)/vol.toml")
      XCTAssertEqual(e.line, 3)
      XCTAssertEqual(e.key, "chap_secret_file")
      XCTAssertEqual(
        e.description,
        "\(self.tmp!)/vol.toml: line 3: key 'chap_secret_file': secret file \(secret) is readable by group or others (mode 644); run chmod 600 \(secret)"
      )
      XCTAssertFalse(e.description.contains("hunter2"))
    }
    XCTAssertThrowsError(try VolumeConfig.check(path: "\(tmp!)/vol.toml"))
    try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: secret)
    XCTAssertThrowsError(try c.check()) { XCTAssertTrue("\($0)".contains("(mode 640)"), "\($0)") }
  }

  func testSecretFileMode600IsAccepted() throws {
    let secret = try write("hunter2\n", to: "db.secret", mode: 0o600)
    let mutual = try write("s3cret\n", to: "db.mutual", mode: 0o600)
    let c = try volume(secret: secret, mutual: mutual)
    XCTAssertNoThrow(try c.validate())
    XCTAssertNoThrow(try c.check())
    XCTAssertEqual(try VolumeConfig.check(path: "\(tmp!)/vol.toml").mutualSecretFile, mutual)
    XCTAssertFalse(c.summary.contains("hunter2"))
    XCTAssertTrue(c.summary.contains("chap_secret_file = \"\(secret)\""), c.summary)
  }

  func testMutualSecretFileIsCheckedToo() throws {
    let secret = try write("hunter2\n", to: "db.secret", mode: 0o600)
    let mutual = try write("s3cret\n", to: "db.mutual", mode: 0o604)
    XCTAssertThrowsError(try volume(secret: secret, mutual: mutual).validate()) {
      let e = $0 as? VolumeConfigError
      XCTAssertEqual(e?.key, "mutual_secret_file")
      XCTAssertEqual(e?.line, 5)
      XCTAssertTrue(e?.description.contains("(mode 604); run chmod 600 \(mutual)") == true, "\($0)")
    }
  }

  func testMissingEmptyOrDirectorySecretFile() throws {
    let missing = "\(tmp!)/nope.secret"
    XCTAssertThrowsError(try volume(secret: missing).validate()) {
      XCTAssertEqual(
        "\($0)", "\(self.tmp!)/vol.toml: line 3: key 'chap_secret_file': secret file \(missing) does not exist")
    }
    let empty = try write("", to: "empty.secret", mode: 0o600)
    XCTAssertThrowsError(try volume(secret: empty).validate()) { XCTAssertTrue("\($0)".hasSuffix("is empty"), "\($0)") }
    XCTAssertThrowsError(try volume(secret: tmp).validate()) {
      XCTAssertTrue("\($0)".hasSuffix("is not a regular file"), "\($0)")
    }
  }

  func testSymlinkedOversizedOrForeignSecretFileIsRefused() throws {
    let secret = try write("hunter2\n", to: "db.secret", mode: 0o600)
    let link = "\(tmp!)/link.secret"
    try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: secret)
    XCTAssertThrowsError(try volume(secret: link).validate()) {
      XCTAssertTrue("\($0)".hasSuffix("is a symbolic link; name the file itself"), "\($0)")
    }
    let big = try write(String(repeating: "x", count: 5000), to: "big.secret", mode: 0o600)
    XCTAssertThrowsError(try volume(secret: big).validate()) {
      XCTAssertTrue("\($0)".hasSuffix("is 5000 bytes; a CHAP secret file holds at most 4096"), "\($0)")
    }
    if geteuid() == 0 {
      XCTAssertEqual(chown(secret, 4321, 4321), 0)
      XCTAssertThrowsError(try volume(secret: secret).validate()) {
        XCTAssertTrue("\($0)".contains("is owned by uid 4321, not by root or this user"), "\($0)")
      }
    }
  }

  func testWritableVolumeFileIsRefused() throws {
    let path = try write("paths = [\"iscsi://h/iqn.x:t/0\"]\n", to: "open.toml", mode: 0o666)
    XCTAssertThrowsError(try VolumeConfig.check(path: path)) {
      XCTAssertEqual(($0 as? VolumeConfigError)?.kind, .volumeFile)
      XCTAssertTrue("\($0)".contains("writable by group or others (mode 666); run chmod 644 \(path)"), "\($0)")
    }
  }

  // MARK: /run/lunbridge/nbdN.name

  func testNameRecord() throws {
    let backend = "lunbridge:iqn.2003-01.org.example:storage:0:naa.6001405abcdef"
    try VolumeNameRecord.write(name: "db", backendIdentifier: backend, index: 3, runDirectory: tmp, sysfs: tmp)
    XCTAssertEqual(
      try String(contentsOfFile: "\(tmp!)/nbd3.name", encoding: .utf8), "db\n\(backend)\n\n\n")
    XCTAssertEqual(VolumeNameRecord.read(index: 3, backendIdentifier: backend, runDirectory: tmp), "db")
    XCTAssertNil(VolumeNameRecord.read(index: 3, backendIdentifier: backend + "x", runDirectory: tmp))
    VolumeNameRecord.remove(index: 3, runDirectory: tmp)
    XCTAssertNil(VolumeNameRecord.read(index: 3, backendIdentifier: backend, runDirectory: tmp))
  }

  // MARK: systemd and udev files

  /// Runs `argv`; stdout and stderr together.
  func run(_ argv: [String], package: String) throws -> (status: Int32, output: String) {
    guard FileManager.default.isExecutableFile(atPath: argv[0]) else {
      throw ToolMissing(message: "\(argv[0]) is missing: install the Debian package '\(package)'")
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0])
    p.arguments = Array(argv.dropFirst())
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
  }

  /// `systemd-analyze verify` wants every ExecStart binary to exist, so it checks a copy
  /// of the unit whose ExecStart runs /usr/bin/true; warnings count as failures.
  func testServiceUnitVerifies() throws {
    let unit = try String(contentsOfFile: "\(Self.repo)/systemd/lunbridge@.service", encoding: .utf8)
    XCTAssertTrue(unit.contains("ExecStart=/usr/local/bin/lunbridge attach %i --foreground\n"))
    let copy = unit.replacingOccurrences(of: "/usr/local/bin/lunbridge", with: "/usr/bin/true")
    for name in ["lunbridge@.service", "lunbridge@db.service"] {
      try copy.write(toFile: "\(tmp!)/\(name)", atomically: false, encoding: .utf8)
      let r = try run(["/usr/bin/systemd-analyze", "verify", "\(tmp!)/\(name)"], package: "systemd")
      XCTAssertEqual(r.status, 0, r.output)
      XCTAssertEqual(r.output.trimmingCharacters(in: .whitespacesAndNewlines), "", "systemd-analyze verify warned")
    }
  }

  /// udev 252 has no `udevadm verify`: load the rules with `udevadm test` (on lo) in a
  /// private mount namespace where /etc/udev/rules.d holds ours, and require that udev
  /// read the file and reported no line of it. Needs root (unshare, mount).
  func testUdevRulesParse() throws {
    let rules = "\(Self.repo)/systemd/99-lunbridge.rules"
    let dir = "\(tmp!)/rules.d"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: rules, toPath: "\(dir)/99-lunbridge.rules")
    let udevadm = FileManager.default.isExecutableFile(atPath: "/usr/bin/udevadm") ? "/usr/bin/udevadm" : "/bin/udevadm"
    guard FileManager.default.isExecutableFile(atPath: udevadm) else {
      return XCTFail("udevadm is missing: install the Debian package 'udev'")
    }
    let r = try run(
      [
        "/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
        "mount --bind \"$0\" /etc/udev/rules.d && exec \"$1\" test /sys/class/net/lo", dir, udevadm,
      ], package: "util-linux")
    XCTAssertEqual(r.status, 0, r.output)
    XCTAssertTrue(r.output.contains("Reading rules file: /etc/udev/rules.d/99-lunbridge.rules"), r.output)
    let complaints = r.output.split(separator: "\n").filter { $0.contains("99-lunbridge.rules:") }
    XCTAssertEqual(complaints, [], "udev rejected lines of 99-lunbridge.rules")
  }

  /// The IMPORT{program} of the rule, undone the way udev does ($$ → $, %% → %, \" → ")
  /// and run with a backend, a kernel name and a run directory of our own.
  func udevProgram(backend: String, kernel: String = "nbd3") throws -> [String: String] {
    let text = try String(contentsOfFile: "\(Self.repo)/systemd/99-lunbridge.rules", encoding: .utf8)
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("IMPORT{program}=\"") }) else {
      XCTFail("no IMPORT{program} line")
      return [:]
    }
    var command = String(line.dropFirst("IMPORT{program}=\"".count).dropLast())
    command = command.replacingOccurrences(of: "\\\"", with: "\"")
    guard let open = command.firstIndex(of: "'"), let close = command.lastIndex(of: "'"), open < close else {
      XCTFail("no single-quoted script in \(command)")
      return [:]
    }
    let script = String(command[command.index(after: open)..<close])
      .replacingOccurrences(of: "$$", with: "$").replacingOccurrences(of: "%%", with: "%")
    XCTAssertTrue(command.hasPrefix("/bin/sh -c '"), command)
    XCTAssertTrue(command.hasSuffix("' lunbridge-udev $attr{backend} %k /run/lunbridge"), command)
    let r = try run(["/bin/sh", "-c", script, "lunbridge-udev", backend, kernel, tmp], package: "dash")
    XCTAssertEqual(r.status, 0, r.output)
    var env: [String: String] = [:]
    for l in r.output.split(separator: "\n") {
      let kv = l.split(separator: "=", maxSplits: 1)
      XCTAssertEqual(kv.count, 2, String(l))
      if kv.count == 2 { env[String(kv[0])] = String(kv[1]) }
    }
    return env
  }

  func testUdevProgramNamesTheDevice() throws {
    let backend = "lunbridge:iqn.2003-01.org.example:storage:0:naa.6001405abcdef"
    XCTAssertEqual(try udevProgram(backend: backend), ["LUNBRIDGE_ID": "naa.6001405abcdef"])
    try VolumeNameRecord.write(name: "db", backendIdentifier: backend, index: 3, runDirectory: tmp, sysfs: tmp)
    XCTAssertEqual(try udevProgram(backend: backend), ["LUNBRIDGE_ID": "naa.6001405abcdef", "LUNBRIDGE_NAME": "db"])
    // A stale record (another LUN has nbd3 now) names nothing.
    let other = "lunbridge:iqn.2003-01.org.example:storage:1:naa.6001405000001"
    XCTAssertEqual(try udevProgram(backend: other), ["LUNBRIDGE_ID": "naa.6001405000001"])
    // With the by-path name and the wwn (an attach by URL has no name).
    try VolumeNameRecord.write(
      name: "", backendIdentifier: backend, index: 3,
      byPath: VolumeNameRecord.byPath(try ISCSIURL(parsing: "iscsi://192.0.2.10/IQN.2003-01.org.example:storage/0")),
      wwn: "0x6001405abcdef", runDirectory: tmp, sysfs: tmp)
    XCTAssertEqual(
      try udevProgram(backend: backend),
      [
        "LUNBRIDGE_ID": "naa.6001405abcdef",
        "LUNBRIDGE_BY_PATH": "ip-192.0.2.10:3260-iscsi-iqn.2003-01.org.example:storage-lun-0",
        "LUNBRIDGE_WWN": "0x6001405abcdef",
      ])
    XCTAssertEqual(
      VolumeNameRecord.byPath(try ISCSIURL(parsing: "iscsi://[2001:db8::1]:3261/iqn.2003-01.org.example:s/2?iface=eth1")),
      "ip-2001:db8::1:3261-iscsi-iqn.2003-01.org.example:s-lun-2")
    XCTAssertNil(VolumeNameRecord.read(index: 3, backendIdentifier: backend, runDirectory: tmp), "no name: no name link")
    // No device identifier: no by-id link; odd characters become '_'.
    XCTAssertEqual(try udevProgram(backend: "lunbridge:iqn.x:t:0:-", kernel: "nbd9"), [:])
    XCTAssertEqual(
      try udevProgram(backend: "lunbridge:iqn.x:t:0:t10.LIO-ORG_disk/1$x"), ["LUNBRIDGE_ID": "t10.LIO-ORG_disk_1_x"])
  }
}

/// Thrown (a test failure, not a skip) when a tool the test needs is not installed.
struct ToolMissing: Error, CustomStringConvertible {
  var message: String
  var description: String { message }
}
