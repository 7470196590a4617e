#if canImport(Glibc)
import Glibc
#endif

/// Items handed from the threads that make them to the thread that takes them, holding at most `limit` of
/// their cost (a count, or bytes): a producer waits while the queue is over it, a consumer while it is empty. Once
/// closed, producers stop waiting and their items are dropped, and the consumer takes what is left, then nil:
/// neither side can be left waiting for the other when one of them is gone.
public final class BoundedQueue<Element>: @unchecked Sendable {  // `mutex` guards everything below it
    private let mutex = Mutex()
    private let changed = Condition()
    private var items: [Element] = []
    private var head = 0
    private var held = 0
    private var closed = false
    private let limit: Int
    private let cost: (Element) -> Int

    /// `cost` is what an item counts against `limit`: 1 each by default. An item that costs nothing still waits
    /// while the queue is over its limit, so that items stay in the order they were put.
    public init(limit: Int, cost: @escaping (Element) -> Int = { _ in 1 }) {
        self.limit = limit
        self.cost = cost
    }

    /// Adds `item`, waiting while the queue holds more than its limit. False, and the item dropped, once closed.
    @discardableResult
    public func put(_ item: Element) -> Bool {
        mutex.lock()
        defer { mutex.unlock() }
        while held > limit && !closed { changed.wait(mutex) }
        guard !closed else { return false }
        items.append(item)
        held += cost(item)
        changed.broadcast()
        return true
    }

    /// The next item, waiting for one; nil once the queue is closed and empty.
    public func take() -> Element? {
        mutex.lock()
        defer { mutex.unlock() }
        while head == items.count && !closed { changed.wait(mutex) }
        guard head < items.count else { return nil }
        return removeFirstLocked()
    }

    /// Every item queued, waiting until `deadline` (`monotonicNanos()`) for one when there is none: empty when
    /// none came by then, or the queue is closed.
    public func takeAll(waitingUntil deadline: UInt64) -> [Element] {
        mutex.lock()
        defer { mutex.unlock() }
        while head == items.count && !closed && monotonicNanos() < deadline { changed.wait(mutex, until: deadline) }
        var out: [Element] = []
        while head < items.count { out.append(removeFirstLocked()) }
        return out
    }

    /// No more items: waiting producers return (their items dropped), and the consumer gets what is left, then nil.
    public func close() {
        mutex.lock()
        closed = true
        changed.broadcast()
        mutex.unlock()
    }

    private func removeFirstLocked() -> Element {
        let item = items[head]
        head += 1
        held -= cost(item)
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        }
        changed.broadcast()
        return item
    }
}
