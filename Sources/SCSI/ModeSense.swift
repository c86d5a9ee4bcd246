/// Mode parameter data returned by MODE SENSE(6) or (10): the header
/// (SPC-4 7.5.5, Tables 451 and 452), block descriptors (skipped) and the
/// mode pages (SPC-4 7.5.7, Tables 453 and 454).
///
/// Data cut short by the allocation length is not an error (SPC-4 4.3.5.6):
/// the header must be complete, pages that are only partly present are
/// dropped and `isTruncated` is set.
public struct ModeSense: Sendable, Equatable {
  /// One mode page in page_0 (SPF = 0) or sub_page (SPF = 1) format.
  public struct Page: Sendable, Equatable {
    /// Byte 0 bit 7, PS: the page can be saved.
    public let parametersSaveable: Bool
    /// Byte 0 bit 6, SPF.
    public let subpageFormat: Bool
    /// Byte 0 bits 5-0, PAGE CODE.
    public let pageCode: UInt8
    /// Byte 1 in sub_page format, else 0.
    public let subpageCode: UInt8
    /// The whole page including its 2- or 4-byte header, so byte offsets
    /// match the page tables in SBC-3/SPC-4.
    public let bytes: [UInt8]
  }

  /// Mode page codes (SPC-4 Annex D.6, Table D.9; SBC-3 6.4.1, Table 169).
  public enum PageCode {
    public static let caching: UInt8 = 0x08  // SBC-3 6.4.5
    public static let control: UInt8 = 0x0A  // SPC-4 7.5.8
    public static let allPages: UInt8 = 0x3F
  }

  /// True for MODE SENSE(10) data.
  public let isTenByte: Bool
  /// MODE DATA LENGTH: bytes following the field itself.
  public let modeDataLength: UInt16
  public let mediumType: UInt8
  /// DEVICE-SPECIFIC PARAMETER; for direct-access devices SBC-3 6.4.1,
  /// Table 168: WP bit 7, DPOFUA bit 4.
  public let deviceSpecificParameter: UInt8
  /// LONGLBA (byte 4 bit 0 of the 10-byte header).
  public let longLBA: Bool
  public let blockDescriptorLength: UInt16
  public let pages: [Page]
  /// The data is shorter than MODE DATA LENGTH says.
  public let isTruncated: Bool

  /// WP: the medium is write-protected.
  public var writeProtect: Bool { deviceSpecificParameter & 0x80 != 0 }
  /// DPOFUA: the device honours DPO and FUA bits.
  public var dpofua: Bool { deviceSpecificParameter & 0x10 != 0 }

  /// Bytes needed to receive all the mode data (for a re-issue).
  public var totalLength: Int { Int(modeDataLength) + (isTenByte ? 2 : 1) }

  /// The first page with `code`/`subpage`, if returned.
  public func page(_ code: UInt8, subpage: UInt8 = 0) -> Page? {
    pages.first { $0.pageCode == code && $0.subpageCode == subpage }
  }

  /// Caching mode page (SBC-3 6.4.5, Table 173) byte 2 bit 2, WCE.
  public var writeCacheEnabled: Bool? {
    guard let p = page(PageCode.caching), !p.subpageFormat, p.bytes.count > 2 else { return nil }
    return p.bytes[2] & 0x04 != 0
  }

  /// Caching mode page byte 2 bit 0, RCD.
  public var readCacheDisabled: Bool? {
    guard let p = page(PageCode.caching), !p.subpageFormat, p.bytes.count > 2 else { return nil }
    return p.bytes[2] & 0x01 != 0
  }

  /// Parses MODE SENSE(6) data: 4-byte header (SPC-4 Table 451): MODE DATA
  /// LENGTH byte 0, MEDIUM TYPE byte 1, DEVICE-SPECIFIC PARAMETER byte 2,
  /// BLOCK DESCRIPTOR LENGTH byte 3.
  public init(mode6 bytes: [UInt8]) throws {
    try require(bytes, 4, "MODE SENSE(6) header")
    try self.init(
      bytes, tenByte: false, modeDataLength: UInt16(bytes[0]), mediumType: bytes[1],
      deviceSpecific: bytes[2], longLBA: false, bdLength: UInt16(bytes[3]), headerLength: 4)
  }

  /// Parses MODE SENSE(10) data: 8-byte header (SPC-4 Table 452): MODE DATA
  /// LENGTH bytes 0-1, MEDIUM TYPE byte 2, DEVICE-SPECIFIC PARAMETER byte 3,
  /// LONGLBA byte 4 bit 0, BLOCK DESCRIPTOR LENGTH bytes 6-7.
  public init(mode10 bytes: [UInt8]) throws {
    try require(bytes, 8, "MODE SENSE(10) header")
    try self.init(
      bytes, tenByte: true, modeDataLength: be16(bytes, 0), mediumType: bytes[2],
      deviceSpecific: bytes[3], longLBA: bytes[4] & 0x01 != 0, bdLength: be16(bytes, 6), headerLength: 8)
  }

  private init(
    _ bytes: [UInt8], tenByte: Bool, modeDataLength: UInt16, mediumType: UInt8, deviceSpecific: UInt8,
    longLBA: Bool, bdLength: UInt16, headerLength: Int
  ) throws {
    self.isTenByte = tenByte
    self.modeDataLength = modeDataLength
    self.mediumType = mediumType
    self.deviceSpecificParameter = deviceSpecific
    self.longLBA = longLBA
    self.blockDescriptorLength = bdLength
    let total = Int(modeDataLength) + (tenByte ? 2 : 1)
    guard total >= headerLength else {
      throw SCSIError(.invalidField, "MODE SENSE: mode data length \(modeDataLength) shorter than the header")
    }
    let end = min(total, bytes.count)
    var truncated = bytes.count < total
    var list: [Page] = []
    var o = headerLength + Int(bdLength)
    if o > total {
      throw SCSIError(.invalidField, "MODE SENSE: block descriptor length \(bdLength) exceeds the mode data")
    }
    // Walk the pages (SPC-4 7.5.7): page_0 format has PAGE LENGTH in byte 1,
    // sub_page format (SPF, byte 0 bit 6) has SUBPAGE CODE byte 1 and PAGE
    // LENGTH bytes 2-3.
    while o < end {
      let spf = bytes[o] & 0x40 != 0
      let hdr = spf ? 4 : 2
      guard o + hdr <= end else { truncated = true; break }
      let len = spf ? Int(be16(bytes, o + 2)) : Int(bytes[o + 1])
      guard o + hdr + len <= end else { truncated = true; break }
      list.append(
        Page(
          parametersSaveable: bytes[o] & 0x80 != 0, subpageFormat: spf, pageCode: bytes[o] & 0x3F,
          subpageCode: spf ? bytes[o + 1] : 0, bytes: Array(bytes[o..<(o + hdr + len)])))
      o += hdr + len
    }
    // A partial page inside data that was *not* cut short means the lengths
    // disagree: garbage rather than truncation.
    if truncated && bytes.count >= total {
      throw SCSIError(.invalidField, "MODE SENSE: mode page overruns the mode data length")
    }
    self.pages = list
    self.isTruncated = truncated
  }
}
