import Glibc
import SyncSystem
import Testing

/// `enlargePipeBuffer` on real pipes: a writer can then put 1 MiB in before anyone reads.
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
}
