#if canImport(Glibc)
import Glibc
#endif
import SyncSystem
import Testing
import Transfer
import Wire

/// What both sides' extra streams share (Transfer/ExtraStreams.swift): the inbox that merges several connections'
/// frames, the lanes that spread chunk frames, and the queued output; and the monitor they are built on.
struct ExtraStreamsTests {
    @Test func aLockedValueWaitsForWhatItNeedsAndEveryChangeWakesTheWaiter() throws {
        let count = Locked(0)
        let seen = OneShot<Int>()
        try startDetachedThread(name: "waiter") { seen.set(count.withLock(when: { $0 >= 3 }) { $0 }) }
        for _ in 0..<3 {
            #expect(seen.wait(until: monotonicNanos() + 20_000_000) == nil, "not yet 3: still waiting")
            count.withLock { $0 += 1 }
        }
        #expect(seen.wait(until: monotonicNanos() + 5_000_000_000) == 3)
        let started = monotonicNanos()
        let ready = count.withLock(when: { $0 > 3 }, deadline: started + 30_000_000) { _, ready in ready }
        #expect(!ready && monotonicNanos() - started >= 30_000_000, "a bounded wait gives up at its deadline")
    }

    @Test func aQueueTellsAPollingConsumerOfTheFirstItemAfterItFoundItEmpty() {
        let fills = Locked(0)
        let queue = BoundedQueue<Int>(limit: 10, filled: { fills.withLock { $0 += 1 } })
        #expect(queue.poll() == nil)
        queue.put(1)
        queue.put(2)
        #expect(fills.current == 1, "the second item went into a queue that was not empty")
        #expect(queue.poll() == 1 && queue.poll() == 2 && queue.poll() == nil)
        queue.put(3)
        #expect(fills.current == 2)
    }

    /// Two connections (pipes) read into one pollable inbox: every frame arrives, in each source's order, and a
    /// consumer that polls its wake descriptor after finding the inbox empty is woken for the next frame.
    @Test func anInboxMergesConnectionsAndWakesAPollingTaker() throws {
        let inbox = try FrameInbox(pollable: true)
        var writers: [(FrameWriter, Int32)] = []
        for source in 1...2 {
            let pipe = try makePipe(nonBlocking: false)
            let reader = FrameReader(FileDescriptorStream(input: pipe.read, output: -1, name: "source \(source)"))
            inbox.read(reader, source: source)
            writers.append((FrameWriter(FileDescriptorStream(input: -1, output: pipe.write, name: "into \(source)")), pipe.write))
        }
        #expect(inbox.poll() == nil)
        var got: [Int: [UInt32]] = [:]
        var ended = 0
        for index in 0..<20 {
            let (writer, _) = writers[index % 2]
            try writer.send(.chunkData(op: 1, index: UInt32(index), compressed: false, rawLength: 3, payload: [1, 2, 3]))
            try writer.flush()
            if index == 19 { for (_, fd) in writers { close(fd) } }
            // Waits on the descriptor alone, as the agent's push does, then takes what is there.
            var waits = 0
            while true {
                var fds = [pollfd(fd: inbox.wakeFD!, events: Int16(POLLIN), revents: 0)]
                guard poll(&fds, 1, 5000) == 1 else {
                    Issue.record("not woken for frame \(index)")
                    break
                }
                while let item = inbox.poll() {
                    switch item {
                    case .frame(.chunkData(_, let i, _, _, _), let source): got[source, default: []].append(i)
                    case .ended: ended += 1
                    default: Issue.record("unexpected \(item)")
                    }
                }
                waits += 1
                if got.values.map(\.count).reduce(0, +) > index || waits > 100 { break }
            }
        }
        #expect(got[1] == stride(from: 0, to: 20, by: 2).map { UInt32($0) })
        #expect(got[2] == stride(from: 1, to: 20, by: 2).map { UInt32($0) })
        for _ in 0..<100 where ended < 2 {
            var fds = [pollfd(fd: inbox.wakeFD!, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 1, 100)
            while let item = inbox.poll() { if case .ended = item { ended += 1 } }
        }
        #expect(ended == 2, "each source's end is told")
        inbox.close()
    }

    @Test func lanesSendEachChunkWhereLeastWaitsAndCloseOnce() throws {
        let main = FrameWriter(QueuedOutput(name: "main"))
        let lanes = ChunkLanes<Int>()
        let busy = Locked(100)
        #expect(lanes.writer(main: main, waiting: 50) === main, "no lane: the main connection")
        let a = FrameWriter(QueuedOutput(name: "a"))
        #expect(lanes.add(1, writer: a, waiting: { busy.current }))
        #expect(lanes.writer(main: main, waiting: 50) === main, "the lane has more waiting")
        busy.withLock { $0 = 10 }
        #expect(lanes.writer(main: main, waiting: 50) === a)
        #expect(lanes.writer(main: main, waiting: 10) === main, "a tie goes to the main connection")
        #expect(lanes.close().map(\.stream) == [1])
        #expect(!lanes.add(2, writer: a, waiting: { 0 }), "closed: a late stream is refused, for its caller to drop")
        #expect(lanes.open.isEmpty && lanes.close().isEmpty)
    }

    /// A queued output writes what it holds in order; once its connection fails, every later write fails with
    /// the cause instead of waiting.
    @Test func aQueuedOutputDrainsInOrderAndAFailedOneRefusesWrites() throws {
        let output = QueuedOutput(name: "a test stream")
        let writer = FrameWriter(output)
        let pipe = try makePipe(nonBlocking: false)
        let done = OneShot<String?>()
        try startDetachedThread(name: "drain") {
            done.set(output.drain(to: FileDescriptorStream(input: -1, output: pipe.write, name: "pipe")))
        }
        for index in 0..<5 { try writer.send(.chunkData(op: 2, index: UInt32(index), compressed: false, rawLength: 1, payload: [9])) }
        try writer.flush()
        output.closeWrite()
        #expect(done.wait(until: monotonicNanos() + 5_000_000_000) == .some(nil), "closed and written out")
        close(pipe.write)
        let reader = FrameReader(FileDescriptorStream(input: pipe.read, output: -1, name: "pipe"))
        var indices: [UInt32] = []
        while let message = try reader.next() { if case .chunkData(_, let i, _, _, _) = message { indices.append(i) } }
        #expect(indices == [0, 1, 2, 3, 4])
        close(pipe.read)

        let failing = QueuedOutput(name: "a broken stream")
        let broken = try makePipe(nonBlocking: false)
        close(broken.read)
        signal(SIGPIPE, SIG_IGN)
        let why = OneShot<String?>()
        try startDetachedThread(name: "drain") { why.set(failing.drain(to: FileDescriptorStream(input: -1, output: broken.write, name: "gone"))) }
        #expect(throws: Never.self) { try failing.write(UnsafeRawBufferPointer(start: nil, count: 0)) }
        try [UInt8](repeating: 1, count: 10).withUnsafeBytes { try failing.write($0) }
        #expect(why.wait(until: monotonicNanos() + 5_000_000_000) != nil, "the write to a closed pipe fails the drain")
        #expect(throws: ProtocolError.self) { try [UInt8](repeating: 1, count: 10).withUnsafeBytes { try failing.write($0) } }
        close(broken.write)
    }
}
