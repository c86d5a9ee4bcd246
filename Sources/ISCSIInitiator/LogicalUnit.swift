import Failure
import ISCSIProtocol
import NIOCore
import SCSI

/// What a LUN is and can do, read once at open time (INQUIRY, VPD pages, READ CAPACITY,
/// MODE SENSE). `info --json` prints these keys.
public struct LUNInfo: Codable, Sendable, Equatable {
  public var vendor: String
  public var product: String
  public var revision: String
  public var serial: String?
  /// VPD 0x83 designator as Linux shows it under /dev/disk/by-id (NAA/EUI in hex).
  public var deviceIdentifier: String?
  /// The NAA designator as udev's wwn- names show it ("0x6001405..."), nil without one.
  public var wwn: String? = nil
  public var sizeBytes: UInt64
  public var blockSize: Int
  public var physicalBlockSize: Int
  public var blockCount: UInt64
  /// Largest single transfer in bytes (VPD 0xB0), 0 = the target sets no limit.
  public var maxTransferBytes: Int
  public var optimalTransferBytes: Int
  public var thinProvisioned: Bool
  /// LBPRZ (READ CAPACITY(16)): blocks without storage behind them read as zeros.
  public var unmappedReadsZero: Bool = false
  public var unmapSupported: Bool
  public var writeSameUnmapSupported: Bool
  public var maxUnmapBlocks: UInt32
  /// Largest WRITE SAME in blocks (VPD 0xB0), 0 = no limit reported.
  public var maxWriteSameBlocks: UInt64
  public var writeCache: Bool?
  public var fua: Bool
  public var readOnly: Bool
  public var rotational: Bool?
  public var aluaSupported: Bool
  /// TPGS from the standard INQUIRY data: 1 implicit ALUA only, 2 explicit only, 3 both.
  public var tpgs: UInt8 = 0
  /// ALUA, as seen through this session's port: its target port group (VPD 0x83) and that
  /// group's asymmetric access state and PREF bit (REPORT TARGET PORT GROUPS). nil
  /// without ALUA.
  public var targetPortGroup: UInt16? = nil
  public var accessState: String? = nil
  public var accessStateCode: UInt8? = nil
  public var preferredPortGroup: Bool? = nil

  public func text(url: String) -> String {
    func yn(_ b: Bool?) -> String { b.map { $0 ? "yes" : "no" } ?? "unknown" }
    var lines = [
      "URL: \(url)",
      "Vendor: \(vendor)",
      "Product: \(product)",
      "Revision: \(revision)",
      "Serial: \(serial ?? "-")",
      "Device identifier: \(deviceIdentifier ?? "-")",
      "WWN: \(wwn ?? "-")",
      "Size: \(sizeBytes) bytes (\(humanSize(sizeBytes)))",
      "Block size: \(blockSize) logical, \(physicalBlockSize) physical",
      "Maximum transfer: \(maxTransferBytes == 0 ? "no limit" : "\(maxTransferBytes) bytes")",
      "Thin provisioning: \(yn(thinProvisioned)) (UNMAP \(yn(unmapSupported)), WRITE SAME with UNMAP \(yn(writeSameUnmapSupported)), unmapped blocks read as zeros \(yn(unmappedReadsZero)))",
      "Write cache: \(yn(writeCache))",
      "FUA: \(yn(fua))",
      "Read-only: \(yn(readOnly))",
      "Rotational: \(yn(rotational))",
    ]
    if aluaSupported {
      lines.append(
        "ALUA: yes" + (targetPortGroup.map { ", port group \($0)" } ?? "")
          + (accessState.map { ", \($0)" } ?? "") + (preferredPortGroup == true ? ", preferred" : ""))
    }
    return lines.joined(separator: "\n")
  }
}

public func humanSize(_ bytes: UInt64) -> String {
  let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
  var v = Double(bytes)
  var i = 0
  while v >= 1024 && i < units.count - 1 {
    v /= 1024
    i += 1
  }
  let rounded = (v * 10).rounded() / 10
  return rounded == rounded.rounded() ? "\(Int(rounded)) \(units[i])" : "\(rounded) \(units[i])"
}

/// A SCSI command that ended with an error status: the class says what a caller may do
/// (retry elsewhere, fail the I/O, ...), the message names the sense.
public struct SCSIOperationError: Error, CustomStringConvertible, Sendable {
  public var errorClass: SCSIErrorClass
  /// RESERVATION CONFLICT: another initiator holds a persistent reservation that excludes
  /// this one. Not a path problem: every path of this initiator would get the same answer.
  public var isReservationConflict: Bool { status == SCSIStatus.reservationConflict.rawValue }
  public var status: UInt8
  public var sense: SenseData?
  public var operation: String
  /// What to do about it, from `SCSIOutcome` with the session's retries spent: fail to
  /// the client with an errno, or (a path problem) send the command elsewhere.
  public var outcome: SCSIOutcome

  public var description: String {
    let what = sense.map { $0.description } ?? "\(SCSIStatus(status))".lowercased()
    return "\(operation) failed: \(what)"
  }
}

/// One LUN reached through one session: block I/O in logical blocks, with transfers split
/// at the LUN's maximum transfer length.
public final class LogicalUnit: Sendable {
  public let session: ISCSISession
  public let lun: UInt16
  public let info: LUNInfo
  /// Blocks per READ/WRITE command: the LUN's maximum transfer, capped by what one
  /// command should carry (MaxBurstLength-sized commands keep R2T rounds short).
  public let maxBlocksPerCommand: UInt32
  let splitter: TransferSplitter
  let use16: Bool

  init(session: ISCSISession, lun: UInt16, info: LUNInfo) {
    self.session = session
    self.lun = lun
    self.info = info
    let cap = 1 << 20  // 1 MiB per command unless the LUN allows less
    var limit = cap / info.blockSize
    if info.maxTransferBytes > 0 { limit = min(limit, info.maxTransferBytes / info.blockSize) }
    self.maxBlocksPerCommand = UInt32(max(1, limit))
    self.splitter = TransferSplitter(maxBlocksPerCommand: maxBlocksPerCommand)
    self.use16 = info.blockCount > UInt64(UInt32.max)
  }

  /// The LUNs the session's target has (REPORT LUNS, SPC-4 6.33, sent to LUN 0 as every
  /// target must answer there), in the target's order; asked again with a larger
  /// allocation when the first answer was cut short.
  public static func reportLUNs(session: ISCSISession) async throws -> [UInt16] {
    let probe = Probe(session: session, lun: 0)
    var length: UInt32 = 16 * 1024
    for _ in 0..<2 {
      let report = try ReportLuns(
        try await probe.command(CDB.reportLuns(allocationLength: length), read: Int(length), "REPORT LUNS"))
      guard report.isTruncated, report.requiredAllocationLength > length else { return report.luns }
      length = min(report.requiredAllocationLength, 1 << 20)
    }
    throw ISCSIError(.protocolViolation, "REPORT LUNS: the target's LUN list kept growing")
  }

  /// Opens `lun` on `session`: checks it is there and ready, and reads what it can do.
  public static func open(session: ISCSISession, lun: UInt16) async throws -> LogicalUnit {
    let probe = Probe(session: session, lun: lun)
    let info = try await probe.run()
    return LogicalUnit(session: session, lun: lun, info: info)
  }

  // MARK: - Block I/O

  public func read(lba: UInt64, blocks: UInt32) async throws -> ByteBuffer {
    try await read(lba: lba, blocks: blocks).get()
  }

  /// Reads `blocks` blocks at `lba` into one buffer.
  public func read(lba: UInt64, blocks: UInt32) -> EventLoopFuture<ByteBuffer> {
    readSegments(lba: lba, blocks: blocks).map(\.joined)
  }

  /// Reads `blocks` blocks at `lba` as the target sent them: the Data-In segments in
  /// order, several commands when the LUN's limit requires. Nothing is copied.
  public func readSegments(lba: UInt64, blocks: UInt32) -> EventLoopFuture<[ByteBuffer]> {
    if blocks <= maxBlocksPerCommand {
      return readOne(lba: lba, blocks: blocks)
    }
    let futures = splitter.split(lba: lba, blocks: UInt64(blocks)).map { readOne(lba: $0.lba, blocks: $0.blocks) }
    return EventLoopFuture.whenAllSucceed(futures, on: session.eventLoop).map { $0.flatMap { $0 } }
  }

  private func readOne(lba: UInt64, blocks: UInt32) -> EventLoopFuture<[ByteBuffer]> {
    let promise = session.eventLoop.makePromise(of: [ByteBuffer].self)
    onLoop { self.readOne(lba: lba, blocks: blocks, promise.completeWith) }
    return promise.futureResult
  }

  /// The I/O path's READ: one command (`blocks` <= `maxBlocksPerCommand`), no future;
  /// `done` is called on the session's event loop with the Data-In segments.
  public func readOne(lba: UInt64, blocks: UInt32, _ done: @escaping (Result<[ByteBuffer], Error>) -> Void) {
    session.execute(readCommand(lba: lba, blocks: blocks)) { [self] result in
      done(readResult(result, lba: lba, blocks: blocks))
    }
  }

  /// The READ of `blocks` (<= `maxBlocksPerCommand`) at `lba`, to run with
  /// `session.execute(_:completion:)` and check with `readResult`: the volume's I/O path
  /// does so with one closure of its own.
  public func readCommand(lba: UInt64, blocks: UInt32) -> SCSICommand {
    SCSICommand(
      lun: lun, cdb: CDBBytes.read(lba: lba, blocks: blocks, prefer16: use16),
      direction: .read(Int(blocks) * info.blockSize))
  }

  /// The end of `readCommand(lba:blocks:)`: its Data-In segments when the status is good
  /// and every byte came, else the error.
  public func readResult(_ result: Result<SCSICompletion, Error>, lba: UInt64, blocks: UInt32)
    -> Result<[ByteBuffer], Error>
  {
    switch result {
    case .success(let c):
      do {
        try checkStatus(c, operation: "READ")
      } catch {
        return .failure(error)
      }
      guard c.dataLength == Int(blocks) * info.blockSize else {
        return .failure(
          SCSIOperationError(
            errorClass: .other, status: c.status, sense: nil,
            operation: "READ of \(blocks) blocks at LBA \(lba) returned \(c.dataLength) bytes",
            outcome: .fail(errno: 5)))
      }
      return .success(c.segments)
    case .failure(let error):
      return .failure(error)
    }
  }

  /// The I/O path's WRITE of `data` (whole blocks, at most `maxBlocksPerCommand`) at
  /// `lba`, FUA only when the LUN has DPOFUA, to run with `session.execute(_:completion:)`;
  /// its end is checked with `writeResult`.
  public func writeCommand(lba: UInt64, data: ByteBuffer, fua: Bool) -> SCSICommand {
    let blocks = UInt32(data.readableBytes / info.blockSize)
    let cdb = CDBBytes.write(lba: lba, blocks: blocks, fua: fua && info.fua, prefer16: use16)
    return SCSICommand(lun: lun, cdb: cdb, direction: .write(data))
  }

  /// The end of a WRITE: no data when the status is good, else the error.
  public static func writeResult(_ result: Result<SCSICompletion, Error>) -> Result<[ByteBuffer], Error> {
    switch result {
    case .success(let c):
      do {
        try checkStatus(c, operation: "WRITE")
        return .success([])
      } catch {
        return .failure(error)
      }
    case .failure(let error):
      return .failure(error)
    }
  }

  public func write(lba: UInt64, data: ByteBuffer, fua: Bool = false) async throws {
    try await write(lba: lba, data: data, fua: fua).get()
  }

  /// Writes whole blocks at `lba`; `data.readableBytes` must be a multiple of the block size.
  public func write(lba: UInt64, data: ByteBuffer, fua: Bool = false) -> EventLoopFuture<Void> {
    let bs = info.blockSize
    precondition(data.readableBytes % bs == 0, "write length must be a multiple of the block size")
    let blocks = UInt32(data.readableBytes / bs)
    let futures = splitter.split(lba: lba, blocks: UInt64(blocks)).map { chunk -> EventLoopFuture<Void> in
      let offset = Int(chunk.lba - lba) * bs
      let slice = data.getSlice(at: data.readerIndex + offset, length: Int(chunk.blocks) * bs)!
      let cdb = CDB.write(lba: chunk.lba, blocks: chunk.blocks, fua: fua && info.fua, prefer16: use16)
      return run(SCSICommand(lun: lun, cdb: cdb, direction: .write(slice)), "WRITE").map { _ in }
    }
    if fua && !info.fua {
      // No DPOFUA: make the write durable with SYNCHRONIZE CACHE once it has landed.
      return allSettled(futures).flatMap { self.synchronizeCache() }
    }
    return allSettled(futures)
  }

  /// The pieces of a write (WRITE, UNMAP, WRITE SAME commands of one I/O), once every one
  /// has ended: a failure is handed up only when no piece is still at the target, since
  /// the caller may send the whole I/O again (elsewhere, and without a fence when the
  /// target refused it) and a piece still on its way could land after that copy. Of
  /// several failures, one whose command's fate is unknown (the connection went) wins
  /// over a refusal by the target, so the caller fences rather than re-sends at once.
  private func allSettled(_ futures: [EventLoopFuture<Void>]) -> EventLoopFuture<Void> {
    Self.allSettled(futures, on: session.eventLoop)
  }

  static func allSettled(_ futures: [EventLoopFuture<Void>], on loop: EventLoop) -> EventLoopFuture<Void> {
    if futures.count == 1 { return futures[0] }
    return EventLoopFuture.whenAllComplete(futures, on: loop).flatMapThrowing { results in
      var refused: Error?
      for case .failure(let error) in results {
        guard error is SCSIOperationError else { throw error }
        refused = refused ?? error
      }
      if let refused { throw refused }
    }
  }

  public func synchronizeCache() -> EventLoopFuture<Void> {
    run(SCSICommand(lun: lun, cdb: use16 ? CDB.synchronizeCache16() : CDB.synchronizeCache10()), "SYNCHRONIZE CACHE")
      .map { _ in }
  }

  public func synchronizeCache() async throws { try await synchronizeCache().get() }

  /// Deallocates blocks: UNMAP when the LUN supports it, else WRITE SAME(16) with UNMAP.
  public func unmap(lba: UInt64, blocks: UInt32) -> EventLoopFuture<Void> {
    if info.unmapSupported {
      do {
        let perCommand = info.maxUnmapBlocks > 0 ? info.maxUnmapBlocks : UInt32.max
        let ranges = TransferSplitter(maxBlocksPerCommand: perCommand).split(lba: lba, blocks: UInt64(blocks))
        var futures: [EventLoopFuture<Void>] = []
        for r in ranges {
          let list = try CDB.unmapParameterList(ranges: [r])
          var buffer = ByteBufferAllocator().buffer(capacity: list.count)
          buffer.writeBytes(list)
          futures.append(
            run(
              SCSICommand(lun: lun, cdb: CDB.unmap(parameterListLength: UInt16(list.count)), direction: .write(buffer)),
              "UNMAP"
            ).map { _ in })
        }
        return allSettled(futures)
      } catch {
        return session.eventLoop.makeFailedFuture(error)
      }
    }
    return writeSame(lba: lba, blocks: blocks, unmap: true)
  }

  /// WRITE SAME(16) of a zero block, with or without UNMAP (used for write-zeroes).
  public func writeSame(lba: UInt64, blocks: UInt32, unmap: Bool) -> EventLoopFuture<Void> {
    var zero = ByteBufferAllocator().buffer(capacity: info.blockSize)
    zero.writeRepeatingByte(0, count: info.blockSize)
    let cdb = CDB.writeSame16(lba: lba, blocks: blocks, unmap: unmap)
    return run(SCSICommand(lun: lun, cdb: cdb, direction: .write(zero)), "WRITE SAME").map { _ in }
  }

  /// Zeroes blocks with WRITE SAME(16) of a zero block, without deallocating them, in
  /// pieces no larger than the LUN's WRITE SAME limit.
  public func writeZeroes(lba: UInt64, blocks: UInt32) -> EventLoopFuture<Void> {
    let limit = info.maxWriteSameBlocks > 0 ? min(info.maxWriteSameBlocks, 1 << 16) : 1 << 16
    let futures = TransferSplitter(maxBlocksPerCommand: UInt32(limit)).split(lba: lba, blocks: UInt64(blocks)).map {
      writeSame(lba: $0.lba, blocks: $0.blocks, unmap: false)
    }
    return allSettled(futures)
  }

  /// The LU's capacity in bytes as the target reports it now (READ CAPACITY(16), or (10)
  /// where the LU was opened with it).
  public func capacityBytes() -> EventLoopFuture<UInt64> {
    if use16 {
      let command = SCSICommand(lun: lun, cdb: CDB.readCapacity16(), direction: .read(32))
      return run(command, "READ CAPACITY(16)").flatMapThrowing { c in
        let rc = try ReadCapacity16(Array(c.data.readableBytesView))
        return (rc.lastLBA + 1) * UInt64(rc.blockLength)
      }
    }
    let command = SCSICommand(lun: lun, cdb: CDB.readCapacity10(), direction: .read(8))
    return run(command, "READ CAPACITY(10)").flatMapThrowing { c in
      let rc = try ReadCapacity10(Array(c.data.readableBytesView))
      return (UInt64(rc.lastLBA) + 1) * UInt64(rc.blockLength)
    }
  }

  /// Every target port group of the LU and its state, as REPORT TARGET PORT GROUPS tells
  /// them now. The length-only format: LIO (Linux 6.1) answers the extended one with its
  /// last 4 bytes cut off, so the implicit transition time it would carry comes from the
  /// configuration instead.
  public func portGroups() -> EventLoopFuture<ReportTargetPortGroups> {
    let command = SCSICommand(lun: lun, cdb: CDB.reportTargetPortGroups(allocationLength: 4096), direction: .read(4096))
    return run(command, "REPORT TARGET PORT GROUPS").flatMapThrowing { c in
      try ReportTargetPortGroups(Array(c.data.readableBytesView))
    }
  }

  /// Asks the target to make `group` active/optimized (SET TARGET PORT GROUPS, explicit
  /// ALUA).
  public func activatePortGroup(_ group: UInt16) -> EventLoopFuture<Void> {
    let list = CDB.setTargetPortGroupsParameterList(groups: [(group, ReportTargetPortGroups.AccessState.activeOptimized.rawValue)]
    )
    var buffer = ByteBufferAllocator().buffer(capacity: list.count)
    buffer.writeBytes(list)
    let command = SCSICommand(
      lun: lun, cdb: CDB.setTargetPortGroups(parameterListLength: UInt32(list.count)), direction: .write(buffer))
    return run(command, "SET TARGET PORT GROUPS").map { _ in }
  }

  /// PERSISTENT RESERVE IN through this session's I_T nexus: the parameter data as the
  /// target returned it (8 KiB at most: 1,000 keys).
  public func persistentReserveIn(_ action: PRInAction) -> EventLoopFuture<[UInt8]> {
    let length = 8192
    let command = SCSICommand(
      lun: lun, cdb: CDB.persistentReserveIn(action, allocationLength: UInt16(length)), direction: .read(length))
    return run(command, "PERSISTENT RESERVE IN").map { c in Array(c.data.readableBytesView) }
  }

  /// PERSISTENT RESERVE OUT through this session's I_T nexus (its registration is this
  /// nexus's own). A RESERVATION CONFLICT comes back as `SCSIOperationError` with that status.
  public func persistentReserveOut(_ action: PROutAction, type: PRType?, parameters: PROutParameters)
    -> EventLoopFuture<Void>
  {
    let list = parameters.bytes
    var buffer = ByteBufferAllocator().buffer(capacity: list.count)
    buffer.writeBytes(list)
    let command = SCSICommand(
      lun: lun, cdb: CDB.persistentReserveOut(action, type: action.usesType ? type : nil), direction: .write(buffer))
    return run(command, "PERSISTENT RESERVE OUT").map { _ in }
  }

  /// GET LBA STATUS from `lba` on (SBC-3 5.8): which blocks have storage behind them. Up
  /// to 256 descriptors per command; the caller asks again for what they do not cover.
  public func lbaStatus(lba: UInt64) -> EventLoopFuture<LBAStatus> {
    let length = 8 + 16 * 256
    let command = SCSICommand(
      lun: lun, cdb: CDB.getLBAStatus(lba: lba, allocationLength: UInt32(length)), direction: .read(length))
    return run(command, "GET LBA STATUS").flatMapThrowing { c in try LBAStatus(Array(c.data.readableBytesView)) }
  }

  public func testUnitReady() -> EventLoopFuture<Void> {
    run(SCSICommand(lun: lun, cdb: CDB.testUnitReady()), "TEST UNIT READY").map { _ in }
  }

  /// Runs a command and turns an error status into `SCSIOperationError`.
  func run(_ command: SCSICommand, _ name: String) -> EventLoopFuture<SCSICompletion> {
    let promise = session.eventLoop.makePromise(of: SCSICompletion.self)
    onLoop { self.run(command, name, promise.completeWith) }
    return promise.futureResult
  }

  /// Runs `body` on the session's event loop: now when called there, else next.
  private func onLoop(_ body: @escaping @Sendable () -> Void) {
    if session.eventLoop.inEventLoop {
      body()
    } else {
      session.eventLoop.execute(body)
    }
  }

  /// The same without a future: `done` is called on the session's event loop.
  func run(_ command: SCSICommand, _ name: String, _ done: @escaping (Result<SCSICompletion, Error>) -> Void) {
    session.execute(command) { result in
      done(
        result.flatMap { c in
          do {
            try checkStatus(c, operation: name)
            return .success(c)
          } catch {
            return .failure(error)
          }
        })
    }
  }
}

/// Throws unless the command succeeded. The session has already retried what
/// `SCSIOutcome` retries, so the outcome is taken with no retries left.
func checkStatus(_ c: SCSICompletion, operation: String) throws {
  let sense = c.sense.isEmpty ? nil : try? SenseData(c.sense)
  let outcome = SCSIOutcome(status: c.status, sense: sense, retries: .max)
  guard outcome != .done else { return }
  throw SCSIOperationError(
    errorClass: classify(status: c.status, sense: sense) ?? .other, status: c.status, sense: sense,
    operation: operation, outcome: outcome)
}

/// Reads what a LUN is, tolerating targets that lack optional pages.
struct Probe {
  let session: ISCSISession
  let lun: UInt16

  func command(_ cdb: [UInt8], read length: Int, _ name: String) async throws -> [UInt8] {
    let c = try await session.execute(SCSICommand(lun: lun, cdb: cdb, direction: length > 0 ? .read(length) : .none))
    try checkStatus(c, operation: name)
    return Array(c.data.readableBytesView)
  }

  func optional(_ cdb: [UInt8], read length: Int, _ name: String) async -> [UInt8]? {
    try? await command(cdb, read: length, name)
  }

  func run() async throws -> LUNInfo {
    let inquiry: StandardInquiry
    do {
      inquiry = try StandardInquiry(try await command(CDB.inquiry(allocationLength: 96), read: 96, "INQUIRY"))
    } catch let e as SCSIOperationError where e.errorClass == .illegalRequest {
      throw ISCSIError(.targetNotFound, "LUN \(lun) does not exist on this target (\(e))")
    }
    guard inquiry.isConnected, inquiry.deviceType != PeripheralDeviceType.unknownOrNoDevice else {
      throw ISCSIError(.targetNotFound, "LUN \(lun) does not exist on this target")
    }
    guard inquiry.deviceType == PeripheralDeviceType.directAccess else {
      throw ISCSIError(
        .invalidArgument, "LUN \(lun) is not a disk (peripheral device type 0x\(String(inquiry.deviceType, radix: 16)))")
    }
    // A LUN may report UNIT ATTENTION or NOT READY (becoming ready) first; the session
    // retries UNIT ATTENTION, TEST UNIT READY settles the rest.
    for attempt in 0..<10 {
      do {
        _ = try await command(CDB.testUnitReady(), read: 0, "TEST UNIT READY")
        break
      } catch let e as SCSIOperationError where e.errorClass == .retryable || e.errorClass == .unitAttention {
        if attempt == 9 { throw e }
        try await Task.sleep(nanoseconds: 200_000_000)
      } catch let e as SCSIOperationError where e.outcome.isPathProblem {
        // A port in an ALUA standby (or transitioning) group refuses TEST UNIT READY by
        // design, but answers INQUIRY, READ CAPACITY and REPORT TARGET PORT GROUPS: the
        // LU is there; whether this path may carry I/O is the port group's state.
        break
      }
    }
    var pages: VPDSupportedPages? = nil
    if let b = await optional(CDB.inquiryVPD(page: VPDPage.supportedPages, allocationLength: 255), read: 255, "INQUIRY VPD") {
      pages = try? VPDSupportedPages(b)
    }
    func vpd(_ page: UInt8) async -> [UInt8]? {
      guard pages?.contains(page) ?? false else { return nil }
      return await optional(CDB.inquiryVPD(page: page, allocationLength: 1024), read: 1024, "INQUIRY VPD")
    }
    let serial = await vpd(VPDPage.unitSerialNumber).flatMap { try? UnitSerialNumber($0) }?.serialNumber
    let ident = await vpd(VPDPage.deviceIdentification).flatMap { try? DeviceIdentification($0) }
    let limits = await vpd(VPDPage.blockLimits).flatMap { try? BlockLimits($0) }
    let characteristics = await vpd(VPDPage.blockDeviceCharacteristics).flatMap { try? BlockDeviceCharacteristics($0) }
    let provisioning = await vpd(VPDPage.logicalBlockProvisioning).flatMap { try? LogicalBlockProvisioning($0) }

    var blockSize: UInt32
    var blockCount: UInt64
    var physical: UInt64
    var lbpme = false
    var lbprz = false
    if let b = await optional(CDB.readCapacity16(), read: 32, "READ CAPACITY(16)"), let rc = try? ReadCapacity16(b) {
      blockSize = rc.blockLength
      blockCount = rc.blockCount
      physical = rc.physicalBlockLength
      lbpme = rc.lbpme
      lbprz = rc.lbprz
    } else {
      let rc = try ReadCapacity10(try await command(CDB.readCapacity10(), read: 8, "READ CAPACITY(10)"))
      blockSize = rc.blockLength
      blockCount = rc.blockCount
      physical = UInt64(rc.blockLength)
    }
    guard blockSize >= 512, blockSize <= 65536, blockSize & (blockSize - 1) == 0 else {
      throw ISCSIError(.invalidArgument, "LUN \(lun) reports an unusable block size of \(blockSize) bytes")
    }

    var writeCache: Bool? = nil
    var dpofua = false
    var writeProtect = false
    // Caching mode page 0x08 (SBC-3 6.4.5), via MODE SENSE(10) then (6).
    if let b = await optional(CDB.modeSense10(page: 0x08, allocationLength: 255), read: 255, "MODE SENSE(10)"),
      let m = try? ModeSense(mode10: b)
    {
      writeCache = m.writeCacheEnabled
      dpofua = m.dpofua
      writeProtect = m.writeProtect
    } else if let b = await optional(CDB.modeSense6(page: 0x08, allocationLength: 255), read: 255, "MODE SENSE(6)"),
      let m = try? ModeSense(mode6: b)
    {
      writeCache = m.writeCacheEnabled
      dpofua = m.dpofua
      writeProtect = m.writeProtect
    }

    // ALUA (SPC-4 5.16): which port group this session's port is in, and its state.
    var alua: (group: UInt16, state: ReportTargetPortGroups.AccessState, preferred: Bool)? = nil
    if inquiry.supportsALUA, let group = ident?.targetPortGroup,
      let b = await optional(CDB.reportTargetPortGroups(allocationLength: 4096), read: 4096, "REPORT TARGET PORT GROUPS"),
      let report = try? ReportTargetPortGroups(b), let mine = report.groups.first(where: { $0.groupID == group })
    {
      alua = (group, mine.asymmetricAccessState, mine.preferred)
    }

    let thin = lbpme || (provisioning.map { $0.lbpu || $0.lbpws } ?? false)
    var info = LUNInfo(
      vendor: inquiry.vendor, product: inquiry.product, revision: inquiry.revision,
      serial: serial, deviceIdentifier: ident?.preferredIdentifier, wwn: ident?.wwn,
      sizeBytes: blockCount * UInt64(blockSize), blockSize: Int(blockSize), physicalBlockSize: Int(physical),
      blockCount: blockCount,
      maxTransferBytes: Int(limits?.maximumTransferLength ?? 0) * Int(blockSize),
      optimalTransferBytes: Int(limits?.optimalTransferLength ?? 0) * Int(blockSize),
      thinProvisioned: thin,
      unmapSupported: thin && (provisioning?.lbpu ?? false),
      writeSameUnmapSupported: thin && (provisioning?.lbpws ?? false),
      maxUnmapBlocks: limits?.maximumUnmapLBACount ?? 0,
      maxWriteSameBlocks: limits?.maximumWriteSameLength ?? 0,
      writeCache: writeCache, fua: dpofua, readOnly: writeProtect,
      rotational: characteristics?.isRotational, aluaSupported: inquiry.supportsALUA)
    info.tpgs = inquiry.tpgs
    info.unmappedReadsZero = thin && lbprz
    if let alua {
      info.targetPortGroup = alua.group
      info.accessState = alua.state.description
      info.accessStateCode = alua.state.rawValue
      info.preferredPortGroup = alua.preferred
    }
    return info
  }
}

extension SCSIOperationError: LunbridgeError {
  public var errorCode: String { "scsi.\(errorClass)" }
  public var failureClass: FailureClass { .other }
}
