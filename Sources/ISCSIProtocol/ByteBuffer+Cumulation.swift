import Glibc
@_spi(CustomByteBufferAllocator) import NIOCore
import Synchronization

/// What a connection has read and not yet framed into messages (PDUs, NBD requests), kept
/// as both socket handlers need it: bytes read after a large message that `bytes` holds
/// the start of wait in `held`, out of that message's buffer
/// (`cumulate(_:messageLength:)`), and are taken in once it has been framed; bytes read
/// meanwhile are added after them, so the order read is kept.
public struct Cumulation {
  /// The bytes to frame next; nil when there are none.
  public var bytes: ByteBuffer?
  private var held: ByteBuffer?

  public init() {}

  /// Appends bytes read. `messageLength` gives the length of the message starting at a
  /// buffer's reader index, once it can tell (nil when it cannot, or for messages that
  /// keep no buffer of their own).
  public mutating func append(_ incoming: ByteBuffer, messageLength: (ByteBuffer) -> Int?) {
    if held != nil {
      held!.writeImmutableBuffer(incoming)
      return
    }
    let length = bytes.flatMap(messageLength)
    held = bytes.cumulate(incoming, messageLength: length)
  }

  /// Called when framing stopped (no complete message left in `bytes`): drops an empty
  /// buffer and takes the held bytes in. True when there were held bytes, and so maybe
  /// more messages to frame.
  public mutating func takeHeld(messageLength: (ByteBuffer) -> Int?) -> Bool {
    if let b = bytes, b.readableBytes == 0 { bytes = nil }
    guard let rest = held else { return false }
    held = nil
    append(rest, messageLength: messageLength)
    return true
  }

  /// Forgets everything read (the connection failed or is closing).
  public mutating func removeAll() {
    bytes = nil
    held = nil
  }
}

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

  /// As `cumulate(_:)`, except when the cumulation holds the start of a large message
  /// (`messageLength` bytes from the reader index, from `MessageBuffers.threshold` on: it
  /// has a buffer of its own, `reserveForMessage`) and `incoming` runs past its end: then
  /// only the bytes that complete it are appended, and the rest is returned, to be
  /// appended once the message has been taken out. Appended as well, the next message's
  /// first bytes would touch pages past the message's end in a buffer that lives as long as
  /// the message (up to a read's 64 KiB for each megabyte buffer, resident with it), and be
  /// copied out again when the message is taken.
  public mutating func cumulate(_ incoming: ByteBuffer, messageLength: Int?) -> ByteBuffer? {
    // No copy of the buffer held here (only its length): `cumulate` must find it unshared
    // to append in place.
    guard let length = messageLength, length >= MessageBuffers.threshold, let buffered = self?.readableBytes else {
      cumulate(incoming)
      return nil
    }
    let wanted = length - buffered
    guard wanted > 0, wanted < incoming.readableBytes else {
      cumulate(incoming)
      return nil
    }
    var rest = incoming
    cumulate(rest.readSlice(length: wanted)!)
    return rest
  }

  /// The message at the reader index is `total` bytes long (its length has been checked
  /// against the limits): give the buffer room for exactly that, now. Left to grow as
  /// bytes arrive, a buffer doubles its capacity, and a slice of the message (a data
  /// segment, a write payload) would keep alive up to twice the message's size.
  public mutating func reserveForMessage(_ total: Int) {
    guard let c = self, c.capacity - c.readerIndex < total, c.readableBytes < total else { return }
    self = nil
    let allocator = total >= MessageBuffers.threshold ? MessageBuffers.allocator : ByteBufferAllocator()
    var room = allocator.buffer(capacity: total)
    room.writeImmutableBuffer(c)
    self = room
  }
}

/// Buffers for large messages (write payloads, Data-In segments of 64 KiB and more): mapped
/// outside malloc's heap and kept for reuse once freed. From malloc, megabyte buffers that
/// live while others come and go leave holes the heap never gives back (the peak RSS
/// under 1 MiB I/O was a third above what was in flight); mapped one by one and unmapped
/// at once, each costs its page faults again (2.4 times the CPU per 1 MiB I/O). Here a
/// freed buffer waits in a list by size (64 KiB steps) for the next message of its size,
/// up to `keptBytes` in all; beyond that it is unmapped, and a message of a size none
/// waits for unmaps those of sizes unused for a moment first.
public enum MessageBuffers {
  /// Messages from this size on use these buffers.
  public static let threshold = 64 << 10
  /// Freed buffers kept for reuse, in bytes.
  public static let keptBytes = 8 << 20
  static let step = 64 << 10
  /// A size no message asked for this long (in ns) gives its waiting buffers up.
  static let idle: UInt64 = 20_000_000
  /// Room before the bytes for the mapping's size (keeps the bytes 64-byte aligned).
  static let header = 64

  struct Free: ~Copyable {
    /// Mapping base addresses by mapping size.
    var lists: [Int: [UInt]] = [:]
    /// When a message of each size last asked for a buffer (CLOCK_MONOTONIC_COARSE, ns).
    var lastUse: [Int: UInt64] = [:]
    var bytes = 0
  }
  static let free = Mutex(Free())

  public static let allocator = ByteBufferAllocator(
    allocate: { size in MessageBuffers.allocate(Int(size)) },
    reallocate: { pointer, oldSize, newSize in MessageBuffers.reallocate(pointer, Int(oldSize), Int(newSize)) },
    deallocate: { pointer in MessageBuffers.deallocate(pointer) },
    copy: { destination, source, count in destination.copyMemory(from: source, byteCount: Int(count)) })

  /// The mapping's size for `size` bytes: header and bytes in whole 64 KiB steps.
  static func mappedSize(_ size: Int) -> Int { (size + header + step - 1) / step * step }

  static func allocate(_ size: Int) -> UnsafeMutableRawPointer? {
    let length = mappedSize(size)
    // A buffer of this size if one waits. Otherwise the waiting buffers of sizes no message
    // asked for in the last `idle` are unmapped first: the I/O changed size, and what
    // waits for the old size would only add to the peak. Sizes in use together (reads
    // and writes of a mixed load) keep theirs.
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now)
    let nanoseconds = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    let (reused, stale) = free.withLock { f -> (UInt?, [(UInt, Int)]) in
      f.lastUse[length] = nanoseconds
      if let base = f.lists[length]?.popLast() {
        f.bytes -= length
        return (base, [])
      }
      var stale: [(UInt, Int)] = []
      for (size, bases) in f.lists where !bases.isEmpty && nanoseconds &- (f.lastUse[size] ?? 0) > idle {
        stale += bases.map { ($0, size) }
        f.bytes -= size * bases.count
        f.lists[size] = []
      }
      return (nil, stale)
    }
    if let reused, let base = UnsafeMutableRawPointer(bitPattern: reused) { return base + header }
    for (address, size) in stale { munmap(UnsafeMutableRawPointer(bitPattern: address), size) }
    guard let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
      base != MAP_FAILED
    else { fatalError("cannot map \(length) bytes for a message buffer: out of memory") }
    base.storeBytes(of: length, as: Int.self)
    return base + header
  }

  static func deallocate(_ pointer: UnsafeMutableRawPointer) {
    let base = pointer - header
    let length = base.load(as: Int.self)
    let address = UInt(bitPattern: base)
    let kept = free.withLock { f -> Bool in
      guard f.bytes + length <= keptBytes else { return false }
      f.lists[length, default: []].append(address)
      f.bytes += length
      return true
    }
    if !kept { munmap(base, length) }
  }

  static func reallocate(_ pointer: UnsafeMutableRawPointer?, _ oldSize: Int, _ newSize: Int) -> UnsafeMutableRawPointer? {
    guard let pointer else { return allocate(newSize) }
    let base = pointer - header
    if mappedSize(newSize) <= base.load(as: Int.self) { return pointer }
    guard let grown = allocate(newSize) else { return nil }
    grown.copyMemory(from: pointer, byteCount: min(oldSize, newSize))
    deallocate(pointer)
    return grown
  }
}
