// libFuzzer targets (issue 26, item 7): one entry point, chosen when the binary is built (-D FUZZ_<NAME>), so
// each target is a binary of its own with a corpus of its own (Fuzz/corpus/<name>). `make fuzz` builds and
// runs them; see docs/FUZZING.md. Every target must only ever see errors thrown, never a trap, a hang or an
// out-of-bounds access, whatever the bytes.
import Chunking
import Dockerfile
import Foundation
import ProjectScan
import SnapshotFormat
import SyncConfig
import SyncSystem
import Wire

#if !FUZZ_SEEDS
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    let bytes = count == 0 ? [] : Array(UnsafeRawBufferPointer(start: start, count: count))
    fuzz(bytes)
    return 0
}
#endif

/// Input bytes handed out to a reader as a stream.
final class InputStream: ByteStream {
    let data: [UInt8]
    var offset = 0
    init(_ data: [UInt8]) { self.data = data }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, data.count - offset)
        if n > 0 { data.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + n])) } }
        offset += n
        return n
    }
    func write(_ bytes: UnsafeRawBufferPointer) throws {}
    func closeWrite() {}
}

func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

#if FUZZ_FRAMES
/// A peer's byte stream, as either side reads it: the handshake, then frames until the end or an error.
func fuzz(_ bytes: [UInt8]) {
    let reader = FrameReader(InputStream(bytes))
    _ = try? reader.readHandshake()
    for _ in 0..<10_000 {
        guard let frame = try? reader.nextFrame(chunk: { _ in }) else { return }
        if case .end = frame { return }
    }
}
#elseif FUZZ_MESSAGES
/// One frame's payload of any type (the first byte): what decodes must encode and decode to the same message.
func fuzz(_ bytes: [UInt8]) {
    guard let type = bytes.first else { return }
    let payload = Array(bytes.dropFirst())
    guard let message = try? payload.withUnsafeBytes({ try Message.decode(type: type, payload: $0) }) else { return }
    let (again, encoded) = message.encode()
    let decoded = try? encoded.withUnsafeBytes { try Message.decode(type: again, payload: $0) }
    precondition(decoded == message, "a message did not survive encode and decode: \(message)")
}
#elseif FUZZ_CONFIG
func fuzz(_ bytes: [UInt8]) {
    _ = try? ProjectConfig.parse(text(bytes), file: "syncd.yaml", directoryName: "fuzz")
}
#elseif FUZZ_COMPOSE
func fuzz(_ bytes: [UInt8]) {
    _ = try? ComposeFile.parse(text(bytes), file: "compose.yaml")
}
#elseif FUZZ_IGNORE
/// An ignore file, then the paths of its own lines asked about (what a scan does with them).
func fuzz(_ bytes: [UInt8]) {
    var rules = IgnoreRules()
    guard (try? rules.add(fileContents: text(bytes), source: ".syncignore")) != nil else { return }
    for line in text(bytes).split(separator: "\n").prefix(16) {
        _ = rules.isExcluded(String(line.prefix(256)))
        _ = rules.isExcluded(Array(line.utf8.prefix(256)) + Array("/x/y.z".utf8))
    }
}
#elseif FUZZ_DOCKERFILE
func fuzz(_ bytes: [UInt8]) {
    guard let syntax = try? DockerfileParser.parse(text(bytes), file: "Dockerfile"),
          let build = try? BuildFile(syntax, buildArgs: ["A": "1"], file: "Dockerfile") else { return }
    _ = try? build.stagesNeeded(target: nil)
}
#elseif FUZZ_SSHCONFIG
func fuzz(_ bytes: [UInt8]) {
    guard let config = try? SSHConfigFile(text: text(bytes), file: "ssh_config", home: "/nonexistent") else { return }
    for name in ["gpu", "gpu-1", "bastion", "u@h:2222", "[::1]:22"] { _ = try? config.settings(for: name) }
}
#elseif FUZZ_MANIFEST
/// A manifest as stored (named by its digest, so the checks before the parser pass).
func fuzz(_ bytes: [UInt8]) {
    _ = try? SnapshotManifest(decoding: bytes, digest: ChunkID(hashing: bytes), object: "manifest")
    _ = try? SnapshotRef(decoding: bytes, name: "projects/p/snapshots/20260101T000000.000000000Z-000000000000", object: "ref")
}
#elseif FUZZ_INDEX
/// A pack index, its checksum appended so that the parser behind it is reached.
func fuzz(_ bytes: [UInt8]) {
    let pack = ChunkID(stored: bytes.prefix(16)) ?? ChunkID(low: 0, high: 0)
    _ = try? PackIndex(decoding: PackIndex.sealed(PackIndex.magic + bytes), pack: pack, object: "index")
}
#elseif FUZZ_PACK
/// A chunk's stored bytes as a pack holds them: the first 5 bytes say how it was stored (flag, raw length).
func fuzz(_ bytes: [UInt8]) {
    guard bytes.count >= 5 else { return }
    let raw = UInt32(bytes[1]) | UInt32(bytes[2]) << 8 | UInt32(bytes[3]) << 16 | UInt32(bytes[4] & 0x3F) << 24
    let stored = Array(bytes.dropFirst(5))
    let entry = PackEntry(id: ChunkID(hashing: stored), offset: 0, storedLength: UInt32(stored.count),
                          rawLength: min(raw, UInt32(ChunkParameters.largestMaxSize)), compressed: bytes[0] & 1 == 1)
    _ = try? verifiedChunk(stored, entry: entry, object: "pack", decompressor: ChunkDecompressor())
}
#elseif FUZZ_SEEDS
/// Writes each target's seed corpus into Fuzz/corpus/<name>/ from real inputs: frames and messages as syncd
/// sends them, config files like those of the README and the tests, store objects as a push writes them.
@main
struct Seeds {
    static func b(_ s: String) -> [UInt8] { Array(s.utf8) }

    static let messages: [Message] = [
        .hello(Hello(role: .push, project: "p", remoteRoot: "/r", pullPaths: ["output", "checkpoint"], chunking: .default)),
        .welcome(agentVersion: "0.14", projectDirectory: "/r/p", instance: "0123456789abcdef0123456789abcdef"),
        .fileBegin(FileHeader(op: 7, path: b("src/train.py"), permissions: 0o644, mtimeNanos: 1, size: 99,
                              digest: ChunkID(low: 1, high: 2), base: .absent, chunkCount: 1, dataFollows: true)),
        .chunkList(op: 7, chunks: [ChunkRef(id: ChunkID(low: 3, high: 4), offset: 0, length: 99)]),
        .chunkData(op: 7, index: 0, compressed: false, rawLength: 4, payload: [1, 2, 3, 4]),
        .fileEnd(op: 8, size: 1 << 33, digest: ChunkID(low: 5, high: 9), chunkCount: 3),
        .need(op: 5, indices: [0, 9]),
        .result(OpResult(op: 8, status: .conflict, message: "changed on the remote", current: .file(ChunkID(low: 5, high: 6)),
                         currentSize: 12, currentMtimeNanos: 99, keptAs: [])),
        .remoteEntry(RemoteEntry(op: 9, path: b("output/a"), state: .directory, permissions: 0o755, mtimeNanos: 1, size: 0, chunkCount: 0)),
        .skipped(path: b("output/b"), reason: "being written"),
        .delete(op: 4, path: b("old.py"), base: .file(ChunkID(low: 1, high: 1)), force: false),
        .storePacks(store: "s3://b/p", signingRegion: "", packs: [StorePack(digest: ChunkID(low: 7, high: 8), url: "http://h/b/p/packs/x")]),
        .storeChunks([StoreChunk(id: ChunkID(low: 2, high: 3), pack: 0, offset: 8, storedLength: 10, rawLength: 20, compressed: true)]),
        .storeTrouble(unreachable: false, pack: ChunkID(low: 4, high: 5), damaged: [ChunkID(low: 6, high: 7)], reason: "altered"),
        .endOfOperations, .done, .error(message: "boom", reason: .cannotWatch),
    ]

    static func write(_ name: String, _ seeds: [[UInt8]]) throws {
        let dir = "Fuzz/corpus/" + name
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (i, seed) in seeds.enumerated() { try Data(seed).write(to: URL(fileURLWithPath: "\(dir)/seed-\(i)")) }
    }

    final class Sink: ByteStream {
        var bytes: [UInt8] = []
        func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int { 0 }
        func write(_ b: UnsafeRawBufferPointer) throws { bytes += b }
        func closeWrite() {}
    }

    static func main() throws {
        // Frames: the handshake and a session's frames, as a FrameWriter puts them on the wire.
        let sink = Sink()
        let writer = FrameWriter(sink)
        try writer.writeHandshake()
        for m in messages { try writer.send(m) }
        try writer.flush()
        try write("frames", [sink.bytes])
        try write("messages", messages.map { let (type, payload) = $0.encode(); return [type] + payload })
        try write("config", [
            "name: proj\nremote: gpu-box\nremote_root: ~/syncd\npull: [output, checkpoint]\nignore: [\"*.ckpt\", data/raw/]\n",
            "hosts: [gpu-1, {host: gpu-2, remote_root: /scratch/me}]\nstore: s3://team/syncd\nendpoint: http://127.0.0.1:8333\n"
                + "host_credentials: own\nstore_fallback: no\npull_from: all\nstreams: 4\ntimeout: 30\nmax_file_size: 2T\n",
            "x: &a {b: 1}\ny: *a\nchunk_min: 4096\nchunk_avg: 16384\nchunk_max: 65536\n",
        ].map(b))
        try write("compose", [
            "services:\n  train:\n    build: {context: ., dockerfile: Dockerfile, args: {A: 1}}\n    volumes: [./data:/data]\n"
                + "  web:\n    image: busybox\n    environment: {X: y}\n",
            "x-common: &c {build: .}\nservices:\n  a: *c\n  b: {<<: *c, command: [sh, -c, 'true']}\n",
        ].map(b))
        try write("ignore", ["*.pyc\n__pycache__/\n!keep.pyc\n**/.git\n/build\ndata/**/*.tmp\n[a-c]?.log\n\\#literal\n"].map(b))
        try write("dockerfile", [
            "# syntax=docker/dockerfile:1\nARG BASE=busybox\nFROM $BASE AS build\nENV A=1 B=\"two words\"\nWORKDIR /app\n"
                + "COPY --chown=1:1 src/ /app/src/\nRUN --mount=type=bind,source=data,target=/data make\n"
                + "COPY <<EOF /etc/x\nhello\nEOF\nFROM busybox\nCOPY --from=build /app /app\nADD https://example.com/x /x\n",
        ].map(b))
        try write("sshconfig", [
            "Host gpu-*\n  HostName %h.internal\n  User me\n  Port 2222\n  IdentityFile ~/.ssh/id_ed25519\n  IdentitiesOnly yes\n"
                + "  ProxyJump bastion,ops@jump:22\nHost bastion\n  ProxyCommand ssh -W %h:%p edge\n  ServerAliveInterval 15\n"
                + "Host *\n  StrictHostKeyChecking accept-new\n  ConnectTimeout 10\n",
        ].map(b))
        // Store objects as a push writes them.
        var pack = PackBuilder()
        var raws: [[UInt8]] = []
        for i in 0..<3 {
            let raw = Array(String(repeating: "epoch \(i), loss 0.5\n", count: 50).utf8)
            raws.append(raw)
            raw.withUnsafeBytes { pack.add(id: ChunkID(hashing: $0), raw: $0, compressed: ChunkCompressor(level: 6).compress($0)) }
        }
        let (_, index) = pack.finish()
        let encodedIndex = index.encoded()
        try write("index", [Array(encodedIndex.dropFirst(PackIndex.magic.count).dropLast(16))])
        let entries = pack.entries.map { e -> [UInt8] in
            [e.compressed ? 1 : 0, UInt8(e.rawLength & 0xFF), UInt8(e.rawLength >> 8 & 0xFF), UInt8(e.rawLength >> 16 & 0xFF), UInt8(e.rawLength >> 24)]
                + Array(pack.bytes[Int(e.offset)..<Int(e.offset) + Int(e.storedLength)])
        }
        try write("pack", entries)
        let manifest = SnapshotManifest(project: "p", createdNanos: 1_700_000_000_000_000_000, entries: [
            ManifestEntry(path: try RelativePath("src"), kind: .directory, mode: 0o755, mtimeNanos: 1, size: 0),
            ManifestEntry(path: try RelativePath("src/a.py"), kind: .file, mode: 0o644, mtimeNanos: 2, size: UInt64(raws[0].count),
                          digest: ChunkID(hashing: raws[0]), chunks: [ChunkRef(id: ChunkID(hashing: raws[0]), offset: 0, length: UInt32(raws[0].count))]),
            ManifestEntry(path: try RelativePath("link"), kind: .symlink, mode: 0o777, mtimeNanos: 3, size: 0, target: b("src/a.py")),
        ])
        let (digest, manifestBytes) = manifest.encoded()
        let ref = SnapshotRef(name: "r", manifest: digest, files: 1, bytes: 3, newBytes: 3, createdNanos: 1)
        try write("manifest", [manifestBytes, ref.encoded()])
        print("seeds written under Fuzz/corpus/")
    }
}
#else
#error("build with -D FUZZ_<TARGET>: see Fuzz/build.sh")
#endif
