import Chunking
import Foundation
import LocalState
import ObjectStore
import Store
import SyncSystem

/// Pushes and gc keep out of each other's way with lock objects (`locks/push-…`, `locks/gc-…`): each writes its
/// own, then looks for the other kind. Whoever finds the other's fresh lock backs off, so a gc never deletes a
/// pack that a push running at the same time counts on (one that the store held before, so it did not upload it
/// again). A lock older than `staleAfter` is a crashed run's and is ignored.
public struct StoreLock {
    public enum Kind: String { case push, gc }
    public static let staleAfter: Double = 3600
    let client: S3Client
    public let name: String

    /// Takes a lock of `kind`; throws when a fresh lock of the other kind is there (after removing its own).
    public static func take(_ kind: Kind, client: S3Client) throws -> StoreLock {
        var random = SystemRandomNumberGenerator()
        let name = "locks/\(kind.rawValue)-\(Int(Date().timeIntervalSince1970))-\(String(random.next(), radix: 16))"
        try client.put(name, Array("\(kind.rawValue) by pid \(getpid()) on \(hostName())\n".utf8), contentType: "text/plain")
        let lock = StoreLock(client: client, name: name)
        let other: Kind = kind == .push ? .gc : .push
        let now = Date().timeIntervalSince1970
        if let held = try client.list("locks/\(other.rawValue)-").first(where: { now - $0.lastModified < staleAfter }) {
            lock.release()
            let store = "s3://\(client.location.bucket)/\(client.location.key(""))"
            throw StoreBusy(message: kind == .push
                ? "\(store): a store gc is running (\(held.name)); push again once it is done, or delete that object if the gc died"
                : "\(store): a push is running (\(held.name)); run gc again once it is done")
        }
        return lock
    }

    public func release() { try? client.delete(name) }
}

/// The store is busy with a run that must not overlap this one.
public struct StoreBusy: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

func hostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    return gethostname(&buffer, buffer.count) == 0 ? String(nulTerminated: buffer) : "?"
}

/// What a gc did.
public struct GCStats: Codable, Sendable, Equatable {
    public var snapshotsKept = 0
    public var snapshotsDeleted = 0
    public var packsDeleted = 0
    public var bytesFreed: UInt64 = 0
    public var manifestsDeleted = 0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case snapshotsKept = "snapshots_kept", snapshotsDeleted = "snapshots_deleted", packsDeleted = "packs_deleted"
        case bytesFreed = "bytes_freed", manifestsDeleted = "manifests_deleted"
    }
}

extension StoreUploader {
    /// Deletes `project`'s snapshots that are not kept (the newest `keep`, and those younger than `keepDays`),
    /// then every pack none of whose chunks a kept snapshot of any project uses, and the manifests no snapshot
    /// names. Objects younger than `grace` seconds are left (a push may be writing them). Holds the gc lock.
    public func collectGarbage(project: String, keep: Int?, keepDays: Double?, grace: Double = 3600) throws -> GCStats {
        let client = try S3Client(location: location, credentials: credentials)
        let store = SnapshotStore(client: client)
        let lock = try StoreLock.take(.gc, client: client)
        defer { lock.release() }
        var stats = GCStats()
        let now = Date().timeIntervalSince1970

        // 1. This project's snapshots beyond what is kept.
        let mine = try store.snapshots(project)
        var kept: Set<String> = []
        if let keep { for ref in mine.suffix(max(keep, 0)) { kept.insert(ref.name) } }
        if let keepDays {
            for ref in mine where now - Double(ref.createdNanos) / 1e9 < keepDays * 86400 { kept.insert(ref.name) }
        }
        for ref in mine where !kept.contains(ref.name) {
            try client.delete(ref.name)
            stats.snapshotsDeleted += 1
        }
        stats.snapshotsKept = kept.count

        // 2. What every remaining snapshot (of any project in the store) uses.
        var liveChunks: Set<ChunkID> = []
        var liveManifests: Set<ChunkID> = []
        for object in try client.list("projects/") where object.name.contains("/snapshots/") {
            let ref = try SnapshotRef(decoding: try client.get(object.name), name: object.name, object: store.shown(object.name))
            guard liveManifests.insert(ref.manifest).inserted else { continue }
            liveChunks.formUnion(try store.manifest(ref.manifest).chunkIDs)
        }

        // 3. Packs none of whose chunks is used, and manifests no snapshot names: index first, so no reader
        //    learns of a pack that is going.
        try refresh()
        var gone: [ChunkID] = []
        for object in try client.list(StoreKeys.indexPrefix) where now - object.lastModified >= grace {
            guard let pack = StoreKeys.packOfIndex(object.name) else { continue }
            let index = try store.index(pack)
            guard !index.entries.contains(where: { liveChunks.contains($0.id) }) else { continue }
            try client.delete(StoreKeys.index(pack))
            try client.delete(StoreKeys.pack(pack))
            gone.append(pack)
            stats.packsDeleted += 1
            stats.bytesFreed += index.size
        }
        try catalog.forget(packs: gone)
        for object in try client.list("manifests/") where now - object.lastModified >= grace {
            let digest = ChunkID(hex: String((object.name as NSString).lastPathComponent.prefix(32)))
            guard let digest, !liveManifests.contains(digest) else { continue }
            try client.delete(object.name)
            stats.manifestsDeleted += 1
            stats.bytesFreed += object.size
        }
        return stats
    }
}
