import Foundation
import Glibc
import SyncSystem
import Testing
import Wire

/// `enlargePipeBuffer` on real pipes (a writer can then put 1 MiB in before anyone reads), and
/// `FileDescriptorStream.drainRate`, which times the reader of a pipe only while it is the one holding things up.
@Suite struct PipeBufferTests {
    /// How many bytes a non-blocking write of `count` gets into the pipe before it is full.
    private func fill(_ fd: Int32, count: Int) -> Int {
        let bytes = [UInt8](repeating: 0x5A, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, count - done) }
            if n <= 0 { break }
            done += n
        }
        return done
    }

    @Test func anEnlargedPipeHoldsAMegabyteUnread() throws {
        let plain = try makePipe(nonBlocking: true)
        let big = try makePipe(nonBlocking: true)
        defer { for fd in [plain.read, plain.write, big.read, big.write] { close(fd) } }
        #expect(enlargePipeBuffer(big.write) == bulkPipeBytes)
        #expect(fill(plain.write, count: Int(bulkPipeBytes)) < Int(bulkPipeBytes))
        #expect(fill(big.write, count: Int(bulkPipeBytes)) == Int(bulkPipeBytes))
        // Either end names the same buffer.
        #expect(enlargePipeBuffer(plain.read) == bulkPipeBytes)
    }

    @Test func aFileIsLeftAsItIs() throws {
        let temp = try TempDir()
        let fd = open(temp.path + "/f", O_RDWR | O_CREAT, 0o600)
        defer { close(fd) }
        #expect(fd >= 0)
        #expect(enlargePipeBuffer(fd) == nil)
    }

    /// Writes `total` bytes in 512 KiB pieces (the frame writer's) to a measuring stream whose pipe a thread
    /// reads `piece` bytes at a time, resting `readerRest` between reads; `writerRest` between writes. Returns
    /// the stream's drain rate at the end.
    private func drainRate(total: Int, piece: Int, readerRest: Double, writerRest: Double) throws -> Double? {
        let pipe = try makePipe(nonBlocking: false)
        enlargePipeBuffer(pipe.write)
        let stream = FileDescriptorStream(input: -1, output: pipe.write, name: "test pipe", measuresDrain: true)
        let reader = Thread {
            var buffer = [UInt8](repeating: 0, count: piece)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(pipe.read, $0.baseAddress!, piece) }
                if n <= 0 { break }
                if readerRest > 0 { Thread.sleep(forTimeInterval: readerRest) }
            }
            close(pipe.read)
        }
        reader.start()
        let bytes = [UInt8](repeating: 7, count: 512 << 10)
        for _ in 0..<(total / bytes.count) {
            try bytes.withUnsafeBytes { try stream.write($0) }
            if writerRest > 0 { Thread.sleep(forTimeInterval: writerRest) }
        }
        let rate = stream.drainRate
        stream.closeWrite()
        return rate
    }

    @Test func aSlowReaderIsTimedAtItsPace() throws {
        // At most 64 KiB a millisecond (sleeps only ever run long): 64 MB/s or less.
        let rate = try drainRate(total: 16 << 20, piece: 64 << 10, readerRest: 0.001, writerRest: 0)
        let pace = Double(64 << 10) / 0.001
        #expect(rate != nil)
        #expect((rate ?? 0) > 0 && (rate ?? .infinity) <= pace * 1.25, "measured \(rate ?? -1) B/s against a pace of at most \(pace)")
    }

    @Test func aReaderThatKeepsUpIsNotTimed() throws {
        // The writer rests between writes and the reader takes everything at once: the pipe never fills.
        #expect(try drainRate(total: 8 << 20, piece: 1 << 20, readerRest: 0, writerRest: 0.005) == nil)
    }
}
