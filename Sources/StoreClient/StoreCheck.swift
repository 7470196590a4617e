import Chunking
import Foundation
import LocalState
import S3
import SnapshotFormat
import SyncSystem
import Wire

/// What `syncctl store check` found: how much it looked at, and every object that is wrong.
public struct StoreCheckReport: Codable, Sendable {
    public var refs = 0
    public var manifests = 0
    public var indexes = 0
    public var packs = 0
    public var chunks = 0
    /// Pack bytes read and re-hashed (`--read-data`).
    public var bytesRead: UInt64 = 0
    /// Packs without an index: left by an upload that died before writing it. They serve nothing and hurt nothing.
    public var unindexedPacks = 0
    /// Objects set aside by `store repair` (under `broken/`), kept for a person to look at.
    public var setAside = 0
    public var problems: [StoreProblem] = []
    /// The snapshots that cannot be restored whole (their refs' names).
    public var unrestorable: [String] = []

    /// What a repair acts on (not printed).
    var brokenRefs: [String] = []
    var brokenManifests: Set<ChunkID> = []
    /// Packs to set aside: their index is broken, or the pack is missing.
    var lostPacks: Set<ChunkID> = []
    /// Packs present and indexed whose bytes are not all right (truncated, altered): the good chunks can be saved.
    var damagedPacks: Set<ChunkID> = []

    public var ok: Bool { problems.isEmpty }

    /// Named so that no key means two things across syncctl's JSON (docs/JSON.md): `chunks` is a list elsewhere,
    /// and `set_aside` the list of names in a repair's report.
    enum CodingKeys: String, CodingKey {
        case refs, manifests, indexes, packs, chunks = "chunks_checked", problems, unrestorable
        case bytesRead = "bytes_read", unindexedPacks = "unindexed_packs", setAside = "objects_set_aside"
    }
}

/// What `syncctl store repair` did.
public struct StoreRepairReport: Codable, Sendable {
    /// What the check before the repair found.
    public var found: [StoreProblem] = []
    /// Objects moved under `broken/`.
    public var setAside: [String] = []
    /// Chunks read back from damaged packs and stored again in new packs.
    public var chunksSalvaged = 0
    /// What went up from the project's files.
    public var chunksUploaded = 0
    public var bytesUploaded: UInt64 = 0
    /// What the check after the repair still finds (snapshots whose lost chunks no local file holds any more).
    public var remaining: [StoreProblem] = []
    public var unrestorable: [String] = []

    public init() {}

    enum CodingKeys: String, CodingKey {
        case found = "problems", remaining, unrestorable
        case setAside = "set_aside", chunksSalvaged = "chunks_salvaged", chunksUploaded = "chunks_uploaded", bytesUploaded = "bytes_uploaded"
    }
}

extension SnapshotStore {
    /// Checks the whole store (every project's refs): every ref decodes and names a manifest that is there and
    /// checks; every index checks and its pack is there, of the size it says; every chunk a manifest names is in
    /// such a pack. With `readData`, every pack is read whole and every chunk in it inflated and re-hashed.
    /// Nothing is trusted from a cache.
    public func check(readData: Bool) throws -> StoreCheckReport {
        var report = StoreCheckReport()

        // Indexes, then packs: a pack is written before its index, so one listed with an index is listed here
        // too, even while a push adds packs.
        let indexed = try packs()
        var packSizes: [ChunkID: UInt64] = [:]
        for object in try client.list("packs/") where object.name.hasSuffix(".pack") {
            if let digest = ChunkID(hex: String(object.name.split(separator: "/").last?.dropLast(5) ?? "")) { packSizes[digest] = object.size }
        }
        report.indexes = indexed.count
        report.unindexedPacks = Set(packSizes.keys).subtracting(indexed).count
        var indexes: [ChunkID: PackIndex] = [:]
        for (pack, body) in zip(indexed, try client.getAll(indexed.map(StoreKeys.index), connections: 8)) {
            let key = StoreKeys.index(pack)
            do {
                indexes[pack] = try PackIndex(decoding: try body.get(), pack: pack, object: shown(key))
            } catch let e as StoreError {
                report.problems.append(StoreProblem(object: shown(key), kind: .index, reason: e.reason))
                report.lostPacks.insert(pack)
            } catch let e as S3Error where e.code == "NoSuchKey" {
                continue  // gone since the listing
            }
        }
        for (pack, index) in indexes.sorted(by: { $0.key.hex < $1.key.hex }) {
            let key = StoreKeys.pack(pack)
            guard let size = packSizes[pack] else {
                report.problems.append(StoreProblem(object: shown(key), kind: .pack,
                                                   reason: "missing, though its index lists \(index.entries.count) chunks"))
                report.lostPacks.insert(pack)
                indexes[pack] = nil
                continue
            }
            report.packs += 1
            report.chunks += index.entries.count
            if size != index.size {
                report.problems.append(StoreProblem(object: shown(key), kind: .pack, reason: "is \(size) bytes; its index says \(index.size)"))
                report.damagedPacks.insert(pack)
            }
        }

        // Every chunk's bytes, when asked.
        var damagedChunks: Set<ChunkID> = []
        if readData {
            let decompressor = ChunkDecompressor()
            for pack in indexes.keys.sorted(by: { $0.hex < $1.hex }) {
                let key = StoreKeys.pack(pack)
                let bytes = try client.get(key)
                report.bytesRead += UInt64(bytes.count)
                let bad = indexes[pack]!.entries.filter { !Self.holds(bytes, $0, decompressor: decompressor) }
                if !bad.isEmpty {
                    damagedChunks.formUnion(bad.map(\.id))
                    report.problems.append(StoreProblem(object: shown(key), kind: .chunk, reason:
                        "\(bad.count) of its \(indexes[pack]!.entries.count) chunks do not match their ids (first \(bad[0].id.hex.prefix(12)))"))
                    report.damagedPacks.insert(pack)
                } else if ChunkID(hashing: bytes) != pack && !report.damagedPacks.contains(pack) {
                    report.problems.append(StoreProblem(object: shown(key), kind: .pack, reason: "its bytes do not hash to its name, though every chunk checks"))
                    report.damagedPacks.insert(pack)
                }
            }
        }
        var available: Set<ChunkID> = []
        for (pack, index) in indexes where !report.damagedPacks.contains(pack) || readData {
            for e in index.entries where !damagedChunks.contains(e.id) { available.insert(e.id) }
        }

        // Refs and the manifests they name.
        let (refs, brokenRefs) = try self.refs(under: "projects/")
        report.refs = refs.count + brokenRefs.count
        report.problems += brokenRefs
        report.brokenRefs = brokenRefs.map { String($0.object.dropFirst(shown("").count)) }
        var checked: [ChunkID: Bool] = [:]
        for ref in refs {
            let whole: Bool
            if let known = checked[ref.manifest] { whole = known } else {
                whole = try checkManifest(ref, available: available, into: &report)
                checked[ref.manifest] = whole
            }
            if !whole { report.unrestorable.append(ref.name) }
        }
        report.manifests = checked.count
        report.setAside = try client.list(StoreKeys.brokenPrefix).count
        return report
    }

    /// Whether `pack` holds `entry`'s chunk intact.
    static func holds(_ pack: [UInt8], _ entry: PackEntry, decompressor: ChunkDecompressor) -> Bool {
        guard entry.offset + UInt64(entry.storedLength) <= UInt64(pack.count) else { return false }
        let stored = Array(pack[Int(entry.offset)..<Int(entry.offset + UInt64(entry.storedLength))])
        return (try? verifiedChunk(stored, entry: entry, object: "", decompressor: decompressor)) != nil
    }

    /// Checks the manifest `ref` names; false (and problems noted) when the snapshot cannot be restored whole.
    private func checkManifest(_ ref: SnapshotRef, available: Set<ChunkID>, into report: inout StoreCheckReport) throws -> Bool {
        let key = StoreKeys.manifest(ref.manifest)
        let manifest: SnapshotManifest
        do {
            manifest = try self.manifest(ref.manifest)
        } catch let e as StoreError {
            report.problems.append(StoreProblem(object: shown(key), kind: .manifest, reason: "\(e.reason) (named by \(ref.name))"))
            report.brokenManifests.insert(ref.manifest)
            return false
        } catch let e as S3Error where e.code == "NoSuchKey" {
            report.problems.append(StoreProblem(object: shown(key), kind: .manifest, reason: "missing (named by \(ref.name))"))
            report.brokenManifests.insert(ref.manifest)
            return false
        }
        let lost = manifest.chunkIDs.subtracting(available)
        guard lost.isEmpty else {
            report.problems.append(StoreProblem(object: shown(key), kind: .manifest, reason:
                "\(lost.count) of its \(manifest.chunkIDs.count) chunks are in no sound pack (first \(lost.map(\.hex).min()!.prefix(12)))"))
            return false
        }
        return true
    }

    /// Moves an object under `broken/` (same name), where it serves no reader and a person can look at it. One
    /// that is gone already is done with; any other failure to read it leaves it where it is.
    func setAside(_ name: String) throws {
        let body: [UInt8]
        do { body = try client.get(name) } catch let e as S3Error where e.code == "NoSuchKey" { return }
        try client.put(StoreKeys.brokenPrefix + name, body)
        try client.delete(name)
    }
}

extension StoreUploader {
    /// `syncctl store repair`: checks the store, sets aside what is broken (refs that do not decode or whose
    /// manifest is broken or missing, indexes that do not check, indexes whose pack is gone), saves the sound
    /// chunks of damaged packs into new packs before setting those aside, then uploads from `files` every chunk
    /// the store now lacks. Holds the push lock, so no gc runs meanwhile. A snapshot still missing chunks after it
    /// names files this machine no longer holds as they were; the report says which.
    public func repair(files: [UploadFile], from tree: Tree, readData: Bool) throws -> StoreRepairReport {
        let client = try S3Client(location: location, credentials: credentials)
        let store = SnapshotStore(client: client)
        let lock = try StoreLock.take(.push, client: client)
        defer { lock.release() }
        var out = StoreRepairReport()
        let report = try store.check(readData: readData)
        out.found = report.problems

        // Damaged packs: their sound chunks go into new packs first, then the pack and its index are set aside.
        for pack in report.damagedPacks.sorted(by: { $0.hex < $1.hex }) {
            guard let mended = try mend(pack, in: store) else { continue }
            out.chunksSalvaged += mended.salvaged
            out.setAside += [StoreKeys.index(pack), StoreKeys.pack(pack)]
        }
        // A pack found missing is looked for once more before its index goes: never set aside what is there.
        let lost = try report.lostPacks.sorted(by: { $0.hex < $1.hex }).filter { pack in
            try client.size(StoreKeys.pack(pack)) == nil || (try? store.index(pack)) == nil
        }
        for pack in lost { out.setAside += [StoreKeys.index(pack), StoreKeys.pack(pack)] }
        let refsOfBroken = try store.refs(under: "projects/").refs.filter { report.brokenManifests.contains($0.manifest) }.map(\.name)
        out.setAside += report.brokenRefs + refsOfBroken + report.brokenManifests.map(StoreKeys.manifest).sorted()
        for pack in lost { for name in [StoreKeys.index(pack), StoreKeys.pack(pack)] { try store.setAside(name) } }
        for name in report.brokenRefs + refsOfBroken + report.brokenManifests.map(StoreKeys.manifest) { try store.setAside(name) }
        try catalog.forget(packs: lost)
        try catalog.forgetRefs(report.brokenRefs + refsOfBroken)

        // What the store lacks now, from the project's files.
        try refresh()
        let uploaded = try upload(files, from: tree)
        out.chunksUploaded = uploaded.chunksUploaded
        out.bytesUploaded = uploaded.bytesUploaded
        let after = try store.check(readData: false)
        out.remaining = after.problems
        out.unrestorable = after.unrestorable
        return out
    }

    /// Reads `pack` whole and checks every chunk in it. A sound pack is left as it is (nil: a host that reported
    /// it damaged was wrong, or its link was). Otherwise its sound chunks go into a new pack, the pack and its
    /// index are set aside under `broken/`, and the catalog forgets it, so the next upload that needs its lost
    /// chunks sends them again.
    public func mend(_ pack: ChunkID) throws -> (damaged: Int, salvaged: Int)? {
        try mend(pack, in: SnapshotStore(client: try S3Client(location: location, credentials: credentials)))
    }

    func mend(_ pack: ChunkID, in store: SnapshotStore) throws -> (damaged: Int, salvaged: Int)? {
        let index = try store.index(pack)
        let bytes = try store.client.get(StoreKeys.pack(pack))
        let decompressor = ChunkDecompressor()
        var salvaged = PackBuilder(capacity: bytes.count)
        var damaged = 0
        for entry in index.entries {
            guard SnapshotStore.holds(bytes, entry, decompressor: decompressor) else {
                damaged += 1
                continue
            }
            let stored = Array(bytes[Int(entry.offset)..<Int(entry.offset + UInt64(entry.storedLength))])
            let raw = try verifiedChunk(stored, entry: entry, object: "", decompressor: decompressor)
            raw.withUnsafeBytes { salvaged.add(id: entry.id, raw: $0, compressed: entry.compressed ? stored : nil) }
        }
        if damaged == 0 && ChunkID(hashing: bytes) == pack && UInt64(bytes.count) == index.size { return nil }
        // Forgotten first: a chunk the catalog knows keeps its place, so the new pack's would not be recorded.
        try catalog.forget(packs: [pack])
        if !salvaged.entries.isEmpty {
            let rebuilt = try store.put(salvaged)
            try catalog.add(rebuilt)
            // Every chunk sound (bytes past the end, a damaged header): the rebuilt pack is the pack, under its own
            // name, written over the damaged one. Nothing to set aside.
            if rebuilt.pack == pack { return (damaged, salvaged.entries.count) }
        }
        try store.setAside(StoreKeys.index(pack))
        try store.setAside(StoreKeys.pack(pack))
        return (damaged, salvaged.entries.count)
    }
}
