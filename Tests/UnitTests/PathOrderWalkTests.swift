import Foundation
import ProjectScan
import SyncSystem
import Testing

/// The walk a full push merges with the local database (issue 29): the same entries and warnings as the ordinary
/// scan, handed over in byte order of their paths, the order SQLite keeps BLOB keys in.
struct PathOrderWalkTests {
    /// Names that sort around the slash: `!` `-` `.` before `/`, `0` and the letters after it, and bytes past
    /// ASCII last; directories among files of the same stem, an excluded tree with something brought back, a
    /// symlink in the tree and one out of it.
    @Test func theWalkGivesTheScansEntriesInByteOrder() throws {
        let root = NSTemporaryDirectory() + "syncd-walk-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let fm = FileManager.default
        for dir in ["a", "a/y/z", "a-b", "a0", "b.d", "b", "caf\u{e9}", "logs/keep", "logs/noise"] {
            try fm.createDirectory(atPath: root + "/" + dir, withIntermediateDirectories: true)
        }
        for file in ["a.txt", "a!", "a/x", "a/y/z/deep", "a/y.txt", "a-b/1", "a0/2", "b.d/3", "b/4", "b.txt", "caf\u{e9}/5",
                     "logs/keep/k.log", "logs/noise/n.log", "top.log", "Z"] {
            try Data(file.utf8).write(to: URL(fileURLWithPath: root + "/" + file))
        }
        try fm.createSymbolicLink(atPath: root + "/a/link", withDestinationPath: "x")
        try fm.createSymbolicLink(atPath: root + "/out", withDestinationPath: "../../etc/passwd")
        var rules = IgnoreRules()
        try rules.add(fileContents: "**/*.log\n!logs/keep/*.log\n", source: "test")
        let scanner = ProjectScanner(tree: try Tree(rootPath: root, create: false), rules: rules)

        var walked: [ScannedEntry] = []
        let warnings = try scanner.walkInPathOrder { walked.append($0) }
        let scanned = try scanner.scan()
        let paths = walked.map { $0.path.bytes }
        #expect(paths == paths.sorted { $0.lexicographicallyPrecedes($1) }, "not in byte order: \(walked.map(\.path.description))")
        #expect(Set(walked.map(\.path)) == Set(scanned.entries.map(\.path)))
        #expect(walked.sorted { $0.path.bytes.lexicographicallyPrecedes($1.path.bytes) }
                == scanned.entries.sorted { $0.path.bytes.lexicographicallyPrecedes($1.path.bytes) }, "the same entries, stat and all")
        #expect(warnings == scanned.warnings && warnings.count == 1, "the symlink out of the tree: \(warnings)")
        // Without stats (`ls`): the same paths, kinds and warnings, symlinks still read.
        var listed: [ScannedEntry] = []
        let listWarnings = try scanner.walkInPathOrder(statting: false) { listed.append($0) }
        #expect(listed.map(\.path) == walked.map(\.path) && listed.map(\.kind) == walked.map(\.kind) && listWarnings == warnings)
        #expect(listed.map(\.linkTarget) == walked.map(\.linkTarget))
        let shown = walked.map(\.path.description)
        #expect(shown.firstIndex(of: "a")! < shown.firstIndex(of: "a!")!, "a directory's entry at its name")
        #expect(shown.firstIndex(of: "a.txt")! < shown.firstIndex(of: "a/x")!, "what is below it after its name and a slash")
        #expect(shown.firstIndex(of: "a/y.txt")! < shown.firstIndex(of: "a/y/z/deep")!, "y.txt before y/…")
        #expect(shown.contains("logs/keep/k.log") && !shown.contains("logs/noise/n.log") && !shown.contains("top.log"))

        // Taken up after any path, the walk gives exactly what follows it, and nothing is listed twice when it is
        // stopped and resumed; after a path that is not in the tree, what sorts after it.
        for (i, path) in walked.enumerated() {
            var rest: [ScannedEntry] = []
            let resumed = try scanner.walkInPathOrder(after: path.path.bytes) { rest.append($0); return true }
            #expect(rest == Array(walked[(i + 1)...]) && !resumed.stopped, "after \(path.path)")
        }
        for after in ["a/", "a/y/", "a/y/z/deeq", "a.", "b0", "\u{7f}"] {
            var rest: [ScannedEntry] = []
            _ = try scanner.walkInPathOrder(after: Array(after.utf8)) { rest.append($0); return true }
            #expect(rest == walked.filter { Array(after.utf8).lexicographicallyPrecedes($0.path.bytes) }, "after \(after)")
        }
        for every in 1...4 {
            var parts: [[ScannedEntry]] = []
            var resume: [UInt8]?
            for _ in 0...walked.count {
                var part: [ScannedEntry] = []
                let walk = try scanner.walkInPathOrder(after: resume) { part.append($0); return part.count < every }
                parts.append(part)
                resume = part.last?.path.bytes
                if !walk.stopped { break }
            }
            #expect(parts.flatMap { $0 } == walked, "in parts of \(every)")
            #expect(parts.count == walked.count / every + 1, "in parts of \(every): \(parts.map(\.count))")
        }

        // The walk on a thread of its own, ahead of the visits: the same entries in the same order and the same
        // warnings, for any batch size; stopped, it gives nothing past the stop, and taken up again it goes on
        // from there; an error thrown by a visit comes back with the walker stopped.
        for (batch, batches) in [(1, 1), (2, 1), (3, 2), (256, 16)] {
            var ahead: [ScannedEntry] = []
            let walk = try scanner.walkInPathOrderAhead(after: nil, batch: batch, batches: batches) { ahead.append($0); return true }
            #expect(ahead == walked && walk.warnings == warnings && !walk.stopped, "batches of \(batch)")
            for (i, path) in walked.enumerated() {
                var rest: [ScannedEntry] = []
                _ = try scanner.walkInPathOrderAhead(after: path.path.bytes, batch: batch, batches: batches) { rest.append($0); return true }
                #expect(rest == Array(walked[(i + 1)...]), "after \(path.path), batches of \(batch)")
            }
            for every in 1...4 {
                var parts: [[ScannedEntry]] = []
                var resume: [UInt8]?
                for _ in 0...walked.count {
                    var part: [ScannedEntry] = []
                    let walk = try scanner.walkInPathOrderAhead(after: resume, batch: batch, batches: batches) {
                        part.append($0)
                        return part.count < every
                    }
                    parts.append(part)
                    resume = part.last?.path.bytes
                    if !walk.stopped { break }
                }
                #expect(parts.flatMap { $0 } == walked, "in parts of \(every), batches of \(batch)")
            }
            struct Stop: Error {}
            var visited = 0
            #expect(throws: Stop.self) {
                _ = try scanner.walkInPathOrderAhead(after: nil, batch: batch, batches: batches) { _ in
                    visited += 1
                    if visited == 3 { throw Stop() }
                    return true
                }
            }
            #expect(visited == 3)
        }
    }
}
