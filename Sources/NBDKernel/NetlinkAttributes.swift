/// Netlink attribute streams (TLV, <linux/netlink.h> `struct nlattr`): a 4-byte header
/// {u16 length including the header, u16 type}, the payload, padding to 4 bytes.
/// Integers are in host byte order. Pure: no sockets, so it is tested on any host.

import Failure

public struct NetlinkAttributeWriter: Sendable {
  /// NLA_ALIGNTO.
  static let alignment = 4
  static let headerSize = 4

  public private(set) var bytes: [UInt8] = []

  public init() {}

  public mutating func put(_ type: UInt16, payload: some Collection<UInt8>) {
    let length = Self.headerSize + payload.count
    precondition(length <= Int(UInt16.max), "netlink attribute too long")
    appendHost(UInt16(length))
    appendHost(type)
    bytes.append(contentsOf: payload)
    pad()
  }

  public mutating func putU8(_ type: UInt16, _ value: UInt8) { put(type, payload: [value]) }
  public mutating func putU32(_ type: UInt16, _ value: UInt32) {
    put(type, payload: withUnsafeBytes(of: value) { Array($0) })
  }
  public mutating func putU64(_ type: UInt16, _ value: UInt64) {
    put(type, payload: withUnsafeBytes(of: value) { Array($0) })
  }
  /// NLA_STRING / NLA_NUL_STRING: UTF-8 with a terminating NUL (as libnl's nla_put_string).
  public mutating func putString(_ type: UInt16, _ value: String) {
    put(type, payload: Array(value.utf8) + [0])
  }

  /// A nested attribute. NLA_F_NESTED is not set: the nbd driver validates liberally
  /// (GENL_DONT_VALIDATE_STRICT) and builds its own nests with nla_nest_start_noflag.
  public mutating func nest(_ type: UInt16, _ body: (inout NetlinkAttributeWriter) -> Void) {
    var inner = NetlinkAttributeWriter()
    body(&inner)
    put(type, payload: inner.bytes)
  }

  private mutating func appendHost(_ value: UInt16) {
    withUnsafeBytes(of: value) { bytes.append(contentsOf: $0) }
  }

  private mutating func pad() {
    while bytes.count % Self.alignment != 0 { bytes.append(0) }
  }
}

/// One attribute read from a stream; `type` has NLA_F_NESTED / NLA_F_NET_BYTEORDER masked.
public struct NetlinkAttribute: Hashable, Sendable {
  /// NLA_TYPE_MASK.
  static let typeMask: UInt16 = 0x3FFF

  public var type: UInt16
  public var payload: [UInt8]

  public init(type: UInt16, payload: [UInt8]) {
    self.type = type
    self.payload = payload
  }

  /// Parses a whole stream. Trailing bytes too short for a header are ignored, as
  /// nla_for_each_attr does; a length that is too small or overruns the stream throws.
  public static func parse(_ stream: [UInt8]) throws -> [NetlinkAttribute] {
    var result: [NetlinkAttribute] = []
    var offset = 0
    while stream.count - offset >= NetlinkAttributeWriter.headerSize {
      let length = Int(loadHost(UInt16.self, stream, offset))
      let type = loadHost(UInt16.self, stream, offset + 2) & typeMask
      guard length >= NetlinkAttributeWriter.headerSize, length <= stream.count - offset else {
        throw NetlinkAttributeError(
          "attribute \(type) at offset \(offset) has length \(length) in a stream of \(stream.count)")
      }
      let payload = Array(stream[(offset + NetlinkAttributeWriter.headerSize)..<(offset + length)])
      result.append(NetlinkAttribute(type: type, payload: payload))
      let aligned = (length + NetlinkAttributeWriter.alignment - 1) & ~(NetlinkAttributeWriter.alignment - 1)
      offset += aligned
    }
    return result
  }

  public func u8() throws -> UInt8 { try integer(UInt8.self) }
  public func u32() throws -> UInt32 { try integer(UInt32.self) }
  public func u64() throws -> UInt64 { try integer(UInt64.self) }

  /// A NUL-terminated (or not) UTF-8 string.
  public func string() -> String {
    let end = payload.firstIndex(of: 0) ?? payload.endIndex
    return String(decoding: payload[..<end], as: UTF8.self)
  }

  public func nested() throws -> [NetlinkAttribute] { try Self.parse(payload) }

  private func integer<T: FixedWidthInteger>(_: T.Type) throws -> T {
    guard payload.count >= MemoryLayout<T>.size else {
      throw NetlinkAttributeError(
        "attribute \(type) has \(payload.count) bytes, expected \(MemoryLayout<T>.size)")
    }
    return Self.loadHost(T.self, payload, 0)
  }

  private static func loadHost<T: FixedWidthInteger>(_: T.Type, _ bytes: [UInt8], _ offset: Int) -> T {
    bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
  }
}

extension Array where Element == NetlinkAttribute {
  /// The first attribute of this type (as nla_find).
  public func first(_ type: UInt16) -> NetlinkAttribute? { first { $0.type == type } }
}

/// A malformed attribute stream.
public struct NetlinkAttributeError: Error, CustomStringConvertible, Hashable, Sendable {
  public var description: String
  init(_ description: String) { self.description = description }
}

extension NetlinkAttributeError: LunbridgeError {
  public var errorCode: String { "nbd-kernel.malformed-attributes" }
  public var failureClass: FailureClass { .other }
}
