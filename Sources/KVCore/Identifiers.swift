/// A token id as the model's tokenizer produces it. Valid ids are non-negative.
public typealias TokenID = Int32

/// The id of one block slot in the page arenas.
///
/// A block id addresses the same slot in every layer's K and V arena, so one id names
/// all the KV of `KVLayout.blockSize` tokens. Block tables handed to kernels are flat
/// arrays of `rawValue`s.
public struct BlockID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: Int32
    @inlinable public init(rawValue: Int32) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: Int32) { self.rawValue = rawValue }
    @inlinable public var index: Int { Int(rawValue) }
    @inlinable public static func < (a: BlockID, b: BlockID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "#\(rawValue)" }

    /// The reserved null block: never allocated, never cached; pads block tables.
    public static let null = BlockID(rawValue: 0)
}

/// A cache namespace: a tenant, or a model/adapter. Prefixes are never shared across namespaces,
/// in memory or in the spill store.
public struct Namespace: RawRepresentable, Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }
    public var description: String { rawValue }

    /// The namespace used when a caller does not name one.
    public static let `default` = Namespace("default")

    /// Namespaces are equal when their UTF-8 bytes are: `String`'s own equality is Unicode
    /// canonical equivalence, under which two distinct tenant ids ("café" composed and
    /// decomposed) would share one namespace's prefixes in memory, while the spill store, which
    /// keys by bytes, kept them apart.
    public static func == (a: Namespace, b: Namespace) -> Bool {
        a.rawValue.utf8.elementsEqual(b.rawValue.utf8)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(rawValue.utf8.count)
        let done: Void? = rawValue.utf8.withContiguousStorageIfAvailable { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        if done == nil { for byte in rawValue.utf8 { hasher.combine(byte) } }
    }
}
