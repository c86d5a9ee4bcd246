import NIOCore
import SCSI

/// The negotiated values that decide how a command's data moves (RFC 7143 section 13).
public struct DataTransferLimits: Sendable, Equatable {
  /// The target's declared MaxRecvDataSegmentLength: no Data-Out segment is larger.
  public var maxSendDataSegmentLength: Int
  public var firstBurstLength: Int
  public var maxBurstLength: Int
  public var initialR2T: Bool
  public var immediateData: Bool
  public var maxOutstandingR2T: Int
  /// DataPDUInOrder and DataSequenceInOrder (sections 13.18, 13.19). When both are Yes
  /// every Data-In must start where the previous one ended; otherwise Data-In may come in
  /// any order, but no byte may arrive twice.
  public var dataPDUInOrder: Bool
  public var dataSequenceInOrder: Bool

  public init(
    maxSendDataSegmentLength: Int = 8192, firstBurstLength: Int = 65536, maxBurstLength: Int = 262144,
    initialR2T: Bool = true, immediateData: Bool = true, maxOutstandingR2T: Int = 1,
    dataPDUInOrder: Bool = true, dataSequenceInOrder: Bool = true
  ) {
    self.maxSendDataSegmentLength = maxSendDataSegmentLength
    self.firstBurstLength = firstBurstLength
    self.maxBurstLength = maxBurstLength
    self.initialR2T = initialR2T
    self.immediateData = immediateData
    self.maxOutstandingR2T = maxOutstandingR2T
    self.dataPDUInOrder = dataPDUInOrder
    self.dataSequenceInOrder = dataSequenceInOrder
  }

  /// Data-In must arrive as one run of consecutive offsets.
  var dataInStrictlyInOrder: Bool { dataPDUInOrder && dataSequenceInOrder }
}

/// A SCSI command as the session carries it.
public struct SCSICommand: Sendable {
  public enum Direction: Sendable {
    case none
    /// Read up to this many bytes.
    case read(Int)
    /// Write exactly these bytes.
    case write(ByteBuffer)
  }

  public var lun: UInt16
  /// Held inline (no array per command); `cdb` shows it as bytes.
  public var cdbBytes: CDBBytes
  public var direction: Direction

  public init(lun: UInt16, cdb: [UInt8], direction: Direction = .none) {
    self.init(lun: lun, cdb: CDBBytes(cdb), direction: direction)
  }

  public init(lun: UInt16, cdb: CDBBytes, direction: Direction = .none) {
    self.lun = lun
    self.cdbBytes = cdb
    self.direction = direction
  }

  public var cdb: [UInt8] {
    get { cdbBytes.array }
    set { cdbBytes = CDBBytes(newValue) }
  }

  public var expectedLength: Int {
    switch direction {
    case .none: return 0
    case .read(let n): return n
    case .write(let b): return b.readableBytes
    }
  }
}

/// What a finished command returned (RFC 7143 section 11.4).
public struct SCSICompletion: Sendable {
  public var status: UInt8
  /// Sense data without the 2-byte SenseLength prefix; empty when there is none.
  public var sense: [UInt8]
  /// Read data as the target sent it, in order: the Data-In segments themselves, so a
  /// read that came in several PDUs is passed on without being copied together.
  public var segments: [ByteBuffer]
  /// Residual count with its meaning: positive = underflow, negative = overflow.
  public var residual: Int

  public init(status: UInt8, sense: [UInt8] = [], data: ByteBuffer = ByteBuffer(), residual: Int = 0) {
    self.init(status: status, sense: sense, segments: data.readableBytes > 0 ? [data] : [], residual: residual)
  }

  public init(status: UInt8, sense: [UInt8] = [], segments: [ByteBuffer], residual: Int = 0) {
    self.status = status
    self.sense = sense
    self.segments = segments
    self.residual = residual
  }

  /// Bytes of read data.
  public var dataLength: Int { segments.reduce(0) { $0 + $1.readableBytes } }

  /// Read data in one buffer (copied together when it came in several segments).
  public var data: ByteBuffer { segments.joined }
}

/// One SCSI task from command to status: builds the command and its unsolicited data,
/// answers R2Ts, assembles Data-In, and reads the status. Pure: the session fills in
/// CmdSN and ExpStatSN when it sends what this returns.
public struct SCSITask: Sendable {
  public let itt: UInt32
  public let command: SCSICommand
  let limits: DataTransferLimits
  /// Data-In segments received in order (the usual case, DataPDUInOrder=Yes)...
  private var readSegments: [ByteBuffer] = []
  /// ...or, once one arrives out of order, everything copied into place.
  private var readBuffer: ByteBuffer?
  private var received = 0
  /// The byte ranges received, when Data-In may come out of order.
  private var coverage = ByteRanges()
  /// The byte ranges of a write that R2Ts asked for.
  private var requested = ByteRanges()
  private var nextDataSN: UInt32 = 0
  private var nextR2TSN: UInt32 = 0
  private var finalStatus: SCSICompletion?

  public init(itt: UInt32, command: SCSICommand, limits: DataTransferLimits) {
    self.itt = itt
    self.command = command
    self.limits = limits
  }

  /// The SCSI Command PDU, carrying immediate data when allowed, and the unsolicited
  /// Data-Out PDUs that follow it (RFC 7143 sections 4.2.5.2 and 13.10-13.14: immediate and
  /// unsolicited data together never exceed FirstBurstLength).
  public func makeCommandPDUs() -> (command: ISCSIPDU, unsolicited: [ISCSIPDU]) {
    var header = BasicHeaderSegment(opcode: .scsiCommand)
    header.lun = LUNEncoding.encode(command.lun)
    header.initiatorTaskTag = itt
    header.expectedDataTransferLength = UInt32(command.expectedLength)
    header.cdbWords = command.cdbBytes.words
    var flags = SCSICommandFlags.simple
    var immediate: ByteBuffer? = nil
    var unsolicited: [ISCSIPDU] = []

    // A command that moves no data (TEST UNIT READY, SYNCHRONIZE CACHE, a zero-length
    // read) goes out with neither R nor W: with an expected length of 0 the bits would
    // announce a transfer that never comes (LIO logs a fix-up for each).
    switch command.direction {
    case .none, .read(0):
      break
    case .read:
      flags |= SCSICommandFlags.read
    case .write(let data) where data.readableBytes == 0:
      break
    case .write(let data):
      flags |= SCSICommandFlags.write
      let total = data.readableBytes
      let burst = min(total, limits.firstBurstLength)
      var sent = 0
      if limits.immediateData {
        let n = min(burst, limits.maxSendDataSegmentLength)
        immediate = data.getSlice(at: data.readerIndex, length: n)!
        sent = n
      }
      if !limits.initialR2T {
        var dataSN: UInt32 = 0
        while sent < burst {
          let n = min(burst - sent, limits.maxSendDataSegmentLength)
          unsolicited.append(
            dataOut(data: data, offset: sent, length: n, ttt: reservedTag, dataSN: dataSN, final: sent + n == burst))
          dataSN += 1
          sent += n
        }
      }
    }
    if unsolicited.isEmpty { flags |= SCSICommandFlags.final }
    header.flags = flags
    // Built once, at the end: the PDU (and its data's storage) is not copied on the way.
    if let immediate { return (ISCSIPDU(header: header, data: immediate), unsolicited) }
    return (ISCSIPDU(header: header), unsolicited)
  }

  private func dataOut(data: ByteBuffer, offset: Int, length: Int, ttt: UInt32, dataSN: UInt32, final: Bool)
    -> ISCSIPDU
  {
    var h = BasicHeaderSegment(opcode: .dataOut, flags: final ? finalFlag : 0)
    h.lun = LUNEncoding.encode(command.lun)
    h.initiatorTaskTag = itt
    h.targetTransferTag = ttt
    h.dataSN = dataSN
    h.bufferOffset = UInt32(offset)
    return ISCSIPDU(header: h, data: data.getSlice(at: data.readerIndex + offset, length: length)!)
  }

  /// Answers an R2T with the Data-Out PDUs it asks for (RFC 7143 section 11.8). DataSN
  /// starts at 0 for each R2T's sequence.
  public mutating func handleR2T(_ header: BasicHeaderSegment) throws -> [ISCSIPDU] {
    guard case .write(let data) = command.direction else {
      throw ISCSIError(.protocolViolation, "target sent an R2T for task 0x\(hex(itt)), which writes nothing")
    }
    guard header.dataSN == nextR2TSN else {
      throw ISCSIError(
        .protocolViolation, "target sent R2TSN \(header.dataSN) for task 0x\(hex(itt)), expected \(nextR2TSN)")
    }
    nextR2TSN &+= 1
    let offset = Int(header.bufferOffset)
    let length = Int(header.desiredDataTransferLength)
    guard length > 0, length <= limits.maxBurstLength, offset + length <= data.readableBytes else {
      throw ISCSIError(
        .protocolViolation,
        "target sent an R2T for \(length) bytes at offset \(offset) of a \(data.readableBytes)-byte write (MaxBurstLength \(limits.maxBurstLength))"
      )
    }
    // Outside recovery (ErrorRecoveryLevel 0) no R2T asks for bytes another one already
    // asked for: a target repeating them could have a 48-byte R2T turned into a burst of
    // Data-Out again and again while it stops reading (RFC 7143 sections 11.8, 7.2).
    guard requested.insert(offset..<(offset + length)) else {
      throw ISCSIError(
        .protocolViolation,
        "target sent an R2T for bytes \(offset)..<\(offset + length) of task 0x\(hex(itt)), which an earlier R2T already asked for"
      )
    }
    var pdus: [ISCSIPDU] = []
    var sent = 0
    var dataSN: UInt32 = 0
    while sent < length {
      let n = min(length - sent, limits.maxSendDataSegmentLength)
      pdus.append(
        dataOut(
          data: data, offset: offset + sent, length: n, ttt: header.targetTransferTag, dataSN: dataSN,
          final: sent + n == length))
      dataSN += 1
      sent += n
    }
    return pdus
  }

  /// Takes a Data-In PDU. Returns the completion when it carries the status (S bit,
  /// phase collapse, RFC 7143 section 11.7.4).
  ///
  /// Every byte of a read must be filled exactly once before its status is accepted
  /// (sections 11.7.4-11.7.6, 13.18, 13.19): DataSN counts up from 0 without a gap; with
  /// DataPDUInOrder and DataSequenceInOrder both Yes (what lunbridge offers, and the
  /// result whenever the target agrees) each PDU starts where the previous one ended;
  /// otherwise PDUs may come in any order but never overlap. A PDU that breaks a rule
  /// throws `.protocolViolation`: the caller drops the connection and the command is sent
  /// again through recovery, never completed with that data.
  public mutating func handleDataIn(_ pdu: ISCSIPDU, allocator: ByteBufferAllocator) throws -> SCSICompletion? {
    guard case .read(let expected) = command.direction else {
      throw ISCSIError(.protocolViolation, "target sent Data-In for task 0x\(hex(itt)), which reads nothing")
    }
    let h = pdu.header
    guard h.dataSN == nextDataSN else {
      throw ISCSIError(
        .protocolViolation, "target sent DataSN \(h.dataSN) for task 0x\(hex(itt)), expected \(nextDataSN)")
    }
    nextDataSN &+= 1
    let offset = Int(h.bufferOffset)
    let length = pdu.data.readableBytes
    guard offset + length <= expected else {
      throw ISCSIError(
        .protocolViolation,
        "target sent Data-In for bytes \(offset)..<\(offset + length) of a \(expected)-byte read")
    }
    if length > 0 {
      if limits.dataInStrictlyInOrder {
        guard offset == received else {
          throw ISCSIError(
            .protocolViolation,
            "target sent Data-In at BufferOffset \(offset) for task 0x\(hex(itt)), expected \(received) (DataPDUInOrder=Yes)"
          )
        }
      } else {
        guard coverage.insert(offset..<(offset + length)) else {
          throw ISCSIError(
            .protocolViolation,
            "target sent Data-In for bytes \(offset)..<\(offset + length) of task 0x\(hex(itt)), which overlap data already received"
          )
        }
      }
      keep(pdu.data, at: offset, of: expected, allocator: allocator)
      received += length
    }
    guard h.flags & DataInFlags.status != 0 else { return nil }
    guard h.flags & DataInFlags.final != 0 else {
      throw ISCSIError(.protocolViolation, "target sent a Data-In with status but without the F bit")
    }
    let residual = try checkedResidual(h)
    try checkTransfer(status: h.scsiStatus, residual: residual)
    return SCSICompletion(status: h.scsiStatus, segments: receivedData, residual: residual)
  }

  /// Takes the SCSI Response PDU that ends the task (RFC 7143 section 11.4). Throws
  /// `.protocolViolation` when the data received disagrees with the status and residual
  /// (the connection must be dropped and the command sent again), `.sessionFailed` for an
  /// iSCSI response other than "command completed at target".
  public func handleResponse(_ pdu: ISCSIPDU) throws -> SCSICompletion {
    let h = pdu.header
    guard h.response == 0 else {
      throw ISCSIError(
        .sessionFailed, "target reported iSCSI response 0x\(String(h.response, radix: 16)) (target failure)")
    }
    var sense: [UInt8] = []
    if pdu.data.readableBytes >= 2 {
      let senseLength = Int(pdu.data.getInteger(at: pdu.data.readerIndex, as: UInt16.self)!)
      let available = min(senseLength, pdu.data.readableBytes - 2)
      sense = pdu.data.getBytes(at: pdu.data.readerIndex + 2, length: available) ?? []
    }
    let residual = try checkedResidual(h)
    try checkTransfer(status: h.scsiStatus, residual: residual, sense: sense)
    return SCSICompletion(status: h.scsiStatus, sense: sense, segments: receivedData, residual: residual)
  }

  /// The residual with its meaning (positive = underflow, negative = overflow); U and O
  /// together, or an underflow larger than the command, break section 11.4.5.
  private func checkedResidual(_ h: BasicHeaderSegment) throws -> Int {
    let under = h.flags & DataInFlags.underflow != 0
    let over = h.flags & DataInFlags.overflow != 0
    guard !(under && over) else {
      throw ISCSIError(.protocolViolation, "target set both the underflow and overflow bits for task 0x\(hex(itt))")
    }
    if under {
      guard Int(h.residualCount) <= command.expectedLength else {
        throw ISCSIError(
          .protocolViolation,
          "target reported an underflow of \(h.residualCount) bytes for a \(command.expectedLength)-byte transfer (task 0x\(hex(itt)))"
        )
      }
      return Int(h.residualCount)
    }
    if over { return -Int(h.residualCount) }
    return 0
  }

  /// The data of a command is used when it succeeded as `classify` (SCSI) has it: GOOD,
  /// CONDITION MET, or CHECK CONDITION with sense key RECOVERED ERROR or COMPLETED (the
  /// command succeeded, after a retry inside the target). Then every byte must have
  /// arrived exactly once (see `handleDataIn`):
  /// - a read of the medium (READ 6/10/12/16) must have exactly the expected length less
  ///   the underflow the target reported: a hole or a short read is never passed on;
  /// - other reads (INQUIRY, MODE SENSE, ...) may be shorter without the U bit, as some
  ///   targets answer, but only as one run from offset 0; the completion then carries
  ///   just the bytes that came, never padding;
  /// - a write to the medium must have been taken whole: a residual means the target did
  ///   not write all of it, which must not be acknowledged as written.
  private func checkTransfer(status: UInt8, residual: Int, sense: [UInt8] = []) throws {
    guard classify(status: status, sense: sense.isEmpty ? nil : try? SenseData(sense)) == nil else { return }
    switch command.direction {
    case .none:
      return
    case .write:
      // Parameter lists (UNMAP, MODE SELECT, PERSISTENT RESERVE OUT) may legitimately be
      // taken in part (tgtd reports a residual for UNMAP); data for the medium may not.
      guard residual == 0 || !Self.writesMedium(command.cdbBytes.opcode) else {
        throw ISCSIError(
          .protocolViolation,
          "target ended write task 0x\(hex(itt)) with a residual of \(residual) bytes: not all the data was written")
      }
    case .read(let expected):
      let due = expected - max(residual, 0)
      let medium = Self.readsMedium(command.cdbBytes.opcode)
      guard received == due || (!medium && residual == 0 && received < due) else {
        throw ISCSIError(
          .protocolViolation,
          "target ended task 0x\(hex(itt)) with \(received) of \(due) bytes received (\(expected) expected, residual \(residual))"
        )
      }
      // Strictly in order, the bytes received are 0..<received; otherwise the ranges never
      // overlap, so they are one run from 0 only if they merged into it.
      if !limits.dataInStrictlyInOrder, received > 0, coverage.ranges != [0..<received] {
        throw ISCSIError(
          .protocolViolation, "target ended task 0x\(hex(itt)) with a hole in its Data-In")
      }
    }
  }

  /// READ(6), READ(10), READ(12), READ(16) (SBC-3): the data of the medium itself.
  static func readsMedium(_ opcode: UInt8?) -> Bool {
    guard let op = opcode else { return false }
    return op == 0x08 || op == 0x28 || op == 0xa8 || op == 0x88
  }

  /// WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16), WRITE SAME(10/16) (SBC-3).
  static func writesMedium(_ opcode: UInt8?) -> Bool {
    switch opcode {
    case 0x0a, 0x2a, 0xaa, 0x8a, 0x2e, 0xae, 0x8e, 0x41, 0x93: return true
    default: return false
    }
  }

  private var receivedData: [ByteBuffer] { readBuffer.map { [$0] } ?? readSegments }

  /// Data-In segments shorter than this (other than the one that ends the read) are copied
  /// into one buffer for the read rather than kept as slices: a slice of a few bytes keeps
  /// the whole socket buffer it came in alive, so a target sending 1-byte segments would
  /// make a 1 MiB read hold tens of MiB.
  static let smallestKeptSegment = 4096

  /// Keeps one Data-In segment: as the slice it came in (no copy) while the data comes in
  /// order in segments of a useful size, else copied into place in one buffer for the
  /// whole read (with the segments kept so far).
  private mutating func keep(_ data: ByteBuffer, at offset: Int, of expected: Int, allocator: ByteBufferAllocator) {
    let length = data.readableBytes
    let small = length < Self.smallestKeptSegment && offset + length < expected
    if readBuffer == nil && offset == received && !small {
      readSegments.append(data)
      return
    }
    if readBuffer == nil {
      var b = allocator.buffer(capacity: expected)
      for var segment in readSegments { b.writeBuffer(&segment) }
      readSegments = []
      readBuffer = b
    }
    readBuffer!.setBuffer(data, at: readBuffer!.readerIndex + offset)
    let end = offset + length
    if readBuffer!.writerIndex - readBuffer!.readerIndex < end {
      readBuffer!.moveWriterIndex(to: readBuffer!.readerIndex + end)
    }
  }

  public var bytesReceived: Int { received }
}

@usableFromInline
/// A task tag or sequence number in hex, for messages (shared with ISCSIInitiator).
package func hex(_ v: UInt32) -> String { String(v, radix: 16) }

extension Array where Element == ByteBuffer {
  /// The buffers in one (copied together when there are several).
  public var joined: ByteBuffer {
    if count == 1 { return self[0] }
    var out = ByteBufferAllocator().buffer(capacity: reduce(0) { $0 + $1.readableBytes })
    for var s in self { out.writeBuffer(&s) }
    return out
  }
}

/// Disjoint byte ranges, kept sorted and merged: the coverage of a read whose Data-In may
/// arrive out of order, and the ranges a write's R2Ts asked for. Its size is bounded by
/// the number of PDUs received.
struct ByteRanges: Sendable, Equatable {
  private(set) var ranges: [Range<Int>] = []

  /// Adds `r`; false (and nothing added) when it overlaps a range already there.
  mutating func insert(_ r: Range<Int>) -> Bool {
    guard !r.isEmpty else { return true }
    // The first range that ends after r starts.
    var lo = 0
    var hi = ranges.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if ranges[mid].upperBound <= r.lowerBound { lo = mid + 1 } else { hi = mid }
    }
    if lo < ranges.count && ranges[lo].lowerBound < r.upperBound { return false }
    var merged = r
    var first = lo
    var last = lo  // one past the ranges replaced
    if first > 0 && ranges[first - 1].upperBound == r.lowerBound {
      first -= 1
      merged = ranges[first].lowerBound..<merged.upperBound
    }
    if last < ranges.count && ranges[last].lowerBound == r.upperBound {
      merged = merged.lowerBound..<ranges[last].upperBound
      last += 1
    }
    ranges.replaceSubrange(first..<last, with: [merged])
    return true
  }
}
