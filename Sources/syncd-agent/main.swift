#if canImport(Glibc)
import Glibc
#endif
import AgentCore
import Chunking
import CSystemShims
import SyncSystem
import Wire

// syncd-agent: the remote side. Started by syncd/syncctl (a local subprocess, or an SSH exec channel), it speaks
// the wire protocol on stdin/stdout and logs to stderr. It links no libssh2 and no Foundation.

let arguments = Array(CommandLine.arguments.dropFirst())
// What a large file's lists take is given back when they go, and worker threads share two heaps.
Platform.limitHeapArenas()
Platform.mapLargeAllocations()
switch arguments.first {
case "--version", "version":
    print("syncd-agent \(syncdVersion) (wire protocol \(wireVersion))")
    exit(0)
case "--digest":
    // XXH3-128 of this executable: lets the installer check what it uploaded.
    do {
        print(try StreamingDigest.digest(ofFile: "/proc/self/exe").hex)
        exit(0)
    } catch {
        printError("syncd-agent: \(error)")
        exit(1)
    }
case "--help", "-h", "help":
    print("""
    usage: syncd-agent [serve]
      serve [--expect-digest HEX]
                 speak the syncd wire protocol on stdin/stdout (the default); with
                 --expect-digest, first check that this executable hashes to HEX
      join [--expect-digest HEX] ADDRESS
                 hand stdin/stdout to the agent serving a push at ADDRESS (an extra
                 stream of that push), and wait until it is done with them
      --version  print the version and exit
      --digest   print the XXH3-128 digest of this executable
    syncd-agent is started by syncctl or syncd; it is not meant to be run by hand.
    """)
    exit(0)
case "join":
    var rest = Array(arguments.dropFirst())
    if rest.count >= 2, rest[0] == "--expect-digest" {
        checkDigest(rest[1])
        rest.removeFirst(2)
    }
    guard rest.count == 1 else {
        printError("syncd-agent: join takes one address; try --help")
        exit(2)
    }
    joinPush(at: rest[0])
case nil, "serve":
    // `serve --expect-digest HEX`: refuse to run unless this executable is that build (the installer's
    // check, made at every start at the cost of hashing 10 MB).
    if arguments.count >= 3, arguments[1] == "--expect-digest" {
        checkDigest(arguments[2])
    } else if arguments.count > 1 {
        printError("syncd-agent: unknown arguments to serve: \(arguments.dropFirst().joined(separator: " ")); try --help")
        exit(2)
    }
default:
    printError("syncd-agent: unknown argument '\(arguments[0])'; try --help")
    exit(2)
}

/// Exits unless this executable hashes to `expected` (what the client installed). The digest is remembered in
/// `.<name>.checked` beside the executable (where that can be written) for as long as the file's identity is the same.
func checkDigest(_ expected: String) {
    let path = Platform.executablePath() ?? ""
    let actual: String
    if let slash = path.lastIndex(of: "/"), !path.hasSuffix(" (deleted)") {
        let stamp = String(path[...slash]) + "." + String(path[path.index(after: slash)...]) + ".checked"
        actual = (try? StreamingDigest.digest(ofFile: "/proc/self/exe", rememberedIn: stamp).hex) ?? "unreadable"
    } else {
        actual = (try? StreamingDigest.digest(ofFile: "/proc/self/exe").hex) ?? "unreadable"
    }
    guard actual == expected else {
        printError("syncd-agent: this executable's digest is \(actual), expected \(expected); it is damaged or replaced")
        print("syncd-agent-missing \(machineName()) digest-mismatch")
        exit(3)
    }
}

/// An extra stream of a push: stdin and stdout go to the agent listening at `address`, which reads the client's
/// frames from them; this process waits until that agent closes the socket (its push ended), then exits, which
/// lets sshd end the channel.
func joinPush(at address: String) -> Never {
    let socket = syncd_connect_abstract(address)
    guard socket >= 0 else {
        printError("syncd-agent: cannot reach the push at @\(address): \(String(cString: strerror(errno))) (it ended, or never began)")
        exit(1)
    }
    var fds: [Int32] = [0, 1]
    guard syncd_send_fds(socket, &fds, 2) == 0 else {
        printError("syncd-agent: cannot hand this stream to the push at @\(address): \(String(cString: strerror(errno)))")
        exit(1)
    }
    close(0)
    close(1)
    var byte: UInt8 = 0
    while true {
        let n = read(socket, &byte, 1)
        if n > 0 || (n < 0 && errno == EINTR) { continue }
        exit(0)
    }
}

signal(SIGPIPE, SIG_IGN)
// A stock host starts a session with 1024 descriptors and allows far more: every cache is sized from what is here.
OpenFiles.raiseLimit()
let home: String = {
    if let h = getenv("HOME") { return String(cString: h) }
    if let pw = getpwuid(getuid()), let dir = pw.pointee.pw_dir { return String(cString: dir) }
    return "/"
}()
// sshd's pipes carry every byte of a push or pull.
enlargePipeBuffer(0)
enlargePipeBuffer(1)
let session = AgentSession(stream: FileDescriptorStream(input: 0, output: 1, name: "agent stdio", measuresDrain: true), homeDirectory: home)
do {
    try session.run()
    exit(0)
} catch is AgentReported {
    exit(1)
} catch {
    printError("syncd-agent: \(error)")
    exit(1)
}
