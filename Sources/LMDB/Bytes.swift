/// Something LMDB can read as a key or value: its bytes, lent for the duration of a call.
public protocol LMDBBytes {
    func withLMDBBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R
}

extension UnsafeRawBufferPointer: LMDBBytes {
    public func withLMDBBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(self)
    }
}

extension Array: LMDBBytes where Element == UInt8 {
    public func withLMDBBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        // `withUnsafeBytes` is `rethrows`; carry the typed error across it.
        var result: Result<R, E>!
        withUnsafeBytes { bytes in result = Result { () throws(E) in try body(bytes) } }
        return try result.get()
    }
}

extension String: LMDBBytes {
    /// The UTF-8 bytes, without a terminator.
    public func withLMDBBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try Array(utf8).withLMDBBytes(body)
    }
}

