import KVCore

/// Hands the manager's stats to its cold store at most once per interval, from the mutation
/// paths, so a store's live record (`kvctl stats`) stays fresh without the engine calling
/// anything. The manager also publishes once more when it is deinitialised ("on close").
final class StatsPublisher: Sendable {
    private let store: any ColdPrefixStore
    private let interval: Duration
    private let nextDue: Locked<ContinuousClock.Instant>

    init(store: any ColdPrefixStore, interval: Duration) {
        self.store = store
        self.interval = interval
        self.nextDue = Locked(ContinuousClock.now)
    }

    /// Called after every mutation with the stats it left; publishes when the interval has passed.
    func mutated(_ stats: KVCacheStats) {
        let now = ContinuousClock.now
        let due = nextDue.withLock { (next: inout ContinuousClock.Instant) -> Bool in
            guard now >= next else { return false }
            next = now + interval
            return true
        }
        if due { store.publish(stats: stats) }
    }

    /// Publishes now, whatever the interval (explicit `publishStats()`, deinit).
    func publishNow(_ stats: KVCacheStats) {
        nextDue.withLock { $0 = ContinuousClock.now + interval }
        store.publish(stats: stats)
    }
}
