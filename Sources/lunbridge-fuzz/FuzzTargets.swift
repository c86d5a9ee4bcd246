import ISCSIProtocol
import NBDProtocol
import NIOCore
import SCSI

/// Every decoder that reads bytes from a peer, as a function of one input. Each must end
/// with a value or a thrown error: no crash, no hang, no allocation sized by what the peer
/// announced. libFuzzer drives them in `make fuzz` (and briefly in `make test`); without
/// libFuzzer, `lunbridge-fuzz replay` runs the committed corpus through them.
enum FuzzTarget: String, CaseIterable {
  /// PDU framing from the target (BHS, AHS, digests, padding, DataSegmentLength).
  case pduFramer = "pdu-framer"
  /// Text keys in login and text responses.
  case textKeys = "text-keys"
  /// A whole login (with CHAP and mutual CHAP) against whatever the "target" answers.
  case login
  /// Text Request/Response exchanges (SendTargets), with continuations.
  case textExchange = "text-exchange"
  /// A read's Data-In and SCSI Response PDUs (the accounting of issue #9).
  case dataIn = "data-in"
  /// The NBD fixed-newstyle handshake from a client, with and without TLS required.
  case nbdHandshake = "nbd-handshake"
  /// NBD requests in the transmission phase, then their validation.
  case nbdRequest = "nbd-request"
  /// SCSI data from the target: sense, INQUIRY and VPD pages, capacities, REPORT LUNS,
  /// REPORT TARGET PORT GROUPS, MODE SENSE.
  case scsi

  func run(_ bytes: [UInt8]) {
    switch self {
    case .pduFramer: Self.framer(bytes)
    case .textKeys: Self.textKeys(bytes)
    case .login: Self.login(bytes)
    case .textExchange: Self.textExchange(bytes)
    case .dataIn: Self.dataIn(bytes)
    case .nbdHandshake: Self.nbdHandshake(bytes)
    case .nbdRequest: Self.nbdRequest(bytes)
    case .scsi: Self.scsi(bytes)
    }
  }

  /// The first byte picks the framing parameters; the rest arrives in chunks whose sizes
  /// also come from the input, as TCP would cut it.
  static func framer(_ bytes: [UInt8]) {
    guard let first = bytes.first else { return }
    let framer = PDUFramer(
      parameters: FramingParameters(
        headerDigest: first & 1 != 0, dataDigest: first & 2 != 0,
        maxRecvDataSegmentLength: first & 4 != 0 ? 262_144 : 8192))
    var buffer = ByteBuffer()
    var rest = bytes.dropFirst()
    var chunk = Int(first >> 3) + 1
    while !rest.isEmpty {
      buffer.writeBytes(rest.prefix(chunk))
      rest = rest.dropFirst(chunk)
      chunk = chunk * 7 % 61 + 1
      do {
        while let pdu = try framer.next(from: &buffer) { _ = pdu.header.opcode }
      } catch {
        return
      }
    }
  }

  static func textKeys(_ bytes: [UInt8]) {
    _ = try? TextKeys.decode(bytes)
    var accumulator = TextAccumulator()
    for piece in bytes.split(separator: 0xff, omittingEmptySubsequences: false) {
      guard (try? accumulator.append(ByteBuffer(bytes: piece), continues: true)) != nil else { return }
    }
    _ = try? accumulator.append(ByteBuffer(), continues: false)
  }

  /// PDUs cut from the input are fed to a login in progress, as Login Responses.
  static func login(_ bytes: [UInt8]) {
    let chap = CHAPConfiguration(
      username: "fuzz", secret: Array("0123456789abcdef".utf8), algorithms: [.md5, .sha256],
      mutual: (username: "target", secret: Array("fedcba9876543210".utf8)))
    let configuration = LoginConfiguration(
      initiatorName: "iqn.2026-11.org.lunbridge:fuzz", targetName: "iqn.2026-11.org.lunbridge:target",
      chap: bytes.first.map { $0 & 1 != 0 } ?? false ? chap : nil)
    var machine = LoginStateMachine(
      configuration: configuration, initialCmdSN: 1, itt: 1, randomBytes: { n in [UInt8](repeating: 0x5a, count: n) })
    guard (try? machine.start()) != nil else { return }
    var buffer = ByteBuffer(bytes: bytes.dropFirst())
    let framer = PDUFramer()
    while let pdu = try? framer.next(from: &buffer) {
      guard case .send = try? machine.receive(pdu) else { return }
    }
  }

  static func textExchange(_ bytes: [UInt8]) {
    var exchange = TextExchange(itt: 7)
    var buffer = ByteBuffer(bytes: bytes)
    let framer = PDUFramer()
    while let pdu = try? framer.next(from: &buffer) {
      guard let action = try? exchange.receive(pdu, nextCmdSN: 2, expStatSN: 2) else { return }
      if case .complete(let keys) = action {
        _ = try? SendTargetsParser.parse(keys)
        return
      }
    }
  }

  /// A read of up to 64 KiB (its length and the in-order keys from the first bytes).
  static func dataIn(_ bytes: [UInt8]) {
    guard bytes.count >= 3 else { return }
    let expected = Int(bytes[0]) << 8 | Int(bytes[1])
    let inOrder = bytes[2] & 1 != 0
    var task = SCSITask(
      itt: 1, command: SCSICommand(lun: 0, cdb: [0x28], direction: .read(expected)),
      limits: DataTransferLimits(dataPDUInOrder: inOrder, dataSequenceInOrder: inOrder))
    var buffer = ByteBuffer(bytes: bytes.dropFirst(3))
    let framer = PDUFramer()
    while let pdu = try? framer.next(from: &buffer) {
      do {
        if pdu.opcode == .scsiResponse {
          let c = try task.handleResponse(pdu)
          precondition(c.status != 0 || c.dataLength == expected - max(c.residual, 0), "short read accepted")
          return
        }
        if let c = try task.handleDataIn(pdu, allocator: ByteBufferAllocator()) {
          precondition(c.status != 0 || c.dataLength == expected - max(c.residual, 0), "short read accepted")
          return
        }
      } catch {
        return
      }
    }
  }

  static let export = try! NBDExportInfo(
    name: "", size: 1 << 30, transmissionFlags: [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes],
    minimumBlockSize: 512, preferredBlockSize: 4096, maximumPayload: 1 << 25)

  static func nbdHandshake(_ bytes: [UInt8]) {
    guard let first = bytes.first else { return }
    var machine = NBDHandshakeStateMachine(exports: [export], tls: first & 1 != 0 ? .required : .none)
    var buffer = ByteBuffer(bytes: bytes.dropFirst())
    for _ in 0..<64 {
      guard let actions = try? machine.receive(&buffer), !actions.isEmpty else { break }
      if actions.contains(.startTLS) { machine.tlsStarted() }
    }
  }

  static func nbdRequest(_ bytes: [UInt8]) {
    var decoder = NBDRequestDecoder(maxPayload: 1 << 25)
    let validator = NBDRequestValidator(export: export)
    var buffer = ByteBuffer(bytes: bytes)
    while let event = try? decoder.next(from: &buffer) {
      _ = validator.validate(event.request)
    }
  }

  static func scsi(_ bytes: [UInt8]) {
    guard let first = bytes.first else { return }
    let data = Array(bytes.dropFirst())
    switch first % 14 {
    case 0: _ = try? SenseData(data)
    case 1: _ = try? SenseData.fromISCSIDataSegment(data)
    case 2: _ = try? StandardInquiry(data)
    case 3: _ = try? VPDSupportedPages(data)
    case 4: _ = try? UnitSerialNumber(data)
    case 5: _ = try? DeviceIdentification(data)
    case 6: _ = try? BlockLimits(data)
    case 7: _ = try? BlockDeviceCharacteristics(data)
    case 8: _ = try? LogicalBlockProvisioning(data)
    case 9: _ = try? ReadCapacity10(data)
    case 10: _ = try? ReadCapacity16(data)
    case 11: _ = try? ReportLuns(data)
    case 12: _ = try? ReportTargetPortGroups(data)
    default:
      _ = try? ModeSense(mode6: data)
      _ = try? ModeSense(mode10: data)
    }
  }
}
