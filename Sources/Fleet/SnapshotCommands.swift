import Client
import Chunking
import Foundation
import LocalState
import S3
import Placement
import SnapshotFormat
import StoreClient
import SyncConfig
import SyncSystem
import Wire

/// One snapshot as `syncctl snapshots` lists it.
public struct SnapshotListing: Codable, Sendable {
    public let id: String
    public let name: String
    /// When it was pushed (ISO 8601, UTC).
    public let time: String
    public let files: Int
    public let bytes: UInt64
    /// What the push that made it uploaded.
    public let newBytes: UInt64

    /// Named as a push names them: the snapshot's id is `snapshot`, what its push uploaded `bytes_uploaded`.
    enum CodingKeys: String, CodingKey { case id = "snapshot", name, time, files, bytes, newBytes = "bytes_uploaded" }
}

extension Project {
    /// The store named by `store:`, with the laptop's credentials.
    func openStore() throws -> (SnapshotStore, StoreUploader) {
        guard let location = try storeLocation() else {
            throw SyncError("\(directory): no store: setting in \(ProjectConfig.fileName); snapshots need a store", code: .usage)
        }
        let credentials: AWSCredentials
        do { credentials = try AWSCredentials.resolve() } catch { throw SyncError("store \(location): \(error)", code: .usage) }
        do {
            let store = SnapshotStore(client: try S3Client(location: location, credentials: credentials))
            return (store, StoreUploader(location: location, credentials: credentials, catalog: try storeCatalog(location)))
        } catch let e as S3Error { throw SyncError("store \(location): \(e)") }
    }

    /// Every snapshot of this project in its store, oldest first.
    public func snapshots() throws -> [SnapshotListing] {
        let (store, uploader) = try openStore()
        let iso = ISO8601DateFormatter()
        do {
            let (refs, broken) = try store.snapshots(config.name, cache: uploader.catalog)
            for problem in broken { printError("warning: \(problem); skipped (`syncctl store check` looks at the whole store)") }
            return refs.map {
                SnapshotListing(id: $0.id, name: $0.name, time: iso.string(from: Date(timeIntervalSince1970: Double($0.createdNanos) / 1e9)),
                                files: $0.files, bytes: $0.bytes, newBytes: $0.newBytes)
            }
        } catch let e as S3Error {
            throw SyncError("store \(store.client.location): \(e)")
        }
    }

    /// Snapshot `id` (a unique prefix of its id, or its ref's name), its manifest, and where the store holds each
    /// of its chunks (the catalog refreshed; every chunk must be there).
    func findSnapshot(_ id: String, in store: SnapshotStore,
                      uploader: StoreUploader) throws -> (SnapshotRef, SnapshotManifest, [ChunkID: StoredChunk]) {
        do {
            let refs = try store.snapshots(config.name, cache: uploader.catalog).refs.filter { $0.id.hasPrefix(id) || $0.name == id || $0.name.hasSuffix("/" + id) }
            guard refs.count == 1, let ref = refs.first else {
                throw SyncError(refs.isEmpty ? "no snapshot \(id) of \(config.name) in \(store.client.location); `syncctl snapshots` lists them"
                                             : "\(id) names \(refs.count) snapshots; give more of the id", code: .usage)
            }
            let manifest = try store.manifest(ref.manifest)
            for problem in try uploader.refresh().broken { printError("warning: \(problem); skipped") }
            let places = try uploader.catalog.locations(manifest.chunkIDs)
            if let lost = manifest.chunkIDs.first(where: { places[$0] == nil }) {
                throw SyncError("snapshot \(ref.id) needs chunk \(lost.hex.prefix(12)), which no pack of \(store.client.location) holds any more")
            }
            return (ref, manifest, places)
        } catch let e as S3Error {
            throw SyncError("store \(store.client.location): \(e)")
        } catch let e as StoreError {
            throw SyncError("\(e)")
        }
    }

    /// Materializes snapshot `id` (or a unique prefix of it, or its ref's name) exactly in `target`, which must
    /// be empty or absent: every path with its bytes, mode and mtime, every chunk read from the store and checked.
    /// An absent target is built beside it (`.NAME.syncd-restore-ID`) and renamed into place once whole; an empty
    /// directory (a mount point, say) is built in place, marked with `.syncd-restore-ID` until done. Either way a
    /// restore that fails is resumed when run again, keeping the files already restored, and a target that is
    /// anything else (a file, a directory with other files in it) is refused and left as it is.
    public func restore(_ id: String, to target: String) throws -> SyncStats {
        let started = monotonicNanos()
        let (store, uploader) = try openStore()
        var stats = SyncStats(direction: "restore")
        do {
            let (ref, manifest, places) = try findSnapshot(id, in: store, uploader: uploader)
            let absolute = URL(fileURLWithPath: target).standardizedFileURL.path
            let marker = ".syncd-restore-" + ref.id
            var st = stat()
            let inPlace: Bool
            if lstat(absolute, &st) != 0 {
                guard errno == ENOENT else { throw SyncError("\(SystemError(call: "lstat", path: absolute, errno: errno))", code: .usage) }
                inPlace = false
            } else {
                guard (st.st_mode & S_IFMT) == S_IFDIR else {
                    throw SyncError("\(absolute) exists and is not a directory; restore into a new or empty directory", code: .usage)
                }
                let names = try FileManager.default.contentsOfDirectory(atPath: absolute)
                // Empty, or holding a restore of this snapshot that stopped (its marker says so).
                guard names.isEmpty || names.contains(marker) else {
                    throw SyncError("\(absolute) is not empty; restore into a new or empty directory", code: .usage)
                }
                inPlace = true
            }
            let parent = (absolute as NSString).deletingLastPathComponent
            let building = inPlace ? absolute : "\(parent)/.\((absolute as NSString).lastPathComponent)\(marker)"
            let resumed = inPlace ? FileManager.default.fileExists(atPath: absolute + "/" + marker) : FileManager.default.fileExists(atPath: building)
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
            let tree = try Tree(rootPath: building, create: true)
            if inPlace { _ = FileManager.default.createFile(atPath: absolute + "/" + marker, contents: Data(ref.name.utf8)) }
            if resumed {
                // What the stopped run was building is started again: no half-built file is kept.
                for dir in [[]] + manifest.entries.filter({ $0.kind == .directory }).map(\.path.bytes) {
                    BuildSession.removeParts(in: tree, directory: dir) { _ in true }
                }
            }
            try restore(manifest, places: places, from: store, into: tree, stats: &stats)
            if inPlace {
                unlink(absolute + "/" + marker)
            } else {
                // Whole: into place. rename(2) never replaces a directory that is not empty, nor a file by a directory.
                guard rename(building, absolute) == 0 else {
                    throw SyncError("\(SystemError(call: "rename", path: absolute, errno: errno)); the restored tree is in \(building)")
                }
            }
            if resumed { stats.warnings.append("resumed the restore left in \(building)") }
            stats.snapshot = ref.id
            stats.filesScanned = manifest.entries.count
            stats.remoteDirectory = absolute
        } catch let e as S3Error {
            throw SyncError("store \(store.client.location): \(e); run the restore again to resume")
        } catch let e as StoreError {
            throw SyncError("\(e); run the restore again to resume")
        }
        stats.durationMs = (monotonicNanos() - started) / 1_000_000
        return stats
    }

    /// Builds `manifest` in `tree`: files a restore that stopped placed already (same size and mtime) are kept.
    private func restore(_ manifest: SnapshotManifest, places: [ChunkID: StoredChunk], from store: SnapshotStore, into tree: Tree,
                         stats: inout SyncStats) throws {
        // A directory of its own: no other session builds there.
        let building = BuildSession.unshared()
        var directories: [ManifestEntry] = []
        for entry in manifest.entries {
            switch entry.kind {
            case .directory:
                _ = try tree.openDirectory(entry.path, create: true)
                directories.append(entry)
            case .symlink:
                guard let parent = try tree.openParent(entry.path, create: true) else { continue }
                if try tree.lstat(entry.path) != nil {
                    try Tree.remove(at: parent, name: entry.path.name, isDirectory: false, shown: entry.path.description)
                }
                try Tree.placeSymlink(at: parent, name: entry.path.name, target: entry.target ?? [], shown: entry.path.description)
                stats.filesChanged += 1
            case .file:
                if let there = try tree.lstat(entry.path) {
                    if there.kind == .regular && there.size == entry.size && there.mtimeNanos == entry.mtimeNanos { continue }
                    guard let parent = try tree.openParent(entry.path, create: false) else { continue }
                    try Tree.remove(at: parent, name: entry.path.name, isDirectory: there.kind == .directory, shown: entry.path.description)
                }
                let assembly = try FileAssembly(tree: tree, path: entry.path, digest: entry.digest ?? .empty, size: entry.size,
                                                chunkList: entry.chunks, session: building)
                for index in assembly.missingIndices {
                    let chunk = assembly.chunks[Int(index)]
                    guard let place = places[chunk.id] else { continue }
                    let bytes = try store.chunk(place.entry, in: place.pack)
                    try bytes.withUnsafeBytes { try assembly.write(index: Int(index), bytes: $0) }
                    stats.chunksSent += 1
                    stats.bytesReceived += UInt64(place.entry.storedLength)
                }
                try assembly.place(permissions: entry.mode, mtimeNanos: entry.mtimeNanos) { now in
                    if now != nil { throw SyncError("\(entry.path): something appeared there during the restore") }
                }
                stats.filesChanged += 1
                stats.bytesLogical += entry.size
                stats.chunksTotal += entry.chunks.count
            }
        }
        // Directories last, deepest first: their modes and times, once nothing more is made in them.
        for entry in directories.reversed() {
            if let dir = try tree.openDirectory(entry.path, create: false) {
                try dir.setPermissions(entry.mode & 0o7777)
                try dir.setModificationTime(entry.mtimeNanos)
            }
        }
    }
}

/// Releases the store locks this process holds (on Ctrl-C or SIGTERM, before it leaves).
public func releaseStoreLocks() { StoreLock.releaseAll() }

extension Project {
    /// `syncctl store unlock`: removes the store's stale locks (with `all`, every lock); returns what each said.
    public func unlockStore(all: Bool) throws -> [StoreLock.Info] {
        let (store, _) = try openStore()
        return try storeWork(store) { try StoreLock.unlock(store.client, all: all) }
    }

    /// `syncctl store gc`: see `StoreUploader.collectGarbage`.
    public func collectGarbage(keep: Int?, keepDays: Double?, grace: Double) throws -> GCStats {
        guard keep != nil || keepDays != nil else {
            throw SyncError("store gc needs --keep N (the newest N snapshots) or --keep-days D", code: .usage)
        }
        let (store, uploader) = try openStore()
        return try storeWork(store) { try uploader.collectGarbage(project: config.name, keep: keep, keepDays: keepDays, grace: grace) }
    }

    /// Runs a store command's `work`, its errors as the CLI tells them (the store named where the error does not).
    func storeWork<T>(_ store: SnapshotStore, _ work: () throws -> T) throws -> T {
        do {
            return try work()
        } catch let e as StoreBusy {
            throw SyncError(e.message)
        } catch let e as S3Error {
            throw SyncError("store \(store.client.location): \(e)")
        } catch let e as StoreError {
            throw SyncError("\(e)")
        } catch let e as ChangedWhileUploading {
            throw SyncError("\(e)")
        }
    }
}


extension Project {
    /// `syncctl store check`: the whole store, every project's snapshots in it (see `SnapshotStore.check`).
    public func checkStore(readData: Bool) throws -> StoreCheckReport {
        let (store, _) = try openStore()
        return try storeWork(store) { try store.check(readData: readData) }
    }

    /// `syncctl store repair`: sets aside what is broken and uploads again, from this project's files, what the
    /// store lacks (see `StoreUploader.repair`).
    public func repairStore(readData: Bool) throws -> StoreRepairReport {
        let (store, uploader) = try openStore()
        let first = try forFirstHost()
        let scan = try LocalScanner(project: first, state: try first.openState()).run(roots: nil)
        let files = scan.entries.compactMap { e in e.content.map { UploadFile(path: e.path, chunks: $0.chunks) } }
        return try storeWork(store) { try uploader.repair(files: files, from: tree, readData: readData) }
    }
}
