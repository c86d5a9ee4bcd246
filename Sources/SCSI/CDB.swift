/// Builders for the command descriptor blocks (CDBs) the initiator sends.
/// Every builder returns a fresh array whose length is the CDB's size; the
/// CONTROL byte (last byte, SAM-5 5.2 / SPC-4 4.3.4.3) is always 0.
///
/// Operation codes: SPC-4 Annex D (Table D.2), SBC-3 Table 19 (5.1).
public enum CDB {
  // MARK: Operation codes (SPC-4 Annex D, SBC-3 Table 19)
  public enum Opcode {
    public static let testUnitReady: UInt8 = 0x00  // SPC-4 6.47
    public static let inquiry: UInt8 = 0x12  // SPC-4 6.6
    public static let modeSense6: UInt8 = 0x1A  // SPC-4 6.11
    public static let readCapacity10: UInt8 = 0x25  // SBC-3 5.15
    public static let read10: UInt8 = 0x28  // SBC-3 5.11
    public static let write10: UInt8 = 0x2A  // SBC-3 5.32
    public static let synchronizeCache10: UInt8 = 0x35  // SBC-3 5.22
    public static let unmap: UInt8 = 0x42  // SBC-3 5.28
    public static let modeSense10: UInt8 = 0x5A  // SPC-4 6.12
    public static let read16: UInt8 = 0x88  // SBC-3 5.13
    public static let write16: UInt8 = 0x8A  // SBC-3 5.34
    public static let synchronizeCache16: UInt8 = 0x91  // SBC-3 5.23
    public static let writeSame16: UInt8 = 0x93  // SBC-3 5.43
    public static let serviceActionIn16: UInt8 = 0x9E  // SPC-4 Annex D.3.2
    public static let reportLuns: UInt8 = 0xA0  // SPC-4 6.33
    public static let maintenanceIn: UInt8 = 0xA3  // SPC-4 Annex D.3.2
    public static let maintenanceOut: UInt8 = 0xA4  // SPC-4 Annex D.3.2
  }

  /// Service actions (SPC-4 Annex D, Table D.4 / D.5).
  public enum ServiceAction {
    public static let readCapacity16: UInt8 = 0x10  // SERVICE ACTION IN(16), SBC-3 5.16
    public static let getLBAStatus: UInt8 = 0x12  // SERVICE ACTION IN(16), SBC-3 5.8
    public static let reportTargetPortGroups: UInt8 = 0x0A  // MAINTENANCE IN, SPC-4 6.36
    public static let setTargetPortGroups: UInt8 = 0x0A  // MAINTENANCE OUT, SPC-4 6.44
  }

  /// FUA bit: byte 1 bit 3 of READ/WRITE(10) and (16) (SBC-3 Tables 40, 42, 95, 97).
  static let fuaBit: UInt8 = 0x08

  // MARK: SPC-4 commands

  /// TEST UNIT READY (SPC-4 6.47, Table 208): 6 bytes, all but the opcode reserved.
  public static func testUnitReady() -> [UInt8] {
    [Opcode.testUnitReady, 0, 0, 0, 0, 0]
  }

  /// Standard INQUIRY (SPC-4 6.6.1, Table 142): EVPD (byte 1 bit 0) = 0,
  /// PAGE CODE (byte 2) = 0, ALLOCATION LENGTH in bytes 3-4.
  public static func inquiry(allocationLength: UInt16) -> [UInt8] {
    var c: [UInt8] = [Opcode.inquiry, 0, 0, 0, 0, 0]
    put16(&c, 3, allocationLength)
    return c
  }

  /// INQUIRY for a vital product data page (SPC-4 6.6.1, Table 142): EVPD = 1
  /// (byte 1 bit 0), PAGE CODE in byte 2, ALLOCATION LENGTH in bytes 3-4.
  public static func inquiryVPD(page: UInt8, allocationLength: UInt16) -> [UInt8] {
    var c: [UInt8] = [Opcode.inquiry, 0x01, page, 0, 0, 0]
    put16(&c, 3, allocationLength)
    return c
  }

  /// REPORT LUNS (SPC-4 6.33, Table 180): 12 bytes; SELECT REPORT (byte 2) = 0
  /// (all LUNs), ALLOCATION LENGTH in bytes 6-9. SPC-4 requires >= 16.
  public static func reportLuns(allocationLength: UInt32) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 12)
    c[0] = Opcode.reportLuns
    put32(&c, 6, allocationLength)
    return c
  }

  /// MODE SENSE(6) (SPC-4 6.11, Table 166): DBD byte 1 bit 3; PC (bits 7-6,
  /// 00b = current values) and PAGE CODE (bits 5-0) in byte 2; SUBPAGE CODE in
  /// byte 3; ALLOCATION LENGTH in byte 4.
  public static func modeSense6(page: UInt8, subpage: UInt8 = 0, allocationLength: UInt8, dbd: Bool = true)
    -> [UInt8]
  {
    [Opcode.modeSense6, dbd ? 0x08 : 0, page & 0x3F, subpage, allocationLength, 0]
  }

  /// MODE SENSE(10) (SPC-4 6.12, Table 170): LLBAA byte 1 bit 4 (left 0), DBD
  /// byte 1 bit 3; PC/PAGE CODE byte 2; SUBPAGE CODE byte 3; ALLOCATION LENGTH
  /// bytes 7-8.
  public static func modeSense10(page: UInt8, subpage: UInt8 = 0, allocationLength: UInt16, dbd: Bool = true)
    -> [UInt8]
  {
    var c = [UInt8](repeating: 0, count: 10)
    c[0] = Opcode.modeSense10
    c[1] = dbd ? 0x08 : 0
    c[2] = page & 0x3F
    c[3] = subpage
    put16(&c, 7, allocationLength)
    return c
  }

  /// REPORT TARGET PORT GROUPS (SPC-4 6.36, Table 203): MAINTENANCE IN (0xA3)
  /// with SERVICE ACTION 0x0A in byte 1 bits 4-0; PARAMETER DATA FORMAT (byte 1
  /// bits 7-5) = 000b (length-only header) or 001b (extended header, which carries the
  /// implicit transition time); ALLOCATION LENGTH bytes 6-9.
  public static func reportTargetPortGroups(allocationLength: UInt32, extendedHeader: Bool = false) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 12)
    c[0] = Opcode.maintenanceIn
    c[1] = ServiceAction.reportTargetPortGroups | (extendedHeader ? 0x20 : 0)
    put32(&c, 6, allocationLength)
    return c
  }

  /// SET TARGET PORT GROUPS (SPC-4 6.44): MAINTENANCE OUT, service action 0Ah, parameter
  /// list length in bytes 6-9.
  public static func setTargetPortGroups(parameterListLength: UInt32) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 12)
    c[0] = Opcode.maintenanceOut
    c[1] = ServiceAction.setTargetPortGroups
    put32(&c, 6, parameterListLength)
    return c
  }

  /// SET TARGET PORT GROUPS parameter list: 4 reserved bytes, then one 4-byte descriptor
  /// per group (byte 0: the asymmetric access state asked for in its low 4 bits; bytes 2-3:
  /// the target port group).
  public static func setTargetPortGroupsParameterList(groups: [(group: UInt16, state: UInt8)]) -> [UInt8] {
    var list = [UInt8](repeating: 0, count: 4)
    for g in groups {
      list += [g.state & 0x0F, 0, UInt8(g.group >> 8), UInt8(g.group & 0xFF)]
    }
    return list
  }

  // MARK: SBC-3 capacity

  /// READ CAPACITY(10) (SBC-3 5.15, Table 62): LBA (bytes 2-5) and PMI (byte 8
  /// bit 0) are 0, so the device reports its last LBA.
  public static func readCapacity10() -> [UInt8] {
    [Opcode.readCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
  }

  /// READ CAPACITY(16) (SBC-3 5.16, Table 64): SERVICE ACTION IN(16) 0x9E with
  /// SERVICE ACTION 0x10 in byte 1 bits 4-0; LBA bytes 2-9 = 0; ALLOCATION
  /// LENGTH bytes 10-13; PMI byte 14 bit 0 = 0. The parameter data is 32 bytes
  /// (SBC-3 Table 65).
  public static func readCapacity16(allocationLength: UInt32 = 32) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 16)
    c[0] = Opcode.serviceActionIn16
    c[1] = ServiceAction.readCapacity16
    put32(&c, 10, allocationLength)
    return c
  }

  /// GET LBA STATUS (SBC-3 5.8, Table 33): SERVICE ACTION 0x12 in byte 1 bits 4-0;
  /// STARTING LOGICAL BLOCK ADDRESS bytes 2-9; ALLOCATION LENGTH bytes 10-13. The target
  /// describes the blocks from the starting LBA on, as many as the allocation length holds.
  public static func getLBAStatus(lba: UInt64, allocationLength: UInt32) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 16)
    c[0] = Opcode.serviceActionIn16
    c[1] = ServiceAction.getLBAStatus
    put64(&c, 2, lba)
    put32(&c, 10, allocationLength)
    return c
  }

  // MARK: SBC-3 data transfer

  /// READ(10) (SBC-3 5.11, Table 40): FUA byte 1 bit 3; LOGICAL BLOCK ADDRESS
  /// bytes 2-5; GROUP NUMBER byte 6; TRANSFER LENGTH bytes 7-8.
  public static func read10(lba: UInt32, blocks: UInt16, fua: Bool = false) -> [UInt8] {
    rw10(Opcode.read10, lba: lba, blocks: blocks, fua: fua)
  }

  /// WRITE(10) (SBC-3 5.32, Table 95): same layout as READ(10).
  public static func write10(lba: UInt32, blocks: UInt16, fua: Bool = false) -> [UInt8] {
    rw10(Opcode.write10, lba: lba, blocks: blocks, fua: fua)
  }

  /// READ(16) (SBC-3 5.13, Table 42): FUA byte 1 bit 3; LOGICAL BLOCK ADDRESS
  /// bytes 2-9; TRANSFER LENGTH bytes 10-13; GROUP NUMBER byte 14.
  public static func read16(lba: UInt64, blocks: UInt32, fua: Bool = false) -> [UInt8] {
    rw16(Opcode.read16, lba: lba, blocks: blocks, fua: fua)
  }

  /// WRITE(16) (SBC-3 5.34, Table 97): same layout as READ(16).
  public static func write16(lba: UInt64, blocks: UInt32, fua: Bool = false) -> [UInt8] {
    rw16(Opcode.write16, lba: lba, blocks: blocks, fua: fua)
  }

  /// READ(10) when the range fits (lba <= 0xFFFFFFFF and blocks <= 0xFFFF) and
  /// `prefer16` is false, READ(16) otherwise. Set `prefer16` when READ
  /// CAPACITY(16) was needed (capacity > 2 TiB at 512 B) or the device asks for
  /// 16-byte commands. Note blocks == 0 is a valid zero-length transfer for
  /// both (SBC-3 5.11: "zero ... no data shall be transferred").
  public static func read(lba: UInt64, blocks: UInt32, fua: Bool = false, prefer16: Bool = false) -> [UInt8] {
    if needs16(lba: lba, blocks: blocks, prefer16: prefer16) {
      return read16(lba: lba, blocks: blocks, fua: fua)
    }
    return read10(lba: UInt32(lba), blocks: UInt16(blocks), fua: fua)
  }

  /// WRITE(10) or WRITE(16), chosen as in `read(lba:blocks:fua:prefer16:)`.
  public static func write(lba: UInt64, blocks: UInt32, fua: Bool = false, prefer16: Bool = false) -> [UInt8] {
    if needs16(lba: lba, blocks: blocks, prefer16: prefer16) {
      return write16(lba: lba, blocks: blocks, fua: fua)
    }
    return write10(lba: UInt32(lba), blocks: UInt16(blocks), fua: fua)
  }

  /// True when a 10-byte READ/WRITE/SYNCHRONIZE CACHE cannot express the range.
  public static func needs16(lba: UInt64, blocks: UInt32, prefer16: Bool = false) -> Bool {
    prefer16 || lba > UInt64(UInt32.max) || blocks > UInt32(UInt16.max)
  }

  /// SYNCHRONIZE CACHE(10) (SBC-3 5.22, Table 110): IMMED byte 1 bit 1 = 0;
  /// LOGICAL BLOCK ADDRESS bytes 2-5; NUMBER OF LOGICAL BLOCKS bytes 7-8
  /// (0 = through the last LBA, i.e. the whole medium with lba 0).
  public static func synchronizeCache10(lba: UInt32 = 0, blocks: UInt16 = 0) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 10)
    c[0] = Opcode.synchronizeCache10
    put32(&c, 2, lba)
    put16(&c, 7, blocks)
    return c
  }

  /// SYNCHRONIZE CACHE(16) (SBC-3 5.23, Table 111): LOGICAL BLOCK ADDRESS
  /// bytes 2-9; NUMBER OF LOGICAL BLOCKS bytes 10-13 (0 = through the end).
  public static func synchronizeCache16(lba: UInt64 = 0, blocks: UInt32 = 0) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 16)
    c[0] = Opcode.synchronizeCache16
    put64(&c, 2, lba)
    put32(&c, 10, blocks)
    return c
  }

  // MARK: SBC-3 provisioning

  /// UNMAP (SBC-3 5.28, Table 126): ANCHOR byte 1 bit 0 = 0; GROUP NUMBER
  /// byte 6; PARAMETER LIST LENGTH bytes 7-8. Send the output of
  /// `unmapParameterList(ranges:)` as Data-Out and pass its count here.
  public static func unmap(parameterListLength: UInt16) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 10)
    c[0] = Opcode.unmap
    put16(&c, 7, parameterListLength)
    return c
  }

  /// Largest number of block descriptors whose UNMAP DATA LENGTH (6 + 16n)
  /// still fits the 2-byte field (SBC-3 Table 127).
  public static let maxUnmapDescriptorsPerList = (Int(UInt16.max) - 6) / 16  // 4095

  /// UNMAP parameter list (SBC-3 5.28.2, Table 127): an 8-byte header
  /// (UNMAP DATA LENGTH bytes 0-1 = n - 2; UNMAP BLOCK DESCRIPTOR DATA LENGTH
  /// bytes 2-3; bytes 4-7 reserved) followed by 16-byte block descriptors
  /// (SBC-3 Table 128: LBA bytes 0-7, NUMBER OF LOGICAL BLOCKS bytes 8-11,
  /// bytes 12-15 reserved).
  ///
  /// Throws `.invalidArgument` for more than `maxUnmapDescriptorsPerList`
  /// ranges (the lengths would not fit). The caller also has to respect the
  /// device's MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT / LBA COUNT (VPD 0xB0).
  public static func unmapParameterList(ranges: [(lba: UInt64, blocks: UInt32)]) throws -> [UInt8] {
    guard ranges.count <= maxUnmapDescriptorsPerList else {
      throw SCSIError(
        .invalidArgument, "UNMAP: \(ranges.count) descriptors exceed \(maxUnmapDescriptorsPerList)")
    }
    let descriptorBytes = ranges.count * 16
    var p = [UInt8](repeating: 0, count: 8 + descriptorBytes)
    put16(&p, 0, UInt16(6 + descriptorBytes))  // bytes following the field itself
    put16(&p, 2, UInt16(descriptorBytes))
    for (i, r) in ranges.enumerated() {
      let o = 8 + i * 16
      put64(&p, o, r.lba)
      put32(&p, o + 8, r.blocks)
    }
    return p
  }

  /// WRITE SAME(16) (SBC-3 5.43, Table 153; NDOB from SBC-4 5.50): byte 1 has
  /// ANCHOR bit 4, UNMAP bit 3, NDOB bit 0; LOGICAL BLOCK ADDRESS bytes 2-9;
  /// NUMBER OF LOGICAL BLOCKS bytes 10-13 (0 = to the end of the medium, only
  /// if the device's WSNZ bit is 0 — avoid). Without `noDataOut` the command
  /// carries one logical block of Data-Out (normally zeros).
  public static func writeSame16(
    lba: UInt64, blocks: UInt32, unmap: Bool, anchor: Bool = false, noDataOut: Bool = false
  ) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 16)
    c[0] = Opcode.writeSame16
    c[1] = (anchor ? 0x10 : 0) | (unmap ? 0x08 : 0) | (noDataOut ? 0x01 : 0)
    put64(&c, 2, lba)
    put32(&c, 10, blocks)
    return c
  }

  // MARK: private

  private static func rw10(_ op: UInt8, lba: UInt32, blocks: UInt16, fua: Bool) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 10)
    c[0] = op
    c[1] = fua ? fuaBit : 0
    put32(&c, 2, lba)
    put16(&c, 7, blocks)
    return c
  }

  private static func rw16(_ op: UInt8, lba: UInt64, blocks: UInt32, fua: Bool) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 16)
    c[0] = op
    c[1] = fua ? fuaBit : 0
    put64(&c, 2, lba)
    put32(&c, 10, blocks)
    return c
  }
}
