// swift-tools-version: 6.1
// libFuzzer harnesses for PrefixKV's decoders of untrusted bytes (see README.md). Not part of the
// library: build through `run.sh`, which passes `-sanitize=fuzzer,address` and `-enable-testing`
// to every Swift module (so the root package's targets stay free of `unsafeFlags`).
import PackageDescription

let prefixKV: Target.Dependency = .product(name: "PrefixKV", package: "PrefixKV")

let package = Package(
    name: "PrefixKVFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "PrefixKV", path: "../..")],
    targets: [
        // The files of Sources/KVTools the harnesses need (trace parser, prompt builder, the
        // `kvctl stats` formatter), compiled from the same sources through symlinks: KVTools is
        // not a product of the root package, and these are not worth making public API.
        .target(name: "KVToolsSubset", dependencies: [prefixKV]),
        .target(name: "FuzzSupport", dependencies: [prefixKV]),
        .executableTarget(name: "fuzz-record", dependencies: [prefixKV, "FuzzSupport"]),
        .executableTarget(name: "fuzz-store", dependencies: [prefixKV, "FuzzSupport", "KVToolsSubset"]),
        .executableTarget(name: "fuzz-trace", dependencies: ["FuzzSupport", "KVToolsSubset"]),
        .executableTarget(name: "fuzz-meta", dependencies: [prefixKV, "FuzzSupport", "KVToolsSubset"]),
    ]
)
