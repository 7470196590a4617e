import Foundation
import Testing

/// docs/JSON.md as data: each object's keys with their types, read from its tables.
struct JSONContract {
    indirect enum Kind: Equatable {
        case int, number, string, bool
        case list(Kind)
        case object(String)

        /// The kind without object names: what "one type everywhere" compares.
        var shape: String {
            switch self {
            case .int: return "int"
            case .number: return "number"
            case .string: return "string"
            case .bool: return "bool"
            case .list(let inner): return "[\(inner.shape)]"
            case .object: return "object"
            }
        }
    }

    struct Field: Equatable {
        let kind: Kind
        let optional: Bool
    }

    var objects: [String: [String: Field]] = [:]

    static func load() throws -> JSONContract {
        let path = (#filePath as NSString).deletingLastPathComponent + "/../../docs/JSON.md"
        return try JSONContract(markdown: String(contentsOfFile: path, encoding: .utf8))
    }

    init(markdown: String) throws {
        var current: String?
        for line in markdown.split(separator: "\n").map(String.init) {
            if line.hasPrefix("### ") {
                current = String(line.dropFirst(4)).trimmingCharacters(in: .whitespaces)
                objects[current!] = [:]
                continue
            }
            guard let name = current, line.hasPrefix("| `") else { continue }
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 3 else { continue }
            let key = cells[1].trimmingCharacters(in: CharacterSet(charactersIn: "`"))
            var type = cells[2]
            let optional = type.hasSuffix("?")
            if optional { type.removeLast() }
            guard let kind = Self.kind(type) else { throw FixtureError("docs/JSON.md, \(name).\(key): unknown type '\(cells[2])'") }
            objects[name]![key] = Field(kind: kind, optional: optional)
        }
    }

    static func kind(_ text: String) -> Kind? {
        switch text {
        case "int": return .int
        case "number": return .number
        case "string": return .string
        case "bool": return .bool
        default:
            if text.hasPrefix("[") && text.hasSuffix("]") { return kind(String(text.dropFirst().dropLast())).map { .list($0) } }
            if text.hasPrefix("{") && text.hasSuffix("}") { return .object(String(text.dropFirst().dropLast())) }
            return nil
        }
    }

    /// What is wrong with `value` as the object `name`, each problem with where it is.
    func problems(_ value: Any, as name: String, at path: String = "$") -> [String] {
        guard let fields = objects[name] else { return ["\(path): no object '\(name)' in docs/JSON.md"] }
        guard let object = value as? [String: Any] else { return ["\(path): not an object (\(name))"] }
        var out: [String] = []
        for (key, item) in object {
            guard let field = fields[key] else { out.append("\(path).\(key): not in docs/JSON.md's \(name)"); continue }
            if item is NSNull {
                if !field.optional { out.append("\(path).\(key): null, but not optional") }
                continue
            }
            out += problems(item, kind: field.kind, at: "\(path).\(key)")
        }
        for (key, field) in fields where !field.optional && object[key] == nil { out.append("\(path).\(key): missing (\(name))") }
        return out
    }

    private func problems(_ value: Any, kind: Kind, at path: String) -> [String] {
        let isBool = String(describing: type(of: value)).contains("Boolean")
        switch kind {
        case .int:
            guard !isBool, let n = value as? NSNumber, Double(exactly: n.doubleValue).map({ $0.rounded() == $0 }) == true else {
                return ["\(path): not an int: \(value)"]
            }
        case .number:
            guard !isBool, value is NSNumber else { return ["\(path): not a number: \(value)"] }
        case .string:
            guard value is String else { return ["\(path): not a string: \(value)"] }
        case .bool:
            guard isBool else { return ["\(path): not a bool: \(value)"] }
        case .list(let inner):
            guard let list = value as? [Any] else { return ["\(path): not a list"] }
            return list.enumerated().flatMap { problems($0.element, kind: inner, at: "\(path)[\($0.offset)]") }
        case .object(let name):
            return problems(value, as: name, at: path)
        }
        return []
    }
}

/// Issue 27, item 6: every command's `--json` against docs/JSON.md, run for real.
@Suite(.serialized)
struct JSONContractTests {
    @Test func theDocumentGivesEachKeyOneType() throws {
        let contract = try JSONContract.load()
        #expect(contract.objects.count >= 30, "\(contract.objects.keys.sorted())")
        var shapes: [String: (String, String)] = [:]
        for (name, fields) in contract.objects {
            for (key, field) in fields {
                if let (shape, other) = shapes[key] {
                    #expect(shape == field.kind.shape, "`\(key)` is \(shape) in \(other) but \(field.kind.shape) in \(name)")
                } else {
                    shapes[key] = (field.kind.shape, name)
                }
                if case .object(let inner) = field.kind { #expect(contract.objects[inner] != nil, "\(name).\(key): no \(inner)") }
                if case .list(.object(let inner)) = field.kind { #expect(contract.objects[inner] != nil, "\(name).\(key): no \(inner)") }
            }
        }
        #expect(shapes["conflicts"]?.0 == "[object]" && shapes["remote"]?.0 == "string" && shapes["snapshot"]?.0 == "string")
    }

    /// Runs `arguments` and checks what it printed as the object `name`; returns it.
    @discardableResult
    func check(_ name: String, _ arguments: [String], env: [String: String], cwd: String? = nil, status: Set<Int32> = [0],
               sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        let contract = try JSONContract.load()
        let r = try run(binDirectory() + "/syncctl", arguments, env: env, cwd: cwd)
        #expect(status.contains(r.status), "syncctl \(arguments.joined(separator: " ")): status \(r.status): \(r.stderr)",
                sourceLocation: sourceLocation)
        #expect(!r.stdout.contains("\\/"), "an escaped slash in \(arguments): \(r.stdout)", sourceLocation: sourceLocation)
        #expect(r.stdout.split(separator: "\n").count == 1, "one line of JSON: \(r.stdout)", sourceLocation: sourceLocation)
        guard let object = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            Issue.record("syncctl \(arguments.joined(separator: " ")) printed no JSON object: \(r.stdout) \(r.stderr)", sourceLocation: sourceLocation)
            return [:]
        }
        let problems = contract.problems(object, as: name)
        #expect(problems.isEmpty, "syncctl \(arguments.joined(separator: " ")) against \(name):\n\(problems.joined(separator: "\n"))",
                sourceLocation: sourceLocation)
        #expect(object["schema"] as? Int == 1, sourceLocation: sourceLocation)
        return object
    }

    @Test func everyProjectCommandPrintsWhatTheDocumentSays() throws {
        let f = try SyncFixture()
        let env = ["XDG_STATE_HOME": f.state]
        try f.write("src/model.py", "v1\n")
        try f.write("data/a.bin", randomBytes(300_000, seed: 8))
        try f.write("Dockerfile", "FROM scratch\nCOPY src /src\n")
        let first = try check("sync", ["push", f.project, "--json"], env: env)
        #expect(first["project"] as? String == f.project && first["remote"] as? String == "local:" + f.remoteRoot)

        // A conflict: changed on both sides.
        try f.write("src/model.py", "local edit\n")
        try f.write("src/model.py", "remote edit!\n", in: f.remoteProject)
        try f.age("src/model.py", in: f.remoteProject)
        let conflicted = try check("sync", ["push", f.project, "--json"], env: env, status: [3])
        #expect((conflicted["conflicts"] as? [[String: Any]])?.first?["path"] as? String == "src/model.py", "\(conflicted)")
        let listed = try check("conflict-list", ["conflicts", f.project, "--json"], env: env)
        #expect((listed["conflicts"] as? [Any])?.count == 1)
        let resolved = try check("sync", ["resolve", "src/model.py", "--keep", "local", "--dir", f.project, "--json"], env: env)
        #expect((resolved["kept"] as? [Any])?.count == 1, "\(resolved)")

        try f.write("src/new.py", "n = 1\n")
        let plan = try check("push-plan", ["push", "-n", f.project, "--json"], env: env)
        #expect((plan["changes"] as? [Any])?.isEmpty == false)
        try check("path-list", ["ls", f.project, "--json"], env: env)
        try check("tree-summary", ["ls", "--summary", f.project, "--json"], env: env)
        try check("verdicts", ["ls", "--why", "src/new.py", "--why", "output/x", "--json"], env: env, cwd: f.project)
        try check("chunk-list", ["chunks", f.project + "/data/a.bin", "--json"], env: env)
        try check("build-plan", ["plan", f.project, "--json"], env: env)
        try f.write("output/score.txt", "0.9\n", in: f.remoteProject)
        try f.age("output/score.txt", in: f.remoteProject)
        let pulled = try check("sync", ["pull", f.project, "--json"], env: env)
        #expect(pulled["direction"] as? String == "pull" && pulled["files_changed"] as? Int == 1, "\(pulled)")

        // The daemon's view.
        let daemon = try TestDaemon(f)
        defer { withExtendedLifetime(daemon) {} }
        let daemonEnv = daemon.env
        #expect(try run(binDirectory() + "/syncctl", ["push", "--wait", f.project], env: daemonEnv).status == 0)
        let status = try check("status", ["status", "--json"], env: daemonEnv)
        let project = (status["projects"] as? [[String: Any]])?.first
        #expect(project?["project"] as? String == f.project && project?["remote"] as? String == "local:" + f.remoteRoot, "\(status)")
        try check("sync", ["push", "--wait", f.project, "--json"], env: daemonEnv)
    }

    @Test(.enabled(if: seaweedAvailable, "needs SeaweedFS's weed (make test-deps)"))
    func everyStoreCommandPrintsWhatTheDocumentSays() throws {
        let server = try SeaweedServer.shared.get()
        let f = try SyncFixture()
        let bucket = try MultiHostTests.newBucket(in: server)
        try "name: proj\nremote: local:\(f.remoteRoot)\nstore: s3://\(bucket)/team\nendpoint: \(server.endpoint)\n"
            .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        let env = MultiHostTests.env(f)
        try f.write("src/a.py", "a = 1\n")
        let pushed = try check("sync", ["push", f.project, "--json"], env: env)
        #expect(pushed["snapshot"] is String && pushed["bytes_uploaded"] is Int, "\(pushed)")
        try f.write("src/a.py", "a = 2\n")
        try check("sync", ["push", f.project, "--json"], env: env)
        let list = try check("snapshot-list", ["snapshots", f.project, "--json"], env: env)
        let first = (list["snapshots"] as? [[String: Any]])?.first
        #expect(first?["snapshot"] as? String == pushed["snapshot"] as? String, "\(list)")
        try check("store-check", ["store", "check", f.project, "--json"], env: env)
        try check("store-repair", ["store", "repair", f.project, "--json"], env: env)
        try check("sync", ["restore", (pushed["snapshot"] as? String) ?? "?", "--to", f.base + "/restored", "--dir", f.project, "--json"], env: env)
        try check("store-gc", ["store", "gc", f.project, "--keep", "1", "--grace", "0", "--json"], env: env)
    }
}
