import NIOCore

extension Optional where Wrapped == ByteBuffer {
  /// Appends bytes read from a socket to a cumulation buffer whose earlier contents may
  /// still be shared by slices handed out (PDU data segments, NBD write payloads).
  /// Dropping the consumed prefix first means a copy-on-write copies only the partial
  /// message, not everything received so far; an empty cumulation takes the incoming
  /// buffer as it is, with no copy. The buffer is taken out of `self` while it grows, so
  /// a buffer nobody else holds grows in place.
  public mutating func cumulate(_ incoming: ByteBuffer) {
    if var c = self.take(), c.readableBytes > 0 {
      var incoming = incoming
      c.discardReadBytes()
      c.writeBuffer(&incoming)
      self = c
    } else {
      self = incoming
    }
  }

  /// The message at the reader index is `total` bytes long (its length has been checked
  /// against the limits): give the buffer room for exactly that, now. Left to grow as
  /// bytes arrive, a buffer doubles its capacity, and a slice of the message (a data
  /// segment, a write payload) would keep alive up to twice the message's size.
  public mutating func reserveForMessage(_ total: Int) {
    guard let c = self, c.capacity - c.readerIndex < total, c.readableBytes < total else { return }
    self = nil
    var room = ByteBufferAllocator().buffer(capacity: total)
    room.writeImmutableBuffer(c)
    self = room
  }
}
