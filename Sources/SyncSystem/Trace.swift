#if canImport(Glibc)
import Glibc
#endif

/// Phase timings on stderr when `SYNCD_TRACE=1`: where a push or pull spends its wall time, from the first mark
/// (`syncctl: started`) on, with the resident set beside each.
public enum Trace {
    public static let enabled = getenv("SYNCD_TRACE").map { String(cString: $0) == "1" } ?? false
    static let origin = monotonicNanos()

    public static func mark(_ what: @autoclosure () -> String) {
        guard enabled else { return }
        let start = origin  // first, so that the first mark reads 0
        let tenths = (monotonicNanos() - start) / 100_000
        let ms = "\(tenths / 10).\(tenths % 10)"
        let mb = "\(residentMegabytes())"
        printError("[" + String(repeating: " ", count: max(0, 8 - ms.count)) + ms + " ms "
                   + String(repeating: " ", count: max(0, 5 - mb.count)) + mb + " MB] " + what())
    }
}

/// This process's resident set in MB (0 where unknown).
func residentMegabytes() -> Int { Int((Platform.residentBytes() ?? 0) >> 20) }
