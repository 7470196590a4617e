#if canImport(Glibc)
import Glibc
#endif

/// Jobs run on a few worker threads, for an owner thread that must not block on them (the agent's session
/// thread): the owner submits jobs, and later collects results either by polling `completionFD` (readable while
/// results wait) or by blocking in `waitForCompletions()`. Submitting and collecting are for the owner thread
/// only; the workers touch only the shared queues, under the mutex.
public final class WorkerPool<Job, Output> {
    private let mutex = Mutex()
    private let wake = Condition()
    private var jobs: [Job] = []
    private var jobHead = 0
    private var completed: [Output] = []
    private var stopping = false
    private var workers: [pthread_t] = []
    /// Read end of a pipe that holds a byte while results wait.
    public let completionFD: Int32
    private let signalFD: Int32
    /// Jobs submitted and not yet collected (owner thread only).
    public private(set) var outstanding = 0

    /// `makeWorker` runs once on each worker thread and returns what that thread does with a job (so a worker
    /// can keep state of its own: a connection, a buffer).
    public init(workers count: Int, makeWorker: @escaping () -> (Job) -> Output) throws {
        let ends = try makePipe(nonBlocking: true)
        completionFD = ends.read
        signalFD = ends.write
        for _ in 0..<max(count, 1) {
            workers.append(try startThread { [self] in work(makeWorker()) })
        }
    }

    deinit {
        close(completionFD)
        close(signalFD)
    }

    /// Stops the workers after the jobs queued and waits for them. Call before dropping the pool: the workers
    /// keep it alive until then.
    public func shutdown() {
        mutex.lock()
        stopping = true
        wake.broadcast()
        mutex.unlock()
        for thread in workers { pthread_join(thread, nil) }
        workers.removeAll()
    }

    public func submit(_ more: [Job]) {
        guard !more.isEmpty else { return }
        mutex.lock()
        jobs += more
        wake.broadcast()
        mutex.unlock()
        outstanding += more.count
    }

    /// Takes back the jobs no worker has begun (they will not run, and count as collected).
    public func withdrawQueued() -> [Job] {
        mutex.lock()
        let queued = Array(jobs[jobHead...])
        jobs.removeAll(keepingCapacity: true)
        jobHead = 0
        mutex.unlock()
        outstanding -= queued.count
        return queued
    }

    /// Results ready now, without waiting.
    public func takeCompletions() -> [Output] {
        guard outstanding > 0 else { return [] }
        mutex.lock()
        let done = completed
        completed.removeAll(keepingCapacity: true)
        var sink: UInt8 = 0
        while read(completionFD, &sink, 1) == 1 {}
        mutex.unlock()
        outstanding -= done.count
        return done
    }

    /// Blocks until at least one result is ready (returns at once when nothing is outstanding).
    public func waitForCompletions() -> [Output] {
        while outstanding > 0 {
            let done = takeCompletions()
            if !done.isEmpty { return done }
            var fds = [pollfd(fd: completionFD, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 1, -1)
        }
        return []
    }

    private func work(_ run: (Job) -> Output) {
        mutex.lock()
        while true {
            while jobHead == jobs.count && !stopping { wake.wait(mutex) }
            if jobHead == jobs.count { break }
            let job = jobs[jobHead]
            jobHead += 1
            if jobHead == jobs.count { jobs.removeAll(keepingCapacity: true); jobHead = 0 }
            mutex.unlock()
            let output = run(job)
            mutex.lock()
            completed.append(output)
            if completed.count == 1 {
                var byte: UInt8 = 1
                _ = write(signalFD, &byte, 1)
            }
        }
        mutex.unlock()
    }
}

/// Results of work shared out among threads, by index: a worker claims the next index (or is given one) and sets
/// its slot; the slots are read once the workers are joined.
public final class IndexedResults<Value>: @unchecked Sendable {
    private let state: Locked<(next: Int, slots: [Value?])>

    public init(count: Int) { state = Locked((0, Array(repeating: nil, count: count))) }

    /// The next index no worker has claimed yet; nil once all are.
    public func claim() -> Int? {
        state.withLock { state in
            guard state.next < state.slots.count else { return nil }
            state.next += 1
            return state.next - 1
        }
    }

    public func set(_ index: Int, _ value: Value) { state.withLock { $0.slots[index] = value } }

    public subscript(_ index: Int) -> Value? { state.withLock { $0.slots[index] } }
}
