/// Lexical path cleaning with the rules of Go's `path.Clean`: collapse '//' and '.', resolve '..'
/// against earlier components, drop a trailing '/'. "" becomes ".".
public func cleanPath(_ path: String) -> String {
    if path.isEmpty { return "." }
    let rooted = path.hasPrefix("/")
    var out: [Substring] = []
    for part in path.split(separator: "/", omittingEmptySubsequences: true) {
        if part == "." { continue }
        if part == ".." {
            if let last = out.last, last != ".." {
                out.removeLast()
            } else if !rooted {
                out.append(part)
            }
            continue
        }
        out.append(part)
    }
    let joined = out.joined(separator: "/")
    if rooted { return "/" + joined }
    return joined.isEmpty ? "." : joined
}

/// True when a symlink at `linkPath` with target `target` (both bytes) resolves, lexically, to a place inside
/// the tree. Absolute and empty targets are never inside.
public func symlinkStaysInside(linkPath: RelativePath, target: [UInt8]) -> Bool {
    if target.isEmpty || target[0] == UInt8(ascii: "/") { return false }
    var depth = linkPath.parentComponents.count
    for part in target.split(separator: UInt8(ascii: "/")) {
        if part.count == 1 && part[part.startIndex] == UInt8(ascii: ".") { continue }
        if part.count == 2 && part.allSatisfy({ $0 == UInt8(ascii: ".") }) {
            depth -= 1
            if depth < 0 { return false }
            continue
        }
        depth += 1
    }
    return true
}
