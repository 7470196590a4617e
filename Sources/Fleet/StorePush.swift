import Client
import Chunking
import Foundation
import LocalState
import S3
import SnapshotFormat
import StoreClient
import SyncConfig
import SyncRules
import SyncSystem
import Wire


extension Project {
    /// The store's location, from `store:`, `endpoint:` (else `AWS_ENDPOINT_URL`) and `region:` (else
    /// `AWS_REGION`, `AWS_DEFAULT_REGION`, us-east-1).
    func storeLocation(forHosts: Bool = false) throws -> S3Location? {
        guard let url = config.store else { return nil }
        let env = ProcessInfo.processInfo.environment
        let region = config.region ?? env["AWS_REGION"] ?? env["AWS_DEFAULT_REGION"] ?? "us-east-1"
        let laptop = config.endpoint ?? env["AWS_ENDPOINT_URL"].flatMap { $0.isEmpty ? nil : $0 }
        do {
            return try S3Location(url: url, endpoint: forHosts ? (config.hostEndpoint ?? laptop) : laptop, region: region)
        } catch let e as S3Error {
            throw SyncError("\(directory)/\(ProjectConfig.fileName): \(e)", code: .usage)
        }
    }

    /// The catalog of what the store holds, shared by the projects of this machine that use it.
    func storeCatalog(_ location: S3Location) throws -> StoreCatalog {
        let base = stateBase
        let key = ChunkID(hashing: Array("\(location.scheme)://\(location.host)\n\(location.bucket)\n\(location.prefix)".utf8))
        let path = "\(base)/stores/\(location.bucket)-\(key.hex.prefix(16)).sqlite"
        do { return try StoreCatalog(path: path) } catch { throw SyncError("cannot open the store catalog \(path): \(error)") }
    }

    /// This project as its first host sees it (what `push --dry-run` compares with, for a store project).
    public func forFirstHost() throws -> Project { try forHost(try hostList()[0]) }

    /// This project as one of its hosts sees it: the same directory and settings, that host as the remote (its
    /// own local state: what was pushed to it, its conflicts).
    func forHost(_ host: RemoteSpec) throws -> Project {
        var options = self.options
        options.remote = host.description
        return try Project(directory: directory, options: options)
    }
}

/// A push through the snapshot store to every host: the project is read and hashed once, the chunks the store
/// lacks go up once (in packs, in parallel), a manifest and a ref make the push a snapshot, and then every host
/// gets a push of its own at the same time, reading what it lacks from the store over its own link. A host that
/// cannot be reached is reported; the others go on, and the next push retries it.
public final class StorePush {
    private let project: Project
    public var force = false
    public var pruneIgnored = false
    /// What a watcher reported since the last push began (the daemon's): the snapshot is then the last one this
    /// machine made of the project with those paths looked at again, rather than a walk of the whole project.
    public var changedPaths: Set<RelativePath>?
    /// The store's credentials; nil: from the environment or `~/.aws/credentials` (tests set them).
    package var credentials: AWSCredentials?
    /// The most changes a host's part holds; nil: a push's usual part (tests make it small).
    package var partSize: Int?
    /// How many parts each host's push of the last `run` took, in the order of the hosts (tests).
    package private(set) var partsPerHost: [Int] = []
    /// Whether the last `run` built its snapshot from the one before (tests).
    package private(set) var wasIncremental = false
    /// Each host works out its own part from the store (`HostApply`) once the snapshot is committed, rather than
    /// getting a push of the file list (issue 30); `SYNCD_HOST_APPLY=0` (or tests) push the file list instead.
    package var hostsApply = ProcessInfo.processInfo.environment["SYNCD_HOST_APPLY"] != "0"
    /// More paths than this where a host's record differs from the base: that host gets the file list (tests make
    /// it small).
    package var exceptionLimit = HostApply.defaultExceptionLimit

    public init(project: Project) { self.project = project }

    public func run() throws -> SyncStats {
        let started = monotonicNanos()
        let access = try StoreAccess(project, credentials: credentials)

        let hosts = try project.hostList()

        // 1. The project, read and hashed once (the first host's stat cache).
        let first = try project.forHost(hosts[0])
        let firstState = try first.openState()
        let scan = try scanTree(first, state: firstState)
        Trace.mark("store push: scanned and hashed \(scan.entries.count) entries\(wasIncremental ? " (the last snapshot and the paths watched)" : "")")
        let (files, entries) = Self.snapshot(of: scan.entries)
        let manifest = SnapshotManifest(project: project.config.name, createdNanos: wallClockNanos(), entries: entries)
        // What the hosts' last sync is compared with when they apply the snapshot themselves: the last one made here.
        let previous = hostsApply ? lastSnapshot(first, state: firstState).flatMap { m in
            ((try? firstState.value("last_manifest")) ?? nil).flatMap(ChunkID.init(hex:)).map { (m, $0) }
        } : nil

        // 2. The chunks the store lacks, once, then the snapshot; and 3., at the same time, every host. Each host's
        //    push compares this one scan with what that host last had, and sends a file once the packs holding its
        //    chunks are in the store, so the hosts read while this machine still uploads. The push lock keeps a
        //    store gc from deleting a pack this push counts on until every host has what it needs.
        let uploader = access.uploader
        let lock = try access.lock()
        defer { lock.release() }
        let feed: StoreFeed
        let link: @Sendable (ChunkID) -> StorePack
        let broken: [StoreProblem]
        do {
            broken = try uploader.refresh().broken
            feed = StoreFeed(try access.source(for: files))
            link = try access.packLink()
        } catch let e as S3Error {
            throw SyncError("store \(access.location): \(e)")
        }
        if hostsApply {
            var (stats, ref) = try applyOnHosts(hosts, first: first, scan: scan, files: files, manifest: manifest, previous: previous,
                                                access: access, feed: feed, link: link)
            mendDamaged(&stats, files: files, uploader: uploader)
            return conclude(&stats, ref: ref, firstState: firstState, scan: scan, broken: broken, started: started)
        }
        // The hosts are connected first: once the upload fills this machine's uplink, an SSH handshake queued
        // behind it takes seconds (8 s through a 100 Mbit/s link with a deep queue, measured by Bench/fanout).
        let connected = DispatchGroup()
        for _ in hosts { connected.enter() }
        let upload = startUpload(files, manifest: manifest, access: access, feed: feed, link: link, after: connected,
                                 keep: lastSnapshotFile(first))
        // A host counts as arrived once connected, or once its push is over (it could not connect).
        let arrivals = hosts.map { _ in Once { connected.leave() } }
        let project = self.project
        // Each host's push goes in parts of a push's usual size. (Sharing one part's worth among the hosts was
        // measured: 10 hosts' first push of 100k files peaked at 252 MiB rather than 321, but took 778 s rather
        // than 601, a session per part; not kept. The host planning for itself, issue 30's item 1, is the way.)
        let partSize = self.partSize ?? PushSession.defaultPartSize
        var stats = fanOut(to: hosts, feed: feed, ended: { arrivals[$0].run() }) { i, host in
            let session = PushSession(project: i == 0 ? first : try project.forHost(host))
            session.partSize = partSize
            session.fixedTree = scan.entries
            session.onConnected = arrivals[i].run
            return session
        }
        let (uploaded, ref) = try upload.wait().get()
        mendDamaged(&stats, files: files, uploader: uploader)
        stats.bytesUploaded = uploaded.bytesUploaded + (stats.bytesUploaded ?? 0)
        return conclude(&stats, ref: ref, firstState: firstState, scan: scan, broken: broken, started: started)
    }

    /// Packs a host found damaged: checked here (a host may be wrong), their sound chunks saved, the rest of what
    /// they held uploaded again from the files, so that the next host reads it whole.
    private func mendDamaged(_ stats: inout SyncStats, files: [UploadFile], uploader: StoreUploader) {
        for pack in stats.storeDamaged.keys.sorted(by: { $0.hex < $1.hex }) {
            do {
                guard let mended = try uploader.mend(pack) else {
                    stats.warnings.append("pack \(pack.hex.prefix(12)) was reported damaged, but reads whole from here; left as it is")
                    continue
                }
                let again = try uploader.upload(files, from: project.tree)
                stats.bytesUploaded = (stats.bytesUploaded ?? 0) + again.bytesUploaded
                stats.warnings.append("pack \(pack.hex.prefix(12)) held \(mended.damaged) damaged chunks: set aside under broken/, its "
                                      + "\(mended.salvaged) sound chunks kept in a new pack, \(again.chunksUploaded) chunks uploaded again")
            } catch {
                stats.errors.append("cannot mend pack \(pack.hex.prefix(12)), which a host found damaged: \(error); `syncctl store repair` may")
            }
        }
    }

    /// What every store push ends with: the snapshot remembered, the scan's and the store's warnings, the time.
    private func conclude(_ stats: inout SyncStats, ref: SnapshotRef, firstState: LocalDatabase, scan: (entries: [LocalEntry], warnings: [String]),
                          broken: [StoreProblem], started: UInt64) -> SyncStats {
        // What `exec` and `compose` export as SYNCD_SNAPSHOT, so a run can record what it ran; and the manifest kept
        // beside it, which the next push builds on (only when they agree).
        try? firstState.setValue(ref.id, for: "last_snapshot")
        try? firstState.setValue(ref.manifest.hex, for: "last_manifest")
        stats.snapshot = ref.id
        stats.filesScanned = scan.entries.count
        stats.warnings = scan.warnings + stats.warnings
            + broken.map { "\($0); passed over, its chunks uploaded again where this push needs them (`syncctl store repair` sets it aside)" }
        stats.durationMs = (monotonicNanos() - started) / 1_000_000
        return stats
    }

    /// The push with each host applying the snapshot itself: the upload and the commit first, then every host at
    /// once, each sent the snapshot, the base and its exceptions (`HostApply`). A host whose record here is too far
    /// from the base, or whose remote was replaced, gets a push of the file list instead, read from the same store.
    private func applyOnHosts(_ hosts: [RemoteSpec], first: Project, scan: (entries: [LocalEntry], warnings: [String]), files: [UploadFile],
                              manifest: SnapshotManifest, previous: (SnapshotManifest, ChunkID)?, access: StoreAccess, feed: StoreFeed,
                              link: @escaping @Sendable (ChunkID) -> StorePack) throws -> (SyncStats, SnapshotRef) {
        let (uploaded, ref) = try startUpload(files, manifest: manifest, access: access, feed: feed, link: link, after: DispatchGroup(),
                                              keep: lastSnapshotFile(first)).wait().get()
        // The packs a host is told of: those holding the chunks of the files that changed since the base (a host
        // whose record differs from the base adds those of its own exceptions).
        var changed: Set<ChunkID> = []
        try ApplyPlan.steps(new: manifest.entries, base: previous?.0.entries ?? [], exceptions: []) { step in
            for c in step.entry?.chunks ?? [] where !c.id.isHole { changed.insert(c.id) }
        }
        let project = self.project
        let (pruneIgnored, exceptionLimit) = (self.pruneIgnored, self.exceptionLimit)
        let template: SnapshotApply
        let morePacks: @Sendable (Set<ChunkID>) throws -> [(SnapshotApply.Object, [UInt8])]
        do { (template, morePacks) = try access.applyRequest(digest: ref.manifest, base: previous?.1, chunks: changed) } catch {
            throw SyncError("store \(access.location): \(error)")
        }
        let (entries, force) = (scan.entries, self.force)
        var request = template
        request.force = force
        // Every host at once from this thread (`ApplyLoop`): no thread waits on a host.
        var applies: [HostApply] = []
        var results: [Result<SyncStats, Error>?] = Array(repeating: nil, count: hosts.count)
        var applying: [Int] = []
        for (i, host) in hosts.enumerated() {
            do {
                let apply = HostApply(project: i == 0 ? first : try project.forHost(host), new: (manifest, ref.manifest), base: previous,
                                      request: request, morePacks: morePacks)
                apply.pruneIgnored = pruneIgnored
                apply.exceptionLimit = exceptionLimit
                apply.itemizes = i == 0
                applies.append(apply)
                applying.append(i)
            } catch {
                results[i] = .failure(error)
            }
        }
        // A host whose record is too far from the base, or whose remote was replaced, gets a push of the file list;
        // so does one that could not read everything from the store: the push finds just what the apply left (its
        // record followed every change made), and reports the store's trouble as a push does. It runs on the
        // worker that found out, at once.
        let parts = IndexedResults<Int>(count: hosts.count)
        let applied = ApplyLoop.run(applies) { k, before in
            let i = applying[k]
            let session = PushSession(project: i == 0 ? first : try project.forHost(hosts[i]))
            session.fixedTree = entries
            session.force = force
            session.pruneIgnored = pruneIgnored
            session.storeFeed = feed
            defer { parts.set(i, session.parts) }
            var rest = try session.run()
            if let before { rest.addApplied(before) }
            if let replaced = applies[k].replaced { rest.warnings.insert(replaced, at: 0) }
            return rest
        }
        for (k, i) in applying.enumerated() {
            results[i] = applied[k].flatMap { stats in
                stats.map { .success($0) } ?? .failure(SyncError("internal: \(hosts[i]) got neither an apply nor a push"))
            }
        }
        partsPerHost = hosts.indices.map { parts[$0] ?? 0 }
        var stats = summarize(hosts, results: results)
        stats.bytesUploaded = uploaded.bytesUploaded + (stats.bytesUploaded ?? 0)
        return (stats, ref)
    }

    /// The project as this push snapshots it. With `changedPaths` and the last snapshot this machine made (kept
    /// beside its state, and named in it), that snapshot with the entries at those paths scanned again: what is
    /// gone, or no longer a directory, goes with what was below it. Otherwise, or when that leaves an entry
    /// without its directory, the whole project, walked and hashed.
    private func scanTree(_ first: Project, state: LocalDatabase) throws -> (entries: [LocalEntry], warnings: [String]) {
        let scanner = LocalScanner(project: first, state: state)
        wasIncremental = false
        if let only = changedPaths, let previous = lastSnapshot(first, state: state) {
            let part = try scanner.run(only: only.sorted())
            if let merged = Self.merge(previous, changed: only, scanned: part.entries) {
                wasIncremental = true
                return (merged, part.warnings.map(\.description))
            }
        }
        let scan = try scanner.run(roots: nil)
        // In path order, as the manifest has it and each host's push merges it with that host's record.
        return (scan.entries.sorted { $0.path < $1.path }, scan.warnings.map(\.description))
    }

    /// Where the last snapshot's manifest is kept, one file per project directory and store.
    private func lastSnapshotFile(_ first: Project) -> String? {
        guard let location = try? first.storeLocation() else { return nil }
        let key = ChunkID(hashing: Array("\(first.directory)\n\(location)\n\(first.config.name)".utf8))
        return "\(first.stateBase)/snapshots/\(first.config.name)-\(key.hex.prefix(16)).manifest"
    }

    /// The last snapshot's manifest, when the kept file is the one the state names (a push that committed but
    /// could not keep it leaves an older file, which is not used).
    private func lastSnapshot(_ first: Project, state: LocalDatabase) -> SnapshotManifest? {
        guard let path = lastSnapshotFile(first), let named = try? state.value("last_manifest"), let digest = ChunkID(hex: named),
              let bytes = FileManager.default.contents(atPath: path) else { return nil }
        return try? SnapshotManifest(decoding: [UInt8](bytes), digest: digest, object: path)
    }

    /// `previous` with the entries at `changed` replaced by what is there now (`scanned`), and what was below a
    /// changed path that is no longer a directory dropped; nil when an entry would be left without its directory
    /// (something the watcher did not report). Sorted as a manifest is.
    package static func merge(_ previous: SnapshotManifest, changed: Set<RelativePath>, scanned: [LocalEntry]) -> [LocalEntry]? {
        let byPath = Dictionary(scanned.map { ($0.path, $0.stat.kind) }, uniquingKeysWith: { a, _ in a })
        // The subtrees that go, as prefixes ending in a slash, in path order.
        let cut = changed.filter { byPath[$0] != .directory }.map { $0.bytes + [UInt8(ascii: "/")] }
            .sorted { $0.lexicographicallyPrecedes($1) }
        var fresh = scanned.sorted { $0.path.bytes.lexicographicallyPrecedes($1.path.bytes) }[...]
        var out: [LocalEntry] = []
        out.reserveCapacity(previous.entries.count + fresh.count)
        var j = 0
        for e in previous.entries {
            let bytes = e.path.bytes
            // What lies below a prefix sorts right after it: a prefix behind the entry and not its own is done with.
            while j < cut.count && cut[j].lexicographicallyPrecedes(bytes) && !bytes.starts(with: cut[j]) { j += 1 }
            if j < cut.count && bytes.starts(with: cut[j]) { continue }
            if changed.contains(e.path) { continue }
            while let f = fresh.first, f.path.bytes.lexicographicallyPrecedes(bytes) { out.append(fresh.removeFirst()) }
            out.append(entry(e))
        }
        out.append(contentsOf: fresh)
        let directories = Set(out.lazy.filter { $0.stat.kind == .directory }.map(\.path))
        for e in scanned {
            guard let parent = e.path.parent else { continue }
            if !directories.contains(parent) { return nil }
        }
        return out
    }

    /// A manifest's entry as the local entry a push compares and sends.
    package static func entry(_ e: ManifestEntry) -> LocalEntry { LocalEntry(manifest: e) }

    /// `syncctl restore SNAPSHOT --host H`: host `host` gets snapshot `id` exactly, read from the store by its
    /// agent; nothing is uploaded and no local file is read. It is a push of the snapshot's tree against what
    /// that host last had, so edits made there meanwhile are conflicts (kept with `--force`), and the next
    /// push brings the host back to the project as it is here.
    public func restore(_ id: String, host: String) throws -> SyncStats {
        let started = monotonicNanos()
        let hosts = try project.hostList()
        guard let target = hosts.first(where: { $0.description == host }) else {
            throw SyncError("\(host) is not one of the hosts of \(project.config.name) (\(hosts.map(\.description).joined(separator: ", ")))",
                            code: .usage)
        }
        let access = try StoreAccess(project, credentials: credentials)
        let lock = try access.lock()
        defer { lock.release() }
        let (ref, manifest, _) = try project.findSnapshot(id, in: access.store, uploader: access.uploader)
        let tree = manifest.entries.map(Self.entry)
        let files = manifest.entries.filter { $0.kind == .file }.map { UploadFile(path: $0.path, chunks: $0.chunks) }
        let feed = StoreFeed(try access.source(for: files), complete: true)
        let project = self.project
        let fixed = tree
        var stats = fanOut(to: [target], feed: feed) { _, host in
            let session = PushSession(project: try project.forHost(host))
            session.fixedTree = fixed
            session.restoring = true
            return session
        }
        stats.direction = "restore"
        stats.snapshot = ref.id
        stats.filesScanned = tree.count
        stats.durationMs = (monotonicNanos() - started) / 1_000_000
        return stats
    }

    /// Runs the session `makeSession` gives each host, all at once, each reading from `source`; sums what they did.
    /// What a snapshot of `entries` holds: its manifest's entries, and the files whose chunks go to the store.
    private static func snapshot(of scanned: [LocalEntry]) -> (files: [UploadFile], entries: [ManifestEntry]) {
        var files: [UploadFile] = []
        var entries: [ManifestEntry] = []
        for e in scanned {
            switch e.stat.kind {
            case .directory:
                entries.append(ManifestEntry(path: e.path, kind: .directory, mode: e.stat.permissions, mtimeNanos: e.stat.mtimeNanos, size: 0))
            case .symlink:
                entries.append(ManifestEntry(path: e.path, kind: .symlink, mode: 0o777, mtimeNanos: e.stat.mtimeNanos, size: 0, target: e.linkTarget))
            default:
                guard let content = e.content else { continue }
                files.append(UploadFile(path: e.path, chunks: content.chunks))
                entries.append(ManifestEntry(path: e.path, kind: .file, mode: e.stat.permissions, mtimeNanos: e.stat.mtimeNanos,
                                             size: content.size, digest: content.digest, chunks: content.chunks))
            }
        }
        return (files, entries)
    }

    /// Uploads what the store lacks, then commits the snapshot, on a thread of its own that starts once the hosts
    /// are connected (`connected`, 15 s at most); each pack is fed to the hosts' pushes as it lands. The manifest
    /// committed is kept in `keep` for the next push to build on.
    private func startUpload(_ files: [UploadFile], manifest: SnapshotManifest, access: StoreAccess, feed: StoreFeed,
                             link: @escaping @Sendable (ChunkID) -> StorePack,
                             after connected: DispatchGroup, keep: String?) -> OneShot<Result<(UploadStats, SnapshotRef), Error>> {
        let upload = OneShot<Result<(UploadStats, SnapshotRef), Error>>()
        let (uploader, location) = (access.uploader, access.location)
        let uploading = { [project, files, manifest] in
            _ = connected.wait(timeout: .now() + 15)
            do {
                let uploaded = try uploader.upload(files, from: project.tree) { index in feed.add(link(index.pack), entries: index.entries) }
                feed.finish()
                let ref = try uploader.commit(manifest, uploaded: uploaded)
                if let keep { Self.keep(manifest, at: keep) }
                Trace.mark("store push: uploaded \(uploaded.chunksUploaded) chunks, \(uploaded.bytesUploaded) bytes; snapshot \(ref.id)")
                upload.set(.success((uploaded, ref)))
            } catch {
                let shown: Error
                switch error {
                case let e as ChangedWhileUploading: shown = SyncError("\(e)")
                case let e as S3Error: shown = SyncError("store \(location): \(e)")
                default: shown = error
                }
                feed.finish(failure: "\(shown)")
                upload.set(.failure(shown))
            }
        }
        // libcurl and libcrypto run on it: the process joins it before it exits.
        do { try LibraryThreads.start(uploading) } catch {
            upload.set(.failure(SyncError("cannot start the upload thread: \(error)")))
        }
        return upload
    }

    /// Writes `manifest` to `path` whole or not at all (a temporary name, then a rename); a failure costs the next
    /// push only a walk of the whole project.
    private static func keep(_ manifest: SnapshotManifest, at path: String) {
        let bytes = manifest.encoded().bytes
        let temporary = path + ".\(getpid())"
        do {
            try Tree.makeDirectories((path as NSString).deletingLastPathComponent)
            guard FileManager.default.createFile(atPath: temporary, contents: Data(bytes)), rename(temporary, path) == 0 else {
                unlink(temporary)
                return
            }
        } catch {
            unlink(temporary)
        }
    }

    /// Runs the session `makeSession` gives each host, all at once, each reading from `feed`; sums what they did.
    private func fanOut(to hosts: [RemoteSpec], feed: StoreFeed, ended: (@Sendable (Int) -> Void)? = nil,
                        makeSession: @escaping @Sendable (Int, RemoteSpec) throws -> PushSession) -> SyncStats {
        let pushed = pushEach(hosts, feed: feed, ended: ended, makeSession: makeSession)
        partsPerHost = pushed.parts
        return summarize(hosts, results: pushed.results.map { $0 })
    }

    /// The session `makeSession` gives each host, each on a thread of its own (the file-list pushes of
    /// `SYNCD_HOST_APPLY=0` and of `restore --host`); each host's result and the parts its push took.
    private func pushEach(_ hosts: [RemoteSpec], feed: StoreFeed, ended: (@Sendable (Int) -> Void)? = nil,
                          makeSession: @escaping @Sendable (Int, RemoteSpec) throws -> PushSession)
        -> (results: [Result<SyncStats, Error>], parts: [Int]) {
        let (force, pruneIgnored) = (self.force, self.pruneIgnored)
        let results = IndexedResults<(Result<SyncStats, Error>, Int)>(count: hosts.count)
        let group = DispatchGroup()
        let work = { @Sendable in
            while let i = results.claim() {
                let host = hosts[i]
                var parts = 0
                let result = Result { () throws -> SyncStats in
                    let session = try makeSession(i, host)
                    session.force = force
                    session.pruneIgnored = pruneIgnored
                    session.storeFeed = feed
                    defer { parts = session.parts }
                    return try session.run()
                }
                results.set(i, (result, parts))
                ended?(i)
            }
        }
        for n in hosts.indices {
            group.enter()
            do {
                try startDetachedThread(name: "push \(n)") {
                    defer { group.leave() }
                    work()
                }
            } catch {
                group.leave()
                if n == 0 {
                    while let i = results.claim() {
                        results.set(i, (.failure(SyncError("cannot start a thread for \(hosts[i]): \(error)")), 0))
                        ended?(i)
                    }
                }
                break
            }
        }
        group.wait()
        let slots = hosts.indices.map { results[$0] ?? (.failure(SyncError("not run")), 0) }
        return (slots.map(\.0), slots.map(\.1))
    }

    /// Each host's result summed as one push's: the first host's counts, everyone's bytes, conflicts and errors.
    private func summarize(_ hosts: [RemoteSpec], results: [Result<SyncStats, Error>?]) -> SyncStats {
        var stats = SyncStats(direction: "push")
        var perHost: [HostResult] = []
        for (i, host) in hosts.enumerated() {
            var result = HostResult(host: host.description, ok: false)
            switch results[i] {
            case .success(var s):
                result = HostResult(host: host.description, stats: s)
                // With several hosts, each line of the summary says whose it is.
                if hosts.count > 1 { s.attribute(to: host.description) }
                if i == 0 {
                    stats.filesChanged = s.filesChanged
                    stats.filesDeleted = s.filesDeleted
                    stats.filesMoved = s.filesMoved
                    stats.bytesLogical = s.bytesLogical
                    stats.chunksTotal = s.chunksTotal
                    stats.remoteDirectory = s.remoteDirectory
                    stats.leftIgnored = s.leftIgnored
                    stats.itemized = s.itemized
                }
                stats.chunksSent += s.chunksSent
                stats.bytesSent += s.bytesSent
                stats.bytesReceived += s.bytesReceived
                stats.conflictList += s.conflictList
                stats.errors += s.errors
                stats.failures += s.failures
                stats.warnings += s.warnings
                stats.kept += s.kept
                stats.storeDamaged.merge(s.storeDamaged) { $0 + $1 }
            case .failure(let error):
                result.error = "\(error)"
                stats.errors.append("\(host): \(error); the next push tries it again")
            case nil:
                result.error = "not run"
            }
            perHost.append(result)
        }
        stats.hosts = perHost
        return stats
    }

}

/// A project's store as a push uses it: where it is for this machine and for the hosts, with the credentials
/// resolved once.
private struct StoreAccess {
    let location: S3Location
    let hostLocation: S3Location
    let credentials: AWSCredentials
    let uploader: StoreUploader
    let store: SnapshotStore
    /// `host_credentials: own`.
    let hostSigns: Bool

    init(_ project: Project, credentials given: AWSCredentials?) throws {
        hostSigns = project.config.hostCredentialsOwn
        guard let location = try project.storeLocation(), let hostLocation = try project.storeLocation(forHosts: true) else {
            throw SyncError("\(project.directory): no store: setting", code: .usage)
        }
        self.location = location
        self.hostLocation = hostLocation
        do { credentials = try given ?? AWSCredentials.resolve() } catch { throw SyncError("store \(location): \(error)", code: .usage) }
        do {
            uploader = StoreUploader(location: location, credentials: credentials, catalog: try project.storeCatalog(location))
            store = SnapshotStore(client: try S3Client(location: location, credentials: credentials))
        } catch let e as S3Error { throw SyncError("store \(location): \(e)") }
    }

    /// The push lock, which a store gc backs off from.
    func lock() throws -> StoreLock {
        do {
            return try StoreLock.take(.push, client: store.client)
        } catch let e as StoreBusy {
            throw SyncError(e.message)
        } catch let e as S3Error {
            throw SyncError("store \(location): \(e)")
        }
    }

    /// What a host needs to apply a snapshot itself (see `StoreUploader.applyRequest`).
    func applyRequest(digest: ChunkID, base: ChunkID?, chunks: Set<ChunkID>) throws
        -> (request: SnapshotApply, links: @Sendable (Set<ChunkID>) throws -> [(SnapshotApply.Object, [UInt8])]) {
        try uploader.applyRequest(digest: digest, base: base, chunks: chunks, endpoint: hostEndpoint, hostSigns: hostSigns)
    }

    /// How the hosts reach a pack uploaded from now on.
    func packLink() throws -> @Sendable (ChunkID) -> StorePack {
        try uploader.packLink(endpoint: hostEndpoint, hostSigns: hostSigns)
    }

    private var hostEndpoint: String? { hostLocation == location ? nil : "\(hostLocation.scheme)://\(hostLocation.host)" }

    /// Where the hosts read the chunks of `files` the store holds now: packs at the host endpoint, presigned.
    func source(for files: [UploadFile]) throws -> StoreSource {
        do {
            return try uploader.source(for: files, endpoint: hostEndpoint, hostSigns: hostSigns)
        } catch { throw SyncError("store \(location): \(error)") }
    }
}

/// Runs its action the first time `run` is called, from any thread.
private final class Once: Sendable {
    private let action: Locked<(@Sendable () -> Void)?>
    init(_ action: @escaping @Sendable () -> Void) { self.action = Locked(action) }
    func run() { action.withLock { todo in defer { todo = nil }; return todo }?() }
}
