import Chunking
import Foundation
import SnapshotFormat
import SyncSystem
import Wire

/// Where the chunks of a push lie in the store, as the pushes to the hosts learn it: what the store held when the
/// push began, then each pack as its upload completes. A host's push sends a file once every chunk of it has a
/// place (or the upload is over), so the hosts read from the store while this machine is still uploading to it,
/// instead of after.
package final class StoreFeed: Sendable {
    let name: String
    let signingRegion: String
    private struct Known {
        var packs: [StorePack]
        var chunks: [ChunkID: StoreChunk]
        var complete: Bool
        var failure: String?

        func hasPlaces(for ids: [ChunkID]) -> Bool { complete || !ids.contains(where: { chunks[$0] == nil }) }
    }
    private let known: Locked<Known>

    /// A feed that starts with `source`; `complete` when nothing more will come (a restore, a test).
    package init(_ source: StoreSource, complete: Bool = false) {
        name = source.name
        signingRegion = source.signingRegion
        known = Locked(Known(packs: source.packs, chunks: source.chunks, complete: complete))
    }

    /// A pack whose upload completed, with its chunks.
    package func add(_ pack: StorePack, entries: [PackEntry]) {
        known.withLock { known in
            let number = UInt32(known.packs.count)
            known.packs.append(pack)
            for e in entries where known.chunks[e.id] == nil {
                known.chunks[e.id] = StoreChunk(e, pack: number)
            }
        }
    }

    /// Nothing more comes: the upload is over, or failed (`failure` says why).
    package func finish(failure: String? = nil) {
        known.withLock { known in
            known.complete = true
            known.failure = failure
        }
    }

    /// Waits until each of `ids` has a place, or nothing more will come; returns the places found (numbered by
    /// this feed's packs) and `pack`, which gives a pack by its number. Throws when the upload failed.
    func places(of ids: [ChunkID]) throws -> (places: [StoreChunk], pack: (UInt32) -> StorePack) {
        try known.withLock(when: { $0.hasPlaces(for: ids) }) { known in
            if let failure = known.failure { throw SyncError("the upload to the store failed: \(failure)") }
            let packs = known.packs
            return (ids.compactMap { known.chunks[$0] }, { packs[Int($0)] })
        }
    }

    /// Whether `places(of:)` would return at once.
    func isReady(for ids: [ChunkID]) -> Bool { known.withLock { $0.hasPlaces(for: ids) } }

}
