import NBDKernel
import XCTest

#if canImport(Glibc)
import Glibc
#endif

// Host-runnable: no nbd module needed. The real kernel path runs only in the VM.
final class NBDKernelTests: XCTestCase {
  // MARK: missing module

  func testOpenWithoutModuleSaysModprobe() throws {
    try XCTSkipIf(isNBDModuleLoaded(), "the nbd module is loaded here")
    XCTAssertThrowsError(try NBDNetlink()) { error in
      guard let error = error as? NBDKernelError else { return XCTFail("\(error)") }
      XCTAssertEqual(error.code, .moduleNotLoaded)
      XCTAssertEqual(error.libnlError, 12)  // NLE_OBJ_NOTFOUND from genl_ctrl_resolve
      XCTAssertTrue(error.description.contains("modprobe nbd"), error.description)
    }
    XCTAssertThrowsError(try NBDLinkDeadMonitor()) { error in
      XCTAssertEqual((error as? NBDKernelError)?.code, .moduleNotLoaded)
    }
  }

  // MARK: error mapping

  func testResolveFailureIsModuleNotLoaded() {
    let e = NBDKernelError(stage: .resolve, libnlError: 12, errno: 0, operation: .connect)
    XCTAssertEqual(e.code, .moduleNotLoaded)
    let g = NBDKernelError(stage: .group, libnlError: 12, errno: 0, operation: .monitor)
    XCTAssertEqual(g.code, .moduleNotLoaded)
    // Another failure while resolving is not a missing module.
    let nomem = NBDKernelError(stage: .resolve, libnlError: 5, errno: 0, operation: .connect)
    XCTAssertEqual(nomem.code, .netlink(0))
  }

  func testKernelErrnoMapping() {
    let table: [(Int32, NBDKernelError.Code)] = [
      (EPERM, .permissionDenied), (EACCES, .permissionDenied), (EBUSY, .deviceBusy),
      (EEXIST, .deviceBusy), (ENOENT, .noSuchDevice), (ENODEV, .noSuchDevice), (ENXIO, .noSuchDevice),
      (EINVAL, .invalidArgument), (EBADF, .invalidArgument), (ENOTSOCK, .invalidArgument),
      (ENOSPC, .netlink(ENOSPC)), (ENOMEM, .netlink(ENOMEM)),
    ]
    for (errno, code) in table {
      // libnl's NLE code is lossy; the kernel's errno decides.
      let e = NBDKernelError(stage: .receive, libnlError: 1, errno: errno, operation: .connect, index: 3)
      XCTAssertEqual(e.code, code, "errno \(errno)")
      XCTAssertEqual(e.errno, errno)
    }
  }

  func testLibnlCodeMappingWithoutErrno() {
    // NLE_PERM 28, NLE_NOACCESS 27, NLE_BUSY 25, NLE_EXIST 6, NLE_OBJ_NOTFOUND 12,
    // NLE_NODEV 31, NLE_INVAL 7, NLE_FAILURE 1.
    let table: [(Int32, NBDKernelError.Code)] = [
      (28, .permissionDenied), (27, .permissionDenied), (25, .deviceBusy), (6, .deviceBusy),
      (12, .noSuchDevice), (31, .noSuchDevice), (7, .invalidArgument), (1, .netlink(0)),
    ]
    for (nle, code) in table {
      let e = NBDKernelError(stage: .receive, libnlError: nle, errno: 0, operation: .disconnect, index: 1)
      XCTAssertEqual(e.code, code, "NLE \(nle)")
      XCTAssertNotNil(e.detail)
    }
  }

  func testMessages() {
    func message(_ errno: Int32, _ op: NBDKernelOperation, _ index: UInt32?) -> String {
      NBDKernelError(stage: .receive, libnlError: 0, errno: errno, operation: op, index: index).description
    }
    XCTAssertEqual(message(EPERM, .connect, nil), "attaching needs root (CAP_SYS_ADMIN)")
    XCTAssertEqual(message(EPERM, .disconnect, 2), "detaching /dev/nbd2 needs root (CAP_SYS_ADMIN)")
    XCTAssertEqual(message(EBUSY, .connect, 3), "/dev/nbd3 is already in use")
    XCTAssertTrue(message(EINVAL, .reconfigure, 4).contains("/dev/nbd4"))
    XCTAssertTrue(message(EINVAL, .reconfigure, 4).contains("dmesg"))
    XCTAssertTrue(message(EBADF, .connect, 0).contains("socket"))
    XCTAssertTrue(message(ETIMEDOUT, .status, nil).contains(String(cString: strerror(ETIMEDOUT))))
  }

  /// A kernel answer that does not parse keeps the parser's error as a value, and the
  /// message says what was wrong with it.
  func testAMalformedReplyKeepsTheParsersError() throws {
    var parseError: NetlinkAttributeError?
    XCTAssertThrowsError(try NBDNetlinkMessage.decodeConnectReply([6, 0, 1, 0, 1, 0, 0, 0])) {
      parseError = $0 as? NetlinkAttributeError
    }
    let cause = try XCTUnwrap(parseError, "the decoder throws a NetlinkAttributeError")
    let e = NBDKernelError(code: .unexpectedReply, operation: .status, index: 5, malformedReply: cause)
    XCTAssertEqual(e.malformedReply, cause)
    XCTAssertEqual(e.description, "unexpected answer from the nbd driver while reading the status of /dev/nbd5: \(cause)")
  }

  // MARK: flags

  func testServerFlagValues() {
    XCTAssertEqual(NBDServerFlags.hasFlags.rawValue, 0x1)
    XCTAssertEqual(NBDServerFlags.readOnly.rawValue, 0x2)
    XCTAssertEqual(NBDServerFlags.sendFlush.rawValue, 0x4)
    XCTAssertEqual(NBDServerFlags.sendFUA.rawValue, 0x8)
    XCTAssertEqual(NBDServerFlags.rotational.rawValue, 0x10)
    XCTAssertEqual(NBDServerFlags.sendTrim.rawValue, 0x20)
    XCTAssertEqual(NBDServerFlags.sendWriteZeroes.rawValue, 0x40)
    XCTAssertEqual(NBDServerFlags.canMultiConn.rawValue, 0x100)
    let flags: NBDServerFlags = [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .canMultiConn]
    XCTAssertEqual(flags.rawValue, 0x12D)
    XCTAssertEqual(NBDClientFlags.destroyOnDisconnect.rawValue, 1)
    XCTAssertEqual(NBDClientFlags.disconnectOnClose.rawValue, 2)
  }

  // MARK: attribute streams

  typealias A = NBDNetlinkMessage.Attribute

  func testConnectAttributes() throws {
    let request = NBDConnectRequest(
      sockets: [7, 9], sizeBytes: 1 << 30, blockSize: 4096,
      serverFlags: [.hasFlags, .sendFlush, .canMultiConn], timeoutSeconds: 30,
      deadConnectionTimeoutSeconds: 120, index: 5, backendIdentifier: "iqn.x:lun0")
    let message = try NBDNetlinkMessage.connect(request)
    XCTAssertEqual(message.command, 1)  // NBD_CMD_CONNECT
    XCTAssertEqual(message.attributes.count % 4, 0)
    let attrs = try NetlinkAttribute.parse(message.attributes)
    XCTAssertEqual(try attrs.first(A.index)?.u32(), 5)
    XCTAssertEqual(attrs.first(A.index)?.payload.count, 4)
    XCTAssertEqual(try attrs.first(A.sizeBytes)?.u64(), 1 << 30)
    XCTAssertEqual(attrs.first(A.sizeBytes)?.payload.count, 8)
    XCTAssertEqual(try attrs.first(A.blockSizeBytes)?.u64(), 4096)
    XCTAssertEqual(try attrs.first(A.serverFlags)?.u64(), 0x105)
    XCTAssertEqual(try attrs.first(A.timeout)?.u64(), 30)
    XCTAssertEqual(try attrs.first(A.deadConnectionTimeout)?.u64(), 120)
    XCTAssertNil(attrs.first(A.clientFlags))
    XCTAssertEqual(attrs.first(A.backendIdentifier)?.string(), "iqn.x:lun0")
    XCTAssertEqual(attrs.first(A.backendIdentifier)?.payload.last, 0)
    let items = try XCTUnwrap(attrs.first(A.sockets)).nested()
    XCTAssertEqual(items.map(\.type), [A.sockItem, A.sockItem])
    XCTAssertEqual(try items.map { try $0.nested().first(A.sockFD)!.u32() }, [7, 9])
  }

  func testConnectBytesForOneSocket() throws {
    let request = NBDConnectRequest(
      sockets: [3], sizeBytes: 0x1000, blockSize: 512, serverFlags: [.hasFlags],
      timeoutSeconds: 0, deadConnectionTimeoutSeconds: 0)
    let bytes = try NBDNetlinkMessage.connect(request).attributes
    // SIZE_BYTES: len 12, type 2, u64 0x1000 (host order, little-endian here).
    XCTAssertEqual(Array(bytes[0..<12]), [12, 0, 2, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0])
    // SOCKETS { SOCK_ITEM { SOCK_FD 3 } } closes the stream: 4 + 4 + 8 bytes.
    XCTAssertEqual(Array(bytes.suffix(16)), [16, 0, 7, 0, 12, 0, 1, 0, 8, 0, 1, 0, 3, 0, 0, 0])
    XCTAssertEqual(bytes.count, 5 * 12 + 16)
  }

  func testConnectRejectsWhatTheKernelWould() {
    func rejects(_ r: NBDConnectRequest, _ file: StaticString = #filePath, _ line: UInt = #line) {
      XCTAssertThrowsError(try NBDNetlinkMessage.connect(r), file: file, line: line) { error in
        XCTAssertEqual((error as? NBDKernelError)?.code, .invalidArgument, file: file, line: line)
      }
    }
    let ok = NBDConnectRequest(
      sockets: [3], sizeBytes: 1 << 20, timeoutSeconds: 30, deadConnectionTimeoutSeconds: 60)
    XCTAssertNoThrow(try NBDNetlinkMessage.connect(ok))
    var r = ok
    r.sockets = []
    rejects(r)
    r = ok
    r.sockets = [3, 4]
    rejects(r)
    r.serverFlags.insert(.canMultiConn)
    XCTAssertNoThrow(try NBDNetlinkMessage.connect(r))
    r = ok
    r.sockets = [-1]
    rejects(r)
    r = ok
    r.blockSize = 1000
    rejects(r)
    r.blockSize = 256
    rejects(r)
    r.blockSize = 0
    XCTAssertNoThrow(try NBDNetlinkMessage.connect(r))
    r = ok
    r.sizeBytes = 0
    rejects(r)
    r = ok
    r.backendIdentifier = ""
    rejects(r)
  }

  func testClientFlagsOnlyWhenAsked() throws {
    var r = NBDConnectRequest(
      sockets: [3], sizeBytes: 1 << 20, timeoutSeconds: 30, deadConnectionTimeoutSeconds: 60)
    XCTAssertEqual(r.clientFlags, [])
    r.clientFlags = [.destroyOnDisconnect]
    let attrs = try NetlinkAttribute.parse(NBDNetlinkMessage.connect(r).attributes)
    XCTAssertEqual(try attrs.first(A.clientFlags)?.u64(), 1)
  }

  func testReconfigureDisconnectStatusAttributes() throws {
    let re = try NBDNetlinkMessage.reconfigure(
      index: 2, sockets: [11], timeoutSeconds: nil, deadConnectionTimeoutSeconds: 90, backendIdentifier: "b")
    XCTAssertEqual(re.command, 3)
    let attrs = try NetlinkAttribute.parse(re.attributes)
    XCTAssertEqual(attrs.map(\.type), [A.index, A.deadConnectionTimeout, A.sockets, A.backendIdentifier])
    XCTAssertEqual(try attrs.first(A.index)?.u32(), 2)

    // Online resize: the new size, no sockets, the backend the kernel checks.
    let grow = try NBDNetlinkMessage.reconfigure(
      index: 2, sockets: [], timeoutSeconds: nil, deadConnectionTimeoutSeconds: nil, backendIdentifier: "b",
      sizeBytes: 128 << 20)
    let growAttrs = try NetlinkAttribute.parse(grow.attributes)
    XCTAssertEqual(growAttrs.map(\.type), [A.index, A.sizeBytes, A.backendIdentifier])
    XCTAssertEqual(try growAttrs.first(A.sizeBytes)?.u64(), 128 << 20)

    let disc = NBDNetlinkMessage.disconnect(index: 6)
    XCTAssertEqual(disc.command, 2)
    XCTAssertEqual(disc.attributes, [8, 0, 1, 0, 6, 0, 0, 0])

    XCTAssertEqual(NBDNetlinkMessage.status(index: nil).attributes, [])
    XCTAssertEqual(NBDNetlinkMessage.status(index: nil).command, 5)
    XCTAssertEqual(NBDNetlinkMessage.status(index: 1).attributes, [8, 0, 1, 0, 1, 0, 0, 0])
  }

  func testDecodeReplies() throws {
    XCTAssertEqual(try NBDNetlinkMessage.decodeConnectReply([8, 0, 1, 0, 4, 0, 0, 0]), 4)
    XCTAssertNil(try NBDNetlinkMessage.decodeConnectReply([]))

    // What nbd_genl_status builds: DEVICE_LIST (no NLA_F_NESTED) of two items.
    var w = NetlinkAttributeWriter()
    w.nest(A.deviceList) { list in
      list.nest(A.deviceItem) {
        $0.putU32(A.deviceIndex, 0); $0.putU8(A.deviceConnected, 1)
      }
      list.nest(A.deviceItem) {
        $0.putU32(A.deviceIndex, 1); $0.putU8(A.deviceConnected, 0)
      }
    }
    XCTAssertEqual(
      try NBDNetlinkMessage.decodeStatusReply(w.bytes),
      [NBDDeviceStatus(index: 0, connected: true), NBDDeviceStatus(index: 1, connected: false)])
    // The same with NLA_F_NESTED (0x8000) set on the list.
    var flagged = w.bytes
    flagged[3] |= 0x80
    XCTAssertEqual(try NBDNetlinkMessage.decodeStatusReply(flagged).count, 2)
    // STATUS for an index with no device: an empty list.
    XCTAssertEqual(try NBDNetlinkMessage.decodeStatusReply([4, 0, 9, 0]), [])

    XCTAssertEqual(try NBDNetlinkMessage.decodeLinkDead([8, 0, 1, 0, 7, 0, 0, 0]), 7)
  }

  func testMalformedStreamsThrow() {
    XCTAssertThrowsError(try NetlinkAttribute.parse([12, 0, 1, 0, 0, 0, 0, 0]))  // overruns
    XCTAssertThrowsError(try NetlinkAttribute.parse([2, 0, 1, 0]))  // shorter than a header
    XCTAssertThrowsError(try NBDNetlinkMessage.decodeConnectReply([6, 0, 1, 0, 1, 0, 0, 0]))  // 2-byte u32
    XCTAssertEqual(try NetlinkAttribute.parse([0, 0]), [])  // trailing bytes ignored
  }
}
