import Client
import Foundation
import SyncSystem
import Testing

/// Names a Linux tree may hold that are not plain UTF-8 text, or that only look alike.
enum OddNames {
    static let latin1: [UInt8] = Array("caf".utf8) + [0xE9] + Array(".jpg".utf8)
    static let newline: [UInt8] = Array("new\nline.txt".utf8)
    static let tabAndSpace: [UInt8] = Array("tab\tand space.txt".utf8)
    static let nfc: [UInt8] = Array("caf".utf8) + [0xC3, 0xA9] + Array(".txt".utf8)
    static let nfd: [UInt8] = Array("cafe".utf8) + [0xCC, 0x81] + Array(".txt".utf8)
    static let quotes: [UInt8] = Array("a\\\"b.txt".utf8)
    static let marker: [UInt8] = [0xEF, 0xB7, 0x90] + Array(".txt".utf8)
    static let directory: [UInt8] = Array("d".utf8) + [0xFF, 0xFE]
    static let inner: [UInt8] = Array("inner".utf8) + [0x80] + Array(".bin".utf8)
    static let link: [UInt8] = Array("link".utf8) + [0xE9]
}

@Suite(.serialized)
struct NameBytesTests {
    /// Writes the odd names into `root`, byte-exact (not through String paths, which would repair them).
    static func makeOddTree(_ root: String) throws {
        let names = [OddNames.latin1, OddNames.newline, OddNames.tabAndSpace, OddNames.nfc, OddNames.nfd, OddNames.quotes,
                     OddNames.marker]
        for (i, name) in names.enumerated() { try writeFile(in: root, named: name, Array("content \(i)\n".utf8)) }
        try makeDirectory(in: root, named: OddNames.directory)
        let dirPath = Array(root.utf8) + [UInt8(ascii: "/")] + OddNames.directory
        let fd = withCName(dirPath + [UInt8(ascii: "/")] + OddNames.inner) { open($0, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600) }
        guard fd >= 0 else { throw FixtureError("cannot create the inner file") }
        _ = write(fd, "inner", 5)
        close(fd)
        let linked = withCName(OddNames.latin1) { target in
            withCName(Array(root.utf8) + [UInt8(ascii: "/")] + OddNames.link) { symlink(target, $0) }
        }
        guard linked == 0 else { throw FixtureError("cannot make the symlink") }
    }

    /// Every regular file's bytes, by relative path.
    static func contents(_ root: String, _ paths: [[UInt8]]) -> [[UInt8]: [UInt8]] {
        var out: [[UInt8]: [UInt8]] = [:]
        for p in paths {
            let full = Array(root.utf8) + [UInt8(ascii: "/")] + p
            var st = stat()
            guard withCName(full, { lstat($0, &st) }) == 0 else { continue }
            if st.st_mode & S_IFMT == S_IFREG { out[p] = readFile(full) ?? [] }
            if st.st_mode & S_IFMT == S_IFLNK {
                var buffer = [UInt8](repeating: 0, count: 4096)
                let n = withCName(full) { name in buffer.withUnsafeMutableBytes { readlink(name, $0.baseAddress!.assumingMemoryBound(to: CChar.self), 4096) } }
                out[p] = Array("link -> ".utf8) + Array(buffer[0..<max(n, 0)])
            }
        }
        return out
    }

    @Test func oddNamesArePushedAndPulledByteExact() throws {
        let f = try SyncFixture()
        try Self.makeOddTree(f.project)
        let local = try findPrint0(f.project)
        #expect(local.count == 11, "\(local.map { displayPath($0) })")

        // ls lists every one of them, and -0 gives their bytes as find -print0 does.
        let listed = try f.syncctl(["ls", f.project, "-0"])
        #expect(listed.status == 0, "\(listed.stderr)")
        #expect(listed.stdoutBytes.split(separator: 0).map(Array.init).sorted { $0.lexicographicallyPrecedes($1) } == local)
        #expect(!listed.stderr.contains("skipped"), "\(listed.stderr)")

        let r = try f.push()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try r.stats().filesChanged == 10, "\(r.stdout)")
        let remote = try findPrint0(f.remoteProject, skipping: [".syncd", "output", "checkpoint"])
        #expect(remote == local, "remote: \(remote.map { displayPath($0) })")
        #expect(Self.contents(f.remoteProject, remote) == Self.contents(f.project, local))
        let again = try f.push()
        #expect(try again.stats().filesChanged == 0, "a second push finds every name where it left it: \(again.stdout)")

        // The remote writes outputs with such names; a pull brings them back byte-exact.
        try makeDirectory(in: f.remoteProject + "/output", named: OddNames.directory)
        try writeFile(in: f.remoteProject + "/output", named: OddNames.latin1, randomBytes(70_000, seed: 5))
        try writeFile(in: f.remoteProject + "/output", named: OddNames.nfd, Array("nfd".utf8))
        try writeFile(in: f.remoteProject + "/output", named: OddNames.nfc, Array("nfc".utf8))
        try writeFile(in: f.remoteProject + "/output", named: OddNames.newline, Array("nl".utf8))
        let touched = try run("/usr/bin/find", [f.remoteProject + "/output", "-exec", "touch", "-d", "1 minute ago", "{}", "+"])
        #expect(touched.status == 0)
        let p = try f.pull()
        #expect(p.status == 0, "\(p.stderr)")
        let pulledHere = try findPrint0(f.project + "/output")
        let there = try findPrint0(f.remoteProject + "/output")
        #expect(there.count == 5)
        #expect(pulledHere == there, "\(pulledHere.map { displayPath($0) })")
        #expect(Self.contents(f.project + "/output", pulledHere) == Self.contents(f.remoteProject + "/output", there))
    }

    @Test func textOutputEscapesAndJSONCarriesTheBytes() throws {
        let f = try SyncFixture()
        try Self.makeOddTree(f.project)
        let text = try f.syncctl(["ls", f.project])
        #expect(text.status == 0)
        let lines = text.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("\"caf\\xe9.jpg\""), "\(lines)")
        #expect(lines.contains("\"new\\nline.txt\""), "\(lines)")
        #expect(lines.contains("\"tab\\tand space.txt\""), "\(lines)")
        #expect(lines.contains("\"d\\xff\\xfe\"/"), "\(lines)")
        #expect(lines.contains("café.txt"), "valid UTF-8 is shown as it is")

        // JSON: each path is a string; bytes that are not UTF-8 are \udcXX (PEP 383), U+FDD0 is \ufdd0.
        let json = try f.syncctl(["ls", f.project, "--json"])
        #expect(json.status == 0)
        #expect(json.stdout.contains("\"caf\\udce9.jpg\""), "\(json.stdout)")
        #expect(json.stdout.contains("\"d\\udcff\\udcfe\""), "\(json.stdout)")
        #expect(json.stdout.contains("\"\\ufdd0.txt\""), "\(json.stdout)")
        let decoded = try decodeJSONPaths(json.stdoutBytes)
        #expect(decoded.sorted { $0.lexicographicallyPrecedes($1) } == (try findPrint0(f.project)))
        // Written in pieces as the tree is walked, the text is what encoding the whole list at once gives.
        struct Listed: Encodable { let paths: [ListedPath] }
        let project = try Project(directory: f.project)
        #expect(json.stdout == project.jsonText(Listed(paths: try project.listPushable().paths)) + "\n")
    }
}

/// The byte strings of every `"path"` value in syncctl's JSON, decoded by the README's rule: JSON string escapes,
/// with `\udc80`…`\udcff` standing for the byte 0x80…0xff.
func decodeJSONPaths(_ json: [UInt8]) throws -> [[UInt8]] {
    var out: [[UInt8]] = []
    let key = Array("\"path\":\"".utf8)
    var i = 0
    while let range = json[i...].firstRange(of: key) {
        i = range.upperBound
        var value: [UInt8] = []
        while json[i] != UInt8(ascii: "\"") {
            if json[i] != UInt8(ascii: "\\") { value.append(json[i]); i += 1; continue }
            let escape = json[i + 1]
            i += 2
            switch escape {
            case UInt8(ascii: "n"): value.append(10)
            case UInt8(ascii: "t"): value.append(9)
            case UInt8(ascii: "u"):
                guard let code = UInt32(String(decoding: json[i..<(i + 4)], as: UTF8.self), radix: 16) else {
                    throw FixtureError("bad \\u escape")
                }
                i += 4
                if code >= 0xDC80 && code <= 0xDCFF {
                    value.append(UInt8(code - 0xDC00))
                } else {
                    value += Array(String(Unicode.Scalar(code)!).utf8)
                }
            default: value.append(escape)
            }
        }
        out.append(value)
        i += 1
    }
    return out
}
