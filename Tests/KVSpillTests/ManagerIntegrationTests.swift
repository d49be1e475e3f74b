import Foundation
import KVCache
import KVCore
import XCTest
@testable import KVSpill

/// The spill tier under the real cache manager: eviction spills, a later admission restores.
final class ManagerIntegrationTests: XCTestCase {
    /// A prompt of `blocks` whole blocks from chain `chain`.
    func prompt(chain: Int, blocks: Int) -> [TokenID] { (0..<blocks).flatMap { blockTokens(chain: chain, index: $0) } }

    /// Writes the test KV of every block of `admission` (as an engine's prefill would).
    func prefill(_ manager: KVCacheManager, _ admission: Admission, prompt: [TokenID]) {
        for (i, block) in admission.blockTable.enumerated() {
            fill(manager.arena!, block: BlockID(block), tokens: Array(prompt[(i * 16)..<((i + 1) * 16)]))
        }
    }

    func assertKV(_ manager: KVCacheManager, _ admission: Admission, prompt: [TokenID], file: StaticString = #filePath, line: UInt = #line) {
        for (i, block) in admission.blockTable.enumerated() {
            XCTAssertEqual(contents(manager.arena!, block: BlockID(block)),
                           expectedPayload(tokens: Array(prompt[(i * 16)..<((i + 1) * 16)]), layout: testLayout),
                           "block \(i)", file: file, line: line)
        }
    }

    func store(_ path: String, mode: SpillStoreConfiguration.WriteMode) throws -> LMDBSpillStore {
        try LMDBSpillStore(SpillStoreConfiguration(path: path, layout: testLayout, limitBytes: 8 << 20, writeMode: mode, durable: false))
    }

    func testEvictedPrefixesSpillAndANewAdmissionRestoresThem() throws {
        for mode in [SpillStoreConfiguration.WriteMode.synchronous, .background(queueLimitBytes: 1 << 20)] {
            let cold = try store(try makeTemporaryDirectory(self) + "/\(mode == .synchronous ? "sync" : "bg")", mode: mode)
            let manager = try KVCacheManager(layout: testLayout, capacityBlocks: 8, allocatesPages: true, coldStore: cold)
            let a = prompt(chain: 1, blocks: 4)
            let first = try manager.admit(a)
            XCTAssertEqual(first.cachedTokenCount, 0)
            prefill(manager, first, prompt: a)
            try manager.release(first.sequence)
            // Pressure: two other prompts take every block, evicting (and spilling) A's.
            for chain in 2...3 {
                let p = prompt(chain: chain, blocks: 4)
                let adm = try manager.admit(p)
                prefill(manager, adm, prompt: p)
                try manager.release(adm.sequence)
            }
            XCTAssertGreaterThanOrEqual(manager.stats.spilledBlocks, 4)
            let again = try manager.admit(a)
            XCTAssertEqual(again.memoryHitTokens, 0)
            XCTAssertEqual(again.storeHitTokens, 64, "\(mode)")
            assertKV(manager, again, prompt: a)
            XCTAssertEqual(manager.stats.storeHitTokens, 64)
            XCTAssertEqual(manager.stats.restoredBlocks, 4)
            XCTAssertEqual(cold.counters.restoreHits, 4)
            // A lookup probes the store without restoring.
            let b = prompt(chain: 2, blocks: 4)
            XCTAssertGreaterThan(try manager.lookup(b, probeStore: true).storeTokens, 0)
            try manager.release(again.sequence)
            manager.checkInvariants()
            manager.publishStats()
            cold.close()
            XCTAssertEqual(try SpillStoreReport.inspect(path: cold.configuration.path).cache, manager.stats)
        }
    }

    func testNamespacesStayIsolatedInTheStore() throws {
        let cold = try store(try makeTemporaryDirectory(self) + "/s", mode: .synchronous)
        let manager = try KVCacheManager(layout: testLayout, capacityBlocks: 4, allocatesPages: true, coldStore: cold)
        let a = prompt(chain: 1, blocks: 4)
        let adm = try manager.admit(a, namespace: "tenant-a")
        prefill(manager, adm, prompt: a)
        try manager.release(adm.sequence)
        let pressure = try manager.admit(prompt(chain: 2, blocks: 4), namespace: "tenant-a")
        try manager.release(pressure.sequence)
        let other = try manager.admit(a, namespace: "tenant-b")
        XCTAssertEqual(other.cachedTokenCount, 0, "tenant-b never sees tenant-a's spilled prefix")
        try manager.release(other.sequence)
        let back = try manager.admit(a, namespace: "tenant-a")
        XCTAssertEqual(back.storeHitTokens, 64, "tenant-a still gets its own prefix back")
        assertKV(manager, back, prompt: a)
        XCTAssertEqual(cold.counters.corruptDropped, 0)
        XCTAssertEqual(Set(try cold.report().entriesPerNamespace.keys), ["tenant-a", "tenant-b"])
    }

    func testAStoreReopenedByANewManagerRestoresAnEarlierProcessesPrefixes() throws {
        let path = try makeTemporaryDirectory(self) + "/s"
        let a = prompt(chain: 7, blocks: 3)
        do {
            let cold = try store(path, mode: .background(queueLimitBytes: 1 << 20))
            let manager = try KVCacheManager(layout: testLayout, capacityBlocks: 3, allocatesPages: true, coldStore: cold)
            let adm = try manager.admit(a)
            prefill(manager, adm, prompt: a)
            try manager.release(adm.sequence)
            let pressure = try manager.admit(prompt(chain: 8, blocks: 3))
            try manager.release(pressure.sequence)
            cold.close()
        }
        let cold = try store(path, mode: .background(queueLimitBytes: 1 << 20))
        let manager = try KVCacheManager(layout: testLayout, capacityBlocks: 3, allocatesPages: true, coldStore: cold)
        let adm = try manager.admit(a)
        XCTAssertEqual(adm.storeHitTokens, 48)
        assertKV(manager, adm, prompt: a)
        cold.checkInvariants()
    }

    /// The live record follows the manager without anyone calling `publishStats()`: mutations
    /// publish every interval, and the manager publishes its last stats when it goes away.
    func testTheManagerPublishesItsStatsPeriodicallyAndWhenItGoesAway() throws {
        let cold = try store(try makeTemporaryDirectory(self) + "/s", mode: .background(queueLimitBytes: 1 << 20))
        let a = prompt(chain: 11, blocks: 2)
        do {
            let manager = try KVCacheManager(layout: testLayout, capacityBlocks: 8, allocatesPages: true, coldStore: cold,
                                             statsPublishInterval: .zero)
            let adm = try manager.admit(a)
            try manager.release(adm.sequence)
            cold.flush()
            XCTAssertEqual(try cold.report().cache, manager.stats,
                           "a zero interval publishes after every mutation")
        }
        var last: KVCacheStats
        do {
            let slow = try KVCacheManager(layout: testLayout, capacityBlocks: 8, allocatesPages: true, coldStore: cold,
                                          statsPublishInterval: .seconds(3600))
            _ = try slow.admit(a)   // the first mutation publishes, the next ones wait for the interval
            let before = slow.stats
            _ = try slow.admit(a)
            cold.flush()
            XCTAssertEqual(try cold.report().cache, before)
            last = slow.stats
            XCTAssertNotEqual(last, before)
        }
        cold.close()
        XCTAssertEqual(try SpillStoreReport.inspect(path: cold.configuration.path).cache, last,
                       "the manager publishes its last stats when it is deinitialised")
    }
}
