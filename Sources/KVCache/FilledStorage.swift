extension UnsafeMutablePointer {
    /// `count` elements, each `value`: the per-block tables of the pool, the prefix index and its
    /// child map are raw storage allocated once like this and freed in their storage's `deinit`.
    static func filled(with value: Pointee, count: Int) -> UnsafeMutablePointer<Pointee> {
        let p = allocate(capacity: count)
        p.initialize(repeating: value, count: count)
        return p
    }
}
