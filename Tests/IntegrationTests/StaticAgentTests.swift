import Foundation
import Testing

/// The release agent built by `make agent` (which `make test` runs first).
let releaseAgent: String = {
    let here = (#filePath as NSString).deletingLastPathComponent
    return URL(fileURLWithPath: here + "/../../.build/release/syncd-agent").standardizedFileURL.path
}()

@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: releaseAgent), "build it with `make agent`"))
struct StaticAgentTests {
    @Test func agentIsOneSelfContainedFile() throws {
        let r = try run("/usr/bin/ldd", [releaseAgent])
        #expect(r.status == 0, "\(r.stderr)")
        let libraries = r.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        for line in libraries {
            let allowed = ["linux-vdso", "libc.so", "libm.so", "libz.so", "libstdc++", "libgcc_s", "ld-linux", "libpthread", "libdl", "librt"]
            #expect(allowed.contains { line.hasPrefix($0) || line.contains("/" + $0) }, "unexpected dependency: \(line)")
        }
        #expect(!r.stdout.contains("libswift"))
        #expect(!r.stdout.contains("libssh2"))
        #expect(!r.stdout.contains("Foundation"))
        // Statically linked Foundation would add some 60 MB (ICU data), which every host downloads once and the
        // agent hashes at every start; nothing the agent links may import it.
        let size = try FileManager.default.attributesOfItem(atPath: releaseAgent)[.size] as? Int ?? 0
        #expect(size < 32 << 20, "the agent is \(size >> 20) MiB: did a module it links start importing Foundation?")
    }

    @Test func pushWorksWithTheStaticAgent() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "print('static')\n")
        try f.write("data/x.bin", randomBytes(500_000, seed: 5))
        let r = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"],
                        env: ["XDG_STATE_HOME": f.state, "SYNCD_AGENT": releaseAgent])
        #expect(r.status == 0, "\(r.stderr)")
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
    }
}
