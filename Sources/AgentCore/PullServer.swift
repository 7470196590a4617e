#if canImport(Glibc)
import Glibc
#endif
import Chunking
import ProjectScan
import SyncSystem
import Transfer
import Wire

/// Files some process on this host holds open for writing, keyed by (device, inode), with one such process id.
/// Read from /proc/<pid>/fdinfo: only processes this user may inspect are seen, which covers the user's training jobs.
func filesOpenForWriting() -> [UInt64: [UInt64: Int32]] {
    var result: [UInt64: [UInt64: Int32]] = [:]
    guard let proc = opendir("/proc") else { return result }
    defer { closedir(proc) }
    while let entry = readdir(proc) {
        let name = withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
        guard let pid = Int32(name) else { continue }
        guard let fds = opendir("/proc/\(pid)/fd") else { continue }
        while let fdEntry = readdir(fds) {
            let fdName = withUnsafePointer(to: fdEntry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            guard Int(fdName) != nil else { continue }
            guard let flags = fdFlags(pid: pid, fd: fdName), flags & O_ACCMODE != O_RDONLY else { continue }
            var st = stat()
            guard stat("/proc/\(pid)/fd/\(fdName)", &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
            result[UInt64(st.st_dev), default: [:]][UInt64(st.st_ino)] = pid
        }
        closedir(fds)
    }
    return result
}

private func fdFlags(pid: Int32, fd: String) -> Int32? {
    let f = open("/proc/\(pid)/fdinfo/\(fd)", O_RDONLY | O_CLOEXEC)
    guard f >= 0 else { return nil }
    defer { close(f) }
    var buffer = [UInt8](repeating: 0, count: 512)
    let n = buffer.withUnsafeMutableBytes { read(f, $0.baseAddress!, $0.count) }
    guard n > 0 else { return nil }
    let text = String(decoding: buffer[0..<n], as: UTF8.self)
    for line in text.split(separator: "\n") where line.hasPrefix("flags:") {
        return Int32(line.dropFirst(6).trimmingCharacters(), radix: 8)
    }
    return nil
}

extension Substring {
    fileprivate func trimmingCharacters() -> Substring {
        var s = self
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" { s = s.dropLast() }
        return s
    }
}

/// How long a remote file must be left alone before a pull takes it, when no watcher saw it closed.
let quietPeriodNanos: Int64 = 2_000_000_000

/// What a pull may take, listed for the client: every entry below the roots (conflict copies kept on this side
/// aside), each file with its chunk list, except files still being written (modified within `quietNanos`, or open
/// for writing by some process) and files that changed while they were read, which are reported as skipped.
struct PullLister {
    let tree: Tree
    /// The pull paths, or the paths of conflicts being resolved.
    let roots: [RelativePath]
    let quietNanos: Int64
    /// A file's digest and chunks, from its record or hashed now.
    let recordFor: (RelativePath, FileStat) throws -> (ChunkID, [ChunkRef])
    /// Given the files about to be offered first, to hash those without a record at once.
    let recordAll: ([(RelativePath, FileStat)]) -> Void

    /// An offered file, kept to serve its chunks.
    struct Offered {
        let path: RelativePath
        let chunks: [ChunkRef]
    }

    /// Sends the listing, then `listEnd`; returns the files offered, by operation id.
    func list(to writer: FrameWriter) throws -> [UInt32: Offered] {
        var rules = IgnoreRules()
        try rules.add(pattern: conflictCopyPattern, source: "built-in defaults", line: 0)
        let scan = try ProjectScanner(tree: tree, rules: rules).scan(roots: roots)
        let writers = scan.entries.contains { $0.kind == .regular } ? filesOpenForWriting() : [:]
        let now = wallClockNanos()
        recordAll(scan.entries.filter {
            $0.kind == .regular && now - $0.stat.mtimeNanos >= quietNanos && writers[$0.stat.device]?[$0.stat.inode] == nil
        }.map { ($0.path, $0.stat) })
        var offered: [UInt32: Offered] = [:]
        var op: UInt32 = 0
        for entry in scan.entries {
            op += 1
            switch entry.kind {
            case .directory:
                try writer.send(.remoteEntry(RemoteEntry(op: op, path: entry.path.bytes, state: .directory,
                                                         permissions: entry.stat.permissions, mtimeNanos: entry.stat.mtimeNanos,
                                                         size: 0, chunkCount: 0)))
            case .symlink:
                try writer.send(.remoteEntry(RemoteEntry(op: op, path: entry.path.bytes, state: .symlink(entry.linkTarget ?? []),
                                                         permissions: 0o777, mtimeNanos: entry.stat.mtimeNanos, size: 0, chunkCount: 0)))
            case .regular:
                if let why = stillBeingWritten(entry, now: now, writers: writers) {
                    try writer.send(.skipped(path: entry.path.bytes, reason: why, kind: .beingWritten))
                    continue
                }
                if let file = try offer(entry, op: op, to: writer) { offered[op] = file }
            case .other:
                continue
            }
        }
        for warning in scan.warnings { try writer.send(.skipped(path: Array(warning.path.utf8), reason: warning.message)) }
        try writer.send(.listEnd)
        return offered
    }

    /// Why a file is left for a later pull: modified too recently, or open for writing by some process.
    private func stillBeingWritten(_ entry: ScannedEntry, now: Int64, writers: [UInt64: [UInt64: Int32]]) -> String? {
        if now - entry.stat.mtimeNanos < quietNanos { return "modified \((now - entry.stat.mtimeNanos) / 1_000_000) ms ago; still being written?" }
        if let pid = writers[entry.stat.device]?[entry.stat.inode] { return "open for writing by process \(pid)" }
        return nil
    }

    /// Offers a file with its chunk list, unless it changed while it was read (then it is reported as skipped).
    private func offer(_ entry: ScannedEntry, op: UInt32, to writer: FrameWriter) throws -> Offered? {
        let (digest, chunks) = try recordFor(entry.path, entry.stat)
        guard let after = try tree.lstat(entry.path), after.sameContentIdentity(as: entry.stat) else {
            try writer.send(.skipped(path: entry.path.bytes, reason: "changed while being read", kind: .changedWhileRead))
            return nil
        }
        try writer.send(.remoteEntry(RemoteEntry(op: op, path: entry.path.bytes, state: .file(digest),
                                                 permissions: entry.stat.permissions, mtimeNanos: entry.stat.mtimeNanos,
                                                 size: entry.stat.size, chunkCount: UInt32(chunks.count))))
        var start = 0
        while start < chunks.count {
            let end = min(start + maxListItems, chunks.count)
            try writer.send(.chunkList(op: op, chunks: Array(chunks[start..<end])))
            start = end
        }
        return Offered(path: entry.path, chunks: chunks)
    }
}

extension AgentSession {
    /// A pull: the listing (`PullLister`), then the chunks the client asks for, until `fetchEnd`.
    func servePull(_ lister: PullLister, compress: Bool, compressAdaptively: Bool) throws {
        let offered = try lister.list(to: writer)
        try serveFetches(of: offered, in: lister.tree, compress: compress, compressAdaptively: compressAdaptively)
    }

    /// Sends the chunks asked for, each re-hashed as it is read; a file that changed since it was listed is
    /// aborted (the client skips it), as is one that cannot be opened.
    private func serveFetches(of offered: [UInt32: PullLister.Offered], in tree: Tree, compress: Bool, compressAdaptively: Bool) throws {
        let (reader, writer) = (self.reader, self.writer)
        let files = FileChunkSource(tree: tree)
        let sender = ChunkSender(compress: compress)
        // The main connection's pace only: joined streams add to the link, so this errs toward compressing.
        if compressAdaptively { sender.linkRate = { writer.drainRate } }
        var abandoned: Set<UInt32> = []
        // Extra connections the client asked for (a large pull): chunk data goes over them too.
        var streams: JoinedStreams?
        defer { streams?.close() }
        while true {
            guard let message = try reader.next() else {
                throw AgentError("the client closed the connection in the middle of a pull")
            }
            switch message {
            case .fetch(let fop, let indices):
                guard let entry = offered[fop] else { throw ProtocolError("fetch for operation \(fop), which was not offered") }
                if abandoned.contains(fop) { continue }
                sender.begin(op: fop, name: entry.path.name)
                for index in indices {
                    guard Int(index) < entry.chunks.count, !entry.chunks[Int(index)].id.isHole else {
                        throw ProtocolError("fetch index \(index) out of range for \(entry.path), or a hole (never sent)")
                    }
                    let target = try streams?.writer(main: writer) ?? writer
                    let why: String
                    switch try files.send(entry.chunks[Int(index)], index: index, op: fop, path: entry.path, by: sender, to: target) {
                    case .sent: continue
                    case .unreadable(let error): why = "cannot open on the remote: \(error)"
                    case .changed: why = "changed on the remote while being pulled"
                    }
                    abandoned.insert(fop)
                    try writer.send(.abort(op: fop, reason: why))
                    break
                }
            case .streamsOpen(let count):
                guard streams == nil else { throw ProtocolError("streams asked for twice in one pull") }
                if count > 0, let joined = try? JoinedStreams(limit: min(Int(count), Self.maxJoinedStreams), direction: .outbound,
                                                                  timeoutSeconds: timeoutSeconds) {
                    streams = joined
                    try writer.send(.streamsReady(address: joined.address, token: joined.token))
                } else {
                    try writer.send(.streamsReady(address: "", token: []))
                }
                try writer.flush()
            case .fetchEnd:
                // What the streams hold goes out before `done`; the client reads each stream to its end.
                try streams?.flushOutputs()
                try writer.send(.done)
                return
            default:
                throw ProtocolError("unexpected frame during a pull: type 0x\(String(message.encode().type, radix: 16))")
            }
        }
    }
}
