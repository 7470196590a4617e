#if canImport(Glibc)
import Glibc
#endif
import Chunking
import CSystemShims
import SyncSystem

/// Why a file could not be assembled or placed.
public struct PlacementError: Error, CustomStringConvertible {
    public let path: String
    public let message: String
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }
    public var description: String { "\(path): \(message)" }
}

/// Builds one file from chunks in a temporary file beside its final path, named for the building session
/// (`BuildSession.partName(for:)`), then places it atomically: verify the whole-file digest, fchmod, futimens,
/// fsync, rename, fsync the directory. A temporary file left for the same path by an interrupted run of this
/// session, or taken over from a session that is gone, is reused: chunks already in it (checked against their
/// ids) are not fetched again.
///
/// A streamed file (`init(tree:streaming:permissions:session:)`) is built while its chunk list still grows:
/// `append` adds each part of the list as it comes, and `end` gives the size and digest once the sender knows them.
public final class FileAssembly {
    public let path: RelativePath
    public private(set) var digest: ChunkID
    public private(set) var size: UInt64
    /// The chunk list with offsets (so far, for a streamed file not yet ended).
    public private(set) var chunks: [ChunkRef] = []
    public private(set) var present: [Bool] = []
    public private(set) var missingCount = 0
    /// False while a streamed file's chunk list is still coming.
    public private(set) var ended: Bool
    /// Chunks found already written in a temporary file from an earlier, interrupted run.
    public private(set) var resumedCount = 0
    public let partName: String
    /// The device of the file system the temporary file is on.
    public private(set) var device: UInt64 = 0
    private let tree: Tree
    private var partFD: FileDescriptor?
    /// The size of the temporary file found from an earlier run (0 when it was made new): chunks within it are
    /// checked as they are listed.
    private var leftover: UInt64 = 0
    /// The first index of each chunk id, and for a first index the later ones with the same id: one write fills
    /// them all, so each id is asked for once. Keyed by the id's low half, with 4-byte indices (12 bytes a chunk
    /// rather than 24: a large file's list has hundreds of thousands); an id whose low half is another's of the
    /// same file (odds of 2^-64 a pair) is told apart by the list, and is then a chunk of its own (`firstOf`).
    private var firstIndex: [UInt64: UInt32] = [:]
    private var repeats: [Int: [Int]] = [:]
    /// Size of a buffer that holds any chunk of this file that is not a hole (at least one byte).
    private var largestChunk = 1

    /// The mode a new temporary file got when it was made (what `permissions` asked, less the umask); nil when it
    /// was found from an earlier run. `seal` skips the fchmod when this is already the mode wanted.
    private var createdMode: UInt32?
    private static let processUmask: UInt32 = {
        let mask = umask(0o022)
        umask(mask)
        return UInt32(mask)
    }()

    /// Opens (or resumes) the temporary file, made with `permissions` when new. Parent directories are created as
    /// needed, without following symlinks.
    public convenience init(tree: Tree, path: RelativePath, digest: ChunkID, size: UInt64, chunkList: [ChunkRef],
                            permissions: UInt32 = 0o600, session: BuildSession) throws {
        let total = chunkList.reduce(UInt64(0)) { $0 + UInt64($1.length) }
        guard total == size else {
            throw PlacementError(path: path.description, message: "chunk lengths add up to \(total) bytes, but the file is \(size)")
        }
        try self.init(tree: tree, path: path, permissions: permissions, session: session)
        try append(chunkList)
        try end(size: size, digest: digest)
    }

    /// A streamed file: its chunk list comes in parts (`append`), its size and digest at the end (`end`). Every
    /// chunk found in a temporary file left for the path is checked against its id as the list reaches it.
    public convenience init(tree: Tree, streaming path: RelativePath, permissions: UInt32 = 0o600, session: BuildSession) throws {
        try self.init(tree: tree, path: path, permissions: permissions, session: session)
    }

    private init(tree: Tree, path: RelativePath, permissions: UInt32, session: BuildSession) throws {
        self.tree = tree
        self.path = path
        partName = session.partName(for: path)
        digest = .empty
        size = 0
        ended = false
        // Listed before the temporary file exists, so that a kill leaves nothing a later session cannot find.
        try session.willBuild(in: path.parentBytes)
        guard let parent = try tree.openParent(path, create: true) else {
            throw PlacementError(path: path.description, message: "parent directory could not be made")
        }
        session.adoptLeftover(for: path, in: parent)
        let shown = displayPath(joinPath(path.parentBytes, Array(partName.utf8)))
        let mode = permissions & 0o777
        var made: FileDescriptor?
        do {
            made = try tree.withDescriptors {
                try Tree.openFile(at: parent, name: Array(partName.utf8), flags: O_RDWR | O_CREAT | O_EXCL, mode: mode_t(mode), shown: shown)
            }
        } catch let error as SystemError where error.errno == EEXIST {}
        let part: FileDescriptor
        let existing: FileStat
        if let made {
            // Made new, it is empty and on its directory's file system: nothing to stat.
            part = made
            createdMode = mode & ~Self.processUmask
            existing = FileStat(device: try tree.device(of: parent), inode: 0, kind: .regular, permissions: mode & ~Self.processUmask,
                                size: 0, mtimeNanos: 0, ctimeNanos: 0)
        } else {
            part = try tree.withDescriptors { try Tree.openFile(at: parent, name: Array(partName.utf8), flags: O_RDWR, shown: shown) }
            existing = try part.stat()
        }
        guard existing.kind == .regular else { throw PlacementError(path: shown, message: "temporary file is not a regular file") }
        device = existing.device
        leftover = existing.size
        extent = existing.size
        partFD = part
    }

    /// Adds chunks to the end of the list (their offsets follow from the lengths). Chunks a leftover temporary
    /// file holds already, repeats of chunks written before, and holes count as present; with `held`, so do the
    /// chunks copied from there (`fill(from:in:)`), which are then left out of the map of first indices: their
    /// repeats are copied from `held` too, and a large file that grew at its end is mostly such chunks. Returns
    /// the indices added.
    @discardableResult
    public func append(_ list: [ChunkRef], filling held: HeldChunks? = nil) throws -> Range<Int> {
        guard !ended else {
            throw PlacementError(path: path.description, message: "chunks listed after the end of the file's list")
        }
        let first = chunks.count
        var offset = chunks.last.map { $0.offset + UInt64($0.length) } ?? 0
        // The first part is taken as it is, not copied: the agent hands over what it listed while it did not yet
        // build the file (all of a large file that only grew at its end: 8 MiB of list for 16 GiB).
        if first == 0 { chunks = list } else { chunks.append(contentsOf: list) }
        for index in first..<chunks.count {
            let c = chunks[index]
            if c.offset != offset { chunks[index].offset = offset }
            offset += UInt64(c.length)
            // Holes are never sent: they are there already, as the file is never written at their offsets.
            present.append(c.id.isHole)
            if c.id.isHole { continue }
            largestChunk = max(largestChunk, Int(c.length))
            missingCount += 1
            if held == nil { noteFirst(index) }
        }
        let added = first..<chunks.count
        guard !added.isEmpty else { return added }
        let part = try openPart()
        if leftover > 0 {
            try detectResumedChunks(part, in: added)
            try clearHoles(part, in: added)
        }
        if let held {
            // What a leftover holds is mapped (its repeats are copied from the temporary file), and what is still
            // missing once `held` gave what it has.
            let resumed = Array(present[added])
            try fill(from: held, in: added)
            for i in added where !chunks[i].id.isHole && (!present[i] || resumed[i - first]) { noteFirst(i) }
        }
        try copyRepeats(part, in: added)
        feedHoles()
        return added
    }

    /// The end of a streamed file's list: its size and digest. A leftover temporary file longer than that is cut.
    public func end(size: UInt64, digest: ChunkID) throws {
        guard !ended else { throw PlacementError(path: path.description, message: "the chunk list ended twice") }
        let total = chunks.last.map { $0.offset + UInt64($0.length) } ?? 0
        guard total == size else {
            throw PlacementError(path: path.description, message: "chunk lengths add up to \(total) bytes, but the file is \(size)")
        }
        self.size = size
        self.digest = digest
        ended = true
        // Only a longer leftover needs cutting: the writes extend the file to its size (`seal` extends it over a
        // hole at the end).
        if extent > size {
            try openPart().truncate(size)
            extent = size
        }
    }

    /// The open temporary file, reopened (without following symlinks) after `suspend()`.
    private func openPart() throws -> FileDescriptor {
        if let partFD { return partFD }
        guard let parent = try tree.openParent(path, create: false) else {
            throw PlacementError(path: path.description, message: "parent directory vanished while the file was being built")
        }
        let part = try tree.withDescriptors { try Tree.openFile(at: parent, name: Array(partName.utf8), flags: O_RDWR, shown: partName) }
        partFD = part
        return part
    }

    /// True while the temporary file is held open.
    public var isOpen: Bool { partFD != nil }

    /// Marks the chunks of `range` that a leftover temporary file holds already (checked against their ids).
    private func detectResumedChunks(_ part: FileDescriptor, in range: Range<Int>) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: largestChunk, alignment: 16)
        defer { buffer.deallocate() }
        for i in range where !present[i] && chunks[i].offset + UInt64(chunks[i].length) <= leftover {
            let c = chunks[i]
            let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(c.length)])
            guard try part.read(into: view, at: c.offset) == Int(c.length) else { continue }
            if ChunkID(hashing: UnsafeRawBufferPointer(view)) == c.id {
                present[i] = true
                missingCount -= 1
                resumedCount += 1
            }
        }
    }

    /// A resumed temporary file may hold bytes where this file has holes (an earlier run cut elsewhere): they
    /// are made holes again, so the placed file reads as zeros there and takes no disk.
    private func clearHoles(_ part: FileDescriptor, in range: Range<Int>) throws {
        for c in chunks[range] where c.id.isHole && c.offset < leftover {
            let length = min(UInt64(c.length), leftover - c.offset)
            if Platform.punchHole(part.raw, offset: Int64(c.offset), length: Int64(length)) == 0 { continue }
            // No hole punching here: zeros, written, read the same.
            let zeros = [UInt8](repeating: 0, count: 1 << 20)
            var offset = c.offset
            while offset < c.offset + length {
                let n = Int(min(UInt64(zeros.count), c.offset + length - offset))
                try zeros.withUnsafeBytes { try part.write(UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: offset) }
                offset += UInt64(n)
            }
        }
    }

    /// Enters chunk `i` in the map of first indices, or among the repeats of the first with its id.
    private func noteFirst(_ i: Int) {
        let id = chunks[i].id
        if let earlier = firstIndex[id.low].map(Int.init) {
            if earlier != i && chunks[earlier].id == id { repeats[earlier, default: []].append(i) }
        } else if i <= Int(UInt32.max) {
            firstIndex[id.low] = UInt32(i)
        }
    }

    /// The first index of chunk `i`'s id in the list: `i` itself when it is the first, or when it is not in
    /// `firstIndex` (another id with its low half came first).
    private func firstOf(_ i: Int) -> Int {
        let id = chunks[i].id
        guard let first = firstIndex[id.low].map(Int.init), chunks[first].id == id else { return i }
        return first
    }

    /// Chunks of `range` that repeat one already in the temporary file (written for an earlier part of a
    /// streamed list, or found in a leftover) are copied from there.
    private func copyRepeats(_ part: FileDescriptor, in range: Range<Int>) throws {
        var buffer: UnsafeMutableRawBufferPointer?
        defer { buffer?.deallocate() }
        for i in range where !present[i] {
            let earlier = firstOf(i)
            guard earlier != i, present[earlier] else { continue }
            let c = chunks[earlier]
            if buffer == nil { buffer = .allocate(byteCount: largestChunk, alignment: 16) }
            let view = UnsafeMutableRawBufferPointer(rebasing: buffer![0..<Int(c.length)])
            guard try part.read(into: view, at: c.offset) == Int(c.length), ChunkID(hashing: UnsafeRawBufferPointer(view)) == c.id else {
                continue  // asked for again, through its first index
            }
            try writeVerified(index: i, bytes: UnsafeRawBufferPointer(view))
        }
    }

    /// Indices of chunks still missing, one per distinct chunk id: `write` fills the repeats of a chunk (a run
    /// of zeros, say) from the first, so each id is asked for once.
    public var missingIndices: [UInt32] { missingIndices(in: 0..<chunks.count) }

    /// `missingIndices` among the chunks of `range` (the part of a streamed list just appended). A chunk
    /// whose id came earlier in the file is not asked for: its first is (or was).
    public func missingIndices(in range: Range<Int>) -> [UInt32] {
        var out: [UInt32] = []
        for i in range where !present[i] {
            let first = firstOf(i)
            // A repeat whose first was found in a leftover, but which was not copied, is asked for anew.
            if first == i || present[first] { out.append(UInt32(i)) }
        }
        return out
    }

    /// Fills missing chunks from what this side already holds; returns how many were copied.
    @discardableResult
    public func fill(from held: HeldChunks) throws -> Int { try fill(from: held, in: 0..<chunks.count) }

    /// `fill(from:)` for the chunks of `range`.
    @discardableResult
    public func fill(from held: HeldChunks, in range: Range<Int>) throws -> Int {
        guard missingCount > 0 else { return 0 }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: largestChunk, alignment: 16)
        defer { buffer.deallocate() }
        var copied = 0
        // A repeat is filled with its first chunk.
        for i in range where !present[i] {
            let first = firstOf(i)
            guard first == i || present[first] else { continue }
            let c = chunks[i]
            if held.read(c.id, length: c.length, into: buffer) {
                try writeVerified(index: i, bytes: UnsafeRawBufferPointer(rebasing: buffer[0..<Int(c.length)]))
                copied += 1
            }
        }
        return copied
    }

    /// Writes chunk `index` after checking that `bytes` hash to its id.
    public func write(index: Int, bytes: UnsafeRawBufferPointer) throws {
        guard index >= 0, index < chunks.count else {
            throw PlacementError(path: path.description, message: "chunk index \(index) is out of range (file has \(chunks.count))")
        }
        let c = chunks[index]
        guard !c.id.isHole else {
            throw PlacementError(path: path.description, message: "chunk \(index) is a hole, which is never sent; refused")
        }
        guard bytes.count == Int(c.length) else {
            throw PlacementError(path: path.description, message: "chunk \(index) is \(bytes.count) bytes, expected \(c.length)")
        }
        guard ChunkID(hashing: bytes) == c.id else {
            throw PlacementError(path: path.description, message: "chunk \(index) does not match its id \(c.id.hex); refused")
        }
        if present[index] { return }
        try writeVerified(index: index, bytes: bytes)
    }

    /// Bytes written since writeback was last started; see `writeVerified`.
    private var unflushed = 0
    /// The temporary file's size as far as this object made it (what it found, then its writes).
    private var extent: UInt64 = 0

    /// The whole-file digest over chunks `0..<digested`, fed in order as they are written.
    private let digestState = StreamingDigest()
    private var digested = 0

    private func writeVerified(index: Int, bytes: UnsafeRawBufferPointer) throws {
        let part = try openPart()
        try part.write(bytes, at: chunks[index].offset)
        extent = max(extent, chunks[index].offset + UInt64(bytes.count))
        if index == digested {
            digestState.update(bytes)
            digested += 1
            feedHoles()
        }
        // Start writeback every 8 MiB so the fsync before the rename has little left to do.
        unflushed += bytes.count
        if unflushed >= 8 << 20 {
            part.startWriteback()
            unflushed = 0
        }
        if !present[index] {
            present[index] = true
            missingCount -= 1
        }
        // The same id may appear again later in the file.
        if let later = repeats[index] {
            for j in later where !present[j] { try writeVerified(index: j, bytes: bytes) }
        }
        // Chunks that came ahead of this one (over another stream, say) are read back while the page cache has
        // them, so the digest keeps up and `seal` has nothing left to read.
        if digested < chunks.count && present[digested] && !chunks[digested].id.isHole { try advanceDigest(part) }
    }

    /// Every chunk is in the temporary file, and (streamed) the list has ended.
    public var isComplete: Bool { ended && missingCount == 0 }

    /// Bytes the chunk list covers so far (all of the file once it `ended`).
    public var bytesListed: UInt64 { chunks.last.map { $0.offset + UInt64($0.length) } ?? 0 }

    /// Bytes of chunks still to be written (of those listed so far).
    public var bytesMissing: UInt64 {
        var total: UInt64 = 0
        for (i, c) in chunks.enumerated() where !present[i] { total += UInt64(c.length) }
        return total
    }

    /// Verifies the whole file against its digest, sets mode and mtime, makes it durable and renames it
    /// into place. `checkTarget` runs just before the rename with what is at the final path now; it throws
    /// to stop the placement (a conflicting change appeared meanwhile).
    public func place(permissions: UInt32, mtimeNanos: Int64, checkTarget: (FileStat?) throws -> Void) throws {
        let part = try seal(permissions: permissions, mtimeNanos: mtimeNanos, startWriteback: true)
        try part.sync()
        if let parent = try commit(checkTarget: checkTarget) { Tree.syncDirectory(parent) }
    }

    /// First half of a placement: checks the whole-file digest, sets mode and mtime, and with `startWriteback`
    /// starts writing it back (worth it for a file about to be fsynced alone; a batch synced with one `syncfs`
    /// is written back faster all at once). Returns the temporary file, which the caller makes durable before
    /// calling `commit`. A digest mismatch discards the temporary file.
    public func seal(permissions: UInt32, mtimeNanos: Int64, startWriteback: Bool) throws -> FileDescriptor {
        guard isComplete else {
            throw PlacementError(path: path.description, message: ended ? "cannot place: \(missingCount) chunks still missing"
                                                                        : "cannot place: the chunk list has not ended")
        }
        // Complete: no chunk is asked for or copied any more, so the map of first indices goes before the caller
        // encodes the record (each costs about 20 bytes a chunk of a large file).
        firstIndex = [:]
        repeats = [:]
        let part = try openPart()
        try advanceDigest(part)
        // A hole at the end is made by extending the file, not by writing.
        if extent < size {
            try part.truncate(size)
            extent = size
        }
        guard digested == chunks.count, digestState.finish() == digest else {
            discard()
            throw PlacementError(path: path.description, message: "assembled file does not match its digest \(digest.hex); discarded")
        }
        if createdMode != permissions & 0o777 { try part.setPermissions(permissions & 0o777) }
        try part.setModificationTime(mtimeNanos)
        // Writeback starts now, so the fsync that follows (on a worker thread) mostly waits for I/O in flight.
        if startWriteback { part.startWriteback() }
        return part
    }

    /// Second half of a placement, once the sealed file is durable: `checkTarget` sees what is at the final
    /// path now and throws to stop (a conflicting change appeared meanwhile); then the rename. Returns the
    /// parent directory, which the caller fsyncs (once for many files) to make the rename durable.
    ///
    /// With `expectingNothing` (nothing was at the final path when the file was started) the rename refuses to
    /// replace anything (RENAME_NOREPLACE), and `checkTarget` runs only if something appeared there meanwhile.
    public func commit(expectingNothing: Bool = false, checkTarget: (FileStat?) throws -> Void) throws -> FileDescriptor? {
        guard let parent = try tree.openDirectory(path.parentComponents, create: false) else {
            throw PlacementError(path: path.description, message: "parent directory vanished")
        }
        if expectingNothing {
            let rc = withCName(Array(partName.utf8)) { from in withCName(path.name) { Platform.renameNoReplace(in: parent.raw, from: from, to: $0) } }
            if rc == 0 {
                partFD?.close()
                partFD = nil
                return parent
            }
            // EEXIST: something appeared, which `checkTarget` sees below. EINVAL: a file system without the flag.
            guard errno == EEXIST || errno == EINVAL || errno == ENOSYS else {
                throw SystemError(call: "renameat2", path: path.description, errno: errno)
            }
        }
        try checkTarget(try Tree.lstat(at: parent, name: path.name, shown: path.description))
        try syscall("renameat", path: path.description) {
            withCName(Array(partName.utf8)) { from in withCName(path.name) { renameat(parent.raw, from, parent.raw, $0) } }
        }
        partFD?.close()
        partFD = nil
        return parent
    }

    /// Feeds the whole-file digest with the chunks present from the first one not yet fed, reading back
    /// those that were written out of order (or found in a resumed temporary file). Chunks that arrive in
    /// order are fed as they are written, so a file sent front to back is never read again.
    private func advanceDigest(_ part: FileDescriptor) throws {
        feedHoles()
        guard digested < chunks.count, present[digested] else { return }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: largestChunk, alignment: 16)
        defer { buffer.deallocate() }
        while digested < chunks.count && present[digested] {
            let c = chunks[digested]
            if c.id.isHole {
                feedHoles()
                continue
            }
            let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(c.length)])
            guard try part.read(into: view, at: c.offset) == Int(c.length) else {
                throw PlacementError(path: path.description, message: "temporary file is shorter than chunk \(digested) needs")
            }
            digestState.update(UnsafeRawBufferPointer(view))
            digested += 1
        }
    }

    /// Feeds the whole-file digest with the zeros of the holes that come next in order.
    private func feedHoles() {
        while digested < chunks.count && chunks[digested].id.isHole {
            digestState.updateZeros(UInt64(chunks[digested].length))
            digested += 1
        }
    }

    /// Closes the temporary file but keeps it, so a later run can resume from it.
    public func suspend() {
        partFD?.close()
        partFD = nil
    }

    /// Removes the temporary file.
    public func discard() {
        partFD?.close()
        partFD = nil
        if let parent = try? tree.openParent(path, create: false) {
            try? Tree.remove(at: parent, name: Array(partName.utf8), isDirectory: false, shown: partName)
        }
    }
}
