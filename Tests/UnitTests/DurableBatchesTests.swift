import Glibc
import Placement
import SyncSystem
import Testing

/// `DurableBatches` on real files: when it syncs a batch with one syncfs, when a file gets an fsync of its own,
/// and that an answer is released only by a sync that started after its rename.
@Suite struct DurableBatchesTests {
    /// A fresh directory, its tree, its device and batches over it (the directory lives as long as `temp`).
    private func fixture(_ limits: DurableBatches<Int>.Limits = .init()) throws
        -> (temp: TempDir, tree: Tree, device: UInt64, batches: DurableBatches<Int>) {
        let temp = try TempDir()
        let tree = try Tree(rootPath: temp.path, create: false)
        return (temp, tree, try tree.root.stat().device, try DurableBatches<Int>(fileSystem: tree.root, limits: limits))
    }

    /// A file of `size` bytes named `name` in `dir`, open for writing.
    private func sealedFile(_ dir: FileDescriptor, _ name: String, size: Int) throws -> FileDescriptor {
        let file = try Tree.openFile(at: dir, name: Array(name.utf8), flags: O_RDWR | O_CREAT, shown: name)
        let bytes = [UInt8](repeating: 7, count: size)
        try bytes.withUnsafeBytes { try file.write($0, at: 0) }
        return file
    }

    /// Collects progress until `count` files are durable (bounded: every sync completes or the test fails).
    private func waitForDurable(_ batches: DurableBatches<Int>, _ count: Int) -> (durable: [UInt32], answers: [Int]) {
        var durable: [UInt32] = [], answers: [Int] = []
        for _ in 0..<1000 where durable.count < count {
            let progress = batches.wait()
            for d in progress.durable {
                #expect(d.error == 0)
                durable.append(d.op)
            }
            for a in progress.answers {
                #expect(a.error == 0)
                answers.append(a.answer)
            }
        }
        return (durable, answers)
    }

    @Test func smallFilesAreSyncedAsOneBatchAndRenamesRideOnTheNextSync() throws {
        let (temp, tree, device, batches) = try fixture()
        defer { batches.shutdown() }
        defer { withExtendedLifetime(temp) {} }

        for i in 0..<100 {
            try batches.add(op: UInt32(i), fd: try sealedFile(tree.root, "part\(i)", size: 200), size: 200, device: device)
        }
        // Below the batch's limits nothing is handed over until the owner would wait.
        #expect(batches.hasOpenBatch)
        #expect(batches.outstanding == 0)
        batches.closeBatch()
        let first = waitForDurable(batches, 100)
        #expect(Set(first.durable) == Set((0..<100).map(UInt32.init)))
        #expect(batches.batchesSynced == 1)
        #expect(batches.filesSyncedAlone == 0)

        // The owner renames them; their answers wait for a sync that started after the renames.
        for i in 0..<100 {
            try Tree.renameNoReplace(at: tree.root, from: Array("part\(i)".utf8), to: Array("file\(i)".utf8), shown: "file\(i)")
            batches.renamed(i, directory: (Array("".utf8), tree.root))
        }
        #expect(batches.waitingRenames == 100)
        for i in 100..<120 {
            try batches.add(op: UInt32(i), fd: try sealedFile(tree.root, "part\(i)", size: 200), size: 200, device: device)
        }
        batches.closeBatch()
        #expect(batches.waitingRenames == 0, "the next batch's sync carries the renames made before it")
        let second = waitForDurable(batches, 20)
        #expect(Set(second.answers) == Set(0..<100))
        #expect(batches.batchesSynced == 2)
    }

    @Test func aFewFilesAndLargeFilesAreFsyncedAlone() throws {
        let (temp, tree, device, batches) = try fixture()
        defer { batches.shutdown() }
        defer { withExtendedLifetime(temp) {} }

        // A large file is handed over at once, alone.
        let large = 5 << 20
        try batches.add(op: 1, fd: try sealedFile(tree.root, "large", size: large), size: UInt64(large), device: device)
        #expect(batches.outstanding == 1)
        #expect(!batches.hasOpenBatch)
        // So is a file on another device than the tree's (a mount inside the project).
        try batches.add(op: 2, fd: try sealedFile(tree.root, "elsewhere", size: 10), size: 10, device: device &+ 1)
        #expect(batches.outstanding == 2)
        // Three small files are too few for a syncfs: each gets an fsync once the batch closes.
        for i in 3...5 {
            try batches.add(op: UInt32(i), fd: try sealedFile(tree.root, "small\(i)", size: 10), size: 10, device: device)
        }
        batches.closeBatch()
        let done = waitForDurable(batches, 5)
        #expect(Set(done.durable) == [1, 2, 3, 4, 5])
        #expect(batches.filesSyncedAlone == 5)
        #expect(batches.batchesSynced == 0)

        // With no sync to carry them, renames are made durable by `flush` (a few directories: fsync each).
        batches.renamed(42, directory: (Array("".utf8), tree.root))
        let flushed = batches.flush()
        #expect(flushed.map(\.answer) == [42])
        #expect(flushed.allSatisfy { $0.error == 0 })
        #expect(batches.waitingRenames == 0)
    }

    @Test func aBatchIsHandedOverWhenItReachesItsLimits() throws {
        var limits = DurableBatches<Int>.Limits()
        limits.files = 50
        let (temp, tree, device, batches) = try fixture(limits)
        defer { batches.shutdown() }
        defer { withExtendedLifetime(temp) {} }
        for i in 0..<49 {
            try batches.add(op: UInt32(i), fd: try sealedFile(tree.root, "p\(i)", size: 10), size: 10, device: device)
        }
        #expect(batches.outstanding == 0)
        try batches.add(op: 49, fd: try sealedFile(tree.root, "p49", size: 10), size: 10, device: device)
        #expect(batches.outstanding == 1, "the 50th file closes the batch without waiting for the owner")
        #expect(!batches.hasOpenBatch)
        #expect(waitForDurable(batches, 50).durable.count == 50)
    }
}
