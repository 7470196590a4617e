#if canImport(Glibc)
import Glibc
#endif

/// Jobs run on a few worker threads, for an owner thread that must not block on them (the agent's session
/// thread): the owner submits jobs, and later collects results either by polling `completionFD` (readable while
/// results wait) or by blocking in `waitForCompletions()`. Submitting and collecting are for the owner thread
/// only; the workers touch only the shared queues, under the mutex.
public final class WorkerPool<Job, Output> {
    /// What the owner and the workers share.
    private struct Queues {
        var jobs: [Job] = []
        var jobHead = 0
        var completed: [Output] = []
        var stopping = false
        var hasJob: Bool { jobHead < jobs.count }

        mutating func nextJob() -> Job {
            let job = jobs[jobHead]
            jobHead += 1
            if jobHead == jobs.count { jobs.removeAll(keepingCapacity: true); jobHead = 0 }
            return job
        }
    }
    private let queues = Locked(Queues())
    private var workers: [pthread_t] = []
    /// Polls readable while results wait.
    private let completions: WakePipe
    /// Jobs submitted and not yet collected (owner thread only).
    public private(set) var outstanding = 0

    /// Read end of a pipe that holds a byte while results wait.
    public var completionFD: Int32 { completions.readFD }

    /// `makeWorker` runs once on each worker thread and returns what that thread does with a job (so a worker
    /// can keep state of its own: a connection, a buffer).
    public init(workers count: Int, makeWorker: @escaping () -> (Job) -> Output) throws {
        completions = try WakePipe()
        for _ in 0..<max(count, 1) {
            workers.append(try startThread { [self] in work(makeWorker()) })
        }
    }

    /// Stops the workers after the jobs queued and waits for them. Call before dropping the pool: the workers
    /// keep it alive until then.
    public func shutdown() {
        queues.withLock { $0.stopping = true }
        for thread in workers { pthread_join(thread, nil) }
        workers.removeAll()
    }

    public func submit(_ more: [Job]) {
        guard !more.isEmpty else { return }
        queues.withLock { $0.jobs += more }
        outstanding += more.count
    }

    /// Takes back the jobs no worker has begun (they will not run, and count as collected).
    public func withdrawQueued() -> [Job] {
        let queued = queues.withLock { queues in
            defer { (queues.jobs, queues.jobHead) = ([], 0) }
            return Array(queues.jobs[queues.jobHead...])
        }
        outstanding -= queued.count
        return queued
    }

    /// Results ready now, without waiting.
    public func takeCompletions() -> [Output] {
        guard outstanding > 0 else { return [] }
        // No worker waits on the results: collecting them wakes none.
        let done = queues.withLockWithoutWaking { queues in
            // Emptied with the results, under the lock: a result added after this sees an empty list and signals.
            completions.drain()
            defer { queues.completed.removeAll(keepingCapacity: true) }
            return queues.completed
        }
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
        while let job = queues.withLock(when: { $0.hasJob || $0.stopping }, { $0.hasJob ? $0.nextJob() : nil }) {
            let output = run(job)
            queues.withLockWithoutWaking { queues in
                queues.completed.append(output)
                if queues.completed.count == 1 { completions.signal() }
            }
        }
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
