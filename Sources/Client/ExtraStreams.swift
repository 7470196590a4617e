import Foundation
import SSHTransport
import SyncConfig
import SyncSystem
import Transport
import Transfer
import Wire

/// Extra connections a large push or pull spreads its chunk data over (`streams:` in syncd.yaml,
/// `Message.streamsOpen`). libssh2 encrypts and decrypts on the thread that pumps its session, one cipher block
/// per call, which holds one connection to what one core does that way; each joined stream has a session, a
/// pump thread and an sshd of its own.
///
/// Streams are connected in the background while the session goes on over its own connection, and carry data
/// as they join. In a push the sender thread alone writes to them: each chunk goes to whichever connection,
/// the push's own included, has the least waiting to go out. In a pull `joined` hands each new one to the
/// caller, which reads it. One that cannot be opened leaves the session on fewer; one that fails once joined
/// fails the session, since what it carried is lost (the next one resumes).
final class ExtraStreams: @unchecked Sendable {
    /// The streams joined, attempts still under way, why some failed, and whether the session is over.
    private struct Joined {
        var joined: [(connection: AgentConnection, writer: FrameWriter)] = []
        var closed = false
        var failures: [String] = []
        var connecting: Int
    }
    private let streams: Locked<Joined>

    /// Starts connecting `count` streams to the session's agent, which listens at `address` and admits `token`.
    /// `joined` gets each connection as it joins (its number from 1), and `settled` is called once each attempt
    /// is over, joined or not; both on the connecting thread.
    init(project: Project, address: String, token: [UInt8], count: Int,
         joined onJoin: @escaping @Sendable (AgentConnection, Int) -> Void = { _, _ in }, settled: @escaping @Sendable () -> Void = {}) {
        streams = Locked(Joined(connecting: max(count, 1)))
        for n in 1...max(count, 1) {
            // Joined before the process exits: an attempt may still be in its SSH handshake when the session ends.
            let attempt = { [self] in
                defer {
                    streams.withLock { $0.connecting -= 1 }
                    settled()
                }
                do {
                    let connection = try project.connectStream(address: address, token: token)
                    // A joined stream may rightly carry nothing for a while (the agent sends no heartbeats on it):
                    // its link is watched by SSH keepalives, and the session by its own connection's timeout.
                    connection.stream.progressTimeout = nil
                    let late = streams.withLock { set in
                        if !set.closed { set.joined.append((connection, FrameWriter(connection.stream))) }
                        return set.closed
                    }
                    if late {
                        connection.terminate()
                        _ = connection.finish()
                    } else {
                        Trace.mark("stream \(n + 1) joined")
                        onJoin(connection, n)
                    }
                } catch {
                    // One still connecting when the session ended failed because it ended: not worth a word.
                    streams.withLock { set in if !set.closed { set.failures.append("\(error)") } }
                }
            }
            do { try LibraryThreads.start(attempt) } catch {
                streams.withLock { set in
                    set.connecting -= 1
                    set.failures.append("cannot start a thread: \(error)")
                }
            }
        }
    }

    private var current: [(connection: AgentConnection, writer: FrameWriter)] { streams.current.joined }

    /// The writer for the next chunk: `main` or a joined stream's, whichever has the fewest bytes waiting.
    func writer(main: FrameWriter, mainStream: ByteStream) -> FrameWriter {
        let streams = current
        guard !streams.isEmpty else { return main }
        return leastLoaded(main: main, waiting: main.pendingBytes + mainStream.queuedOutputBytes,
                           others: streams.map { ($0.writer, $0.writer.pendingBytes + $0.connection.stream.queuedOutputBytes) })
    }

    /// Sends what the joined streams' writers hold.
    func flush() throws {
        for s in current {
            do { try s.writer.flush() } catch {
                throw SyncError("an extra stream of this push failed: \(error)")
            }
        }
    }

    /// Why a joined stream failed, if one did: what it carried is lost, and the push cannot complete. Checked
    /// while the sender waits, since a stream it is not writing to could fail unseen.
    func failure() -> String? {
        for s in current {
            if let error = (s.connection.stream as? SSHChannelStream)?.error { return "\(error)" }
        }
        return nil
    }

    /// What the joined streams carry per second, those whose rate is known.
    var drainRate: Double { current.reduce(0) { $0 + ($1.connection.stream.drainRate ?? 0) } }

    /// Bytes written to the joined streams.
    var bytesWritten: UInt64 { current.reduce(0) { $0 + $1.writer.bytesWritten } }

    /// Joined streams that carried data out.
    var carryingCount: Int { current.filter { $0.writer.bytesWritten > 0 }.count }

    /// Streams joined so far, and whether attempts are still under way.
    var state: (joined: Int, connecting: Bool) { streams.withLock { ($0.joined.count, $0.connecting > 0) } }

    /// Closes every stream once the push is answered (the agent has read all they carried); streams still
    /// connecting close as soon as they are made. Returns why streams could not be opened, if any could not.
    package func finish() -> [String] {
        let (open, why) = streams.withLock { set in
            defer { (set.closed, set.joined) = (true, []) }
            return (set.joined, set.failures)
        }
        for s in open { s.connection.stream.closeWrite() }
        for s in open { _ = s.connection.finish() }
        return why
    }

    /// Drops every stream at once (the push failed).
    func abort() {
        let open = streams.withLock { set in
            defer { (set.closed, set.joined) = (true, []) }
            return set.joined
        }
        for s in open { s.connection.terminate() }
        for s in open { _ = s.connection.finish() }
    }
}

extension Project {
    /// Connections a push or pull with much to move uses (see `ExtraStreams`): `streams:`, or for `auto` half
    /// this machine's cores, at most 4 (so one below 4 cores: there, on loopback, the ssh processes and the
    /// agent already need the other core, and more connections measured no faster). Always 1 for a `local:`
    /// remote, where nothing is encrypted.
    var streamCount: Int {
        guard case .ssh = config.remote else { return 1 }
        if let n = config.streams { return n }
        return min(4, max(1, ProcessInfo.processInfo.activeProcessorCount / 2))
    }

    /// A new SSH connection whose agent joins the session at `address` as an extra stream.
    func connectStream(address: String, token: [UInt8]) throws -> AgentConnection {
        guard !address.isEmpty, address.utf8.count <= 100,
              address.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x41 && $0 <= 0x5A) || $0 == 0x2D }) else {
            throw ProtocolError("the agent named a stream address that is not letters, digits and dashes")
        }
        let greeting = clientGreeting(.join(token: token))
        return try connect(greeting: { _ in greeting }, join: address)
    }
}

/// Frames from several connections taken in one place: a thread per connection reads its frames into one
/// queue bounded by the chunk bytes it holds (a pull over extra streams). `close` lets every reading thread go.
final class FrameMerger: Sendable {
    enum Item {
        case frame(Message, source: Int)
        /// Source `source` ended cleanly between frames.
        case ended(source: Int)
        case failed(Error, source: Int)
        /// Something changed that the taker may want to look at (an attempt to join settled).
        case wake
    }
    private let queue = BoundedQueue<Item>(limit: 32 << 20) { item in
        if case .frame(let message, _) = item { return message.payloadBytes }
        return 0
    }
    private let readBySource = Locked<[Int: UInt64]>([:])

    /// Bytes read so far from the sources other than 0 (the joined streams).
    var extraBytesRead: UInt64 { readBySource.current.filter { $0.key != 0 }.values.reduce(0, +) }

    /// Reads `reader` on a thread of its own until its end, a failure, a frame `last` says is its last (the
    /// session's connection must be left alone after `done`: the next session's frames follow), or `close`.
    func read(_ reader: FrameReader, source: Int, handshake: Bool = false, last: @escaping @Sendable (Message) -> Bool = { _ in false }) {
        let reading = { [self] in
            do {
                if handshake { _ = try reader.readHandshake() }
                while let message = try reader.next() {
                    readBySource.withLock { $0[source] = reader.bytesRead }
                    guard queue.put(.frame(message, source: source)), !last(message) else { return }
                }
                queue.put(.ended(source: source))
            } catch {
                queue.put(.failed(error, source: source))
            }
        }
        do { try startDetachedThread(name: "frames-\(source)", reading) } catch {
            queue.put(.failed(error, source: source))
        }
    }

    func wake() { queue.put(.wake) }

    /// The next item, waiting for one.
    func next() -> Item { queue.take() ?? .failed(SyncError("the pull's frames were closed"), source: 0) }

    /// Done with the frames (the pull is over, or failed): every reading thread stops at its next frame.
    func close() { queue.close() }
}

extension Message {
    /// The chunk bytes a frame holds, for bounding queues of frames.
    var payloadBytes: Int {
        if case .chunkData(_, _, _, _, let payload) = self { return payload.count }
        return 0
    }
}
