// Small string and path helpers, so that no module needs the whole of Foundation (with
// ICU) for a trim or a path join; FoundationEssentials has neither.

extension StringProtocol {
  /// The text without leading and trailing whitespace (spaces, tabs, newlines).
  public func trimmingWhitespace() -> String {
    guard let first = firstIndex(where: { !$0.isWhitespace }) else { return "" }
    let last = lastIndex(where: { !$0.isWhitespace })!
    return String(self[first...last])
  }
}

/// Path arithmetic on strings, as `NSString`'s path methods do for the simple cases
/// lunbridge meets (absolute or relative paths, no "~").
public enum FilePath {
  /// `directory` and `name` joined with one "/".
  public static func join(_ directory: String, _ name: String) -> String {
    if directory.isEmpty { return name }
    if name.hasPrefix("/") { return directory.hasSuffix("/") ? directory + name.dropFirst() : directory + name }
    return directory.hasSuffix("/") ? directory + name : directory + "/" + name
  }

  /// The last component ("b" for "/a/b" and "/a/b/").
  public static func lastComponent(_ path: String) -> String {
    let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
    guard let slash = trimmed.lastIndex(of: "/") else { return trimmed }
    let rest = trimmed[trimmed.index(after: slash)...]
    return rest.isEmpty ? "/" : String(rest)
  }

  /// The directory part ("/a" for "/a/b", "/" for "/a", "" for "a").
  public static func directory(_ path: String) -> String {
    let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
    guard let slash = trimmed.lastIndex(of: "/") else { return "" }
    if slash == trimmed.startIndex { return "/" }
    return String(trimmed[..<slash])
  }
}
