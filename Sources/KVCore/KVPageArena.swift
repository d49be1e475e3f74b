#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which half of the KV a page holds.
public enum KVKind: Int, Sendable, CaseIterable {
    case keys = 0
    case values = 1
}

/// The page arenas: all KV of all blocks, allocated once at start-up for a fixed block capacity.
///
/// One contiguous allocation holds, for every layer, a K arena and a V arena of
/// `capacityBlocks` blocks each (see ``KVLayout`` for the layout of one block):
///
/// ```
/// [layer 0 K: block 0 … block N-1][layer 0 V: …][layer 1 K: …][layer 1 V: …] …
/// ```
///
/// The arena does no locking: the cache manager decides who may write which block (the
/// sequence that owns it, before it is shared), and kernels read pages the manager keeps alive
/// for the duration of a step. Access goes through scoped accessors whose pointers must not
/// escape the closure.
public final class KVPageArena: @unchecked Sendable {
    public let layout: KVLayout
    public let capacityBlocks: Int
    /// Bytes between consecutive blocks in one layer's K or V arena.
    public let blockStride: Int
    /// Bytes of one layer's K (or V) arena.
    public let kindStride: Int
    public let totalBytes: Int
    @usableFromInline let base: UnsafeMutableRawPointer

    /// Allocates arenas for `capacityBlocks` blocks. With `prefault`, every page is touched once
    /// now, so first-touch page faults (slow on virtual machines) do not land on the hot path.
    /// Traps when the memory cannot be had; ``allocate(layout:capacityBlocks:prefault:)`` returns
    /// nil instead.
    public convenience init(layout: KVLayout, capacityBlocks: Int, prefault: Bool = true) {
        invariant(capacityBlocks > 0, "KVPageArena: capacityBlocks must be positive, got \(capacityBlocks)")
        let bytes = Self.byteCount(layout: layout, capacityBlocks: capacityBlocks)
        guard let bytes, let base = Self.allocatePages(byteCount: bytes) else {
            fatalError("KVPageArena: cannot allocate \(capacityBlocks) blocks of \(layout.blockBytes) bytes")
        }
        self.init(layout: layout, capacityBlocks: capacityBlocks, base: base, totalBytes: bytes, prefault: prefault)
    }

    /// The arenas for `capacityBlocks` blocks, or nil when their size overflows an `Int` or the
    /// system will not allocate it (so a serving stack sized beyond the machine gets an error,
    /// not a trap). Memory the system grants lazily can still run out while `prefault` touches it.
    public static func allocate(layout: KVLayout, capacityBlocks: Int, prefault: Bool = true) -> KVPageArena? {
        guard capacityBlocks > 0, let bytes = byteCount(layout: layout, capacityBlocks: capacityBlocks),
              let base = allocatePages(byteCount: bytes) else { return nil }
        return KVPageArena(layout: layout, capacityBlocks: capacityBlocks, base: base, totalBytes: bytes, prefault: prefault)
    }

    private init(layout: KVLayout, capacityBlocks: Int, base: UnsafeMutableRawPointer, totalBytes: Int, prefault: Bool) {
        self.layout = layout
        self.capacityBlocks = capacityBlocks
        self.blockStride = layout.blockBytesPerLayerPerKind
        self.kindStride = blockStride * capacityBlocks
        self.totalBytes = totalBytes
        self.base = base
        if prefault { base.initializeMemory(as: UInt8.self, repeating: 0, count: totalBytes) }
    }

    /// Bytes of all arenas for `capacityBlocks` blocks, or nil when that overflows an `Int`.
    public static func byteCount(layout: KVLayout, capacityBlocks: Int) -> Int? {
        let kind = layout.blockBytesPerLayerPerKind.multipliedReportingOverflow(by: capacityBlocks)
        let total = kind.partialValue.multipliedReportingOverflow(by: 2 * layout.layerCount)
        return kind.overflow || total.overflow ? nil : total.partialValue
    }

    deinit { free(base) }

    /// 2 MiB: the huge-page size the arena aligns to and asks the kernel for.
    static let hugePageBytes = 2 << 20

    /// Allocates the arena on a 2 MiB boundary and, on Linux, asks for transparent huge pages
    /// (`MADV_HUGEPAGE`, before the first touch): kernels stream KV across many 4 KiB pages per
    /// block run, and TLB walks were most of their DRAM penalty (in a one-thread harness both
    /// attention kernels ran ~7 % faster from DRAM on 2 MiB pages). Where THP is off, or the
    /// advice fails, it is a plain allocation.
    /// Nil when the system refuses (`posix_memalign`: ENOMEM), freed with `free`.
    static func allocatePages(byteCount: Int) -> UnsafeMutableRawPointer? {
        let bytes = max(byteCount, 1)
        var pointer: UnsafeMutableRawPointer?
        guard bytes >= hugePageBytes else {
            return posix_memalign(&pointer, 4096, bytes) == 0 ? pointer : nil
        }
        guard bytes <= Int.max - hugePageBytes else { return nil }
        let rounded = (bytes + hugePageBytes - 1) / hugePageBytes * hugePageBytes
        guard posix_memalign(&pointer, hugePageBytes, rounded) == 0, let pointer else { return nil }
        #if canImport(Glibc)
        _ = madvise(pointer, rounded, MADV_HUGEPAGE)
        #endif
        return pointer
    }

    @inlinable func offset(layer: Int, kind: KVKind, block: Int) -> Int {
        (layer * 2 + kind.rawValue) * kindStride + block * blockStride
    }

    @inlinable func checkBlock(_ block: BlockID, layer: Int) {
        invariant(block.index >= 0 && block.index < capacityBlocks,
                     "KVPageArena: block \(block) outside the arena (capacity \(capacityBlocks))")
        invariant(layer >= 0 && layer < layout.layerCount,
                     "KVPageArena: layer \(layer) outside 0..<\(layout.layerCount)")
    }

    // MARK: - Kernel access

    /// Calls `body` with read pointers to one layer's K and V arenas. The pointers must not escape.
    @inlinable
    public func withUnsafeLayerPages<R, E: Error>(layer: Int, _ body: (KVLayerPages) throws(E) -> R) throws(E) -> R {
        checkBlock(BlockID(0), layer: layer)
        let pages = KVLayerPages(
            keys: UnsafeRawPointer(base + offset(layer: layer, kind: .keys, block: 0)),
            values: UnsafeRawPointer(base + offset(layer: layer, kind: .values, block: 0)),
            layout: layout, capacityBlocks: capacityBlocks)
        return try body(pages)
    }

    // MARK: - Engine access

    /// Calls `body` with the writable bytes of one block of one layer's K or V arena
    /// (`kvHeadCount × blockSize × headDim` elements, head-major). The pointer must not escape.
    @inlinable
    public func withUnsafeMutableBlockBytes<R, E: Error>(
        _ block: BlockID, layer: Int, kind: KVKind, _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        checkBlock(block, layer: layer)
        let p = base + offset(layer: layer, kind: kind, block: block.index)
        return try body(UnsafeMutableRawBufferPointer(start: p, count: blockStride))
    }

    /// Calls `body` with the read-only bytes of one block of one layer's K or V arena.
    @inlinable
    public func withUnsafeBlockBytes<R, E: Error>(
        _ block: BlockID, layer: Int, kind: KVKind, _ body: (UnsafeRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        checkBlock(block, layer: layer)
        let p = base + offset(layer: layer, kind: kind, block: block.index)
        return try body(UnsafeRawBufferPointer(start: p, count: blockStride))
    }

    // MARK: - Whole-block moves (copy-on-write, spill, restore)

    /// Copies every layer's K and V of `source` into `destination` (copy-on-write of a shared block).
    public func copyBlock(from source: BlockID, to destination: BlockID) {
        checkBlock(source, layer: 0)
        checkBlock(destination, layer: 0)
        guard source != destination else { return }
        for layer in 0..<layout.layerCount {
            for kind in KVKind.allCases {
                (base + offset(layer: layer, kind: kind, block: destination.index))
                    .copyMemory(from: base + offset(layer: layer, kind: kind, block: source.index), byteCount: blockStride)
            }
        }
    }

    /// Copies a block's KV, all layers, K then V per layer, into `destination`
    /// (exactly `layout.blockBytes` bytes): the spill payload order.
    public func copyOut(_ block: BlockID, into destination: UnsafeMutableRawBufferPointer) {
        checkBlock(block, layer: 0)
        invariant(destination.count == layout.blockBytes,
                     "KVPageArena.copyOut: buffer of \(destination.count) bytes, block needs \(layout.blockBytes)")
        var at = 0
        for layer in 0..<layout.layerCount {
            for kind in KVKind.allCases {
                (destination.baseAddress! + at).copyMemory(from: base + offset(layer: layer, kind: kind, block: block.index), byteCount: blockStride)
                at += blockStride
            }
        }
    }

    /// Fills a block's KV, all layers, from a payload in ``copyOut(_:into:)`` order.
    public func copyIn(_ block: BlockID, from source: UnsafeRawBufferPointer) {
        checkBlock(block, layer: 0)
        invariant(source.count == layout.blockBytes,
                     "KVPageArena.copyIn: payload of \(source.count) bytes, block needs \(layout.blockBytes)")
        var at = 0
        for layer in 0..<layout.layerCount {
            for kind in KVKind.allCases {
                (base + offset(layer: layer, kind: kind, block: block.index)).copyMemory(from: source.baseAddress! + at, byteCount: blockStride)
                at += blockStride
            }
        }
    }
}

/// Read pointers to one layer's K and V arenas, valid only inside
/// ``KVPageArena/withUnsafeLayerPages(layer:_:)``.
///
/// Block `b`, head `h`, token `t`, dim `i` of the keys is element
/// `((b * kvHeadCount + h) * blockSize + t) * headDim + i` from `keys`.
public struct KVLayerPages: @unchecked Sendable {
    /// Start of the layer's K arena.
    public let keys: UnsafeRawPointer
    /// Start of the layer's V arena.
    public let values: UnsafeRawPointer
    /// The layout the arenas hold.
    public let layout: KVLayout
    /// Blocks in each arena; block ids must be below it.
    public let capacityBlocks: Int

    /// Wraps arenas owned elsewhere (a test's or an engine's own buffers).
    public init(keys: UnsafeRawPointer, values: UnsafeRawPointer, layout: KVLayout, capacityBlocks: Int) {
        self.keys = keys
        self.values = values
        self.layout = layout
        self.capacityBlocks = capacityBlocks
    }
}
