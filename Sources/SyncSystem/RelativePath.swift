/// Why a path from the outside (the wire, a config) was refused.
public struct PathError: Error, CustomStringConvertible, Equatable {
    /// The path as shown to a person (escaped where it is not plain text; see `displayPath`).
    public let path: String
    public let reason: String
    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }
    public var description: String { "refused path '\(path)': \(reason)" }
}

let slash = UInt8(ascii: "/")
let dot = UInt8(ascii: ".")

/// A validated path relative to a tree root: no leading '/', no empty, '.' or '..' components, no NUL.
///
/// Linux names are byte strings, so a path is kept as the bytes the file system holds: nothing assumes UTF-8 or
/// a Unicode normalization form. Equality, hashing and order are bytewise, so `café` in NFC and in NFD are two
/// paths, as they are two files on disk. People see `description` (escaped where a name is not plain text),
/// JSON and other text formats carry `text` (lossless).
public struct RelativePath: Hashable, Comparable, CustomStringConvertible, Sendable {
    /// The slash-separated bytes, as they travel on the wire and are stored.
    public let bytes: [UInt8]

    /// Checks `bytes` and keeps them.
    public init(bytes: [UInt8]) throws {
        if let reason = Self.problem(bytes) { throw PathError(path: displayPath(bytes.prefix(4096)), reason: reason) }
        self.bytes = bytes
    }

    /// The UTF-8 bytes of `string` (a path from a config file or a test).
    public init(_ string: String) throws { try self.init(bytes: Array(string.utf8)) }

    /// Bytes already known to be valid (a valid path joined with a valid name).
    init(unchecked bytes: [UInt8]) { self.bytes = bytes }

    /// What is wrong with `bytes` as a relative path, or nil.
    static func problem(_ bytes: [UInt8]) -> String? {
        if bytes.isEmpty { return "empty path" }
        if bytes.count > 4096 { return "longer than 4096 bytes" }
        if bytes.contains(0) { return "contains a NUL byte" }
        if bytes[0] == slash { return "absolute paths are not allowed" }
        var start = 0
        while start <= bytes.count {
            let end = bytes[start...].firstIndex(of: slash) ?? bytes.count
            let length = end - start
            if length == 0 { return "empty component (doubled or trailing '/')" }
            if length <= 2 && bytes[start] == dot && (length == 1 || bytes[start + 1] == dot) {
                return "'\(length == 1 ? "." : "..")' components are not allowed"
            }
            if length > 255 { return "a component is longer than 255 bytes" }
            start = end + 1
        }
        return nil
    }

    /// True when `name` can be one component of a path: not empty, '.' or '..', no '/' or NUL, at most 255 bytes.
    public static func isValidName<C: Collection>(_ name: C) -> Bool where C.Element == UInt8 {
        guard !name.isEmpty, name.count <= 255, !name.contains(slash), !name.contains(0) else { return false }
        return !(name.count <= 2 && name.allSatisfy { $0 == dot })
    }

    /// The path of `name` inside this one; throws when `name` is not a single valid component.
    public func appending<C: Collection>(_ name: C) throws -> RelativePath where C.Element == UInt8 {
        guard Self.isValidName(name) else {
            throw PathError(path: displayPath(bytes + [slash] + name), reason: "not a valid file name")
        }
        return RelativePath(unchecked: bytes + [slash] + name)
    }

    /// A top-level path of one component; throws when `name` is not a valid one.
    public static func top<C: Collection>(_ name: C) throws -> RelativePath where C.Element == UInt8 {
        guard isValidName(name) else { throw PathError(path: displayPath(name), reason: "not a valid file name") }
        return RelativePath(unchecked: Array(name))
    }

    /// The components, each a single file name. Made on demand: a scan holds 100k paths, and a stored array
    /// would cost each of them another allocation.
    public var components: [[UInt8]] { bytes.split(separator: slash).map(Array.init) }

    /// The first component.
    public var firstComponent: ArraySlice<UInt8> { bytes[..<(bytes.firstIndex(of: slash) ?? bytes.count)] }

    /// The path's last component.
    public var name: [UInt8] {
        guard let cut = bytes.lastIndex(of: slash) else { return bytes }
        return Array(bytes[(cut + 1)...])
    }

    /// The parent's components (empty at top level).
    public var parentComponents: [[UInt8]] { components.dropLast() }

    /// The parent directory; nil at top level.
    public var parent: RelativePath? {
        guard let cut = bytes.lastIndex(of: slash) else { return nil }
        return RelativePath(unchecked: Array(bytes[..<cut]))
    }

    /// The parent's bytes; empty at top level.
    public var parentBytes: [UInt8] {
        guard let cut = bytes.lastIndex(of: slash) else { return [] }
        return Array(bytes[..<cut])
    }

    /// True when `self` is `other` or lies below it.
    public func isWithin(_ other: RelativePath) -> Bool {
        bytes.count >= other.bytes.count && bytes.starts(with: other.bytes)
            && (bytes.count == other.bytes.count || bytes[other.bytes.count] == slash)
    }

    /// True when this path's last component starts with `prefix` (ASCII).
    public func nameHasPrefix(_ prefix: String) -> Bool {
        let start = (bytes.lastIndex(of: slash).map { $0 + 1 }) ?? 0
        return bytes[start...].starts(with: prefix.utf8)
    }

    /// The path for people: as it is when it is plain text, else quoted with C escapes (`"caf\xe9.jpg"`).
    public var description: String { displayPath(bytes) }

    /// The path as lossless text (see `PathText`): the path itself when it is UTF-8, with escapes otherwise.
    public var text: String { PathText.encode(bytes) }

    /// The path from its lossless text form; throws when the text is not one, or the path is not valid.
    public init(text: String) throws {
        guard let bytes = PathText.decode(text) else { throw PathError(path: text, reason: "not a syncd path text") }
        try self.init(bytes: bytes)
    }

    public static func < (a: RelativePath, b: RelativePath) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }

    /// The bytes in one call (an array hashes element by element); a scan hashes 100k paths.
    public func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }
}

extension RelativePath: Codable {
    /// Encoded as its lossless text.
    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        try self.init(text: try container.decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(text)
    }
}

/// Bytes joined as `prefix/name` (just `name` when `prefix` is empty).
public func joinPath(_ prefix: [UInt8], _ name: [UInt8]) -> [UInt8] {
    guard !prefix.isEmpty else { return name }
    var joined: [UInt8] = []
    joined.reserveCapacity(prefix.count + 1 + name.count)
    joined.append(contentsOf: prefix)
    joined.append(slash)
    joined.append(contentsOf: name)
    return joined
}

/// A file name or path for people: unchanged when it is valid UTF-8 with no control characters (and does not
/// start with a double quote); otherwise in double quotes with `\\`, `\"`, `\n`, `\t`, `\r` and `\xHH` for other
/// control characters and for bytes that are not UTF-8. Two different names never look the same.
public func displayPath<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    let array = Array(bytes)
    if let text = String(validating: array, as: UTF8.self), isPlain(text) { return text }
    var out = "\""
    var i = 0
    while i < array.count {
        let length = utf8SequenceLength(array, at: i)
        if length == 0 {
            out += hexEscape(array[i])
            i += 1
            continue
        }
        let scalar = String(decoding: array[i..<(i + length)], as: UTF8.self).unicodeScalars.first!
        switch scalar {
        case "\\": out += "\\\\"
        case "\"": out += "\\\""
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\r": out += "\\r"
        default:
            if isControl(scalar) {
                for b in array[i..<(i + length)] { out += hexEscape(b) }
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        i += length
    }
    return out + "\""
}

/// Text from another machine (an agent's error, a skip reason) for people: control characters (an escape
/// sequence that would move the cursor, recolour or retitle the terminal, a carriage return that would hide
/// what came before) become `\xHH`, `\r` or `\n`; the rest is unchanged.
public func displayText(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: isControl) else { return text }
    var out = ""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if isControl(scalar) {
                for b in String(scalar).utf8 { out += hexEscape(b) }
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out
}

private func isPlain(_ text: String) -> Bool {
    if text.hasPrefix("\"") { return false }
    return !text.unicodeScalars.contains { isControl($0) }
}

private func isControl(_ scalar: Unicode.Scalar) -> Bool {
    scalar.value < 0x20 || (scalar.value >= 0x7F && scalar.value < 0xA0) || scalar.value == 0xFDD0
}

private func hexEscape(_ byte: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return "\\x" + String(digits[Int(byte >> 4)]) + String(digits[Int(byte & 0xF)])
}

/// The length of the valid UTF-8 sequence starting at `i`, or 0 when the byte there does not start one.
func utf8SequenceLength(_ bytes: [UInt8], at i: Int) -> Int {
    let b0 = bytes[i]
    if b0 < 0x80 { return 1 }
    let length: Int
    var low: UInt8 = 0x80, high: UInt8 = 0xBF
    switch b0 {
    case 0xC2...0xDF: length = 2
    case 0xE0: length = 3; low = 0xA0
    case 0xE1...0xEC, 0xEE...0xEF: length = 3
    case 0xED: length = 3; high = 0x9F
    case 0xF0: length = 4; low = 0x90
    case 0xF1...0xF3: length = 4
    case 0xF4: length = 4; high = 0x8F
    default: return 0
    }
    guard i + length <= bytes.count else { return 0 }
    guard bytes[i + 1] >= low && bytes[i + 1] <= high else { return 0 }
    for k in 2..<max(length, 2) where !(0x80...0xBF).contains(bytes[i + k]) { return 0 }
    return length
}

/// Lossless text for byte strings, so that names travel through JSON (and anything else that holds Swift
/// strings) byte-exact.
///
/// A name that is valid UTF-8 is its own text. A byte that is not part of valid UTF-8 becomes U+FDD0 followed
/// by the scalar of the same value (U+0080…U+00FF), and a U+FDD0 in a name (a noncharacter, never seen in
/// practice) is doubled. Decoding reverses both. What syncctl prints as JSON rewrites each such pair to a
/// `\udcXX` escape (`publicJSON`), the surrogate escape of PEP 383: `os.fsencode(json.loads(...))` in Python
/// gives the name's bytes back.
public enum PathText {
    static let marker = Unicode.Scalar(UInt32(0xFDD0))!

    public static func encode(_ bytes: [UInt8]) -> String {
        if let text = String(validating: bytes, as: UTF8.self), !text.unicodeScalars.contains(marker) { return text }
        var scalars = String.UnicodeScalarView()
        var i = 0
        while i < bytes.count {
            let length = utf8SequenceLength(bytes, at: i)
            if length == 0 {
                scalars.append(marker)
                scalars.append(Unicode.Scalar(bytes[i]))
                i += 1
                continue
            }
            let scalar = String(decoding: bytes[i..<(i + length)], as: UTF8.self).unicodeScalars.first!
            scalars.append(scalar)
            if scalar == marker { scalars.append(marker) }
            i += length
        }
        return String(scalars)
    }

    /// The bytes of a text made by `encode`; nil when the text holds a marker that `encode` cannot have made.
    public static func decode(_ text: String) -> [UInt8]? {
        guard text.unicodeScalars.contains(marker) else { return Array(text.utf8) }
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        var iterator = text.unicodeScalars.makeIterator()
        while let scalar = iterator.next() {
            guard scalar == marker else {
                out.append(contentsOf: String(scalar).utf8)
                continue
            }
            guard let next = iterator.next() else { return nil }
            if next == marker {
                out.append(contentsOf: String(marker).utf8)
            } else if next.value >= 0x80 && next.value <= 0xFF {
                out.append(UInt8(next.value))
            } else {
                return nil
            }
        }
        return out
    }

    /// JSON text (as JSONEncoder or JSONSerialization wrote it) with every escaped byte written as `\udcXX` and a
    /// literal U+FDD0 as `\ufdd0`: what syncctl prints. Only marker pairs change; everything else is kept.
    public static func publicJSON(_ json: [UInt8]) -> String {
        let mark: [UInt8] = [0xEF, 0xB7, 0x90]
        guard json.firstRange(of: mark) != nil else { return String(decoding: json, as: UTF8.self) }
        var out: [UInt8] = []
        out.reserveCapacity(json.count + 64)
        var i = 0
        while i < json.count {
            if json[i] == 0xEF, i + 3 <= json.count, json[i..<(i + 3)].elementsEqual(mark) {
                let rest = json[(i + 3)...]
                if rest.starts(with: mark) {
                    out.append(contentsOf: Array("\\ufdd0".utf8))
                    i += 6
                    continue
                }
                if rest.count >= 2, let first = rest.first, first == 0xC2 || first == 0xC3 {
                    let value = (UInt8(first & 0x1F) << 6) | (rest[rest.startIndex + 1] & 0x3F)
                    let hex = Array("0123456789abcdef".utf8)
                    out.append(contentsOf: Array("\\udc".utf8))
                    out.append(hex[Int(value >> 4)])
                    out.append(hex[Int(value & 0xF)])
                    i += 5
                    continue
                }
            }
            out.append(json[i])
            i += 1
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Calls `body` with `name` as a NUL-terminated C string (file names are at most 255 bytes, paths 4096).
@inline(__always)
public func withCName<R>(_ name: [UInt8], _ body: (UnsafePointer<CChar>) throws -> R) rethrows -> R {
    try withUnsafeTemporaryAllocation(of: CChar.self, capacity: name.count + 1) { buffer in
        name.withUnsafeBytes { source in
            if source.count > 0 { UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: source.baseAddress!, byteCount: source.count) }
        }
        buffer[name.count] = 0
        return try body(UnsafePointer(buffer.baseAddress!))
    }
}

extension RelativePath {
    /// The path of `name` beside this one (in the same directory).
    public func replacingName(with name: [UInt8]) throws -> RelativePath {
        if let parent { return try parent.appending(name) }
        return try RelativePath.top(name)
    }
}

/// The name under which the losing version of a conflict is kept beside the file, as Syncthing does:
/// `NAME.sync-conflict-<stamp>.EXT` (`model.sync-conflict-20261201-073616.pt`), or
/// `NAME.sync-conflict-<stamp>-<attempt>.EXT` when an earlier attempt's name was taken. The extension is what
/// follows the last '.' unless that is the first byte (`.env` has none). The stem is shortened when the whole
/// would pass 255 bytes. Default ignore rules leave these copies out of every sync.
public func conflictCopyName(_ name: [UInt8], stamp: String, attempt: Int = 0) -> [UInt8] {
    var stem = name
    var ext: [UInt8] = []
    if let cut = name.lastIndex(of: dot), cut > 0 {
        stem = Array(name[..<cut])
        ext = Array(name[cut...])
    }
    let tag = Array((".sync-conflict-" + stamp + (attempt > 0 ? "-\(attempt)" : "")).utf8)
    let room = 255 - tag.count - ext.count
    if room < 1 {
        ext = []
    }
    if stem.count > max(room, 1) {
        let wasText = String(validating: stem, as: UTF8.self) != nil
        stem = Array(stem.prefix(max(room, 1)))
        // A name that was UTF-8 is cut at a character boundary, so it stays UTF-8.
        while wasText && stem.count > 1 && String(validating: stem, as: UTF8.self) == nil { stem.removeLast() }
    }
    return stem + tag + ext
}
