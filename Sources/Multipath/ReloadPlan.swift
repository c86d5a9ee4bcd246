/// What a reload changes in a volume's paths: which running paths stay (and take the new
/// settings of their entry), which go (fenced and logged out), which entries are new.
/// Paths are matched by key (the URL with its ?iface= or ?source=) and by occurrence: the
/// second session to the same URL matches the second entry with that URL. Pure.
public struct ReloadPlan<Entry>: Sendable where Entry: Sendable {
  /// Running paths that stay, each with the new entry it matched, in the new order.
  public var kept: [(path: PathID, entry: Entry)] = []
  /// Running paths no longer listed, in their order.
  public var removed: [PathID] = []
  /// Entries no running path matched, in their order.
  public var added: [Entry] = []

  /// `running`: the paths in use now (removed ones left out), with their keys, in order;
  /// `wanted`: the new entries, in order, with `key` giving each one's key.
  public init(running: [(path: PathID, key: String)], wanted: [Entry], key: (Entry) -> String) {
    func numbered(_ keys: [String]) -> [String] {
      var seen: [String: Int] = [:]
      return keys.map { k in
        let n = seen[k, default: 0]
        seen[k] = n + 1
        return "\(k)#\(n)"
      }
    }
    let runningKeys = numbered(running.map(\.key))
    var byKey: [String: PathID] = [:]
    for (i, k) in runningKeys.enumerated() { byKey[k] = running[i].path }
    let wantedKeys = numbered(wanted.map(key))
    let wantedSet = Set(wantedKeys)
    for (i, k) in runningKeys.enumerated() where !wantedSet.contains(k) {
      removed.append(running[i].path)
    }
    for (i, k) in wantedKeys.enumerated() {
      if let path = byKey[k] {
        kept.append((path, wanted[i]))
      } else {
        added.append(wanted[i])
      }
    }
  }
}
