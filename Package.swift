// swift-tools-version:6.0
import PackageDescription

let package = Package(
  name: "lunbridge",
  platforms: [.macOS(.v13)],
  products: [
    .executable(name: "lunbridge", targets: ["lunbridge"]),
    .library(name: "ISCSIInitiator", targets: ["ISCSIInitiator"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
  ],
  targets: [
    // CRC32C with the SSE4.2 instruction where the CPU has it, table-driven otherwise.
    .target(name: "CCRC32C"),
    // Pure: SCSI command descriptor blocks, sense data, VPD pages.
    .target(name: "SCSI"),
    // Pure: iSCSI PDUs, digests, text keys, login negotiation, CHAP, serial numbers.
    .target(
      name: "ISCSIProtocol",
      dependencies: [
        "CCRC32C",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "Crypto", package: "swift-crypto"),
      ]),
    // I/O: connections, sessions, discovery, recovery (SwiftNIO).
    .target(
      name: "ISCSIInitiator",
      dependencies: [
        "ISCSIProtocol", "SCSI",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
      ]),
    .executableTarget(
      name: "lunbridge",
      dependencies: [
        "ISCSIInitiator", "ISCSIProtocol", "SCSI",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
      ]),
    // Benchmark of the PDU codec (not a test): `make bench-codec`.
    .executableTarget(
      name: "lunbridge-codec-bench",
      dependencies: [
        "ISCSIProtocol",
        .product(name: "NIOCore", package: "swift-nio"),
      ]),
    .testTarget(name: "SCSITests", dependencies: ["SCSI"]),
    .testTarget(
      name: "ISCSIProtocolTests",
      dependencies: ["ISCSIProtocol", .product(name: "NIOCore", package: "swift-nio")]),
    .testTarget(
      name: "ISCSIInitiatorTests",
      dependencies: [
        "ISCSIInitiator", "ISCSIProtocol", "SCSI",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOEmbedded", package: "swift-nio"),
      ]),
    // Needs root and a real tgtd (package tgt); starts and stops its own instance.
    .testTarget(
      name: "IntegrationTests",
      dependencies: [
        "ISCSIInitiator", "ISCSIProtocol", "SCSI",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ]),
  ],
  swiftLanguageModes: [.v5]
)
