import CCRC32C
import NIOCore

/// CRC32C as iSCSI uses it for header and data digests (RFC 7143 section 13.1). The
/// digest goes on the wire in little-endian byte order (RFC 3720 appendix B.4 vectors).
public enum CRC32C {
  public static var usesHardware: Bool { lb_crc32c_hardware() != 0 }

  @inlinable
  public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
    ~lb_crc32c_update(~crc, bytes.baseAddress, bytes.count)
  }

  public static func checksum(_ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { checksum($0) }
  }

  /// The table-driven path, for tests that compare it with the hardware path.
  public static func portableChecksum(_ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { ~lb_crc32c_update_portable(0xffff_ffff, $0.baseAddress, $0.count) }
  }

  /// Checksum of the readable bytes of `buffer`, then of `padding` zero bytes.
  public static func checksum(_ buffer: ByteBuffer, padding: Int = 0, continuing crc: UInt32 = 0) -> UInt32 {
    var c = buffer.withUnsafeReadableBytes { checksum($0, continuing: crc) }
    if padding > 0 {
      let zeros: (UInt32) = 0
      c = withUnsafeBytes(of: zeros) { checksum(UnsafeRawBufferPointer(rebasing: $0[0..<padding]), continuing: c) }
    }
    return c
  }
}
