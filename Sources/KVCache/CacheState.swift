import KVCore

/// What the eviction observer hook receives: a cached block leaving memory.
public struct EvictedBlock: Sendable, Equatable {
    /// The block being evicted (its pages are still intact during the hook).
    public var block: BlockID
    /// The namespace whose tree held it.
    public var namespace: Namespace
    /// How many blocks precede it in its prefix (its depth in the tree).
    public var depth: Int
}

/// One live sequence: its block table (token order) and how many of its tokens hold KV.
struct SequenceState {
    var namespace: Int32
    var blocks: [Int32]
    var tokenCount: Int
    /// Leading blocks of `blocks` that are nodes of the prefix tree. New full blocks join the tree
    /// only while this equals their index (an unbroken chain from the root).
    var treeBlocks: Int
    /// Leading blocks whose KV was present when the sequence got them (its memory and store hits;
    /// a fork child inherits its parent's count). Blocks from here on were brought in by this
    /// sequence as new, so their KV exists only once its engine has written it:
    /// `release(_:computedTokens:)` may drop them from the tree, never a hit.
    var firstNewBlock: Int
    /// The first position whose KV this sequence may write: below it the KV came with the
    /// sequence (its memory and store hits; a fork child inherits its parent's) and belongs to
    /// other requests, so `slotMapping(for:)` refuses to map it. `firstNewBlock × blockSize` but
    /// for `truncate`, which lowers it to the kept token count (the positions after it are
    /// rewritten in a block the sequence holds alone). Never above `tokenCount`.
    var firstOwnPosition: Int
    /// The most tokens (from the first) `markComputed` has reported written; a fork child inherits
    /// its parent's. `release(_:computedTokens:)` never drops a block below it: telling less than
    /// before changes nothing, as with `markComputed` itself (a cancelled fork sample reporting 0
    /// would otherwise drop its parent's finished prompt from the cache).
    var reportedComputed = 0
    /// Metadata-only managers: the source of the copy-on-write this sequence's last `append` or
    /// `truncate` returned, still referenced by it until `copied(_:)` or its next `append`,
    /// `truncate` or release (`CacheState.settleCopy`), by which time its engine has copied it. Not in `blocks`. (With a page arena the manager copies under its lock: always nil.)
    var copySource: Int32?
}

/// When a sequence's new full blocks join the prefix tree, where other requests can match them.
public enum BlockPublication: Sendable, Equatable {
    /// At admission (prompt blocks) and the moment `append` fills them: the engine must have
    /// written a block's KV before any request that matched it reads it. Simple, and identical
    /// prompts admitted together share at once; right when every admitted prompt is prefilled in
    /// the next step.
    case atAdmission
    /// Only once the engine reports their KV written (`markComputed`, or a release): no request
    /// ever matches a block still waiting for its prefill. For chunked prefill, queued or
    /// preempted prefills — any engine that admits a prompt before computing all of it.
    case whenComputed
}

/// The single-threaded cache: pool, prefix tree, sequences. `KVCacheManager` wraps it in a lock.
///
/// Every mutation plans first and checks that enough blocks are free or evictable before it
/// changes anything, so a failing call leaves the state exactly as it was.
struct CacheState {
    let layout: KVLayout
    let blockSize: Int
    var pool: BlockPool
    var index: PrefixIndex
    /// The tokens each block holds: `blockSize` slots per block, block 0 unused.
    var blockTokens: [TokenID]
    /// Live sequences by serial (the handle's `serial`; its `manager` is checked in `live`).
    var sequences: [UInt64: SequenceState] = [:]
    var nextSequence: UInt64 = 1
    /// This state's process-unique id, carried in every handle it issues.
    let managerID = SequenceHandle.newManagerID()
    var namespaces: [Namespace: Int32] = [:]
    var namespaceNames: [Namespace] = []
    /// Per namespace index: its live sequences plus its root's children in the tree (a namespace
    /// has tree blocks exactly when its root has children; counting those, not every block,
    /// keeps the count off the per-block paths). A namespace nothing uses is retired and its
    /// index reused, so per-user namespaces (cache salts) do not pile up.
    var namespaceUsers: [Int] = []
    /// Indices of retired namespaces, reused first.
    var freeNamespaces: [Int32] = []
    /// Cached (in-tree) blocks with refcount 0: the evictable ones.
    var cachedFreeBlocks = 0
    /// Metadata-only managers: per block, the sequences still referencing it as the source of a
    /// copy-on-write their engine has yet to copy (`SequenceState.copySource`). Those references
    /// keep it from being freed or reused; they do not make it shared (`tableHolders`).
    var copyPins: [Int32: Int32] = [:]
    var logicalBlocks = 0
    var counters = KVCacheStats()
    /// Numbers the stats snapshots the manager hands to its metrics after each call, so a
    /// snapshot that reaches them late (calls race after the lock) never overwrites a newer one.
    var statsVersion: UInt64 = 0
    let arena: KVPageArena?
    let coldStore: (any ColdPrefixStore)?
    /// Cold-store keys per block, computed on demand and forgotten when the block leaves the tree.
    var prefixKeys: [PrefixKey?]
    var rootKeys: [PrefixKey?] = []
    let onEvict: (@Sendable (EvictedBlock) -> Void)?
    let publication: BlockPublication
    /// Blocks this call evicted, to spill once the manager's lock is released (copying hundreds of
    /// MiB out under the lock held every other caller; a synchronous store commits per spill).
    /// Each went to the calling sequence, which has not seen it yet. Empty between calls: the
    /// manager takes them (`takeEvictedSpills`) in the critical section that evicted them.
    var evictedSpills: [DeferredSpill] = []
    /// The spills running outside the lock, which admissions wait for (see `SpillsInFlight`).
    let spillsInFlight = SpillsInFlight()
    /// Restores in flight by the prefix key of their first block (see `RestoreInFlight`).
    var restoring: [PrefixKey: RestoreInFlight] = [:]
    /// Admissions that waited for another's restore of their prefix (for tests).
    var restoreWaits = 0

    init(layout: KVLayout, capacity: Int, arena: KVPageArena?, coldStore: (any ColdPrefixStore)?,
         onEvict: (@Sendable (EvictedBlock) -> Void)?, publication: BlockPublication = .atAdmission) {
        self.layout = layout
        self.blockSize = layout.blockSize
        self.pool = BlockPool(capacity: capacity)
        self.index = PrefixIndex(capacity: capacity)
        self.blockTokens = Array(repeating: 0, count: (capacity + 1) * layout.blockSize)
        self.arena = arena
        self.coldStore = coldStore
        self.prefixKeys = coldStore == nil ? [] : Array(repeating: nil, count: capacity + 1)
        self.onEvict = onEvict
        self.publication = publication
        counters.capacityBlocks = capacity
    }

    // MARK: - Namespaces

    /// The namespace's index, registering it (reusing a retired index) when new. The caller
    /// uses it at once (`useNamespace`), or a later retirement check would not see it.
    mutating func namespaceIndex(_ ns: Namespace) -> Int32 {
        if let k = namespaces[ns] { return k }
        if let k = freeNamespaces.popLast() {
            namespaces[ns] = k
            namespaceNames[Int(k)] = ns
            return k
        }
        let k = Int32(namespaceNames.count)
        namespaces[ns] = k
        namespaceNames.append(ns)
        namespaceUsers.append(0)
        rootKeys.append(nil)
        return k
    }

    mutating func useNamespace(_ k: Int32, times n: Int = 1) { namespaceUsers[Int(k)] += n }

    /// Drops one use; the last one retires the namespace (no sequence names it and its root has
    /// no children, so no tree block is in it and its root hint is clear).
    mutating func unuseNamespace(_ k: Int32) {
        namespaceUsers[Int(k)] -= 1
        invariant(namespaceUsers[Int(k)] >= 0, "CacheState: namespace \(k) used \(namespaceUsers[Int(k)]) times")
        guard namespaceUsers[Int(k)] == 0 else { return }
        namespaces[namespaceNames[Int(k)]] = nil
        namespaceNames[Int(k)] = Namespace("")
        rootKeys[Int(k)] = nil
        freeNamespaces.append(k)
    }

    // MARK: - Matching

    /// The same match for a namespace index that may not exist yet (nil: a namespace this
    /// manager has not seen, which matches nothing). `admit`, `lookup` and tests share it.
    func matchMemory(_ tokens: [TokenID], namespace k: Int32?) -> [Int32] {
        guard let k else { return [] }
        return tokens.withUnsafeBufferPointer { matchMemory($0, namespace: k) }
    }

    /// The cached blocks holding the longest whole-block prefix of `tokens` in namespace `k`.
    func matchMemory(_ tokens: UnsafeBufferPointer<TokenID>, namespace k: Int32) -> [Int32] {
        let full = tokens.count / blockSize
        var matched: [Int32] = []
        var parent = PrefixIndex.rootCode(namespace: k)
        blockTokens.withUnsafeBufferPointer { all in
            @inline(__always) func holds(_ block: Int32, _ chunk: UnsafeBufferPointer<TokenID>) -> Bool {
                tokensEqual(all.baseAddress! + Int(block) &* blockSize, chunk.baseAddress!, count: blockSize)
            }
            for i in 0..<full {
                let chunk = UnsafeBufferPointer(start: tokens.baseAddress! + i * blockSize, count: blockSize)
                // The parent's hinted child first (a chain's next block); else hash and probe.
                var child = index.hintedChild(of: parent)
                if child == 0 || !holds(child, chunk) {
                    guard let found = index.child(of: parent, hash: hashBlockTokens(chunk)), found != child,
                          holds(found, chunk) else { break }
                    child = found
                }
                if matched.isEmpty { matched.reserveCapacity(full) }
                matched.append(child)
                parent = child
            }
        }
        return matched
    }

    // MARK: - Cold-store keys

    mutating func rootKey(_ k: Int32) -> PrefixKey {
        if let key = rootKeys[Int(k)] { return key }
        let key = coldStore!.rootKey(namespace: namespaceNames[Int(k)])
        rootKeys[Int(k)] = key
        return key
    }

    /// The cold-store key of an in-tree block, computed along its chain of ancestors once.
    mutating func prefixKey(of block: Int32) -> PrefixKey {
        if let key = prefixKeys[Int(block)] { return key }
        var chain: [Int32] = [block]
        var p = index.parent[Int(block)]
        while p > 0, prefixKeys[Int(p)] == nil { chain.append(p); p = index.parent[Int(p)] }
        var key = p > 0 ? prefixKeys[Int(p)]! : rootKey(index.namespaceIndex[Int(block)])
        for b in chain.reversed() {
            key = childKey(parent: key, block: b)
            prefixKeys[Int(b)] = key
        }
        return key
    }

    func childKey(parent: PrefixKey, block: Int32) -> PrefixKey {
        blockTokens.withUnsafeBufferPointer { all in
            coldStore!.childKey(parent: parent, tokens: UnsafeBufferPointer(rebasing: all[(Int(block) * blockSize)..<(Int(block + 1) * blockSize)]))
        }
    }

    // MARK: - Allocation

    /// Takes the next block from the free queue, evicting it from the tree when it is cached. The
    /// evicted block is spilled after the call's critical section (`evictedSpills`), or at once
    /// when `writtenNow`: the caller overwrites its pages in this critical section (a copy-on-write).
    /// The caller has checked that the queue holds enough blocks.
    mutating func allocateBlock(writtenNow: Bool = false) -> Int32 {
        guard let b = pool.popFront() else { fatalError("CacheState: free queue empty after the availability check") }
        if index.inTree[Int(b)] {
            evict(b)
            if writtenNow, evictedSpills.last?.block == BlockID(b) { evictedSpills.removeLast().write(to: coldStore!, arena: arena) }
        }
        pool.retain(b)
        return b
    }

    mutating func evict(_ b: Int32) {
        let k = index.namespaceIndex[Int(b)]
        if coldStore != nil {
            let key = prefixKey(of: b)
            blockTokens.withUnsafeBufferPointer { all in
                let tokens = UnsafeBufferPointer(rebasing: all[(Int(b) * blockSize)..<(Int(b + 1) * blockSize)])
                evictedSpills.append(DeferredSpill(key: key, namespace: namespaceNames[Int(k)], tokens: Array(tokens), block: BlockID(b)))
            }
            counters.spilledBlocks += 1
        }
        if let onEvict {
            var depth = 0
            var p = index.parent[Int(b)]
            while p > 0 { depth += 1; p = index.parent[Int(p)] }
            onEvict(EvictedBlock(block: BlockID(b), namespace: namespaceNames[Int(k)], depth: depth))
        }
        uncache(b)
        counters.evictedBlocks += 1
    }

    /// Takes an unreferenced cached leaf out of the prefix tree (and its store key with it): the
    /// step eviction and dropping unwritten blocks share.
    mutating func uncache(_ b: Int32) {
        let k = index.namespaceIndex[Int(b)], rootChild = index.parent[Int(b)] < 0
        index.removeLeaf(b)
        if rootChild { unuseNamespace(k) }
        if coldStore != nil { prefixKeys[Int(b)] = nil }
        if pool.refcount[Int(b)] == 0 { cachedFreeBlocks -= 1 }   // else a pending copy's source
    }

    /// Pins a block for a sequence (a hit takes a cached block out of the evictable set).
    mutating func retain(_ b: Int32) {
        if pool.refcount[Int(b)] == 0 && index.inTree[Int(b)] { cachedFreeBlocks -= 1 }
        pool.retain(b)
    }

    /// Drops a sequence's reference; a block's last reference queues it for reuse: cached blocks at
    /// the tail (kept as long as possible, least recently used first), others at the head.
    mutating func unpin(_ b: Int32) {
        guard pool.release(b) else { return }
        if index.inTree[Int(b)] {
            pool.pushBack(b)
            cachedFreeBlocks += 1
        } else {
            pool.pushFront(b)
        }
    }

    /// Joins a just-filled block to the tree if the sequence's chain from the root is unbroken.
    mutating func insertIfChained(_ seq: inout SequenceState, blockAt position: Int) {
        guard seq.treeBlocks == position else { return }
        let b = seq.blocks[position]
        let parent = position == 0 ? PrefixIndex.rootCode(namespace: seq.namespace) : seq.blocks[position - 1]
        let h = blockTokens.withUnsafeBufferPointer { all in
            hashBlockTokens(UnsafeBufferPointer(rebasing: all[(Int(b) * blockSize)..<(Int(b + 1) * blockSize)]))
        }
        if index.insert(b, parent: parent, hash: h, namespace: seq.namespace) {
            seq.treeBlocks += 1
            if position == 0 { useNamespace(seq.namespace) }
        }
    }

    // MARK: - Admit

    static func validate(_ tokens: [TokenID]) throws(KVCacheError) {
        // One branch-free pass (vectorises); the slow scan runs only to name the bad token.
        let all = tokens.withUnsafeBufferPointer { p in p.reduce(TokenID(0)) { $0 | $1 } }
        guard all < 0 else { return }
        for (i, t) in tokens.enumerated() where t < 0 { throw .negativeToken(index: i, value: t) }
    }

    /// Admits a prompt in one go: `beginAdmission`, the cold-store restores, `finishAdmission`.
    /// (The manager runs the restores outside its lock instead.)
    mutating func admit(_ prompt: [TokenID], namespace ns: Namespace) throws(KVCacheError) -> Admission {
        let step = try beginAdmission(prompt, namespace: ns)
        takeEvictedSpills()?.run()
        switch step {
        case .done(let admission): return admission
        case .pending(let pending): return finishAdmission(pending, restoredKeys: pending.run())
        case .wait: fatalError("CacheState.admit: a restore in flight, but admissions run one at a time here")
        }
    }

    /// Admission's first part: match memory, pin the hit, allocate the rest (evicting cold blocks,
    /// whose spills the caller runs after the lock: `takeEvictedSpills`). With a cold store, the
    /// restores of the full blocks left to match come back as a `PendingAdmission`, with the
    /// sequence registered holding its blocks and its memory hits only: reading the store takes
    /// milliseconds per block (tens for an 8k-token prefix), which must not hold every other caller.
    /// `finishAdmission` completes it. All-or-nothing: a refusal changes nothing.
    /// `isQuery: false` (a prefetch) keeps the prompt out of the query and hit counters, so the hit
    /// rate stays the requests'.
    mutating func beginAdmission(_ prompt: [TokenID], namespace ns: Namespace, isQuery: Bool = true) throws(KVCacheError) -> AdmissionStep {
        guard !prompt.isEmpty else { throw .emptyPrompt }
        try Self.validate(prompt)
        // A namespace this manager has not seen matches nothing in memory; it is registered only
        // once the admission is sure to succeed, so a refused call leaves no trace.
        let known = namespaces[ns]
        let matched = matchMemory(prompt, namespace: known)
        let fullBlocks = prompt.count / blockSize
        // The store key of the first block after the memory hit: if another admission is restoring
        // it right now, wait for that one (nothing changes here) and match its blocks in memory.
        var firstStoreKey: PrefixKey?
        if let store = coldStore, matched.count < fullBlocks {
            let parent = matched.last.map { prefixKey(of: $0) } ?? known.map { rootKey($0) } ?? store.rootKey(namespace: ns)
            let key = prompt.withUnsafeBufferPointer { p in
                store.childKey(parent: parent, tokens: UnsafeBufferPointer(rebasing: p[(matched.count * blockSize)..<((matched.count + 1) * blockSize)]))
            }
            firstStoreKey = key
            if let inFlight = restoring[key] {
                restoreWaits += 1
                return .wait(inFlight)
            }
        }
        let totalBlocks = (prompt.count + blockSize - 1) / blockSize
        let needed = totalBlocks - matched.count
        var pinnedFromQueue = 0
        for b in matched where pool.refcount[Int(b)] == 0 { pinnedFromQueue += 1 }
        let available = pool.freeCount - pinnedFromQueue
        guard needed <= available else {
            counters.allocationsFailed += 1
            throw .insufficientBlocks(needed: needed, available: available)
        }
        let k = known ?? namespaceIndex(ns)
        useNamespace(k)  // the new sequence's use, before allocation may evict the namespace's last blocks
        // Apply: pin the hit, then allocate the rest (evicting and spilling cold blocks).
        for b in matched { retain(b) }
        var seq = SequenceState(namespace: k, blocks: matched, tokenCount: prompt.count, treeBlocks: matched.count,
                                firstNewBlock: matched.count, firstOwnPosition: matched.count * blockSize)
        seq.blocks.reserveCapacity(totalBlocks)
        for _ in 0..<needed { seq.blocks.append(allocateBlock()) }
        prompt.withUnsafeBufferPointer { src in
            blockTokens.withUnsafeMutableBufferPointer { dst in
                for i in matched.count..<totalBlocks {
                    let n = min(blockSize, prompt.count - i * blockSize)
                    (dst.baseAddress! + Int(seq.blocks[i]) * blockSize).update(from: src.baseAddress! + i * blockSize, count: n)
                }
            }
        }
        let handle = SequenceHandle(manager: managerID, serial: nextSequence)
        nextSequence += 1
        logicalBlocks += seq.blocks.count
        // Registered now, so its blocks are accounted for (invariants, a hand-over) while it waits.
        sequences[handle.serial] = seq
        var pending = PendingAdmission(sequence: handle, memoryHits: matched.count, fullBlocks: fullBlocks, prompt: prompt, isQuery: isQuery,
                                     namespace: ns, blocks: [], store: coldStore, spillsInFlight: spillsInFlight,
                                     arena: arena, blockSize: blockSize)
        // Set exactly when there is a cold store and a full block after the memory hit.
        guard let key = firstStoreKey else { return .done(finishAdmission(pending, restoredKeys: [])) }
        pending.blocks = Array(seq.blocks[matched.count..<fullBlocks])
        let inFlight = RestoreInFlight(sequence: handle.serial)
        restoring[key] = inFlight
        pending.inFlight = (key, inFlight)
        return .pending(pending)
    }

    /// Admission's last part, after the restores: the restored blocks join the tree (up to the first
    /// that no longer chains: an identical prefix another admission cached meanwhile keeps its
    /// place, and the rest count as new), then, under `.atAdmission`, the other full blocks.
    mutating func finishAdmission(_ pending: PendingAdmission, restoredKeys: [PrefixKey]) -> Admission {
        let serial = pending.sequence.serial
        // Nobody holds the handle yet, so nothing released or changed the sequence meanwhile but a
        // hand-over of its memory hits (`handOverUnwritten`), which lowers `firstNewBlock`.
        guard var seq = sequences[serial] else { fatalError("CacheState: pending admission \(pending.sequence) lost its sequence") }
        sequences[serial] = nil  // hold the only copy while mutating
        let matched = pending.memoryHits
        var restored = 0
        for key in restoredKeys {
            let i = matched + restored
            insertIfChained(&seq, blockAt: i)
            guard seq.treeBlocks == i + 1 else { break }
            prefixKeys[Int(seq.blocks[i])] = key
            restored += 1
        }
        // A prefetch's blocks that were not restored stay out of the tree: no engine prefills them,
        // and its release drops them; published, another thread's admission could hit them first
        // and the hand-over of that release would reach no engine.
        if publication == .atAdmission && pending.isQuery {
            for i in (matched + restored)..<pending.fullBlocks { insertIfChained(&seq, blockAt: i) }
        }
        if seq.firstNewBlock == matched {
            seq.firstNewBlock = matched + restored
            seq.firstOwnPosition = seq.firstNewBlock * blockSize
        }  // else a cancelled writer handed one of its memory hits over while the store was read
        sequences[serial] = seq
        if pending.isQuery {
            counters.queryTokens += pending.prompt.count
            counters.hitTokens += matched * blockSize
            counters.storeHitTokens += restored * blockSize
        }
        counters.restoredBlocks += restored
        if let (key, inFlight) = pending.inFlight {
            restoring[key] = nil
            inFlight.finished.leave()   // admissions waiting on this prefix begin again
        }
        return Admission(sequence: pending.sequence, blockTable: seq.blocks, cachedTokenCount: seq.firstNewBlock * blockSize,
                         memoryHitTokens: matched * blockSize, storeHitTokens: restored * blockSize)
    }

    /// The spills of the blocks this call evicted, registered as in flight (call at the end of
    /// the critical section that evicted them; run them after it). Nil when there are none.
    mutating func takeEvictedSpills() -> SpillBatch? {
        guard !evictedSpills.isEmpty else { return nil }
        defer { evictedSpills = [] }
        return spillsInFlight.begin(evictedSpills, store: coldStore!, arena: arena)
    }

    // MARK: - Lookup

    mutating func lookup(_ tokens: [TokenID], namespace ns: Namespace, probeStore: Bool) throws(KVCacheError) -> PrefixLookup {
        try Self.validate(tokens)
        // A namespace this manager has not seen (yet) has nothing in memory, but a persistent store
        // may hold its prefixes from an earlier run: `admit` would restore them, so probe them too.
        // The namespace is not registered here: a lookup changes nothing.
        let known = namespaces[ns]
        let matched = matchMemory(tokens, namespace: known)
        var storeBlocks = 0
        if probeStore, let store = coldStore {
            var key: PrefixKey
            if let last = matched.last { key = prefixKey(of: last) }
            else if let k = known { key = rootKey(k) }
            else { key = store.rootKey(namespace: ns) }
            tokens.withUnsafeBufferPointer { p in
                for i in matched.count..<(tokens.count / blockSize) {
                    let chunk = UnsafeBufferPointer(rebasing: p[(i * blockSize)..<((i + 1) * blockSize)])
                    key = store.childKey(parent: key, tokens: chunk)
                    // A block still being spilled counts: `admit` waits for its spill.
                    guard store.contains(key: key, tokens: chunk) || spillsInFlight.isSpilling(key, tokens: chunk) else { break }
                    storeBlocks += 1
                }
            }
        }
        return PrefixLookup(memoryTokens: matched.count * blockSize, storeTokens: storeBlocks * blockSize)
    }

    // MARK: - Sequences

    /// The state of a live sequence; a handle this manager did not issue (another manager's, or a
    /// forged one) is unknown, one it issued and released is released.
    func live(_ s: SequenceHandle) throws(KVCacheError) -> SequenceState {
        guard s.manager == managerID else { throw .unknownSequence(s) }
        if let seq = sequences[s.serial] { return seq }
        throw s.serial > 0 && s.serial < nextSequence ? .releasedSequence(s) : .unknownSequence(s)
    }

    /// What appending `count` tokens (≥ 0) to `seq` takes from the pool: a block per `blockSize`
    /// tokens past its last block's room, and whether its partial last block is shared and must
    /// be copied first (one block more). No overflow for any `count`.
    private func appendCost(_ seq: SequenceState, count: Int) -> (blocks: Int, copies: Bool) {
        guard count > 0 else { return (0, false) }
        let fill = seq.tokenCount % blockSize
        let copies = fill != 0 && tableHolders(seq.blocks.last!) > 1
        let room = seq.blocks.count * blockSize - seq.tokenCount
        let newBlocks = count <= room ? 0 : (count - room - 1) / blockSize + 1
        return (newBlocks + (copies ? 1 : 0), copies)
    }

    /// Blocks `append`ing `count` tokens to `s` would take now (see the manager's doc).
    func blocksNeeded(toAppend count: Int, to s: SequenceHandle) throws(KVCacheError) -> Int {
        let seq = try live(s)
        guard count >= 0 else { throw .invalidAppendCount(count) }
        return appendCost(seq, count: count).blocks
    }

    /// Returns the copy-on-write it made, if any.
    @discardableResult
    mutating func append(_ tokens: [TokenID], to s: SequenceHandle) throws(KVCacheError) -> BlockCopy? {
        settleCopy(of: s)
        var seq = try live(s)
        try Self.validate(tokens)
        guard !tokens.isEmpty else { return nil }
        let start = seq.tokenCount
        let fill = start % blockSize
        let (needed, needsCopy) = appendCost(seq, count: tokens.count)
        guard needed <= pool.freeCount else {
            counters.allocationsFailed += 1
            throw .insufficientBlocks(needed: needed, available: pool.freeCount)
        }
        sequences[s.serial] = nil  // hold the only copy while mutating (no copy-on-write of arrays)
        var made: BlockCopy?
        if needsCopy { made = copyLastBlock(&seq, tokens: fill) }  // the shared partial last block
        var position = start
        for t in tokens {
            if position % blockSize == 0 {
                seq.blocks.append(allocateBlock())
                logicalBlocks += 1
            }
            blockTokens[Int(seq.blocks[position / blockSize]) * blockSize + position % blockSize] = t
            position += 1
            if position % blockSize == 0 && publication == .atAdmission { insertIfChained(&seq, blockAt: position / blockSize - 1) }
        }
        seq.tokenCount = position
        sequences[s.serial] = seq
        return made
    }

    /// Copy-on-write: the sequence's last block is replaced by a private copy of its first
    /// `tokens` tokens (token ids, and with a page arena every layer's K/V). The caller has
    /// checked that a block is free; the allocation cannot take the old block, which the
    /// sequence still holds until the copy is made.
    /// Drops the reference a sequence kept on its last copy-on-write's source (see
    /// `SequenceState.copySource`): `copied(_:)`, or the sequence's next `append` or `truncate`
    /// (which start a step, or make a copy of their own) or release, whether or not they then
    /// succeed. Not `markComputed`: speculative decoding truncates and reports the accepted count
    /// before its engine copies. A no-op for an unknown or released handle.
    mutating func settleCopy(of s: SequenceHandle) {
        guard s.manager == managerID, let b = sequences[s.serial]?.copySource else { return }
        sequences[s.serial]!.copySource = nil
        copyPins[b]! -= 1
        if copyPins[b] == 0 { copyPins[b] = nil }
        unpin(b)
    }

    /// Block tables naming `b`: its references but those of pending copies (`copyPins`). A block
    /// one table names is that sequence's alone to write, whoever still copies from it.
    func tableHolders(_ b: Int32) -> Int32 {
        pool.refcount[Int(b)] - (copyPins[b] ?? 0)
    }

    private mutating func copyLastBlock(_ seq: inout SequenceState, tokens fill: Int) -> BlockCopy {
        let old = seq.blocks.last!
        let copy = allocateBlock(writtenNow: true)   // its evicted KV is spilled before the copy overwrites it
        blockTokens.withUnsafeMutableBufferPointer { all in
            (all.baseAddress! + Int(copy) * blockSize).update(from: all.baseAddress! + Int(old) * blockSize, count: fill)
        }
        if let arena {
            arena.copyBlock(from: BlockID(old), to: BlockID(copy))
            unpin(old)
        } else {
            // The engine copies after this call returns: the source keeps this sequence's
            // reference until its next call (`settleCopy`), so no other thread's call can free,
            // evict or reuse it first.
            invariant(seq.copySource == nil, "CacheState: a second copy-on-write while block \(seq.copySource!) still waits for the engine's copy")
            seq.copySource = old
            copyPins[old, default: 0] += 1
        }
        seq.blocks[seq.blocks.count - 1] = copy
        return BlockCopy(source: BlockID(old), destination: BlockID(copy), tokenCount: fill)
    }

    /// Keeps the sequence's first `count` tokens (1...tokenCount) and drops the rest: speculative
    /// decoding's rejected draft tokens. Blocks past the new end lose this sequence's reference
    /// (deepest first; tree blocks stay cached, the rest are free). A new partial last block that
    /// is in the tree or shared is replaced by a private copy of its first `count % blockSize`
    /// tokens, returned, since the sequence's next append writes into it and neither the tree's
    /// record of that block nor its other holders may change. Plans first: with no block for
    /// that copy it throws and nothing changes.
    @discardableResult
    mutating func truncate(_ s: SequenceHandle, toTokenCount count: Int) throws(KVCacheError) -> BlockCopy? {
        settleCopy(of: s)
        var seq = try live(s)
        guard count >= 1 && count <= seq.tokenCount else { throw .invalidTruncation(count, tokenCount: seq.tokenCount) }
        guard count < seq.tokenCount else { return nil }
        let keep = (count + blockSize - 1) / blockSize, fill = count % blockSize
        let last = seq.blocks[keep - 1]
        // Every reference counts here, a pending copy's too: the sequence will write its slots
        // from `fill` on, which another sequence's engine may still have to copy (an append
        // only writes past the tokens any copy of the block took, so it asks `tableHolders`).
        let needsCopy = fill != 0 && (pool.refcount[Int(last)] > 1 || index.inTree[Int(last)])
        if needsCopy {
            // The dropped blocks only this sequence holds join the free queue before the copy is taken.
            let freed = seq.blocks[keep...].reduce(0) { $0 + (pool.refcount[Int($1)] == 1 ? 1 : 0) }
            guard pool.freeCount + freed >= 1 else {
                counters.allocationsFailed += 1
                throw .insufficientBlocks(needed: 1, available: pool.freeCount)
            }
        }
        sequences[s.serial] = nil  // hold the only copy while mutating
        for b in seq.blocks[keep...].reversed() { unpin(b) }
        logicalBlocks -= seq.blocks.count - keep
        seq.blocks.removeSubrange(keep...)
        var made: BlockCopy?
        if needsCopy { made = copyLastBlock(&seq, tokens: fill) }
        seq.tokenCount = count
        seq.treeBlocks = min(seq.treeBlocks, count / blockSize)
        seq.firstNewBlock = min(seq.firstNewBlock, keep)
        // Positions from `count` on are new again: in a fresh block, or a last block the sequence
        // holds alone (copied above when it was shared or cached).
        seq.firstOwnPosition = min(seq.firstOwnPosition, count)
        seq.reportedComputed = min(seq.reportedComputed, count)
        sequences[s.serial] = seq
        return made
    }

    /// The engine has written the KV of the sequence's first `computedTokens` tokens: under
    /// `.whenComputed`, the full blocks among them join the tree (under `.atAdmission` they are
    /// there already). Telling less than before changes nothing.
    mutating func markComputed(_ s: SequenceHandle, computedTokens c: Int) throws(KVCacheError) {
        var seq = try live(s)
        guard c >= 0 && c <= seq.tokenCount else { throw .invalidComputedTokens(c, tokenCount: seq.tokenCount) }
        guard c > seq.reportedComputed else { return }
        seq.reportedComputed = c
        if publication == .whenComputed && seq.treeBlocks < c / blockSize { publish(&seq, serial: s.serial, upTo: c) }
        sequences[s.serial] = seq
    }

    /// Joins the sequence's full blocks below token `c` to the tree while its chain is unbroken.
    /// Fork relatives holding the same block at the same position (the only other holders of a
    /// block outside the tree) extend their chains with it.
    private mutating func publish(_ seq: inout SequenceState, serial: UInt64, upTo c: Int) {
        var i = seq.treeBlocks
        while i < c / blockSize {
            let b = seq.blocks[i]
            insertIfChained(&seq, blockAt: i)
            guard seq.treeBlocks == i + 1 else { return }
            if pool.refcount[Int(b)] > 1 {
                // Keys first: mutating the dictionary while iterating it would copy it.
                let relatives = sequences.compactMap { other, o in
                    other != serial && o.treeBlocks == i && o.blocks.count > i && o.blocks[i] == b ? other : nil
                }
                for other in relatives { sequences[other]!.treeBlocks += 1 }
            }
            i += 1
        }
    }

    /// The most children one `fork` makes: far beyond any sampling or beam width, and small enough
    /// that refcounts (Int32) cannot overflow before the sequences themselves exhaust memory.
    static let maxForkCount = 1 << 20

    mutating func fork(_ s: SequenceHandle, count: Int) throws(KVCacheError) -> [SequenceHandle] {
        let seq = try live(s)
        guard count > 0 && count <= Self.maxForkCount else { throw .invalidForkCount(count) }
        // One pass over the table for all children: each block gains `count` references at once.
        // The parent holds every block, so none is in the free queue or the evictable count.
        for b in seq.blocks { pool.retain(b, times: Int32(count)) }
        useNamespace(seq.namespace, times: count)
        var children: [SequenceHandle] = []
        children.reserveCapacity(count)
        for _ in 0..<count {
            let handle = SequenceHandle(manager: managerID, serial: nextSequence)
            nextSequence += 1
            var child = seq
            child.copySource = nil   // the parent's pending copy stays the parent's to settle
            sequences[handle.serial] = child
            logicalBlocks += seq.blocks.count
            children.append(handle)
        }
        return children
    }

    /// Releases a sequence. With `computedTokens` (how many of its tokens, from the first, hold KV
    /// its engine wrote or found cached), the blocks it brought in as new that are not wholly
    /// inside them leave the tree, so no later request hits (and no eviction spills) KV that was
    /// never written. Only blocks nothing else needs go: deepest first, stopping at the first one
    /// another sequence still holds (a request that matched it relies on the same prefill; its
    /// ancestors must stay for the tree to stay a tree).
    /// Blocks that must stay although unwritten because other live sequences hold them (they
    /// matched them as hits, relying on this sequence's prefill) become those sequences' own new
    /// blocks: each is returned with the tokens still valid, and may drop them on its own
    /// cancelled release. An unreferenced unwritten block goes with its cached descendants.
    @discardableResult
    mutating func release(_ s: SequenceHandle, computedTokens: Int? = nil) throws(KVCacheError) -> [InvalidatedHit] {
        settleCopy(of: s)
        var seq = try live(s)
        if let c = computedTokens, c < 0 || c > seq.tokenCount {
            throw .invalidComputedTokens(c, tokenCount: seq.tokenCount)
        }
        sequences[s.serial] = nil
        defer { unuseNamespace(seq.namespace) }  // after its blocks leave or stay in the tree
        // Under `.whenComputed` a release is the engine's word that the KV it names is written.
        if publication == .whenComputed { publish(&seq, serial: s.serial, upTo: computedTokens ?? seq.tokenCount) }
        // Deepest first, so a parent is always more recently used than its children in the queue.
        for b in seq.blocks.reversed() { unpin(b) }
        logicalBlocks -= seq.blocks.count
        guard let c = computedTokens else { return [] }
        let firstUnwritten = max(seq.firstNewBlock, max(c, seq.reportedComputed) / blockSize)
        var i = seq.treeBlocks - 1
        while i >= firstUnwritten {
            let b = seq.blocks[i]
            guard tableHolders(b) == 0 else { break }
            if index.childCount[Int(b)] > 0 { dropDescendants(of: b) }
            // Only a pending copy's source may still be referenced: out of the tree now, free once
            // its engine has copied it (no table names it, so none of its descendants is held).
            if pool.refcount[Int(b)] == 0 { dropUnwritten(b) } else { uncache(b) }
            i -= 1
        }
        guard i >= firstUnwritten else { return [] }
        return handOverUnwritten(Set(seq.blocks[firstUnwritten...i]))
    }

    /// Drops the cached blocks below `b`, a block whose KV was never written, deepest first: no
    /// match can reach them without passing `b`, and what they hold was computed over `b`'s
    /// garbage or restored from the store under it. Nobody holds them (a sequence holding a block
    /// holds its ancestors, and `b` has no references). One pass over the pool to find them: this
    /// runs only when a cancelled prefill has cached blocks below it.
    private mutating func dropDescendants(of b: Int32) {
        var children: [Int32: [Int32]] = [:]
        for x in 1...pool.capacity where index.inTree[x] && index.parent[x] > 0 {
            children[index.parent[x], default: []].append(Int32(x))
        }
        var preorder: [Int32] = []
        var stack = children[b] ?? []
        while let x = stack.popLast() {
            preorder.append(x)
            stack.append(contentsOf: children[x] ?? [])
        }
        for x in preorder.reversed() {  // every block after its descendants
            if pool.refcount[Int(x)] == 0 { dropUnwritten(x) } else { uncache(x) }   // a pending copy's source: free once copied
        }
    }

    /// Live sequences whose hits include one of `unwritten`: their hit count ends before the first.
    private mutating func handOverUnwritten(_ unwritten: Set<Int32>) -> [InvalidatedHit] {
        var invalidated: [InvalidatedHit] = []
        for (serial, seq) in sequences where seq.firstNewBlock > 0 {
            guard let p = seq.blocks[..<seq.firstNewBlock].firstIndex(where: unwritten.contains) else { continue }
            sequences[serial]!.firstNewBlock = p
            sequences[serial]!.firstOwnPosition = min(seq.firstOwnPosition, p * blockSize)
            sequences[serial]!.reportedComputed = min(seq.reportedComputed, p * blockSize)
            invalidated.append(InvalidatedHit(sequence: SequenceHandle(manager: managerID, serial: serial), validTokens: p * blockSize))
        }
        return invalidated.sorted { $0.sequence.serial < $1.sequence.serial }
    }

    /// Takes an unreferenced cached leaf whose KV was never written out of the tree: not an
    /// eviction (nothing to spill or report), and the block moves to the head of the free queue
    /// with the other blocks holding nothing worth keeping.
    mutating func dropUnwritten(_ b: Int32) {
        invariant(pool.refcount[Int(b)] == 0 && pool.queued[Int(b)],
                     "CacheState: dropping block \(b) with refcount \(pool.refcount[Int(b)]), queued=\(pool.queued[Int(b)])")
        uncache(b)
        pool.remove(b)
        pool.pushFront(b)
    }

    // MARK: - Stats

    /// Free blocks and cached ones nobody holds: what allocation can take.
    var availableBlocks: Int { pool.freeCount }

    var stats: KVCacheStats {
        var s = counters
        s.usedBlocks = pool.usedCount
        s.cachedBlocks = cachedFreeBlocks
        // Pending copies' references keep blocks in use but make none shared, nor a table's.
        var notShared = 0, inNoTable = 0
        for (b, pins) in copyPins {
            let held = pool.refcount[Int(b)] - pins
            if pool.refcount[Int(b)] > 1 && held <= 1 { notShared += 1 }
            if held == 0 { inNoTable += 1 }
        }
        s.sharedBlocks = pool.sharedCount - notShared
        s.logicalBlocks = logicalBlocks
        s.physicalBlocks = pool.usedCount - inNoTable
        s.liveSequences = sequences.count
        return s
    }
}
