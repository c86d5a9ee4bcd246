import Foundation
import ISCSIProtocol
import NIOCore

/// The seed corpus: one or a few well-formed inputs per target, built with the project's
/// own encoders, so the fuzzer starts from inputs that get past the first checks.
enum Seeds {
  static func pdu(_ header: BasicHeaderSegment, _ data: [UInt8] = [], digests: Bool = false) -> [UInt8] {
    var out = ByteBuffer()
    PDUEncoder(parameters: FramingParameters(headerDigest: digests, dataDigest: digests))
      .encode(ISCSIPDU(header: header, data: ByteBuffer(bytes: data)), into: &out)
    return Array(out.readableBytesView)
  }

  static func keys(_ pairs: [(String, String)]) -> [UInt8] {
    pairs.flatMap { Array("\($0.0)=\($0.1)".utf8) + [0] }
  }

  static func loginResponse(csg: UInt8, nsg: UInt8, transit: Bool, _ pairs: [(String, String)], statSN: UInt32)
    -> [UInt8]
  {
    var h = BasicHeaderSegment(opcode: .loginResponse, flags: (transit ? 0x80 : 0) | csg << 2 | (transit ? nsg : 0))
    h.initiatorTaskTag = 1
    h.statSN = statSN
    h.expCmdSN = 1
    h.maxCmdSN = 64
    return pdu(h, keys(pairs))
  }

  static func dataIn(offset: Int, _ data: [UInt8], dataSN: UInt32, status: Bool) -> [UInt8] {
    var h = BasicHeaderSegment(opcode: .dataIn, flags: status ? 0x81 : 0)
    h.initiatorTaskTag = 1
    h.dataSN = dataSN
    h.bufferOffset = UInt32(offset)
    return pdu(h, data)
  }

  static func be<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }

  static func nbdOption(_ option: UInt32, _ data: [UInt8] = []) -> [UInt8] {
    Array("IHAVEOPT".utf8) + be(option) + be(UInt32(data.count)) + data
  }

  static func nbdRequest(type: UInt16, offset: UInt64, length: UInt32, flags: UInt16 = 0) -> [UInt8] {
    be(UInt32(0x2560_9513)) + be(flags) + be(type) + be(UInt64(42)) + be(offset) + be(length)
  }

  static var all: [FuzzTarget: [[UInt8]]] {
    let operational: [(String, String)] = [
      ("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "262144"),
      ("MaxBurstLength", "262144"), ("FirstBurstLength", "65536"), ("InitialR2T", "Yes"), ("ImmediateData", "Yes"),
      ("TargetPortalGroupTag", "1"),
    ]
    var dataInRead = [UInt8(0x20), 0x00, 1]  // 8192 bytes, in order
    dataInRead += dataIn(offset: 0, [UInt8](repeating: 0xaa, count: 4096), dataSN: 0, status: false)
    dataInRead += dataIn(offset: 4096, [UInt8](repeating: 0xbb, count: 4096), dataSN: 1, status: true)
    var shuffled = [UInt8(0x20), 0x00, 0]
    shuffled += dataIn(offset: 4096, [UInt8](repeating: 0xbb, count: 4096), dataSN: 0, status: false)
    shuffled += dataIn(offset: 0, [UInt8](repeating: 0xaa, count: 4096), dataSN: 1, status: false)
    var response = BasicHeaderSegment(opcode: .scsiResponse, flags: 0x80)
    response.initiatorTaskTag = 1
    shuffled += pdu(response)
    var text = BasicHeaderSegment(opcode: .textResponse, flags: 0x80)
    text.initiatorTaskTag = 7
    text.targetTransferTag = 0xffff_ffff
    let sendTargets = pdu(
      text,
      keys([
        ("TargetName", "iqn.2026-11.org.lunbridge:a"), ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetName", "iqn.2026-11.org.lunbridge:b"), ("TargetAddress", "[::1]:3260,2"),
      ]))
    let inquiry: [UInt8] =
      [0, 0, 6, 2, 31, 0, 0x10, 2] + Array("LUNBRIDG".utf8) + Array("FUZZ DISK       ".utf8)
      + Array("0001".utf8)
    let fixedSense: [UInt8] = [0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2a, 0x06, 0, 0, 0, 0]
    let capacity16: [UInt8] = be(UInt64(0x1ffff)) + be(UInt32(512)) + [0, 0, 0x80, 0] + [UInt8](repeating: 0, count: 16)
    let reportLuns: [UInt8] = be(UInt32(16)) + be(UInt32(0)) + [0, 0, 0, 0, 0, 0, 0, 0] + [0, 1, 0, 0, 0, 0, 0, 0]
    let rtpg: [UInt8] = be(UInt32(12)) + [0x80, 0x0f, 0, 1, 0, 0, 0, 1] + [0, 0, 0, 1]
    let deviceID: [UInt8] = [0, 0x83, 0, 12, 1, 3, 0, 8] + [0x60, 1, 2, 3, 4, 5, 6, 7]
    return [
      .pduFramer: [
        [0] + loginResponse(csg: 1, nsg: 3, transit: true, operational, statSN: 1),
        [3]
          + pdu(
            {
              var h = BasicHeaderSegment(opcode: .dataIn, flags: 0x81); h.initiatorTaskTag = 3; return h
            }(),
            [UInt8](repeating: 7, count: 1000), digests: true),
        [4] + sendTargets,
      ],
      .textKeys: [keys(operational), keys([("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x0123456789abcdef")])],
      .login: [
        [0] + loginResponse(csg: 0, nsg: 1, transit: true, [("AuthMethod", "None"), ("TargetPortalGroupTag", "1")], statSN: 1)
          + loginResponse(csg: 1, nsg: 3, transit: true, operational, statSN: 2),
        [1] + loginResponse(csg: 0, nsg: 0, transit: false, [("AuthMethod", "CHAP"), ("TargetPortalGroupTag", "1")], statSN: 1)
          + loginResponse(
            csg: 0, nsg: 0, transit: false, [("CHAP_A", "5"), ("CHAP_I", "7"), ("CHAP_C", "0x00112233445566778899")],
            statSN: 2)
          + loginResponse(
            csg: 0, nsg: 1, transit: true, [("CHAP_N", "target"), ("CHAP_R", "0x00000000000000000000000000000000")],
            statSN: 3),
      ],
      .textExchange: [sendTargets],
      .dataIn: [dataInRead, shuffled],
      .nbdHandshake: [
        [0] + be(UInt32(3)) + nbdOption(7, be(UInt32(0)) + be(UInt16(1)) + be(UInt16(3))),
        [0] + be(UInt32(1)) + nbdOption(3) + nbdOption(1),
        [1] + be(UInt32(3)) + nbdOption(5) + nbdOption(7, be(UInt32(0)) + be(UInt16(0))),
      ],
      .nbdRequest: [
        nbdRequest(type: 0, offset: 4096, length: 4096)
          + nbdRequest(type: 1, offset: 0, length: 512) + [UInt8](repeating: 1, count: 512)
          + nbdRequest(type: 3, offset: 0, length: 0) + nbdRequest(type: 4, offset: 0, length: 65536)
          + nbdRequest(type: 6, offset: 8192, length: 8192, flags: 1) + nbdRequest(type: 2, offset: 0, length: 0)
      ],
      .scsi: [
        [0] + fixedSense, [2] + inquiry, [5] + deviceID, [10] + capacity16, [11] + reportLuns, [12] + rtpg,
      ],
    ]
  }

  static func write(to directory: String) throws {
    for (target, inputs) in all {
      let dir = "\(directory)/\(target.rawValue)"
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      for (i, input) in inputs.enumerated() {
        try Data(input).write(to: URL(fileURLWithPath: "\(dir)/seed-\(i)"))
      }
    }
    print("wrote the seed corpus of \(all.count) targets to \(directory)")
  }
}
