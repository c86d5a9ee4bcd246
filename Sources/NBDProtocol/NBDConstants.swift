// NBD protocol constants. Section references are to doc/proto.md of
// github.com/NetworkBlockDevice/nbd (read at commit 89ba7b5, May 2026).
// Every multi-byte field on the wire is big-endian ("Conventions").

/// Magic numbers.
public enum NBDMagic {
  /// 'NBDMAGIC' (INIT_PASSWD) — "Newstyle negotiation", first server word.
  public static let initPasswd: UInt64 = 0x4e42_444d_4147_4943
  /// 'IHAVEOPT' — "Newstyle negotiation": second server word and the prefix of every option.
  public static let iHaveOpt: UInt64 = 0x4948_4156_454F_5054
  /// Option reply magic — "Fixed newstyle negotiation".
  public static let optionReply: UInt64 = 0x3_e889_0455_65a9
  /// `NBD_REQUEST_MAGIC` — "Request message".
  public static let request: UInt32 = 0x2560_9513
  /// `NBD_SIMPLE_REPLY_MAGIC` — "Simple reply message".
  public static let simpleReply: UInt32 = 0x6744_6698
  /// `NBD_STRUCTURED_REPLY_MAGIC` — "Structured reply chunk message": sent to clients that
  /// negotiated `NBD_OPT_STRUCTURED_REPLY` (libnbd, qemu); never to the kernel.
  public static let structuredReply: UInt32 = 0x668e_33ef
  /// `NBD_EXTENDED_REQUEST_MAGIC` — "Reserved Magic values". Recognised only (we never
  /// negotiate extended headers, so receiving it is a protocol violation).
  public static let extendedRequest: UInt32 = 0x21e4_1c71
}

/// Transmission request types — "Values / Transmission phase / Request types".
public struct NBDCommand: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public var rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }

  public static let read = NBDCommand(rawValue: 0)
  public static let write = NBDCommand(rawValue: 1)
  public static let disconnect = NBDCommand(rawValue: 2)  // NBD_CMD_DISC
  public static let flush = NBDCommand(rawValue: 3)
  public static let trim = NBDCommand(rawValue: 4)
  public static let cache = NBDCommand(rawValue: 5)
  public static let writeZeroes = NBDCommand(rawValue: 6)
  public static let blockStatus = NBDCommand(rawValue: 7)

  /// Commands the Linux kernel driver (drivers/block/nbd.c) sends: READ, WRITE, FLUSH,
  /// TRIM, DISC, and WRITE_ZEROES on kernels that know `NBD_FLAG_SEND_WRITE_ZEROES`
  /// (older uapi headers stop at TRIM). It never sends CACHE or BLOCK_STATUS and never
  /// negotiates structured replies, so simple replies are all the kernel path needs;
  /// structured replies and BLOCK_STATUS serve the socket export's clients.
  public static let kernelCommands: Set<NBDCommand> = [
    .read, .write, .disconnect, .flush, .trim, .writeZeroes,
  ]

  public var description: String {
    switch self {
    case .read: return "NBD_CMD_READ"
    case .write: return "NBD_CMD_WRITE"
    case .disconnect: return "NBD_CMD_DISC"
    case .flush: return "NBD_CMD_FLUSH"
    case .trim: return "NBD_CMD_TRIM"
    case .cache: return "NBD_CMD_CACHE"
    case .writeZeroes: return "NBD_CMD_WRITE_ZEROES"
    case .blockStatus: return "NBD_CMD_BLOCK_STATUS"
    default: return "NBD_CMD_\(rawValue)"
    }
  }
}

/// Command flags — "Values / Transmission phase / Command flags".
public struct NBDCommandFlags: OptionSet, Hashable, Sendable {
  public var rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }

  public static let fua = NBDCommandFlags(rawValue: 1 << 0)
  public static let noHole = NBDCommandFlags(rawValue: 1 << 1)
  public static let dontFragment = NBDCommandFlags(rawValue: 1 << 2)  // NBD_CMD_FLAG_DF
  public static let reqOne = NBDCommandFlags(rawValue: 1 << 3)
  public static let fastZero = NBDCommandFlags(rawValue: 1 << 4)
  /// Bit 5, `NBD_CMD_FLAG_PAYLOAD_LEN` (experimental EXTENDED_HEADERS). Never valid here.
  public static let payloadLength = NBDCommandFlags(rawValue: 1 << 5)
}

/// Transmission flags (16 bits) — "Values / Handshake phase / Transmission flags".
public struct NBDTransmissionFlags: OptionSet, Hashable, Sendable {
  public var rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }

  /// MUST always be 1.
  public static let hasFlags = NBDTransmissionFlags(rawValue: 1 << 0)
  public static let readOnly = NBDTransmissionFlags(rawValue: 1 << 1)
  public static let sendFlush = NBDTransmissionFlags(rawValue: 1 << 2)
  public static let sendFUA = NBDTransmissionFlags(rawValue: 1 << 3)
  public static let rotational = NBDTransmissionFlags(rawValue: 1 << 4)
  public static let sendTrim = NBDTransmissionFlags(rawValue: 1 << 5)
  public static let sendWriteZeroes = NBDTransmissionFlags(rawValue: 1 << 6)
  /// MUST be clear unless structured replies were negotiated. Never set here: a read's reply
  /// is always one chunk, so there is nothing for the flag to forbid.
  public static let sendDF = NBDTransmissionFlags(rawValue: 1 << 7)
  public static let canMultiConn = NBDTransmissionFlags(rawValue: 1 << 8)
  /// Experimental RESIZE extension.
  public static let sendResize = NBDTransmissionFlags(rawValue: 1 << 9)
  public static let sendCache = NBDTransmissionFlags(rawValue: 1 << 10)
  /// MUST be 0 if `sendWriteZeroes` is not set.
  public static let sendFastZero = NBDTransmissionFlags(rawValue: 1 << 11)
  /// Experimental EXTENDED_HEADERS extension.
  public static let blockStatusPayload = NBDTransmissionFlags(rawValue: 1 << 12)
}

/// Handshake flags (16 bits, server → client) — "Handshake flags".
public struct NBDHandshakeFlags: OptionSet, Hashable, Sendable {
  public var rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }

  public static let fixedNewstyle = NBDHandshakeFlags(rawValue: 1 << 0)
  public static let noZeroes = NBDHandshakeFlags(rawValue: 1 << 1)
}

/// Client flags (32 bits, client → server) — "Client flags". Any other bit, or a bit
/// the server did not advertise, means the server MUST drop the connection.
public struct NBDClientFlags: OptionSet, Hashable, Sendable {
  public var rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  public static let fixedNewstyle = NBDClientFlags(rawValue: 1 << 0)  // NBD_FLAG_C_FIXED_NEWSTYLE
  public static let noZeroes = NBDClientFlags(rawValue: 1 << 1)  // NBD_FLAG_C_NO_ZEROES
}

/// Option types — "Values / Handshake phase / Option types".
public struct NBDOption: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public var rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  public static let exportName = NBDOption(rawValue: 1)
  public static let abort = NBDOption(rawValue: 2)
  public static let list = NBDOption(rawValue: 3)
  // 4 was NBD_OPT_PEEK_EXPORT (withdrawn).
  public static let startTLS = NBDOption(rawValue: 5)
  public static let info = NBDOption(rawValue: 6)
  public static let go = NBDOption(rawValue: 7)
  public static let structuredReply = NBDOption(rawValue: 8)
  public static let listMetaContext = NBDOption(rawValue: 9)
  public static let setMetaContext = NBDOption(rawValue: 10)
  /// Experimental EXTENDED_HEADERS extension.
  public static let extendedHeaders = NBDOption(rawValue: 11)

  public var description: String {
    switch self {
    case .exportName: return "NBD_OPT_EXPORT_NAME"
    case .abort: return "NBD_OPT_ABORT"
    case .list: return "NBD_OPT_LIST"
    case .startTLS: return "NBD_OPT_STARTTLS"
    case .info: return "NBD_OPT_INFO"
    case .go: return "NBD_OPT_GO"
    case .structuredReply: return "NBD_OPT_STRUCTURED_REPLY"
    case .listMetaContext: return "NBD_OPT_LIST_META_CONTEXT"
    case .setMetaContext: return "NBD_OPT_SET_META_CONTEXT"
    case .extendedHeaders: return "NBD_OPT_EXTENDED_HEADERS"
    default: return "NBD_OPT_\(rawValue)"
    }
  }
}

/// Option reply types — "Values / Handshake phase / Option reply types".
/// Error replies have bit 31 set.
public struct NBDOptionReplyType: RawRepresentable, Hashable, Sendable {
  public var rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  public static let ack = NBDOptionReplyType(rawValue: 1)
  public static let server = NBDOptionReplyType(rawValue: 2)
  public static let info = NBDOptionReplyType(rawValue: 3)
  public static let metaContext = NBDOptionReplyType(rawValue: 4)

  static let errorBit: UInt32 = 1 << 31
  public static let errUnsupported = NBDOptionReplyType(rawValue: errorBit + 1)  // NBD_REP_ERR_UNSUP
  public static let errPolicy = NBDOptionReplyType(rawValue: errorBit + 2)
  public static let errInvalid = NBDOptionReplyType(rawValue: errorBit + 3)
  public static let errPlatform = NBDOptionReplyType(rawValue: errorBit + 4)
  public static let errTLSRequired = NBDOptionReplyType(rawValue: errorBit + 5)
  public static let errUnknown = NBDOptionReplyType(rawValue: errorBit + 6)
  public static let errShutdown = NBDOptionReplyType(rawValue: errorBit + 7)
  public static let errBlockSizeRequired = NBDOptionReplyType(rawValue: errorBit + 8)
  public static let errTooBig = NBDOptionReplyType(rawValue: errorBit + 9)
  /// Experimental EXTENDED_HEADERS extension.
  public static let errExtendedHeaderRequired = NBDOptionReplyType(rawValue: errorBit + 10)

  public var isError: Bool { rawValue & Self.errorBit != 0 }
}

/// Information types for `NBD_REP_INFO` — "Option reply types / NBD_REP_INFO".
public struct NBDInfoType: RawRepresentable, Hashable, Sendable {
  public var rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }

  public static let export = NBDInfoType(rawValue: 0)
  public static let name = NBDInfoType(rawValue: 1)
  public static let description = NBDInfoType(rawValue: 2)
  public static let blockSize = NBDInfoType(rawValue: 3)
}

/// Error values for the reply's error field — "Values / Transmission phase / Error values".
/// Only these are allowed on the wire; a client treats anything else as EINVAL.
public struct NBDErrno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public var rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  public static let eperm = NBDErrno(rawValue: 1)
  public static let eio = NBDErrno(rawValue: 5)
  public static let enomem = NBDErrno(rawValue: 12)
  public static let einval = NBDErrno(rawValue: 22)
  public static let enospc = NBDErrno(rawValue: 28)
  public static let eoverflow = NBDErrno(rawValue: 75)
  public static let enotsup = NBDErrno(rawValue: 95)
  public static let eshutdown = NBDErrno(rawValue: 108)

  public var description: String {
    switch self {
    case .eperm: return "NBD_EPERM"
    case .eio: return "NBD_EIO"
    case .enomem: return "NBD_ENOMEM"
    case .einval: return "NBD_EINVAL"
    case .enospc: return "NBD_ENOSPC"
    case .eoverflow: return "NBD_EOVERFLOW"
    case .enotsup: return "NBD_ENOTSUP"
    case .eshutdown: return "NBD_ESHUTDOWN"
    default: return "NBD_E\(rawValue)"
    }
  }
}

/// Structured reply chunk types — "Values / Transmission phase / Structured reply types".
public struct NBDReplyType: RawRepresentable, Hashable, Sendable {
  public var rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }

  public static let none = NBDReplyType(rawValue: 0)
  /// Payload: offset 64, then the data.
  public static let offsetData = NBDReplyType(rawValue: 1)
  /// Payload: offset 64, length 32 (a range that reads as zeros).
  public static let offsetHole = NBDReplyType(rawValue: 2)
  /// Payload: metadata context id 32, then descriptors of length 32 and status flags 32.
  public static let blockStatus = NBDReplyType(rawValue: 5)
  /// Payload: error 32, message length 16, message.
  public static let error = NBDReplyType(rawValue: 1 << 15 | 1)
  /// Payload: error 32, message length 16, message, offset 64.
  public static let errorOffset = NBDReplyType(rawValue: 1 << 15 | 2)
}

/// Structured reply chunk flags — "Structured reply flags".
public struct NBDReplyFlags: OptionSet, Hashable, Sendable {
  public var rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }

  /// The last chunk of the reply.
  public static let done = NBDReplyFlags(rawValue: 1 << 0)
}

/// Metadata contexts — "Metadata querying", "Metadata contexts". The only one served is
/// `base:allocation`.
public enum NBDMetaContext {
  public static let baseAllocation = "base:allocation"
  /// The id this server gives `base:allocation` in `NBD_REP_META_CONTEXT` (any value the
  /// server picks; 0 is avoided because LIST replies use 0 for "no id").
  public static let baseAllocationID: UInt32 = 1
}

/// Status flags of the `base:allocation` context — "Metadata contexts / base:allocation".
public struct NBDBlockState: OptionSet, Hashable, Sendable {
  public var rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  /// Not allocated in the backend (a write there may fail with ENOSPC).
  public static let hole = NBDBlockState(rawValue: 1 << 0)
  /// Reads as zeros.
  public static let zero = NBDBlockState(rawValue: 1 << 1)
}

/// Sizes fixed by proto.md.
public enum NBDLimits {
  /// Request header: magic 4 + flags 2 + type 2 + cookie 8 + offset 8 + length 4 ("Request message").
  public static let requestHeaderSize = 28
  /// Simple reply header: magic 4 + error 4 + cookie 8 ("Simple reply message").
  public static let simpleReplyHeaderSize = 16
  /// Structured reply chunk header: magic 4 + flags 2 + type 2 + cookie 8 + length 4.
  public static let structuredReplyHeaderSize = 20
  /// A payload up to 2^25 SHOULD NOT be considered a denial of service ("Size constraints").
  public static let defaultMaxPayload: UInt32 = 1 << 25
  /// Strings (export names, messages) MUST be no longer than 4096 bytes ("Conventions").
  public static let maxStringLength = 4096
  /// Largest minimum block size that may be advertised ("Size constraints").
  public static let maxMinimumBlockSize: UInt32 = 1 << 16
}
