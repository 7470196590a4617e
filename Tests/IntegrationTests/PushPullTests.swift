import Foundation
import Testing

func inode(_ path: String) -> UInt64 {
    var st = stat()
    return lstat(path, &st) == 0 ? UInt64(st.st_ino) : 0
}

@Suite(.serialized)
struct PushPullTests {
    @Test func roundTripGivesAnIdenticalTree() throws {
        let f = try SyncFixture()
        try f.write("src/train.py", "print('train')\n")
        try f.write("src/model/net.py", "class Net: pass\n")
        try f.write("scripts/run.sh", "#!/bin/sh\necho hi\n", in: nil)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: f.project + "/scripts/run.sh")
        try f.write("secret.key", randomBytes(100, seed: 1), mode: 0o600)
        try f.write("data/blob.bin", randomBytes(3_000_000, seed: 2))
        try f.write("data/zeros.bin", [UInt8](repeating: 0, count: 1_000_000))
        try f.write("empty.txt", [])
        try FileManager.default.createDirectory(atPath: f.project + "/logs/empty", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: f.project + "/latest.py", withDestinationPath: "src/train.py")
        try FileManager.default.createSymbolicLink(atPath: f.project + "/outside", withDestinationPath: "/etc/passwd")
        try f.write(".git/HEAD", "ref: refs/heads/main\n")
        try f.write("notes.swp", "editor junk")

        let r = try f.push()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("outside"), "a symlink out of the tree is reported")
        let (same, diff) = f.treesMatch(ignoring: [".git", "notes.swp", "outside"])
        #expect(same, "\(diff)")
        #expect(f.read(".git/HEAD", in: f.remoteProject) == nil)
        #expect(!FileManager.default.fileExists(atPath: f.remoteProject + "/outside"))
        let stats = try r.json()
        for key in ["files_scanned", "files_changed", "files_deleted", "bytes_logical", "chunks_total", "chunks_sent",
                    "bytes_sent", "bytes_received", "duration_ms", "conflicts"] {
            #expect(stats[key] != nil, "JSON has \(key)")
        }
        // The zeros file is three identical 256 KiB chunks and a shorter tail: two ids, 470 KB cross, not 1 MB. No
        // compression: a local remote is on this machine, where zlib would only cost time (compress: auto).
        #expect(try r.stats().bytesSent.asInt < 3_000_000 + 520_000, "\(r.stdout)")
        #expect(try r.stats().bytesSent.asInt > 3_000_000, "the random blob is not compressible, and not compressed")

        let again = try f.push()
        #expect(again.status == 0)
        #expect(try again.stats().filesChanged == 0)
        #expect(try again.stats().chunksSent == 0)
    }

    @Test func insertInLargeFileSendsFewChunks() throws {
        let f = try SyncFixture()
        var big = randomBytes(64 << 20, seed: 3)
        try f.write("data/big.bin", big)
        #expect(try f.push().status == 0)
        big.insert(contentsOf: Array("0123456789".utf8).flatMap { Array(repeating: $0, count: 10) }, at: 32 << 20)
        try f.write("data/big.bin", big)
        let r = try f.push()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try r.stats().chunksSent <= 3)
        #expect(try r.stats().chunksSent >= 1)
        #expect(try r.stats().bytesSent.asInt < 1_000_000)
        #expect(f.read("data/big.bin", in: f.remoteProject) == big ? true : false, "contents differ")
    }

    @Test func deletesMovesAndTypeChanges() throws {
        let f = try SyncFixture()
        for i in 0..<300 { try f.write("dataset/images/img\(i).png", randomBytes(4096 + i * 13, seed: UInt64(100 + i))) }
        try f.write("old.txt", "to be deleted")
        try f.write("gone/a.txt", "a")
        try f.write("swap", "I am a file")
        #expect(try f.push().status == 0)
        let inodesBefore = (0..<300).map { inode(f.remoteProject + "/dataset/images/img\($0).png") }

        try FileManager.default.moveItem(atPath: f.project + "/dataset/images", toPath: f.project + "/dataset/renamed")
        try FileManager.default.removeItem(atPath: f.project + "/old.txt")
        try FileManager.default.removeItem(atPath: f.project + "/gone")
        let r = try f.push()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try r.stats().chunksSent == 0, "moved files are built from chunks the remote holds")
        #expect(try r.stats().filesMoved == 300)
        let inodesAfter = (0..<300).map { inode(f.remoteProject + "/dataset/renamed/img\($0).png") }
        let kept = zip(inodesBefore, inodesAfter).filter { $0 == $1 && $0 != 0 }.count
        #expect(kept == 300, "moved files keep their inodes on the remote (renamed, not copied): \(kept) of 300")
        var (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")

        try FileManager.default.removeItem(atPath: f.project + "/swap")
        try f.write("swap/inner.txt", "now a directory")
        let toDirectory = try f.push()
        #expect(toDirectory.status == 0, "\(toDirectory.stderr)")
        (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")

        try FileManager.default.removeItem(atPath: f.project + "/swap")
        try f.write("swap", "a file again")
        let back = try f.push()
        #expect(back.status == 0, "\(back.stderr)")
        (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
    }

    @Test func replacedContentIsReusedFromTheAgentCache() throws {
        let f = try SyncFixture()
        let weights = randomBytes(3 << 20, seed: 31)
        try f.write("weights", weights)
        #expect(try f.push().status == 0)
        // A file turned into a directory holding the same bytes: the delete comes first, yet nothing is resent.
        try FileManager.default.removeItem(atPath: f.project + "/weights")
        try f.write("weights/model.bin", weights)
        let r = try f.push()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try r.stats().chunksSent == 0)
        #expect(f.read("weights/model.bin", in: f.remoteProject) == weights ? true : false, "contents differ")
        // An edit undone: the previous version comes back from the cache.
        let edited = randomBytes(2 << 20, seed: 32)
        try f.write("weights/model.bin", edited)
        #expect(try f.push().status == 0)
        try f.write("weights/model.bin", weights)
        let undo = try f.push()
        #expect(try undo.stats().chunksSent == 0)
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
    }

    @Test func pushConflictKeepsTheRemoteEditAndGoesOn() throws {
        let f = try SyncFixture()
        try f.write("config.py", "lr = 0.1\n")
        try f.write("keep.py", "x = 1\n")
        try f.write("other.py", "y = 1\n")
        #expect(try f.push().status == 0)

        try f.write("config.py", "lr = 0.5  # tuned on the GPU box\n", in: f.remoteProject)
        try f.write("keep.py", "x = 2  # remote\n", in: f.remoteProject)
        try f.write("config.py", "lr = 0.01\n")
        try FileManager.default.removeItem(atPath: f.project + "/keep.py")
        try f.write("other.py", "y = 2\n")
        let r = try f.push()
        #expect(r.status == 3, "\(r.stderr)")
        #expect(try r.count("conflicts") == 2)
        #expect(r.stderr.contains("config.py"))
        #expect(f.read("config.py", in: f.remoteProject) == Array("lr = 0.5  # tuned on the GPU box\n".utf8))
        #expect(f.read("keep.py", in: f.remoteProject) == Array("x = 2  # remote\n".utf8))
        #expect(f.read("other.py", in: f.remoteProject) == Array("y = 2\n".utf8), "the rest of the push went on")
        // Still a conflict on the next push: nothing is silently overwritten later.
        #expect(try f.push().status == 3)
    }

    @Test func pullBringsCheckpointsBackAndDedups() throws {
        let f = try SyncFixture()
        try f.write("train.py", "print(1)\n")
        #expect(try f.push().status == 0)
        let first = randomBytes(8 << 20, seed: 9)
        try f.write("checkpoint/epoch1.pt", first, in: f.remoteProject)
        try f.write("output/metrics.csv", "epoch,loss\n1,0.5\n", in: f.remoteProject)
        try FileManager.default.createDirectory(atPath: f.remoteProject + "/output/empty", withIntermediateDirectories: true)
        try f.age("checkpoint/epoch1.pt")
        try f.age("output/metrics.csv")
        let r = try f.pull()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(f.read("checkpoint/epoch1.pt") == first ? true : false, "contents differ")
        #expect(FileManager.default.fileExists(atPath: f.project + "/output/empty"))

        // A second checkpoint sharing ~90% of the first: only the new part travels.
        var second = first
        second.replaceSubrange((7 << 20)..<(8 << 20), with: randomBytes(1 << 20, seed: 10))
        try f.write("checkpoint/epoch2.pt", second, in: f.remoteProject)
        try f.age("checkpoint/epoch2.pt")
        let r2 = try f.pull()
        #expect(r2.status == 0, "\(r2.stderr)")
        #expect(f.read("checkpoint/epoch2.pt") == second ? true : false, "contents differ")
        let sent = try r2.stats().chunksSent, total = try r2.stats().chunksTotal
        #expect(sent * 4 < total, "sent \(sent) of \(total) chunks")
        #expect(try r2.stats().bytesReceived.asInt < 2_000_000)

        // Pull paths are not pushed back.
        let p = try f.push()
        #expect(try p.stats().filesChanged == 0)
    }

    @Test func pullSkipsFilesBeingWritten() throws {
        let f = try SyncFixture()
        try f.write("a.py", "1")
        #expect(try f.push().status == 0)
        try f.write("output/fresh.log", "still writing", in: f.remoteProject)
        try f.write("output/open.bin", randomBytes(10000, seed: 4), in: f.remoteProject)
        try f.age("output/open.bin")
        // Opened close-on-exec: a process a parallel test spawns meanwhile must not keep it open for writing.
        let fd = open(f.remoteProject + "/output/open.bin", O_WRONLY | O_CLOEXEC)
        #expect(fd >= 0)
        let writer = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        defer { try? writer.close() }
        let r = try f.pull()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: f.project + "/output/fresh.log"))
        #expect(!FileManager.default.fileExists(atPath: f.project + "/output/open.bin"))
        let skipped = (try r.json()["skipped"] as? [String]) ?? []
        #expect(skipped.contains { $0.hasPrefix("output/fresh.log") })
        #expect(skipped.contains { $0.hasPrefix("output/open.bin") && $0.contains("open for writing") })
        try writer.close()
        try f.age("output/fresh.log")
        let later = try f.pull()
        #expect(later.status == 0)
        #expect(f.read("output/fresh.log") == Array("still writing".utf8))
        #expect(f.read("output/open.bin") != nil)
    }

    @Test func pullConflictKeepsTheLocalEdit() throws {
        let f = try SyncFixture()
        try f.write("output/result.txt", "v1", in: f.remoteProject)
        try f.age("output/result.txt")
        #expect(try f.pull().status == 0)
        try f.write("output/result.txt", "my local notes")
        try f.write("output/result.txt", "v2", in: f.remoteProject)
        try f.age("output/result.txt")
        let r = try f.pull()
        #expect(r.status == 3)
        #expect(f.read("output/result.txt") == Array("my local notes".utf8))
        #expect(f.read("output/result.txt", in: f.remoteProject) == Array("v2".utf8))
        // Remote deletion of an unchanged pulled file is applied locally.
        try f.write("output/tmp.txt", "t", in: f.remoteProject)
        try f.age("output/tmp.txt")
        _ = try f.pull()
        #expect(f.read("output/tmp.txt") != nil)
        try FileManager.default.removeItem(atPath: f.remoteProject + "/output/tmp.txt")
        _ = try f.pull()
        #expect(f.read("output/tmp.txt") == nil)
    }

    @Test func wipedRemoteIsRefilledAndPulledFilesSurvive() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a = 1\n")
        try f.write("data/blob.bin", randomBytes(300_000, seed: 21))
        #expect(try f.push().status == 0)
        try f.write("output/result.txt", "trained", in: f.remoteProject)
        try f.age("output/result.txt")
        #expect(try f.pull().status == 0)
        #expect(f.read("output/result.txt") == Array("trained".utf8))

        // The remote project is wiped (a new machine, rm -rf): a pull must not take that as "delete everything".
        try FileManager.default.removeItem(atPath: f.remoteProject)
        let pull = try f.pull()
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(f.read("output/result.txt") == Array("trained".utf8), "a pulled file survives a wiped remote")
        #expect(((try pull.json()["warnings"] as? [String]) ?? []).contains { $0.contains("wiped or replaced") })

        // And the push that follows sends everything again (the two files and syncd.yaml), instead of trusting
        // what it remembers.
        try FileManager.default.removeItem(atPath: f.remoteProject)
        let push = try f.push()
        #expect(push.status == 0, "\(push.stderr)")
        #expect(try push.stats().filesChanged == 3, "\(push.stdout)")
        #expect(((try push.json()["warnings"] as? [String]) ?? []).contains { $0.contains("wiped or replaced") })
        #expect(f.read("src/a.py", in: f.remoteProject) == Array("a = 1\n".utf8))
        #expect(f.read("data/blob.bin", in: f.remoteProject) == randomBytes(300_000, seed: 21) ? true : false)
        let again = try f.push()
        #expect(try again.stats().filesChanged == 0)

        // A replaced remote (another copy, new instance) that still holds a file deleted here since the last push:
        // the delete came from the old remote's snapshot, so it is not applied to the new one.
        try FileManager.default.removeItem(atPath: f.project + "/src/a.py")
        try FileManager.default.removeItem(atPath: f.remoteProject + "/.syncd")
        let replaced = try f.push()
        #expect(replaced.status == 0, "\(replaced.stderr)")
        #expect(f.read("src/a.py", in: f.remoteProject) == Array("a = 1\n".utf8), "nothing is deleted on the word of a stale snapshot")
        #expect(try replaced.stats().filesDeleted == 0)
    }

    @Test func identicalFilesInOneDirectoryAreAllPlaced() throws {
        // Copies of one content in one directory are built side by side, each in its own temporary file.
        let f = try SyncFixture()
        let same = randomBytes(200_000, seed: 31)
        for i in 0..<40 { try f.write("pkg/copy\(i).bin", same) }
        for i in 0..<40 { try f.write("pkg/__init__\(i).py", []) }
        let r = try f.push()
        #expect(r.status == 0, "\(r.stderr)")
        let (same2, diff) = f.treesMatch()
        #expect(same2, "\(diff)")
        let leftovers = (try FileManager.default.contentsOfDirectory(atPath: f.remoteProject + "/pkg")).filter { $0.contains(".syncd-part.") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func compressionFollowsTheSetting() throws {
        let f = try SyncFixture()
        let csv = Array((0..<60_000).map { "\($0),\(Double($0) * 0.001),\($0 % 7)\n" }.joined().utf8)
        try f.write("data/log.csv", csv)
        let auto = try f.push()
        #expect(auto.status == 0, "\(auto.stderr)")
        #expect(try auto.stats().bytesSent.asInt > csv.count, "auto: not compressed to a local remote")

        try f.addSetting("compress: always")
        try f.write("data/log2.csv", csv.reversed())
        let always = try f.push()
        #expect(always.status == 0, "\(always.stderr)")
        #expect(try always.stats().bytesSent.asInt < csv.count / 2, "always: the CSV is compressed")
        #expect(f.read("data/log2.csv", in: f.remoteProject) == csv.reversed() ? true : false, "contents differ")

        // Pulls follow the same setting: the agent compresses what it sends.
        try f.write("output/metrics.csv", csv, in: f.remoteProject)
        try f.age("output/metrics.csv")
        let pull = try f.pull()
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(try pull.stats().bytesReceived.asInt < csv.count / 2)
        #expect(f.read("output/metrics.csv") == csv ? true : false, "contents differ")

        let config = f.project + "/syncd.yaml"
        try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(of: "compress: always", with: "compress: sometimes")
            .write(toFile: config, atomically: true, encoding: .utf8)
        let bad = try f.push()
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("'compress' must be auto, always or never"), "\(bad.stderr)")
    }

    /// The start of a NumPy .npy file (format 1.0) holding `count` elements of `descr`, the header padded to 64.
    static func npyHeader(descr: String, count: Int) -> [UInt8] {
        var dict = "{'descr': '\(descr)', 'fortran_order': False, 'shape': (\(count),), }"
        while (10 + dict.utf8.count + 1) % 64 != 0 { dict += " " }
        dict += "\n"
        let length = UInt16(dict.utf8.count)
        return [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(length & 0xff), UInt8(length >> 8)] + Array(dict.utf8)
    }

    /// Files whose type says they are compressed or floating point already go raw, without a zlib probe, even
    /// when (as here) they would compress: the hint changes what crosses the link, never what arrives.
    @Test func fileTypeHintsSendRawAndNeverChangeTheBytes() throws {
        let f = try SyncFixture()
        try f.addSetting("compress: always")
        #expect(try f.push().status == 0)
        // Compressible, and different in every file (a chunk two files share is sent once).
        func text(_ k: Int) -> [UInt8] { Array((0..<40_000).map { "\($0 + k * 1_000_000),\($0 % 13),loss\n" }.joined().utf8) }
        let floats = Self.npyHeader(descr: "<f4", count: 250_000) + text(4)
        let hinted = ["data/frames/a.JPG": text(1), "models/w.safetensors": text(2), "models/m.pt": text(3), "data/x.npy": floats]
        for (path, bytes) in hinted { try f.write(path, bytes) }
        let raw = try f.push()
        #expect(raw.status == 0, "\(raw.stderr)")
        let hintedBytes = hinted.values.reduce(0) { $0 + $1.count }
        let sentRaw = try raw.stats().bytesSent.asInt
        #expect(sentRaw >= hintedBytes, "sent \(sentRaw) bytes for \(hintedBytes) of hinted files")

        // The same kind of content named as text, or as a NumPy array of integers, is compressed.
        let probed = ["data/y.npy": Self.npyHeader(descr: "<i8", count: 100_000) + text(5), "data/log.csv": text(6)]
        for (path, bytes) in probed { try f.write(path, bytes) }
        let compressed = try f.push()
        #expect(compressed.status == 0, "\(compressed.stderr)")
        #expect(try compressed.stats().bytesSent.asInt < probed.values.reduce(0) { $0 + $1.count } / 2)

        for (path, bytes) in hinted.merging(probed, uniquingKeysWith: { a, _ in a }) {
            #expect(f.read(path, in: f.remoteProject) == bytes, "\(path) differs on the remote")
        }
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
    }

    @Test func dataSentUnaskedForFilesTheRemoteHasIsDropped() throws {
        // Small files go with their data. With the local state lost, the client does not know the remote holds
        // them: the agent finds them unchanged and drops the data that came unasked, then the session goes on.
        let f = try SyncFixture()
        for i in 0..<20 { try f.write("src/m\(i).py", "value = \(i)\n") }
        #expect(try f.push().status == 0)
        try FileManager.default.removeItem(atPath: f.state)
        try f.write("src/new.py", "fresh = True\n")
        let r = try f.push()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try r.count("conflicts") == 0)
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
        #expect(try f.push().stats().filesChanged == 0)
    }

    @Test func filesOnBothSidesOfTheUnaskedLimitArriveWhole() throws {
        // Files of up to 256 KiB go with their data, sent from the bytes the hasher read; larger ones are read
        // again when the agent asks. Sizes on both sides of each limit (64 KiB, 256 KiB, the largest chunk)
        // arrive byte for byte, and so does an edit of each: the new bytes, never the ones read before.
        let f = try SyncFixture()
        let sizes = [1, 16_383, 65_536, 65_537, 200_000, 262_144, 262_145, 600_000]
        var contents = sizes.enumerated().map { randomBytes($1, seed: UInt64(100 + $0)) }
        for (i, bytes) in contents.enumerated() { try f.write("data/f\(i).bin", bytes) }
        let first = try f.push()
        #expect(first.status == 0, "\(first.stderr)")
        var (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
        for i in contents.indices {
            contents[i][contents[i].count / 2] ^= 0xFF
            try f.write("data/f\(i).bin", contents[i])
        }
        let edit = try f.push()
        #expect(edit.status == 0, "\(edit.stderr)")
        #expect(try edit.stats().filesChanged == sizes.count)
        (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
        for (i, bytes) in contents.enumerated() { #expect(f.read("data/f\(i).bin", in: f.remoteProject) == bytes, "f\(i).bin differs") }
    }

    @Test func cliErrorsNameWhatIsWrong() throws {
        let f = try SyncFixture()
        try f.write("syncd.yaml", "remote: local:/tmp/x\npul: [output]\n")
        let r = try f.push()
        #expect(r.status == 2)
        #expect(r.stderr.contains("pul"))
        #expect(r.stderr.contains("syncd.yaml"))
        let usage = try f.syncctl(["push", "--no-such-flag"])
        #expect(usage.status == 2)
        let missing = try f.syncctl(["push", f.base + "/nowhere"])
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("nowhere"))
    }

    @Test func lsAndChunksCommands() throws {
        let f = try SyncFixture()
        try f.write(".syncignore", "*.tmp\ndata/**\n!data/keep.csv\n")
        try f.write("a.tmp", "x")
        try f.write("src/m.py", "x")
        try f.write("data/big.bin", "x")
        try f.write("data/keep.csv", "x")
        try f.write("output/o.txt", "x")
        let r = try f.syncctl(["ls", f.project])
        #expect(r.status == 0)
        let lines = Set(r.stdout.split(separator: "\n").map(String.init))
        #expect(lines.contains("src/m.py"))
        #expect(lines.contains("data/keep.csv"))
        #expect(!lines.contains("a.tmp"))
        #expect(!lines.contains("data/big.bin"))
        #expect(!lines.contains("output/o.txt"), "pull paths are not pushed")

        var image = #filePath
        for _ in 0..<3 { image = (image as NSString).deletingLastPathComponent }
        image += "/../shared/testdata/SekienAkashita.jpg"
        let c = try f.syncctl(["chunks", image, "--min", "4096", "--avg", "16384", "--max", "65535", "--json"])
        #expect(c.status == 0, "\(c.stderr)")
        let chunks = (try c.json()["chunks"] as? [[String: Any]]) ?? []
        #expect(chunks.compactMap { $0["length"] as? Int } == [21325, 17140, 28084, 18217, 24700])
        #expect(chunks.compactMap { $0["offset"] as? Int } == [0, 21325, 38465, 66549, 84766])
    }
}
