import CZlib
import Chunking
import SyncSystem

/// Per-chunk raw-deflate compression that gives up where it does not pay.
public final class ChunkCompressor {
    private var stream = z_stream()
    private var output: [UInt8]

    public init(level: Int32 = 1) {
        // Not zeroed: deflate writes what is read back, and pages never written are never made resident.
        output = [UInt8](unsafeUninitializedCapacity: Int(compressBound(UInt(ChunkParameters.largestMaxSize))) + 64) { buffer, count in
            count = buffer.count
        }
        let rc = syncd_deflate_init_raw(&stream, level)
        precondition(rc == Z_OK, "deflateInit2 failed: \(rc)")
    }

    deinit { deflateEnd(&stream) }

    private func deflateAll(_ input: UnsafeRawBufferPointer, limit: Int) -> Int? {
        deflateReset(&stream)
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress!.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(input.count)
        return output.withUnsafeMutableBytes { out -> Int? in
            stream.next_out = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.avail_out = uInt(min(limit, out.count))
            let rc = deflate(&stream, Z_FINISH)
            guard rc == Z_STREAM_END else { return nil }
            return Int(stream.total_out)
        }
    }

    /// Bytes put through whole-chunk deflates (past the sample), and the time they took: this level's speed on
    /// the data at hand.
    public private(set) var deflatedBytes: UInt64 = 0
    public private(set) var deflateNanos: UInt64 = 0

    /// Input bytes per second of whole-chunk deflates so far; nil before 1 MiB of them.
    public var speed: Double? {
        guard deflatedBytes >= 1 << 20, deflateNanos > 0 else { return nil }
        return Double(deflatedBytes) / (Double(deflateNanos) / 1e9)
    }

    /// The compressed form of `input` when it is at least 1/8 smaller, else nil. Large inputs are probed with a
    /// 4 KiB sample first so incompressible data (images, archives, weights) costs almost nothing.
    public func compress(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        guard input.count >= 256 else { return nil }
        if input.count > 16384 {
            let sample = UnsafeRawBufferPointer(rebasing: input[0..<4096])
            guard let n = deflateAll(sample, limit: 4096), n < 3584 else { return nil }
        }
        let limit = input.count - input.count / 8
        let started = monotonicNanos()
        let n = deflateAll(input, limit: limit)
        deflateNanos += monotonicNanos() - started
        deflatedBytes += UInt64(input.count)
        guard let n, n < limit else { return nil }
        return Array(output[0..<n])
    }
}

/// Decides per file whether compression is worth trying: a file whose type says its bytes are compressed or
/// floating point already (`CompressionHint`) is sent raw without probing, and after a few incompressible chunks
/// in a row (weights, images, archives of other names) so is the rest of a file.
public struct CompressionPolicy {
    private var streak = 0
    private var file: UInt32?
    private var hint = CompressionHint.probe

    public init() {}

    /// The file `op` is named `name` (its last path component): what its type says, until another file comes.
    /// Nothing changes when `op` is the current file already.
    public mutating func begin(op: UInt32, name: some BidirectionalCollection<UInt8>) {
        guard file != op else { return }
        file = op
        streak = 0
        hint = CompressionHint(name: name)
    }

    /// Compresses `chunk` of file `op` when that pays; nil means send it raw. `offset` is where the chunk starts
    /// in its file: the first chunk of a NumPy array says what it holds.
    public mutating func compress(_ chunk: UnsafeRawBufferPointer, op: UInt32, offset: UInt64 = 1,
                                  with compressor: ChunkCompressor) -> [UInt8]? {
        if file != op {
            file = op
            streak = 0
            hint = .probe
        }
        if hint == .numpy && offset == 0 { hint = CompressionHint(numpyHeader: chunk) }
        if hint == .raw { return nil }
        if streak >= 4 { return nil }
        if let packed = compressor.compress(chunk) {
            streak = 0
            return packed
        }
        streak += 1
        return nil
    }
}

/// What a file's type says about compressing it. zlib gains nothing on data that is compressed already (images,
/// video, audio, archives) and next to nothing on floating-point tensors (model weights, `.npy` of floats), so
/// those are sent raw without a probe. A hint only ever decides raw or not: the bytes that arrive are the same.
public enum CompressionHint: Equatable, Sendable {
    /// Try zlib (sampling large chunks first).
    case probe
    /// Send raw.
    case raw
    /// A NumPy array: raw when its header says the elements are floats, probed otherwise.
    case numpy

    private static let rawExtensions: Set<String> = [
        // images, video, audio
        "jpg", "jpeg", "png", "gif", "webp", "heic", "heif", "avif", "jp2", "jxl",
        "mp4", "m4v", "mkv", "mov", "avi", "webm", "mpg", "mpeg", "mp3", "m4a", "aac", "ogg", "oga", "opus", "flac",
        // archives and compressed streams
        "zip", "gz", "tgz", "bz2", "tbz2", "xz", "txz", "zst", "zstd", "lz4", "7z", "rar", "br", "npz", "whl", "jar",
        "parquet", "tfrecord",
        // model weights: floating-point tensors
        "pt", "pth", "safetensors", "ckpt", "onnx", "tflite", "gguf", "ggml", "mlmodel",
    ]

    /// The hint for a file named `name`, from its extension (case ignored).
    public init(name: some BidirectionalCollection<UInt8>) {
        guard let dot = name.lastIndex(of: UInt8(ascii: ".")), dot != name.startIndex else {
            self = .probe
            return
        }
        let ext = String(decoding: name[name.index(after: dot)...], as: UTF8.self).lowercased()
        if ext == "npy" { self = .numpy } else { self = Self.rawExtensions.contains(ext) ? .raw : .probe }
    }

    /// The hint for a NumPy array from the start of its file: raw for float and complex elements ('descr' of
    /// kind f or c), probe for the rest (integers, booleans, strings, objects) or when the header is not one.
    public init(numpyHeader bytes: UnsafeRawBufferPointer) {
        self = .probe
        let magic: [UInt8] = [0x93] + Array("NUMPY".utf8)
        guard bytes.count >= 16, bytes.prefix(6).elementsEqual(magic) else { return }
        let header = String(decoding: bytes[10..<min(bytes.count, 10 + 512)], as: UTF8.self)
        guard let descr = header.firstRange(of: "'descr':") else { return }
        let rest = header[descr.upperBound...].drop { $0 == " " || $0 == "'" || $0 == "\"" }
        // '<f4', '>f8', '|c16', 'f2' ...: a byte-order mark, then the kind.
        let kind = rest.drop { "<>|=".contains($0) }.first
        if kind == "f" || kind == "c" { self = .raw }
    }
}

/// Inflates chunk payloads into a buffer of the announced size, refusing anything that does not fit exactly.
public final class ChunkDecompressor {
    private var stream = z_stream()

    public init() {
        let rc = syncd_inflate_init_raw(&stream)
        precondition(rc == Z_OK, "inflateInit2 failed: \(rc)")
    }

    deinit { inflateEnd(&stream) }

    /// Inflates `input` to exactly `rawLength` bytes in `output` (which must hold that many).
    public func decompress(_ input: UnsafeRawBufferPointer, rawLength: Int, into output: UnsafeMutableRawBufferPointer) throws {
        precondition(output.count >= rawLength)
        inflateReset(&stream)
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(input.count)
        stream.next_out = output.baseAddress!.assumingMemoryBound(to: Bytef.self)
        stream.avail_out = uInt(rawLength)
        let rc = inflate(&stream, Z_FINISH)
        guard rc == Z_STREAM_END, Int(stream.total_out) == rawLength, stream.avail_in == 0 else {
            let why = rc == Z_BUF_ERROR ? "inflates to more than the announced \(rawLength) bytes or is cut short"
                : rc == Z_DATA_ERROR ? "is not valid deflate data" : "did not inflate cleanly (zlib \(rc))"
            throw ProtocolError("compressed chunk \(why)")
        }
    }
}
