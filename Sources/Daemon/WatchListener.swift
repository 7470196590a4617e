import Builds
import Client
import Control
import Fleet
import Foundation
import Logging
import ProjectScan
import SyncConfig
import SyncSystem
import Watch

/// Reads the agent's reports during a watch, on a thread of its own.
final class WatchListener: Sendable {
    private let link: AgentLink
    /// How the watch ended: the agent confirmed its end, or the link failed.
    private let outcome = OneShot<Result<Void, Error>>()

    init(link: AgentLink, changed: @escaping @Sendable ([RelativePath]) -> Void, ended: @escaping @Sendable () -> Void) {
        self.link = link
        let listening = { [outcome] in
            outcome.set(Result { try link.listen(changed: changed) })
            ended()
        }
        do { try startDetachedThread(name: "watch", listening) } catch {
            outcome.set(.failure(error))
            ended()
        }
    }

    var finished: Bool { outcome.current != nil }

    /// Ends the watch: the agent confirms, and only then may a session use the link. Returns why the link
    /// failed, if it did (it is aborted when the agent does not answer within 10 s).
    func stop() -> Error? {
        if !finished {
            do { try link.endWatch() } catch { link.abort() }
        }
        if let ending = outcome.wait(until: monotonicNanos() + 10_000_000_000) {
            if case .failure(let error) = ending { return error }
            return nil
        }
        // Aborted, the link fails at once and the listening thread ends.
        link.abort()
        if case .failure(let error) = outcome.wait() { return error }
        return SyncError("the agent did not answer for 10 s")
    }
}
