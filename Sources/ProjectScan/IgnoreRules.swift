import SyncSystem

/// A bad line in an ignore file or setting.
public struct IgnoreRuleError: Error, CustomStringConvertible {
    public let source: String
    public let line: Int
    public let message: String
    public var description: String { "\(source):\(line): \(message)" }
}

/// The losing copies of resolved conflicts (`NAME.sync-conflict-<stamp>.EXT`), which are never synced.
public let conflictCopyPattern = "**/*.sync-conflict-*"

/// Ignore rules with `.dockerignore` semantics (moby/patternmatcher): `*`, `?`, `[...]`, `**`, `!` exceptions,
/// last match wins, and a path is excluded when it or any of its parents matches.
public struct IgnoreRules: Sendable {
    /// The patterns in order, after cleaning.
    public private(set) var patterns: [IgnorePattern] = []
    /// Where each pattern was written ("FILE:LINE", or the setting), in the same order.
    private var origins: [String] = []
    /// True when some pattern re-includes (`!`).
    private var ownExceptions = false
    /// git's rules (`gitignore: true`), applied after these: a path either excludes is left out, unless `include:`
    /// brings back one git alone excludes.
    public private(set) var git: GitIgnore?
    /// `include:` patterns with where each was written: paths that travel although git's rules exclude them.
    private var includes: [(pattern: IgnorePattern, origin: String)] = []

    /// True when something can bring back a path below an excluded directory (a `!` pattern, or `include:` over
    /// git's rules): then an excluded directory must still be walked, and its parents matched.
    public var hasExceptions: Bool { ownExceptions || (git != nil && !includes.isEmpty) }

    public init() {}

    /// Adds git's rules, with `include:` patterns that override them.
    public mutating func add(git: GitIgnore, includes patterns: [(text: String, origin: String)]) throws {
        self.git = git
        for item in patterns {
            var text = cleanPath(item.text.trimmingSpace())
            if text.count > 1 && text.hasPrefix("/") { text.removeFirst() }
            do {
                includes.append((try IgnorePattern(text, exclusion: false), item.origin))
            } catch let error as IgnorePattern.SyntaxError {
                throw IgnoreRuleError(source: item.origin, line: 0, message: "bad pattern '\(item.text)': \(error.message)")
            }
        }
    }

    /// Rules that syncd always starts from: VCS metadata and editor temp files.
    public static let defaultPatterns = [
        ".git", "**/.git", "**/.hg", "**/.svn", "**/*.swp", "**/*.swo", "**/*~", "**/.#*", "**/#*#",
        "**/.DS_Store", "**/4913", conflictCopyPattern,
    ]

    /// Adds the lines of an ignore file (`.syncignore`, `.dockerignore`): comments are lines starting with '#',
    /// surrounding space is trimmed, each pattern is cleaned and a leading '/' dropped.
    public mutating func add(fileContents: String, source: String) throws {
        var lineNumber = 0
        var text = fileContents
        if text.hasPrefix("\u{FEFF}") { text.removeFirst() }
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = String(rawLine)
            if line.hasSuffix("\r") { line.removeLast() }
            if line.hasPrefix("#") { continue }
            line = line.trimmingSpace()
            if line.isEmpty { continue }
            var invert = false
            if line.hasPrefix("!") {
                invert = true
                line = String(line.dropFirst()).trimmingSpace()
            }
            if !line.isEmpty {
                line = cleanPath(line)
                if line.count > 1 && line.hasPrefix("/") { line.removeFirst() }
            }
            try add(pattern: (invert ? "!" : "") + line, source: source, line: lineNumber)
        }
    }

    /// Adds one pattern as written in a setting (the config's `ignore:` list); cleaned the same way as file lines.
    public mutating func add(pattern raw: String, source: String, line: Int) throws {
        var text = raw.trimmingSpace()
        if text.isEmpty { return }
        var exclusion = false
        if text.hasPrefix("!") {
            exclusion = true
            text = String(text.dropFirst()).trimmingSpace()
            if text.isEmpty { throw IgnoreRuleError(source: source, line: line, message: "illegal exclusion pattern \"!\"") }
        }
        text = cleanPath(text)
        if text.count > 1 && text.hasPrefix("/") { text.removeFirst() }
        do {
            patterns.append(try IgnorePattern(text, exclusion: exclusion))
            origins.append(line == 0 || source.hasSuffix("]") ? source : "\(source):\(line)")
        } catch let error as IgnorePattern.SyntaxError {
            throw IgnoreRuleError(source: source, line: line, message: "bad pattern '\(raw)': \(error.message)")
        }
        if exclusion { ownExceptions = true }
    }

    /// True when `path` (slash separated, relative) is excluded: the last pattern that matches it or one of
    /// its parent directories decides.
    public func isExcluded(_ path: String) -> Bool { isExcluded(Array(path.utf8)) }

    /// True when `path` (slash-separated bytes) is excluded; see `isExcluded(_: String)`. Not knowing whether it
    /// is a directory, git's directory-only patterns (`build/`) match only the directories above it.
    public func isExcluded(_ bytes: [UInt8], isDirectory: Bool = false) -> Bool {
        isExcluded(bytes, isDirectory: isDirectory, parentsChecked: false)
    }

    /// With `parentsChecked` the caller knows that no directory above `bytes` is excluded (a walk does not go
    /// into one) and that there are no exceptions: only the path itself is matched then, not each of its parents.
    public func isExcluded(_ bytes: [UInt8], isDirectory: Bool = false, parentsChecked: Bool) -> Bool {
        if ownDecision(bytes, parentsChecked: parentsChecked)?.excluded == true { return true }
        guard let git else { return false }
        // Below a directory brought back by `include:`, git's rules may still ignore the path: its parents count.
        guard git.isIgnored(bytes, isDirectory: isDirectory, parentsChecked: parentsChecked && !hasExceptions) else { return false }
        return included(bytes) == nil
    }

    /// False when nothing below the excluded directory `bytes` can be brought back, so a walk may pass it by.
    public func mayBringBack(below bytes: [UInt8]) -> Bool {
        // syncd's own `!` can bring back what its own patterns exclude, never what git's do: only `include:` can.
        if ownDecision(bytes, parentsChecked: false)?.excluded == true { return ownExceptions }
        guard git != nil else { return ownExceptions }
        let components = bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        return includes.contains { include in
            // The pattern's leading components without wildcards must agree with the directory's.
            for (i, part) in include.pattern.text.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).enumerated() {
                if part.contains(where: { "*?[\\".utf8.contains($0) }) || i >= components.count { return true }
                if !part.elementsEqual(components[i]) { return false }
            }
            return true
        }
    }

    /// The last of syncd's own patterns matching `bytes` or a directory above it, and whether it excludes.
    private func ownDecision(_ bytes: [UInt8], parentsChecked: Bool) -> (excluded: Bool, index: Int, directory: Int?)? {
        if parentsChecked && !ownExceptions {
            for index in patterns.indices where patterns[index].matches(bytes[...]) { return (true, index, nil) }
            return nil
        }
        var decision: (excluded: Bool, index: Int, directory: Int?)?
        var parentEnds: [Int] = []
        for (i, b) in bytes.enumerated() where b == UInt8(ascii: "/") { parentEnds.append(i) }
        for index in patterns.indices {
            let exclusion = patterns[index].exclusion
            if exclusion != (decision?.excluded ?? false) { continue }
            if patterns[index].matches(bytes[...]) {
                decision = (!exclusion, index, nil)
            } else if let end = parentEnds.first(where: { patterns[index].matches(bytes[..<$0]) }) {
                decision = (!exclusion, index, end)
            }
        }
        return decision
    }

    /// The `include:` pattern matching `bytes` or a directory above it.
    private func included(_ bytes: [UInt8]) -> (pattern: IgnorePattern, origin: String)? {
        guard !includes.isEmpty else { return nil }
        var ends = [bytes.count]
        for (i, b) in bytes.enumerated() where b == UInt8(ascii: "/") { ends.append(i) }
        return includes.first { include in ends.contains { include.pattern.matches(bytes[..<$0]) } }
    }

    /// Why `bytes` is sent or left out, naming the rule and where it was written: `syncctl ls --why`.
    public func explain(_ bytes: [UInt8], isDirectory: Bool) -> (excluded: Bool, reason: String) {
        if let own = ownDecision(bytes, parentsChecked: false), own.excluded || git == nil {
            let pattern = patterns[own.index]
            let rule = "\(origins[own.index]): `\(pattern.exclusion ? "!" : "")\(pattern.text)`"
            if !own.excluded { return (false, "brought back by \(rule)") }
            if let end = own.directory { return (true, "below \(String(decoding: bytes[..<end], as: UTF8.self))/, which \(rule) ignores") }
            return (true, "ignored by \(rule)")
        }
        if let git, let decision = git.decide(bytes, isDirectory: isDirectory) {
            guard decision.ignored else { return (false, "git: \(decision)") }
            if let include = included(bytes) {
                return (false, "git: \(decision); sent because \(include.origin) includes `\(include.pattern.text)`")
            }
            return (true, "git: \(decision)")
        }
        if let own = ownDecision(bytes, parentsChecked: false) {
            return (false, "brought back by \(origins[own.index]): `!\(patterns[own.index].text)`")
        }
        return (false, git == nil ? "no ignore rule matches it" : "no ignore rule matches it, git's included")
    }
}

/// One compiled pattern. Plain patterns compare strings; others run a small glob machine equivalent
/// to the regular expression patternmatcher builds.
///
/// A class, not a struct: every path a walk meets is matched against every pattern, and a copy of a pattern is
/// then one retain rather than one per array it holds.
public final class IgnorePattern: Sendable {
    struct SyntaxError: Error { let message: String }

    enum Token: Sendable, Equatable {
        case byte(UInt8)
        case anyInSegment      // *   -> [^/]*
        case oneInSegment      // ?   -> [^/]
        case anyDirectories    // **/ -> (.*/)?
        case anything          // trailing ** after other wildcards -> .*
        case set(ranges: [ClosedRange<UInt8>], negated: Bool)
    }

    enum Kind: Sendable {
        case exact([UInt8])
        case prefix([UInt8])
        case suffix([UInt8])
        /// `**/P` where P cannot match a `/`: P against the last path component only (`**/*.swp`).
        case lastComponent([Token])
        /// `**/*S`: the last path component ends with S.
        case lastComponentSuffix([UInt8])
        case glob([Token])
    }

    public let text: String
    public let exclusion: Bool
    let kind: Kind
    /// For the kinds run as an automaton: the bytes the (last component of the) path must start and end with,
    /// and the longest literal run it must hold somewhere, checked first; most paths a walk meets fail there
    /// (`.#*` against `f12.bin`, `*.sync-conflict-*` against `f12.bin`).
    private let head: [UInt8]
    private let tail: [UInt8]
    private let inner: [UInt8]

    /// One glob on its own (a Dockerfile COPY source or `--exclude`), with the same wildcards; throws a message
    /// naming what is wrong.
    public convenience init(glob: String) throws {
        do { try self.init(glob, exclusion: false) } catch let error as SyntaxError {
            throw IgnoreRuleError(source: "pattern", line: 0, message: "bad pattern '\(glob)': \(error.message)")
        }
    }

    /// True when the whole of `path` matches (its parents are not considered).
    public func matches(_ path: String) -> Bool { matches(Array(path.utf8)[...]) }

    /// True when the whole of `bytes` (a path as the file system holds it) matches.
    public func matches(bytes: [UInt8]) -> Bool { matches(bytes[...]) }

    /// True when the pattern has a wildcard (`*`, `?`, `[`): it selects by matching, not by naming one path.
    public var hasWildcards: Bool {
        if case .exact = kind { return false }
        return true
    }

    init(_ text: String, exclusion: Bool) throws {
        self.text = text
        self.exclusion = exclusion
        let chars = Array(text.utf8)
        var tokens: [Token] = []
        enum Detected { case exact, prefix, suffix, glob }
        var detected = Detected.exact
        var i = 0
        var iteration = 0
        while i < chars.count {
            defer { iteration += 1 }
            let ch = chars[i]
            i += 1
            switch ch {
            case UInt8(ascii: "*"):
                if i < chars.count && chars[i] == UInt8(ascii: "*") {
                    i += 1
                    if i < chars.count && chars[i] == UInt8(ascii: "/") { i += 1 }
                    if i == chars.count {
                        if detected == .exact { detected = .prefix } else { tokens.append(.anything); detected = .glob }
                    } else {
                        tokens.append(.anyDirectories)
                        detected = .glob
                    }
                    if iteration == 0 { detected = .suffix }
                } else {
                    tokens.append(.anyInSegment)
                    detected = .glob
                }
            case UInt8(ascii: "?"):
                tokens.append(.oneInSegment)
                detected = .glob
            case UInt8(ascii: "\\"):
                if i < chars.count {
                    tokens.append(.byte(chars[i]))
                    i += 1
                    detected = .glob
                } else {
                    tokens.append(.byte(ch))
                }
            case UInt8(ascii: "["):
                var negated = false
                if i < chars.count && chars[i] == UInt8(ascii: "^") { negated = true; i += 1 }
                var ranges: [ClosedRange<UInt8>] = []
                var closed = false
                while i < chars.count {
                    var c = chars[i]
                    i += 1
                    if c == UInt8(ascii: "]") && !ranges.isEmpty { closed = true; break }
                    if c == UInt8(ascii: "]") && ranges.isEmpty { closed = true; break }
                    if c == UInt8(ascii: "\\") {
                        guard i < chars.count else { break }
                        c = chars[i]
                        i += 1
                    }
                    if i + 1 < chars.count && chars[i] == UInt8(ascii: "-") && chars[i + 1] != UInt8(ascii: "]") {
                        var hi = chars[i + 1]
                        i += 2
                        if hi == UInt8(ascii: "\\"), i < chars.count { hi = chars[i]; i += 1 }
                        guard c <= hi else { throw SyntaxError(message: "character range out of order") }
                        ranges.append(c...hi)
                    } else {
                        ranges.append(c...c)
                    }
                }
                guard closed, !ranges.isEmpty else { throw SyntaxError(message: "unterminated or empty character class") }
                tokens.append(.set(ranges: ranges, negated: negated))
                detected = .glob
            case UInt8(ascii: "]"):
                throw SyntaxError(message: "unmatched ']'")
            default:
                tokens.append(.byte(ch))
            }
        }
        switch detected {
        case .exact: kind = .exact(Array(text.utf8))
        case .prefix: kind = .prefix(Array(text.dropLast(2).utf8))
        case .suffix: kind = .suffix(Array(text.dropFirst(2).utf8))
        case .glob: kind = Self.lastComponentKind(tokens) ?? .glob(tokens)
        }
        var automaton: [Token] = []
        switch kind {
        case .lastComponent(let t), .glob(let t): automaton = t
        case .exact, .prefix, .suffix, .lastComponentSuffix: break
        }
        func byte(_ token: Token) -> UInt8? { if case .byte(let b) = token { return b } else { return nil } }
        head = Array(automaton.prefix { byte($0) != nil }.map { byte($0)! })
        tail = Array(automaton.dropFirst(head.count).reversed().prefix { byte($0) != nil }.map { byte($0)! }.reversed())
        var longest: [UInt8] = [], run: [UInt8] = []
        for token in automaton {
            if let b = byte(token) { run.append(b) } else { run = [] }
            if run.count > longest.count { longest = run }
        }
        inner = longest.count > max(head.count, tail.count) ? longest : []
    }

    /// False when `text` cannot match the automaton: it lacks the pattern's literal ends or its longest literal.
    private func mayMatch(_ text: ArraySlice<UInt8>) -> Bool {
        guard text.count >= head.count + tail.count, text.starts(with: head), text.suffix(tail.count).elementsEqual(tail)
        else { return false }
        guard let first = inner.first, text.count >= inner.count else { return inner.isEmpty }
        var start = text.startIndex
        while start <= text.endIndex - inner.count {
            if text[start] == first && text[start..<start + inner.count].elementsEqual(inner) { return true }
            start += 1
        }
        return false
    }

    /// `**/` followed by tokens none of which can match a `/` (`(.*/)?P` in the regular expression) matches a
    /// path exactly when P matches its last component: that is all a scan checks for most default patterns, and
    /// it skips trying P after every slash.
    private static func lastComponentKind(_ tokens: [Token]) -> Kind? {
        guard tokens.first == .anyDirectories else { return nil }
        let rest = Array(tokens.dropFirst())
        let slash = UInt8(ascii: "/")
        for token in rest {
            switch token {
            case .byte(let b): if b == slash { return nil }
            case .anyInSegment, .oneInSegment: continue
            case .set(let ranges, let negated): if negated || ranges.contains(where: { $0.contains(slash) }) { return nil }
            case .anyDirectories, .anything: return nil
            }
        }
        if rest.first == .anyInSegment {
            var literal: [UInt8] = []
            for token in rest.dropFirst() {
                guard case .byte(let b) = token else { return .lastComponent(rest) }
                literal.append(b)
            }
            return .lastComponentSuffix(literal)
        }
        return .lastComponent(rest)
    }

    func matches(_ path: ArraySlice<UInt8>) -> Bool {
        switch kind {
        case .exact(let exact):
            return path.elementsEqual(exact)
        case .prefix(let prefix):
            return path.starts(with: prefix)
        case .suffix(let s):
            if path.count >= s.count && path.suffix(s.count).elementsEqual(s) { return true }
            return s.first == UInt8(ascii: "/") && path.elementsEqual(s.dropFirst())
        case .lastComponent(let tokens):
            let start = path.lastIndex(of: UInt8(ascii: "/")).map { $0 + 1 } ?? path.startIndex
            return mayMatch(path[start...]) && IgnorePattern.match(tokens[...], path[start...])
        case .lastComponentSuffix(let s):
            let start = path.lastIndex(of: UInt8(ascii: "/")).map { $0 + 1 } ?? path.startIndex
            return path.endIndex - start >= s.count && path.suffix(s.count).elementsEqual(s)
        case .glob(let tokens):
            return mayMatch(path) && IgnorePattern.match(tokens[...], path)
        }
    }

    private static func match(_ tokens: ArraySlice<Token>, _ path: ArraySlice<UInt8>) -> Bool {
        var steps = 0
        return match(tokens, path, steps: &steps)
    }

    /// Runs the pattern as an automaton over `path`, all its possible states at once (as a regular expression
    /// engine without backtracking does): time in proportion to the tokens times the bytes, whatever the pattern.
    /// A backtracking matcher took minutes on a 21-byte pattern of stars. `steps` counts the state visits.
    static func match(_ tokens: ArraySlice<Token>, _ path: ArraySlice<UInt8>, steps: inout Int) -> Bool {
        let tokens = Array(tokens)
        let path = Array(path)
        let count = tokens.count, width = count + 1
        // Rows for the positions p...p+4 (a `?` consumes one UTF-8 character, at most 4 bytes), reused in turn.
        // In each cell: bit 1, the state before token i is live; bit 2, inside a `**/` that has not ended in '/'.
        let live: UInt8 = 1, looping: UInt8 = 2, rows = 5
        var cells = [UInt8](repeating: 0, count: rows * width)
        cells[0] = live
        let slash = UInt8(ascii: "/")
        for p in 0...path.count {
            let base = (p % rows) * width
            // Tokens that may match nothing let the next one start here too (forward only: one pass).
            for i in 0..<count where cells[base + i] & live != 0 {
                switch tokens[i] {
                case .anyInSegment, .anyDirectories, .anything: cells[base + i + 1] |= live
                default: break
                }
            }
            if p == path.count { return cells[base + count] & live != 0 }
            let c = path[p]
            var any = false
            func mark(_ q: Int, _ state: Int, _ flag: UInt8) {
                cells[(q % rows) * width + state] |= flag
                any = true
            }
            for i in 0..<count where cells[base + i] != 0 {
                steps += 1
                let isLive = cells[base + i] & live != 0
                switch tokens[i] {
                case .byte(let b):
                    if isLive && c == b { mark(p + 1, i + 1, live) }
                case .set(let ranges, let negated):
                    if isLive && ranges.contains(where: { $0.contains(c) }) != negated { mark(p + 1, i + 1, live) }
                case .oneInSegment:
                    guard isLive && c != slash else { break }
                    var next = p + 1
                    if c >= 0xC0 { while next < path.count && next < p + 4 && path[next] & 0xC0 == 0x80 { next += 1 } }
                    mark(next, i + 1, live)
                case .anyInSegment:
                    if isLive && c != slash { mark(p + 1, i, live) }
                case .anything:
                    if isLive { mark(p + 1, i, live) }
                case .anyDirectories:
                    // `(.*/)?`: any bytes, left only just after a '/'.
                    if c == slash { mark(p + 1, i + 1, live) }
                    mark(p + 1, i, looping)
                }
            }
            for i in 0..<width { cells[base + i] = 0 }
            if !any {
                // Nothing goes on from here; states a `?` put further ahead may still.
                var ahead = false
                for r in 1..<rows where !ahead { ahead = cells[((p + r) % rows) * width..<((p + r) % rows) * width + width].contains { $0 != 0 } }
                if !ahead { return false }
            }
        }
        return false
    }
}

extension String {
    func trimmingSpace() -> String {
        let scalars = unicodeScalars
        guard let start = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let end = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(scalars[start...end])
    }
}
