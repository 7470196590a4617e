import CZlib
import Chunking
import SyncSystem
import Wire

/// A store object that is not what its name says: altered, truncated, or not a syncd object at all. Named by
/// its key, so the user can find it.
public struct StoreError: Error, CustomStringConvertible, Equatable {
    public let object: String
    public let reason: String
    public init(object: String, reason: String) {
        self.object = object
        self.reason = reason
    }
    public var description: String { "\(object): \(reason)" }
}

/// Where each kind of object lives under the store's prefix (see docs/STORE.md).
public enum StoreKeys {
    public static func pack(_ digest: ChunkID) -> String { "packs/\(digest.hex.prefix(2))/\(digest.hex).pack" }
    public static func index(_ pack: ChunkID) -> String { "index/\(pack.hex).idx" }
    public static let indexPrefix = "index/"
    /// Where `store repair` sets broken objects aside, under their own names.
    public static let brokenPrefix = "broken/"
    public static func manifest(_ digest: ChunkID) -> String { "manifests/\(digest.hex.prefix(2))/\(digest.hex).manifest" }
    public static func snapshots(_ project: String) -> String { "projects/\(project)/snapshots/" }

    /// The pack digest an index key names; nil for another key.
    public static func packOfIndex(_ key: String) -> ChunkID? {
        guard key.hasPrefix(indexPrefix), key.hasSuffix(".idx") else { return nil }
        return ChunkID(hex: String(key.dropFirst(indexPrefix.count).dropLast(4)))
    }
}

/// One chunk's place in a pack.
public struct PackEntry: Sendable, Equatable {
    public var id: ChunkID
    /// Where its stored bytes start in the pack, and how many there are.
    public var offset: UInt64
    public var storedLength: UInt32
    /// Its length once inflated (the chunk's length).
    public var rawLength: UInt32
    /// Stored raw deflate (zlib without header) rather than as is.
    public var compressed: Bool

    public init(id: ChunkID, offset: UInt64, storedLength: UInt32, rawLength: UInt32, compressed: Bool) {
        self.id = id
        self.offset = offset
        self.storedLength = storedLength
        self.rawLength = rawLength
        self.compressed = compressed
    }

    /// The byte range of its stored bytes in the pack.
    public var range: Range<UInt64> { offset..<(offset + UInt64(storedLength)) }
}

/// A pack being filled: the magic `SYNCDPK1`, then the stored bytes of each chunk, back to back. A pack is named
/// by the XXH3-128 of all its bytes; its index (below) says where each chunk is.
public struct PackBuilder {
    public static let magic = Array("SYNCDPK1".utf8)
    public private(set) var bytes: [UInt8] = PackBuilder.magic
    public private(set) var entries: [PackEntry] = []
    private var ids: Set<ChunkID> = []

    public init(capacity: Int = 32 << 20) { bytes.reserveCapacity(capacity) }

    /// Raw bytes of the chunks added, before compression.
    public private(set) var rawBytes: UInt64 = 0

    public func contains(_ id: ChunkID) -> Bool { ids.contains(id) }

    /// Adds a chunk (`raw` hashes to `id`), stored as `compressed` when given.
    public mutating func add(id: ChunkID, raw: UnsafeRawBufferPointer, compressed: [UInt8]?) {
        guard ids.insert(id).inserted else { return }
        let offset = UInt64(bytes.count)
        if let compressed { bytes.append(contentsOf: compressed) } else { bytes.append(contentsOf: raw) }
        entries.append(PackEntry(id: id, offset: offset, storedLength: UInt32(UInt64(bytes.count) - offset),
                                 rawLength: UInt32(raw.count), compressed: compressed != nil))
        rawBytes += UInt64(raw.count)
    }

    /// The pack's name (digest of its bytes) and its index object.
    public func finish() -> (digest: ChunkID, index: PackIndex) {
        let digest = ChunkID(hashing: bytes)
        return (digest, PackIndex(pack: digest, size: UInt64(bytes.count), entries: entries))
    }
}

/// The index of one pack: `SYNCDIX1`, the pack's digest and size, the entries, then an XXH3-128 of all that.
/// It is stored under the pack's digest (`index/<pack>.idx`) and checks itself and that name.
public struct PackIndex: Sendable, Equatable {
    public static let magic = Array("SYNCDIX1".utf8)
    public var pack: ChunkID
    public var size: UInt64
    public var entries: [PackEntry]

    public init(pack: ChunkID, size: UInt64, entries: [PackEntry]) {
        self.pack = pack
        self.size = size
        self.entries = entries
    }

    public func encoded() -> [UInt8] {
        var w = PayloadWriter(capacity: 48 + entries.count * 33)
        w.raw(Self.magic)
        w.id(pack)
        w.u64(size)
        w.u32(UInt32(entries.count))
        for e in entries {
            w.id(e.id)
            w.u64(e.offset)
            w.u32(e.storedLength)
            w.u32(e.rawLength)
            w.u8(e.compressed ? 1 : 0)
        }
        return Self.sealed(w.bytes)
    }

    /// `body` with its checksum (XXH3-128 of the body) after it: what an index object holds.
    public static func sealed(_ body: [UInt8]) -> [UInt8] {
        var w = PayloadWriter(capacity: body.count + 16)
        w.raw(body)
        w.id(ChunkID(hashing: body))
        return w.bytes
    }

    /// Decodes and checks an index read from `object`, which must be the index of `pack`.
    public init(decoding bytes: [UInt8], pack expected: ChunkID, object: String) throws {
        func refuse(_ why: String) -> StoreError { StoreError(object: object, reason: "\(why); refused") }
        guard bytes.count >= 8 + 16 + 8 + 4 + 16, Array(bytes[0..<8]) == Self.magic else { throw refuse("not a syncd pack index") }
        let body = bytes[0..<(bytes.count - 16)]
        let sum = ChunkID(stored: bytes[(bytes.count - 16)...])
        guard ChunkID(hashing: Array(body)) == sum else { throw refuse("its checksum does not match its bytes (altered or truncated)") }
        do {
            self = try Array(body.dropFirst(8)).withUnsafeBytes { raw in
                var r = PayloadReader(raw, frame: "pack index")
                let pack = try r.id("pack")
                let size = try r.u64("size")
                let n = try r.count("entries", itemSize: 33, limit: 1 << 24)
                var entries: [PackEntry] = []
                entries.reserveCapacity(n)
                for _ in 0..<n {
                    let id = try r.id("chunk id")
                    let offset = try r.u64("offset")
                    let stored = try r.u32("stored length")
                    let rawLength = try r.u32("raw length")
                    let flag = try r.u8("flags")
                    guard flag <= 1, offset <= size, UInt64(stored) <= size - offset, rawLength <= UInt32(ChunkParameters.largestMaxSize) else {
                        throw ProtocolError("entry \(id.hex.prefix(12)) lies outside the pack or is not a chunk")
                    }
                    entries.append(PackEntry(id: id, offset: offset, storedLength: stored, rawLength: rawLength, compressed: flag == 1))
                }
                try r.finish()
                return PackIndex(pack: pack, size: size, entries: entries)
            }
        } catch let e as ProtocolError {
            throw refuse(e.message)
        }
        guard pack == expected else { throw refuse("it indexes pack \(pack.hex), not \(expected.hex)") }
    }
}

/// Checks a chunk read from a pack: inflates it if stored compressed, and re-hashes it against its id.
public func verifiedChunk(_ stored: [UInt8], entry: PackEntry, object: String, decompressor: ChunkDecompressor) throws -> [UInt8] {
    guard stored.count == Int(entry.storedLength) else {
        throw StoreError(object: object, reason: "chunk \(entry.id.hex.prefix(12)) is \(stored.count) bytes there, not \(entry.storedLength) (truncated?); refused")
    }
    var raw = [UInt8](repeating: 0, count: Int(entry.rawLength))
    if entry.compressed {
        do {
            try stored.withUnsafeBytes { input in
                try raw.withUnsafeMutableBytes { try decompressor.decompress(input, rawLength: Int(entry.rawLength), into: $0) }
            }
        } catch {
            throw StoreError(object: object, reason: "chunk \(entry.id.hex.prefix(12)) does not inflate (\(error)); refused")
        }
    } else {
        raw = stored
    }
    guard ChunkID(hashing: raw) == entry.id else {
        throw StoreError(object: object, reason: "chunk \(entry.id.hex.prefix(12)) does not match its id (altered); refused")
    }
    return raw
}

/// zlib (with header) over a whole buffer, and back: manifests are stored this way.
enum WholeDeflate {
    static func compress(_ input: [UInt8]) -> [UInt8] {
        var length = compressBound(uLong(input.count))
        var out = [UInt8](repeating: 0, count: Int(length))
        let rc = input.withUnsafeBytes { i in
            out.withUnsafeMutableBytes { o in
                compress2(o.baseAddress!.assumingMemoryBound(to: Bytef.self), &length, i.baseAddress?.assumingMemoryBound(to: Bytef.self),
                          uLong(input.count), 6)
            }
        }
        precondition(rc == Z_OK, "compress2 failed: \(rc)")
        return Array(out[0..<Int(length)])
    }

    static func decompress(_ input: ArraySlice<UInt8>, rawLength: Int) -> [UInt8]? {
        var length = uLong(rawLength)
        var out = [UInt8](repeating: 0, count: rawLength)
        let rc = Array(input).withUnsafeBytes { i in
            out.withUnsafeMutableBytes { o in
                uncompress(o.baseAddress!.assumingMemoryBound(to: Bytef.self), &length, i.baseAddress?.assumingMemoryBound(to: Bytef.self),
                           uLong(input.count))
            }
        }
        return rc == Z_OK && Int(length) == rawLength ? out : nil
    }
}

extension StoreChunk {
    /// Where `entry` lies, for a push's store source, in the pack numbered `pack` there.
    public init(_ entry: PackEntry, pack: UInt32) {
        self.init(id: entry.id, pack: pack, offset: entry.offset, storedLength: entry.storedLength, rawLength: entry.rawLength,
                  compressed: entry.compressed)
    }
}

extension PackEntry {
    /// The pack entry a store source's chunk place stands for.
    public init(_ chunk: StoreChunk) {
        self.init(id: chunk.id, offset: chunk.offset, storedLength: chunk.storedLength, rawLength: chunk.rawLength, compressed: chunk.compressed)
    }
}
