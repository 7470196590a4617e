#if canImport(Glibc)
import Glibc
#endif
import AgentCore
import Chunking
import SyncSystem
import Wire

// syncd-agent: the remote side. Started by syncd/syncctl (a local subprocess, or an SSH exec channel), it speaks
// the wire protocol on stdin/stdout and logs to stderr. It links no libssh2 and no Foundation.

let arguments = Array(CommandLine.arguments.dropFirst())
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
      --version  print the version and exit
      --digest   print the XXH3-128 digest of this executable
    syncd-agent is started by syncctl or syncd; it is not meant to be run by hand.
    """)
    exit(0)
case nil, "serve":
    // `serve --expect-digest HEX`: refuse to run unless this executable is that build (the installer's
    // check, made at every start at the cost of hashing 10 MB).
    if arguments.count >= 3, arguments[1] == "--expect-digest" {
        let actual = (try? StreamingDigest.digest(ofFile: "/proc/self/exe").hex) ?? "unreadable"
        guard actual == arguments[2] else {
            printError("syncd-agent: this executable's digest is \(actual), expected \(arguments[2]); it is damaged or replaced")
            print("syncd-agent-missing \(machineName()) digest-mismatch")
            exit(3)
        }
    } else if arguments.count > 1 {
        printError("syncd-agent: unknown arguments to serve: \(arguments.dropFirst().joined(separator: " ")); try --help")
        exit(2)
    }
default:
    printError("syncd-agent: unknown argument '\(arguments[0])'; try --help")
    exit(2)
}

signal(SIGPIPE, SIG_IGN)
let home: String = {
    if let h = getenv("HOME") { return String(cString: h) }
    if let pw = getpwuid(getuid()), let dir = pw.pointee.pw_dir { return String(cString: dir) }
    return "/"
}()
let session = AgentSession(stream: FileDescriptorStream(input: 0, output: 1, name: "agent stdio"), homeDirectory: home)
do {
    try session.run()
    exit(0)
} catch {
    printError("syncd-agent: \(error)")
    exit(1)
}
