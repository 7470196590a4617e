#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Placement
import ProjectScan
import Watch
import SyncSystem
import Transfer
import Wire

// Waiting in a push: for input from every stream, for syncs, and for store reads; renames and answers once
// files are durable.
extension AgentSession {
    /// Waits until store reads or fsyncs complete, and handles them.
    func waitForFetchesOrFlushes() throws {
        let durability = durability!
        if durability.outstanding == 0 { durability.closeBatch() }
        var fds = [pollfd(fd: durability.completionFD, events: Int16(POLLIN), revents: 0)]
        if let fetcher = push.fetcher { fds.append(pollfd(fd: fetcher.completionFD, events: Int16(POLLIN), revents: 0)) }
        if poll(&fds, nfds_t(fds.count), 1000) < 0 && errno != EINTR { throw SystemError(call: "poll", path: "agent", errno: errno) }
        try handle(durability.take())
        if let fetcher = push.fetcher { try receiveFetched(fetcher.takeCompletions()) }
        if durability.outstanding == 0 && !durability.hasOpenBatch { try syncDirectoriesAndAnswer() }
    }

    /// Sends the answers `progress` made durable, and renames the files it made durable.
    func handle(_ progress: DurableBatches<OpResult>.Progress) throws {
        if !progress.answers.isEmpty { state.commitRecords() }
        for (answer, error) in progress.answers { try sendResult(Self.answer(answer, syncError: error)) }
        try commitSynced(progress.durable)
    }

    /// `answer`, or a failure when the sync that was to make it durable failed (the change may not survive a crash;
    /// the next push compares again).
    static func answer(_ answer: OpResult, syncError: Int32) -> OpResult {
        guard syncError != 0, answer.status == .applied else { return answer }
        return OpResult(op: answer.op, status: .failed, message: "the change could not be made durable: \(SystemError(call: "sync", path: "remote project", errno: syncError))",
                        current: .absent, keptAs: answer.keptAs)
    }

    /// Renames durable files into place; their answers go out once the renames are durable too.
    func commitSynced(_ done: [(op: UInt32, error: Int32)]) throws {
        guard !done.isEmpty, let durability else { return }
        for completion in done {
            let op = completion.op
            guard let file = push.sealed.removeValue(forKey: op), let assembly = file.assembly else { continue }
            // A sealed file is one being placed: its assembly knows where.
            let path = assembly.path
            let header = file.header
            if completion.error != 0 {
                assembly.discard()
                durability.renamed(OpResult(op: op, status: .failed, message: "\(SystemError(call: "fsync", path: path.description, errno: completion.error))",
                                            current: .absent, keptAs: file.keptAs), directory: nil)
                continue
            }
            let parent: FileDescriptor?
            do {
                var stashed: ChunkID?
                // Checked and renamed while no other session places anything: one that placed this path meanwhile
                // is seen here, and its version is not replaced.
                parent = try building.placing {
                    try assembly.commit(expectingNothing: file.targetStat == nil) { now in
                        if !FileAssembly.targetUnchanged(now, since: file.targetStat) { throw ConflictAtPlacement(current: now) }
                        // The version replaced is kept for an undo or a later move, unless it is larger than the
                        // cache keeps past this push: then keeping it (a key per chunk) would only be undone.
                        if let now, now.kind == .regular, now.size <= Self.cacheLimit { stashed = self.stash(path, stat: now) }
                    }
                }
                if let stashed { refreshStash(stashed) }
            } catch is ConflictAtPlacement {
                assembly.discard()
                let (current, st) = (try? currentState(path)) ?? (.absent, nil)
                let isFile = st?.kind == .regular
                durability.renamed(OpResult(op: op, status: .conflict,
                                            message: "changed on the remote while the new version was being sent: the remote holds \(describe(current, st))",
                                            current: current, currentSize: isFile ? st!.size : 0, currentMtimeNanos: isFile ? st!.mtimeNanos : 0,
                                            keptAs: file.keptAs), directory: nil)
                continue
            } catch let error where error is SystemError || error is PlacementError || error is PathError {
                assembly.discard()
                durability.renamed(OpResult(op: op, status: .failed, message: describeFailure(error), current: .absent,
                                            keptAs: file.keptAs), directory: nil)
                continue
            }
            if let st = try tree.lstat(path) {
                var placed = FileRecord(path: path, stat: st, digest: header.digest, chunks: assembly.chunks)
                placed.placedBy = clientID
                replaceRecord(placed)
            } else {
                held.willChange(path)
            }
            durability.renamed(OpResult(op: op, status: .applied, message: assembly.resumedCount > 0 ? "resumed \(assembly.resumedCount) chunks" : "",
                                        current: .file(header.digest), keptAs: file.keptAs),
                               directory: parent.map { (path.parentBytes, $0) })
        }
    }

    /// Makes the renames so far durable (an fsync per directory, or one of the file system) and sends their answers.
    func syncDirectoriesAndAnswer() throws {
        guard let durability else { return }
        let answers = durability.flush()
        if !answers.isEmpty { state.commitRecords() }
        for (answer, error) in answers { try sendResult(Self.answer(answer, syncError: error)) }
    }

    /// Called before the reader waits for input: while fsyncs are in flight, waits for whichever comes
    /// first, input or completed fsyncs, and places and answers for the latter, so the client never waits
    /// on answers the agent could give.
    ///
    /// Files sealed meanwhile are handed to `durability` when no sync is in flight (group commit): while one runs,
    /// the next batch fills, so a steady stream of small files costs one sync per batch, not one per pause.
    func commitWhileIdle(alsoWaking extra: Int32? = nil) throws {
        guard let durability else { return }
        guard let input = stream.readinessFD else {
            durability.closeBatch()
            while durability.outstanding > 0 { try handle(durability.wait()) }
            return try syncDirectoriesAndAnswer()
        }
        while true {
            if durability.outstanding == 0 { durability.closeBatch() }
            let fetching = push.fetcher.map { $0.outstanding > 0 } ?? false
            if durability.outstanding == 0 && !fetching { return try syncDirectoriesAndAnswer() }
            var fds = [pollfd(fd: input, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: durability.completionFD, events: Int16(POLLIN), revents: 0)]
            if let fetcher = push.fetcher { fds.append(pollfd(fd: fetcher.completionFD, events: Int16(POLLIN), revents: 0)) }
            if let extra { fds.append(pollfd(fd: extra, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&fds, nfds_t(fds.count), 1000)
            if ready < 0 && errno != EINTR { throw SystemError(call: "poll", path: "agent input", errno: errno) }
            if ready == 0 { try stream.checkProgress() }
            try handle(durability.take())
            if let fetcher = push.fetcher { try receiveFetched(fetcher.takeCompletions()) }
            if fds[0].revents != 0 || (extra != nil && fds.last!.revents != 0) { return }
        }
    }

    /// Extra connections one push may have at most.
    static let maxJoinedStreams = 8

    /// The next frame of a push, from this connection or, once the client asked for streams, from any joined
    /// one (`joined`). While neither has a frame, it does what `commitWhileIdle` does and sends the answers. Chunk
    /// data on this connection goes to `chunk` straight from the reader's buffer.
    func nextPushMessage(chunk: (ChunkFrame) throws -> Void) throws -> (frame: FrameReader.Frame, joined: Bool) {
        guard let streams = push.joinedStreams, let input = stream.readinessFD else { return (try reader.nextFrame(chunk: chunk), false) }
        while true {
            if let message = try streams.take() { return (.message(message), true) }
            if reader.hasBufferedFrame { return (try reader.nextFrame(chunk: chunk), false) }
            try notifyLock.withLock {
                try commitWhileIdle(alsoWaking: streams.wakeFD)
                try writer.flush()
            }
            if streams.hasQueued { continue }
            var fds = [pollfd(fd: input, events: Int16(POLLIN), revents: 0), pollfd(fd: streams.wakeFD, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, 1000)
            if ready < 0 && errno != EINTR { throw SystemError(call: "poll", path: "agent input", errno: errno) }
            if ready == 0 { try stream.checkProgress() }
            if fds[0].revents == 0 { continue }
            return (try reader.nextFrame(chunk: chunk), false)
        }
    }
}
