#if canImport(Glibc)
import Glibc
#endif

/// A value handed from one thread to others once: set by the thread that has it, waited for by those that need
/// it. The one way the code passes a single result across threads (an upload's outcome, a sender's last batch).
public final class OneShot<Value>: @unchecked Sendable {  // `mutex` guards `value`
    private let mutex = Mutex()
    private let ready = Condition()
    private var value: Value?

    public init() {}

    /// Sets the value and wakes every waiter. Only the first call counts; it returns whether this one did.
    @discardableResult
    public func set(_ newValue: Value) -> Bool {
        mutex.lock()
        defer { mutex.unlock() }
        guard value == nil else { return false }
        value = newValue
        ready.broadcast()
        return true
    }

    /// The value, once set.
    public func wait() -> Value {
        mutex.lock()
        defer { mutex.unlock() }
        while value == nil { ready.wait(mutex) }
        return value!
    }

    /// The value, or nil when `monotonicNanos()` reaches `deadline` first.
    public func wait(until deadline: UInt64) -> Value? {
        mutex.lock()
        defer { mutex.unlock() }
        while value == nil {
            if !ready.wait(mutex, until: deadline) && value == nil && monotonicNanos() >= deadline { return nil }
        }
        return value
    }

    /// The value if it is set, without waiting.
    public var current: Value? {
        mutex.lock()
        defer { mutex.unlock() }
        return value
    }
}
