// swift-tools-version: 6.1
// PrefixKV: a prefix-sharing KV-cache manager for LLM serving stacks.
//
// No target carries `unsafeFlags`: serving stacks depend on PrefixKV by version, and SwiftPM
// refuses a versioned dependency on a package whose targets use them. The SIMD kernels get their
// instruction sets from per-function `target` attributes in the C target instead.
import PackageDescription

let package = Package(
    name: "PrefixKV",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "PrefixKV", targets: ["KVCore", "KVCache", "KVAttention", "LMDB", "KVSpill"]),
        // The cache and the kernels without the spill tier: builds without liblmdb or swift-crypto.
        .library(name: "PrefixKVCache", targets: ["KVCore", "KVCache", "KVAttention"]),
        .executable(name: "kvctl", targets: ["kvctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.0.0"..<"5.0.0"),
    ],
    targets: [
        // Shared vocabulary: ids, layout, page arenas, block-table batches, decode plans.
        .target(name: "KVCore"),
        // Block pool, token-exact prefix tree, sequences, the thread-safe manager.
        .target(
            name: "KVCache",
            dependencies: [
                "KVCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]),
        // Innermost SIMD loops (AVX-512 / AVX2 / portable), chosen at run time.
        .target(name: "CKVKernels"),
        // Reference, paged and bifurcated (cascade) decode attention.
        .target(name: "KVAttention", dependencies: ["KVCore", "CKVKernels"]),
        // liblmdb from the system (Debian: liblmdb-dev).
        .systemLibrary(name: "CLMDB", pkgConfig: "lmdb", providers: [.apt(["liblmdb-dev"])]),
        // A thin Swift wrapper over LMDB that knows nothing of KV.
        .target(name: "LMDB", dependencies: ["CLMDB"]),
        // The LMDB spill tier for cold prefixes.
        .target(
            name: "KVSpill",
            dependencies: [
                "KVCore", "KVCache", "LMDB",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // What kvctl does (replay, stress, bench, demo, stats), as a library so tests can call it.
        .target(
            name: "KVTools",
            dependencies: [
                "KVCore", "KVCache", "KVAttention", "LMDB", "KVSpill",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "kvctl",
            dependencies: [
                "KVTools", "KVCore", "KVSpill",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),

        .target(name: "KVTestSupport", dependencies: ["KVCore"], path: "Tests/KVTestSupport"),
        .testTarget(name: "KVCoreTests", dependencies: ["KVCore", "KVTestSupport"]),
        .testTarget(
            name: "KVCacheTests",
            dependencies: ["KVCache", "KVTestSupport", .product(name: "MetricsTestKit", package: "swift-metrics")]),
        .testTarget(name: "KVAttentionTests", dependencies: ["KVAttention", "KVCache", "KVSpill", "KVTestSupport"]),
        .testTarget(name: "LMDBTests", dependencies: ["LMDB", "KVTestSupport"]),
        .testTarget(
            name: "KVSpillTests",
            dependencies: ["KVSpill", "KVCache", "LMDB", "KVTestSupport", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "KVToolsTests", dependencies: ["KVTools", "KVTestSupport"]),
        .testTarget(name: "DocSnippetTests", dependencies: ["kvctl", "KVCore", "KVCache", "KVAttention", "KVSpill"]),
    ]
)
