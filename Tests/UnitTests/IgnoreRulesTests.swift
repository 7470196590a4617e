import ProjectScan
import Testing

struct IgnoreRulesTests {
    /// (ignore file, path, excluded?) — expectations follow moby/patternmatcher's MatchesOrParentMatches.
    static let table: [(String, String, Bool)] = [
        ("*.tmp", "a.tmp", true),
        ("*.tmp", "dir/a.tmp", false),            // '*' does not cross '/'
        ("**/*.tmp", "dir/sub/a.tmp", true),
        ("**/*.tmp", "a.tmp", true),              // '**/' matches zero directories
        // `**/P` with P inside one component is matched against the last component only; these pin that down.
        ("**/*.tmp", "dir/a.tmp.keep", false),
        ("**/*.tmp", "a.tmp/inner", true),        // the parent directory matches
        ("**/.#*", "src/.#module.py", true),
        ("**/.#*", "src/x.#module.py", false),
        ("**/#*#", "a/#draft#", true),
        ("**/#*#", "a/#draft", false),
        ("**/*~", "notes.txt~", true),
        ("**/?.py", "pkg/a.py", true),
        ("**/?.py", "pkg/ab.py", false),
        ("**/[ab]*.log", "x/b1.log", true),
        ("**/[ab]*.log", "x/c1.log", false),
        ("**/[^a]x", "b/x", false),               // a negated class can match '/', so the generic matcher runs
        ("**/[^a]x", "bx", true),
        ("**/*.sync-conflict-*", "d/m.sync-conflict-20261201-101010.py", true),
        ("**/*.sync-conflict-*", "d.sync-conflict-1/m.py", true),
        ("**/a*/b", "x/a1/b", true),              // a '/' in P: the generic matcher
        ("**/a*/b", "x/a1/c/b", false),
        ("data", "data/raw/x.bin", true),         // a parent match excludes children
        ("data/**", "data/raw/x.bin", true),
        ("data/**", "database", false),
        ("/build", "build/out.o", true),          // leading '/' is stripped
        ("/build", "src/build", false),
        ("# comment\n*.log", "# comment", false), // comment lines are skipped
        ("# comment\n*.log", "x.log", true),
        ("  *.log  ", "x.log", true),             // surrounding space trimmed
        ("*.log\n!keep.log", "keep.log", false),  // exception re-includes
        ("*.log\n!keep.log", "drop.log", true),
        ("!keep.log\n*.log", "keep.log", true),   // last match wins
        ("data\n!data/keep", "data/keep", false),
        ("data\n!data/keep", "data/other", true),
        ("a/**/b", "a/b", true),
        ("a/**/b", "a/x/y/b", true),
        ("a/**/b", "a/x/y/c", false),
        ("**/node_modules", "web/node_modules/left-pad/index.js", true),
        ("**", "anything/at/all", true),
        ("?.txt", "a.txt", true),
        ("?.txt", "ab.txt", false),
        ("[a-c].txt", "b.txt", true),
        ("[a-c].txt", "d.txt", false),
        ("[^a-c].txt", "d.txt", true),
        ("dir/./sub/../file", "dir/file", true),  // patterns are cleaned
        ("out/", "out/model.pt", true),           // trailing slash cleaned away
        ("\\*.txt", "*.txt", true),               // escaped wildcard is literal
        ("\\*.txt", "a.txt", false),
        ("*", "top", true),
        ("*", "dir/file", true),                  // parent "dir" matches '*'
        ("checkpoint/*.pt", "checkpoint/epoch1.pt", true),
        ("checkpoint/*.pt", "checkpoint/sub/epoch1.pt", false),
    ]

    @Test(arguments: 0..<table.count)
    func dockerignoreSemantics(row: Int) throws {
        let (file, path, excluded) = Self.table[row]
        var rules = IgnoreRules()
        try rules.add(fileContents: file, source: ".syncignore")
        #expect(rules.isExcluded(path) == excluded, "pattern \(file.debugDescription) on \(path)")
    }

    @Test func loneBangIsAnError() {
        var rules = IgnoreRules()
        #expect(throws: IgnoreRuleError.self) { try rules.add(fileContents: "*.o\n!\n", source: ".syncignore") }
    }

    @Test func unterminatedClassNamesTheLine() {
        var rules = IgnoreRules()
        do {
            try rules.add(fileContents: "ok\n[abc\n", source: ".syncignore")
            Issue.record("expected an error")
        } catch let error as IgnoreRuleError {
            #expect(error.line == 2)
            #expect(error.description.contains(".syncignore:2"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }
}
