/// The session's command window (RFC 7143 section 4.2.2.1): a non-immediate command may
/// be sent when ExpCmdSN <= CmdSN <= MaxCmdSN in serial order.
public struct CommandWindow: Sendable, Equatable {
  /// CmdSN of the next non-immediate command.
  public private(set) var nextCmdSN: UInt32
  public private(set) var expCmdSN: UInt32
  public private(set) var maxCmdSN: UInt32

  public init(cmdSN: UInt32, expCmdSN: UInt32, maxCmdSN: UInt32) {
    self.nextCmdSN = cmdSN
    self.expCmdSN = expCmdSN
    self.maxCmdSN = maxCmdSN
  }

  /// What an update did; the caller logs `.ignored` (a peer bug worth a line).
  public enum UpdateResult: Equatable, Sendable {
    case applied
    case ignored(reason: String)
  }

  /// Applies ExpCmdSN/MaxCmdSN from a target PDU. An update with MaxCmdSN < ExpCmdSN - 1
  /// is invalid and ignored (section 4.2.2.1); neither value ever moves backwards (as
  /// Linux's `__iscsi_update_cmdsn` does).
  @discardableResult
  public mutating func update(expCmdSN newExp: UInt32, maxCmdSN newMax: UInt32) -> UpdateResult {
    if SerialNumber(newMax) < SerialNumber(newExp) - 1 {
      return .ignored(reason: "MaxCmdSN \(newMax) < ExpCmdSN \(newExp) - 1")
    }
    var result = UpdateResult.applied
    if SerialNumber(newExp) > SerialNumber(expCmdSN) { expCmdSN = newExp }
    if SerialNumber(newMax) > SerialNumber(maxCmdSN) {
      maxCmdSN = newMax
    } else if newMax != maxCmdSN {
      result = .ignored(reason: "MaxCmdSN moved backwards from \(maxCmdSN) to \(newMax)")
    }
    return result
  }

  /// True when a non-immediate command may be sent now.
  public var isOpen: Bool { SerialNumber(nextCmdSN) <= SerialNumber(maxCmdSN) }

  /// Commands that may still be sent before the window closes.
  public var available: Int {
    guard isOpen else { return 0 }
    return Int(maxCmdSN &- nextCmdSN) + 1
  }

  /// Takes the CmdSN for a non-immediate command; the caller checked `isOpen`.
  public mutating func take() -> UInt32 {
    let sn = nextCmdSN
    nextCmdSN &+= 1
    return sn
  }

  /// The CmdSN carried by an immediate PDU: the next one, not consumed.
  public var immediateCmdSN: UInt32 { nextCmdSN }
}
