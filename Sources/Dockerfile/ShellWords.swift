/// Word splitting and variable expansion the way the Dockerfile frontend does it for instruction arguments
/// (`COPY $SRC ./`, `FROM base:${TAG:-latest}`): whitespace separates words outside quotes; single quotes are
/// literal; double quotes group and still expand; the escape character takes the next character literally.
/// Expansions: `$v`, `${v}`, `${v:-w}`, `${v-w}`, `${v:+w}`, `${v+w}`, `${v:?message}`, `${v?message}`.
public struct ShellWords {
    public let escape: Character
    /// A variable's value, nil when it is not set.
    public let lookup: (String) -> String?

    public init(escape: Character = "\\", lookup: @escaping (String) -> String?) {
        self.escape = escape
        self.lookup = lookup
    }

    public struct ExpansionError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The words of `text`, each expanded.
    public func words(_ text: String) throws -> [String] {
        var scanner = Scanner(chars: Array(text), escape: escape)
        var out: [String] = []
        var word = ""
        var inWord = false
        while let c = scanner.peek() {
            if c == " " || c == "\t" || c == "\n" {
                scanner.advance()
                if inWord { out.append(word); word = ""; inWord = false }
                continue
            }
            inWord = true
            word += try unit(&scanner)
        }
        if inWord { out.append(word) }
        return out
    }

    /// `text` as one word, expanded, quotes removed (JSON-form elements are expanded without splitting).
    public func expand(_ text: String) throws -> String {
        var scanner = Scanner(chars: Array(text), escape: escape)
        var out = ""
        while scanner.peek() != nil { out += try unit(&scanner) }
        return out
    }

    struct Scanner {
        let chars: [Character]
        let escape: Character
        var i = 0
        func peek(_ ahead: Int = 0) -> Character? { i + ahead < chars.count ? chars[i + ahead] : nil }
        mutating func advance() { i += 1 }
        mutating func take() -> Character? {
            defer { i += 1 }
            return peek()
        }
    }

    /// One piece of a word: a quoted run, an escaped character, an expansion or a plain character.
    private func unit(_ s: inout Scanner) throws -> String {
        let c = s.take()!
        switch c {
        case "'":
            var out = ""
            while let d = s.take() {
                if d == "'" { return out }
                out.append(d)
            }
            throw ExpansionError(description: "unterminated single quote")
        case "\"":
            var out = ""
            while let d = s.peek() {
                if d == "\"" { s.advance(); return out }
                if d == escape, let n = s.peek(1), n == "\"" || n == "$" || n == escape {
                    s.advance(); s.advance()
                    out.append(n)
                    continue
                }
                if d == "$" { s.advance(); out += try dollar(&s); continue }
                s.advance()
                out.append(d)
            }
            throw ExpansionError(description: "unterminated double quote")
        case escape:
            guard let n = s.take() else { return "" }
            return String(n)
        case "$":
            return try dollar(&s)
        default:
            return String(c)
        }
    }

    private static func isNameChar(_ c: Character) -> Bool { c == "_" || c.isLetter || c.isNumber }

    /// After a `$`: a name or a braced expression; a lone `$` stays.
    private func dollar(_ s: inout Scanner) throws -> String {
        guard let c = s.peek() else { return "$" }
        if c == "{" {
            s.advance()
            var name = ""
            while let d = s.peek(), Self.isNameChar(d) { name.append(d); s.advance() }
            guard !name.isEmpty else { throw ExpansionError(description: "bad substitution: '${' without a variable name") }
            guard let op = s.take() else { throw ExpansionError(description: "missing '}' after ${\(name)") }
            if op == "}" { return lookup(name) ?? "" }
            var colon = false
            var kind = op
            if op == ":" {
                colon = true
                guard let k = s.take() else { throw ExpansionError(description: "missing '}' after ${\(name):") }
                kind = k
            }
            guard kind == "-" || kind == "+" || kind == "?" else {
                throw ExpansionError(description: "unsupported modifier '\(colon ? ":" : "")\(kind)' in ${\(name)…}")
            }
            // The word runs to the matching '}' and is itself expanded.
            var word = ""
            while true {
                guard let d = s.peek() else { throw ExpansionError(description: "missing '}' in ${\(name)…}") }
                if d == "}" { s.advance(); break }
                word += try unit(&s)
            }
            let value = lookup(name)
            let isSet = colon ? !(value ?? "").isEmpty : value != nil
            switch kind {
            case "-": return isSet ? (value ?? "") : word
            case "+": return isSet ? word : ""
            default:
                if isSet { return value ?? "" }
                throw ExpansionError(description: "\(name): \(word.isEmpty ? "is not set" : word)")
            }
        }
        guard Self.isNameChar(c) else { return "$" }
        var name = ""
        while let d = s.peek(), Self.isNameChar(d) { name.append(d); s.advance() }
        return lookup(name) ?? ""
    }
}
