/// Size constraints — proto.md "Size constraints" and `NBD_INFO_BLOCK_SIZE`.

import Failure

public struct NBDBlockSizeConstraints: Hashable, Sendable {
  /// Smallest addressable length and alignment: a power of 2, 1...2^16.
  public let minimum: UInt32
  /// Efficient I/O size: a power of 2, at least max(minimum, 512).
  public let preferred: UInt32
  /// Largest READ/WRITE payload the server accepts: at least `preferred`.
  public let maximumPayload: UInt32

  /// The defaults a server SHOULD support when nothing is advertised ("Size constraints").
  public static let protocolDefault = NBDBlockSizeConstraints(
    uncheckedMinimum: 1, preferred: 4096, maximumPayload: NBDLimits.defaultMaxPayload)

  /// Throws `NBDConfigurationError` if the values break the MUSTs of "Size constraints".
  public init(minimum: UInt32, preferred: UInt32, maximumPayload: UInt32) throws {
    func isPowerOfTwo(_ v: UInt32) -> Bool { v != 0 && v & (v - 1) == 0 }
    guard isPowerOfTwo(minimum), minimum <= NBDLimits.maxMinimumBlockSize else {
      throw NBDConfigurationError.invalidBlockSizes("minimum block size \(minimum) must be a power of 2 <= 65536")
    }
    guard isPowerOfTwo(preferred), preferred >= max(minimum, 512) else {
      throw NBDConfigurationError.invalidBlockSizes(
        "preferred block size \(preferred) must be a power of 2 >= max(minimum, 512)")
    }
    guard maximumPayload >= preferred else {
      throw NBDConfigurationError.invalidBlockSizes("maximum payload \(maximumPayload) must be >= preferred \(preferred)")
    }
    self.init(uncheckedMinimum: minimum, preferred: preferred, maximumPayload: maximumPayload)
  }

  private init(uncheckedMinimum: UInt32, preferred: UInt32, maximumPayload: UInt32) {
    self.minimum = uncheckedMinimum
    self.preferred = preferred
    self.maximumPayload = maximumPayload
  }
}

public enum NBDConfigurationError: Error, Hashable, Sendable {
  case invalidBlockSizes(String)
  case invalidName(String)
}

/// One export as offered during the handshake.
public struct NBDExportInfo: Hashable, Sendable {
  public let name: String
  /// Human-readable; sent after the name in `NBD_REP_SERVER` and as `NBD_INFO_DESCRIPTION`.
  public let description: String
  public let size: UInt64
  /// Normalised: see `init`.
  public let transmissionFlags: NBDTransmissionFlags
  public let blockSizes: NBDBlockSizeConstraints

  public var minimumBlockSize: UInt32 { blockSizes.minimum }
  public var preferredBlockSize: UInt32 { blockSizes.preferred }
  public var maximumPayload: UInt32 { blockSizes.maximumPayload }
  public var isReadOnly: Bool { transmissionFlags.contains(.readOnly) }

  /// Flags are normalised to what this implementation can honour ("Transmission flags"):
  /// `HAS_FLAGS` is always set; `SEND_DF` is cleared (MUST be clear without structured
  /// replies); `SEND_FAST_ZERO` is cleared without `SEND_WRITE_ZEROES` (MUST be 0 then);
  /// the experimental `SEND_RESIZE` and `BLOCK_STATUS_PAYLOAD` are cleared.
  /// Names and descriptions MUST be at most 4096 bytes ("Conventions").
  public init(
    name: String, description: String = "", size: UInt64,
    transmissionFlags: NBDTransmissionFlags,
    minimumBlockSize: UInt32 = 1, preferredBlockSize: UInt32 = 4096,
    maximumPayload: UInt32 = NBDLimits.defaultMaxPayload
  ) throws {
    guard name.utf8.count <= NBDLimits.maxStringLength, !name.utf8.contains(0) else {
      throw NBDConfigurationError.invalidName("export name must be <= 4096 bytes without NUL")
    }
    guard description.utf8.count <= NBDLimits.maxStringLength, !description.utf8.contains(0) else {
      throw NBDConfigurationError.invalidName("export description must be <= 4096 bytes without NUL")
    }
    self.name = name
    self.description = description
    self.size = size
    self.blockSizes = try NBDBlockSizeConstraints(
      minimum: minimumBlockSize, preferred: preferredBlockSize, maximumPayload: maximumPayload)
    var flags = transmissionFlags
    flags.insert(.hasFlags)
    flags.subtract([.sendDF, .sendResize, .blockStatusPayload])
    if !flags.contains(.sendWriteZeroes) { flags.remove(.sendFastZero) }
    self.transmissionFlags = flags
  }
}

/// Decides, per request, whether to execute it or which error to reply with. Pure.
///
/// Rules, in the order they are applied (proto.md "Error values", "Request types",
/// "Command flags", "Size constraints"):
///  1. `NBD_CMD_DISC` → nil: it has no reply; the caller finishes in-flight requests and
///     closes. (Its offset/length MUST be zero but there is nothing to answer.)
///  2. Unknown command, or one outside `commandSubset` → EINVAL ("SHOULD return
///     NBD_EINVAL if it receives an unknown command").
///  3. A command whose transmission flag was not advertised (FLUSH/TRIM/WRITE_ZEROES/
///     CACHE) → EINVAL. `NBD_CMD_BLOCK_STATUS` passes here (flag REQ_ONE allowed); whether
///     the connection selected `base:allocation` is the connection's to check.
///  4. Unknown command flag, or a flag not documented for the command, or not enabled by
///     the advertised transmission flags (FUA needs SEND_FUA, FAST_ZERO needs
///     SEND_FAST_ZERO, DF needs SEND_DF) → EINVAL.
///  5. WRITE, TRIM, WRITE_ZEROES on a read-only export → EPERM ("Error values" and
///     `NBD_CMD_WRITE_ZEROES`).
///  6. FLUSH: offset and length are reserved and MUST be zero → EINVAL otherwise; else ok.
///  7. Zero length → EINVAL. proto.md leaves a zero-length READ/WRITE/TRIM/WRITE_ZEROES/
///     BLOCK_STATUS unspecified (server SHOULD NOT disconnect); we error it so the SCSI
///     side never sees a zero transfer length (which for some CDBs means "everything").
///  8. READ/WRITE longer than the advertised maximum payload → EINVAL (client MUST NOT;
///     "any client request with a length larger than the maximum payload size will fail").
///     TRIM/WRITE_ZEROES/CACHE may exceed it; BLOCK_STATUS any length (the reply may cover
///     less than asked); for the others, if `maximumEffectLength` is set and
///     exceeded → EOVERFLOW ("Size constraints"), except WRITE_ZEROES with FAST_ZERO →
///     ENOTSUP (FAST_ZERO: "SHOULD NOT fail with NBD_EOVERFLOW", "MUST fail quickly with
///     NBD_ENOTSUP").
///  9. Offset or length not a multiple of the minimum block size → EINVAL.
/// 10. offset + length beyond the export size (or overflowing 64 bits) → ENOSPC for WRITE
///     and WRITE_ZEROES, EINVAL for READ, TRIM, CACHE ("Error values", `NBD_CMD_WRITE_ZEROES`).
public struct NBDRequestValidator: Hashable, Sendable {
  public let exportSize: UInt64
  public let blockSizes: NBDBlockSizeConstraints
  public let transmissionFlags: NBDTransmissionFlags
  /// If set, commands outside it are refused with EINVAL (e.g. `NBDCommand.kernelCommands`).
  public let commandSubset: Set<NBDCommand>?
  /// Upper bound for TRIM/WRITE_ZEROES/CACHE lengths; nil = up to 2^32-1.
  public let maximumEffectLength: UInt32?

  public var isReadOnly: Bool { transmissionFlags.contains(.readOnly) }

  public init(
    exportSize: UInt64, blockSizes: NBDBlockSizeConstraints, transmissionFlags: NBDTransmissionFlags,
    commandSubset: Set<NBDCommand>? = nil, maximumEffectLength: UInt32? = nil
  ) {
    self.exportSize = exportSize
    self.blockSizes = blockSizes
    self.transmissionFlags = transmissionFlags
    self.commandSubset = commandSubset
    self.maximumEffectLength = maximumEffectLength
  }

  /// Read-only state and advertised commands are taken from `transmissionFlags`.
  public init(
    export: NBDExportInfo, commandSubset: Set<NBDCommand>? = nil, maximumEffectLength: UInt32? = nil
  ) {
    self.init(
      exportSize: export.size, blockSizes: export.blockSizes, transmissionFlags: export.transmissionFlags,
      commandSubset: commandSubset, maximumEffectLength: maximumEffectLength)
  }

  /// nil: execute the request (for DISC: no reply, close). Otherwise reply with this error.
  public func validate(_ request: NBDRequest) -> NBDErrno? {
    let type = request.type
    if type == .disconnect { return nil }
    if let subset = commandSubset, !subset.contains(type) { return .einval }

    // 2–4: command known and advertised; flags allowed for it.
    let tf = transmissionFlags
    var allowedFlags: NBDCommandFlags = tf.contains(.sendFUA) ? [.fua] : []
    switch type {
    case .read:
      if tf.contains(.sendDF) { allowedFlags.insert(.dontFragment) }
    case .write:
      break
    case .flush:
      guard tf.contains(.sendFlush) else { return .einval }
    case .trim:
      guard tf.contains(.sendTrim) else { return .einval }
    case .writeZeroes:
      guard tf.contains(.sendWriteZeroes) else { return .einval }
      allowedFlags.insert(.noHole)
      if tf.contains(.sendFastZero) { allowedFlags.insert(.fastZero) }
    case .cache:
      guard tf.contains(.sendCache) else { return .einval }
    case .blockStatus:
      allowedFlags.insert(.reqOne)
    default:  // unknown commands
      return .einval
    }
    guard allowedFlags.isSuperset(of: request.flags) else { return .einval }

    // 5. read-only
    if isReadOnly, type == .write || type == .trim || type == .writeZeroes { return .eperm }

    // 6. flush
    if type == .flush { return request.offset == 0 && request.length == 0 ? nil : .einval }

    // 7. zero length
    if request.length == 0 { return .einval }

    // 8. payload / effect length
    if type == .read || type == .write {
      if request.length > blockSizes.maximumPayload { return .einval }
    } else if type != .blockStatus, let limit = maximumEffectLength, request.length > limit {
      return type == .writeZeroes && request.flags.contains(.fastZero) ? .enotsup : .eoverflow
    }

    // 9. alignment
    let minimum = UInt64(blockSizes.minimum)
    if request.offset % minimum != 0 || UInt64(request.length) % minimum != 0 { return .einval }

    // 10. bounds
    let (end, overflow) = request.offset.addingReportingOverflow(UInt64(request.length))
    if overflow || end > exportSize {
      return type == .write || type == .writeZeroes ? .enospc : .einval
    }
    return nil
  }
}

extension NBDConfigurationError: LunbridgeError {
  public var errorCode: String {
    switch self {
    case .invalidBlockSizes: return "nbd.invalid-block-sizes"
    case .invalidName: return "nbd.invalid-name"
    }
  }
  public var failureClass: FailureClass { .usage }
  public var errorMessage: String {
    switch self {
    case .invalidBlockSizes(let m), .invalidName(let m): return m
    }
  }
}
