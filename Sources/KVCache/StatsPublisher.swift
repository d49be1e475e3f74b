import KVCore

/// Hands the manager's stats to its cold store at most once per interval, from the mutation
/// paths, so a store's live record (`kvctl stats`) stays fresh without the engine calling
/// anything. The manager also publishes once more when it is deinitialised ("on close").
final class StatsPublisher: Sendable {
    private let store: any ColdPrefixStore
    private let interval: Duration
    private let nextDue: Locked<ContinuousClock.Instant>
    /// The version of the newest snapshot handed to the store. Snapshots are taken under the
    /// manager's lock but published after it, so two due calls may reach here out of order: an
    /// older one must not overwrite a newer live record (it would stay until the next due call,
    /// for good on an idle server). Only calls that publish take this lock.
    private let published = Locked<UInt64>(0)

    init(store: any ColdPrefixStore, interval: Duration) {
        self.store = store
        self.interval = interval
        self.nextDue = Locked(ContinuousClock.now)
    }

    /// Called after every mutation with the stats it left (and their version); publishes when
    /// the interval has passed.
    func mutated(_ stats: KVCacheStats, version: UInt64) {
        let now = ContinuousClock.now
        let due = nextDue.withLock { (next: inout ContinuousClock.Instant) -> Bool in
            guard now >= next else { return false }
            next = now + interval
            return true
        }
        if due { publish(stats, version: version) }
    }

    /// Publishes now, whatever the interval (explicit `publishStats()`, deinit).
    func publishNow(_ stats: KVCacheStats, version: UInt64) {
        nextDue.withLock { $0 = ContinuousClock.now + interval }
        publish(stats, version: version)
    }

    /// Hands `stats` to the store unless a newer snapshot got there first (equal versions are
    /// the same state: no mutation ran between them).
    private func publish(_ stats: KVCacheStats, version: UInt64) {
        published.withLock { newest in
            guard version >= newest else { return }
            newest = version
            store.publish(stats: stats)
        }
    }
}
