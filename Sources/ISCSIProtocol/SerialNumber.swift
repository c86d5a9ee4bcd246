/// 32-bit serial number arithmetic (RFC 1982, required by RFC 7143 section 4.2.2.1 for
/// CmdSN, StatSN, DataSN and R2TSN comparisons).
public struct SerialNumber: Equatable, Hashable, Sendable, CustomStringConvertible {
  public var value: UInt32
  public init(_ value: UInt32) { self.value = value }

  /// a < b in serial order. Values exactly 2^31 apart are incomparable (false both ways).
  public static func < (a: SerialNumber, b: SerialNumber) -> Bool {
    a.value != b.value && (b.value &- a.value) < 0x8000_0000
  }
  public static func > (a: SerialNumber, b: SerialNumber) -> Bool { b < a }
  public static func <= (a: SerialNumber, b: SerialNumber) -> Bool { a == b || a < b }
  public static func >= (a: SerialNumber, b: SerialNumber) -> Bool { a == b || a > b }

  public static func + (a: SerialNumber, n: UInt32) -> SerialNumber { SerialNumber(a.value &+ n) }
  public static func - (a: SerialNumber, n: UInt32) -> SerialNumber { SerialNumber(a.value &- n) }

  public var description: String { String(value) }
}
