/// `precondition` that keeps its message in optimised builds.
///
/// Swift drops `precondition` messages at `-O`: a release-built serving process that hits a
/// refcount underflow or a block both free and referenced would stop with a bare "Signal 4" and
/// no word of what broke. `fatalError` prints its message in every build, so internal
/// corruption checks go through here and name the broken state (docs/INVARIANTS.md). Unlike
/// `precondition` it also checks at `-Ounchecked`.
@_transparent @usableFromInline
package func invariant(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                      file: StaticString = #fileID, line: UInt = #line) {
    if _slowPath(!condition()) { invariantFailure(message, file: file, line: line) }
}

/// The failure path, out of line: the message is built here, not at every inlined call site
/// (whose string interpolations would bloat hot loops: fork and release ran ~1.5-2x slower so).
@usableFromInline @inline(never)
func invariantFailure(_ message: () -> String, file: StaticString, line: UInt) -> Never {
    fatalError(message(), file: file, line: line)
}
