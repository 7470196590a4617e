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

/// Why a symlink at `linkPath` with target `target` (bytes) could resolve outside the tree, or nil when it
/// cannot, whatever other links lie around it.
///
/// A target is judged by where it resolves, not by its text alone: the kernel takes `..` from wherever the
/// links before it led, so `a/..` with `a -> ..` is the parent of the tree's root although it reads as `.`. A
/// target is accepted when it is relative, its `..` components all come first and climb no higher than the
/// link's own directory (which is a real directory of the tree), and only names follow them. By induction over
/// a chain, every link then resolves inside the tree, in any order of placement: each name leads to a real
/// directory or to another such link. Absolute, empty and `x/..` targets are refused.
public func symlinkEscapes(linkPath: RelativePath, target: [UInt8]) -> String? {
    if target.isEmpty { return "is empty" }
    if target[0] == UInt8(ascii: "/") { return "is absolute" }
    var depth = linkPath.parentComponents.count
    var named = false
    for part in target.split(separator: UInt8(ascii: "/")) {
        if part.count == 1 && part[part.startIndex] == UInt8(ascii: ".") { continue }
        if part.count == 2 && part.allSatisfy({ $0 == UInt8(ascii: ".") }) {
            if named { return "goes up (..) after a name, which a link there could take out of the project" }
            depth -= 1
            if depth < 0 { return "points outside the project" }
            continue
        }
        named = true
    }
    return nil
}

/// True when a symlink at `linkPath` with target `target` resolves inside the tree (see `symlinkEscapes`).
public func symlinkStaysInside(linkPath: RelativePath, target: [UInt8]) -> Bool {
    symlinkEscapes(linkPath: linkPath, target: target) == nil
}
