import Foundation
import Testing

/// Where moto's S3 server is: $SYNCD_MOTO, the venv `make test-deps` makes, or PATH.
let motoBinary: String? = {
    var candidates = [ProcessInfo.processInfo.environment["SYNCD_MOTO"] ?? "", "/opt/syncd-test/moto/bin/moto_server"]
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") { candidates.append("\(dir)/moto_server") }
    return candidates.first { !$0.isEmpty && FileManager.default.isExecutableFile(atPath: $0) }
}()

/// moto's S3 server on a free loopback port: a second S3 implementation, with a dialect of its own, beside
/// SeaweedFS. It takes any credentials. One for the whole test run (see `spawnWatchedServer`).
final class MotoServer: @unchecked Sendable {  // `pid` is set once, in init
    let port: Int
    let directory: String
    private var pid: pid_t = 0

    static let shared: Result<MotoServer, FixtureError> = {
        do { return .success(try MotoServer()) } catch let e as FixtureError { return .failure(e) } catch {
            return .failure(FixtureError("\(error)"))
        }
    }()

    var endpoint: String { "http://127.0.0.1:\(port)" }

    init() throws {
        guard let moto = motoBinary else { throw FixtureError("no moto_server (pip install \"moto[server]\"; make test-deps)") }
        directory = NSTemporaryDirectory() + "syncd-moto-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var lastError = ""
        for _ in 0..<5 {
            let chosen = freePortForTest()
            let child = try spawnWatchedServer([moto, "-H", "127.0.0.1", "-p", "\(chosen)"], log: directory + "/moto.log", directory: directory)
            if eventually(seconds: 30, { !portIsFree(chosen) }) {
                pid = child
                port = chosen
                return
            }
            lastError = stopWatchedServer(child, log: directory + "/moto.log")
        }
        throw FixtureError("moto_server did not start: \(lastError)")
    }

    deinit {
        if pid > 0 { stopWatchedServer(pid, log: directory + "/moto.log") }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// The S3-compatible servers the store's tests run against, by name.
enum StoreBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case seaweedfs, moto

    var testDescription: String { rawValue }

    var available: Bool {
        switch self {
        case .seaweedfs: return seaweedAvailable
        case .moto: return motoBinary != nil
        }
    }

    /// The endpoint and an identity that may write.
    func server() throws -> (endpoint: String, key: String, secret: String) {
        switch self {
        case .seaweedfs:
            let s = try SeaweedServer.shared.get()
            return (s.endpoint, SeaweedServer.admin.key, SeaweedServer.admin.secret)
        case .moto:
            return (try MotoServer.shared.get().endpoint, "AKIAMOTOTEST00000001", "motosecret")
        }
    }
}
