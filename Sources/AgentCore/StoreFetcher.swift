#if canImport(Glibc)
import Glibc
#endif
import Chunking
import HTTP
import SnapshotFormat
import SyncSystem
import Wire

/// Reads chunks from the snapshot store for a push, on a few worker threads (a `WorkerPool`): ranged GETs of
/// presigned pack URLs, the chunks of one file that lie close together in a pack read in one request, each chunk
/// inflated and checked against its id. The session's thread submits and collects, polling `completionFD` as it
/// does the fsync queue's.
final class StoreFetcher {
    struct Completion {
        let op: UInt32
        /// The pack read from (nil when the push never named it).
        let pack: ChunkID?
        /// The chunks read and checked (index in the file's chunk list, bytes).
        var chunks: [(index: Int, bytes: [UInt8])] = []
        /// The chunks the store did not give intact (index in the file's list, the chunk's place).
        var failed: [(index: Int, chunk: StoreChunk)] = []
        /// Why they failed: the object and what was wrong.
        var failure: StoreError?
        /// The store served bytes that fail their check (altered or cut short), rather than failing to answer.
        var damaged = false
    }

    /// A job withdrawn before it ran: its chunks, to be read some other way.
    struct Withdrawn {
        let op: UInt32
        let pieces: [(index: Int, chunk: StoreChunk)]
    }

    private struct Job {
        let op: UInt32
        let pack: StorePack?
        let packNumber: UInt32
        let range: Range<UInt64>
        let pieces: [(index: Int, chunk: StoreChunk)]
    }

    /// `s3://bucket/prefix`, for messages.
    let store: String
    private(set) var packs: [StorePack] = []
    private let pool: WorkerPool<Job, Completion>
    private let signing: (credentials: AWSCredentials, region: String)?
    private let stallSeconds: Int
    /// Requests read no more than this, and chunks farther apart than `gap` are read separately.
    private static let maxRequest: UInt64 = 8 << 20
    private static let gap: UInt64 = 64 << 10

    /// With a `signingRegion`, the pack URLs are not presigned: this host signs each read with its own AWS
    /// credentials (its environment, or its `~/.aws/credentials`), which must exist.
    init(store: String, signingRegion: String = "", workers count: Int = 4, stallSeconds: Int = 30) throws {
        self.store = store
        var signing: (credentials: AWSCredentials, region: String)?
        if !signingRegion.isEmpty {
            do { signing = (try AWSCredentials.resolve(), signingRegion) } catch {
                throw StoreError(object: store, reason: "host_credentials: own, but this host has none: \(error)")
            }
        }
        self.signing = signing
        self.stallSeconds = stallSeconds
        pool = try WorkerPool(workers: count) { [store, signing] in
            var http: HTTPConnection?
            let decompressor = ChunkDecompressor()
            return { job in
                Self.read(job, store: store, signing: signing, http: &http, stallSeconds: stallSeconds, decompressor: decompressor)
            }
        }
    }

    var completionFD: Int32 { pool.completionFD }
    var outstanding: Int { pool.outstanding }
    func takeCompletions() -> [Completion] { pool.takeCompletions() }
    func shutdown() { pool.shutdown() }

    func add(_ more: [StorePack]) { packs += more }

    /// Where the pack URLs point (`scheme://host:port`), for messages.
    var endpoint: String {
        guard let url = packs.first?.url, let schemeEnd = url.firstRange(of: "://") else { return store }
        let rest = url[schemeEnd.upperBound...]
        return String(url[..<schemeEnd.upperBound]) + String(rest.prefix { $0 != "/" && $0 != "?" })
    }

    /// The store's name of a pack, for messages.
    static func shown(_ pack: ChunkID, in store: String) -> String { "\(store)/\(StoreKeys.pack(pack))" }

    /// Queues reads for chunks of file `op`; returns how many jobs that made (the completions to expect).
    func submit(op: UInt32, _ chunks: [(index: Int, chunk: StoreChunk)]) -> Int {
        var byPack: [UInt32: [(index: Int, chunk: StoreChunk)]] = [:]
        for piece in chunks { byPack[piece.chunk.pack, default: []].append(piece) }
        var made: [Job] = []
        for (number, pieces) in byPack {
            let pack = Int(number) < packs.count ? packs[Int(number)] : nil
            let sorted = pieces.sorted { $0.chunk.offset < $1.chunk.offset }
            var group: [(index: Int, chunk: StoreChunk)] = []
            var start: UInt64 = 0, end: UInt64 = 0
            for piece in sorted {
                let pieceEnd = piece.chunk.offset + UInt64(piece.chunk.storedLength)
                if !group.isEmpty && (piece.chunk.offset > end + Self.gap || max(end, pieceEnd) - start > Self.maxRequest) {
                    made.append(Job(op: op, pack: pack, packNumber: number, range: start..<end, pieces: group))
                    group = []
                }
                if group.isEmpty { start = piece.chunk.offset; end = pieceEnd } else { end = max(end, pieceEnd) }
                group.append(piece)
            }
            if !group.isEmpty { made.append(Job(op: op, pack: pack, packNumber: number, range: start..<end, pieces: group)) }
        }
        pool.submit(made)
        return made.count
    }

    /// One whole object (a manifest, a pack's index), read on the calling thread: its bytes, or why not, naming
    /// `object`. One longer than `limit` is refused.
    func readObject(_ url: String, object: String, limit: Int) throws -> [UInt8] {
        let http = try HTTPConnection()
        http.maxBodyBytes = limit
        http.stallSeconds = stallSeconds
        http.connectTimeout = min(http.connectTimeout, stallSeconds)
        let response: HTTPResponse
        do { response = try http.perform(HTTPRequest(method: "GET", url: url, headers: [], signing: signing)) } catch {
            throw StoreError(object: object, reason: "\(error)")
        }
        guard response.status == 200 else {
            let code = Self.errorCode(response.body) ?? "HTTP \(response.status)"
            throw StoreError(object: object, reason: "the store answered \(code) (HTTP \(response.status))")
        }
        return response.body
    }

    /// Takes back the reads not begun yet (the push stops reading from the store).
    func withdrawQueued() -> [Withdrawn] { pool.withdrawQueued().map { Withdrawn(op: $0.op, pieces: $0.pieces) } }

    /// One job, on a worker thread: the GET, then every chunk checked. Chunks that check are kept even when
    /// others of the same read do not.
    private static func read(_ job: Job, store: String, signing: (credentials: AWSCredentials, region: String)?,
                             http: inout HTTPConnection?, stallSeconds: Int, decompressor: ChunkDecompressor) -> Completion {
        var done = Completion(op: job.op, pack: job.pack?.digest)
        func fail(_ reason: String, object: String, damaged: Bool) -> Completion {
            done.failed = job.pieces
            done.failure = StoreError(object: object, reason: reason)
            done.damaged = damaged
            return done
        }
        guard let pack = job.pack else {
            return fail("chunk refers to pack \(job.packNumber), which the push did not name", object: store, damaged: false)
        }
        let object = shown(pack.digest, in: store)
        let response: HTTPResponse
        do {
            if http == nil {
                http = try HTTPConnection()
                http!.stallSeconds = stallSeconds
                http!.connectTimeout = min(http!.connectTimeout, stallSeconds)
            }
            response = try http!.perform(HTTPRequest(method: "GET", url: pack.url,
                                                     headers: [("Range", "bytes=\(job.range.lowerBound)-\(job.range.upperBound - 1)")],
                                                     signing: signing))
        } catch {
            http = nil
            return fail("\(error)", object: object, damaged: false)
        }
        var body = response.body
        if response.status == 200 && body.count > Int(job.range.upperBound) {
            body = Array(body[Int(job.range.lowerBound)..<Int(job.range.upperBound)])  // a server that sent it all
        } else if response.status != 206 && response.status != 200 {
            let code = errorCode(response.body) ?? "HTTP \(response.status)"
            // Refused with this host's own credentials: say whose they are and where they came from.
            let whose = signing.map { s in [401, 403].contains(response.status)
                ? "; this host signed with its own credentials (host_credentials: own), key \(s.credentials.accessKey.prefix(8))… from \(s.credentials.source)"
                : "" } ?? ""
            return fail("the store answered \(code) (HTTP \(response.status))\(whose)", object: object, damaged: false)
        }
        guard body.count == Int(job.range.count) else {
            return fail("read \(body.count) bytes of \(job.range.count) at \(job.range.lowerBound) (truncated?); refused", object: object, damaged: true)
        }
        for piece in job.pieces {
            let from = Int(piece.chunk.offset - job.range.lowerBound)
            let stored = Array(body[from..<(from + Int(piece.chunk.storedLength))])
            do {
                done.chunks.append((piece.index, try verifiedChunk(stored, entry: PackEntry(piece.chunk), object: object, decompressor: decompressor)))
            } catch {
                done.failed.append(piece)
                if done.failure == nil { done.failure = (error as? StoreError) ?? StoreError(object: object, reason: "\(error)") }
                done.damaged = true
            }
        }
        return done
    }

    /// The `<Code>` of an S3 error answer.
    static func errorCode(_ body: [UInt8]) -> String? {
        guard let open = body.firstRange(of: Array("<Code>".utf8)),
              let close = body[open.upperBound...].firstRange(of: Array("</Code>".utf8)) else { return nil }
        return String(decoding: body[open.upperBound..<close.lowerBound], as: UTF8.self)
    }
}
