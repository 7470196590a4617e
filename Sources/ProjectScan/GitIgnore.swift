import Glibc
import SyncSystem

/// git's ignore rules over a project (gitignore(5)): the `.gitignore` of each directory, read when a path below
/// it is first asked about, the ones of directories between the repository's root and the project, and the
/// repository's `info/exclude`.
///
/// The rules differ from `.syncignore`'s in three ways, all of them git's: a pattern without a slash matches a
/// name at any depth below its file's directory; a trailing slash matches directories only; and nothing below
/// an ignored directory can be brought back by `!`.
public final class GitIgnore: @unchecked Sendable {
    /// One line of an ignore file.
    struct Rule {
        let pattern: IgnorePattern
        let negated: Bool
        let directoryOnly: Bool
        /// With a slash before its end, the pattern is matched against the path below its file's directory;
        /// without, against the last component only.
        let anchored: Bool
        /// Where the line is, for `ls --why`: "FILE:LINE".
        let origin: String
        let text: String
    }

    /// Rules read from one file, and the directory (repository-relative, no trailing slash) they apply below.
    struct RuleFile {
        let base: [UInt8]
        let rules: [Rule]
    }

    /// What decided a path: the rule, and the directory it matched when that was one above the path.
    public struct Decision: Sendable, CustomStringConvertible {
        public let ignored: Bool
        public let origin: String
        public let pattern: String
        /// Set when the path lies below a directory the rule ignores.
        public let directory: String?

        public var description: String {
            let rule = "\(origin): `\(pattern)`"
            if let directory { return "\(directory)/ is ignored by \(rule), and git cannot re-include what is below it" }
            return (ignored ? "ignored by " : "re-included by ") + rule
        }
    }

    private let tree: Tree
    /// The project's path inside the repository, with a trailing slash ("" when the project is the root).
    private let projectPrefix: [UInt8]
    /// `info/exclude` and the `.gitignore` files of directories above the project, lowest precedence first.
    private let outer: [RuleFile]
    /// Read as the walk asks, under one lock: the project's own `.gitignore` files by project-relative directory
    /// (an empty list where there is none), and the lines passed over.
    private let loaded: Locked<(inner: [[UInt8]: [Rule]], skipped: [ScanWarning])>
    /// `chain(for:)`'s answer for the directory asked about last.
    private let lastChain = Locked<(parent: [UInt8], chain: [(base: [UInt8], rules: [Rule])])?>(nil)

    /// `outerFiles` are (text, shown name, repository-relative directory) for `info/exclude` (directory "") and the
    /// `.gitignore` files between the repository's root and the project, root first.
    /// `unread`: those of them that are there but could not be taken, said with the scan's warnings.
    public init(tree: Tree, projectPrefix: String, outerFiles: [(text: String, source: String, base: String)], unread: [ScanWarning] = []) {
        self.tree = tree
        var prefix = Array(projectPrefix.utf8)
        if !prefix.isEmpty && prefix.last != UInt8(ascii: "/") { prefix.append(UInt8(ascii: "/")) }
        self.projectPrefix = prefix
        var skipped = unread
        outer = outerFiles.map { RuleFile(base: Array($0.base.utf8), rules: Self.parse($0.text, source: $0.source, skipped: &skipped)) }
        // A project inside a directory git ignores: git tracks nothing in it. syncd applies the rules below the
        // project as if it were not ignored, and says so.
        var above: [UInt8] = []
        components: for component in prefix.split(separator: UInt8(ascii: "/")) {
            above += (above.isEmpty ? [] : [UInt8(ascii: "/")]) + component
            for file in outer.reversed() {
                let base = file.base.isEmpty ? [] : file.base + [UInt8(ascii: "/")]
                guard above.starts(with: base), above.count > base.count else { continue }
                if let rule = Self.lastMatch(file.rules, below: base, above, isDirectory: true) {
                    if !rule.negated {
                        skipped.append(ScanWarning(path: String(decoding: above, as: UTF8.self) + "/",
                                                   message: "git ignores this directory, which holds the project (\(rule.origin): "
                                                       + "`\(rule.text)`), so git tracks nothing here; syncd applies the rules below it as if it did not"))
                        break components
                    }
                    break
                }
            }
        }
        loaded = Locked((inner: [:], skipped: skipped))
    }

    /// Lines passed over so far (path "FILE:LINE", and why): a push and `ls` warn about each.
    public var skippedLines: [ScanWarning] { loaded.withLock { $0.skipped } }

    /// True when git ignores `path` (project-relative bytes). With `parentsChecked` the caller knows that no
    /// directory above it is ignored, and only the path itself is matched.
    public func isIgnored(_ path: [UInt8], isDirectory: Bool, parentsChecked: Bool = false) -> Bool {
        decide(path, isDirectory: isDirectory, parentsChecked: parentsChecked)?.ignored ?? false
    }

    /// The rule that decides `path`, nil when none matches it or a directory above it.
    public func decide(_ path: [UInt8], isDirectory: Bool, parentsChecked: Bool = false) -> Decision? {
        if !parentsChecked {
            for (i, byte) in path.enumerated() where byte == UInt8(ascii: "/") {
                if let rule = match(Array(path[..<i]), isDirectory: true), !rule.negated {
                    return Decision(ignored: true, origin: rule.origin, pattern: rule.text,
                                    directory: String(decoding: path[..<i], as: UTF8.self))
                }
            }
        }
        guard let rule = match(path, isDirectory: isDirectory) else { return nil }
        return Decision(ignored: !rule.negated, origin: rule.origin, pattern: rule.text, directory: nil)
    }

    /// The last rule matching `path` itself, looking at the deepest file first as git does.
    private func match(_ path: [UInt8], isDirectory: Bool) -> Rule? {
        let parent = path[..<(path.lastIndex(of: UInt8(ascii: "/")) ?? path.startIndex)]
        let full = projectPrefix.isEmpty ? path : projectPrefix + path
        for (base, rules) in chain(for: parent) {
            if let rule = Self.lastMatch(rules, below: base, full, isDirectory: isDirectory) { return rule }
        }
        return nil
    }

    /// The rule files that apply to the entries of `parent` (project-relative), deepest first, each with the
    /// prefix of `projectPrefix + path` below which it matches; files without rules left out. Kept for the last
    /// directory asked about: a walk asks for every entry of one directory in a row.
    private func chain(for parent: ArraySlice<UInt8>) -> [(base: [UInt8], rules: [Rule])] {
        if let known = lastChain.withLock({ $0.flatMap { $0.parent.elementsEqual(parent) ? $0.chain : nil } }) { return known }
        let slash = UInt8(ascii: "/")
        var chain: [(base: [UInt8], rules: [Rule])] = []
        var directory = Array(parent)
        while true {
            let rules = rules(in: directory)
            if !rules.isEmpty { chain.append((directory.isEmpty ? projectPrefix : projectPrefix + directory + [slash], rules)) }
            if directory.isEmpty { break }
            directory = directory.lastIndex(of: slash).map { Array(directory[..<$0]) } ?? []
        }
        for file in outer.reversed() where !file.rules.isEmpty {
            let base = file.base.isEmpty ? [] : file.base + [slash]
            if projectPrefix.starts(with: base) { chain.append((base, file.rules)) }
        }
        lastChain.withLock { $0 = (Array(parent), chain) }
        return chain
    }

    private static func lastMatch(_ rules: [Rule], below base: [UInt8], _ full: [UInt8], isDirectory: Bool) -> Rule? {
        guard !rules.isEmpty else { return nil }
        let relative = full[base.count...]
        let name = relative.lastIndex(of: UInt8(ascii: "/")).map { relative[($0 + 1)...] } ?? relative
        for rule in rules.reversed() {
            if rule.directoryOnly && !isDirectory { continue }
            if rule.pattern.matches(rule.anchored ? relative : name) { return rule }
        }
        return nil
    }

    /// The rules of `directory`'s own `.gitignore` (project-relative), read the first time they are asked for.
    private func rules(in directory: [UInt8]) -> [Rule] {
        if let known = loaded.withLock({ $0.inner[directory] }) { return known }
        var found: [ScanWarning] = []
        let rules = read(directory).map { Self.parse($0.text, source: $0.shown, skipped: &found) } ?? []
        return loaded.withLock { state in
            // Another thread may have read the same file meanwhile: its lines are noted once.
            if let known = state.inner[directory] { return known }
            state.inner[directory] = rules
            state.skipped += found
            return rules
        }
    }

    /// The text of `directory/.gitignore`; nil when there is none, or it is a symlink (git does not follow one),
    /// or it cannot be read.
    private func read(_ directory: [UInt8]) -> (text: String, shown: String)? {
        let name = Array(".gitignore".utf8)
        let shown = directory.isEmpty ? ".gitignore" : String(decoding: directory, as: UTF8.self) + "/.gitignore"
        do {
            let relative = directory.isEmpty ? nil : try RelativePath(bytes: directory)
            guard let dir = try tree.openDirectory(relative, create: false) else { return nil }
            // Non-blocking, and a regular file only: a FIFO named .gitignore must not hang a scan.
            let file = try Tree.openFile(at: dir, name: name, flags: O_RDONLY | O_NONBLOCK, shown: shown)
            guard try file.stat().kind == .regular else { return nil }
            let limit = 1 << 20
            var bytes = [UInt8](repeating: 0, count: limit + 1)
            let n = try bytes.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
            guard n <= limit else {
                loaded.withLock { $0.skipped.append(ScanWarning(path: shown, message: "larger than 1 MiB; not read, so git's rules in it do not apply")) }
                return nil
            }
            return (String(decoding: bytes[..<n], as: UTF8.self), shown)
        } catch {
            return nil
        }
    }

    /// The patterns of one ignore file, as gitignore(5) reads them.
    static func parse(_ contents: String, source: String, skipped: inout [ScanWarning]) -> [Rule] {
        var rules: [Rule] = []
        var number = 0
        for raw in contents.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            var line = Array(raw.utf8)
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            if number == 1 && line.starts(with: [0xEF, 0xBB, 0xBF]) { line.removeFirst(3) }
            if line.first == UInt8(ascii: "#") { continue }
            // Trailing spaces go unless a backslash keeps one.
            while line.last == UInt8(ascii: " ") {
                let count = line.count
                if count >= 2 && line[count - 2] == UInt8(ascii: "\\") {
                    line.remove(at: count - 2)
                    break
                }
                line.removeLast()
            }
            if line.isEmpty { continue }
            var negated = false
            if line.first == UInt8(ascii: "!") {
                negated = true
                line.removeFirst()
            } else if line.starts(with: Array("\\!".utf8)) || line.starts(with: Array("\\#".utf8)) {
                line.removeFirst()
            }
            var directoryOnly = false
            if line.last == UInt8(ascii: "/") {
                directoryOnly = true
                line.removeLast()
            }
            let anchored = line.contains(UInt8(ascii: "/"))
            if line.first == UInt8(ascii: "/") { line.removeFirst() }
            let text = String(decoding: raw.utf8, as: UTF8.self).trimmingSpace()
            guard !line.isEmpty else {
                skipped.append(ScanWarning(path: "\(source):\(number)", message: "`\(text)` names nothing; passed over"))
                continue
            }
            do {
                let pattern = try IgnorePattern(String(decoding: gitClasses(line), as: UTF8.self), exclusion: false)
                rules.append(Rule(pattern: pattern, negated: negated, directoryOnly: directoryOnly, anchored: anchored,
                                  origin: "\(source):\(number)", text: text))
            } catch let error as IgnorePattern.SyntaxError {
                skipped.append(ScanWarning(path: "\(source):\(number)", message: "`\(text)`: \(error.message); passed over, so what it names is sent"))
            } catch {
                skipped.append(ScanWarning(path: "\(source):\(number)", message: "`\(text)`: \(error); passed over, so what it names is sent"))
            }
        }
        return rules
    }

    /// git writes a negated class `[!a-z]` as well as `[^a-z]`; the pattern compiler knows the second. And `**`
    /// means any directories only between slashes (or at either end); elsewhere (`a**b`, `a/**b`) it is one `*`.
    private static func gitClasses(_ line: [UInt8]) -> [UInt8] {
        let star = UInt8(ascii: "*"), slash = UInt8(ascii: "/")
        var out: [UInt8] = []
        var i = 0
        while i < line.count {
            let c = line[i]
            if c == UInt8(ascii: "\\") {
                out.append(c)
                if i + 1 < line.count { out.append(line[i + 1]) }
                i += 2
                continue
            }
            if c == UInt8(ascii: "["), i + 1 < line.count, line[i + 1] == UInt8(ascii: "!") {
                out += [c, UInt8(ascii: "^")]
                i += 2
                continue
            }
            if c == star {
                var end = i
                while end < line.count && line[end] == star { end += 1 }
                let run = end - i
                let before = i == 0 || line[i - 1] == slash
                let after = end == line.count || line[end] == slash
                out += run >= 2 && before && after ? [star, star] : [star]
                i = end
                continue
            }
            out.append(c)
            i += 1
        }
        return out
    }
}
