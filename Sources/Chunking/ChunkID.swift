import CXXHash
import SyncSystem
#if canImport(Glibc)
import Glibc
#endif

/// A 128-bit XXH3 digest: the id of a chunk, and the digest of a whole file.
public struct ChunkID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var low: UInt64
    public var high: UInt64

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// The digest of `bytes`.
    @inline(__always)
    public init(hashing bytes: UnsafeRawBufferPointer) {
        let h = syncd_xxh3_128(bytes.baseAddress, bytes.count)
        self.init(low: h.low, high: h.high)
    }

    public init(hashing bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { ChunkID(hashing: $0) }
    }

    /// The id of an empty input.
    public static let empty = ChunkID(hashing: [UInt8]())

    /// Not a digest: marks a chunk ref that stands for a hole of a sparse file, a run of zeros that is neither
    /// read, stored nor sent, and is written as a hole (a real XXH3-128 equals it with odds of 2^-128).
    public static let hole = ChunkID(low: 0x0000_656c_6f68_6473, high: 0x6873_7964_636e_7973)

    /// True for the hole marker.
    public var isHole: Bool { self == ChunkID.hole }

    /// 32 lowercase hex digits, high half first (the canonical XXH128 spelling).
    public var hex: String {
        func pad(_ v: UInt64) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return pad(high) + pad(low)
    }

    /// An id as the store's formats write it: 16 bytes, the low half first, each little-endian; nil for another length.
    public init?(stored bytes: ArraySlice<UInt8>) {
        guard bytes.count == 16 else { return nil }
        let (low, high) = bytes.withUnsafeBytes {
            (UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
             UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        }
        self.init(low: low, high: high)
    }

    /// Parses the `hex` form.
    public init?(hex: String) {
        guard hex.utf8.count == 32, let hi = UInt64(hex.prefix(16), radix: 16), let lo = UInt64(hex.suffix(16), radix: 16)
        else { return nil }
        self.init(low: lo, high: hi)
    }

    public var description: String { hex }

    public static func < (a: ChunkID, b: ChunkID) -> Bool { (a.high, a.low) < (b.high, b.low) }
}

/// Incremental XXH3-128 over a stream of bytes, for whole-file digests.
public final class StreamingDigest {
    private let state: UnsafeMutableRawPointer

    public init() {
        guard let state = syncd_xxh3_state_new() else { fatalError("out of memory allocating an XXH3 state") }
        self.state = state
    }

    deinit { syncd_xxh3_state_free(state) }

    public func reset() { syncd_xxh3_state_reset(state) }

    @inline(__always)
    public func update(_ bytes: UnsafeRawBufferPointer) {
        syncd_xxh3_state_update(state, bytes.baseAddress, bytes.count)
    }

    /// Feeds `count` zero bytes (a hole), from memory.
    public func updateZeros(_ count: UInt64) {
        guard count > 0 else { return }
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(min(count, 1 << 20)), alignment: 64)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var left = count
        while left > 0 {
            let n = Int(min(left, UInt64(zeros.count)))
            update(UnsafeRawBufferPointer(rebasing: zeros[0..<n]))
            left -= UInt64(n)
        }
    }

    public func finish() -> ChunkID {
        let h = syncd_xxh3_state_digest(state)
        return ChunkID(low: h.low, high: h.high)
    }

    /// XXH3-128 of a whole file that nobody truncates meanwhile (an executable: it is mapped, and a mapped file cut
    /// short would fault).
    public static func digest(ofFile path: String) throws -> ChunkID {
        try digest(of: try FileDescriptor.open(path, flags: O_RDONLY))
    }

    /// `digest(ofFile:)`, remembered in the small file `stamp` against the file's identity (device, inode, size,
    /// mtime, ctime): while that is unchanged the file is not read again. The agent binary is named by its digest
    /// on every connection, and checks itself at every start; hashing its 14 MB took 3-7 ms of each. A file changed
    /// within the last second is not stamped (a second change in the same clock tick would leave its stat as it
    /// was), and a stamp that cannot be read or written costs only the hashing.
    public static func digest(ofFile path: String, rememberedIn stamp: String) throws -> ChunkID {
        let file = try FileDescriptor.open(path, flags: O_RDONLY)
        let st = try file.stat()
        let identity = "\(st.device) \(st.inode) \(st.size) \(st.mtimeNanos) \(st.ctimeNanos)"
        if let stamped = try? FileDescriptor.open(stamp, flags: O_RDONLY | O_NOFOLLOW),
           let bytes = try? stamped.readExactly(identity.utf8.count + 34, at: 0) {
            let text = String(decoding: bytes, as: UTF8.self)
            if text.hasPrefix(identity + " "), text.hasSuffix("\n"), let id = ChunkID(hex: String(text.dropFirst(identity.count + 1).dropLast())) {
                return id
            }
        }
        let id = try digest(of: file)
        if wallClockNanos() - st.ctimeNanos > 1_000_000_000 {
            // A temporary name, then a rename: a reader sees a whole stamp or none.
            let temporary = stamp + ".\(getpid())"
            if let out = try? FileDescriptor.open(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode: 0o644) {
                let line = Array((identity + " " + id.hex + "\n").utf8)
                let written = (try? line.withUnsafeBytes { try out.writeAll($0) }) != nil
                if !written || rename(temporary, stamp) != 0 { unlink(temporary) }
            }
        }
        return id
    }

    static func digest(of file: FileDescriptor) throws -> ChunkID {
        let state = StreamingDigest()
        // Mapped, the bytes are hashed where the page cache holds them: no copy (the 14 MB agent binary is hashed
        // on every connection, and by the agent itself at every start).
        let size = Int(try file.stat().size)
        if size > 0, let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, file.raw, 0), mapped != MAP_FAILED {
            defer { munmap(mapped, size) }
            state.update(UnsafeRawBufferPointer(start: mapped, count: size))
            return state.finish()
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = try file.read(into: buffer)
            if n == 0 { break }
            state.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        return state.finish()
    }
}
