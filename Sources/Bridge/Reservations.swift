import SCSI

// SCSI-3 persistent reservations of a running volume, asked for through its control socket
// (`lunbridge pr`): the request, the reply, and the rules of which I_T nexus (path) carries
// each operation. A registration belongs to one I_T nexus, so a key is registered on every
// path (as mpathpersist does on every path of a map); a reservation, a release, a clear or a
// preemption acts on the LU and goes through one path.

/// One `lunbridge pr` operation, as the control socket carries it (`pr <JSON>`).
public struct PRRequest: Codable, Hashable, Sendable {
  /// PERSISTENT RESERVE IN or OUT, by mpathpersist's option name.
  public enum Operation: String, Codable, Hashable, Sendable, CaseIterable {
    case readKeys = "read-keys"
    case readReservation = "read-reservation"
    case readFullStatus = "read-full-status"
    case reportCapabilities = "report-capabilities"
    case register
    case registerIgnore = "register-ignore"
    case reserve
    case release
    case clear
    case preempt
    case preemptAbort = "preempt-abort"

    public var inAction: PRInAction? {
      switch self {
      case .readKeys: return .readKeys
      case .readReservation: return .readReservation
      case .readFullStatus: return .readFullStatus
      case .reportCapabilities: return .reportCapabilities
      default: return nil
      }
    }

    public var outAction: PROutAction? {
      switch self {
      case .register: return .register
      case .registerIgnore: return .registerAndIgnoreExistingKey
      case .reserve: return .reserve
      case .release: return .release
      case .clear: return .clear
      case .preempt: return .preempt
      case .preemptAbort: return .preemptAndAbort
      default: return nil
      }
    }
  }

  public var operation: Operation
  /// --param-rk: this initiator's registered key (0: none).
  public var key: UInt64
  /// --param-sark: the new key (register) or the key to preempt.
  public var serviceActionKey: UInt64
  /// --prout-type (1, 3, 5, 6, 7, 8); nil where the operation takes none.
  public var type: UInt8?
  /// --param-aptpl.
  public var persistThroughPowerLoss: Bool
  /// --param-alltgpt.
  public var allTargetPorts: Bool

  public init(
    operation: Operation, key: UInt64 = 0, serviceActionKey: UInt64 = 0, type: UInt8? = nil,
    persistThroughPowerLoss: Bool = false, allTargetPorts: Bool = false
  ) {
    self.operation = operation
    self.key = key
    self.serviceActionKey = serviceActionKey
    self.type = type
    self.persistThroughPowerLoss = persistThroughPowerLoss
    self.allTargetPorts = allTargetPorts
  }

  /// Why the request cannot be sent as it is (a usage error), or nil.
  public var problem: String? {
    if let outAction = operation.outAction, outAction.usesType {
      guard let type else { return "--\(operation.rawValue) needs --prout-type (1, 3, 5, 6, 7 or 8)" }
      guard PRType(rawValue: type) != nil else {
        return "--prout-type \(type) is not a reservation type (1, 3, 5, 6, 7 or 8)"
      }
    }
    return nil
  }
}

/// What `lunbridge pr` gets back: one line of JSON on the control socket, printed as
/// mpathpersist prints it or, with --json, as it is.
public struct PRReply: Codable, Hashable, Sendable {
  public struct Reservation: Codable, Hashable, Sendable {
    public var key: String
    /// 0: LU_SCOPE.
    public var scope: Int
    public var type: Int
    public var typeName: String
  }

  public struct Registration: Codable, Hashable, Sendable {
    public var key: String
    public var holder: Bool
    public var allTargetPorts: Bool
    public var relativeTargetPort: Int
    /// The initiator's iSCSI TransportID ("NAME,i,0xISID"), if it is iSCSI.
    public var initiator: String?
    /// Valid when `holder`.
    public var scope: Int?
    public var type: Int?
    public var typeName: String?
  }

  public struct Capabilities: Codable, Hashable, Sendable {
    public var persistThroughPowerLossCapable: Bool
    public var persistThroughPowerLossActive: Bool
    public var allTargetPortsCapable: Bool
    /// Reservation types the target supports (nil: it does not say).
    public var types: [Int]?
  }

  /// Where an operation went and how it ended on that path.
  public struct PathResult: Codable, Hashable, Sendable {
    public var path: UInt32
    public var url: String
    public var isid: String
    /// nil: done.
    public var error: String?
  }

  public var ok: Bool
  /// One line, when not ok.
  public var error: String?
  /// The target answered RESERVATION CONFLICT (on every path tried).
  public var conflict: Bool
  /// PRGENERATION, for the PR IN operations.
  public var generation: UInt32?
  /// read-keys: one per registered I_T nexus, "0x..." hexadecimal.
  public var keys: [String]?
  /// read-reservation: nil when none is held (and then `reserved` is false).
  public var reservation: Reservation?
  public var reserved: Bool?
  public var registrations: [Registration]?
  public var capabilities: Capabilities?
  /// The paths a PR OUT went through.
  public var paths: [PathResult]?
  /// The key the volume keeps registered on its paths after this operation (nil: none).
  public var registeredKey: String?
  /// read-full-status from a target without READ FULL STATUS: built from READ KEYS and
  /// READ RESERVATION (one entry per key, the holder marked, no initiator or port).
  public var fromKeys: Bool?

  public init(ok: Bool, error: String? = nil, conflict: Bool = false) {
    self.ok = ok
    self.error = error
    self.conflict = conflict
  }

  /// A PERSISTENT RESERVE IN answer decoded for `action`.
  public static func decoded(_ action: PRInAction, _ bytes: [UInt8]) throws -> PRReply {
    var reply = PRReply(ok: true)
    switch action {
    case .readKeys:
      let k = try PRKeys(bytes)
      reply.generation = k.generation
      reply.keys = k.keys.map(PRReply.hex)
    case .readReservation:
      let r = try PRReservation(bytes)
      reply.generation = r.generation
      reply.reserved = r.reservation != nil
      reply.reservation = r.reservation.map {
        Reservation(
          key: PRReply.hex($0.key), scope: Int($0.scope), type: Int($0.rawType),
          typeName: PRReply.typeName($0.rawType))
      }
    case .readFullStatus:
      let f = try PRFullStatus(bytes)
      reply.generation = f.generation
      reply.registrations = f.registrations.map {
        Registration(
          key: PRReply.hex($0.key), holder: $0.holder, allTargetPorts: $0.allTargetPorts,
          relativeTargetPort: Int($0.relativeTargetPort), initiator: $0.initiator,
          scope: $0.holder ? Int($0.scope) : nil, type: $0.holder ? $0.type.map { Int($0.rawValue) } : nil,
          typeName: $0.holder ? $0.type.map(\.description) : nil)
      }
    case .reportCapabilities:
      let c = try PRCapabilities(bytes)
      reply.capabilities = Capabilities(
        persistThroughPowerLossCapable: c.persistThroughPowerLossCapable,
        persistThroughPowerLossActive: c.persistThroughPowerLossActive, allTargetPortsCapable: c.allTargetPortsCapable,
        types: c.types?.map { Int($0.rawValue) })
    }
    return reply
  }

  /// READ FULL STATUS as far as READ KEYS and READ RESERVATION tell it: each registered
  /// key, the first one equal to the reservation's key marked as the holder.
  public static func fullStatus(keys: PRKeys, reservation: PRReservation) -> PRReply {
    var reply = PRReply(ok: true)
    reply.generation = keys.generation
    reply.fromKeys = true
    var holderMarked = false
    reply.registrations = keys.keys.map { key in
      let holder = !holderMarked && reservation.reservation?.key == key
      if holder { holderMarked = true }
      let r = holder ? reservation.reservation : nil
      return Registration(
        key: hex(key), holder: holder, allTargetPorts: false, relativeTargetPort: 0, initiator: nil,
        scope: r.map { Int($0.scope) }, type: r.map { Int($0.rawType) }, typeName: r.map { typeName($0.rawType) })
    }
    return reply
  }

  public static func hex(_ key: UInt64) -> String { "0x" + String(key, radix: 16) }

  static func typeName(_ raw: UInt8) -> String {
    PRType(rawValue: raw)?.description ?? "obsolete [\(raw)]"
  }

  /// The text mpathpersist prints for the same operation (its layout, so scripts that
  /// read it keep working).
  public func text(for operation: PRRequest.Operation) -> String {
    var lines: [String] = []
    let generation = "PR generation=0x\(String(self.generation ?? 0, radix: 16))"
    switch operation {
    case .readKeys:
      let keys = self.keys ?? []
      switch keys.count {
      case 0: lines.append("  \(generation), \t0 registered reservation key.")
      case 1: lines.append("  \(generation), \t1 registered reservation key follows:")
      default: lines.append("  \(generation), \t\(keys.count) registered reservation keys follow:")
      }
      lines += keys.map { "    \($0)" }
    case .readReservation:
      if let r = reservation {
        lines.append("  \(generation), Reservation follows:")
        lines.append("   Key = \(r.key)")
        lines.append(r.scope == 0 ? "  scope = LU_SCOPE, type = \(r.typeName)" : "  scope = \(r.scope), type = \(r.typeName)")
      } else {
        lines.append("  \(generation), there is NO reservation held")
      }
    case .readFullStatus:
      lines.append("  \(generation)")
      if fromKeys == true {
        lines.append("  (the target has no READ FULL STATUS: from READ KEYS and READ RESERVATION)")
      }
      for r in registrations ?? [] {
        lines.append("    Key = \(r.key)")
        lines.append(r.allTargetPorts ? "      All target ports bit set" : "      All target ports bit clear")
        lines.append("      Relative port address: 0x\(String(r.relativeTargetPort, radix: 16))")
        if r.holder {
          lines.append("      << Reservation holder >>")
          let scope = (r.scope ?? 0) == 0 ? "LU_SCOPE" : "\(r.scope ?? 0)"
          lines.append("      scope: \(scope),  type: \(r.typeName ?? "obsolete")")
        } else {
          lines.append("      not reservation holder")
        }
        if let initiator = r.initiator {
          lines.append("      Transport Id of initiator:")
          lines.append("        iSCSI name and session id: \(initiator)")
        }
      }
    case .reportCapabilities:
      if let c = capabilities {
        lines.append("Report capabilities response:")
        lines.append("  All Target Ports Capable(ATP_C): \(c.allTargetPortsCapable ? 1 : 0)")
        lines.append("  Persist Through Power Loss Capable(PTPL_C): \(c.persistThroughPowerLossCapable ? 1 : 0)")
        lines.append("  Persist Through Power Loss Active(PTPL_A): \(c.persistThroughPowerLossActive ? 1 : 0)")
        if let types = c.types {
          lines.append("    Support indicated in Type mask:")
          for t in PRType.allCases {
            lines.append("      \(t.description): \(types.contains(Int(t.rawValue)) ? 1 : 0)")
          }
        }
      }
    default:
      // PR OUT: silent on success, as mpathpersist is; the paths show with --json.
      break
    }
    return lines.joined(separator: "\n")
  }
}
