import ISCSIProtocol

#if canImport(Glibc)
import Glibc
#endif

/// What the table was measured on: the codec shares this 2-core machine with builds, so
/// the load average is printed too.
struct Machine {
  var onlineCPUs: Int
  var cpuModel: String
  var loadAverage: String
  var crc32cHardware: Bool

  static func current() -> Machine {
    let cpuinfo = readFile("/proc/cpuinfo") ?? ""
    let model =
      cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
      .flatMap { $0.split(separator: ":", maxSplits: 1).last }
      .map { $0.trimmed() } ?? "unknown"
    let load = (readFile("/proc/loadavg") ?? "?").split(separator: " ").prefix(3).joined(separator: " ")
    return Machine(
      onlineCPUs: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), cpuModel: model, loadAverage: load,
      crc32cHardware: CRC32C.usesHardware)
  }
}

func readFile(_ path: String) -> String? {
  guard let f = fopen(path, "r") else { return nil }
  defer { fclose(f) }
  var bytes: [UInt8] = []
  var chunk = [UInt8](repeating: 0, count: 4096)
  while true {
    let n = fread(&chunk, 1, chunk.count, f)
    if n <= 0 { break }
    bytes.append(contentsOf: chunk[0..<n])
  }
  return String(decoding: bytes, as: UTF8.self)
}

extension Substring {
  func trimmed() -> String {
    String(self.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
  }
}
