import ArgumentParser
import Chunking
import Builds
import Client
import Control
import Fleet
import Foundation
import SyncConfig
import SSHTransport
import StoreClient
import SyncSystem
import Wire

// The snapshot store: snapshots, restore, store gc.

struct Snapshots: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshots", abstract: "The project's snapshots in its store: time, id, files, bytes, new bytes.")
    @Argument(help: "Project directory.") var directory: String = "."
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let project = try Project(directory: directory)
        let list = try project.snapshots()
        if json {
            struct Out: Encodable { let snapshots: [SnapshotListing] }
            print(project.jsonText(Out(snapshots: list)))
            return
        }
        if list.isEmpty { printError("no snapshots of \(project.config.name) yet; `syncctl push` makes one") }
        for s in list {
            print("\(humanTime(s.time))  \(s.id)  \(s.files) files  \(formatBytes(s.bytes))  \(formatBytes(s.newBytes)) new")
        }
    }
}

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore", abstract: "Materialize a snapshot exactly: in a new local directory, or on one of the hosts from the store.")
    @Argument(help: "The snapshot: its id (or a unique prefix), as `syncctl snapshots` shows it.") var snapshot: String
    @Option(name: .customLong("to"), help: "An empty or new directory to restore into.") var target: String?
    @Option(name: .customLong("host"), help: "A host of the project (as hosts: names it): its copy becomes the snapshot, read from the store.")
    var host: String?
    @Option(name: .customLong("dir"), help: "Project directory (default: the current directory).") var directory: String = "."
    @Flag(help: "On the host, replace what was changed there since the last push too (kept beside as a conflict copy).")
    var force = false
    @Flag(help: "Print one JSON object with the statistics on stdout.") var json = false

    func validate() throws {
        guard (target == nil) != (host == nil) else { throw ValidationError("give one of --to DIR or --host H") }
        if force && host == nil { throw ValidationError("--force is for --host (a directory given to --to must be empty)") }
    }

    func run() throws {
        let project = try Project(directory: directory)
        if let host {
            let restore = StorePush(project: project)
            restore.force = force
            let stats = try restore.restore(snapshot, host: host)
            if !json && stats.errors.isEmpty { printError("restored snapshot \(stats.snapshot ?? snapshot) on \(host)") }
            return report(stats, json: json, project: project)
        }
        let stats = try project.restore(snapshot, to: target!)
        if !json { printError("restored snapshot \(stats.snapshot ?? snapshot) into \(stats.remoteDirectory ?? target!)") }
        report(stats, json: json, project: project)
    }
}

struct Store: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "store", abstract: "The snapshot store.", subcommands: [Check.self, Repair.self, GC.self, Unlock.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check",
            abstract: "Check the whole store: every ref, manifest, index and pack consistent; with --read-data every chunk re-hashed.",
            discussion: "Exits 0 when all is well, 1 when something is wrong (each object named, with what is wrong).")
        @Argument(help: "Project directory (its store is checked, every project's snapshots in it).") var directory: String = "."
        @Flag(name: .customLong("read-data"), help: "Read every pack whole and re-hash every chunk (reads the whole store).") var readData = false
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let project = try Project(directory: directory)
            let report = try project.checkStore(readData: readData)
            if json {
                print(project.jsonText(report))
            } else {
                for problem in report.problems { print("\(problem.kind.rawValue): \(problem)") }
                for name in report.unrestorable { print("unrestorable: \(name)") }
                printError("store check: \(report.refs) snapshots, \(report.manifests) manifests, \(report.packs) packs, \(report.chunks) chunks"
                           + (readData ? ", \(formatBytes(report.bytesRead)) read" : "")
                           + (report.setAside > 0 ? "; \(report.setAside) objects set aside under broken/" : "")
                           + (report.ok ? "; no problems" : "; \(report.problems.count) problems, `syncctl store repair` mends what it can"))
            }
            if !report.ok { throw ExitCode(1) }
        }
    }

    struct Repair: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "repair",
            abstract: "Set broken objects aside (under broken/) and upload again, from this project's files, what the store lacks.",
            discussion: "Sound chunks of a damaged pack are saved into a new pack first. Exits 1 when snapshots remain that cannot be restored.")
        @Argument(help: "Project directory: its files are the source of what is uploaded again.") var directory: String = "."
        @Flag(name: .customLong("read-data"), help: "Find damaged chunks too, by reading every pack whole.") var readData = false
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let project = try Project(directory: directory)
            let report = try project.repairStore(readData: readData)
            if json {
                print(project.jsonText(report))
            } else {
                for name in report.setAside { print("set aside: \(name) -> broken/\(name)") }
                for problem in report.remaining { print("remains: \(problem)") }
                printError("store repair: \(report.found.count) problems found; \(report.setAside.count) objects set aside, "
                           + "\(report.chunksSalvaged) chunks saved from damaged packs, \(report.chunksUploaded) uploaded again "
                           + "(\(formatBytes(report.bytesUploaded)))" + (report.remaining.isEmpty ? "; the store is sound"
                           : "; \(report.unrestorable.count) snapshots still lack chunks this project no longer holds"))
            }
            if !report.remaining.isEmpty { throw ExitCode(1) }
        }
    }

    struct Unlock: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "unlock",
            abstract: "Remove the store's stale locks: those not refreshed for 30 minutes, or of a process of this machine that is gone.")
        @Argument(help: "Project directory.") var directory: String = "."
        @Flag(help: "Remove every lock, live ones too (only when no push or gc of this store runs anywhere).") var all = false

        func run() throws {
            let removed = try Project(directory: directory).unlockStore(all: all)
            for lock in removed {
                print("removed \(lock.name) (pid \(lock.pid.map(String.init) ?? "?") on \(lock.host ?? "?"))")
            }
            if removed.isEmpty { printError("store unlock: no \(all ? "" : "stale ")lock to remove") }
        }
    }

    struct GC: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gc",
            abstract: "Delete this project's snapshots beyond what is kept, then the packs and manifests no kept snapshot uses.")
        @Argument(help: "Project directory.") var directory: String = "."
        @Option(help: "Keep the newest N snapshots.") var keep: Int?
        @Option(name: .customLong("keep-days"), help: "Keep the snapshots of the last D days.") var keepDays: Double?
        @Option(help: "Leave objects younger than this many seconds (a push may be writing them).") var grace: Double = 3600
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let project = try Project(directory: directory)
            let stats = try project.collectGarbage(keep: keep, keepDays: keepDays, grace: grace)
            if json {
                print(project.jsonText(stats))
            } else {
                for problem in stats.problems { printError("warning: \(problem); passed over (`syncctl store check`, `store repair`)") }
                if stats.collectionDeferred {
                    printError("warning: packs and manifests were not collected while a ref or manifest cannot be read; "
                               + "`syncctl store repair` sets it aside, and the next gc collects")
                }
                printError("store gc: kept \(stats.snapshotsKept) snapshots, deleted \(stats.snapshotsDeleted); deleted \(stats.packsDeleted) packs and "
                           + "\(stats.manifestsDeleted) manifests, \(formatBytes(stats.bytesFreed)) freed")
            }
        }
    }
}
