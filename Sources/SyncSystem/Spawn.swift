#if canImport(Glibc)
import Glibc
#endif
import CSystemShims

/// What a spawned child gets as one of its standard descriptors.
public enum ChildDescriptor {
    /// The parent's own.
    case inherit
    /// /dev/null.
    case null
    /// A file opened for appending (created if missing).
    case append(String)
    /// A descriptor of the parent's, duplicated (a pipe end, typically).
    case descriptor(Int32)
}

/// Starts `arguments[0]` (a path) with `arguments` as its argv. The child keeps only its three standard
/// descriptors: every other one is closed in the child, so it never holds a pipe or socket that some other
/// thread of this process had open without close-on-exec at that moment (a long-lived child that inherits
/// another child's output pipe keeps that pipe's reader waiting for an end that never comes).
///
/// `environment` nil keeps this process's environment. With `newProcessGroup` the child leads a process group
/// of its own, so `kill(-pid, …)` reaches it and everything it starts.
public func spawnProcess(_ arguments: [String], environment: [String: String]? = nil,
                         stdin: ChildDescriptor = .inherit, stdout: ChildDescriptor = .inherit,
                         stderr: ChildDescriptor = .inherit, newProcessGroup: Bool = false) throws -> pid_t {
    precondition(!arguments.isEmpty, "spawnProcess needs a program")
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for (target, source) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
        switch source {
        case .inherit: break
        case .null: posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
        case .append(let path): posix_spawn_file_actions_addopen(&actions, target, path, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        case .descriptor(let fd): posix_spawn_file_actions_adddup2(&actions, fd, target)
        }
    }
    syncd_spawn_close_from(&actions, 3)

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    // The child starts with the default action for the signals this process handles or ignores itself (syncctl
    // and syncd catch SIGINT and SIGTERM, and ignore SIGPIPE): an ignored signal would otherwise stay ignored
    // across exec, and a local agent would not stop on SIGTERM, nor a shell command on Ctrl-C.
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE] { sigaddset(&defaults, sig) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    // Nor does it inherit the spawning thread's blocked signals (Dispatch's threads block nearly all of them, and a
    // mask survives exec): a child spawned from one would never see SIGTERM or SIGHUP.
    var unblocked = sigset_t()
    sigemptyset(&unblocked)
    posix_spawnattr_setsigmask(&attributes, &unblocked)
    var flags = Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)
    if newProcessGroup {
        flags |= Int16(POSIX_SPAWN_SETPGROUP)
        posix_spawnattr_setpgroup(&attributes, 0)
    }
    posix_spawnattr_setflags(&attributes, flags)

    let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let rc: Int32
    if let environment {
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        rc = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp)
    } else {
        rc = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, environ)
    }
    guard rc == 0 else { throw SystemError(call: "posix_spawn", path: arguments[0], errno: rc) }
    return pid
}

/// Waits for `pid` and returns its exit status, or 128 + the signal that killed it (as a shell reports it).
public func waitForExit(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        if errno != EINTR { return -1 }
    }
    return exitCode(fromWaitStatus: status)
}

/// A wait status as a shell reports it: the exit status, or 128 + the signal.
public func exitCode(fromWaitStatus status: Int32) -> Int32 {
    status & 0x7F != 0 ? 128 + (status & 0x7F) : (status >> 8) & 0xFF
}

/// This process's environment, read from `environ` (what Foundation's ProcessInfo gives, without Foundation).
public func processEnvironment() -> [String: String] {
    var out: [String: String] = [:]
    var entry = environ
    while let pointer = entry.pointee {
        let text = String(cString: pointer)
        if let equals = text.firstIndex(of: "=") { out[String(text[..<equals])] = String(text[text.index(after: equals)...]) }
        entry += 1
    }
    return out
}

/// The home directory of the user this process runs as, from the password database ("/" when it has none).
public func homeDirectoryOfUser() -> String {
    guard let entry = getpwuid(getuid()), let dir = entry.pointee.pw_dir else { return "/" }
    return String(cString: dir)
}
