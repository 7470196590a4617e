import Engine
import Foundation
import SyncSystem

// syncd: the local daemon. This build runs one-shot syncs through syncctl; the watching daemon
// (inotify, control socket, systemd notify) is tracked as its own issue.
let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "--version" {
    print("syncd \(syncdVersion)")
    exit(0)
}
printError("syncd \(syncdVersion): the background daemon is not part of this build yet; use `syncctl push` and `syncctl pull`.")
exit(2)
