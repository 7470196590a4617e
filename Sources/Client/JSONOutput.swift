import Foundation
import SyncSystem

/// The one way syncctl prints JSON (docs/JSON.md): keys sorted, `/` never escaped, path bytes that are not UTF-8
/// as `\udcXX`, and every object a command prints carrying `"schema": 1` with the local project and its remote.
public enum JSONOutput {
    /// The version of the contract in docs/JSON.md; it changes only when a key changes name or type.
    public static let schema = 1

    /// `value` as the text syncctl prints.
    public static func text<T: Encodable>(_ value: T) -> String { text(value, with: encoder()) }

    /// The encoder `text` uses, for a caller that prints many values (`ls --json` of a million paths).
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    /// `value` as the text syncctl prints, with an encoder from `encoder()`.
    public static func text<T: Encodable>(_ value: T, with encoder: JSONEncoder) -> String {
        do {
            return PathText.publicJSON(Array(try encoder.encode(value)))
        } catch {
            return #"{"schema":1,"error":"the output could not be encoded"}"#
        }
    }

    /// `body`'s keys plus `schema`, `project` and `remote` (or `host`): what a command prints.
    public static func text<T: Encodable>(_ body: T, project: String?, remote: String? = nil, host: String? = nil) -> String {
        text(Report(body: body, project: project, remote: remote, host: host))
    }

    struct Report<Body: Encodable>: Encodable {
        let body: Body
        let project: String?
        let remote: String?
        let host: String?

        enum Key: String, CodingKey { case schema, project, remote, host }

        func encode(to encoder: any Encoder) throws {
            // The body's own keys and these go into one object.
            try body.encode(to: encoder)
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(JSONOutput.schema, forKey: .schema)
            try container.encodeIfPresent(project, forKey: .project)
            try container.encodeIfPresent(remote, forKey: .remote)
            try container.encodeIfPresent(host, forKey: .host)
        }
    }
}

extension Project {
    /// `body` as a command about this project prints it (see `JSONOutput`).
    public func jsonText<T: Encodable>(_ body: T) -> String {
        JSONOutput.text(body, project: directory, remote: config.remote.description)
    }
}

/// Any JSON value, for output built as dictionaries (a build plan).
public enum JSONValue: Encodable, Sendable {
    case string(String), int(Int), double(Double), bool(Bool), array([JSONValue]), object([String: JSONValue]), null

    /// Converts what JSONSerialization would take; what it would not becomes null.
    public init(_ any: Any?) {
        switch any {
        case let v as String: self = .string(v)
        case let v as Bool: self = .bool(v)
        case let v as Int: self = .int(v)
        case let v as UInt64: self = v <= UInt64(Int.max) ? .int(Int(v)) : .double(Double(v))
        case let v as Int32: self = .int(Int(v))
        case let v as Double: self = .double(v)
        case let v as [Any]: self = .array(v.map(JSONValue.init))
        case let v as [String: Any]: self = .object(v.mapValues(JSONValue.init))
        default: self = .null
        }
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .object(let fields):
            var container = encoder.container(keyedBy: AnyKey.self)
            for (key, value) in fields { try container.encode(value, forKey: AnyKey(key)) }
        case .array(let items):
            var container = encoder.unkeyedContainer()
            for item in items { try container.encode(item) }
        case .string(let v): var c = encoder.singleValueContainer(); try c.encode(v)
        case .int(let v): var c = encoder.singleValueContainer(); try c.encode(v)
        case .double(let v): var c = encoder.singleValueContainer(); try c.encode(v)
        case .bool(let v): var c = encoder.singleValueContainer(); try c.encode(v)
        case .null: var c = encoder.singleValueContainer(); try c.encodeNil()
        }
    }

    struct AnyKey: CodingKey {
        let stringValue: String
        init(_ key: String) { stringValue = key }
        init?(stringValue: String) { self.stringValue = stringValue }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }
}
