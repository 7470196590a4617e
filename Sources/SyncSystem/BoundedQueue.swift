/// Items handed from the threads that make them to the thread that takes them, holding at most `limit` of
/// their cost (a count, or bytes): a producer waits while the queue is over it, a consumer while it is empty. Once
/// closed, producers stop waiting and their items are dropped, and the consumer takes what is left, then nil:
/// neither side can be left waiting for the other when one of them is gone.
public final class BoundedQueue<Element>: @unchecked Sendable {  // `cost` and `filled` are set once
    private struct Held {
        /// Taken items are cleared at once (a queue that never runs dry must not keep what it handed over: a
        /// read buffer, a batch of entries), and the cleared head dropped once it is half of the array.
        var items: [Element?] = []
        var head = 0
        var held = 0
        var closed = false
        var isEmpty: Bool { head == items.count }
    }
    private let state = Locked(Held())
    private let limit: Int
    private let cost: (Element) -> Int
    private let filled: (() -> Void)?

    /// `cost` is what an item counts against `limit`: 1 each by default. An item that costs nothing still waits
    /// while the queue is over its limit, so that items stay in the order they were put. `filled`, when given, is
    /// called (under the queue's lock, so briefly) each time an item goes into an empty queue: a consumer that
    /// polls descriptors rather than waiting here learns from it that there is something to take (see `poll`).
    public init(limit: Int, cost: @escaping (Element) -> Int = { _ in 1 }, filled: (() -> Void)? = nil) {
        self.limit = limit
        self.cost = cost
        self.filled = filled
    }

    /// Adds `item`, waiting while the queue holds more than its limit. False, and the item dropped, once closed.
    @discardableResult
    public func put(_ item: Element) -> Bool {
        state.withLock(when: { $0.held <= self.limit || $0.closed }) { queue in
            guard !queue.closed else { return false }
            if queue.isEmpty { filled?() }
            queue.items.append(item)
            queue.held += cost(item)
            return true
        }
    }

    /// The next item, waiting for one; nil once the queue is closed and empty.
    public func take() -> Element? {
        state.withLock(when: { !$0.isEmpty || $0.closed }) { queue in queue.isEmpty ? nil : removeFirst(&queue) }
    }

    /// The next item if one is queued, without waiting. A consumer that polls learns of the next item from
    /// `filled`, which is called for an item put after a `poll` that found the queue empty.
    public func poll() -> Element? {
        state.withLock { queue in queue.isEmpty ? nil : removeFirst(&queue) }
    }

    /// Whether an item is queued.
    public var isEmpty: Bool { state.current.isEmpty }

    /// Every item queued, waiting until `deadline` (`monotonicNanos()`) for one when there is none: empty when
    /// none came by then, or the queue is closed.
    public func takeAll(waitingUntil deadline: UInt64) -> [Element] {
        state.withLock(when: { !$0.isEmpty || $0.closed }, deadline: deadline) { queue, _ in
            var out: [Element] = []
            while !queue.isEmpty { out.append(removeFirst(&queue)) }
            return out
        }
    }

    /// No more items: waiting producers return (their items dropped), and the consumer gets what is left, then nil.
    public func close() { state.withLock { $0.closed = true } }

    /// Closes the queue and drops what it holds (its consumer is gone).
    public func discard() {
        state.withLock { queue in
            queue = Held()
            queue.closed = true
        }
    }

    private func removeFirst(_ queue: inout Held) -> Element {
        let item = queue.items[queue.head].take()!
        queue.head += 1
        queue.held -= cost(item)
        if queue.isEmpty {
            queue.items.removeAll(keepingCapacity: true)
            queue.head = 0
        } else if queue.head >= 64 && queue.head * 2 >= queue.items.count {
            queue.items.removeFirst(queue.head)
            queue.head = 0
        }
        return item
    }
}
