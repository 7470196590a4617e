import SyncSystem
import Testing

/// The concurrency vocabulary's two hand-over types: a value handed over once, and a bounded queue.
struct ConcurrencyTests {
    @Test func aOneShotKeepsItsFirstValueAndWaitsWithABound() throws {
        let shot = OneShot<Int>()
        #expect(shot.current == nil)
        #expect(shot.wait(until: monotonicNanos() + 20_000_000) == nil, "nothing set: the bounded wait gives up")
        try startDetachedThread(name: "setter") { shot.set(7) }
        #expect(shot.wait() == 7)
        #expect(!shot.set(8), "only the first value counts")
        #expect(shot.wait(until: monotonicNanos()) == 7)
    }

    @Test func aBoundedQueueHoldsBackProducersAndKeepsOrder() throws {
        let queue = BoundedQueue<[UInt8]>(limit: 10) { $0.count }
        let produced = Locked(0)
        let finished = OneShot<Void>()
        try startDetachedThread(name: "producer") {
            for i in 0..<50 {
                guard queue.put([UInt8](repeating: UInt8(i), count: 4)) else { break }
                produced.withLock { $0 += 1 }
            }
            queue.close()
            finished.set(())
        }
        // Over 10 bytes held, the producer waits: it is at most one item past the limit ahead of the consumer.
        #expect(finished.wait(until: monotonicNanos() + 200_000_000) == nil, "the producer is held back")
        #expect(produced.current <= 4, "\(produced.current) items put before any was taken")
        var taken: [UInt8] = []
        while let item = queue.take() { taken.append(item[0]) }
        #expect(taken == (0..<50).map { UInt8($0) }, "every item, in order, then nil once closed")
    }

    /// A queue its producer keeps from running dry (a file read faster than it is sent) lets go of each item as it
    /// is taken: it held every read buffer it had handed over until it emptied (981 MB for a 4 GiB file).
    @Test func aQueueThatNeverRunsDryLetsGoOfWhatWasTaken() {
        final class Item: Sendable { let n: Int; init(_ n: Int) { self.n = n } }
        let queue = BoundedQueue<Item>(limit: 4)
        var gone: [Int] = []
        weak var first: Item?
        do {
            let item = Item(0)
            first = item
            queue.put(item)
        }
        for i in 1...1000 {
            queue.put(Item(i))
            weak let taken = queue.take()
            if taken == nil { gone.append(i - 1) }
        }
        #expect(first == nil, "the first item, taken long ago, is still held")
        #expect(gone.count == 1000, "\(1000 - gone.count) taken items still held by the queue")
        #expect(queue.take()?.n == 1000 && queue.isEmpty)
    }

    @Test func closingLetsAWaitingProducerGoAndDropsItsItem() throws {
        let queue = BoundedQueue<Int>(limit: 0)
        #expect(queue.put(1))
        let second = OneShot<Bool>()
        try startDetachedThread(name: "blocked") { second.set(queue.put(2)) }
        #expect(second.wait(until: monotonicNanos() + 100_000_000) == nil, "over the limit: it waits")
        queue.close()
        #expect(second.wait() == false, "closed: the put returns, its item dropped")
        #expect(queue.take() == 1)
        #expect(queue.take() == nil)
        #expect(queue.takeAll(waitingUntil: monotonicNanos() + 1_000_000_000).isEmpty, "closed and empty: no wait")
    }

    @Test func takeAllWaitsUntilItsDeadlineAtMost() {
        let queue = BoundedQueue<String>(limit: .max)
        let started = monotonicNanos()
        #expect(queue.takeAll(waitingUntil: started + 50_000_000).isEmpty)
        #expect(monotonicNanos() - started >= 50_000_000)
        queue.put("a")
        queue.put("b")
        #expect(queue.takeAll(waitingUntil: monotonicNanos() + 1_000_000_000) == ["a", "b"])
    }
}
