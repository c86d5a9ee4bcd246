// ALUA in the scheduler: the port groups' access states place the paths, and the machine
// decides when they are re-read and when a group is activated.
//
// A path whose port group is standby, unavailable, offline or transitioning stays logged in
// and healthy (it is never failed or probed for that), carries no I/O, and shows its state.
// The states are re-read (`.readPortGroups`) every `portGroupCheckInterval`, every second
// while a group transitions, and at once when the target says they changed: a command
// refused with NOT READY 04/0A-0C (`rejected(_:path:access:)`), a unit attention 2A/06 or
// 2A/07, an asynchronous event (`accessMayHaveChanged`). One read runs at a time; a read
// asked for meanwhile follows it. A group transitioning for longer than the target's
// implicit transition time (else `transitionTimeout`) is taken as unavailable. When no path
// can carry I/O but one is standby or unavailable and the LU allows explicit ALUA, that
// path's group is activated with SET TARGET PORT GROUPS (`.activatePortGroup`), as the
// kernel's scsi_dh_alua does; an implicit-only LU is never sent one.

extension MultipathStateMachine {
  /// Who may change the LU's access states (from TPGS); nil without ALUA.
  public mutating func setALUAMode(_ mode: ALUAMode?) {
    self.aluaMode = mode
  }

  /// The path's target port group, learnt when its LU was first opened (a path added by a
  /// reload, or one that could not log in at start); its state comes with the next report.
  public mutating func assignPortGroup(_ id: PathID, _ group: UInt16) {
    guard let record = self.paths[id], record.portGroup != group else { return }
    record.portGroup = group
    record.group = Int(group)
  }

  /// The path's target port group (nil without ALUA or before it is known).
  public func portGroup(of id: PathID) -> UInt16? {
    self.paths[id]?.portGroup
  }

  /// The target said the access states changed (UNIT ATTENTION 2A/06 or 2A/07 answered to
  /// a command that was then retried, an asynchronous event): re-read them now.
  public mutating func accessMayHaveChanged() -> [Action] {
    var actions: [Action] = []
    self.requestPortGroupRead(&actions)
    return actions
  }

  /// What REPORT TARGET PORT GROUPS returned through `via`: every path of a listed group
  /// takes its state and priority, queued I/O goes to a path that may now carry it, and
  /// paths that became better than the serving ones take the I/O according to the failback
  /// policy. A report the machine did not ask for (a probe's) is applied too.
  public mutating func portGroupsRead(_ report: PortGroupReport, via: PathID) -> [Action] {
    if self.portGroupRead == via { self.portGroupRead = nil }
    let before = self.states()
    let servingBefore = self.servingLevel()
    let usableBefore = Set(self.order.filter { self.isUsable(self.paths[$0]!) })
    var actions: [Action] = []
    if let t = report.transitionTimeout, t > .zero { self.targetTransitionTimeout = t }
    let now = self.clock.now
    let timeout = self.targetTransitionTimeout ?? self.configuration.transitionTimeout
    var notes: [String] = []
    for group in Set(self.order.compactMap { self.paths[$0]!.portGroup }).sorted() {
      guard let reported = report.groups[group] else { continue }
      var access = reported.access
      if access == .transitioning {
        let since = self.transitionStarted[group] ?? now
        self.transitionStarted[group] = since
        if since.duration(to: now) >= timeout {
          access = .unavailable
          notes.append("port group \(group) still transitioning after \(timeout.components.seconds) s: unavailable")
        }
      } else {
        self.transitionStarted[group] = nil
      }
      if self.setAccess(access, preferred: reported.preferred, ofGroup: group) {
        notes.append("port group \(group) \(reported.access)\(reported.preferred ? " (preferred)" : "")")
      }
    }
    self.releaseHeldIfServingChanged(from: servingBefore, &actions)
    if let serving = servingBefore {
      for id in self.order where !usableBefore.contains(id) {
        let record = self.paths[id]!
        guard self.isUsable(record), self.level(of: record) < serving else { continue }
        switch self.configuration.failback {
        case .immediate:
          break
        case .manual:
          record.held = true
        case .deferred(let seconds):
          let deadline = now.advanced(by: .seconds(seconds))
          record.held = true
          record.failbackDeadline = deadline
          actions.append(.scheduleTimer(.failback(id), deadline))
        }
      }
    }
    self.activateIfNothingServes(&actions)
    if self.portGroupRereadWanted {
      self.requestPortGroupRead(&actions)
    }
    if self.portGroupRead == nil { self.armPortGroupCheck(&actions) }
    let reason = notes.isEmpty ? "port groups re-read" : "port groups re-read: " + notes.joined(separator: "; ")
    return self.finish(before, subject: nil, reason: reason, &actions)
  }

  /// The read through `via` failed (the path's own failure, if any, comes as
  /// `pathFailed`): states stay as they were and the read is tried again through
  /// another path if one was asked for, else at the next check.
  public mutating func portGroupsReadFailed(via: PathID) -> [Action] {
    guard self.portGroupRead == via else { return [] }
    self.portGroupRead = nil
    var actions: [Action] = []
    if self.portGroupRereadWanted {
      self.requestPortGroupRead(&actions, avoiding: via)
    }
    if self.portGroupRead == nil { self.armPortGroupCheck(&actions) }
    return actions
  }

  /// SET TARGET PORT GROUPS through `via` finished: the states are read again either way
  /// (a refused activation leaves them to the target).
  public mutating func portGroupActivated(via: PathID, success: Bool) -> [Action] {
    guard self.activation == via else { return [] }
    self.activation = nil
    var actions: [Action] = []
    self.requestPortGroupRead(&actions)
    return actions
  }

  // MARK: - Internals

  /// Sets every path of `group` to `access`; true when something changed.
  @discardableResult
  mutating func setAccess(_ access: PortAccess, preferred: Bool, ofGroup group: UInt16) -> Bool {
    var changed = false
    for id in self.order {
      let record = self.paths[id]!
      guard record.portGroup == group, record.access != access || record.preferred != preferred else { continue }
      record.access = access
      record.preferred = preferred
      record.group = Int(group)
      record.priority = access.priority(preferred: preferred)
      changed = true
    }
    if access == .transitioning, self.transitionStarted[group] == nil { self.transitionStarted[group] = self.clock.now }
    return changed
  }

  /// Starts a read of the port groups unless one runs (then another follows it). Through a
  /// working path of the LU, one that carries I/O first: standby and unavailable ports
  /// answer REPORT TARGET PORT GROUPS too.
  mutating func requestPortGroupRead(_ actions: inout [Action], avoiding: PathID? = nil) {
    guard self.paths.values.contains(where: { $0.portGroup != nil }) else { return }
    guard self.portGroupRead == nil else {
      self.portGroupRereadWanted = true
      return
    }
    let working = self.order.filter { id in
      let r = self.paths[id]!
      return r.health == .up && !r.removing && r.portGroup != nil && id != avoiding
    }
    guard let via = working.first(where: { self.isUsable(self.paths[$0]!) }) ?? working.first else {
      self.portGroupRereadWanted = false
      return
    }
    self.portGroupRead = via
    self.portGroupRereadWanted = false
    if self.portGroupCheckDeadline != nil {
      self.portGroupCheckDeadline = nil
      actions.append(.cancelTimer(.portGroupCheck))
    }
    actions.append(.readPortGroups(via: via))
  }

  /// Arms the next periodic read: in `portGroupCheckInterval`, or in a second while a group
  /// transitions or is being activated, or while I/O waits because no group carries any
  /// (a group the target brings back from standby is announced to no one: no command
  /// reaches a port to carry the unit attention).
  mutating func armPortGroupCheck(_ actions: inout [Action]) {
    guard self.paths.values.contains(where: { $0.portGroup != nil }) else { return }
    let busy =
      self.activation != nil
      || self.paths.values.contains { $0.access == .transitioning && !$0.removing }
      || (self.queuedIOs > 0 && self.servingLevel() == nil)
    let interval = busy ? min(self.configuration.portGroupCheckInterval, .seconds(1)) : self.configuration.portGroupCheckInterval
    let deadline = self.clock.now.advanced(by: interval)
    if let armed = self.portGroupCheckDeadline, armed <= deadline { return }
    self.portGroupCheckDeadline = deadline
    actions.append(.scheduleTimer(.portGroupCheck, deadline))
  }

  /// No path can carry I/O, and one that works is in a standby or unavailable group of a
  /// LU that allows explicit ALUA: activate that group (the best-ranked, preferred first).
  mutating func activateIfNothingServes(_ actions: inout [Action]) {
    guard self.aluaMode?.allowsActivation == true, self.activation == nil, self.servingLevel() == nil else { return }
    let candidates = self.order.filter { id in
      let r = self.paths[id]!
      return r.health == .up && !r.removing && r.portGroup != nil
        && (r.access == .standby || r.access == .unavailable)
    }
    guard
      let via = candidates.max(by: { a, b in
        let (ra, rb) = (self.paths[a]!, self.paths[b]!)
        return (ra.preferred ? 1 : 0, ra.priority) < (rb.preferred ? 1 : 0, rb.priority)
      }), let group = self.paths[via]!.portGroup
    else { return }
    self.activation = via
    actions.append(.activatePortGroup(group, via: via))
  }
}
