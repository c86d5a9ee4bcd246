import ISCSIProtocol
import NIOCore

let allocator = ByteBufferAllocator()
let blockLength = 4096
let limits = DataTransferLimits(initialR2T: true, immediateData: true)

/// READ(10) / WRITE(10) of 8 blocks of 512 bytes at LBA 0x1234 (SBC-3 sections 5.11, 5.35).
let read10: [UInt8] = [0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0]
let write10: [UInt8] = [0x2a, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0]

func payload(_ count: Int) -> ByteBuffer {
  var b = allocator.buffer(capacity: count)
  for i in 0..<count { b.writeInteger(UInt8(truncatingIfNeeded: i &* 31 &+ 7)) }
  return b
}

func framing(digests: Bool) -> FramingParameters {
  FramingParameters(headerDigest: digests, dataDigest: digests)
}

func suffix(_ digests: Bool) -> String { digests ? " · digests on" : " · digests off" }

// MARK: - Encode

/// The command PDUs as SCSITask builds them; the loop then stamps CmdSN/ExpStatSN the way
/// the session does before it writes.
func encodeCases(_ h: Harness, digests: Bool) -> [Result] {
  let encoder = PDUEncoder(parameters: framing(digests: digests))
  var out = allocator.buffer(capacity: 16384)
  var results: [Result] = []

  let readTask = SCSITask(
    itt: 1, command: SCSICommand(lun: 0, cdb: read10, direction: .read(blockLength)), limits: limits)
  let readPDU = readTask.makeCommandPDUs().command

  results.append(
    h.measure("encode READ(10) 4 KiB command: writeHeader" + suffix(digests)) { n in
      var pdu = readPDU
      var sink: UInt64 = 0
      for i in 0..<n {
        out.clear()
        pdu.header.cmdSN = UInt32(truncatingIfNeeded: i)
        pdu.header.expStatSN = UInt32(truncatingIfNeeded: i)
        encoder.writeHeader(pdu, into: &out)
        sink &+= UInt64(out.writerIndex) &+ UInt64(out.getInteger(at: 24, as: UInt32.self)!)
      }
      blackHole(sink)
      return n
    })

  results.append(
    h.measure("encode READ(10) 4 KiB command: makeCommandPDUs + writeHeader" + suffix(digests)) { n in
      var sink: UInt64 = 0
      for i in 0..<n {
        out.clear()
        var pdu = readTask.makeCommandPDUs().command
        pdu.header.cmdSN = UInt32(truncatingIfNeeded: i)
        encoder.writeHeader(pdu, into: &out)
        sink &+= UInt64(out.writerIndex) &+ UInt64(out.getInteger(at: 24, as: UInt32.self)!)
      }
      blackHole(sink)
      return n
    })

  let writeData = payload(blockLength)
  let writeTask = SCSITask(
    itt: 2, command: SCSICommand(lun: 0, cdb: write10, direction: .write(writeData)), limits: limits)
  let writePDU = writeTask.makeCommandPDUs().command
  precondition(writePDU.data.readableBytes == blockLength, "the WRITE should carry its data as immediate data")

  results.append(
    h.measure(
      "encode WRITE(10) 4 KiB command + 4 KiB immediate: writeHeader + writeTrailer (data not copied)"
        + suffix(digests), bytesPerOp: blockLength
    ) { n in
      var pdu = writePDU
      var sink: UInt64 = 0
      for i in 0..<n {
        out.clear()
        pdu.header.cmdSN = UInt32(truncatingIfNeeded: i)
        encoder.writeHeader(pdu, into: &out)
        encoder.writeTrailer(for: pdu.data, into: &out)
        sink &+= UInt64(out.writerIndex) &+ UInt64(out.getInteger(at: out.writerIndex - 4, as: UInt32.self)!)
      }
      blackHole(sink)
      return n
    })

  results.append(
    h.measure(
      "encode WRITE(10) 4 KiB + immediate: makeCommandPDUs + writeHeader + writeTrailer" + suffix(digests),
      bytesPerOp: blockLength
    ) { n in
      var sink: UInt64 = 0
      for i in 0..<n {
        out.clear()
        var pdu = writeTask.makeCommandPDUs().command
        pdu.header.cmdSN = UInt32(truncatingIfNeeded: i)
        encoder.writeHeader(pdu, into: &out)
        encoder.writeTrailer(for: pdu.data, into: &out)
        sink &+= UInt64(out.writerIndex) &+ UInt64(out.getInteger(at: out.writerIndex - 4, as: UInt32.self)!)
      }
      blackHole(sink)
      return n
    })

  results.append(
    h.measure(
      "encode WRITE(10) 4 KiB + immediate: encode(_:into:) (copies data)" + suffix(digests),
      bytesPerOp: blockLength
    ) { n in
      var pdu = writePDU
      var sink: UInt64 = 0
      for i in 0..<n {
        out.clear()
        pdu.header.cmdSN = UInt32(truncatingIfNeeded: i)
        encoder.encode(pdu, into: &out)
        sink &+= UInt64(out.writerIndex) &+ UInt64(out.getInteger(at: out.writerIndex - 4, as: UInt32.self)!)
      }
      blackHole(sink)
      return n
    })
  return results
}

// MARK: - Decode

/// `count` PDUs back to back, as a target would send them, encoded with the same framing.
func stream(of pdus: (Int) -> ISCSIPDU, count: Int, digests: Bool) -> ByteBuffer {
  let encoder = PDUEncoder(parameters: framing(digests: digests))
  var out = allocator.buffer(capacity: 0)
  for i in 0..<count { encoder.encode(pdus(i), into: &out) }
  return out
}

/// Data-In carrying a whole 4 KiB read with the status (F and S bits, phase collapse,
/// RFC 7143 section 11.7.4).
func dataIn(_ i: Int, data: ByteBuffer) -> ISCSIPDU {
  var h = BasicHeaderSegment(opcode: .dataIn, flags: DataInFlags.final | DataInFlags.status)
  h.scsiStatus = 0
  h.initiatorTaskTag = UInt32(i)
  h.targetTransferTag = reservedTag
  h.statSN = UInt32(i)
  h.expCmdSN = UInt32(i + 1)
  h.maxCmdSN = UInt32(i + 64)
  h.dataSN = 0
  h.bufferOffset = 0
  return ISCSIPDU(header: h, data: data)
}

/// SCSI Response ending a write: GOOD, no sense, no residual (RFC 7143 section 11.4).
func scsiResponse(_ i: Int) -> ISCSIPDU {
  var h = BasicHeaderSegment(opcode: .scsiResponse, flags: finalFlag)
  h.response = 0
  h.scsiStatus = 0
  h.initiatorTaskTag = UInt32(i)
  h.targetTransferTag = 0
  h.statSN = UInt32(i)
  h.expCmdSN = UInt32(i + 1)
  h.maxCmdSN = UInt32(i + 64)
  return ISCSIPDU(header: h)
}

/// Runs the framer over copies of `stream` (a copy shares the storage: no allocation)
/// until at least n PDUs are cut; `each` sees every PDU.
@inline(__always)
func frame(
  _ stream: ByteBuffer, pdusPerStream: Int, n: Int, framer: PDUFramer, _ each: (ISCSIPDU) throws -> UInt64
) throws -> Int {
  var done = 0
  var sink: UInt64 = 0
  while done < n {
    var b = stream
    while let pdu = try framer.next(from: &b) {
      sink &+= try each(pdu)
    }
    done += pdusPerStream
  }
  blackHole(sink)
  return done
}

func decodeCases(_ h: Harness, digests: Bool) throws -> [Result] {
  let framer = PDUFramer(
    parameters: FramingParameters(
      headerDigest: digests, dataDigest: digests, maxRecvDataSegmentLength: 8192))
  var results: [Result] = []

  let data = payload(blockLength)
  let dataInCount = 256  // about 1 MiB of stream
  let dataInStream = stream(of: { dataIn($0, data: data) }, count: dataInCount, digests: digests)

  results.append(
    try h.measure("decode Data-In 4 KiB + S bit: PDUFramer.next" + suffix(digests), bytesPerOp: blockLength) { n in
      try frame(dataInStream, pdusPerStream: dataInCount, n: n, framer: framer) { pdu in
        UInt64(pdu.header.initiatorTaskTag) &+ UInt64(pdu.data.readableBytes)
      }
    })

  let readCommand = SCSICommand(lun: 0, cdb: read10, direction: .read(blockLength))
  results.append(
    try h.measure(
      "decode Data-In 4 KiB + S bit: PDUFramer.next + SCSITask.handleDataIn" + suffix(digests),
      bytesPerOp: blockLength
    ) { n in
      try frame(dataInStream, pdusPerStream: dataInCount, n: n, framer: framer) { pdu in
        var task = SCSITask(itt: pdu.header.initiatorTaskTag, command: readCommand, limits: limits)
        let completion = try task.handleDataIn(pdu, allocator: allocator)!
        return UInt64(completion.status) &+ UInt64(completion.data.readableBytes)
      }
    })

  let responseCount = 4096
  let responseStream = stream(of: scsiResponse, count: responseCount, digests: digests)
  results.append(
    try h.measure("decode SCSI Response (write's status, no data): PDUFramer.next" + suffix(digests)) { n in
      try frame(responseStream, pdusPerStream: responseCount, n: n, framer: framer) { pdu in
        UInt64(pdu.header.initiatorTaskTag) &+ UInt64(pdu.header.scsiStatus)
      }
    })
  return results
}

// MARK: - CRC32C

func crcCases(_ h: Harness) -> [Result] {
  var results: [Result] = []
  for size in [4096, 1 << 20] {
    let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 17) }
    let label = size == 4096 ? "4 KiB" : "1 MiB"
    results.append(
      h.measure("CRC32C.checksum (hardware path) over \(label)", bytesPerOp: size) { n in
        var sink: UInt64 = 0
        bytes.withUnsafeBytes { raw in
          for i in 0..<n { sink &+= UInt64(CRC32C.checksum(raw, continuing: UInt32(truncatingIfNeeded: i))) }
        }
        blackHole(sink)
        return n
      })
    results.append(
      h.measure("CRC32C.portableChecksum (table) over \(label)", bytesPerOp: size) { n in
        var sink: UInt64 = 0
        for _ in 0..<n { sink &+= UInt64(CRC32C.portableChecksum(bytes)) }
        blackHole(sink)
        return n
      })
  }
  return results
}
