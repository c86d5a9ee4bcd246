/// What to do with a command once its status (and sense) arrived. The one place where
/// SCSI status is interpreted: the session decides retries with it, the logical unit
/// turns failures into errors with it, the volume picks the client's errno and whether
/// the path is at fault from it.
public enum SCSIOutcome: Sendable, Hashable, CustomStringConvertible {
  /// The command did what was asked (GOOD, CONDITION MET, RECOVERED ERROR, COMPLETED).
  case done
  /// Send it again on the same path after this many milliseconds (0: at once): BUSY,
  /// TASK SET FULL, UNIT ATTENTION, a unit becoming ready, ABORTED COMMAND.
  case retry(afterMilliseconds: Int)
  /// The path cannot carry I/O now (ALUA standby or unavailable port, logical unit
  /// communication failure): fail the path and send the command elsewhere.
  case failPath
  /// The path's access state is changing or has changed (ALUA transition, UNIT ATTENTION
  /// "asymmetric access state changed"): re-read the path's state, then send it again.
  case recheckPath
  /// Give up: the client gets this Linux errno.
  case fail(errno: Int32)

  public var description: String {
    switch self {
    case .done: return "done"
    case .retry(let ms): return ms == 0 ? "retry" : "retry after \(ms) ms"
    case .failPath: return "fail the path"
    case .recheckPath: return "re-check the path"
    case .fail(let errno): return "fail (errno \(errno))"
    }
  }

  /// How often a command is sent again on the same path (retry or re-check) before its
  /// status is returned as a failure.
  public static let defaultMaxRetries = 8

  /// The outcome of a command that ended with `status` and `sense`, on its `attempt`-th
  /// retry (0 for the first answer). Retries stop after `maxRetries`: the command then
  /// fails with the errno of its class (EIO for a unit that stays busy).
  public init(status: UInt8, sense: SenseData?, retries: Int = 0, maxRetries: Int = SCSIOutcome.defaultMaxRetries) {
    guard let errorClass = classify(status: status, sense: sense) else {
      self = .done
      return
    }
    let mayRetry = retries < maxRetries
    switch errorClass {
    case .retryable where mayRetry:
      // BUSY / TASK SET FULL / becoming ready: give the target a moment, longer each time
      // (10 ms, 20 ms, ... capped at 100 ms). ABORTED COMMAND and NO SENSE: at once.
      let status = SCSIStatus(status)
      let waits = status == .busy || status == .taskSetFull || sense?.senseKey == .notReady
      self = .retry(afterMilliseconds: waits ? min(100, 10 * (retries + 1)) : 0)
    case .unitAttention where SCSIOutcome.isAccessStateChange(sense):
      // SPC-4 5.16: ASYMMETRIC ACCESS STATE CHANGED (2A/06) and IMPLICIT ASYMMETRIC ACCESS
      // STATE TRANSITION FAILED (2A/07) tell the initiator to re-read the target port
      // groups: re-checked on this path a few times, then the path is given up and the
      // command goes elsewhere. Never an error for the client: the LU is fine.
      self = mayRetry ? .recheckPath : .failPath
    case .unitAttention where mayRetry:
      // Every other unit attention is consumed by reporting it.
      self = .retry(afterMilliseconds: 0)
    case .aborted where mayRetry:
      // TASK ABORTED status: another initiator's task management ended it (SAM-5 5.3.1).
      self = .retry(afterMilliseconds: 0)
    case .path:
      // 04/0A (transitioning) may settle on this very path: re-check it; 04/0B standby and
      // 04/0C unavailable send the command to another path (SPC-4 5.15.2.4).
      if sense?.portAccessState == .transitioning, mayRetry {
        self = .recheckPath
      } else {
        self = .failPath
      }
    case .retryable, .unitAttention, .aborted:
      self = .fail(errno: 5)  // EIO: the unit never settled
    default:
      // Hard errors keep the errno of their class (ENOSPC for a full thin pool, ...).
      self = .fail(errno: SCSICommandError(status: status, sense: sense)?.errnoValue ?? 5)
    }
  }

  /// 2A/06 or 2A/07: the target port groups' access states changed (or failed to).
  public static func isAccessStateChange(_ sense: SenseData?) -> Bool {
    guard let sense, sense.asc == 0x2A else { return false }
    return sense.ascq == 0x06 || sense.ascq == 0x07
  }

  /// True when the command should go to another path rather than fail.
  public var isPathProblem: Bool {
    switch self {
    case .failPath, .recheckPath: return true
    default: return false
    }
  }
}
