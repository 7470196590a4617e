import CSystemShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed system call, with the call, the path it was about and errno: enough for a person to act on.
public struct SystemError: Error, CustomStringConvertible, Equatable {
    /// The call that failed, for example "openat".
    public let call: String
    /// The path the call was about, relative to the tree it works in, when there is one.
    public let path: String?
    /// The errno value.
    public let errno: Int32

    public init(call: String, path: String?, errno: Int32) {
        self.call = call
        self.path = path
        self.errno = errno
    }

    /// The text of `strerror` for this error's errno.
    public var reason: String { String(cString: strerror(errno)) }

    public var description: String {
        if let path { return "\(call) '\(path)' failed: \(reason) (errno \(errno))" }
        return "\(call) failed: \(reason) (errno \(errno))"
    }
}

/// Runs a raw system call, retrying on EINTR, and throws `SystemError` naming the call when it returns -1.
@inline(__always)
@discardableResult
public func syscall<T: FixedWidthInteger>(_ call: String, path: String? = nil, _ body: () -> T) throws -> T {
    while true {
        let result = body()
        if result == -1 {
            let code = Glibc.errno
            if code == EINTR { continue }
            throw SystemError(call: call, path: path, errno: code)
        }
        return result
    }
}

/// Current wall-clock time in nanoseconds since the epoch.
public func wallClockNanos() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Monotonic time in nanoseconds, for measuring durations.
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Writes a line to standard error, unbuffered.
public func printError(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    var bytes = Array(line.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
        if n <= 0 { if errno == EINTR { continue }; return }
        offset += n
    }
    bytes.removeAll()
}

private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// Starts a joinable thread running `body`; the closure, and whatever it captures, lives until it returns. `name`
/// (at most 15 bytes are kept) is what a debugger and `top -H` show. Every thread of syncd starts here: directly
/// (the agent's, joined by their owner), through `startDetachedThread`, or through `LibraryThreads.start`.
@discardableResult
public func startThread(name: String? = nil, _ body: @escaping () -> Void) throws -> pthread_t {
    let run: () -> Void
    if let name {
        let short = Array(name.utf8.prefix(15)) + [0]
        run = {
            short.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { _ = syncd_name_thread($0.baseAddress!) } }
            body()
        }
    } else {
        run = body
    }
    let context = Unmanaged.passRetained(ThreadBody(run)).toOpaque()
    var handle = pthread_t()
    let rc = pthread_create(&handle, nil, { raw in
        Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue().run()
        return nil
    }, context)
    guard rc == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(context).release()
        throw SystemError(call: "pthread_create", path: nil, errno: rc)
    }
    return handle
}

/// Starts a thread nobody joins: its end is told by what it hands over (a `OneShot`, a queue, a closed socket).
public func startDetachedThread(name: String, _ body: @escaping () -> Void) throws {
    pthread_detach(try startThread(name: name, body))
}

/// A pthread mutex with a stable address (for code that does without Foundation, like the agent).
public final class Mutex {
    let raw = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    public init() { pthread_mutex_init(raw, nil) }
    deinit {
        pthread_mutex_destroy(raw)
        raw.deallocate()
    }
    public func lock() { pthread_mutex_lock(raw) }
    public func unlock() { pthread_mutex_unlock(raw) }
    /// Takes the lock if it is free; false (not taken) if another thread holds it.
    public func tryLock() -> Bool { pthread_mutex_trylock(raw) == 0 }

    /// Runs `body` with the lock held: for a lock that guards what a whole object holds (its buffers, its handle)
    /// rather than one value (`Locked`).
    @discardableResult
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Runs `body` with the lock held if it is free; nil, without waiting, if another thread holds it.
    public func withLockIfFree<T>(_ body: () throws -> T) rethrows -> T? {
        guard tryLock() else { return nil }
        defer { unlock() }
        return try body()
    }
}

/// A value only touched under its own lock: `withLock` instead of a lock and an unlock paired by hand (issue 28,
/// item 5). It is a monitor as well: a thread can wait under the lock until the value is as it needs
/// (`withLock(when:)`), and every change made through `withLock` wakes the threads waiting, so no change can be
/// made without the signal that goes with it. Foundation-free, for the agent's side too.
public final class Locked<Value>: @unchecked Sendable {  // `mutex` guards `value` and `waiters`
    private let mutex = Mutex()
    private let changed = Condition()
    private var value: Value
    /// Threads in a wait: a change signals only when there is one.
    private var waiters = 0

    public init(_ value: Value) { self.value = value }

    /// Runs `body` with the value, the lock held; what `body` returns is returned. Wakes the threads waiting for
    /// the value to change.
    @discardableResult
    public func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        mutex.lock()
        defer { unlockWaking() }
        return try body(&value)
    }

    /// Runs `body` with the value, the lock held, without waking the threads waiting on it: for a change that no
    /// waiter's condition reads (a worker's result, which its owner collects by polling), where waking every
    /// idle thread would cost a context switch each for nothing.
    @discardableResult
    public func withLockWithoutWaking<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        mutex.lock()
        defer { mutex.unlock() }
        return try body(&value)
    }

    /// Waits until `ready` holds for the value, then runs `body` with it, the lock held throughout.
    @discardableResult
    public func withLock<T>(when ready: (Value) -> Bool, _ body: (inout Value) throws -> T) rethrows -> T {
        mutex.lock()
        defer { unlockWaking() }
        while !ready(value) { wait(until: nil) }
        return try body(&value)
    }

    /// Waits until `ready` holds for the value or `monotonicNanos()` reaches `deadline`, then runs `body` with the
    /// value and whether it is ready (false: the deadline passed first).
    @discardableResult
    public func withLock<T>(when ready: (Value) -> Bool, deadline: UInt64, _ body: (inout Value, _ ready: Bool) throws -> T) rethrows -> T {
        mutex.lock()
        defer { unlockWaking() }
        var isReady = ready(value)
        while !isReady && monotonicNanos() < deadline {
            wait(until: deadline)
            isReady = ready(value)
        }
        return try body(&value, isReady)
    }

    /// A copy of the value, read under the lock.
    public var current: Value {
        mutex.lock()
        defer { mutex.unlock() }
        return value
    }

    private func wait(until deadline: UInt64?) {
        waiters += 1
        if let deadline { changed.wait(mutex, until: deadline) } else { changed.wait(mutex) }
        waiters -= 1
    }

    private func unlockWaking() {
        if waiters > 0 { changed.broadcast() }
        mutex.unlock()
    }
}

/// A pthread condition variable used with a `Mutex`; timed waits run on the monotonic clock.
public final class Condition {
    private let raw = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    public init() {
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(raw, &attributes)
        pthread_condattr_destroy(&attributes)
    }
    deinit {
        pthread_cond_destroy(raw)
        raw.deallocate()
    }
    public func wait(_ mutex: Mutex) { pthread_cond_wait(raw, mutex.raw) }
    /// Waits until signalled or until `monotonicNanos()` reaches `deadline`; false when the deadline passed.
    @discardableResult
    public func wait(_ mutex: Mutex, until deadline: UInt64) -> Bool {
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        return pthread_cond_timedwait(raw, mutex.raw, &ts) == 0
    }
    public func signal() { pthread_cond_signal(raw) }
    public func broadcast() { pthread_cond_broadcast(raw) }
}

/// This machine's architecture as `uname -m` prints it ("x86_64").
public func machineName() -> String {
    var name = utsname()
    uname(&name)
    return withUnsafePointer(to: &name.machine) { $0.withMemoryRebound(to: CChar.self, capacity: 65) { String(cString: $0) } }
}

extension String {
    /// The text of a C buffer up to its first NUL (or its end), as UTF-8 with invalid bytes repaired.
    public init(nulTerminated buffer: [CChar]) {
        self.init(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A wall-clock time in nanoseconds, in local time by libc (Foundation's date formatters load ICU first, which costs
/// a short command milliseconds): `YYYY-MM-DD HH:MM:SS` for messages, or `YYYYMMDD-HHMMSS` (compact).
public func formatTime(_ nanos: Int64, compact: Bool = false) -> String {
    var seconds = time_t(nanos / 1_000_000_000)
    var parts = tm()
    localtime_r(&seconds, &parts)
    func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
    let (d, t, between) = compact ? ("", "", "-") : ("-", ":", " ")
    return "\(parts.tm_year + 1900)\(d)\(two(parts.tm_mon + 1))\(d)\(two(parts.tm_mday))\(between)"
        + "\(two(parts.tm_hour))\(t)\(two(parts.tm_min))\(t)\(two(parts.tm_sec))"
}
