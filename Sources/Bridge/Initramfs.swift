import FoundationEssentials
import Glibc
import ISCSIInitiator
import Synchronization

/// Boot from SAN: what lunbridge's initramfs-tools hook copies into the initramfs
/// (`lunbridge initramfs-files`), and the rules of a process that serves the root
/// filesystem from there.
public enum Initramfs {
  /// One file for the initramfs, copied to the same path. Secrets are copied with mode
  /// 0600 and make the hook insist on a private initramfs (UMASK=0077).
  public struct File: Equatable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable { case volume, secret, initiator }
    public var kind: Kind
    public var path: String
    public init(_ kind: Kind, _ path: String) {
      self.kind = kind
      self.path = path
    }
    /// The hook reads one "KIND PATH" line per file.
    public var description: String { "\(kind.rawValue) \(path)" }
  }

  /// The files that attaching `volumes` needs in the initramfs: each volume file, the
  /// secret files it names, and the initiator name file (`initiatorFile`, when a volume
  /// does not set initiator_name). systemd credentials do not exist before systemd runs:
  /// a volume that reads its CHAP secret from one is refused with what to use instead.
  public static func files(for volumes: [VolumeConfig], initiatorFile: @autoclosure () throws -> String?) throws
    -> [File]
  {
    var out: [File] = []
    func add(_ file: File) { if !out.contains(file) { out.append(file) } }
    for volume in volumes {
      if volume.chapSecretCredential != nil || volume.mutualSecretCredential != nil {
        throw BridgeError(
          .config,
          "\(volume.file): the initramfs has no systemd credentials: give the root volume chap_secret_file / mutual_secret_file instead of *_secret_credential"
        )
      }
      add(File(.volume, volume.file))
      for secret in [volume.chapSecretFile, volume.mutualSecretFile].compactMap({ $0 }) { add(File(.secret, secret)) }
      if let key = volume.reservationKey, key.hasPrefix("file:") { add(File(.secret, String(key.dropFirst(5)))) }
      if volume.initiatorName == nil, let file = try initiatorFile() { add(File(.initiator, file)) }
    }
    return out
  }

  /// The initiator name file a volume without initiator_name uses: open-iscsi's when it
  /// has a name, else lunbridge's, created now if missing, so the initramfs logs in with
  /// the same IQN as the running system (target ACLs name it).
  public static func initiatorFile() throws -> String? {
    for path in [InitiatorName.openISCSIFile, InitiatorName.lunbridgeFile] {
      if let text = try? String(contentsOfFile: path, encoding: .utf8), InitiatorName.parse(text) != nil { return path }
    }
    _ = try InitiatorName.resolve()
    guard FileManager.default.fileExists(atPath: InitiatorName.lunbridgeFile) else {
      throw BridgeError(
        .config, "cannot write \(InitiatorName.lunbridgeFile): the initramfs would log in with a new initiator name at every boot"
      )
    }
    return InitiatorName.lunbridgeFile
  }

  /// The name a storage daemon for the root filesystem runs under: systemd's shutdown
  /// leaves processes whose argv[0] starts with '@' running (they were started from the
  /// initramfs), so the root filesystem can still be written to while it is remounted
  /// read-only at the very end.
  public static let processName = "@lunbridge"

  /// True when this process was started as such a daemon (`attach --initramfs`, or run
  /// with argv[0] starting with '@').
  public static func isStorageDaemon(argv0: String) -> Bool { argv0.hasPrefix("@") }

  /// The path through which this process reads a file of the running system's root
  /// filesystem. A process started in the initramfs keeps the initramfs as its root
  /// after switch_root (emptied by run-init), and /proc was moved away from it; with its
  /// working directory on procfs (`enterProcfs`), "1/root/PATH" is PID 1's view of PATH:
  /// the initramfs's before switch_root, the real root's after.
  public static func systemPath(_ path: String) -> String {
    guard inProcfs.load(ordering: .acquiring) else { return path }
    return "1/root" + (path.hasPrefix("/") ? path : "/" + path)
  }

  /// Set once by `enterProcfs`; read from any thread (a reload runs on its own queue).
  private static let inProcfs = Atomic<Bool>(false)

  /// Moves the working directory to procfs (see `systemPath`). Fails quietly where /proc
  /// cannot be entered: paths are then read as given.
  public static func enterProcfs() {
    if chdir("/proc") == 0 { inProcfs.store(true, ordering: .releasing) }
  }
}
