// Asymmetric logical unit access (ALUA) as the scheduler uses it.
//
// Facts from SPC-4 (5.16, 6.37 REPORT TARGET PORT GROUPS, 6.44 SET TARGET PORT GROUPS)
// and the kernel's scsi_dh_alua:
// - A LU's target ports are grouped; every port of a group is in the group's access state:
//   active/optimized, active/non-optimized, standby, unavailable, logical block dependent,
//   offline or transitioning. Only the active states (and logical block dependent, for
//   the blocks it allows) carry READ and WRITE; the others answer NOT READY with
//   04/0B (standby), 04/0C (unavailable), 04/0A (transitioning) or 04/12 (offline), but
//   all of them answer REPORT TARGET PORT GROUPS and INQUIRY.
// - A change of states is announced to each I_T nexus once, with UNIT ATTENTION 2A/06
//   (asymmetric access state changed) or 2A/07 (implicit transition failed).
// - TPGS in the standard INQUIRY data says who changes states: 01b the target alone
//   (implicit), 10b only the initiator through SET TARGET PORT GROUPS (explicit), 11b both.
// - RTPG's extended header carries the implicit transition time, in seconds: how long a
//   transition may take before it is considered failed.

/// A target port group's asymmetric access state.
public enum PortAccess: Hashable, Sendable, CustomStringConvertible {
  case activeOptimized
  case activeNonOptimized
  case standby
  case unavailable
  /// Logical block dependent (4h): some blocks through this port only. Used as
  /// active/non-optimized: the target answers for the blocks it refuses.
  case logicalBlockDependent
  case offline
  case transitioning

  /// From the 4-bit ASYMMETRIC ACCESS STATE field; nil for a reserved value.
  public init?(code: UInt8) {
    switch code & 0x0F {
    case 0x0: self = .activeOptimized
    case 0x1: self = .activeNonOptimized
    case 0x2: self = .standby
    case 0x3: self = .unavailable
    case 0x4: self = .logicalBlockDependent
    case 0xE: self = .offline
    case 0xF: self = .transitioning
    default: return nil
    }
  }

  /// READ and WRITE go through a port in this state.
  public var allowsIO: Bool {
    switch self {
    case .activeOptimized, .activeNonOptimized, .logicalBlockDependent: return true
    case .standby, .unavailable, .offline, .transitioning: return false
    }
  }

  /// The path priority for the scheduler (dm-multipath's alua prioritizer ranks the same
  /// way): active/optimized 50, active/non-optimized 10, standby 1, anything else 0; one
  /// more in a group the target marks preferred (PREF bit).
  public func priority(preferred: Bool) -> Int {
    let bonus = preferred ? 1 : 0
    switch self {
    case .activeOptimized: return 50 + bonus
    case .activeNonOptimized, .logicalBlockDependent: return 10 + bonus
    case .standby: return 1
    case .unavailable, .offline, .transitioning: return 0
    }
  }

  /// As status shows it.
  public var description: String {
    switch self {
    case .activeOptimized: return "active/optimized"
    case .activeNonOptimized: return "active/non-optimized"
    case .standby: return "standby"
    case .unavailable: return "unavailable"
    case .logicalBlockDependent: return "logical-block-dependent"
    case .offline: return "offline"
    case .transitioning: return "transitioning"
    }
  }
}

/// What one REPORT TARGET PORT GROUPS said: every group's state, and how long the target
/// allows a transition to take.
public struct PortGroupReport: Hashable, Sendable {
  public struct Group: Hashable, Sendable {
    public var access: PortAccess
    public var preferred: Bool
    public init(access: PortAccess, preferred: Bool = false) {
      self.access = access
      self.preferred = preferred
    }
  }

  public var groups: [UInt16: Group]
  /// The implicit transition time (extended header); nil when the target gives none.
  public var transitionTimeout: Duration?

  public init(groups: [UInt16: Group], transitionTimeout: Duration? = nil) {
    self.groups = groups
    self.transitionTimeout = transitionTimeout
  }
}

/// Who may change the LU's access states (TPGS in the standard INQUIRY data).
public enum ALUAMode: Hashable, Sendable {
  /// The target alone (01b): never sent SET TARGET PORT GROUPS.
  case implicit
  /// Only the initiator (10b): a standby group is activated with SET TARGET PORT GROUPS.
  case explicit
  /// Both (11b): the target moves groups itself; SET TARGET PORT GROUPS is used only when
  /// no group is active.
  case both

  public init?(tpgs: UInt8) {
    switch tpgs & 0x3 {
    case 1: self = .implicit
    case 2: self = .explicit
    case 3: self = .both
    default: return nil
    }
  }

  public var allowsActivation: Bool { self != .implicit }
}
