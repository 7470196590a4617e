import ArgumentParser
import Engine
import Foundation
import SyncSystem

signal(SIGPIPE, SIG_IGN)
OpenFiles.raiseLimit()
limitHeapArenas()
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
} catch {
    // ArgumentParser reports `SUBCOMMAND --help` from run(); anything else here is a runtime error.
    if Syncctl.exitCode(for: error) == .success {
        print(Syncctl.fullMessage(for: error))
        exitWith(0)
    }
    printError("syncctl: \(error)")
    exitWith(1)
}
