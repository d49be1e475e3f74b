import KVCache
import KVCore

/// One stress thread: an engine that owns a few live sequences and drives random operations on
/// them. It writes the KV of every token it computes (the uncached part of a prompt, appended
/// tokens), publishes those blocks, and now and then reads a sequence's pages back.
struct StressWorker: Sendable {
    /// A sequence this worker owns and the tokens it holds (what its pages must encode).
    struct Live {
        var handle: SequenceHandle
        var tokens: [TokenID]
    }

    let shared: StressShared
    let seed: UInt64
    let checksInvariants: Bool
    static let maxLive = 6

    func run() {
        var rng = SeededRandom(seed: seed)
        var live: [Live] = []
        var counts = StressCounts()
        var step = 0
        while monotonicNanos() < shared.deadline {
            step += 1
            do {
                switch rng.below(100) {
                case 0..<30 where live.count < Self.maxLive: try admit(&live, &counts, &rng)
                case 30..<50 where !live.isEmpty: try append(&live, &counts, &rng)
                case 50..<58 where !live.isEmpty && live.count < Self.maxLive: try fork(&live, &counts, &rng)
                case 58..<70: try lookup(&counts, &rng)
                case 70..<80 where !live.isEmpty: try verify(live[rng.below(live.count)], &counts)
                default: if !live.isEmpty { try release(&live, at: rng.below(live.count), &counts) }
                }
            } catch {
                shared.fail("seed \(seed) step \(step): unexpected error \(error)")
            }
            if checksInvariants && step % 200 == 0 {
                shared.cache.checkInvariants()
                counts.invariantChecks += 1
            }
        }
        for s in live {
            do { try shared.cache.release(s.handle) } catch { shared.fail("final release of \(s.handle): \(error)") }
            counts.releases += 1
        }
        shared.counts.withLock { $0 = $0 + counts }
    }

    // MARK: - Operations

    /// Prompts come from a few families with shared system prefixes, then a short random tail
    /// from a small alphabet, so requests hit each other's blocks often and at varied depths.
    private func prompt(_ rng: inout SeededRandom) -> [TokenID] {
        let family = TokenID(rng.below(6))
        let prefix = rng.below(5) == 0 ? 0 : 4 + rng.below(40)
        var tokens = (0..<prefix).map { 1000 * (family + 1) + TokenID($0) }
        for _ in 0..<(1 + rng.below(20)) { tokens.append(TokenID(rng.below(8))) }
        return tokens
    }

    private func admit(_ live: inout [Live], _ counts: inout StressCounts, _ rng: inout SeededRandom) throws {
        let tokens = prompt(&rng)
        let a: Admission
        do {
            a = try shared.cache.admit(tokens)
        } catch {
            guard case .insufficientBlocks = error else { throw error }
            counts.refused += 1
            if !live.isEmpty { try release(&live, at: rng.below(live.count), &counts) }
            return
        }
        counts.admits += 1
        guard a.cachedTokenCount % shared.pattern.layout.blockSize == 0, a.cachedTokenCount <= tokens.count,
              a.blockTable.count == (tokens.count + shared.pattern.layout.blockSize - 1) / shared.pattern.layout.blockSize else {
            shared.fail("admission \(a) inconsistent with a prompt of \(tokens.count) tokens")
            return
        }
        shared.pattern.write(tokens, a.cachedTokenCount..<tokens.count, table: a.blockTable, arena: shared.cache.arena!)
        // Blocks restored from a store were filled under the manager's lock during admit: they
        // are final now, so they are published (and so checked) along with the computed ones.
        publish(tokens, table: a.blockTable, from: a.memoryHitTokens / shared.pattern.layout.blockSize)
        live.append(Live(handle: a.sequence, tokens: tokens))
    }

    private func append(_ live: inout [Live], _ counts: inout StressCounts, _ rng: inout SeededRandom) throws {
        let i = rng.below(live.count)
        let extra = (0..<(1 + rng.below(shared.pattern.layout.blockSize + 2))).map { _ in TokenID(rng.below(8)) }
        do {
            try shared.cache.append(extra, to: live[i].handle)
        } catch {
            guard case .insufficientBlocks = error else { throw error }
            counts.refused += 1
            return
        }
        counts.appends += 1
        let start = live[i].tokens.count
        live[i].tokens += extra
        let table = try shared.cache.blockTable(of: live[i].handle)
        shared.pattern.write(live[i].tokens, start..<live[i].tokens.count, table: table, arena: shared.cache.arena!)
        publish(live[i].tokens, table: table, from: start / shared.pattern.layout.blockSize)
        // Now and then the tokens were speculative drafts: their KV is written (blocks they filled
        // are cached and stay so), and a random tail of them is rejected.
        guard rng.below(4) == 0 else { return }
        let keep = live[i].tokens.count - rng.below(extra.count)
        do {
            try shared.cache.truncate(live[i].handle, toTokenCount: keep)
        } catch {
            guard case .insufficientBlocks = error else { throw error }
            counts.refused += 1
            return
        }
        counts.truncations += 1
        live[i].tokens.removeSubrange(keep...)
    }

    private func fork(_ live: inout [Live], _ counts: inout StressCounts, _ rng: inout SeededRandom) throws {
        let parent = live[rng.below(live.count)]
        for child in try shared.cache.fork(parent.handle, count: 1 + rng.below(2)) {
            live.append(Live(handle: child, tokens: parent.tokens))
        }
        counts.forks += 1
    }

    private func release(_ live: inout [Live], at i: Int, _ counts: inout StressCounts) throws {
        try shared.cache.release(live.remove(at: i).handle)
        counts.releases += 1
    }

    private func lookup(_ counts: inout StressCounts, _ rng: inout SeededRandom) throws {
        let tokens = prompt(&rng)
        let found = try shared.cache.lookup(tokens)
        counts.lookups += 1
        if found.memoryTokens % shared.pattern.layout.blockSize != 0 || found.memoryTokens > tokens.count {
            shared.fail("lookup of \(tokens.count) tokens reported \(found.memoryTokens) cached")
        }
    }

    /// Reads back a sequence: its tokens as the manager stores them, and the pages of every
    /// block whose published content is this sequence's.
    private func verify(_ s: Live, _ counts: inout StressCounts) throws {
        let stored = try shared.cache.tokens(of: s.handle)
        if stored != s.tokens { shared.fail("\(s.handle) holds tokens \(stored), expected \(s.tokens)") }
        let table = try shared.cache.blockTable(of: s.handle)
        let bs = shared.pattern.layout.blockSize
        for (i, entry) in shared.published.entries(of: table).enumerated() {
            guard let entry, entry.slots <= min(bs, s.tokens.count - i * bs),
                  entry.fingerprint == PublishedBlocks.fingerprint(s.tokens, blockIndex: i, slots: entry.slots, blockSize: bs) else { continue }
            if let wrong = shared.pattern.check(s.tokens, blockIndex: i, slots: entry.slots, table: table, arena: shared.cache.arena!) {
                shared.fail("\(s.handle): \(wrong)")
            }
            counts.verifiedBlocks += 1
        }
    }

    /// Publishes blocks `from...` of a sequence whose KV this worker has just made final.
    private func publish(_ tokens: [TokenID], table: [Int32], from first: Int) {
        let bs = shared.pattern.layout.blockSize
        for i in first..<table.count {
            let slots = min(bs, tokens.count - i * bs)
            shared.published.publish(table[i], .init(fingerprint: PublishedBlocks.fingerprint(tokens, blockIndex: i, slots: slots, blockSize: bs), slots: slots))
        }
    }
}
