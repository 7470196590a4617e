import Chunking
import Foundation
import SnapshotFormat
import SyncConfig
import Testing

/// Inputs the fuzzers (Fuzz/Targets.swift) found that crashed or hung, replayed as the target fed them: each
/// must now be refused with an error.
struct FuzzRegressionTests {
    static func regressions(_ target: String) -> [[UInt8]] {
        var dir = #filePath
        for _ in 0..<3 { dir = String(dir[..<dir.lastIndex(of: "/")!]) }
        let path = dir + "/Fuzz/regressions/" + target
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.sorted().compactMap { FileManager.default.contents(atPath: path + "/" + $0).map(Array.init) }
    }

    /// A pack index entry whose offset plus length overflowed 64 bits trapped the decoder (found by fuzz-index in
    /// seconds): it lies outside the pack, and is refused.
    @Test func packIndexEntriesOutsideThePackAreRefused() throws {
        let found = Self.regressions("index")
        #expect(!found.isEmpty)
        for bytes in found {
            // Framed as the fuzz target frames it: sealed with its checksum, the pack named by the first 16 bytes.
            let pack = ChunkID(stored: bytes.prefix(16)) ?? ChunkID(low: 0, high: 0)
            #expect(throws: StoreError.self) {
                try PackIndex(decoding: PackIndex.sealed(PackIndex.magic + bytes), pack: pack, object: "index")
            }
        }
    }
}

/// A manifest announcing a body of 2^63 bytes or more trapped converting it to Int, and one announcing up to 2 GiB
/// had that much allocated before inflating (found by fuzz-manifest): both are refused.
struct FuzzManifestRegressionTests {
    @Test func announcedLengthsBeyondWhatDeflateCanReachAreRefused() throws {
        let found = FuzzRegressionTests.regressions("manifest")
        #expect(!found.isEmpty)
        var huge = Array("SYNCDMF1".utf8)
        for announced in [UInt64.max, 1 << 31] {
            huge = Array("SYNCDMF1".utf8)
            withUnsafeBytes(of: announced.littleEndian) { huge += $0 }
            huge += [0x78, 0x9C, 0x03, 0x00]
            for bytes in found + [huge] {
                #expect(throws: StoreError.self) { try SnapshotManifest(decoding: bytes, digest: ChunkID(hashing: bytes), object: "m") }
            }
        }
    }
}

/// YAML that Yams' own conversion trapped on, found by fuzz-config and fuzz-compose: a mapping key that is not a
/// string (within 30 s), and a base-60 integer that overflows (within 60 s).
struct FuzzYAMLRegressionTests {
    @Test func mappingKeysThatAreNotStringsAreRefused() throws {
        let found = FuzzRegressionTests.regressions("config") + FuzzRegressionTests.regressions("compose")
        #expect(found.count >= 2)
        // Each is answered (an error, or a value), never a trap.
        for bytes in found {
            let text = String(decoding: bytes, as: UTF8.self)
            _ = try? ProjectConfig.parse(text, file: "syncd.yaml", directoryName: "p")
            _ = try? ComposeFile.parse(text, file: "compose.yaml")
            _ = try? ProjectConfig.parse("name: \(text)\n", file: "syncd.yaml", directoryName: "p")
        }
        // A base-60 integer past Int (YAML 1.1 reads `1:30` as 90) trapped Yams; here it is text, and the setting
        // that wants a number says so.
        #expect(throws: ConfigError.self) {
            try ProjectConfig.parse("name: p\nremote: gpu\nchunk_min: 92999999999999999998:9\n", file: "syncd.yaml", directoryName: "p")
        }
        for text in ["? [a]\n: 1\n", "? {a: 1}\n: 2\n", "a: {? [x]: 1}\n"] {
            #expect(throws: ConfigError.self) { try ProjectConfig.parse(text, file: "syncd.yaml", directoryName: "p") }
        }
        // Merge keys still work, the mapping's own keys winning.
        let services = try ComposeFile.parse("x: &c {build: ., command: a}\nservices:\n  s: {<<: *c, command: b}\n", file: "compose.yaml")
        #expect(services.count == 1)
        // A file of brackets is refused before the parser recurses into it.
        #expect(throws: ConfigError.self) { try ProjectConfig.parse(String(repeating: "[", count: 100_000), file: "syncd.yaml", directoryName: "p") }
    }
}
