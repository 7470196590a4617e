import Chunking
import Foundation
import LocalState
import S3
import SnapshotFormat
import SyncSystem
import Wire

/// What an upload to the store did.
public struct UploadStats: Sendable, Equatable {
    /// Chunks the store lacked, now in new packs.
    public var chunksUploaded = 0
    /// Their bytes as stored (compressed where that paid): what left this machine for the store, objects' bodies.
    public var bytesUploaded: UInt64 = 0
    /// Their bytes before compression.
    public var rawBytes: UInt64 = 0
    public var packs = 0

    public init() {}
}

/// A file to upload: where it is, and the chunks it was cut into (with their offsets).
public struct UploadFile: Sendable {
    public var path: RelativePath
    public var chunks: [ChunkRef]
    public init(path: RelativePath, chunks: [ChunkRef]) {
        self.path = path
        self.chunks = chunks
    }
}

/// A local file no longer holds the bytes it was chunked into (it changed since): the upload stops, and the
/// caller looks at the file again.
public struct ChangedWhileUploading: Error, CustomStringConvertible {
    public let path: RelativePath
    public var description: String { "\(path) changed while being uploaded; push again" }
}

/// Sends to the store the chunks it lacks, each once: what the catalog (refreshed from the pack indexes) does
/// not know is read from the local files, checked against its id, compressed where that pays, packed into packs
/// of about `packTarget` bytes and uploaded by several threads at once; then the manifest and the ref.
public final class StoreUploader: Sendable {
    public let location: S3Location
    let credentials: AWSCredentials
    public let catalog: StoreCatalog
    private let threads: Int
    /// A pack is closed and uploaded once it holds this many bytes.
    public let packTarget: Int

    public init(location: S3Location, credentials: AWSCredentials, catalog: StoreCatalog, threads: Int = 4, packTarget: Int = 32 << 20) {
        self.location = location
        self.credentials = credentials
        self.catalog = catalog
        self.threads = max(1, threads)
        self.packTarget = packTarget
    }

    private func makeStore() throws -> SnapshotStore { SnapshotStore(client: try S3Client(location: location, credentials: credentials)) }

    /// Makes the catalog what the store holds now: the indexes of packs it does not know yet (another laptop's
    /// pushes) are read, and packs it knows that the store no longer holds (a teammate's gc, a bucket emptied or
    /// replaced, a lifecycle rule) are forgotten, so their chunks go up again. The catalog is a cache of the
    /// store, never the truth. An index that cannot be read or fails its checks is reported and skipped: its
    /// pack's chunks count as unknown (uploaded again where needed), and nothing else stops for it.
    @discardableResult
    public func refresh() throws -> (added: Int, forgotten: Int, broken: [StoreProblem]) {
        let store = try makeStore()
        let known = try catalog.packs()
        let held = try store.heldPacks()
        let gone = known.subtracting(held)
        if !gone.isEmpty { try catalog.forget(packs: Array(gone)) }
        var added = 0
        var broken: [StoreProblem] = []
        let unknown = held.subtracting(known).sorted { $0.hex < $1.hex }
        let bodies = try store.client.getAll(unknown.map(StoreKeys.index), connections: 8)
        for (pack, body) in zip(unknown, bodies) {
            let key = StoreKeys.index(pack)
            do {
                try catalog.add(try PackIndex(decoding: try body.get(), pack: pack, object: store.shown(key)))
                added += 1
            } catch let e as StoreError {
                broken.append(StoreProblem(object: store.shown(key), kind: .index, reason: e.reason))
            } catch let e as S3Error {
                broken.append(StoreProblem(object: store.shown(key), kind: .index, reason: "cannot be read: \(e)"))
            }
        }
        return (added, gone.count, broken)
    }

    /// Uploads every chunk of `files` that the store does not hold, read from `tree`. `stored` hears of each pack
    /// once it is in the store (and the catalog), on the uploading thread.
    public func upload(_ files: [UploadFile], from tree: Tree, stored: (@Sendable (PackIndex) -> Void)? = nil) throws -> UploadStats {
        var wanted: Set<ChunkID> = []
        for f in files { for c in f.chunks where !c.id.isHole { wanted.insert(c.id) } }
        let held = try catalog.locations(wanted)
        var stats = UploadStats()
        guard held.count < wanted.count else { return stats }

        let queue = PackQueue(capacity: threads)
        for _ in 0..<threads {
            // Each worker makes its own store (a connection of its own) on its thread; one that cannot fails the
            // upload as a failed put would. They use libcurl and libcrypto: the process joins them before it exits.
            let worker = { [catalog, location, credentials] in
                let store: SnapshotStore
                do { store = SnapshotStore(client: try S3Client(location: location, credentials: credentials)) } catch {
                    queue.fail(error)
                    return
                }
                while let pack = queue.take() {
                    do {
                        let index = try store.put(pack)
                        try catalog.add(index)
                        stored?(index)
                        queue.done(stored: UInt64(pack.bytes.count - PackBuilder.magic.count))
                    } catch {
                        queue.fail(error)
                    }
                }
            }
            do { try LibraryThreads.start(worker) } catch {
                queue.close()
                throw error
            }
        }
        defer { queue.close() }

        let compressor = ChunkCompressor(level: 6)
        var policy = CompressionPolicy()
        var pack = PackBuilder(capacity: packTarget + (1 << 20))
        var queued: Set<ChunkID> = Set(held.keys)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ChunkParameters.largestMaxSize, alignment: 16)
        defer { buffer.deallocate() }
        for (n, file) in files.enumerated() {
            let missing = file.chunks.filter { !$0.id.isHole && !queued.contains($0.id) }
            guard !missing.isEmpty else { continue }
            let fd = try tree.openForReading(file.path)
            policy.begin(op: UInt32(truncatingIfNeeded: n), name: file.path.name)
            for chunk in missing where queued.insert(chunk.id).inserted {
                let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(chunk.length)])
                guard try fd.read(into: view, at: chunk.offset) == Int(chunk.length),
                      ChunkID(hashing: UnsafeRawBufferPointer(view)) == chunk.id else { throw ChangedWhileUploading(path: file.path) }
                let raw = UnsafeRawBufferPointer(view)
                pack.add(id: chunk.id, raw: raw, compressed: policy.compress(raw, op: UInt32(truncatingIfNeeded: n), offset: chunk.offset, with: compressor))
                stats.chunksUploaded += 1
                stats.rawBytes += UInt64(chunk.length)
                if pack.bytes.count >= packTarget {
                    try queue.put(pack)
                    stats.packs += 1
                    pack = PackBuilder(capacity: packTarget + (1 << 20))
                }
            }
        }
        if !pack.entries.isEmpty {
            try queue.put(pack)
            stats.packs += 1
        }
        stats.bytesUploaded = try queue.finish()
        return stats
    }

    /// Writes the manifest, then the ref that names it: the snapshot exists from then on. Only when every chunk
    /// the manifest names is in a pack the store holds at that moment (the caller holds the push lock, so no gc
    /// of this store runs meanwhile); otherwise nothing is written, and the error says what is missing.
    public func commit(_ manifest: SnapshotManifest, uploaded: UploadStats) throws -> SnapshotRef {
        let store = try makeStore()
        let held = try store.heldPacks()
        let ids = manifest.chunkIDs
        let places = try catalog.locations(ids)
        if let lost = ids.first(where: { places[$0].map { !held.contains($0.pack) } ?? true }) {
            let pack = places[lost].map { " (its pack \($0.pack.hex.prefix(12)) is gone from the store)" } ?? ""
            throw StoreError(object: location.description,
                             reason: "chunk \(lost.hex.prefix(12)) of this snapshot is in no pack the store holds\(pack); nothing was committed, push again")
        }
        let digest = try store.put(manifest)
        let files = manifest.entries.filter { $0.kind != .directory }.count
        let bytes = manifest.entries.reduce(UInt64(0)) { $0 + $1.size }
        let ref = SnapshotRef(name: SnapshotRef.key(project: manifest.project, manifest: digest, createdNanos: manifest.createdNanos),
                              manifest: digest, files: files, bytes: bytes, newBytes: uploaded.bytesUploaded, createdNanos: manifest.createdNanos)
        try store.put(ref)
        return ref
    }
}

/// Packs on their way to the uploading threads: at most `capacity` wait, so memory stays bounded; the first
/// failure stops everything.
private final class PackQueue: Sendable {
    private struct State {
        var waiting: [PackBuilder] = []
        var closed = false
        /// Packs put and not yet uploaded (or dropped by a failure).
        var inFlight = 0
        var failure: Error?
        var stored: UInt64 = 0
    }
    private let state = Locked(State())
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func put(_ pack: PackBuilder) throws {
        try state.withLock(when: { $0.waiting.count < self.capacity || $0.failure != nil }) { state in
            if let failure = state.failure { throw failure }
            state.waiting.append(pack)
            state.inFlight += 1
        }
    }

    /// The next pack to upload; nil once closed and empty.
    func take() -> PackBuilder? {
        state.withLock(when: { !$0.waiting.isEmpty || $0.closed }) { state in
            state.waiting.isEmpty ? nil : state.waiting.removeFirst()
        }
    }

    func done(stored bytes: UInt64) {
        state.withLock { state in
            state.stored += bytes
            state.inFlight -= 1
        }
    }

    func fail(_ error: Error) {
        state.withLock { state in
            if state.failure == nil { state.failure = error }
            state.inFlight -= 1 + state.waiting.count
            state.waiting.removeAll()
        }
    }

    /// Waits until every pack put is uploaded; the bytes they hold; rethrows the first failure.
    func finish() throws -> UInt64 {
        try state.withLock(when: { $0.inFlight == 0 || $0.failure != nil }) { state in
            if let failure = state.failure { throw failure }
            return state.stored
        }
    }

    /// No more packs come; returns once none is being uploaded (after a failure too).
    func close() {
        state.withLock { $0.closed = true }
        state.withLock(when: { $0.inFlight == 0 }) { _ in }
    }
}

extension StoreUploader {
    /// What a host needs to read `files`' chunks from the store itself: every pack that holds one, with a URL
    /// good for `expires` seconds (presigned: the host gets no credential), and each chunk's place. Chunks the
    /// catalog does not know are left out (the host asks the laptop for those). With `hostSigns`, the URLs are
    /// plain and the host signs its reads with credentials of its own (`host_credentials: own`).
    public func source(for files: [UploadFile], expires: Int = 6 * 3600, endpoint: String? = nil,
                       hostSigns: Bool = false) throws -> StoreSource {
        var ids: Set<ChunkID> = []
        for f in files { for c in f.chunks where !c.id.isHole { ids.insert(c.id) } }
        let places = try catalog.locations(ids)
        let link = try packLink(expires: expires, endpoint: endpoint, hostSigns: hostSigns)
        var packNumbers: [ChunkID: UInt32] = [:]
        var packs: [StorePack] = []
        var chunks: [ChunkID: StoreChunk] = [:]
        for (id, place) in places {
            let number: UInt32
            if let known = packNumbers[place.pack] { number = known } else {
                number = UInt32(packs.count)
                packNumbers[place.pack] = number
                packs.append(link(place.pack))
            }
            chunks[id] = StoreChunk(place.entry, pack: number)
        }
        return StoreSource(name: location.description, packs: packs, chunks: chunks, signingRegion: hostSigns ? location.region : "")
    }

    /// What a host needs to apply a snapshot (its manifest committed as `digest`) itself: the manifest's URL, the
    /// base's (a snapshot committed before), and the packs holding `chunks` (those of the files it changes), each
    /// with its index's URL; presigned or plain as for `source`. `links` makes more such packs (a host's own).
    public func applyRequest(digest: ChunkID, base: ChunkID?, chunks: Set<ChunkID>, expires: Int = 6 * 3600, endpoint: String? = nil,
                             hostSigns: Bool = false)
        throws -> (request: SnapshotApply, links: @Sendable (Set<ChunkID>) throws -> [(SnapshotApply.Object, [UInt8])]) {
        var hostLocation = location
        if let endpoint { hostLocation = try S3Location(url: "s3://\(location.bucket)/\(location.prefix)", endpoint: endpoint, region: location.region) }
        let links = try S3Client(location: hostLocation, credentials: credentials).links
        // Every URL is signed at one instant, so that they differ only in their key and signature; each is checked
        // to be the head, its key and the shared query, as the host will put it together again.
        let now = Date()
        let probe = StoreKeys.manifest(digest)
        let plain = links.objectURL(probe)
        guard plain.hasSuffix(probe) else { throw StoreError(object: plain, reason: "an object's URL does not end with its key") }
        let head = String(plain.dropLast(probe.utf8.count))
        let query: String
        if hostSigns { query = "" } else {
            let signed = links.presignedGet(probe, expires: expires, date: now)
            guard signed.hasPrefix(head + probe + "?"), let cut = signed.range(of: "&X-Amz-Signature=", options: .backwards) else {
                throw StoreError(object: signed, reason: "a presigned URL is not the object's URL and a query")
            }
            query = String(signed[signed.index(signed.startIndex, offsetBy: head.count + probe.count + 1)..<cut.lowerBound])
        }
        let template = SnapshotApply(store: location.description, signingRegion: hostSigns ? location.region : "", urlHead: head, urlQuery: query,
                                     manifest: .init(digest: digest, signature: []), base: nil, packs: [], indexes: [], exceptions: [], force: false)
        let sign = { @Sendable (key: String) throws -> [UInt8] in
            guard !hostSigns else { return [] }
            let signed = links.presignedGet(key, expires: expires, date: now)
            let hex = signed.suffix(64)
            var bytes: [UInt8] = []
            var i = hex.startIndex
            while i < hex.endIndex, let byte = UInt8(hex[i..<hex.index(i, offsetBy: 2)], radix: 16) {
                bytes.append(byte)
                i = hex.index(i, offsetBy: 2)
            }
            guard bytes.count == 32, template.url(key, signature: bytes) == signed else {
                throw StoreError(object: signed, reason: "a presigned URL does not follow the shared head and query")
            }
            return bytes
        }
        let catalog = self.catalog
        let packs = { @Sendable (ids: Set<ChunkID>) throws -> [(SnapshotApply.Object, [UInt8])] in
            try Set(try catalog.locations(ids).values.map(\.pack)).sorted { $0.hex < $1.hex }
                .map { (SnapshotApply.Object(digest: $0, signature: try sign(StoreKeys.pack($0))), try sign(StoreKeys.index($0))) }
        }
        var request = template
        request.manifest = .init(digest: digest, signature: try sign(StoreKeys.manifest(digest)))
        request.base = try base.map { .init(digest: $0, signature: try sign(StoreKeys.manifest($0))) }
        let holding = try packs(chunks)
        request.packs = holding.map(\.0)
        request.indexes = holding.map(\.1)
        return (request, packs)
    }

    /// How a host reaches a pack: its URL at `endpoint` (default the store's), presigned for `expires` seconds,
    /// or plain for a host that signs its reads itself.
    public func packLink(expires: Int = 6 * 3600, endpoint: String? = nil, hostSigns: Bool = false) throws -> @Sendable (ChunkID) -> StorePack {
        var hostLocation = location
        if let endpoint { hostLocation = try S3Location(url: "s3://\(location.bucket)/\(location.prefix)", endpoint: endpoint, region: location.region) }
        let links = try S3Client(location: hostLocation, credentials: credentials).links
        return { digest in
            let key = StoreKeys.pack(digest)
            return StorePack(digest: digest, url: hostSigns ? links.objectURL(key) : links.presignedGet(key, expires: expires))
        }
    }
}
