import Foundation
import SyncSystem

/// Time as the daemon's runners see it: when a pull is due, how long a failed session backs off. The system's in
/// use; in tests one that moves only when told (`ManualClock`), so a test advances past a 30 s backoff at once
/// instead of sleeping through it.
public protocol DaemonClock: Sendable {
    func now() -> Date
    /// Waits on `condition`, which the caller holds, until it is signalled or this clock reaches `deadline`;
    /// false once the deadline has passed.
    @discardableResult
    func wait(_ condition: NSCondition, until deadline: Date) -> Bool
}

/// The system's clock.
public struct SystemClock: DaemonClock {
    public init() {}
    public func now() -> Date { Date() }
    public func wait(_ condition: NSCondition, until deadline: Date) -> Bool { condition.wait(until: deadline) }
}

/// A clock that stands still until `advance` moves it; every wait on it is woken when it does.
public final class ManualClock: DaemonClock {
    private struct State {
        var now: Date
        /// The conditions waited on: each is woken (locked, broadcast) when the clock moves.
        var waiting: [ObjectIdentifier: NSCondition] = [:]
    }
    private let state: Locked<State>

    public init(_ start: Date = Date()) { state = Locked(State(now: start)) }

    public func now() -> Date { state.current.now }

    public func wait(_ condition: NSCondition, until deadline: Date) -> Bool {
        // Registered before the check, under the condition's lock (held by the caller): an `advance` that comes
        // between the check and the wait cannot broadcast before this thread waits.
        let reached = state.withLock { state -> Bool in
            state.waiting[ObjectIdentifier(condition)] = condition
            return state.now >= deadline
        }
        if reached { return false }
        condition.wait()
        return state.current.now < deadline
    }

    /// Moves the clock forward and wakes every wait on it.
    public func advance(by seconds: TimeInterval) {
        let waiting = state.withLock { state -> [NSCondition] in
            state.now = state.now.addingTimeInterval(seconds)
            return Array(state.waiting.values)
        }
        for condition in waiting {
            condition.withLock {
                condition.broadcast()
            }
        }
    }
}
