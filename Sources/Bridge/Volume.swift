import ISCSIInitiator
import ISCSIProtocol
import Logging
import NBDProtocol
import NIOCore
import SCSI

/// One LUN served over NBD: turns NBD requests into block operations on the LUN and
/// maps their failures to the errno an NBD reply carries. It lives on the session's event
/// loop; every NBD connection of the volume is put on the same loop, so the data path
/// needs no locks and no thread hops.
public final class Volume: @unchecked Sendable {
  public let unit: LogicalUnit
  public let export: NBDExportInfo
  public let readOnly: Bool
  let validator: NBDRequestValidator
  let logger: Logger
  public var eventLoop: EventLoop { unit.session.eventLoop }
  /// Largest NBD payload we accept and advertise (proto.md: servers should allow 32 MiB).
  public static let maximumPayload: UInt32 = 32 << 20

  /// Counters for `status` and tests.
  public private(set) var requests = 0
  public private(set) var errors = 0

  public init(unit: LogicalUnit, name: String = "", readOnly: Bool = false, logger: Logger) throws {
    self.unit = unit
    self.logger = logger
    let info = unit.info
    self.readOnly = readOnly || info.readOnly
    self.export = try NBDExportInfo(
      name: name, description: info.deviceIdentifier.map { "iSCSI LUN \($0)" } ?? "iSCSI LUN",
      size: info.sizeBytes, transmissionFlags: Volume.flags(for: info, readOnly: self.readOnly),
      minimumBlockSize: UInt32(info.blockSize),
      preferredBlockSize: UInt32(max(info.blockSize, min(info.physicalBlockSize, 65536))),
      maximumPayload: Volume.maximumPayload)
    self.validator = NBDRequestValidator(export: export)
  }

  /// What the LUN can do, in NBD transmission flags (proto.md "Transmission flags").
  public static func flags(for info: LUNInfo, readOnly: Bool) -> NBDTransmissionFlags {
    var flags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .canMultiConn]
    if readOnly {
      flags.insert(.readOnly)
    } else {
      flags.insert(.sendWriteZeroes)
      if info.unmapSupported || info.writeSameUnmapSupported { flags.insert(.sendTrim) }
    }
    if info.rotational == true { flags.insert(.rotational) }
    return flags
  }

  /// Validates and runs one request. The future never fails: an error becomes the errno
  /// of the reply. A successful READ returns its data: the Data-In segments the target
  /// sent, in order, to be written to the socket as they are.
  public func handle(_ request: NBDRequest, payload: ByteBuffer?) -> EventLoopFuture<Result<[ByteBuffer], NBDErrno>>
  {
    requests += 1
    if let errno = validator.validate(request) {
      errors += 1
      return eventLoop.makeSucceededFuture(.failure(errno))
    }
    let bs = UInt64(unit.info.blockSize)
    let lba = request.offset / bs
    let blocks = UInt32(UInt64(request.length) / bs)
    let work: EventLoopFuture<[ByteBuffer]>
    switch request.type {
    case .read:
      work = unit.readSegments(lba: lba, blocks: blocks)
    case .write:
      guard let payload else { return eventLoop.makeSucceededFuture(.failure(.einval)) }
      work = unit.write(lba: lba, data: payload, fua: request.flags.contains(.fua)).map { [] }
    case .flush:
      work = unit.synchronizeCache().map { [] }
    case .trim:
      work = unit.unmap(lba: lba, blocks: blocks).map { [] }
    case .writeZeroes:
      var w = unit.writeZeroes(lba: lba, blocks: blocks)
      if request.flags.contains(.fua) { w = w.flatMap { self.unit.synchronizeCache() } }
      work = w.map { [] }
    default:
      return eventLoop.makeSucceededFuture(.failure(.einval))
    }
    return work.map { .success($0) }.recover { [self] error in
      errors += 1
      logger.warning("NBD request failed", metadata: ["type": "\(request.type)", "error": "\(error)"])
      return .failure(Volume.errno(for: error))
    }
  }

  /// The errno an NBD client sees for a failed operation.
  public static func errno(for error: Error) -> NBDErrno {
    if let e = error as? SCSIOperationError {
      switch e.errorClass {
      case .dataProtect:
        // SPACE ALLOCATION FAILED (0x27/0x07) is a full thin pool.
        if let s = e.sense, s.asc == 0x27, s.ascq == 0x07 { return .enospc }
        return .eperm
      case .illegalRequest: return .einval
      default: return .eio
      }
    }
    return .eio
  }
}

extension NBDErrno: Error {}
