import Chunking
import Foundation
import SnapshotFormat
import Wire

/// Where the chunks of a push lie in the store, as the pushes to the hosts learn it: what the store held when the
/// push began, then each pack as its upload completes. A host's push sends a file once every chunk of it has a
/// place (or the upload is over), so the hosts read from the store while this machine is still uploading to it,
/// instead of after.
package final class StoreFeed: @unchecked Sendable {
    let name: String
    let signingRegion: String
    // `condition` guards the fields below.
    private let condition = NSCondition()
    private var packs: [StorePack]
    private var chunks: [ChunkID: StoreChunk]
    private var complete = false
    private var failure: String?

    /// A feed that starts with `source`; `complete` when nothing more will come (a restore, a test).
    package init(_ source: StoreSource, complete: Bool = false) {
        name = source.name
        signingRegion = source.signingRegion
        packs = source.packs
        chunks = source.chunks
        self.complete = complete
    }

    /// A pack whose upload completed, with its chunks.
    package func add(_ pack: StorePack, entries: [PackEntry]) {
        condition.lock()
        let number = UInt32(packs.count)
        packs.append(pack)
        for e in entries where chunks[e.id] == nil {
            chunks[e.id] = StoreChunk(e, pack: number)
        }
        condition.broadcast()
        condition.unlock()
    }

    /// Nothing more comes: the upload is over, or failed (`failure` says why).
    package func finish(failure: String? = nil) {
        condition.lock()
        complete = true
        self.failure = failure
        condition.broadcast()
        condition.unlock()
    }

    /// Waits until each of `ids` has a place, or nothing more will come; returns the packs from number `from` on
    /// and the places found. Throws when the upload failed.
    func places(of ids: [ChunkID], packsFrom from: Int) throws -> (packs: ArraySlice<StorePack>, places: [StoreChunk]) {
        condition.lock()
        defer { condition.unlock() }
        while !complete && ids.contains(where: { chunks[$0] == nil }) { condition.wait() }
        if let failure { throw SyncError("the upload to the store failed: \(failure)") }
        return (packs[min(from, packs.count)...], ids.compactMap { chunks[$0] })
    }

    /// Whether `places(of:)` would return at once.
    func isReady(for ids: [ChunkID]) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return complete || !ids.contains(where: { chunks[$0] == nil })
    }

    /// The packs known so far, from number `from` on.
    func packs(from: Int) -> ArraySlice<StorePack> {
        condition.lock()
        defer { condition.unlock() }
        return packs[min(from, packs.count)...]
    }
}
