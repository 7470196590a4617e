#if canImport(Glibc)
import Glibc
#endif

/// The threads that call into C libraries whose global state `exit` tears down (libssh2, and libcrypto beneath
/// it), and the sockets they may block on. `exit` runs libcrypto's cleanup; a thread still encrypting then (an
/// SSH connection's pump finishing its goodbye, an extra stream still in its handshake) crashes the process after
/// its work was done and reported. `stopAll` shuts those sockets down, so that every blocked call fails at once,
/// and joins the threads, before the process exits.
public enum LibraryThreads {
    private struct Registry {
        var running: [UInt64: pthread_t] = [:]
        var finished: [pthread_t] = []
        var sockets: [UInt64: Int32] = [:]
        var next: UInt64 = 0
        var stopping = false

        mutating func key() -> UInt64 {
            defer { next += 1 }
            return next
        }

        /// Threads that ended since the last call, for the caller to join.
        mutating func takeFinished() -> [pthread_t] {
            defer { finished.removeAll() }
            return finished
        }
    }
    private static let registry = Locked(Registry())

    /// Starts a joinable thread running `body`, registered until it returns. Threads that ended since the last
    /// call are joined here, so a long-lived process (the daemon) does not keep them.
    public static func start(_ body: @escaping () -> Void) throws {
        for thread in registry.withLock({ $0.takeFinished() }) { pthread_join(thread, nil) }
        // Registered before the thread can end: it takes the registry's lock to say so.
        try registry.withLock { r in
            let key = r.key()
            r.running[key] = try startThread {
                body()
                registry.withLock { r in
                    if let me = r.running.removeValue(forKey: key) { r.finished.append(me) }
                }
            }
        }
    }

    /// Registers a socket such a thread may block on; returns the key to `unregister` it with once it is closed.
    /// A socket registered after `stopAll` began is shut down at once.
    public static func register(socket: Int32) -> UInt64 {
        registry.withLock { r in
            let key = r.key()
            r.sockets[key] = socket
            if r.stopping { shutdown(socket, Int32(SHUT_RDWR)) }
            return key
        }
    }

    public static func unregister(socket key: UInt64) { registry.withLock { $0.sockets[key] = nil } }

    /// Shuts every registered socket down (and any registered later) and joins every registered thread, waiting
    /// at most `seconds` for them to end. Returns false when some did not (the caller should then leave with
    /// `_exit`, not `exit`).
    @discardableResult
    public static func stopAll(seconds: Double) -> Bool {
        registry.withLock { r in
            r.stopping = true
            for socket in r.sockets.values { shutdown(socket, Int32(SHUT_RDWR)) }
        }
        let (done, allEnded) = registry.withLock(when: { $0.running.isEmpty }, deadline: monotonicNanos() + UInt64(seconds * 1e9)) { r, ended in
            (r.takeFinished(), ended)
        }
        for thread in done { pthread_join(thread, nil) }
        return allEnded
    }
}
