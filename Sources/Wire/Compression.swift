import CZlib
import Chunking

/// Per-chunk raw-deflate compression that gives up where it does not pay.
public final class ChunkCompressor {
    private var stream = z_stream()
    private var output: [UInt8]

    public init(level: Int32 = 1) {
        output = [UInt8](repeating: 0, count: Int(compressBound(UInt(ChunkParameters.largestMaxSize))) + 64)
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

    /// The compressed form of `input` when it is at least 1/8 smaller, else nil. Large inputs are probed with a
    /// 4 KiB sample first so incompressible data (images, archives, weights) costs almost nothing.
    public func compress(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        guard input.count >= 256 else { return nil }
        if input.count > 16384 {
            let sample = UnsafeRawBufferPointer(rebasing: input[0..<4096])
            guard let n = deflateAll(sample, limit: 4096), n < 3584 else { return nil }
        }
        let limit = input.count - input.count / 8
        guard let n = deflateAll(input, limit: limit), n < limit else { return nil }
        return Array(output[0..<n])
    }
}

/// Decides per file whether compression is worth trying: after a few incompressible chunks in a row
/// (weights, images, archives) the rest of the file is sent raw without probing.
public struct CompressionPolicy {
    private var streak = 0
    private var file: UInt32?

    public init() {}

    /// Compresses `chunk` of file `op` when that pays; nil means send it raw.
    public mutating func compress(_ chunk: UnsafeRawBufferPointer, op: UInt32, with compressor: ChunkCompressor) -> [UInt8]? {
        if file != op {
            file = op
            streak = 0
        }
        if streak >= 4 { return nil }
        if let packed = compressor.compress(chunk) {
            streak = 0
            return packed
        }
        streak += 1
        return nil
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
