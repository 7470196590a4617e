import Glibc
import SyncSystem

let O_WRONLY_CREAT_TRUNC = O_WRONLY | O_CREAT | O_TRUNC

/// A deterministic pseudo-random generator for test data.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A temporary directory removed when the value goes away.
final class TempDir {
    let path: String
    init() throws {
        var template = Array("/tmp/syncd-test-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw SystemError(call: "mkdtemp", path: nil, errno: errno) }
        path = String(cString: p)
    }
    deinit {
        if let tree = try? Tree(rootPath: "/tmp", create: false) {
            try? Tree.removeTree(at: tree.root, name: Array(path.dropFirst(5).utf8), shown: path)
        }
    }
}
