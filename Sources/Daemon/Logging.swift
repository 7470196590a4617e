import Foundation
import Logging
import SyncSystem

/// The daemon's logger. Its handler (bootstrapped in main) writes to stderr: with journald's `<N>` priority
/// prefixes when stderr is the journal (`JOURNAL_STREAM` is set), as plain `syncd: text` lines otherwise.
let log = Logger(label: "syncd")

/// A swift-log handler for the daemon: stderr in the journal's format or a human one, plus the `LogBook`.
public struct DaemonLogHandler: LogHandler {
    public let label: String
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    static let toJournal = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var text = event.message.description
        let merged = event.metadata.map { metadata.merging($0) { $1 } } ?? metadata
        if !merged.isEmpty { text += " " + merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") }
        LogBook.write(priority: Self.journalPriority(event.level), level: event.level, text: text)
    }

    /// syslog priorities, as journald reads them from a `<N>` prefix.
    static func journalPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }
}

/// The last 1000 log lines, for `syncctl logs`, and the followers of `syncctl logs -f`, which get new lines as
/// they come.
enum LogBook {
    private static let book = Book()

    /// The kept lines, and (when `follow` is given) a token for `unfollow`; `follow` gets every later line.
    static func lines(follow: (@Sendable (String) -> Void)? = nil) -> (lines: [String], token: Int?) { book.lines(follow: follow) }

    static func unfollow(_ token: Int) { book.unfollow(token) }

    static func write(priority: Int, level: Logger.Level, text: String) { book.write(priority: priority, level: level, text: text) }

    private final class Book: @unchecked Sendable {  // `stamps` is used only inside `state`'s lock
        private struct State {
            var recent: [String] = []
            var followers: [Int: @Sendable (String) -> Void] = [:]
            var nextFollower = 0
        }
        private let state = Locked(State())
        private let stamps = ISO8601DateFormatter()

        func lines(follow: (@Sendable (String) -> Void)?) -> (lines: [String], token: Int?) {
            state.withLock { state in
                guard let follow else { return (state.recent, nil) }
                state.nextFollower += 1
                state.followers[state.nextFollower] = follow
                return (state.recent, state.nextFollower)
            }
        }

        func unfollow(_ token: Int) { state.withLock { $0.followers[token] = nil } }

        /// Writes `text` to stderr (journald's priority prefix under systemd) and keeps it for `logs`; lines of
        /// several threads do not interleave.
        func write(priority: Int, level: Logger.Level, text: String) {
            state.withLock { state in
                let stamp = stamps.string(from: Date())
                let marker = level >= .warning ? "\(level): " : ""
                for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
                    let shown = DaemonLogHandler.toJournal ? "<\(priority)>\(marker)\(line)\n" : "syncd: \(marker)\(line)\n"
                    FileHandle.standardError.write(Data(shown.utf8))
                    let kept = "\(stamp) \(marker)\(line)"
                    state.recent.append(kept)
                    if state.recent.count > 1000 { state.recent.removeFirst(state.recent.count - 1000) }
                    for follower in state.followers.values { follower(kept) }
                }
            }
        }
    }
}
