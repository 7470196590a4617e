import Foundation
import Testing

/// Bytes of disk a file takes (st_blocks), and its size.
func diskUsage(_ path: String) -> (allocated: Int, size: Int) {
    var st = stat()
    guard stat(path, &st) == 0 else { return (-1, -1) }
    return (Int(st.st_blocks) * 512, Int(st.st_size))
}

/// A sparse file of `size` bytes holding `pieces` (offset, bytes) and holes elsewhere.
func makeSparse(_ path: String, size: Int, pieces: [(Int, [UInt8])]) throws {
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw FixtureError("cannot create \(path)") }
    defer { close(fd) }
    guard ftruncate(fd, off_t(size)) == 0 else { throw FixtureError("ftruncate \(path)") }
    for (offset, bytes) in pieces {
        guard bytes.withUnsafeBytes({ pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }) == bytes.count else {
            throw FixtureError("pwrite \(path)")
        }
    }
}

/// The data regions of a file (SEEK_DATA/SEEK_HOLE).
func dataRegions(_ fd: Int32, size: Int) -> [(Int, Int)] {
    var out: [(Int, Int)] = []
    var offset = 0
    while offset < size {
        let data = lseek(fd, off_t(offset), 3 /* SEEK_DATA */)
        if data < 0 { break }
        let hole = lseek(fd, data, 4 /* SEEK_HOLE */)
        out.append((Int(data), Int(hole)))
        offset = Int(hole)
    }
    return out
}

/// True when two files hold the same bytes, read only where either has data: outside every data region of
/// both, both read as zeros. (`cmp` would read every byte of a 5 GB hole.)
func sameSparseContent(_ a: String, _ b: String) -> Bool {
    let fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC)
    defer { close(fa); close(fb) }
    let size = diskUsage(a).size
    guard fa >= 0, fb >= 0, size == diskUsage(b).size else { return false }
    var x = [UInt8](repeating: 0, count: 1 << 20), y = [UInt8](repeating: 0, count: 1 << 20)
    for (start, end) in dataRegions(fa, size: size) + dataRegions(fb, size: size) {
        var offset = start
        while offset < end {
            let n = min(x.count, end - offset)
            let ra = x.withUnsafeMutableBytes { pread(fa, $0.baseAddress, n, off_t(offset)) }
            let rb = y.withUnsafeMutableBytes { pread(fb, $0.baseAddress, n, off_t(offset)) }
            guard ra == n, rb == n, x[0..<n] == y[0..<n] else { return false }
            offset += n
        }
    }
    return true
}

@Suite(.serialized)
struct SparseTests {
    @Test func aSparseFileStaysSparseBothWays() throws {
        let f = try SyncFixture()
        let gib = 1 << 30
        // 5 GB holding 1 MB of data: a preallocated dataset file, a VM image.
        try FileManager.default.createDirectory(atPath: f.project + "/data", withIntermediateDirectories: true)
        try makeSparse(f.project + "/data/disk.img", size: 5 * gib,
                       pieces: [(0, randomBytes(256 << 10, seed: 1)), (2 * gib + 12345, randomBytes(512 << 10, seed: 2)),
                                (5 * gib - (256 << 10), randomBytes(256 << 10, seed: 3))])
        #expect(diskUsage(f.project + "/data/disk.img").allocated < 4 << 20)
        let r = try f.push()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try r.stats().bytesSent.asInt < 2 << 20, "the holes are not sent: \(r.stdout)")
        let remote = f.remoteProject + "/data/disk.img"
        #expect(diskUsage(remote).size == 5 * gib)
        #expect(diskUsage(remote).allocated < 10 << 20, "written as holes: \(diskUsage(remote).allocated) bytes of disk")
        #expect(sameSparseContent(f.project + "/data/disk.img", remote))

        // An edit inside the data sends a chunk or two, and the file stays sparse.
        let fd = open(f.project + "/data/disk.img", O_WRONLY | O_CLOEXEC)
        _ = pwrite(fd, "edited", 6, off_t(2 * gib + 20000))
        close(fd)
        let edit = try f.push()
        #expect(edit.status == 0, "\(edit.stderr)")
        #expect(try edit.stats().bytesSent.asInt < 1 << 20, "\(edit.stdout)")
        #expect(diskUsage(remote).allocated < 10 << 20)
        #expect(sameSparseContent(f.project + "/data/disk.img", remote))

        // A sparse checkpoint written on the remote comes back sparse.
        try makeSparse(f.remoteProject + "/checkpoint/prealloc.bin", size: gib,
                       pieces: [(100 << 20, randomBytes(300_000, seed: 4))])
        try f.age("checkpoint/prealloc.bin")
        let p = try f.pull()
        #expect(p.status == 0, "\(p.stderr)")
        #expect(try p.stats().bytesReceived.asInt < 1 << 20, "\(p.stdout)")
        #expect(diskUsage(f.project + "/checkpoint/prealloc.bin").allocated < 4 << 20)
        #expect(sameSparseContent(f.project + "/checkpoint/prealloc.bin", f.remoteProject + "/checkpoint/prealloc.bin"))
    }
}
