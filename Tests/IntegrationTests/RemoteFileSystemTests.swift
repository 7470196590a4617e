import Foundation
import SyncSystem
import Testing

/// NTFS through ntfs-3g (FUSE) holds names as UTF-16: a name that is not UTF-8 is refused with EILSEQ, and with
/// `windows_names` a ':' with EINVAL. A real file system that cannot hold some Linux names, for the remote.
let ntfsAvailable = getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/ntfs-3g")
    && FileManager.default.isExecutableFile(atPath: "/usr/sbin/mkntfs") && FileManager.default.fileExists(atPath: "/dev/fuse")

@Suite(.serialized, .enabled(if: ntfsAvailable, "needs root, /dev/fuse and ntfs-3g (mkntfs)"))
struct RemoteFileSystemTests {
    @Test func aNameTheRemoteCannotHoldIsAnErrorNamingItAndTheRestArrives() throws {
        let f = try SyncFixture()
        let image = f.base + "/ntfs.img"
        #expect(try run("/usr/bin/truncate", ["-s", "64M", image]).status == 0)
        let made = try run("/usr/sbin/mkntfs", ["-q", "-F", "-f", image])
        #expect(made.status == 0, "\(made.stderr)")
        // ntfs-3g forks a server for the mount and its first process exits once it is mounted. It is spawned
        // directly: the server would otherwise hold a pipe of Process's and leave it waiting.
        let starter = try spawnDaemon(["/usr/bin/ntfs-3g", "-o", "windows_names", image, f.remoteRoot], env: [:], log: image + ".log")
        var status: Int32 = 0
        #expect(eventually(seconds: 20) { waitpid(starter, &status, WNOHANG) == starter })
        var root = stat(), base = stat()
        try #require(stat(f.remoteRoot, &root) == 0 && stat(f.base, &base) == 0 && root.st_dev != base.st_dev,
                     "not mounted: \((try? String(contentsOfFile: image + ".log", encoding: .utf8)) ?? "")")
        defer { _ = try? run("/usr/bin/umount", [f.remoteRoot]) }

        try writeFile(in: f.project, named: OddNames.latin1, Array("latin-1".utf8))
        try f.write("a:b.txt", "colon")
        try makeDirectory(in: f.project, named: OddNames.directory)
        try f.write("fine.txt", "fine")
        try f.write("src/ok.py", "ok")
        let r = try f.push()
        #expect(r.status == 1, "a path that did not arrive is an error, not a skip: \(r.stderr)")
        // Each name is in the report (files with one cause share a line), and each is a failure of its own.
        #expect(r.stderr.contains("the remote file system cannot hold this name"), "\(r.stderr)")
        for name in ["\"caf\\xe9.jpg\"", "a:b.txt", "\"d\\xff\\xfe\""] { #expect(r.stderr.contains(name), "\(name): \(r.stderr)") }
        let failures = (try r.json()["failures"] as? [[String: Any]]) ?? []
        #expect(failures.count == 3 && failures.allSatisfy { ($0["cause"] as? String)?.contains("cannot hold this name") == true }, "\(failures)")
        #expect(f.read("fine.txt", in: f.remoteProject) == Array("fine".utf8), "the rest of the push goes on")
        #expect(f.read("src/ok.py", in: f.remoteProject) == Array("ok".utf8))
        let leftovers = (try FileManager.default.contentsOfDirectory(atPath: f.remoteProject)).filter { $0.hasPrefix(".syncd-part.") }
        #expect(leftovers.isEmpty, "nothing half-written: \(leftovers)")
        // Still errors the next time, named again, until the user renames or ignores them.
        let again = try f.push()
        #expect(again.status == 1)
        #expect(((try again.json()["failures"] as? [Any]) ?? []).count == 3)
    }
}
