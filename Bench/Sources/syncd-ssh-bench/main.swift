import Foundation
import SSHTransport
import SyncConfig
import SyncSystem

// Raw exec-channel throughput through libssh2 (the ceiling for a push over the same link):
// writes N bytes of incompressible data to `cat > /dev/null` on the host and times it.
// usage: syncd-ssh-bench DESTINATION SSH_CONFIG [MEGABYTES]
let args = CommandLine.arguments
guard args.count >= 3 else {
    printError("usage: syncd-ssh-bench DESTINATION SSH_CONFIG [MEGABYTES]")
    exit(2)
}
let megabytes = args.count > 3 ? Int(args[3]) ?? 500 : 500
let settings = try SSHConfigFile(path: args[2]).settings(for: args[1])
let session = try SSHSession(settings: settings, options: SSHOptions())
let stream = try session.openStream("cat > /dev/null")
var block = [UInt8](repeating: 0, count: 1 << 20)
var state: UInt64 = 7
for i in 0..<block.count { state = state &* 6364136223846793005 &+ 1442695040888963407; block[i] = UInt8(truncatingIfNeeded: state >> 33) }
let start = monotonicNanos()
for _ in 0..<megabytes { try block.withUnsafeBytes { try stream.write($0) } }
stream.closeWrite()
_ = stream.waitForExit()
let seconds = Double(monotonicNanos() - start) / 1e9
print(String(format: "raw exec channel: %d MB in %.2f s = %.1f MB/s", megabytes, seconds, Double(megabytes) * 1.048576 / seconds))
