import Foundation
import SSHTransport
import SyncConfig
import SyncSystem
import Transport
import Wire

/// Extra connections a large push spreads its chunk data over (`streams:` in syncd.yaml, `Message.streamsOpen`).
/// libssh2 encrypts on the thread that pumps its session, one cipher block per call, which holds one connection
/// to what one core does that way; each joined stream has a session, a pump thread and an sshd of its own.
///
/// Streams are connected in the background while the push goes on over its own connection, and take data as
/// they join. The sender thread alone writes to them: each chunk goes to whichever connection, this push's
/// own included, has the least waiting to go out. One that cannot be opened leaves the push on fewer; one that
/// fails once joined fails the push, since what it carried is lost (the next push resumes).
final class PushStreams: @unchecked Sendable {  // `lock` guards `joined`, `closed` and `failures`
    private let lock = NSLock()
    private var joined: [(connection: AgentConnection, writer: FrameWriter)] = []
    private var closed = false
    private var failures: [String] = []

    /// Starts connecting `count` streams to the push's agent, which listens at `address` and admits `token`.
    init(project: Project, address: String, token: [UInt8], count: Int) {
        for n in 1...max(count, 1) {
            let thread = Thread { [self] in
                do {
                    let connection = try project.connectStream(address: address, token: token)
                    lock.lock()
                    let late = closed
                    if !late { joined.append((connection, FrameWriter(connection.stream))) }
                    lock.unlock()
                    if late {
                        connection.terminate()
                        _ = connection.finish()
                    } else {
                        Trace.mark("push: stream \(n + 1) joined")
                    }
                } catch {
                    lock.lock()
                    failures.append("\(error)")
                    lock.unlock()
                }
            }
            thread.name = "stream-connect"
            thread.start()
        }
    }

    private var current: [(connection: AgentConnection, writer: FrameWriter)] {
        lock.lock()
        defer { lock.unlock() }
        return joined
    }

    /// The writer for the next chunk: `main` or a joined stream's, whichever has the fewest bytes waiting.
    func writer(main: FrameWriter, mainStream: ByteStream) -> FrameWriter {
        let streams = current
        guard !streams.isEmpty else { return main }
        var best = main
        var least = main.pendingBytes + mainStream.queuedOutputBytes
        for s in streams {
            let waiting = s.writer.pendingBytes + s.connection.stream.queuedOutputBytes
            if waiting < least {
                least = waiting
                best = s.writer
            }
        }
        return best
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

    /// Bytes written to the joined streams.
    var bytesWritten: UInt64 { current.reduce(0) { $0 + $1.writer.bytesWritten } }

    /// Joined streams that carried data.
    var carryingCount: Int { current.filter { $0.writer.bytesWritten > 0 }.count }

    /// Closes every stream once the push is answered (the agent has read all they carried); streams still
    /// connecting close as soon as they are made. Returns why streams could not be opened, if any could not.
    func finish() -> [String] {
        lock.lock()
        closed = true
        let streams = joined
        joined = []
        let why = failures
        lock.unlock()
        for s in streams { s.connection.stream.closeWrite() }
        for s in streams { _ = s.connection.finish() }
        return why
    }

    /// Drops every stream at once (the push failed).
    func abort() {
        lock.lock()
        closed = true
        let streams = joined
        joined = []
        lock.unlock()
        for s in streams {
            s.connection.terminate()
            _ = s.connection.finish()
        }
    }
}

extension Project {
    /// Connections a push with much to send uses (see `PushStreams`): `streams:`, or for `auto` half this
    /// machine's cores, from 2 to 4. Always 1 for a `local:` remote, where nothing is encrypted.
    var pushStreams: Int {
        guard case .ssh = config.remote else { return 1 }
        if let n = config.streams { return n }
        return min(4, max(2, ProcessInfo.processInfo.activeProcessorCount / 2))
    }

    /// A new SSH connection whose agent joins the push at `address` as an extra stream.
    func connectStream(address: String, token: [UInt8]) throws -> AgentConnection {
        guard case .ssh(let destination) = config.remote else { throw SyncError("extra streams need an SSH remote") }
        guard !address.isEmpty, address.utf8.count <= 100,
              address.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x41 && $0 <= 0x5A) || $0 == 0x2D }) else {
            throw ProtocolError("the agent named a stream address that is not letters, digits and dashes")
        }
        let settings = try sshSettings(destination)
        let agent: String
        do { agent = try locateAgentBinary(configured: config.agentPath) } catch let e as TransportError {
            throw SyncError(e.description, exitCode: 2)
        }
        let greeting = clientGreeting(.join(token: token))
        do {
            return try SSHAgentConnection(settings: settings, options: SSHOptions(identity: config.identity, knownHosts: config.knownHosts, home: NSHomeDirectory()),
                                          agentBinary: agent, greeting: { _ in greeting }, join: address)
        } catch let e as SSHError {
            throw SyncError("ssh \(destination) (extra stream): \(e)")
        }
    }
}
