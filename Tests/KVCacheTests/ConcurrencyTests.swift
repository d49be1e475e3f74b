import Dispatch
import KVCore
import KVTestSupport
import Testing
import KVCache

/// Several threads drive one manager at once (run under `swift test --sanitize=thread`).
@Suite struct ConcurrencyTests {
    /// Both publication modes: under `.whenComputed` threads also report progress
    /// (`markComputed`), which publishes blocks and extends fork relatives' chains; per-thread
    /// namespaces come and go, so namespaces are retired and their slots reused concurrently;
    /// speculative steps append drafts and truncate the rejected ones.
    @Test(arguments: [BlockPublication.atAdmission, .whenComputed])
    func concurrentRequestsStayConsistent(publication: BlockPublication) throws {
        let cache = try KVCacheManager(layout: .small(blockSize: 4), capacityBlocks: 256, publishesBlocks: publication)
        let threads = 4
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            var rng = SeededRandom(seed: UInt64(100 + t))
            var mine: [SequenceHandle] = []
            for _ in 0..<1500 {
                do {
                    let op = mine.isEmpty ? 0 : Int.random(in: 0..<10, using: &rng)
                    switch op {
                    case 0...2:
                        let prompt = (0..<Int.random(in: 1...24, using: &rng)).map { _ in TokenID.random(in: 0..<2, using: &rng) }
                        let ns: Namespace = Int.random(in: 0..<4, using: &rng) == 0 ? Namespace("t\(t)-\(Int.random(in: 0..<50, using: &rng))")
                                                                                  : (t % 2 == 0 ? "even" : "odd")
                        let a = try cache.admit(prompt, namespace: ns)
                        mine.append(a.sequence)
                    case 9:
                        let h = mine.randomElement(using: &rng)!
                        try cache.markComputed(h, computedTokens: Int.random(in: 0...(try cache.tokenCount(of: h)), using: &rng))
                    case 3:
                        try cache.append([TokenID.random(in: 0..<2, using: &rng)], to: mine.randomElement(using: &rng)!)
                    case 4:
                        // A speculative step: drafts appended, some rejected.
                        let h = mine.randomElement(using: &rng)!
                        let drafts = (0..<Int.random(in: 1...5, using: &rng)).map { _ in TokenID.random(in: 0..<2, using: &rng) }
                        try cache.append(drafts, to: h)
                        try cache.truncate(h, toTokenCount: try cache.tokenCount(of: h) - Int.random(in: 0..<drafts.count, using: &rng))
                    case 5:
                        mine += try cache.fork(mine.randomElement(using: &rng)!, count: 2)
                    case 6:
                        // A cancelled request: its unwritten blocks leave the tree.
                        let h = mine.remove(at: Int.random(in: 0..<mine.count, using: &rng))
                        try cache.release(h, computedTokens: Int.random(in: 0...(try cache.tokenCount(of: h)), using: &rng))
                    default:
                        try cache.release(mine.remove(at: Int.random(in: 0..<mine.count, using: &rng)))
                    }
                } catch KVCacheError.insufficientBlocks {
                    if let h = mine.popLast() { try? cache.release(h) }
                } catch {
                    Issue.record("thread \(t): \(error)")
                }
                _ = cache.stats
            }
            for h in mine { try? cache.release(h) }
        }
        cache.checkInvariants()
        #expect(cache.stats.usedBlocks == 0)
        #expect(cache.stats.liveSequences == 0)
        #expect(cache.stats.queryTokens > 0)
    }
}
