/// A Dockerfile, parsed as far as what decides a build's context: parser directives, logical lines
/// (continuations, comments), heredocs, and each instruction's flags and arguments.
///
/// The rules follow BuildKit's frontend: directives (`# syntax=`, `# escape=`, `# check=`) only at the very top,
/// before any comment, blank line or instruction; a line ending in the escape character continues on the next
/// one, and comment or blank lines inside a continuation are dropped; `RUN`, `COPY` and `ADD` may open heredocs
/// (`<<EOF`, `<<-EOF`, `<<"EOF"`) whose bodies follow the instruction line.
public struct DockerfileSyntax: Equatable, Sendable {
    public var directives: [String: String]
    public var escape: Character
    public var instructions: [RawInstruction]
}

/// One instruction as written: keyword (upper case), flags, the rest, and heredoc bodies.
public struct RawInstruction: Equatable, Sendable {
    public var keyword: String
    /// `--name=value` flags before the arguments, in order (a flag without `=` has value "").
    public var flags: [(name: String, value: String)]
    /// The text after the keyword and flags, continuations joined.
    public var rest: String
    /// Heredocs opened on the instruction line, in order.
    public var heredocs: [Heredoc]
    /// 1-based line of the keyword.
    public var line: Int

    public func flagValues(_ name: String) -> [String] { flags.filter { $0.name == name }.map(\.value) }
    public func flag(_ name: String) -> String? { flagValues(name).last }

    public static func == (a: RawInstruction, b: RawInstruction) -> Bool {
        a.keyword == b.keyword && a.rest == b.rest && a.heredocs == b.heredocs && a.line == b.line
            && a.flags.map(\.name) == b.flags.map(\.name) && a.flags.map(\.value) == b.flags.map(\.value)
    }
}

public struct Heredoc: Equatable, Sendable {
    public var name: String
    public var body: String
    /// `<<-`: leading tabs were stripped from the body.
    public var stripTabs: Bool
    /// Quoted word (`<<"EOF"`): the body is not expanded.
    public var quoted: Bool

    public init(name: String, body: String, stripTabs: Bool, quoted: Bool) {
        self.name = name
        self.body = body
        self.stripTabs = stripTabs
        self.quoted = quoted
    }
}

/// A Dockerfile that cannot be read; says where and what.
public struct DockerfileError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let line: Int
    public let message: String
    public var description: String { "\(file):\(line): \(message)" }
    public init(file: String, line: Int, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }
}

public enum DockerfileParser {
    static let heredocKeywords: Set<String> = ["RUN", "COPY", "ADD"]

    public static func parse(_ text: String, file: String = "Dockerfile") throws -> DockerfileSyntax {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            line.hasSuffix("\r") ? String(line.dropLast()) : String(line)
        }
        if let first = lines.first, first.hasPrefix("\u{FEFF}") { lines[0] = String(first.dropFirst()) }

        // Parser directives: `# key=value` lines at the very top.
        var directives: [String: String] = [:]
        var index = 0
        while index < lines.count {
            guard let (key, value) = directive(lines[index]) else { break }
            if directives[key] != nil {
                throw DockerfileError(file: file, line: index + 1, message: "the parser directive '\(key)' is given twice")
            }
            directives[key] = value
            index += 1
        }
        var escape: Character = "\\"
        if let e = directives["escape"] {
            guard e == "\\" || e == "`" else {
                throw DockerfileError(file: file, line: 1, message: "invalid escape character '\(e)': use \\ or `")
            }
            escape = Character(e)
        }

        var instructions: [RawInstruction] = []
        while index < lines.count {
            let startLine = index + 1
            let trimmed = lines[index].trimmingWhitespace()
            index += 1
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            // Join continuation lines.
            var logical = ""
            var current = trimmed
            while true {
                if let body = continued(current, escape: escape) {
                    logical += body
                    // Comment and blank lines inside a continuation are skipped.
                    while index < lines.count {
                        let next = lines[index].trimmingWhitespace()
                        if next.isEmpty || next.hasPrefix("#") { index += 1 } else { break }
                    }
                    guard index < lines.count else { break }
                    current = lines[index].trimmingLeadingWhitespace()
                    index += 1
                } else {
                    logical += current
                    break
                }
            }
            var instruction = try split(logical, line: startLine, file: file)
            if heredocKeywords.contains(instruction.keyword) {
                for opener in heredocOpeners(instruction.rest) {
                    var body: [String] = []
                    var closed = false
                    while index < lines.count {
                        var line = lines[index]
                        index += 1
                        if opener.stripTabs { while line.hasPrefix("\t") { line.removeFirst() } }
                        if line == opener.name { closed = true; break }
                        body.append(line)
                    }
                    guard closed else {
                        throw DockerfileError(file: file, line: startLine, message: "heredoc <<\(opener.name) is not closed by a line '\(opener.name)'")
                    }
                    instruction.heredocs.append(Heredoc(name: opener.name, body: body.map { $0 + "\n" }.joined(),
                                                        stripTabs: opener.stripTabs, quoted: opener.quoted))
                }
            }
            instructions.append(instruction)
        }
        return DockerfileSyntax(directives: directives, escape: escape, instructions: instructions)
    }

    /// `# key=value` with a known-looking key; nil for any other line.
    private static func directive(_ line: String) -> (String, String)? {
        let t = line.trimmingWhitespace()
        guard t.hasPrefix("#") else { return nil }
        let body = String(t.dropFirst()).trimmingWhitespace()
        guard let eq = body.firstIndex(of: "=") else { return nil }
        let key = String(body[..<eq]).trimmingWhitespace().lowercased()
        guard !key.isEmpty, key.allSatisfy({ $0.isLetter }) else { return nil }
        return (key, String(body[body.index(after: eq)...]).trimmingWhitespace())
    }

    /// The line without its trailing escape character when it continues on the next line.
    private static func continued(_ line: String, escape: Character) -> String? {
        let t = line.trimmingTrailingWhitespace()
        guard t.last == escape else { return nil }
        return String(t.dropLast())
    }

    private static func split(_ logical: String, line: Int, file: String) throws -> RawInstruction {
        var rest = Substring(logical)
        let keywordEnd = rest.firstIndex(where: { $0 == " " || $0 == "\t" }) ?? rest.endIndex
        let keyword = rest[..<keywordEnd].uppercased()
        guard keyword.allSatisfy({ $0.isLetter }) else {
            throw DockerfileError(file: file, line: line, message: "'\(rest[..<keywordEnd])' is not an instruction")
        }
        rest = rest[keywordEnd...].drop(while: { $0 == " " || $0 == "\t" })
        var flags: [(String, String)] = []
        // Flags: leading `--name[=value]` words.
        while rest.hasPrefix("--") {
            let end = rest.firstIndex(where: { $0 == " " || $0 == "\t" }) ?? rest.endIndex
            let word = rest[rest.index(rest.startIndex, offsetBy: 2)..<end]
            if word.isEmpty { break }
            if let eq = word.firstIndex(of: "=") {
                flags.append((String(word[..<eq]).lowercased(), unquoteFlag(String(word[word.index(after: eq)...]))))
            } else {
                flags.append((String(word).lowercased(), ""))
            }
            rest = rest[end...].drop(while: { $0 == " " || $0 == "\t" })
        }
        return RawInstruction(keyword: keyword, flags: flags, rest: String(rest).trimmingTrailingWhitespace(), heredocs: [], line: line)
    }

    private static func unquoteFlag(_ value: String) -> String {
        if value.count >= 2, let f = value.first, f == "\"" || f == "'", value.last == f { return String(value.dropFirst().dropLast()) }
        return value
    }

    struct Opener { var name: String; var stripTabs: Bool; var quoted: Bool }

    /// Heredoc openers in an instruction's arguments: `<<WORD`, `<<-WORD`, `<<"WORD"`, `<<'WORD'`.
    static func heredocOpeners(_ rest: String) -> [Opener] {
        var out: [Opener] = []
        let chars = Array(rest)
        var i = 0
        var quote: Character?
        while i < chars.count {
            let c = chars[i]
            if let q = quote {
                if c == q { quote = nil }
                i += 1
                continue
            }
            if c == "'" || c == "\"" {
                // A quoted `<<` is not an opener; but a quoted heredoc word follows `<<` directly.
                quote = c
                i += 1
                continue
            }
            if c == "<" && i + 1 < chars.count && chars[i + 1] == "<" && (i == 0 || chars[i - 1] == " " || chars[i - 1] == "\t") {
                var j = i + 2
                var strip = false
                if j < chars.count && chars[j] == "-" { strip = true; j += 1 }
                var quoted = false
                var name = ""
                if j < chars.count, chars[j] == "\"" || chars[j] == "'" {
                    let q = chars[j]
                    quoted = true
                    j += 1
                    while j < chars.count && chars[j] != q { name.append(chars[j]); j += 1 }
                    j += 1
                } else {
                    while j < chars.count, chars[j].isLetter || chars[j].isNumber || chars[j] == "_" || chars[j] == "-" || chars[j] == "." {
                        name.append(chars[j])
                        j += 1
                    }
                }
                if !name.isEmpty { out.append(Opener(name: name, stripTabs: strip, quoted: quoted)) }
                i = j
                continue
            }
            i += 1
        }
        return out
    }
}

extension String {
    func trimmingWhitespace() -> String { trimmingLeadingWhitespace().trimmingTrailingWhitespace() }
    func trimmingLeadingWhitespace() -> String { String(drop(while: { $0 == " " || $0 == "\t" })) }
    func trimmingTrailingWhitespace() -> String {
        var s = Substring(self)
        while let c = s.last, c == " " || c == "\t" { s = s.dropLast() }
        return String(s)
    }
}
