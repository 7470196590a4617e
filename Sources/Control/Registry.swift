import Client
import Foundation
import SyncConfig
import SyncSystem

/// The projects the daemon runs: `$XDG_CONFIG_HOME/syncd/projects` (default `~/.config/syncd/projects`), one
/// absolute project directory per line. Written atomically (temporary file, rename).
public struct ProjectRegistry: Sendable {
    public let file: String

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        let base = environment["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.config")
        file = base + "/syncd/projects"
    }

    public func list() throws -> [String] {
        guard let data = FileManager.default.contents(atPath: file) else { return [] }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init).filter { !$0.isEmpty && !$0.hasPrefix("#") }
    }

    /// Adds `directory` (made absolute); it must hold a valid syncd.yaml. Returns false when it was there already.
    @discardableResult
    public func add(_ directory: String) throws -> Bool {
        // The project the directory is in (run from a subdirectory, its root).
        let absolute = try Project(directory: directory).directory
        var projects = try list()
        if projects.contains(absolute) { return false }
        projects.append(absolute)
        try save(projects)
        return true
    }

    /// Removes `directory`; returns false when it was not registered.
    @discardableResult
    public func remove(_ directory: String) throws -> Bool {
        let given = URL(fileURLWithPath: directory).standardizedFileURL.path
        var projects = try list()
        // The directory as registered, else the project it is in.
        let absolute = projects.contains(given) ? given : (Project.enclosing(given) ?? given)
        guard let index = projects.firstIndex(of: absolute) else { return false }
        projects.remove(at: index)
        try save(projects)
        return true
    }

    private func save(_ projects: [String]) throws {
        let dir = (file as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let text = projects.map { $0 + "\n" }.joined()
        do { try text.write(toFile: file, atomically: true, encoding: .utf8) } catch {
            throw SyncError("cannot write \(file): \(error)")
        }
    }
}
