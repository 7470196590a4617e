#if canImport(Glibc)
import Glibc
#endif
import SyncSystem
import Testing

/// A spawned child starts with no signal blocked, whatever the thread that spawned it blocks: Dispatch's and the
/// test runner's threads block nearly every signal, and a mask survives exec. A `syncctl status --watch` that a
/// test started under tmux from such a thread ignored tmux's SIGHUP and outlived its test.
struct SpawnTests {
    @Test func aChildStartsWithNoSignalBlocked() throws {
        var blocked = sigset_t(), old = sigset_t()
        sigemptyset(&blocked)
        for sig in [SIGTERM, SIGHUP, SIGINT] { sigaddset(&blocked, sig) }
        pthread_sigmask(SIG_BLOCK, &blocked, &old)
        let pid: pid_t
        do {
            defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
            pid = try spawnProcess(["/bin/sleep", "30"], stdin: .null, stdout: .null, stderr: .null)
        }
        // Its mask, as the kernel shows it, once the child is the program (the spawn is done when it returns).
        var status = ""
        for _ in 0..<200 {
            let fd = open("/proc/\(pid)/status", O_RDONLY)
            if fd >= 0 {
                var buffer = [UInt8](repeating: 0, count: 4096)
                let n = read(fd, &buffer, buffer.count)
                close(fd)
                status = String(decoding: buffer[0..<max(n, 0)], as: UTF8.self)
                if status.contains("Name:\tsleep") { break }
            }
            usleep(10_000)
        }
        let mask = status.split(separator: "\n").first { $0.hasPrefix("SigBlk:") }.map { $0.split(separator: "\t").last.map(String.init) ?? "" }
        #expect(mask.map { UInt64($0, radix: 16) } == 0, "the child's blocked signals: \(mask ?? "?")")
        kill(pid, SIGTERM)
        #expect(waitForExit(pid) == 128 + SIGTERM, "SIGTERM ends it")
    }
}
