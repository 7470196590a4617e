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
      serve      speak the syncd wire protocol on stdin/stdout (the default)
      --version  print the version and exit
      --digest   print the XXH3-128 digest of this executable
    syncd-agent is started by syncctl or syncd; it is not meant to be run by hand.
    """)
    exit(0)
case nil, "serve":
    break
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
