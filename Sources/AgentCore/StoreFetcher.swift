#if canImport(Glibc)
import Glibc
#endif
import Chunking
import HTTP
import Store
import SyncSystem
import Wire

/// Reads chunks from the snapshot store for a push, on a few worker threads (a `WorkerPool`): ranged GETs of
/// presigned pack URLs, the chunks of one file that lie close together in a pack read in one request, each chunk
/// inflated and checked against its id. The session's thread submits and collects, polling `completionFD` as it
/// does the fsync queue's.
final class StoreFetcher {
    struct Completion {
        let op: UInt32
        /// The chunks read (index in the file's chunk list, bytes), or why they could not be.
        let result: Result<[(index: Int, bytes: [UInt8])], StoreError>
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
    /// Requests read no more than this, and chunks farther apart than `gap` are read separately.
    private static let maxRequest: UInt64 = 8 << 20
    private static let gap: UInt64 = 64 << 10

    /// With a `signingRegion`, the pack URLs are not presigned: this host signs each read with its own AWS
    /// credentials (its environment, or its `~/.aws/credentials`), which must exist.
    init(store: String, signingRegion: String = "", workers count: Int = 4) throws {
        self.store = store
        var signing: (credentials: AWSCredentials, region: String)?
        if !signingRegion.isEmpty {
            do { signing = (try AWSCredentials.resolve(), signingRegion) } catch {
                throw StoreError(object: store, reason: "host_credentials: own, but this host has none: \(error)")
            }
        }
        pool = try WorkerPool(workers: count) { [store, signing] in
            var http: HTTPConnection?
            let decompressor = ChunkDecompressor()
            return { job in
                Completion(op: job.op, result: Self.read(job, store: store, signing: signing, http: &http, decompressor: decompressor))
            }
        }
    }

    var completionFD: Int32 { pool.completionFD }
    var outstanding: Int { pool.outstanding }
    func takeCompletions() -> [Completion] { pool.takeCompletions() }
    func shutdown() { pool.shutdown() }

    func add(_ more: [StorePack]) { packs += more }

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

    /// One job, on a worker thread: the GET, then every chunk checked.
    private static func read(_ job: Job, store: String, signing: (credentials: AWSCredentials, region: String)?,
                             http: inout HTTPConnection?,
                             decompressor: ChunkDecompressor) -> Result<[(index: Int, bytes: [UInt8])], StoreError> {
        guard let pack = job.pack else {
            return .failure(StoreError(object: store, reason: "chunk refers to pack \(job.packNumber), which the push did not name"))
        }
        let object = shown(pack.digest, in: store)
        do {
            if http == nil { http = try HTTPConnection() }
            let response = try http!.perform(HTTPRequest(method: "GET", url: pack.url,
                                                         headers: [("Range", "bytes=\(job.range.lowerBound)-\(job.range.upperBound - 1)")],
                                                         signing: signing))
            var body = response.body
            if response.status == 200 && body.count > Int(job.range.upperBound) {
                body = Array(body[Int(job.range.lowerBound)..<Int(job.range.upperBound)])  // a server that sent it all
            } else if response.status != 206 && response.status != 200 {
                let code = errorCode(response.body) ?? "HTTP \(response.status)"
                return .failure(StoreError(object: object, reason: "the store answered \(code) (HTTP \(response.status))"))
            }
            guard body.count == Int(job.range.count) else {
                return .failure(StoreError(object: object, reason: "read \(body.count) bytes of \(job.range.count) at \(job.range.lowerBound) (truncated?); refused"))
            }
            var out: [(index: Int, bytes: [UInt8])] = []
            for piece in job.pieces {
                let from = Int(piece.chunk.offset - job.range.lowerBound)
                let stored = Array(body[from..<(from + Int(piece.chunk.storedLength))])
                out.append((piece.index, try verifiedChunk(stored, entry: PackEntry(piece.chunk), object: object, decompressor: decompressor)))
            }
            return .success(out)
        } catch let e as StoreError {
            return .failure(e)
        } catch {
            return .failure(StoreError(object: object, reason: "\(error)"))
        }
    }

    /// The `<Code>` of an S3 error answer.
    static func errorCode(_ body: [UInt8]) -> String? {
        guard let open = body.firstRange(of: Array("<Code>".utf8)),
              let close = body[open.upperBound...].firstRange(of: Array("</Code>".utf8)) else { return nil }
        return String(decoding: body[open.upperBound..<close.lowerBound], as: UTF8.self)
    }
}
