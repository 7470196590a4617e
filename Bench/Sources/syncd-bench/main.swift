import Chunking
import Foundation
import LocalState
import SyncSystem
import Wire

// Micro benchmarks for the engine's hot paths, one core, data in memory or page cache.
// Run with `make bench` (release build). Prints a markdown table; numbers are the best of several runs.

func randomBuffer(_ count: Int, seed: UInt64) -> UnsafeMutableRawBufferPointer {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 64)
    var state = seed
    let words = buffer.bindMemory(to: UInt64.self)
    for i in 0..<words.count {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        words[i] = z ^ (z >> 31)
    }
    return UnsafeMutableRawBufferPointer(buffer)
}

/// Best-of-`runs` throughput in GB/s (10^9 bytes per second) for processing `bytes` bytes per run.
func measure(bytes: Int, runs: Int = 5, _ body: () throws -> Void) rethrows -> Double {
    var best = Double.infinity
    for _ in 0..<runs {
        let start = monotonicNanos()
        try body()
        best = min(best, Double(monotonicNanos() - start))
    }
    return Double(bytes) / best
}

var rows: [(String, String, String)] = []
@MainActor func row(_ name: String, _ value: Double, unit: String = "GB/s", note: String = "") {
    rows.append((name, String(format: "%.2f %@", value, unit), note))
    print("\(name): \(String(format: "%.2f", value)) \(unit) \(note)")
}

let size = 512 << 20
let data = randomBuffer(size, seed: 1)
let view = UnsafeRawBufferPointer(data)

let xxh = measure(bytes: size) { _ = ChunkID(hashing: view) }
row("XXH3-128, 512 MiB buffer", xxh)

// Holes are digested as the zeros they read as (issue 24: a peer may declare a large sparse file; its digest must
// not cost more than the receiver accepted). 16 GiB of zeros per run.
let zeroBytes: UInt64 = 16 << 30
let zeros = measure(bytes: Int(zeroBytes), runs: 3) {
    let digest = StreamingDigest()
    digest.updateZeros(zeroBytes)
    _ = digest.finish()
}
row("XXH3-128 of zeros (a file's holes)", zeros, note: "target >= 10 GB/s")

let cdc = FastCDC()
let cutOnly = measure(bytes: size) {
    var start = 0
    while start < size { start += cdc.cut(UnsafeRawBufferPointer(rebasing: view[start...])).length }
}
row("FastCDC cut points only (16/64/256 KiB)", cutOnly)

let chunker = FileChunker()
var chunkCount = 0
let chunkAndHash = measure(bytes: size) { chunkCount = chunker.chunk(bytes: view).chunks.count }
row("FastCDC + XXH3 per chunk + file digest", chunkAndHash, note: "target >= 1.5; \(chunkCount) chunks")

let path = NSTemporaryDirectory() + "syncd-bench-\(getpid()).bin"
let out = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC)
try out.writeAll(view)
out.close()
let fromFile = try measure(bytes: size) { _ = try chunker.chunk(try FileDescriptor.open(path, flags: O_RDONLY)) }
unlink(path)
row("chunk + hash a 512 MiB file (page cache)", fromFile)

let compressor = ChunkCompressor()
let chunkBytes = 64 << 10
let randomChunks = 256
let skipped = measure(bytes: chunkBytes * randomChunks) {
    for i in 0..<randomChunks { _ = compressor.compress(UnsafeRawBufferPointer(rebasing: view[(i * chunkBytes)..<((i + 1) * chunkBytes)])) }
}
row("zlib probe on incompressible 64 KiB chunks", skipped, note: "sent raw")
let text = Array(String(repeating: "epoch,step,loss,acc\n12,3400,0.0321,0.9812\n", count: 40000).utf8)
var packedSize = 0
let compressible = measure(bytes: text.count) {
    packedSize = 0
    text.withUnsafeBytes { t in
        var i = 0
        while i < t.count {
            let end = min(i + chunkBytes, t.count)
            packedSize += compressor.compress(UnsafeRawBufferPointer(rebasing: t[i..<end]))?.count ?? (end - i)
            i = end
        }
    }
}
row("zlib level 1 on CSV text, 64 KiB chunks", compressible, note: String(format: "ratio %.1fx", Double(text.count) / Double(packedSize)))

final class NullStream: ByteStream {
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int { 0 }
    func write(_ bytes: UnsafeRawBufferPointer) throws {}
    func closeWrite() {}
}
let writer = FrameWriter(NullStream())
let frames = 200_000
let encodeRate = try measure(bytes: frames) {
    for i in 0..<frames { try writer.send(.need(op: UInt32(i), indices: [1, 2, 3, 4])) }
    try writer.flush()
}
row("frame encode (need, 4 indices)", encodeRate * 1e9 / 1e6, unit: "M frames/s")
let encoded = Message.need(op: 9, indices: [1, 2, 3, 4]).encode()
let decodeRate = try measure(bytes: frames) {
    for _ in 0..<frames { _ = try encoded.payload.withUnsafeBytes { try Message.decode(type: encoded.type, payload: $0) } }
}
row("frame decode (need, 4 indices)", decodeRate * 1e9 / 1e6, unit: "M frames/s")

// The stat cache as a push uses it: load every record once, then one lookup and freshness check per entry.
let cachePath = NSTemporaryDirectory() + "syncd-bench-state-\(getpid()).sqlite"
defer { for suffix in ["", "-wal", "-shm"] { unlink(cachePath + suffix) } }
let store = try LocalDatabase(path: cachePath)
let cachedCount = 100_000
let now = wallClockNanos()
var records: [CachedFile] = []
records.reserveCapacity(cachedCount)
for i in 0..<cachedCount {
    let st = FileStat(device: 1, inode: UInt64(i), kind: .regular, permissions: 0o644, size: 20_000,
                      mtimeNanos: now - 10_000_000_000, ctimeNanos: now - 10_000_000_000)
    records.append(CachedFile(path: try RelativePath("src/pkg\(i % 100)/module\(i).py"), stat: st, digest: ChunkID(low: UInt64(i), high: 7),
                              chunks: [ChunkRef(id: ChunkID(low: UInt64(i), high: 7), offset: 0, length: 20_000)], cachedAtNanos: now))
}
try store.saveFiles(records)
var loaded: [RelativePath: CachedFile] = [:]
let loadRate = try measure(bytes: cachedCount, runs: 3) { loaded = try store.loadFiles() }
row("stat cache: load 100k records (SQLite)", loadRate * 1e9 / 1e6, unit: "M records/s")
var fresh = 0
let lookupRate = measure(bytes: cachedCount) {
    fresh = 0
    for r in records where loaded[r.path]?.isFresh(for: r.stat) == true { fresh += 1 }
}
row("stat cache: lookup + freshness check", lookupRate * 1e9 / 1e6, unit: "M lookups/s", note: "\(fresh) of \(cachedCount) fresh")

print("\n| benchmark | result | note |\n|---|---|---|")
for r in rows { print("| \(r.0) | \(r.1) | \(r.2) |") }
