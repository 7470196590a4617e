import Testing
import Wire

@Suite struct CompressionHintTests {
    private func hint(_ name: String) -> CompressionHint { CompressionHint(name: Array(name.utf8)) }

    private func numpy(_ descr: String) -> CompressionHint {
        let dict = "{'descr': \(descr), 'fortran_order': False, 'shape': (3,), }      \n"
        let bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(dict.utf8.count), 0] + Array(dict.utf8)
        return bytes.withUnsafeBytes { CompressionHint(numpyHeader: $0) }
    }

    @Test func namesOfCompressedAndFloatingPointTypesGoRaw() {
        for name in ["photo.jpg", "PHOTO.JPEG", "clip.mp4", "a.tar.gz", "w.safetensors", "model.pt", "data.parquet", "x.npz"] {
            #expect(hint(name) == .raw, "\(name)")
        }
        for name in ["train.py", "log.csv", "weights.bin", "Makefile", ".jpg", "archive.", "notes.txt.bak"] {
            #expect(hint(name) == .probe, "\(name)")
        }
        #expect(hint("array.NPY") == .numpy)
    }

    @Test func aNumpyHeaderSaysWhetherItsElementsAreFloats() {
        #expect(numpy("'<f4'") == .raw)
        #expect(numpy("'>f8'") == .raw)
        #expect(numpy("'<c16'") == .raw)
        #expect(numpy("'f2'") == .raw)
        #expect(numpy("'<i8'") == .probe)
        #expect(numpy("'|b1'") == .probe)
        #expect(numpy("'<U10'") == .probe)
        // Not a NumPy file after all, or cut short: probed like any other.
        let garbage = Array("PK\u{3}\u{4} not numpy at all, just bytes".utf8)
        #expect(garbage.withUnsafeBytes { CompressionHint(numpyHeader: $0) } == .probe)
        #expect([UInt8]([0x93, 0x4e]).withUnsafeBytes { CompressionHint(numpyHeader: $0) } == .probe)
    }
}
