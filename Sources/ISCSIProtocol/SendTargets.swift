import NIOCore

/// One target from a SendTargets response (RFC 7143 appendix C, section 13.3).
public struct DiscoveredTarget: Sendable, Equatable {
  public var targetName: String
  public var portals: [TargetAddress]

  public init(targetName: String, portals: [TargetAddress]) {
    self.targetName = targetName
    self.portals = portals
  }
}

/// Parses a SendTargets text response: each `TargetName=` starts a target, the
/// `TargetAddress=` keys after it are its portals (RFC 7143 section 13.3 and appendix C).
/// A target with no TargetAddress is reachable at the portal the discovery session uses.
public enum SendTargetsParser {
  public static func parse(_ pairs: [TextKeyValue]) throws -> [DiscoveredTarget] {
    var out: [DiscoveredTarget] = []
    for pair in pairs {
      switch pair.key {
      case "TargetName":
        guard !pair.value.isEmpty else {
          throw ISCSIError(.protocolViolation, "SendTargets response with an empty TargetName")
        }
        out.append(DiscoveredTarget(targetName: pair.value, portals: []))
      case "TargetAddress":
        guard !out.isEmpty else {
          throw ISCSIError(
            .protocolViolation, "SendTargets response has a TargetAddress before any TargetName (RFC 7143 appendix C)")
        }
        out[out.count - 1].portals.append(try TargetAddress(parsing: pair.value))
      default:
        // Other keys (e.g. a "SendTargets=Reject") are not targets; ignore what we do not know.
        continue
      }
    }
    return out
  }

  public static func parse(_ bytes: [UInt8]) throws -> [DiscoveredTarget] {
    try parse(TextKeys.decode(bytes))
  }

  /// Convenience returning tuples.
  public static func parseTuples(_ pairs: [TextKeyValue]) throws -> [(targetName: String, portals: [TargetAddress])] {
    try parse(pairs).map { ($0.targetName, $0.portals) }
  }
}

/// Builds Text Request PDUs (RFC 7143 section 11.10).
public enum TextRequestBuilder {
  /// A Text Request with the F bit, TTT 0xffffffff (a new exchange, 11.10.4) and the given
  /// keys. `immediate` requests do not advance CmdSN (section 4.2.2.1); the caller owns CmdSN.
  public static func request(
    keys: [TextKeyValue], itt: UInt32, cmdSN: UInt32, expStatSN: UInt32,
    targetTransferTag: UInt32 = reservedTag, immediate: Bool = false
  ) throws -> ISCSIPDU {
    var h = BasicHeaderSegment(opcode: .textRequest, immediate: immediate, flags: finalFlag)
    h.lun = 0
    h.initiatorTaskTag = itt
    h.targetTransferTag = targetTransferTag
    h.cmdSN = cmdSN
    h.expStatSN = expStatSN
    let bytes = try TextKeys.encode(keys)
    var data = ByteBuffer()
    data.writeBytes(bytes)
    h.dataSegmentLength = UInt32(bytes.count)
    return ISCSIPDU(header: h, data: data)
  }

  /// `SendTargets=All` (RFC 7143 section 13.3; "All" only in a discovery session).
  public static func sendTargets(
    _ value: String = "All", itt: UInt32, cmdSN: UInt32, expStatSN: UInt32, immediate: Bool = false
  ) throws -> ISCSIPDU {
    try request(
      keys: [TextKeyValue("SendTargets", value)], itt: itt, cmdSN: cmdSN, expStatSN: expStatSN, immediate: immediate)
  }

  /// The empty request that asks for the rest of a response sent with C=1, echoing the
  /// target's TTT (RFC 7143 sections 11.10.4, 11.11.4).
  public static func continuation(
    itt: UInt32, targetTransferTag: UInt32, cmdSN: UInt32, expStatSN: UInt32, immediate: Bool = false
  ) throws -> ISCSIPDU {
    try request(
      keys: [], itt: itt, cmdSN: cmdSN, expStatSN: expStatSN, targetTransferTag: targetTransferTag,
      immediate: immediate)
  }
}

/// What to do after a Text Response in a SendTargets exchange.
public enum TextExchangeAction: Sendable {
  /// Send this (empty, continuing) Text Request.
  case send(ISCSIPDU)
  /// The whole response, decoded.
  case complete([TextKeyValue])
}

/// One Text Request/Response exchange, with continuation (RFC 7143 sections 11.10, 11.11):
/// while the target answers with C=1 (and F=0) and a TTT other than 0xffffffff, we send an
/// empty Text Request echoing that TTT; the text is complete at F=1.
public struct TextExchange: Sendable {
  public let initiatorTaskTag: UInt32
  private var accumulator: TextAccumulator
  private var finished = false

  public init(itt: UInt32, limit: Int = TextAccumulator.defaultLimit) {
    self.initiatorTaskTag = itt
    self.accumulator = TextAccumulator(limit: limit)
  }

  /// `nextCmdSN` and `expStatSN` are the caller's current values for a continuation request.
  public mutating func receive(
    _ pdu: ISCSIPDU, nextCmdSN: UInt32, expStatSN: UInt32, immediate: Bool = false
  ) throws -> TextExchangeAction {
    let h = pdu.header
    guard !finished else { throw ISCSIError(.protocolViolation, "Text Response after the exchange ended") }
    guard h.opcode == .textResponse else {
      throw ISCSIError(.protocolViolation, "expected a Text Response, got \(h.opcode)")
    }
    guard h.initiatorTaskTag == initiatorTaskTag else {
      throw ISCSIError(.protocolViolation, "Text Response for an unknown ITT 0x\(String(h.initiatorTaskTag, radix: 16))")
    }
    let final = h.flags & finalFlag != 0
    let continues = h.textContinue
    // RFC 7143 section 11.11.1: F and C are never both set.
    if final && continues {
      throw ISCSIError(.protocolViolation, "Text Response with both F and C set (RFC 7143 section 11.11.1)")
    }
    if final {
      finished = true
      return .complete(try accumulator.append(pdu.data, continues: false) ?? [])
    }
    // Not final: the target wants a request echoing its TTT (11.11.4), whether or not the
    // text itself continues (C) or just this round ends.
    guard h.targetTransferTag != reservedTag else {
      throw ISCSIError(
        .protocolViolation, "non-final Text Response with TTT 0xffffffff (RFC 7143 section 11.11.4)")
    }
    // With C the pairs continue in the next PDU; without C but with F=0 the text is whole
    // so far but more follows. Either way keep the bytes and join them at F=1.
    _ = try accumulator.append(pdu.data, continues: true)
    return .send(
      try TextRequestBuilder.continuation(
        itt: initiatorTaskTag, targetTransferTag: h.targetTransferTag, cmdSN: nextCmdSN, expStatSN: expStatSN,
        immediate: immediate))
  }
}
