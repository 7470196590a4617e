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
final class ExtraStreams: Sendable {
    /// The streams joined; a push sends chunk data over them.
    let lanes = ChunkLanes<AgentConnection>()
    /// Attempts still under way, and why some failed.
    private let attempts: Locked<(connecting: Int, failures: [String])>

    /// Starts connecting `count` streams to the session's agent, which listens at `address` and admits `token`.
    /// `joined` gets each connection as it joins (its number from 1), and `settled` is called once each attempt
    /// is over, joined or not; both on the connecting thread.
    init(project: Project, address: String, token: [UInt8], count: Int,
         joined onJoin: @escaping @Sendable (AgentConnection, Int) -> Void = { _, _ in }, settled: @escaping @Sendable () -> Void = {}) {
        attempts = Locked((max(count, 1), []))
        for n in 1...max(count, 1) {
            // Joined before the process exits: an attempt may still be in its SSH handshake when the session ends.
            let attempt = { [self] in
                defer {
                    attempts.withLock { $0.connecting -= 1 }
                    settled()
                }
                do {
                    let connection = try project.connectStream(address: address, token: token)
                    // A joined stream may rightly carry nothing for a while (the agent sends no heartbeats on it):
                    // its link is watched by SSH keepalives, and the session by its own connection's timeout.
                    connection.stream.progressTimeout = nil
                    let writer = FrameWriter(connection.stream)
                    if lanes.add(connection, writer: writer, waiting: { writer.pendingBytes + connection.stream.queuedOutputBytes }) {
                        Trace.mark("stream \(n + 1) joined")
                        onJoin(connection, n)
                    } else {
                        connection.terminate()
                        _ = connection.finish()
                    }
                } catch {
                    // One still connecting when the session ended failed because it ended: not worth a word.
                    if !lanes.isClosed { attempts.withLock { $0.failures.append("\(error)") } }
                }
            }
            do { try LibraryThreads.start(attempt) } catch {
                attempts.withLock { state in
                    state.connecting -= 1
                    state.failures.append("cannot start a thread: \(error)")
                }
            }
        }
    }

    private var current: [ChunkLanes<AgentConnection>.Lane] { lanes.open }

    /// The writer for the next chunk: `main` or a joined stream's, whichever has the fewest bytes waiting.
    func writer(main: FrameWriter, mainStream: ByteStream) -> FrameWriter {
        lanes.writer(main: main, waiting: main.pendingBytes + mainStream.queuedOutputBytes)
    }

    /// Sends what the joined streams' writers hold.
    func flush() throws {
        do { try lanes.flush() } catch {
            throw SyncError("an extra stream of this push failed: \(error)")
        }
    }

    /// Why a joined stream failed, if one did: what it carried is lost, and the push cannot complete. Checked
    /// while the sender waits, since a stream it is not writing to could fail unseen.
    func failure() -> String? {
        for lane in current {
            if let error = (lane.stream.stream as? SSHChannelStream)?.error { return "\(error)" }
        }
        return nil
    }

    /// What the joined streams carry per second, those whose rate is known.
    var drainRate: Double { current.reduce(0) { $0 + ($1.stream.stream.drainRate ?? 0) } }

    /// Bytes written to the joined streams.
    var bytesWritten: UInt64 { current.reduce(0) { $0 + $1.writer.bytesWritten } }

    /// Joined streams that carried data out.
    var carryingCount: Int { current.filter { $0.writer.bytesWritten > 0 }.count }

    /// Streams joined so far, and whether attempts are still under way.
    var state: (joined: Int, connecting: Bool) { (current.count, attempts.withLock { $0.connecting > 0 }) }

    /// Closes every stream once the push is answered (the agent has read all they carried); streams still
    /// connecting close as soon as they are made. Returns why streams could not be opened, if any could not.
    package func finish() -> [String] {
        let open = lanes.close()
        for lane in open { lane.stream.stream.closeWrite() }
        for lane in open { _ = lane.stream.finish() }
        return attempts.withLock { $0.failures }
    }

    /// Drops every stream at once (the push failed).
    func abort() {
        let open = lanes.close()
        for lane in open { lane.stream.terminate() }
        for lane in open { _ = lane.stream.finish() }
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
