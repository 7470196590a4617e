import Chunking
import Placement
import Wire

/// Writes chunk data as it came off the wire into the file it belongs to: inflated first when it came compressed,
/// then checked against the file's chunk list (its index, length and id) by the assembly, and written. Both
/// directions receive files through it: the agent a push's files, the client a pull's.
public final class ChunkWriter {
    private let decompressor = ChunkDecompressor()
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: ChunkParameters.largestMaxSize, alignment: 16)

    public init() {}
    deinit { scratch.deallocate() }

    /// Writes chunk `index` of `assembly` from `payload` (`rawLength` bytes once inflated). A chunk that does not
    /// fit the file's list, that does not inflate to its length, or whose bytes are not its id is a protocol error
    /// of the sender, named with `shown`, the file; a file system error is thrown as it is.
    public func write(_ payload: UnsafeRawBufferPointer, compressed: Bool, rawLength: Int, index: Int, into assembly: FileAssembly,
                      shown: String) throws {
        guard index >= 0, index < assembly.chunks.count, Int(assembly.chunks[index].length) == rawLength else {
            throw ProtocolError("\(shown): chunk \(index) does not fit the file's chunk list")
        }
        do {
            if compressed {
                try decompressor.decompress(payload, rawLength: rawLength, into: scratch)
                try assembly.write(index: index, bytes: UnsafeRawBufferPointer(rebasing: scratch[0..<rawLength]))
            } else {
                guard payload.count == rawLength else { throw ProtocolError("\(shown): chunk \(index) length mismatch") }
                try assembly.write(index: index, bytes: payload)
            }
        } catch let error as PlacementError {
            throw ProtocolError("\(error)")
        }
    }
}
