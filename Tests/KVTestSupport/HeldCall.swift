import Dispatch
import KVCore

/// Holds the first call that reaches ``holdIfArmed()`` after ``arm()`` until ``release()`` (or
/// 2 s pass): a thread preempted at that point, made deterministic, for tests of what another
/// thread may do meanwhile.
public final class HeldCall: Sendable {
    private let armed = Locked(false)
    private let arrived = DispatchSemaphore(value: 0)
    private let released = DispatchSemaphore(value: 0)

    public init() {}

    /// The next call to ``holdIfArmed()`` waits.
    public func arm() { armed.withLock { $0 = true } }

    /// Waits here if armed (disarming), until ``release()`` or 2 s.
    public func holdIfArmed() {
        guard armed.withLock({ a in defer { a = false }; return a }) else { return }
        arrived.signal()
        _ = released.wait(timeout: .now() + 2)
    }

    /// Returns once a call is being held.
    public func waitUntilHeld() { arrived.wait() }

    /// Lets the held call go on.
    public func release() { released.signal() }
}
