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
    .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
    .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
  ],
  targets: [
    // CRC32C with the SSE4.2 instruction where the CPU has it, table-driven otherwise.
    .target(name: "CCRC32C"),
    // Pure: the one protocol every module's public errors conform to (code, class, message),
    // which the command line prints and maps to an exit status.
    .target(name: "Failure"),
    // Pure: SCSI command descriptor blocks, sense data, VPD pages.
    .target(name: "SCSI", dependencies: ["Failure"]),
    // The commit of the build, for --version (written by the Makefile into .build).
    .target(name: "CBuildInfo"),
    // Pure: iSCSI PDUs, digests, text keys, login negotiation, CHAP, serial numbers, and the
    // session's full-feature phase (SessionStateMachine).
    .target(
      name: "ISCSIProtocol",
      dependencies: [
        "CCRC32C", "SCSI", "Failure",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "Crypto", package: "swift-crypto"),
      ]),
    // I/O: connections, sessions, discovery, recovery (SwiftNIO).
    .target(
      name: "ISCSIInitiator",
      dependencies: [
        "ISCSIProtocol", "SCSI", "Failure",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
      ]),
    // Pure: NBD transmission codec, fixed-newstyle handshake (server side), validation.
    .target(
      name: "NBDProtocol",
      dependencies: ["Failure", .product(name: "NIOCore", package: "swift-nio")]),
    // libnl-3 / libnl-genl-3 and <linux/nbd-netlink.h>, with a C shim for the macros
    // Swift cannot import (packages libnl-3-dev, libnl-genl-3-dev).
    .target(
      name: "CNetlink",
      cSettings: [.unsafeFlags(["-I/usr/include/libnl3"])],
      linkerSettings: [.linkedLibrary("nl-3"), .linkedLibrary("nl-genl-3")]),
    // Pure: path states and selectors over a LUN's sessions, generic over a clock.
    .target(name: "Multipath", dependencies: ["Failure"]),
    // I/O: the kernel's NBD driver over generic netlink.
    .target(
      name: "NBDKernel",
      dependencies: ["CNetlink", "Failure", .product(name: "Logging", package: "swift-log")]),
    // Glue: a Volume = one LUN served over NBD sockets (kernel socketpairs or an export).
    .target(
      name: "Bridge",
      dependencies: [
        "ISCSIInitiator", "ISCSIProtocol", "SCSI", "NBDProtocol", "NBDKernel", "Multipath", "Failure",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "NIOTLS", package: "swift-nio"),
        .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
      ]),
    // main.swift holds the @main command; with more than one file in the target SwiftPM
    // compiles main.swift as top-level code unless told otherwise.
    .executableTarget(
      name: "lunbridge",
      dependencies: [
        "ISCSIInitiator", "ISCSIProtocol", "SCSI", "Bridge", "NBDKernel", "Multipath", "CBuildInfo", "Failure",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
      ],
      // The manual pages' sources (make man).
      exclude: ["Manual"]),
    // Fuzz targets for every decoder of peer bytes: `make fuzz` builds them with
    // libFuzzer (-sanitize=fuzzer,address -D FUZZING); without it the binary replays the
    // corpus in Tests/fuzz/corpus.
    .executableTarget(
      name: "lunbridge-fuzz",
      dependencies: [
        "ISCSIProtocol", "NBDProtocol", "SCSI", "CFuzzDriver", .product(name: "NIOCore", package: "swift-nio"),
      ]),
    .target(name: "CFuzzDriver"),
    // Counts malloc calls in the process that links it (benchmarks only).
    .target(name: "CAllocationCounter"),
    // Benchmark of the PDU codec (not a test): `make bench-codec`.
    .executableTarget(
      name: "lunbridge-codec-bench",
      dependencies: [
        "ISCSIProtocol", "CAllocationCounter",
        .product(name: "NIOCore", package: "swift-nio"),
      ]),
    .testTarget(name: "SCSITests", dependencies: ["SCSI"]),
    .testTarget(name: "MultipathTests", dependencies: ["Multipath"]),
    .testTarget(
      name: "NBDProtocolTests",
      dependencies: ["NBDProtocol", .product(name: "NIOCore", package: "swift-nio")]),
    .testTarget(
      name: "BridgeTests",
      dependencies: [
        "Bridge", "NBDProtocol", "NBDKernel", "ISCSIInitiator", "ISCSIProtocol", "SCSI", "Failure",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "Logging", package: "swift-log"),
      ]),
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
        "ISCSIInitiator", "ISCSIProtocol", "SCSI", "Bridge", "NBDProtocol", "CAllocationCounter",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ]),
  ],
  swiftLanguageModes: [.v6]
)

// Release builds optimise across module boundaries: the generic scheduler
// (MultipathStateMachine<ContinuousClock>) and the protocol types are used from Bridge,
// and unspecialised generic code there cost a third of the CPU per I/O in runtime
// metadata lookups, retains and value-witness copies (perf record of `serve`). They also
// leave out the run-time exclusivity checks of class properties (swift_beginAccess and
// its thread-local access set: 6 % of the CPU per I/O); the state is confined to one
// event loop, and debug builds, which run the tests, keep the checks.
let cTargets: Set<String> = ["CCRC32C", "CNetlink", "CFuzzDriver", "CAllocationCounter", "CBuildInfo"]
// The Makefile's builds (and so CI's) also treat every warning in lunbridge's own code,
// Swift and C, as an error (LUNBRIDGE_WARNINGS_AS_ERRORS=1; `make WARNINGS_AS_ERRORS=0`
// turns it off); a plain `swift build` keeps warnings as warnings, so a newer compiler's
// new warning does not stop a user's build. Dependencies are not affected.
let warningsAsErrors = Context.environment["LUNBRIDGE_WARNINGS_AS_ERRORS"] == "1"
for target in package.targets where target.type != .system && target.type != .binary {
  if cTargets.contains(target.name) {
    if warningsAsErrors { target.cSettings = (target.cSettings ?? []) + [.unsafeFlags(["-Werror"])] }
    continue
  }
  var settings: [SwiftSetting] = [
    .unsafeFlags(["-cross-module-optimization", "-enforce-exclusivity=unchecked"], .when(configuration: .release))
  ]
  if warningsAsErrors { settings.append(.unsafeFlags(["-warnings-as-errors"])) }
  target.swiftSettings = (target.swiftSettings ?? []) + settings
}
