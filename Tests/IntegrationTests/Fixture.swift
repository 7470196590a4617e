import Chunking
import Builds
import Client
import Control
import Fleet
import Foundation
import SyncSystem
import Testing

/// Where the built executables are: beside the test bundle in .build/<config>/, or $SYNCD_BIN_DIR.
func binDirectory() -> String {
    if let dir = ProcessInfo.processInfo.environment["SYNCD_BIN_DIR"] { return dir }
    var dir = ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]) as NSString
    for _ in 0..<6 {
        dir = dir.deletingLastPathComponent as NSString
        if FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent("syncctl")) { return dir as String }
    }
    let here = (#filePath as NSString).deletingLastPathComponent
    return here + "/../../.build/debug"
}

/// The result of running a command.
struct RunResult {
    let status: Int32
    let stdout: String
    let stderr: String
    /// stdout's bytes as written (names that are not UTF-8 survive here, not in `stdout`).
    var stdoutBytes: [UInt8] = []

    /// The `--json` statistics object printed on stdout.
    func json() throws -> [String: Any] {
        let data = Data(stdout.utf8)
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw FixtureError("stdout is not a JSON object: \(stdout)")
        }
        return object
    }

    /// The length of the array at `key` (`conflicts` is a list of objects, docs/JSON.md).
    func count(_ key: String) throws -> Int {
        guard let list = try json()[key] as? [Any] else { throw FixtureError("no array '\(key)' in \(stdout)") }
        return list.count
    }

    /// The typed statistics a push or pull printed with `--json`.
    func stats() throws -> SyncStats {
        do { return try JSONDecoder().decode(SyncStats.self, from: Data(stdout.utf8)) } catch {
            throw FixtureError("stdout is not a push or pull's statistics (\(error)): \(stdout)")
        }
    }

    func int(_ key: String) throws -> Int {
        guard let n = try json()[key] as? Int else { throw FixtureError("no integer '\(key)' in \(stdout)") }
        return n
    }
}

extension UInt64 {
    /// As the tests compare counts: an Int.
    var asInt: Int { Int(self) }
}

struct FixtureError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A throwaway project, remote root and state directory, driven through the real syncctl binary
/// and the real syncd-agent.
final class SyncFixture: Sendable {
    let base: String
    let project: String
    let remoteRoot: String
    let state: String
    let name = "proj"
    var remoteProject: String { remoteRoot + "/" + name }

    init() throws {
        base = NSTemporaryDirectory() + "syncd-it-" + UUID().uuidString.prefix(8)
        project = base + "/" + name
        remoteRoot = base + "/remote"
        state = base + "/state"
        for d in [project, remoteRoot, state] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        let r = try syncctl(["init", project, "--remote", "local:" + remoteRoot])
        guard r.status == 0 else { throw FixtureError("syncctl init failed (status \(r.status)): \(r.stderr)") }
    }

    deinit { try? FileManager.default.removeItem(atPath: base) }

    @discardableResult
    func syncctl(_ arguments: [String], onStart: ((RunningChild) -> Void)? = nil) throws -> RunResult {
        try run(binDirectory() + "/syncctl", arguments, env: ["XDG_STATE_HOME": state], onStart: onStart)
    }

    func push() throws -> RunResult { try syncctl(["push", project, "--json"]) }
    func pull() throws -> RunResult { try syncctl(["pull", project, "--json"]) }

    // MARK: files

    func write(_ relative: String, _ bytes: [UInt8], mode: Int = 0o644, in root: String? = nil) throws {
        let path = (root ?? project) + "/" + relative
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
    }

    func write(_ relative: String, _ text: String, in root: String? = nil) throws { try write(relative, Array(text.utf8), in: root) }

    func read(_ relative: String, in root: String? = nil) -> [UInt8]? {
        FileManager.default.contents(atPath: (root ?? project) + "/" + relative).map { [UInt8]($0) }
    }

    /// Adds `line` (a setting, "compress: always") to the project's syncd.yaml.
    func addSetting(_ line: String) throws {
        let config = project + "/syncd.yaml"
        try (String(contentsOfFile: config, encoding: .utf8) + line + "\n").write(toFile: config, atomically: true, encoding: .utf8)
    }

    /// Sets a remote file's mtime into the past so a pull does not treat it as being written.
    func age(_ relative: String, in root: String? = nil, seconds: Double = 10) throws {
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -seconds)],
                                              ofItemAtPath: (root ?? remoteProject) + "/" + relative)
    }

    /// Every path below `root` with kind, mode, and content or target, skipping syncd's own state.
    static func describeTree(_ root: String, skipping: Set<String> = [".syncd"]) -> [String: String] {
        var out: [String: String] = [:]
        func walk(_ rel: String) {
            let full = rel.isEmpty ? root : root + "/" + rel
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: full) else { return }
            for name in names.sorted() {
                let r = rel.isEmpty ? name : rel + "/" + name
                if skipping.contains(r) { continue }
                var st = stat()
                guard lstat(root + "/" + r, &st) == 0 else { continue }
                let mode = String(st.st_mode & 0o7777, radix: 8)
                switch st.st_mode & S_IFMT {
                case S_IFDIR:
                    out[r] = "dir \(mode)"
                    walk(r)
                case S_IFLNK:
                    out[r] = "link " + ((try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/" + r)) ?? "?")
                default:
                    let data = FileManager.default.contents(atPath: root + "/" + r) ?? Data()
                    out[r] = "file \(mode) \(data.count) \(ChunkID(hashing: [UInt8](data)).hex)"
                }
            }
        }
        walk("")
        return out
    }

    /// The local tree minus what a push leaves out, and the remote tree; equal after a successful push.
    func treesMatch(ignoring extra: Set<String> = []) -> (Bool, String) {
        let local = Self.describeTree(project, skipping: extra)
        var remote = Self.describeTree(remoteProject, skipping: extra.union([".syncd"]))
        // The remote has every pull path as a directory from the first push; empty ones need no local twin.
        for pull in ["output", "checkpoint"] where local[pull] == nil && remote[pull]?.hasPrefix("dir") == true
            && !remote.keys.contains(where: { $0.hasPrefix(pull + "/") }) {
            remote[pull] = nil
        }
        if local == remote { return (true, "") }
        var diff: [String] = []
        for k in Set(local.keys).union(remote.keys).sorted() where local[k] != remote[k] {
            diff.append("\(k): local=\(local[k] ?? "-") remote=\(remote[k] ?? "-")")
        }
        return (false, diff.prefix(20).joined(separator: "\n"))
    }
}

/// A program `run` started, for its `onStart` callback.
final class RunningChild {
    let processIdentifier: pid_t
    /// Its exit status (or 128 + signal) once reaped.
    private(set) var exitCode: Int32?

    init(_ pid: pid_t) { processIdentifier = pid }

    /// Whether it has not exited yet (reaps it once it has).
    var isRunning: Bool {
        reap(wait: false)
        return exitCode == nil
    }

    func reap(wait: Bool) {
        guard exitCode == nil else { return }
        var status: Int32 = 0
        while true {
            let r = waitpid(processIdentifier, &status, wait ? 0 : WNOHANG)
            if r == processIdentifier { exitCode = SyncSystem.exitCode(fromWaitStatus: status); return }
            if r < 0 && errno == EINTR { continue }
            if r < 0 { exitCode = -1 }
            return
        }
    }

    /// The processes in its process group, one `pid: command line` each (for a report when it hangs).
    func processGroup() -> [String] {
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
        return pids.sorted().compactMap { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 3, Int32(fields[2]) == processIdentifier else { return nil }
            let command = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            return "\(pid) [\(fields[0])]: " + String(decoding: command.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
        }
    }
}

/// Runs a program to completion, capturing stdout and stderr, for at most `timeout` seconds: then it and
/// everything it started (its own process group) are killed, and the test fails with what was still running.
/// The child gets only the three pipes (see `spawnProcess`), and a descendant that keeps them open after the
/// program exited is killed too, `outputGrace` seconds later, not waited for.
func run(_ executable: String, _ arguments: [String], env: [String: String] = [:], stdin: Data? = nil, cwd: String? = nil,
         timeout: Double = 300, outputGrace: Double = 20, onStart: ((RunningChild) -> Void)? = nil,
         sourceLocation: SourceLocation = #_sourceLocation) throws -> RunResult {
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in env { environment[k] = v }
    var words = [executable] + arguments
    if let cwd { words = ["/bin/sh", "-c", "cd \"$1\" && shift && exec \"$@\"", "sh", cwd] + words }
    // The child's ends block, as a program expects of its stdio; only ours are non-blocking.
    let input = try makePipe(nonBlocking: false), out = try makePipe(nonBlocking: false), err = try makePipe(nonBlocking: false)
    for fd in [input.write, out.read, err.read] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    let child: RunningChild
    do {
        child = RunningChild(try spawnProcess(words, environment: environment, stdin: .descriptor(input.read),
                                              stdout: .descriptor(out.write), stderr: .descriptor(err.write),
                                              newProcessGroup: true))
    } catch {
        for fd in [input.read, input.write, out.read, out.write, err.read, err.write] { close(fd) }
        throw FixtureError("cannot start \(executable): \(error)")
    }
    close(input.read); close(out.write); close(err.write)
    onStart?(child)

    signal(SIGPIPE, SIG_IGN)  // a child that exits without reading its input must not kill the test run
    var pending = [UInt8](stdin ?? Data()), written = 0
    var inputFD: Int32 = input.write
    if pending.isEmpty { close(inputFD); inputFD = -1 }
    var outData = [UInt8](), errData = [UInt8]()
    var open: [Int32: Bool] = [out.read: true, err.read: true]
    let deadline = Date().addingTimeInterval(timeout)
    var exitedAt: Date?
    var problem: String?
    var buffer = [UInt8](repeating: 0, count: 65536)
    while open.values.contains(true) || inputFD >= 0 {
        if exitedAt == nil && !child.isRunning { exitedAt = Date() }
        if Date() > deadline {
            problem = "timed out after \(Int(timeout)) s; still running:\n" + child.processGroup().joined(separator: "\n")
        } else if let exitedAt, Date().timeIntervalSince(exitedAt) > outputGrace {
            problem = "exited, but its output stayed open \(Int(outputGrace)) s later, held by:\n" + child.processGroup().joined(separator: "\n")
        }
        if problem != nil {
            kill(-child.processIdentifier, SIGKILL)
            break
        }
        var fds = open.filter(\.value).keys.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        if inputFD >= 0 { fds.append(pollfd(fd: inputFD, events: Int16(POLLOUT), revents: 0)) }
        _ = poll(&fds, nfds_t(fds.count), 200)
        for p in fds where p.revents != 0 {
            if p.fd == inputFD {
                let n = pending[written...].withUnsafeBytes { write(inputFD, $0.baseAddress, $0.count) }
                if n > 0 { written += n }
                if written == pending.count || (n < 0 && errno != EAGAIN && errno != EINTR) { close(inputFD); inputFD = -1 }
                continue
            }
            let n = read(p.fd, &buffer, buffer.count)
            if n > 0 {
                if p.fd == out.read { outData += buffer[0..<n] } else { errData += buffer[0..<n] }
            } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                open[p.fd] = false
            }
        }
    }
    if inputFD >= 0 { close(inputFD) }
    close(out.read); close(err.read)
    child.reap(wait: true)
    var stderr = String(decoding: errData, as: UTF8.self)
    if let problem {
        Issue.record("\(executable) \(arguments.joined(separator: " ")): \(problem)", sourceLocation: sourceLocation)
        stderr += "\n[test fixture] " + problem
    }
    return RunResult(status: child.exitCode ?? -1, stdout: String(decoding: outData, as: UTF8.self),
                     stderr: stderr, stdoutBytes: outData)
}

/// Deterministic pseudo-random bytes.
func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { raw in
        let words = raw.bindMemory(to: UInt64.self)
        for i in 0..<words.count {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            words[i] = z ^ (z >> 31)
        }
    }
    for i in (count / 8 * 8)..<count { out[i] = UInt8(truncatingIfNeeded: seed &+ UInt64(i)) }
    return out
}

extension SyncFixture {
    /// The fixture's project opened in this process, with its own state directory and no progress output.
    func openProject() throws -> Project {
        try Project(directory: project, options: SyncOptions(stateDirectory: state, progress: false))
    }
}

// MARK: names as bytes

/// Writes `content` to the file named by `name`'s bytes in `directory` (which must exist).
func writeFile(in directory: String, named name: [UInt8], _ content: [UInt8]) throws {
    let path = Array(directory.utf8) + [UInt8(ascii: "/")] + name
    let fd = withCName(path) { open($0, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
    guard fd >= 0 else { throw FixtureError("cannot create \(displayPath(path)): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    guard content.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == content.count else { throw FixtureError("short write") }
}

/// Makes the directory named by `name`'s bytes in `directory`.
func makeDirectory(in directory: String, named name: [UInt8]) throws {
    let path = Array(directory.utf8) + [UInt8(ascii: "/")] + name
    guard withCName(path, { mkdir($0, 0o755) }) == 0 else { throw FixtureError("cannot mkdir \(displayPath(path))") }
}

/// The bytes of a file named by raw bytes; nil when unreadable.
func readFile(_ path: [UInt8]) -> [UInt8]? {
    let fd = withCName(path) { open($0, O_RDONLY | O_CLOEXEC) }
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buffer[0..<n]
    }
    return out
}

/// What `find ROOT -print0` lists below `root` (relative, bytes, sorted), leaving out `skipping` top-level names.
func findPrint0(_ root: String, skipping: Set<String> = [".syncd"]) throws -> [[UInt8]] {
    let r = try run("/usr/bin/find", [".", "-mindepth", "1", "-print0"], cwd: root)
    guard r.status == 0 else { throw FixtureError("find failed: \(r.stderr)") }
    let skipped = skipping.map { Array("./\($0)".utf8) }
    return r.stdoutBytes.split(separator: 0).map { Array($0) }
        .filter { entry in !skipped.contains { entry == $0 || entry.starts(with: $0 + [UInt8(ascii: "/")]) } }
        .map { Array($0.dropFirst(2)) }
        .sorted { $0.lexicographicallyPrecedes($1) }
}
