import Testing
import KVCache
import KVCore
@testable import KVTools

@Suite struct StressTests {
    @Test func shortConcurrentRunPasses() throws {
        let report = try stress(StressOptions(threads: 3, seconds: 2, seed: 20_250_101, capacityBlocks: 96))
        #expect(report.passed, "seed \(report.seed): \(report.violations.prefix(5))")
        #expect(report.stats.usedBlocks == 0 && report.stats.liveSequences == 0)
        #expect(report.counts.admits > 0 && report.counts.appends > 0 && report.counts.truncations > 0 && report.counts.forks > 0 && report.counts.lookups > 0)
        #expect(report.counts.verifiedBlocks > 0)
        #expect(report.counts.invariantChecks > 0)
        #expect(report.stats.evictedBlocks > 0)
        #expect(report.stats.hitTokens > 0)
    }

    /// The read-back would catch a wrong page: one flipped byte fails the check.
    @Test func patternCheckCatchesACorruptedPage() throws {
        let layout = try KVLayout(layerCount: 2, kvHeadCount: 2, headDim: 4, blockSize: 4)
        let arena = KVPageArena(layout: layout, capacityBlocks: 4)
        let pattern = KVPattern(layout: layout)
        let tokens: [TokenID] = [5, 6, 7, 8, 9, 10]
        let table: [Int32] = [2, 3]
        pattern.write(tokens, 0..<tokens.count, table: table, arena: arena)
        #expect(pattern.check(tokens, blockIndex: 0, slots: 4, table: table, arena: arena) == nil)
        #expect(pattern.check(tokens, blockIndex: 1, slots: 2, table: table, arena: arena) == nil)
        #expect(pattern.check([5, 6, 7, 99], blockIndex: 0, slots: 4, table: table, arena: arena) != nil)
        arena.withUnsafeMutableBlockBytes(BlockID(3), layer: 1, kind: .values) { $0[3] ^= 0x40 }
        #expect(pattern.check(tokens, blockIndex: 1, slots: 2, table: table, arena: arena) != nil)
    }

    /// The failure hint named only --seed and --threads; a run is fixed by all of its options.
    @Test func reproducingCommandNamesEveryOption() {
        let options = StressOptions(threads: 3, seconds: 2.5, seed: 9, capacityBlocks: 96)
        #expect(options.reproducingCommand(storePath: nil) == "kvctl stress --seed 9 --threads 3 --seconds 2.5 --capacity-blocks 96")
        #expect(options.reproducingCommand(storePath: "/tmp/my store's") == #"kvctl stress --seed 9 --threads 3 --seconds 2.5 --capacity-blocks 96 --store '/tmp/my store'\''s'"#)
    }

    /// The KV read-back covers restored blocks too: a store that hands back corrupt KV (one byte
    /// flipped) or none at all (a hit that never wrote the page) fails the run.
    @Test(arguments: [CorruptingStore.Mode.flip, .noCopy])
    func corruptRestoresFailTheRun(mode: CorruptingStore.Mode) throws {
        let holder = Locked<CorruptingStore?>(nil)
        let report = try stress(StressOptions(threads: 3, seconds: 1, seed: 7, capacityBlocks: 96, makeStore: { layout in
            let s = CorruptingStore(layout: layout, mode: mode)
            holder.withLock { $0 = s }
            return s
        }))
        let restores = holder.withLock { $0!.restores.withLock { $0 } }
        #expect(restores > 0)
        #expect(!report.passed, "every restored block carries corrupt KV, yet stress passed")
    }
}

/// A cold store that keeps spilled blocks in memory and, on restore, corrupts the KV it hands back
/// (mode .flip: one byte flipped; mode .noCopy: reports a hit without writing the page at all).
final class CorruptingStore: ColdPrefixStore, @unchecked Sendable {
    enum Mode { case flip, noCopy }
    let mode: Mode
    let layout: KVLayout
    private let records = Locked<[PrefixKey: ([TokenID], [UInt8])]>([:])
    let restores = Locked(0)
    init(layout: KVLayout, mode: Mode) { self.layout = layout; self.mode = mode }

    func rootKey(namespace: Namespace) -> PrefixKey { PrefixKey(UInt64(truncatingIfNeeded: namespace.rawValue.hashValue), 1, 2, 3) }
    func childKey(parent: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> PrefixKey {
        var h = parent.bytes.0
        for t in tokens { h = (h ^ UInt64(UInt32(bitPattern: t))) &* 0x100_0000_01B3 }
        return PrefixKey(h, parent.bytes.0 &+ 1, UInt64(tokens.count), 7)
    }
    func spill(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, block: BlockID, arena: KVPageArena?) {
        guard let arena else { return }
        var bytes = [UInt8](repeating: 0, count: layout.blockBytes)
        bytes.withUnsafeMutableBytes { arena.copyOut(block, into: $0) }
        records.withLock { $0[key] = (Array(tokens), bytes) }
    }
    func restore(key: PrefixKey, namespace: Namespace, tokens: UnsafeBufferPointer<TokenID>, into block: BlockID, arena: KVPageArena?) -> Bool {
        guard let arena, var r = records.withLock({ $0[key] }), r.0 == Array(tokens) else { return false }
        restores.withLock { $0 += 1 }
        if mode == .noCopy { return true }
        r.1[0] ^= 0xFF
        r.1.withUnsafeBytes { arena.copyIn(block, from: $0) }
        return true
    }
    func contains(key: PrefixKey, tokens: UnsafeBufferPointer<TokenID>) -> Bool { records.withLock { $0[key]?.0 == Array(tokens) } }
    func publish(stats: KVCacheStats) {}
    var storeLayout: KVLayout? { layout }
}

