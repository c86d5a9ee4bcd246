import Bridge
import Failure
import ISCSIInitiator
import ISCSIProtocol
import NBDKernel
import NBDProtocol
import SCSI
import XCTest

/// Every module's public errors are values of one protocol: a code, a class for the exit
/// status, and one line for people; a wrapper keeps its cause as a value.
final class LunbridgeErrorTests: XCTestCase {
  func testEachModulesErrorsCarryACodeAClassAndAMessage() {
    let errors: [(any LunbridgeError, code: String, class: FailureClass, message: String)] = [
      (ISCSIError(.authenticationFailed, "CHAP refused"), "iscsi.authentication failed", .authentication, "CHAP refused"),
      (ISCSIError(.unreachable, "no route"), "iscsi.unreachable", .unreachable, "no route"),
      (ISCSIError(.digestMismatch, "header digest"), "iscsi.digest mismatch", .protocolError, "header digest"),
      (ISCSIURLError("bad port"), "url.malformed", .usage, "bad port"),
      (
        VolumeConfigError(
          .wrongType, file: "/etc/lunbridge/volumes/db.toml", line: 4, key: "timeout", message: "must be an integer"),
        "volume-file.wrongType", .config, "/etc/lunbridge/volumes/db.toml: line 4: must be an integer"
      ),
      (
        NBDKernelError(code: .moduleNotLoaded, operation: .connect, index: nil, detail: nil), "nbd-kernel.moduleNotLoaded",
        .nbdMissing, NBDKernelError(code: .moduleNotLoaded, operation: .connect, index: nil, detail: nil).description
      ),
      (
        SCSIError(.truncated, "INQUIRY: 3 bytes"), "scsi-data.truncated", .protocolError,
        "the LUN sent data that cannot be read: INQUIRY: 3 bytes"
      ),
      (NBDProtocolError.decoderFailed, "nbd.decoder-failed", .protocolError, NBDProtocolError.decoderFailed.description),
      (NBDConfigurationError.invalidName("too long"), "nbd.invalid-name", .usage, "too long"),
      (PathURLProblem.badParameter("unknown parameter 'x'"), "path.bad-parameter", .usage, "unknown parameter 'x'"),
      (BridgeError(.busy, "cannot listen on tcp:127.0.0.1:10809"), "bridge.busy", .busy, "cannot listen on tcp:127.0.0.1:10809"),
      (BridgeError(.system, "socketpair failed"), "bridge.system", .other, "socketpair failed"),
      (
        BridgeError(.noPath, "no path could log in", cause: ISCSIError(.unreachable, "connection refused")), "bridge.noPath",
        .unreachable, "no path could log in: connection refused"
      ),
      (
        BridgeError(.config, "--tls-certificates /x", cause: ISCSIError(.unreachable, "never mind")), "bridge.config", .config,
        "--tls-certificates /x: never mind"
      ),
      (BridgeError(relayed: "bad line 3", class: .config), "bridge.relayed", .config, "bad line 3"),
      (BridgeError(relayed: "gone", class: nil), "bridge.relayed", .other, "gone"),
    ]
    for (error, code, failureClass, message) in errors {
      XCTAssertEqual(error.errorCode, code, "\(error)")
      XCTAssertEqual(error.failureClass, failureClass, "\(error)")
      XCTAssertEqual(error.errorMessage, message, "\(error)")
      XCTAssertEqual(describeError(error), message, "describeError is the message at the edge")
    }
  }

  func testAFailedReplyCarriesTheClassOfAnyTypedError() {
    XCTAssertEqual(ControlReply(failure: ISCSIError(.targetNotFound, "no such target")).kind, .notFound)
    XCTAssertEqual(ControlReply(failure: ISCSIError(.targetNotFound, "no such target")).error, "no such target")
    XCTAssertEqual(
      ControlReply(failure: VolumeConfigError(.missingKey, file: "f.toml", message: "key 'url' is missing")).kind, .config)
    XCTAssertNil(ControlReply(failure: CancellationError()).kind)
  }

  func testTheRepliesKindIsTheOldWireFormat() throws {
    // An older lunbridge's reply ("kind":"busy") decodes, and a newer one encodes the same key.
    let old = #"{"ok":false,"error":"in use","kind":"busy"}"#
    let reply = try JSONDecoder().decode(ControlReply.self, from: Data(old.utf8))
    XCTAssertEqual(reply.kind, .busy)
    let encoded = String(decoding: try JSONEncoder().encode(ControlReply(ok: false, error: "x", kind: .usage)), as: UTF8.self)
    XCTAssertTrue(encoded.contains(#""kind":"usage""#), encoded)
  }
}
