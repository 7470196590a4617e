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
final class WatchListener: @unchecked Sendable {  // `state` guards done and failure
    private let link: AgentLink
    private let state = NSCondition()
    private var done = false
    private var failure: Error?

    init(link: AgentLink, changed: @escaping @Sendable ([RelativePath]) -> Void, ended: @escaping @Sendable () -> Void) {
        self.link = link
        let thread = Thread { [self] in
            var failed: Error?
            do { try link.listen(changed: changed) } catch { failed = error }
            state.lock()
            failure = failed
            done = true
            state.broadcast()
            state.unlock()
            ended()
        }
        thread.name = "watch"
        thread.start()
    }

    var finished: Bool {
        state.lock()
        defer { state.unlock() }
        return done
    }

    /// Ends the watch: the agent confirms, and only then may a session use the link. Returns why the link
    /// failed, if it did (it is aborted when the agent does not answer within 10 s).
    func stop() -> Error? {
        if !finished {
            do { try link.endWatch() } catch { link.abort() }
        }
        state.lock()
        defer { state.unlock() }
        let deadline = Date().addingTimeInterval(10)
        while !done && state.wait(until: deadline) {}
        if !done {
            link.abort()
            while !done { state.wait() }
            failure = failure ?? SyncError("the agent did not answer for 10 s")
        }
        return failure
    }
}
