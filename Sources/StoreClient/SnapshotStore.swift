import Chunking
import LocalState
import S3
import SnapshotFormat
import SyncSystem
import Wire

/// The snapshot store at one S3 location (docs/STORE.md): packs of chunks with their indexes, manifests and
/// per-project refs. Every object is written once under its name and checked against it when read. One per
/// thread (it owns a connection).
public final class SnapshotStore {
    public let client: S3Client
    private let decompressor = ChunkDecompressor()
    /// Packs larger than this go up in parts of this size.
    public static let multipartThreshold = 16 << 20

    public init(client: S3Client) { self.client = client }

    /// The store's name for an object, for messages.
    public func shown(_ key: String) -> String { "s3://\(client.location.bucket)/\(client.location.key(key))" }

    // MARK: packs

    /// Uploads a finished pack, then its index: a pack is known to readers only once its index is there.
    @discardableResult
    public func put(_ pack: PackBuilder) throws -> PackIndex {
        let (digest, index) = pack.finish()
        let key = StoreKeys.pack(digest)
        if pack.bytes.count > Self.multipartThreshold {
            var parts: [[UInt8]] = []
            var start = 0
            while start < pack.bytes.count {
                let end = min(start + Self.multipartThreshold, pack.bytes.count)
                parts.append(Array(pack.bytes[start..<end]))
                start = end
            }
            try client.putMultipart(key, parts: parts)
        } else {
            try client.put(key, pack.bytes)
        }
        // A pack is known to readers once its index is written: only after the store is seen to hold all of it.
        let stored = try client.size(key)
        guard stored == UInt64(pack.bytes.count) else {
            throw StoreError(object: shown(key), reason: "the store holds \(stored.map { "\($0) bytes" } ?? "nothing") of the \(pack.bytes.count) uploaded; its index is not written")
        }
        try client.put(StoreKeys.index(digest), index.encoded())
        return index
    }

    /// The digests of every pack whose index is in the store (after `after`, in key order, when given).
    public func packs(after: ChunkID? = nil) throws -> [ChunkID] {
        try client.list(StoreKeys.indexPrefix, startAfter: after.map(StoreKeys.index)).compactMap { StoreKeys.packOfIndex($0.name) }
    }

    /// The packs the store holds now: an index and a pack object both listed (one without the other, left by a
    /// gc cut short or a lifecycle rule, serves nothing).
    public func heldPacks() throws -> Set<ChunkID> {
        let indexed = Set(try packs())
        var held: Set<ChunkID> = []
        for object in try client.list("packs/") {
            guard object.name.hasSuffix(".pack"), let digest = ChunkID(hex: String(object.name.split(separator: "/").last?.dropLast(5) ?? "")),
                  indexed.contains(digest) else { continue }
            held.insert(digest)
        }
        return held
    }

    /// A pack's index, checked.
    public func index(_ pack: ChunkID) throws -> PackIndex {
        let key = StoreKeys.index(pack)
        return try PackIndex(decoding: try client.get(key), pack: pack, object: shown(key))
    }

    /// One chunk read from its pack with a ranged GET, inflated and checked against its id.
    public func chunk(_ entry: PackEntry, in pack: ChunkID) throws -> [UInt8] {
        let key = StoreKeys.pack(pack)
        return try verifiedChunk(try client.get(key, range: entry.range), entry: entry, object: shown(key), decompressor: decompressor)
    }

    /// A whole pack, checked against its name.
    public func wholePack(_ pack: ChunkID) throws -> [UInt8] {
        let key = StoreKeys.pack(pack)
        let bytes = try client.get(key)
        guard ChunkID(hashing: bytes) == pack else {
            throw StoreError(object: shown(key), reason: "its bytes do not hash to its name (altered or truncated); refused")
        }
        return bytes
    }

    // MARK: manifests and refs

    /// Writes a manifest (once: an object of that name is that manifest) and returns its digest.
    public func put(_ manifest: SnapshotManifest) throws -> ChunkID {
        let (digest, bytes) = manifest.encoded()
        let key = StoreKeys.manifest(digest)
        if try client.size(key) != UInt64(bytes.count) { try client.put(key, bytes) }
        return digest
    }

    /// A manifest, checked against its digest.
    public func manifest(_ digest: ChunkID) throws -> SnapshotManifest {
        let key = StoreKeys.manifest(digest)
        return try SnapshotManifest(decoding: try client.get(key), digest: digest, object: shown(key))
    }

    /// Writes a snapshot's ref: the last step of a push.
    public func put(_ ref: SnapshotRef) throws {
        try client.put(ref.name, ref.encoded(), contentType: "text/plain")
    }

    /// Every snapshot of `project`, oldest first (by the time each records; names sort the same way), and the refs
    /// that could not be read (each named, skipped). See `refs(under:cache:)`.
    public func snapshots(_ project: String, cache: StoreCatalog? = nil) throws -> (refs: [SnapshotRef], broken: [StoreProblem]) {
        try refs(under: StoreKeys.snapshots(project), cache: cache)
    }

    /// Every ref under `prefix` (`projects/` for every project's), oldest first, and those that do not decode,
    /// reported rather than thrown: one broken ref does not hide the others (a ref that cannot be read at all, for
    /// a reason other than its being gone, throws). Refs never change once
    /// written, so those `cache` holds are not read again; the rest are read `readers` at a time, each on a
    /// connection of its own (a thousand refs through a 25 ms link: one listing and about 32 rounds, not 1,000).
    public func refs(under prefix: String, cache: StoreCatalog? = nil, readers: Int = 32) throws -> (refs: [SnapshotRef], broken: [StoreProblem]) {
        let names = try client.list(prefix).map(\.name).filter { $0.contains("/snapshots/") }
        var bodies = (try? cache?.refBodies(names)) ?? [:]
        let unread = names.filter { bodies[$0] == nil }
        var fresh: [(name: String, body: [UInt8])] = []
        var broken: [StoreProblem] = []
        for (name, result) in zip(unread, try client.getAll(unread, connections: readers)) {
            switch result {
            case .success(let body):
                bodies[name] = body
                fresh.append((name, body))
            case .failure(let error as S3Error) where error.code == "NoSuchKey":
                continue  // deleted since the listing (a gc)
            case .failure(let error):
                // Not knowing a ref is not the same as its being broken: a gc must not act on a partial list.
                throw error
            }
        }
        let freshNames = Set(fresh.map(\.name))
        var refs: [SnapshotRef] = []
        var good: [(name: String, body: [UInt8])] = []
        for name in names {
            guard let body = bodies[name] else { continue }
            do {
                refs.append(try SnapshotRef(decoding: body, name: name, object: shown(name)))
                if freshNames.contains(name) { good.append((name, body)) }
            } catch {
                broken.append(StoreProblem(object: shown(name), kind: .ref, reason: "\(error)"))
            }
        }
        try? cache?.rememberRefs(good)
        return (refs.sorted { ($0.createdNanos, $0.name) < ($1.createdNanos, $1.name) }, broken)
    }
}

/// Something found wrong with one object of the store: what it is, which one, and what is wrong.
public struct StoreProblem: Sendable, Codable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable { case ref, manifest, index, pack, chunk, lock }
    public var object: String
    public var kind: Kind
    public var reason: String

    public init(object: String, kind: Kind, reason: String) {
        self.object = object
        self.kind = kind
        self.reason = reason
    }

    /// The reason alone where it already begins with the object's name (a `StoreError`'s description).
    public var description: String { reason.hasPrefix(object) ? reason : "\(object): \(reason)" }
}
