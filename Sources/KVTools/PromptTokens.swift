import KVCore

/// Turns a trace request into its prompt tokens by the traces' rule: token `i` of the hash block
/// with id `h` is `h * hashBlockTokens + i`, the prompt is the concatenation cut to `inputLength`.
/// Equal ids give equal tokens and distinct ids distinct tokens, so a token-exact prefix tree sees
/// exactly the sharing the trace records.
///
/// It owns one buffer that every request reuses: the replay materialises ~145M tokens and must
/// not allocate per request.
struct PromptTokens {
    let hashBlockTokens: Int
    private(set) var tokens: [TokenID] = []

    init(hashBlockTokens: Int) { self.hashBlockTokens = hashBlockTokens }

    /// Refills `tokens` with the request's prompt (ids were range-checked when the trace was read).
    mutating func fill(_ request: TraceRequest) {
        tokens.removeAll(keepingCapacity: true)
        tokens.reserveCapacity(request.inputLength)
        let h = hashBlockTokens
        var remaining = request.inputLength
        for id in request.hashIDs {
            guard remaining > 0 else { break }
            let base = TokenID(truncatingIfNeeded: id) &* TokenID(h)
            let n = min(h, remaining)
            for i in 0..<TokenID(n) { tokens.append(base &+ i) }
            remaining -= n
        }
    }
}
