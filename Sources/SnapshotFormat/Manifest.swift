import Chunking
#if canImport(Glibc)
import Glibc
#endif
import SyncSystem
import Wire

/// One path of a snapshot.
public struct ManifestEntry: Sendable, Equatable {
    public enum Kind: UInt8, Sendable { case file = 1, directory = 2, symlink = 3 }
    public var path: RelativePath
    public var kind: Kind
    /// Permission bits.
    public var mode: UInt32
    public var mtimeNanos: Int64
    public var size: UInt64
    /// A file's whole-content digest.
    public var digest: ChunkID?
    /// A symlink's target.
    public var target: [UInt8]?
    /// A file's chunks in order (holes as `ChunkID.hole` refs).
    public var chunks: [ChunkRef]

    public init(path: RelativePath, kind: Kind, mode: UInt32, mtimeNanos: Int64, size: UInt64, digest: ChunkID? = nil,
                target: [UInt8]? = nil, chunks: [ChunkRef] = []) {
        self.path = path
        self.kind = kind
        self.mode = mode
        self.mtimeNanos = mtimeNanos
        self.size = size
        self.digest = digest
        self.target = target
        self.chunks = chunks
    }
}

/// A snapshot: every path of the project as pushed, sorted bytewise. Stored as `SYNCDMF1`, the body's length, and
/// the body deflated (zlib); named by the XXH3-128 of the stored bytes, which every reader checks.
public struct SnapshotManifest: Sendable, Equatable {
    public static let magic = Array("SYNCDMF1".utf8)
    static let version: UInt32 = 1
    public var project: String
    public var createdNanos: Int64
    public var entries: [ManifestEntry]

    public init(project: String, createdNanos: Int64, entries: [ManifestEntry]) {
        self.project = project
        self.createdNanos = createdNanos
        self.entries = entries.sorted { $0.path < $1.path }
    }

    /// The stored bytes and their digest (the manifest's name).
    public func encoded() -> (digest: ChunkID, bytes: [UInt8]) {
        var w = PayloadWriter(capacity: 64 + entries.count * 96)
        w.u32(Self.version)
        w.string(project)
        w.i64(createdNanos)
        w.u32(UInt32(entries.count))
        for e in entries {
            w.byteString(e.path.bytes)
            w.u8(e.kind.rawValue)
            w.u32(e.mode)
            w.i64(e.mtimeNanos)
            w.u64(e.size)
            switch e.kind {
            case .file:
                w.id(e.digest ?? ChunkID.empty)
                w.u32(UInt32(e.chunks.count))
                for c in e.chunks { w.id(c.id); w.u32(c.length) }
            case .symlink: w.byteString(e.target ?? [])
            case .directory: break
            }
        }
        var out = Self.magic
        withUnsafeBytes(of: UInt64(w.bytes.count).littleEndian) { out.append(contentsOf: $0) }
        out += WholeDeflate.compress(w.bytes)
        return (ChunkID(hashing: out), out)
    }

    /// Decodes stored bytes, which must hash to `digest`; `object` names them in errors.
    public init(decoding stored: [UInt8], digest: ChunkID, object: String) throws {
        func refuse(_ why: String) -> StoreError { StoreError(object: object, reason: "\(why); refused") }
        guard ChunkID(hashing: stored) == digest else { throw refuse("its bytes do not hash to its name (altered or truncated)") }
        guard stored.count >= 16, Array(stored[0..<8]) == Self.magic else { throw refuse("not a syncd snapshot manifest") }
        let announced = stored[8..<16].withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        // Deflate shrinks at most about 1032 to 1: a body announcing more than that is refused before anything is
        // allocated for it.
        let rawLength = Int(min(announced, 1 << 40))
        guard rawLength > 0, rawLength <= 1 << 31, rawLength <= (stored.count - 16) * 1032 + 64,
              let body = WholeDeflate.decompress(stored[16...], rawLength: rawLength) else {
            throw refuse("its body does not inflate to the \(rawLength) bytes it announces")
        }
        do {
            self = try body.withUnsafeBytes { raw in
                var r = PayloadReader(raw, frame: "manifest")
                let version = try r.u32("version")
                guard version == Self.version else { throw ProtocolError("manifest version \(version), this syncd reads \(Self.version)") }
                let project = try r.string("project", limit: 4096)
                let created = try r.i64("created")
                let n = try r.count("entries", itemSize: 29, limit: 1 << 26)
                var entries: [ManifestEntry] = []
                entries.reserveCapacity(n)
                for _ in 0..<n {
                    let pathBytes = try r.byteString("path")
                    guard let path = try? RelativePath(bytes: pathBytes) else { throw ProtocolError("entry \(displayPath(pathBytes)) is not a valid path") }
                    guard let kind = ManifestEntry.Kind(rawValue: try r.u8("kind")) else { throw ProtocolError("\(path): unknown kind") }
                    var e = ManifestEntry(path: path, kind: kind, mode: try r.u32("mode"), mtimeNanos: try r.i64("mtime"), size: try r.u64("size"))
                    switch kind {
                    case .file:
                        e.digest = try r.id("digest")
                        let count = try r.count("chunks", itemSize: 20, limit: 1 << 26)
                        var offset: UInt64 = 0
                        e.chunks.reserveCapacity(count)
                        for _ in 0..<count {
                            let id = try r.id("chunk id")
                            let length = try r.u32("chunk length")
                            e.chunks.append(ChunkRef(id: id, offset: offset, length: length))
                            offset += UInt64(length)
                        }
                        guard offset == e.size else { throw ProtocolError("\(path): chunks add up to \(offset) bytes, the file is \(e.size)") }
                    case .symlink: e.target = try r.byteString("target")
                    case .directory: break
                    }
                    entries.append(e)
                }
                try r.finish()
                return SnapshotManifest(project: project, createdNanos: created, entries: entries)
            }
        } catch let e as ProtocolError {
            throw refuse(e.message)
        }
    }

    /// Every distinct chunk the snapshot's files are made of (holes left out).
    public var chunkIDs: Set<ChunkID> {
        var out: Set<ChunkID> = []
        for e in entries { for c in e.chunks where !c.id.isHole { out.insert(c.id) } }
        return out
    }
}

/// A named snapshot of a project: `projects/<name>/snapshots/<YYYYMMDDTHHMMSS.NNNNNNNNNZ>-<id>` (UTC, to the
/// nanosecond, so that names sort as the pushes happened even within one second), whose body names its manifest
/// and sums it up. Written last, so a push that dies leaves no ref to what it did not finish.
public struct SnapshotRef: Sendable, Equatable {
    public var name: String
    public var manifest: ChunkID
    public var files: Int
    public var bytes: UInt64
    /// Bytes the push that made it uploaded (chunks the store did not hold).
    public var newBytes: UInt64
    public var createdNanos: Int64

    /// The snapshot's id: the first 12 hex digits of its manifest's digest.
    public var id: String { String(manifest.hex.prefix(12)) }

    public init(name: String, manifest: ChunkID, files: Int, bytes: UInt64, newBytes: UInt64, createdNanos: Int64) {
        self.name = name
        self.manifest = manifest
        self.files = files
        self.bytes = bytes
        self.newBytes = newBytes
        self.createdNanos = createdNanos
    }

    /// The ref's key for a snapshot made at `createdNanos`.
    public static func key(project: String, manifest: ChunkID, createdNanos: Int64) -> String {
        var t = time_t(createdNanos / 1_000_000_000)
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let fraction = String(createdNanos % 1_000_000_000)
        let stamp = "\(parts.tm_year + 1900)\(two(parts.tm_mon + 1))\(two(parts.tm_mday))T\(two(parts.tm_hour))\(two(parts.tm_min))\(two(parts.tm_sec))"
            + "." + String(repeating: "0", count: 9 - fraction.count) + fraction + "Z"
        return StoreKeys.snapshots(project) + stamp + "-" + String(manifest.hex.prefix(12))
    }

    public func encoded() -> [UInt8] {
        Array("syncd snapshot 1\nmanifest \(manifest.hex)\nfiles \(files)\nbytes \(bytes)\nnew_bytes \(newBytes)\ncreated \(createdNanos)\n".utf8)
    }

    public init(decoding bytes: [UInt8], name: String, object: String) throws {
        var fields: [String: String] = [:]
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
        guard lines.first == "syncd snapshot 1" else { throw StoreError(object: object, reason: "not a syncd snapshot ref; refused") }
        for line in lines.dropFirst() {
            guard let space = line.firstIndex(of: " ") else { continue }
            fields[String(line[..<space])] = String(line[line.index(after: space)...])
        }
        guard let manifest = fields["manifest"].flatMap({ ChunkID(hex: $0) }), name.hasSuffix("-" + manifest.hex.prefix(12)) else {
            throw StoreError(object: object, reason: "names no manifest, or one its own name does not; refused")
        }
        self.init(name: name, manifest: manifest, files: Int(fields["files"] ?? "") ?? 0, bytes: UInt64(fields["bytes"] ?? "") ?? 0,
                  newBytes: UInt64(fields["new_bytes"] ?? "") ?? 0, createdNanos: Int64(fields["created"] ?? "") ?? 0)
    }
}
