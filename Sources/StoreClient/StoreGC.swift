import Chunking
import Foundation
import LocalState
import S3
import SnapshotFormat
import SyncSystem

/// Pushes and gc keep out of each other's way with lock objects (`locks/push-…`, `locks/gc-…`), as restic's do:
/// each writes its own, naming its host, pid and time, then looks for the other kind. Whoever finds the other's
/// live lock backs off, so a gc never deletes a pack that a push running at the same time counts on. A held lock
/// is written again (its time refreshed) every `refreshEvery` seconds; one not refreshed for `staleAfter`, or one
/// naming this host and a pid that is gone, belongs to a run that died and is ignored (`syncctl store unlock`
/// removes such locks). A lock is released when its run ends, and on Ctrl-C or SIGTERM (`releaseAll`).
public final class StoreLock: @unchecked Sendable {  // `released` is Locked; the rest is set once
    public enum Kind: String, Sendable { case push, gc }
    public static let staleAfter: Double = 1800
    public static let refreshEvery: Double = 300
    let client: S3Client
    public let name: String
    let kind: Kind
    private let released = Locked(false)

    private init(client: S3Client, name: String, kind: Kind) {
        self.client = client
        self.name = name
        self.kind = kind
    }

    static func body(_ kind: Kind, time: Double) -> [UInt8] {
        Array("syncd store lock\nkind \(kind.rawValue)\nhost \(hostName())\npid \(getpid())\ntime \(Int(time))\n".utf8)
    }

    /// Takes a lock of `kind`; throws `StoreBusy` when a live lock of the other kind is there (after removing its
    /// own). `refreshEvery` (seconds) is for tests.
    public static func take(_ kind: Kind, client: S3Client, refreshEvery: Double = StoreLock.refreshEvery) throws -> StoreLock {
        var random = SystemRandomNumberGenerator()
        let now = Date().timeIntervalSince1970
        let name = "locks/\(kind.rawValue)-\(Int(now))-\(String(random.next(), radix: 16))"
        try client.put(name, body(kind, time: now), contentType: "text/plain")
        let lock = StoreLock(client: client, name: name, kind: kind)
        let other: Kind = kind == .push ? .gc : .push
        for held in try locks(client, prefix: "locks/\(other.rawValue)-") where !held.isStale(now: now) {
            lock.release()
            let store = "s3://\(client.location.bucket)/\(client.location.key(""))"
            let who = "\(held.name), by pid \(held.pid.map(String.init) ?? "?") on \(held.host ?? "?"), written \(Int(now - held.time)) s ago"
            throw StoreBusy(message: kind == .push
                ? "\(store): a store gc is running (\(who)); push again once it is done. If that run died, its lock goes stale "
                  + "\(Int(staleAfter / 60)) min after it was last written, or `syncctl store unlock` removes it now"
                : "\(store): a push is running (\(who)); run gc again once it is done. If that push died, its lock goes stale "
                  + "\(Int(staleAfter / 60)) min after it was last written, or `syncctl store unlock` removes it now")
        }
        try lock.startRefreshing(every: refreshEvery)
        Held.shared.add(lock)
        return lock
    }

    /// Writes the lock again every `interval` seconds until released, on a client of its own.
    private func startRefreshing(every interval: Double) throws {
        let refresher = try client.copy()
        try LibraryThreads.start { [self] in
            while !released.withLock(when: { $0 }, deadline: monotonicNanos() + UInt64(interval * 1e9), { released, _ in released }) {
                try? refresher.put(name, Self.body(kind, time: Date().timeIntervalSince1970), contentType: "text/plain")
            }
        }
    }

    public func release() {
        let first = released.withLock { released in
            defer { released = true }
            return !released
        }
        guard first else { return }
        Held.shared.remove(self)
        try? client.copy().delete(name)
    }

    /// Releases every lock this process holds (Ctrl-C, SIGTERM): the store is not left busy for half an hour.
    public static func releaseAll() {
        for lock in Held.shared.all() { lock.release() }
    }

    /// The locks this process holds.
    private final class Held: Sendable {
        static let shared = Held()
        private let locks = Locked<[String: StoreLock]>([:])
        func add(_ l: StoreLock) { locks.withLock { $0[l.name] = l } }
        func remove(_ l: StoreLock) { locks.withLock { $0[l.name] = nil } }
        func all() -> [StoreLock] { Array(locks.current.values) }
    }

    /// What a lock object says of the run that wrote it.
    public struct Info: Sendable {
        public var name: String
        public var host: String?
        public var pid: Int32?
        /// When it was last written (its own time, else the object's).
        public var time: Double

        /// True for a lock of a run that is gone: not written for `staleAfter`, or of this host and a pid that is
        /// no more.
        public func isStale(now: Double) -> Bool {
            if now - time >= StoreLock.staleAfter { return true }
            guard host == hostName(), let pid else { return false }
            return kill(pid, 0) != 0 && errno == ESRCH
        }
    }

    /// Every lock under `prefix` (`locks/` for all), with what it says.
    public static func locks(_ client: S3Client, prefix: String = "locks/") throws -> [Info] {
        try client.list(prefix).map { object in
            let text = (try? client.get(object.name)).map { String(decoding: $0, as: UTF8.self) } ?? ""
            var info = Info(name: object.name, host: nil, pid: nil, time: object.lastModified)
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ", maxSplits: 1).map(String.init)
                guard words.count == 2 else { continue }
                switch words[0] {
                case "host": info.host = words[1]
                case "pid": info.pid = Int32(words[1])
                case "time": if let t = Double(words[1]) { info.time = t }
                default: break
                }
            }
            // Locks written before 0.14: "push by pid N on HOST".
            if info.host == nil, let by = text.range(of: " by pid "), let on = text.range(of: " on ") {
                info.pid = Int32(text[by.upperBound..<on.lowerBound])
                info.host = text[on.upperBound...].trimmingCharacters(in: .whitespacesAndNewlines)
            }
            return info
        }
    }

    /// `syncctl store unlock`: removes the stale locks (with `all`, every lock); returns those removed.
    public static func unlock(_ client: S3Client, all: Bool) throws -> [Info] {
        let now = Date().timeIntervalSince1970
        var removed: [Info] = []
        for info in try locks(client) where all || info.isStale(now: now) {
            try client.delete(info.name)
            removed.append(info)
        }
        return removed
    }
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
    /// Objects found broken and passed over (`store check` and `store repair` look at them).
    public var problems: [StoreProblem] = []
    /// Objects `store repair` set aside (under `broken/`), kept for a person to look at.
    public var setAside = 0
    /// Packs and manifests were not collected, because a ref or manifest could not be read (see `problems`).
    public var collectionDeferred = false

    public init() {}

    enum CodingKeys: String, CodingKey {
        case snapshotsKept = "snapshots_kept", snapshotsDeleted = "snapshots_deleted", packsDeleted = "packs_deleted"
        case bytesFreed = "bytes_freed", manifestsDeleted = "manifests_deleted", problems, setAside = "objects_set_aside"
        case collectionDeferred = "collection_deferred"
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
        let (mine, brokenMine) = try store.snapshots(project, cache: catalog)
        stats.problems += brokenMine
        var kept: Set<String> = []
        if let keep { for ref in mine.suffix(max(keep, 0)) { kept.insert(ref.name) } }
        if let keepDays {
            for ref in mine where now - Double(ref.createdNanos) / 1e9 < keepDays * 86400 { kept.insert(ref.name) }
        }
        for ref in mine where !kept.contains(ref.name) {
            try client.delete(ref.name)
            stats.snapshotsDeleted += 1
        }
        try catalog.forgetRefs(mine.filter { !kept.contains($0.name) }.map(\.name))
        stats.snapshotsKept = kept.count

        // 2. What every remaining snapshot (of any project in the store) uses. A ref or manifest that cannot be
        //    read is reported and passed over: it keeps nothing alive, and it stops no one's gc.
        let (refs, brokenRefs) = try store.refs(under: "projects/", cache: catalog)
        stats.problems += brokenRefs.filter { problem in !brokenMine.contains { $0.object == problem.object } }
        var liveChunks: Set<ChunkID> = []
        var liveManifests: Set<ChunkID> = []
        for ref in refs where liveManifests.insert(ref.manifest).inserted {
            do {
                liveChunks.formUnion(try store.manifest(ref.manifest).chunkIDs)
            } catch let e as StoreError {
                stats.problems.append(StoreProblem(object: e.object, kind: .manifest, reason: "\(e.reason) (named by \(ref.name))"))
            } catch let e as S3Error where e.code == "NoSuchKey" {
                stats.problems.append(StoreProblem(object: store.shown(StoreKeys.manifest(ref.manifest)), kind: .manifest,
                                                   reason: "\(e.code ?? "missing"): not in the store (named by \(ref.name))"))
            }
        }

        // 3. Packs none of whose chunks is used, and manifests no snapshot names: index first, so no reader
        //    learns of a pack that is going. A pack whose index cannot be read is left as it is (what it holds is
        //    unknown); `store repair` sets it aside. While a ref or manifest is broken, what it names is unknown
        //    (a teammate's newer syncd may have written it, or the damage may be in a line that does not matter),
        //    so nothing more is deleted until `store repair` has set it aside.
        guard stats.problems.isEmpty else {
            stats.collectionDeferred = true
            stats.problems += try refresh().broken
            return stats
        }
        stats.problems += try refresh().broken
        var gone: [ChunkID] = []
        for object in try client.list(StoreKeys.indexPrefix) where now - object.lastModified >= grace {
            guard let pack = StoreKeys.packOfIndex(object.name) else { continue }
            let index: PackIndex
            do { index = try store.index(pack) } catch is StoreError { continue } catch let e as S3Error where e.code == "NoSuchKey" { continue }
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
        stats.setAside = try client.list(StoreKeys.brokenPrefix).count
        return stats
    }
}
