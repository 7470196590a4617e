/// A value handed from one thread to others once: set by the thread that has it, waited for by those that need
/// it. The one way the code passes a single result across threads (an upload's outcome, a sender's last batch).
public final class OneShot<Value>: Sendable {
    private let value = Locked<Value?>(nil)

    public init() {}

    /// Sets the value and wakes every waiter. Only the first call counts; it returns whether this one did.
    @discardableResult
    public func set(_ newValue: Value) -> Bool {
        value.withLock { value in
            guard value == nil else { return false }
            value = newValue
            return true
        }
    }

    /// The value, once set.
    public func wait() -> Value { value.withLock(when: { $0 != nil }) { $0! } }

    /// The value, or nil when `monotonicNanos()` reaches `deadline` first.
    public func wait(until deadline: UInt64) -> Value? { value.withLock(when: { $0 != nil }, deadline: deadline) { value, _ in value } }

    /// The value if it is set, without waiting.
    public var current: Value? { value.current }
}
