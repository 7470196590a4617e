import Engine
import Foundation
import SyncSystem

// syncd: the local daemon. With no arguments it runs in the foreground (what the systemd unit starts): every
// project registered with `syncctl add` is watched and pushed on change, and pulled every --pull-interval.
let arguments = Array(CommandLine.arguments.dropFirst())
var pullInterval: TimeInterval = 10
var index = 0
while index < arguments.count {
    switch arguments[index] {
    case "--version":
        print("syncd \(syncdVersion)")
        exit(0)
    case "--help", "-h":
        print("""
        usage: syncd [--pull-interval SECONDS]
          Runs in the foreground: watches the projects registered with `syncctl add DIR` (listed in
          $XDG_CONFIG_HOME/syncd/projects), pushes each change once it is quiet, and pulls every
          --pull-interval seconds (default 10). SIGHUP reloads the project list; SIGTERM lets sessions in
          flight finish and exits 0. Under systemd it reports READY/STATUS/STOPPING/WATCHDOG over $NOTIFY_SOCKET.
        """)
        exit(0)
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
exit(Daemon(pullInterval: pullInterval).run())
