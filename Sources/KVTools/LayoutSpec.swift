import KVCore

extension KVLayout {
    /// Parses `LAYERSxKVHEADSxHEADDIM:DTYPE` (e.g. `1x1x8:fp16`; the dtype defaults to fp16), the
    /// compact form kvctl options take.
    public init(spec: String, blockSize: Int) throws(KVLayoutError) {
        let parts = spec.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { throw .invalid("layout \"\(spec)\": expected LAYERSxKVHEADSxHEADDIM[:DTYPE]") }
        let dims = parts[0].split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
        guard dims.count == 3, let l = dims[0], let k = dims[1], let d = dims[2] else {
            throw .invalid("layout \"\(spec)\": expected LAYERSxKVHEADSxHEADDIM[:DTYPE]")
        }
        var dtype = KVDType.float16
        if parts.count == 2 {
            guard let t = KVDType(rawValue: String(parts[1])) else {
                throw .invalid("layout \"\(spec)\": dtype must be one of \(KVDType.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            dtype = t
        }
        try self.init(layerCount: l, kvHeadCount: k, headDim: d, blockSize: blockSize, dtype: dtype)
    }
}
