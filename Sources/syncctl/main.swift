import ArgumentParser
import Builds
import Client
import Control
import Fleet
import Foundation
import SyncSystem

signal(SIGPIPE, SIG_IGN)
// Ctrl-C and SIGTERM end syncctl as before, but release the store locks it holds first: a push interrupted that
// way must not leave the store busy for half an hour. (`_exit`: the work in flight is dropped, as the default
// action would drop it.)
for sig in [SIGINT, SIGTERM] { signal(sig, SIG_IGN) }
let stopSignals = [SIGINT, SIGTERM].map { sig in
    let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
    source.setEventHandler {
        // What reached the remote, and that the next run resumes, before anything else is said.
        if let note = InFlight.interruptedSummary() { printError("\n" + note) }
        releaseStoreLocks()
        fflush(nil)
        _exit(128 + sig)
    }
    source.resume()
    return source
}
OpenFiles.raiseLimit()
Platform.limitHeapArenas()
Platform.mapLargeAllocations()
Trace.mark("syncctl: started")
var command: ParsableCommand
do {
    command = try Syncctl.parseAsRoot()
} catch {
    if Syncctl.exitCode(for: error) == .success {
        print(Syncctl.fullMessage(for: error))
        exitWith(0)
    }
    printError(Syncctl.fullMessage(for: error))
    exitWith(2)
}
do {
    try command.run()
    exitWith(0)
} catch let error as SyncError {
    printError("syncctl: \(error.description)")
    exitWith(error.exitCode)
} catch let code as ExitCode {
    // A command that has said what it had to and exits with a status of its own (`daemon status`: 3, not running).
    exitWith(code.rawValue)
} catch {
    // ArgumentParser reports `SUBCOMMAND --help` from run(); anything else here is a runtime error.
    if Syncctl.exitCode(for: error) == .success {
        print(Syncctl.fullMessage(for: error))
        exitWith(0)
    }
    printError("syncctl: \(error)")
    exitWith(1)
}
