#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SyncSystem
import Transport
import Wire

/// Many hosts applying a snapshot at once (`HostApply`), served from one thread. A host's part on this machine is
/// small: a request of a few hundred bytes, then waiting minutes for a summary. So no thread waits on a host: the
/// calling thread polls every link at once, takes frames apart as they come, sends each link its heartbeats and
/// finds a link that stalled. What blocks (working out a host's request, the SSH handshake, recording what the host
/// applied) runs on a few worker threads, at most `workerLimit` whatever the number of hosts.
package enum ApplyLoop {
    /// Worker threads at most: enough connections in flight to hide a WAN's round trips, few enough for 2 cores.
    package static let workerLimit = 16

    /// Each host's push, in the order given. A host that is to get a push of the file list instead (see `HostApply`)
    /// gets `fallback`'s, on the worker that found it out, given what the apply did first if anything; without
    /// `fallback` its result is nil.
    package static func run(_ applies: [HostApply], fallback: Fallback? = nil) -> [Result<SyncStats?, Error>] {
        var results = Array(repeating: Result<SyncStats?, Error>.failure(SyncError("not run")), count: applies.count)
        guard !applies.isEmpty else { return results }
        let pool: WorkerPool<Job, Done>
        do {
            pool = try WorkerPool(workers: min(applies.count, workerLimit)) { { job in job.run(fallback) } }
        } catch {
            for i in results.indices { results[i] = .failure(SyncError("cannot start threads for the hosts: \(error)")) }
            return results
        }
        defer { pool.shutdown() }
        pool.submit(applies.indices.map { Job.start(applies[$0], $0) })

        var talking: [Exchange] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while pool.outstanding > 0 || !talking.isEmpty {
            // 1. Wait for a link to have something, a worker to be done, or the next heartbeat or stall check.
            var fds = [pollfd(fd: pool.completionFD, events: Int16(POLLIN), revents: 0)]
            var soon = false
            for x in talking {
                fds.append(pollfd(fd: x.readFD, events: Int16(POLLIN), revents: 0))
                if x.hasOutput {
                    if let w = x.writeFD { fds.append(pollfd(fd: w, events: Int16(POLLOUT), revents: 0)) } else { soon = true }
                }
            }
            let now = monotonicNanos()
            // (A link with output waiting is woken by its descriptor, or `soon`: its heartbeat is not due meanwhile.)
            let due = talking.filter { !$0.hasOutput }.map { $0.nextHeartbeat }.min().map { $0 > now ? ($0 - now) / 1_000_000 + 1 : 0 } ?? 1000
            _ = poll(&fds, nfds_t(fds.count), soon ? 10 : Int32(min(due, 1000)))
            var readable = Set<Int32>()
            for f in fds.dropFirst() where f.revents != 0 && f.events == Int16(POLLIN) { readable.insert(f.fd) }

            // 2. Workers done: a host connected begins its exchange; a host concluded has its result.
            for done in pool.takeCompletions() {
                switch done {
                case .started(let i, .success(let link)):
                    talking.append(Exchange(index: i, apply: applies[i], link: link))
                case .started(let i, .failure(let error)), .finished(let i, .failure(let error)):
                    results[i] = .failure(error)
                case .finished(let i, .success(let stats)):
                    results[i] = .success(stats)
                }
            }

            // 3. Every link: what came in, what goes out, heartbeats, stalls. A link that is over goes to a worker.
            talking.removeAll { x in
                let over: Outcome?
                do {
                    over = try x.service(readable: readable.contains(x.readFD), buffer: &buffer)
                } catch {
                    over = .failed(error)
                }
                guard let over else { return false }
                // The agent sees the end of its input now, not once a worker is free (it would take this side's
                // silence for a stall meanwhile).
                if case .failed = over {} else { x.link.connection.stream.closeWrite() }
                pool.submit([.finish(x, over)])
                return true
            }
        }
        return results
    }

    /// How an exchange ended.
    enum Outcome {
        /// The agent said `done`.
        case done(ApplySummary, StoreTrouble)
        /// The remote is not the one the record is of: a push of the file list follows.
        case replaced
        case failed(Error)
    }

    /// A push of the file list to host `index`, after what its apply did (nil: nothing).
    package typealias Fallback = (_ index: Int, _ applied: SyncStats?) throws -> SyncStats

    enum Job {
        case start(HostApply, Int)
        case finish(Exchange, Outcome)

        func run(_ fallback: Fallback?) -> Done {
            switch self {
            case .start(let apply, let i):
                do {
                    if try apply.prepare() { return .started(i, .success(try apply.connect())) }
                    return .finished(i, Result { try fallback?(i, nil) })
                } catch {
                    return .started(i, .failure(error))
                }
            case .finish(let x, let outcome):
                return .finished(x.index, Result {
                    switch outcome {
                    case .done(let summary, let trouble):
                        x.link.close()
                        try x.apply.adoptRemote(x.instance)
                        let stats = try x.apply.conclude(link: x.link, summary: summary, trouble: trouble, bytesSent: x.bytesSent,
                                                          bytesReceived: x.decoder.bytesIn)
                        guard x.apply.needsPush, let fallback else { return stats }
                        return try fallback(x.index, stats)
                    case .replaced:
                        x.link.close()
                        try x.apply.adoptRemote(x.instance)
                        x.apply.noteReplaced()
                        return try fallback?(x.index, nil)
                    case .failed(let error):
                        throw x.apply.failure(error, link: x.link)
                    }
                })
            }
        }
    }

    enum Done {
        case started(Int, Result<AgentLink, Error>)
        case finished(Int, Result<SyncStats?, Error>)
    }

    /// One host's exchange, as the loop drives it: its link, the frames coming in, the bytes going out.
    final class Exchange: @unchecked Sendable {  // the loop's, then one worker's
        let index: Int
        let apply: HostApply
        let link: AgentLink
        private let stream: ByteStream
        let readFD: Int32
        var writeFD: Int32? { stream.writeReadinessFD }
        var decoder = FrameDecoder()
        private var output: [UInt8]
        private var outputStart = 0
        private(set) var bytesSent: UInt64 = 0
        private enum Phase { case handshake, welcome, applying }
        private var phase = Phase.handshake
        private var summary = ApplySummary()
        private var trouble = StoreTrouble()
        /// The remote's instance, from its welcome (recorded by a worker: no database write on the loop's thread).
        private(set) var instance = ""
        private let heartbeatNanos: UInt64
        private let stallNanos: UInt64
        /// When the agent last took bytes, or this side last had none to give (the write side's stall clock).
        private var lastWrite = monotonicNanos()

        init(index: Int, apply: HostApply, link: AgentLink) {
            self.index = index
            self.apply = apply
            self.link = link
            stream = link.connection.stream
            readFD = stream.readinessFD ?? -1
            output = apply.requestBytes()
            let timeout = Double(apply.project.config.timeoutSeconds)
            heartbeatNanos = Heartbeat.interval(timeout)
            stallNanos = UInt64(timeout * 1e9)
        }

        var hasOutput: Bool { outputStart < output.count }
        var nextHeartbeat: UInt64 { lastWrite &+ heartbeatNanos }

        /// One turn: reads once when the link is readable, takes apart whatever frames are in, writes what the link
        /// takes. Returns how the exchange ended, once it did.
        func service(readable: Bool, buffer: inout [UInt8]) throws -> Outcome? {
            if readable {
                let n = try buffer.withUnsafeMutableBytes { try stream.read(into: $0) }
                if n == 0 {
                    throw SyncError("\(link.connection.peerDescription) closed the connection" + (phase == .applying ? "" : " before its welcome"))
                }
                buffer.withUnsafeBytes { decoder.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                if let over = try takeFrames() { return over }
            } else {
                try stream.checkProgress()
            }
            let now = monotonicNanos()
            if !hasOutput && now &- lastWrite >= heartbeatNanos {
                output = [1, 0, 0, 0, Message.heartbeat.encode().type]
                outputStart = 0
            }
            if hasOutput {
                let n = try output.withUnsafeBytes { try stream.writeWithoutWaiting(UnsafeRawBufferPointer(rebasing: $0[outputStart...])) }
                if n > 0 {
                    outputStart += n
                    bytesSent += UInt64(n)
                    lastWrite = monotonicNanos()
                    if !hasOutput { (output, outputStart) = ([], 0) }
                } else if now &- lastWrite > stallNanos {
                    throw StalledError(peer: link.connection.peerDescription, seconds: Double(now - lastWrite) / 1e9, writing: true)
                }
            }
            return nil
        }

        private func takeFrames() throws -> Outcome? {
            if phase == .handshake {
                guard let version = try decoder.handshake() else { return nil }
                try link.checkVersion(version)
                phase = .welcome
            }
            while let message = try decoder.next() {
                switch phase {
                case .handshake, .welcome:
                    phase = .applying
                    instance = try link.welcomed(message)
                    if apply.isReplaced(by: instance) { return .replaced }
                case .applying:
                    switch message {
                    case .applied(let part):
                        summary.applied += part.applied
                        summary.unchanged += part.unchanged
                        summary.deleted += part.deleted
                        summary.bytesPlaced += part.bytesPlaced
                        summary.others += part.others
                        if !part.unreadable.isEmpty { summary.unreadable = part.unreadable }
                    case .storeTrouble(let unreachable, let pack, let damaged, let said):
                        if unreachable { trouble.unreachable = displayText(said) } else {
                            trouble.damaged[pack, default: []] += damaged
                            trouble.reasons.append(displayText(said))
                        }
                    case .done:
                        return .done(summary, trouble)
                    case .error(let text, let reason):
                        throw AgentSaid(message: displayText(text), reason: reason)
                    default:
                        throw ProtocolError("unexpected frame type 0x\(String(message.encode().type, radix: 16)) from the agent")
                    }
                }
            }
            return nil
        }
    }
}
