import NIOCore

extension Optional where Wrapped == ByteBuffer {
  /// Appends bytes read from a socket to a cumulation buffer whose earlier contents may
  /// still be shared by slices handed out (PDU data segments, NBD write payloads).
  /// Dropping the consumed prefix first means a copy-on-write copies only the partial
  /// message, not everything received so far; an empty cumulation takes the incoming
  /// buffer as it is, with no copy.
  public mutating func cumulate(_ incoming: ByteBuffer) {
    if var c = self, c.readableBytes > 0 {
      var incoming = incoming
      c.discardReadBytes()
      c.writeBuffer(&incoming)
      self = c
    } else {
      self = incoming
    }
  }
}
