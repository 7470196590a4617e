import Foundation
import SSHTransport
import SyncConfig
import SyncSystem

// Raw exec-channel throughput through libssh2 (the ceiling for a push over the same link): writes N MB of
// incompressible data from memory to a remote command (`cat > /dev/null` unless given) and times it until
// the command has exited.
// usage: syncd-ssh-bench DESTINATION SSH_CONFIG [MEGABYTES] [REMOTE_COMMAND]
let args = CommandLine.arguments
guard args.count >= 3 else {
    printError("usage: syncd-ssh-bench DESTINATION SSH_CONFIG [MEGABYTES] [REMOTE_COMMAND]")
    exit(2)
}
let megabytes = args.count > 3 ? Int(args[3]) ?? 500 : 500
let command = args.count > 4 ? args[4] : "cat > /dev/null"
let settings = try SSHConfigFile(path: args[2]).settings(for: args[1])
let session = try SSHSession(settings: settings, options: SSHOptions())
let stream = try session.openStream(command)
var block = [UInt8](repeating: 0, count: 1 << 20)
var state: UInt64 = 7
for i in 0..<block.count { state = state &* 6364136223846793005 &+ 1442695040888963407; block[i] = UInt8(truncatingIfNeeded: state >> 33) }
let start = monotonicNanos()
for _ in 0..<megabytes { try block.withUnsafeBytes { try stream.write($0) } }
stream.closeWrite()
let status = stream.waitForExit()
let seconds = Double(monotonicNanos() - start) / 1e9
guard status == 0 else {
    printError("syncd-ssh-bench: '\(command)' exited with status \(status.map(String.init) ?? "unknown")")
    exit(1)
}
print(String(format: "raw exec channel (%@): %d MB in %.2f s = %.1f MB/s, %@", session.negotiatedMethods, megabytes, seconds,
             Double(megabytes) * 1.048576 / seconds, command))
