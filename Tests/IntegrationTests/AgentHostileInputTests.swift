import Chunking
import Foundation
import SyncSystem
import Testing
import Transport
import Wire

/// Feeds the real syncd-agent crafted byte streams on stdin and checks what it answers and writes.
@Suite(.serialized)
struct AgentHostileInputTests {
    final class Sandbox {
        let base = NSTemporaryDirectory() + "syncd-hostile-" + UUID().uuidString.prefix(8)
        var root: String { base + "/root" }
        var project: String { root + "/proj" }
        var outside: String { base + "/outside" }
        init() throws {
            try FileManager.default.createDirectory(atPath: project, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        }
        deinit { try? FileManager.default.removeItem(atPath: base) }

        /// Everything under `outside`, which no frame may ever touch.
        var outsideContents: [String] { (try? FileManager.default.subpathsOfDirectory(atPath: outside)) ?? [] }
    }

    /// Encodes frames the way a client would.
    static func frames(_ messages: [Message], handshake: Bool = true) -> Data {
        var bytes: [UInt8] = handshake ? wireMagic + [UInt8(wireVersion >> 8), UInt8(wireVersion & 0xFF)] : []
        for m in messages {
            let (type, payload) = m.encode()
            withUnsafeBytes(of: UInt32(payload.count + 1).littleEndian) { bytes.append(contentsOf: $0) }
            bytes.append(type)
            bytes.append(contentsOf: payload)
        }
        return Data(bytes)
    }

    static func hello(_ box: Sandbox) -> Message {
        .hello(Hello(role: .push, project: "proj", remoteRoot: box.root, pullPaths: ["output"], chunking: .default))
    }

    /// Runs the agent on `input`; returns its status, stderr and the frames it sent back.
    static func agent(_ input: Data, timeout: Double = 300) throws -> (status: Int32, stderr: String, replies: [Message]) {
        let r = try run(binDirectory() + "/syncd-agent", [], stdin: input, timeout: timeout)
        final class Bytes: ByteStream {
            var data: [UInt8]
            var offset = 0
            init(_ d: [UInt8]) { data = d }
            func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
                let n = min(buffer.count, data.count - offset)
                if n > 0 { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: data.withUnsafeBytes { $0 }[offset..<offset + n])) }
                offset += n
                return n
            }
            func write(_ bytes: UnsafeRawBufferPointer) throws {}
            func closeWrite() {}
        }
        let reader = FrameReader(Bytes(r.stdoutBytes))
        var replies: [Message] = []
        if (try? reader.readHandshake()) != nil {
            while let m = try? reader.next() { replies.append(m) }
        }
        // What the agent said: its stderr, and the error it sent its client (which it prints only when it could
        // not send it: the client shows it, once).
        let told = replies.compactMap { m -> String? in if case .error(let text, _) = m { return text }; return nil }
        return (r.status, ([r.stderr] + told).joined(separator: "\n"), replies)
    }

    static func fileFrames(op: UInt32, path: String, content: [UInt8], sendBytes: [UInt8]? = nil) -> [Message] {
        let id = ChunkID(hashing: content)
        return [
            .fileBegin(FileHeader(op: op, path: Array(path.utf8), permissions: 0o644, mtimeNanos: 0, size: UInt64(content.count),
                                  digest: id, base: .absent, chunkCount: 1)),
            .chunkList(op: op, chunks: [ChunkRef(id: id, offset: 0, length: UInt32(content.count))]),
            .chunkData(op: op, index: 0, compressed: false, rawLength: UInt32(content.count), payload: sendBytes ?? content),
        ]
    }

    @Test func watchFramesOutOfTurnEndTheConnectionWithAClearError() throws {
        let box = try Sandbox()
        // A watch before any session names no project.
        var r = try Self.agent(Self.frames([.watch]))
        #expect(r.status == 1)
        #expect(r.stderr.contains("expected a hello frame first"), "\(r.stderr)")
        // A hello during a watch (no watchEnd first).
        r = try Self.agent(Self.frames([Self.hello(box), .endOfOperations, .watch, Self.hello(box)]))
        #expect(r.status == 1)
        #expect(r.stderr.contains("expected watchEnd during a watch"), "\(r.stderr)")
        #expect(r.replies.contains(.done), "the session before it completed")
        // A stray frame between sessions.
        r = try Self.agent(Self.frames([Self.hello(box), .endOfOperations, .fetchEnd]))
        #expect(r.status == 1)
        #expect(r.stderr.contains("expected a hello or watch frame between sessions"), "\(r.stderr)")
        // Two sessions, a watch between them, then the end of input: a clean exit.
        r = try Self.agent(Self.frames([Self.hello(box), .endOfOperations, .watch, .watchEnd, Self.hello(box), .endOfOperations]))
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.replies.filter { $0 == .done }.count == 2)
        #expect(r.replies.contains(.watchEnded))
        #expect(r.replies.contains { if case .remoteChanged = $0 { return true } else { return false } },
                "the first watch reports at once: nothing was watched before it")
    }

    @Test func hostilePathsAreRefusedAndNothingLeavesTheTree() throws {
        let box = try Sandbox()
        try FileManager.default.createSymbolicLink(atPath: box.project + "/evil", withDestinationPath: box.outside)
        var messages: [Message] = [Self.hello(box)]
        messages += Self.fileFrames(op: 1, path: "../escape.txt", content: Array("x".utf8))
        messages += Self.fileFrames(op: 2, path: "/etc/syncd-test-escape", content: Array("x".utf8))
        messages += Self.fileFrames(op: 3, path: "evil/through-link.txt", content: Array("x".utf8))
        messages += Self.fileFrames(op: 4, path: "a/../../b", content: Array("x".utf8))
        messages += Self.fileFrames(op: 5, path: ".syncd/state", content: Array("x".utf8))
        messages.append(.symlink(op: 6, path: Array("link".utf8), target: Array("../../outside".utf8), base: .absent, force: false))
        messages.append(.delete(op: 7, path: Array("evil/x".utf8), base: .file(ChunkID(low: 1, high: 2)), force: false))
        messages += Self.fileFrames(op: 8, path: "fine.txt", content: Array("fine".utf8))
        messages.append(.endOfOperations)
        // Frames for refused files carry data the agent must ignore safely: drop the chunk-data frames of
        // ops 1-5, whose files never reached the data stage.
        messages.removeAll { if case .chunkData(let op, _, _, _, _) = $0 { return op < 8 }; return false }
        let (status, stderr, replies) = try Self.agent(Self.frames(messages))
        #expect(status == 0, "\(stderr)")
        var results: [UInt32: OpResult] = [:]
        for case .result(let r) in replies { results[r.op] = r }
        for op: UInt32 in 1...7 {
            #expect(results[op]?.status == .failed, "op \(op): \(String(describing: results[op]))")
        }
        #expect(results[1]?.message.contains("'..'") == true)
        #expect(results[2]?.message.contains("absolute") == true)
        #expect(results[3]?.message.contains("symlink") == true)
        #expect(results[6]?.message.contains("outside") == true)
        #expect(results[8]?.status == .applied)
        #expect(box.outsideContents.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: box.root + "/escape.txt"))
        #expect(!FileManager.default.fileExists(atPath: "/etc/syncd-test-escape"))
        #expect(FileManager.default.contents(atPath: box.project + "/fine.txt") == Data("fine".utf8))
    }

    @Test func chunkThatDoesNotMatchItsIdIsRefused() throws {
        let box = try Sandbox()
        var messages: [Message] = [Self.hello(box)]
        messages += Self.fileFrames(op: 1, path: "model.bin", content: Array("the real bytes".utf8), sendBytes: Array("forged bytes!!".utf8))
        messages.append(.endOfOperations)
        let (status, stderr, replies) = try Self.agent(Self.frames(messages))
        #expect(status == 1)
        #expect(stderr.contains("does not match"), "\(stderr)")
        #expect(replies.contains { if case .error = $0 { return true }; return false })
        #expect(!FileManager.default.fileExists(atPath: box.project + "/model.bin"), "nothing at the final path")
    }

    /// A streamed file (wire v5): its list in `parts`, the data of every chunk after its part, then the end, with
    /// the size, digest and count of what was listed unless told otherwise.
    static func streamedFrames(op: UInt32, path: String, parts: [[[UInt8]]], digest: ChunkID? = nil, size: UInt64? = nil,
                               count: UInt32? = nil, base: PathState = .absent) -> [Message] {
        var messages: [Message] = [.fileBegin(FileHeader(op: op, path: Array(path.utf8), permissions: 0o644, mtimeNanos: 0, size: 0,
                                                         digest: .empty, base: base, chunkCount: 0, streamed: true))]
        var index: UInt32 = 0
        for part in parts {
            messages.append(.chunkList(op: op, chunks: part.map { ChunkRef(id: ChunkID(hashing: $0), offset: 0, length: UInt32($0.count)) }))
            for bytes in part {
                messages.append(.chunkData(op: op, index: index, compressed: false, rawLength: UInt32(bytes.count), payload: bytes))
                index += 1
            }
        }
        let whole = parts.flatMap { $0.flatMap { $0 } }
        messages.append(.fileEnd(op: op, size: size ?? UInt64(whole.count), digest: digest ?? ChunkID(hashing: whole), chunkCount: count ?? index))
        return messages
    }

    @Test func aStreamedFileIsBuiltAsItsListComes() throws {
        let box = try Sandbox()
        let a = Array("alpha bytes".utf8), b = Array("bravo bytes".utf8), d = Array("delta".utf8)
        var messages: [Message] = [Self.hello(box)]
        // The first part's chunk comes again in the second: it is copied, not asked for again.
        messages += Self.streamedFrames(op: 1, path: "s.bin", parts: [[a, b], [a, d]])
        messages.append(.endOfOperations)
        let (status, stderr, replies) = try Self.agent(Self.frames(messages))
        #expect(status == 0, "\(stderr)")
        var results: [UInt32: OpResult] = [:]
        for case .result(let r) in replies { results[r.op] = r }
        #expect(results[1]?.status == .applied, "\(String(describing: results[1]))")
        #expect(FileManager.default.contents(atPath: box.project + "/s.bin") == Data(a + b + a + d))
        let needs = replies.compactMap { if case .need(1, let indices) = $0 { return indices }; return nil }
        #expect(needs == [[0, 1], [3]], "each part's missing chunks, once each: \(needs)")
    }

    @Test func streamedFilesThatDisagreeWithTheirEndAreRefused() throws {
        let box = try Sandbox()
        let a = Array("alpha bytes".utf8), b = Array("bravo bytes".utf8)
        // A count the list does not have ends the session: the two sides no longer agree on the frames.
        var r = try Self.agent(Self.frames([Self.hello(box)] + Self.streamedFrames(op: 1, path: "n.bin", parts: [[a, b]], count: 3)))
        #expect(r.status == 1)
        #expect(r.stderr.contains("the chunk list ended after 2 chunks, but its end says 3"), "\(r.stderr)")
        // An end for a file that is not being streamed.
        r = try Self.agent(Self.frames([Self.hello(box), .fileEnd(op: 9, size: 0, digest: .empty, chunkCount: 0)]))
        #expect(r.status == 1)
        #expect(r.stderr.contains("operation 9, which is no streamed file being listed"), "\(r.stderr)")

        // A digest or size that the chunks do not give fails that file alone; a refused path is answered once, and
        // what follows of its list is dropped.
        var messages: [Message] = [Self.hello(box)]
        messages += Self.streamedFrames(op: 1, path: "digest.bin", parts: [[a], [b]], digest: ChunkID(low: 1, high: 2))
        messages += Self.streamedFrames(op: 2, path: "size.bin", parts: [[a, b]], size: 5)
        var refused = Self.streamedFrames(op: 3, path: "../escape.bin", parts: [[a], [b]])
        refused.removeAll { if case .chunkData = $0 { return true }; return false }
        messages += refused
        messages += Self.streamedFrames(op: 4, path: "fine.bin", parts: [[b], [a]])
        messages.append(.endOfOperations)
        r = try Self.agent(Self.frames(messages))
        #expect(r.status == 0, "\(r.stderr)")
        var results: [UInt32: [OpResult]] = [:]
        for case .result(let answer) in r.replies { results[answer.op, default: []].append(answer) }
        #expect(results.values.allSatisfy { $0.count == 1 }, "one answer per operation: \(results)")
        #expect(results[1]?.first?.status == .failed)
        #expect(results[1]?.first?.message.contains("does not match its digest") == true, "\(String(describing: results[1]))")
        #expect(results[2]?.first?.status == .failed)
        #expect(results[2]?.first?.message.contains("chunk lengths add up to 22 bytes, but the file is 5") == true, "\(String(describing: results[2]))")
        #expect(results[3]?.first?.status == .failed)
        #expect(results[3]?.first?.message.contains("'..'") == true)
        #expect(results[4]?.first?.status == .applied)
        #expect(FileManager.default.contents(atPath: box.project + "/fine.bin") == Data(b + a))
        for name in ["digest.bin", "size.bin"] { #expect(!FileManager.default.fileExists(atPath: box.project + "/" + name)) }
        #expect(!FileManager.default.fileExists(atPath: box.root + "/escape.bin"))
        let leftovers = (try FileManager.default.contentsOfDirectory(atPath: box.project)).filter { $0.hasPrefix(".syncd-part.") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func truncatedOversizeAndGarbageStreamsEndTheSessionCleanly() throws {
        let box = try Sandbox()
        // Truncated: a frame header announcing more bytes than arrive.
        var truncated = Self.frames([Self.hello(box)])
        truncated.append(contentsOf: [100, 0, 0, 0, 0x10, 1, 2, 3])
        var r = try Self.agent(truncated)
        #expect(r.status == 1)
        #expect(r.stderr.contains("closed in the middle"), "\(r.stderr)")

        // Oversize: a length prefix past the limit is refused before anything is allocated.
        var oversize = Self.frames([Self.hello(box)])
        oversize.append(contentsOf: [0xFF, 0xFF, 0xFF, 0x7F, 0x10])
        r = try Self.agent(oversize)
        #expect(r.status == 1)
        #expect(r.stderr.contains("exceeds the limit"), "\(r.stderr)")

        // Garbage instead of a handshake.
        r = try Self.agent(Data(randomBytes(4096, seed: 77)))
        #expect(r.status == 1)
        #expect(r.stderr.contains("not speaking the syncd protocol"), "\(r.stderr)")

        // A valid handshake then random frames: a protocol error, never a crash.
        for seed in 0..<20 {
            var bytes = Self.frames([Self.hello(box)])
            let junk = randomBytes(64 + seed * 37, seed: UInt64(1000 + seed))
            withUnsafeBytes(of: UInt32(junk.count).littleEndian) { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: junk)
            r = try Self.agent(bytes)
            #expect(r.status == 1 || r.status == 0, "seed \(seed): \(r.stderr)")
            #expect(!r.stderr.contains("Fatal error") && !r.stderr.contains("crashed"), "seed \(seed): \(r.stderr)")
        }
        #expect(box.outsideContents.isEmpty)
        // The pull path is a directory from the first push on; nothing else may appear.
        let stray = (try FileManager.default.subpathsOfDirectory(atPath: box.project)).filter { !$0.hasPrefix(".syncd") && $0 != "output" }
        #expect(stray.isEmpty, "\(stray)")
    }

    @Test func wrongProtocolVersionIsNamed() throws {
        var bytes = wireMagic + [0x7F, 0x00]
        bytes += [1, 0, 0, 0, 0x17]
        let r = try Self.agent(Data(bytes))
        #expect(r.status == 1)
        #expect(r.stderr.contains("version"), "\(r.stderr)")
    }

    /// Extra streams of a push (`streamsOpen`) admit only a joiner that presents the push's token, and a joined
    /// stream carries chunk data only: a joiner with a wrong token or none is turned away without disturbing
    /// the push, and any other frame on a joined stream ends the push with an error that says so.
    @Test func joinedStreamsAdmitOnlyTheTokenAndOnlyChunkData() throws {
        let box = try Sandbox()
        let agentPath = binDirectory() + "/syncd-agent"
        let main = try LocalAgentConnection(agentPath: agentPath)
        let writer = FrameWriter(main.stream), reader = FrameReader(main.stream)
        func openStreams() throws -> (address: String, token: [UInt8]) {
            try writer.send(Self.hello(box))
            try writer.send(.streamsOpen(count: 2))
            try writer.flush()
            guard case .welcome? = try reader.next() else { throw FixtureError("no welcome") }
            guard case .streamsReady(let address, let token)? = try reader.next() else { throw FixtureError("no streamsReady") }
            return (address, token)
        }
        try writer.writeHandshake()
        #expect(try reader.readHandshake() == wireVersion)
        let (address, token) = try openStreams()
        #expect(!address.isEmpty && token.count == 16)

        // Turned away: a wrong token, no handshake, nothing at all. The joiner exits and nothing is written back.
        var wrong = token
        wrong[0] ^= 1
        for input in [Self.frames([.join(token: wrong)]), Data("GET / HTTP/1.0\r\n\r\n".utf8), Data()] {
            let r = try run(agentPath, ["join", address], stdin: input, timeout: 30)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout.isEmpty)
        }
        // The push goes on over its own connection.
        let content = Array("print('still here')\n".utf8)
        for m in Self.fileFrames(op: 1, path: "a.py", content: content) + [.endOfOperations] { try writer.send(m) }
        try writer.flush()
        var first = try reader.next()
        if case .need? = first { first = try reader.next() }
        guard case .result(let answer)? = first else { throw FixtureError("no answer: \(String(describing: first))") }
        #expect(answer.status == .applied, "\(answer.message)")
        guard case .done? = try reader.next() else { throw FixtureError("no done") }
        #expect(FileManager.default.contents(atPath: box.project + "/a.py") == Data(content))

        // Admitted, then a frame other than chunk data: the push ends with an error naming it.
        let (second, secondToken) = try openStreams()
        let bad = Self.frames([.join(token: secondToken), .endOfOperations])
        let joiner = try run(agentPath, ["join", second], stdin: bad, timeout: 30)
        #expect(joiner.stdout.utf8.starts(with: wireMagic), "the admitted stream got no handshake")
        var reply: Message?
        for _ in 0..<4 {
            reply = try reader.next()
            if case .error = reply { break }
        }
        guard case .error(let message, _)? = reply else { throw FixtureError("no error for a bad frame on a joined stream: \(String(describing: reply))") }
        #expect(message.contains("only chunk data"), "\(message)")
        #expect(main.finish() != nil)
        // No join attempt reached the tree outside the project.
        #expect(box.outsideContents.isEmpty)
    }
}
