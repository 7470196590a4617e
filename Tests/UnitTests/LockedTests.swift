import Glibc
import SyncSystem
import Testing

/// `Locked`: a value touched only under its lock (issue 28, item 5).
struct LockedTests {
    @Test func incrementsFromManyThreadsAreNotLost() throws {
        let counter = Locked(0)
        let threads = 8, each = 20_000
        var started: [pthread_t] = []
        for _ in 0..<threads {
            started.append(try startThread { for _ in 0..<each { counter.withLock { $0 += 1 } } })
        }
        for thread in started { pthread_join(thread, nil) }
        #expect(counter.current == threads * each)
    }

    @Test func withLockReturnsWhatTheBodyReturnsAndRethrows() {
        struct Refused: Error {}
        let names = Locked(["a"])
        let count = names.withLock { list -> Int in
            list.append("b")
            return list.count
        }
        #expect(count == 2 && names.current == ["a", "b"])
        #expect(throws: Refused.self) { try names.withLock { _ in throw Refused() } }
        #expect(names.current == ["a", "b"], "the lock was let go after a throw")
    }
}
