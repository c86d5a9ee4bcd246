import ISCSIProtocol
import NIOCore
import NIOEmbedded
import SCSI
import XCTest

@testable import ISCSIInitiator

/// A write cut into several commands (larger than the LU's transfer limit, WRITE ZEROES,
/// UNMAP) ends only once every piece has: the volume may send a refused I/O again at once
/// (the target did not carry it out), which is only safe when no other piece of it is
/// still on its way to the LU.
final class SplitWriteTests: XCTestCase {
  let loop = EmbeddedEventLoop()

  func refusal() -> SCSIOperationError {
    SCSIOperationError(
      errorClass: .path, status: 0x02, sense: nil, operation: "WRITE", outcome: .failPath)
  }

  func testARefusedPieceIsHandedUpOnlyOnceTheOthersHaveEnded() throws {
    let first = loop.makePromise(of: Void.self)
    let second = loop.makePromise(of: Void.self)
    let whole = LogicalUnit.allSettled([first.futureResult, second.futureResult], on: loop)
    nonisolated(unsafe) var result: Result<Void, Error>?
    whole.whenComplete { result = $0 }
    first.fail(refusal())
    loop.run()
    XCTAssertNil(result, "the write ended while its second piece was still at the target")
    second.succeed(())
    loop.run()
    guard case .failure(let error as SCSIOperationError)? = result else { return XCTFail("\(String(describing: result))") }
    XCTAssertEqual(error.outcome, .failPath)
  }

  func testAPieceWhoseFateIsUnknownWinsOverARefusal() throws {
    let first = loop.makePromise(of: Void.self)
    let second = loop.makePromise(of: Void.self)
    nonisolated(unsafe) var result: Result<Void, Error>?
    LogicalUnit.allSettled([first.futureResult, second.futureResult], on: loop).whenComplete { result = $0 }
    first.fail(refusal())
    second.fail(ISCSIError(.pathDown, "the path went"))
    loop.run()
    // The connection went with the second piece on it: the volume must fence, not re-send.
    guard case .failure(let error as ISCSIError)? = result else { return XCTFail("\(String(describing: result))") }
    XCTAssertEqual(error.code, .pathDown)
  }

  func testAllPiecesDoneIsDone() throws {
    let pieces = (0..<3).map { _ in loop.makePromise(of: Void.self) }
    nonisolated(unsafe) var result: Result<Void, Error>?
    LogicalUnit.allSettled(pieces.map(\.futureResult), on: loop).whenComplete { result = $0 }
    for p in pieces.dropLast() { p.succeed(()) }
    loop.run()
    XCTAssertNil(result)
    pieces.last!.succeed(())
    loop.run()
    guard case .success? = result else { return XCTFail("\(String(describing: result))") }
  }
}
