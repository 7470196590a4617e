import Daemon
import Builds
import Client
import Control
import Fleet
import Foundation
import Logging
import SyncSystem

// syncd: the local daemon. With no arguments it runs in the foreground (what the systemd unit starts): every
// project registered with `syncctl add` is watched and pushed on change, and pulled every --pull-interval.
let arguments = Array(CommandLine.arguments.dropFirst())
Platform.limitHeapArenas()
Platform.mapLargeAllocations()
OpenFiles.raiseLimit()
var pullInterval: TimeInterval = 10
var logLevel = ProcessInfo.processInfo.environment["SYNCD_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info
var index = 0
while index < arguments.count {
    switch arguments[index] {
    case "--version":
        print("syncd \(syncdVersion)")
        exit(0)
    case "--help", "-h":
        print("""
        usage: syncd [--pull-interval SECONDS] [--log-level LEVEL]
          Runs in the foreground: watches the projects registered with `syncctl add DIR` (listed in
          $XDG_CONFIG_HOME/syncd/projects), pushes each change once it is quiet, and pulls every
          --pull-interval seconds (default 10). SIGHUP reloads the project list; SIGTERM lets sessions in
          flight finish and exits 0. Under systemd it reports READY/STATUS/STOPPING/WATCHDOG over $NOTIFY_SOCKET.
          With the agent watching the remote, completed remote files are pulled at once, and the periodic pull
          becomes a safety net (every 5 min). --log-level: trace, debug, info (default), notice, warning, error;
          also $SYNCD_LOG_LEVEL.
        """)
        exit(0)
    case "--log-level":
        guard index + 1 < arguments.count, let level = Logger.Level(rawValue: arguments[index + 1]) else {
            printError("syncd: --log-level needs one of trace, debug, info, notice, warning, error, critical")
            exit(2)
        }
        logLevel = level
        index += 1
    case "--pull-interval":
        guard index + 1 < arguments.count, let value = TimeInterval(arguments[index + 1]), value > 0 else {
            printError("syncd: --pull-interval needs a number of seconds")
            exit(2)
        }
        pullInterval = value
        index += 1
    default:
        printError("syncd: unknown argument '\(arguments[index])'; try --help")
        exit(2)
    }
    index += 1
}
let chosenLevel = logLevel
LoggingSystem.bootstrap { label in
    var handler = DaemonLogHandler(label: label)
    handler.logLevel = chosenLevel
    return handler
}
let daemon = Daemon(settings: DaemonSettings(pullInterval: pullInterval))
// Signals arrive on a queue of their own: SIGTERM and SIGINT let sessions in flight finish and stop; SIGHUP
// reloads the project list. A control client that goes away must not take the daemon with it (SIGPIPE).
for sig in [SIGTERM, SIGINT, SIGHUP, SIGPIPE] { signal(sig, SIG_IGN) }
let signalQueue = DispatchQueue(label: "signals")
let signalSources = [SIGTERM, SIGINT, SIGHUP].map { sig in
    let source = DispatchSource.makeSignalSource(signal: sig, queue: signalQueue)
    source.setEventHandler { sig == SIGHUP ? daemon.reloadProjects() : daemon.stop() }
    source.resume()
    return source
}
let code = daemon.run()
withExtendedLifetime(signalSources) {}
// Out without exit's teardown of globals: threads of the runners' links, watchers and control connections may
// still be unwinding after the sessions finished, and destroying globals under them can crash the process at
// its very end (a SIGSEGV after SIGTERM was seen once in the tests). Everything the daemon keeps is written by
// now: the state databases commit as they go, and the log is written unbuffered.
fflush(nil)
LibraryThreads.stopAll(seconds: 5)
_exit(code)
