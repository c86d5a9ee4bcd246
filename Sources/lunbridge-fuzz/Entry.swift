import CFuzzDriver
import Foundation

/// libFuzzer's entry point (built with -sanitize=fuzzer by `make fuzz`): the target comes
/// from LUNBRIDGE_FUZZ_TARGET, since one binary holds them all.
let selectedTarget: FuzzTarget = {
  let name = ProcessInfo.processInfo.environment["LUNBRIDGE_FUZZ_TARGET"] ?? ""
  guard let t = FuzzTarget(rawValue: name) else {
    let all = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
    FileHandle.standardError.write(Data("lunbridge-fuzz: set LUNBRIDGE_FUZZ_TARGET to one of: \(all)\n".utf8))
    exit(2)
  }
  return t
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
  let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
  selectedTarget.run(bytes)
  return 0
}

#if FUZZING
/// With libFuzzer: its driver, with its command line (corpus directories, -max_total_time, ...).
@main
struct FuzzMain {
  static func main() {
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) })
  }
}
#else
/// Without libFuzzer: `lunbridge-fuzz replay TARGET PATH...` runs files (or every file
/// of a directory) through a target, as a regression check of the corpus;
/// `lunbridge-fuzz seeds DIR` writes the seed corpus (Tests/fuzz/corpus).
@main
struct FuzzMain {
  static func main() throws {
    let args = Array(CommandLine.arguments.dropFirst())
    switch args.first {
    case "replay" where args.count >= 3:
      guard let target = FuzzTarget(rawValue: args[1]) else { usage() }
      var count = 0
      for path in args.dropFirst(2) {
        for file in try files(path) {
          target.run(Array(try Data(contentsOf: URL(fileURLWithPath: file))))
          count += 1
        }
      }
      print("\(target.rawValue): \(count) inputs, no crash")
    case "seeds" where args.count == 2:
      try Seeds.write(to: args[1])
    default:
      usage()
    }
  }

  static func files(_ path: String) throws -> [String] {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return [] }
    guard isDirectory.boolValue else { return [path] }
    return try FileManager.default.contentsOfDirectory(atPath: path).sorted().map { "\(path)/\($0)" }
  }

  static func usage() -> Never {
    FileHandle.standardError.write(
      Data("usage: lunbridge-fuzz replay TARGET PATH... | lunbridge-fuzz seeds DIR\n".utf8))
    exit(64)
  }
}
#endif
