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

/// True when a symlink at `linkPath` (relative to a tree root) with `target` resolves, lexically,
/// to a place inside the tree. Absolute targets are never inside.
public func symlinkStaysInside(linkPath: String, target: String) -> Bool {
    if target.isEmpty || target.hasPrefix("/") { return false }
    var parent = linkPath
    if let slash = parent.lastIndex(of: "/") { parent = String(parent[..<slash]) } else { parent = "" }
    let resolved = cleanPath(parent.isEmpty ? target : parent + "/" + target)
    return resolved != ".." && !resolved.hasPrefix("../") && !resolved.hasPrefix("/")
}
