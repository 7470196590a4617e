#if canImport(Glibc)
import Glibc
#endif

/// The threads that call into C libraries whose global state `exit` tears down (libssh2, and libcrypto beneath
/// it), and the sockets they may block on. `exit` runs libcrypto's cleanup; a thread still encrypting then (an
/// SSH connection's pump finishing its goodbye, an extra stream still in its handshake) crashes the process after
/// its work was done and reported. `stopAll` shuts those sockets down, so that every blocked call fails at once,
/// and joins the threads, before the process exits.
public enum LibraryThreads {
    private final class Registry: @unchecked Sendable {  // `lock` guards everything
        let lock = Mutex()
        let ended = Condition()
        var running: [UInt64: pthread_t] = [:]
        var finished: [pthread_t] = []
        var sockets: [UInt64: Int32] = [:]
        var next: UInt64 = 0
        var stopping = false
    }
    private static let registry = Registry()

    /// Starts a joinable thread running `body`, registered until it returns. Threads that ended since the last
    /// call are joined here, so a long-lived process (the daemon) does not keep them.
    public static func start(_ body: @escaping () -> Void) throws {
        let r = registry
        r.lock.lock()
        let ended = r.finished
        r.finished.removeAll()
        r.lock.unlock()
        for thread in ended { pthread_join(thread, nil) }
        r.lock.lock()
        defer { r.lock.unlock() }
        let key = r.next
        r.next += 1
        let thread = try startThread {
            body()
            r.lock.lock()
            if let me = r.running.removeValue(forKey: key) { r.finished.append(me) }
            r.ended.broadcast()
            r.lock.unlock()
        }
        r.running[key] = thread
    }

    /// Registers a socket such a thread may block on; returns the key to `unregister` it with once it is closed.
    /// A socket registered after `stopAll` began is shut down at once.
    public static func register(socket: Int32) -> UInt64 {
        let r = registry
        r.lock.lock()
        defer { r.lock.unlock() }
        let key = r.next
        r.next += 1
        r.sockets[key] = socket
        if r.stopping { shutdown(socket, Int32(SHUT_RDWR)) }
        return key
    }

    public static func unregister(socket key: UInt64) {
        let r = registry
        r.lock.lock()
        r.sockets[key] = nil
        r.lock.unlock()
    }

    /// Shuts every registered socket down and joins every registered thread, waiting at most `seconds` for them
    /// to end. Returns false when some did not (the caller should then leave with `_exit`, not `exit`).
    @discardableResult
    public static func stopAll(seconds: Double) -> Bool {
        let r = registry
        r.lock.lock()
        r.stopping = true
        for socket in r.sockets.values { shutdown(socket, Int32(SHUT_RDWR)) }
        let deadline = monotonicNanos() + UInt64(seconds * 1e9)
        while !r.running.isEmpty && monotonicNanos() < deadline {
            r.ended.wait(r.lock, until: deadline)
            // Sockets made meanwhile (a handshake that was just starting) go down too.
            for socket in r.sockets.values { shutdown(socket, Int32(SHUT_RDWR)) }
        }
        let done = r.finished
        r.finished.removeAll()
        let allEnded = r.running.isEmpty
        r.lock.unlock()
        for thread in done { pthread_join(thread, nil) }
        return allEnded
    }
}
