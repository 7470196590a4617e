@testable import ProjectScan
import Testing

/// Issue 26, item 3: patterns match in time proportional to the pattern times the path. A backtracking matcher
/// took over a minute on a 21-byte `.syncignore` pattern of stars; the bound here is on the work counted, not on
/// the clock.
struct IgnoreLinearTests {
    @Test(arguments: [("*a*a*a*a*a*a*a*a*a*ab", String(repeating: "a", count: 200) + "b"), ("**/a**/a**/a**/a**/ab", "x/aa/aa/aab"),
                      ("a*a*a*a*a*a*a*a*a*a?b", String(repeating: "a", count: 200) + "b"), ("*[a]*[a]*[a]*[a]*[a]*b", String(repeating: "a", count: 9) + "b")])
    func starsDoNotBacktrack(_ text: String, _ matching: String) throws {
        let pattern = try IgnorePattern(glob: text)
        guard case .glob(let tokens) = pattern.kind else { Issue.record("\(text) is not a glob"); return }
        for length in [30, 300, 3000] {
            let path = Array(String(repeating: "a", count: length).utf8)
            var steps = 0
            #expect(!IgnorePattern.match(tokens[...], path[...], steps: &steps))
            #expect(steps <= (tokens.count + 1) * (path.count + 1), "\(text) on \(length) bytes: \(steps) steps")
        }
        // The same pattern through the rules a scan uses: answered, and right.
        var rules = IgnoreRules()
        try rules.add(fileContents: text + "\n", source: ".syncignore")
        #expect(!rules.isExcluded(String(repeating: "a", count: 200)))
        #expect(rules.isExcluded(matching), "\(text) against \(matching)")
    }

    /// The automaton agrees with the wildcards' meaning on the cases that need care: `?` over a UTF-8 character,
    /// `**/` only after a slash, `*` within one segment.
    @Test func theAutomatonKeepsTheMeaning() throws {
        let cases: [(String, String, Bool)] = [
            ("a?c", "abc", true), ("a?c", "a/c", false), ("caf?", "café", true), ("caf?x", "café", false),
            ("a/**/b", "a/b", true), ("a/**/b", "a/x/y/b", true), ("a/**/b", "ab", false), ("a/**/b", "a/xb", false),
            ("*.py", "x.py", true), ("*.py", "d/x.py", false), ("d/*", "d/x", true), ("d/*", "d/x/y", false),
            ("[a-c]x", "bx", true), ("[^a-c]x", "bx", false), ("a**", "abc/d", true), ("x/**/*.swp", "x/a/b/.f.swp", true),
            // The literal ends checked before the automaton runs: they may not overlap, nor stand for the whole.
            ("a*a", "a", false), ("a*a", "aa", true), ("a*b*a", "aba", true), ("a*b*a", "ab", false), ("x\\*", "x*", true),
            ("x\\*", "xy", false), ("**/#*#", "d/#", false), ("**/#*#", "d/##", true), ("**/ab*", "d/ab", true),
            ("**/ab*", "d/xab", false), ("[ab]x*y", "axzy", true), ("[ab]x*y", "axz", false), ("caf?x", "cafébx", false),
            ("**/*.sync-conflict-*", "d/a.sync-conflict-1", true), ("**/*.sync-conflict-*", "d/a.sync-conflic-1", false),
            ("**/*ab*", "ab", true), ("**/*ab*", "xa", false), ("*abc*abc", "abcabc", true), ("*abc*abc", "abc", false),
        ]
        for (text, path, expected) in cases {
            #expect(try IgnorePattern(glob: text).matches(path) == expected, "\(text) against \(path)")
        }
    }
}
