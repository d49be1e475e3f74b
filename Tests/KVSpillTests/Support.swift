import Foundation
import KVCache
import KVCore
import KVTestSupport
import XCTest
@testable import KVSpill

/// A fresh directory under the system temp dir, removed when the test ends.
func makeTemporaryDirectory(_ test: XCTestCase, function: String = #function) throws -> String {
    let path = NSTemporaryDirectory() + "kvspilltests-\(function.prefix(while: { $0 != "(" }))-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// 2 layers × 2 KV heads × head dim 16 × fp16, 16-token blocks: 4 KiB of KV per block.
let testLayout = try! KVLayout(layerCount: 2, kvHeadCount: 2, headDim: 16, blockSize: 16, dtype: .float16)

/// Bytes of one stored record of a `testLayout` block with 16 tokens in the default namespace:
/// what store limits in whole records are made of.
let testRecordBytes = SpillRecord.payloadOffset(namespaceBytes: Namespace.default.rawValue.utf8.count, tokenCount: 16)
    + testLayout.blockBytes

/// The tokens of block `index` of chain `chain`: distinct across chains and positions.
func blockTokens(chain: Int, index: Int, blockSize: Int = 16) -> [TokenID] {
    (0..<blockSize).map { TokenID(chain * 100_000 + index * blockSize + $0) }
}

/// The KV a block of `tokens` holds in these tests: bytes derived from the tokens alone, so any
/// process can regenerate what a restored block must contain.
func expectedPayload(tokens: [TokenID], layout: KVLayout) -> [UInt8] {
    var rng = SeededRandom(seed: tokens.reduce(0x5EED) { $0 &* 31 &+ UInt64(bitPattern: Int64($1)) })
    let words = (0..<(layout.blockBytes + 7) / 8).map { _ in rng.next() }
    return words.withUnsafeBytes { Array($0.prefix(layout.blockBytes)) }
}

func fill(_ arena: KVPageArena, block: BlockID, tokens: [TokenID]) {
    let payload = expectedPayload(tokens: tokens, layout: arena.layout)
    payload.withUnsafeBytes { arena.copyIn(block, from: $0) }
}

func contents(_ arena: KVPageArena, block: BlockID) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: arena.layout.blockBytes)
    out.withUnsafeMutableBytes { arena.copyOut(block, into: $0) }
    return out
}

/// The store's protocol calls with arrays, for readable tests.
extension ColdPrefixStore {
    func key(namespace: Namespace = .default, chain: [[TokenID]]) -> PrefixKey {
        chain.reduce(rootKey(namespace: namespace)) { parent, tokens in tokens.withUnsafeBufferPointer { childKey(parent: parent, tokens: $0) } }
    }

    func spill(_ key: PrefixKey, _ namespace: Namespace, _ tokens: [TokenID], block: BlockID, arena: KVPageArena?) {
        tokens.withUnsafeBufferPointer { spill(key: key, namespace: namespace, tokens: $0, block: block, arena: arena) }
    }

    func restore(_ key: PrefixKey, _ namespace: Namespace, _ tokens: [TokenID], into block: BlockID, arena: KVPageArena?) -> Bool {
        tokens.withUnsafeBufferPointer { restore(key: key, namespace: namespace, tokens: $0, into: block, arena: arena) }
    }

    func spill(_ key: PrefixKey, _ tokens: [TokenID], block: BlockID, arena: KVPageArena?) {
        spill(key, .default, tokens, block: block, arena: arena)
    }

    func restore(_ key: PrefixKey, _ tokens: [TokenID], into block: BlockID, arena: KVPageArena?) -> Bool {
        restore(key, .default, tokens, into: block, arena: arena)
    }

    func contains(_ key: PrefixKey, _ tokens: [TokenID]) -> Bool {
        tokens.withUnsafeBufferPointer { contains(key: key, tokens: $0) }
    }
}
