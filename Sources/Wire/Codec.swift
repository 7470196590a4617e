import Chunking

/// The peer sent something this side cannot accept. The session ends; nothing half-written is kept.
public struct ProtocolError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "protocol error: \(message)" }
}

/// Little-endian encoder for frame payloads.
public struct PayloadWriter {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    public mutating func id(_ v: ChunkID) { u64(v.low); u64(v.high) }
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        u32(UInt32(utf8.count))
        bytes.append(contentsOf: utf8)
    }
    /// A length-prefixed byte string (a path or a name: bytes, not necessarily UTF-8).
    public mutating func byteString(_ data: [UInt8]) {
        u32(UInt32(data.count))
        bytes.append(contentsOf: data)
    }
    public mutating func raw(_ data: [UInt8]) { bytes.append(contentsOf: data) }
}

/// Bounds-checked little-endian decoder over one frame's payload. Every read that would pass the end throws.
public struct PayloadReader {
    private let base: UnsafeRawBufferPointer
    private var offset = 0
    private let frame: String

    public init(_ base: UnsafeRawBufferPointer, frame: String) {
        self.base = base
        self.frame = frame
    }

    public var remaining: Int { base.count - offset }

    private mutating func take(_ n: Int, _ field: String) throws -> UnsafeRawBufferPointer {
        guard n >= 0, n <= remaining else {
            throw ProtocolError("\(frame) frame truncated reading \(field) (needs \(n) bytes, \(remaining) left)")
        }
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: base[offset..<offset + n])
    }

    public mutating func u8(_ field: String) throws -> UInt8 { try take(1, field)[0] }
    /// The next byte, not taken; nil at the end.
    public func peekU8() -> UInt8? { remaining > 0 ? base[offset] : nil }
    public mutating func u16(_ field: String) throws -> UInt16 { UInt16(littleEndian: try take(2, field).loadUnaligned(as: UInt16.self)) }
    public mutating func u32(_ field: String) throws -> UInt32 { UInt32(littleEndian: try take(4, field).loadUnaligned(as: UInt32.self)) }
    public mutating func u64(_ field: String) throws -> UInt64 { UInt64(littleEndian: try take(8, field).loadUnaligned(as: UInt64.self)) }
    public mutating func i64(_ field: String) throws -> Int64 { Int64(bitPattern: try u64(field)) }
    public mutating func id(_ field: String) throws -> ChunkID {
        let low = try u64(field)
        return ChunkID(low: low, high: try u64(field))
    }

    /// A UTF-8 string of at most `limit` bytes.
    public mutating func string(_ field: String, limit: Int = 4096) throws -> String {
        let count = Int(try u32(field))
        guard count <= limit else { throw ProtocolError("\(frame) frame: \(field) is \(count) bytes, limit \(limit)") }
        let raw = try take(count, field)
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw ProtocolError("\(frame) frame: \(field) is not valid UTF-8")
        }
        return s
    }

    /// A byte string of at most `limit` bytes (paths and names are bytes; they are checked where they are used).
    public mutating func byteString(_ field: String, limit: Int = 4096) throws -> [UInt8] {
        let count = Int(try u32(field))
        guard count <= limit else { throw ProtocolError("\(frame) frame: \(field) is \(count) bytes, limit \(limit)") }
        return Array(try take(count, field))
    }

    /// A count of items each `itemSize` bytes long, checked against what is left before anything is allocated.
    public mutating func count(_ field: String, itemSize: Int, limit: Int) throws -> Int {
        let n = Int(try u32(field))
        guard n <= limit else { throw ProtocolError("\(frame) frame: \(field) count \(n) exceeds \(limit)") }
        guard n * itemSize <= remaining else {
            throw ProtocolError("\(frame) frame truncated: \(field) count \(n) needs \(n * itemSize) bytes, \(remaining) left")
        }
        return n
    }

    public mutating func rest() -> [UInt8] { Array(restInPlace()) }

    /// What is left, where it lies (valid as long as the frame's bytes are).
    public mutating func restInPlace() -> UnsafeRawBufferPointer {
        defer { offset = base.count }
        return UnsafeRawBufferPointer(rebasing: base[offset...])
    }

    /// Throws when bytes are left over: a frame must be consumed exactly.
    public func finish() throws {
        if remaining != 0 { throw ProtocolError("\(frame) frame has \(remaining) unexpected trailing bytes") }
    }
}
