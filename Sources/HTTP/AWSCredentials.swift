#if canImport(Glibc)
import Glibc
#endif
import SyncSystem

// No Foundation here: the agent links this module, and Foundation would add some 40 MB to its static binary.

/// AWS credentials could not be found or are incomplete: what is missing and where it was looked for.
public struct CredentialsError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ text: String) { description = text }
}

/// Credentials for the store, from the standard AWS sources on this machine.
public struct AWSCredentials: Sendable, Equatable {
    public var accessKey: String
    public var secretKey: String
    public var sessionToken: String?
    /// Where they came from, for messages ("AWS_ACCESS_KEY_ID", "~/.aws/credentials [team]").
    public var source: String

    public init(accessKey: String, secretKey: String, sessionToken: String? = nil, source: String) {
        self.accessKey = accessKey
        self.secretKey = secretKey
        self.sessionToken = sessionToken
        self.source = source
    }

    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`), else the profile `AWS_PROFILE` (or
    /// `default`) of `AWS_SHARED_CREDENTIALS_FILE` (or `~/.aws/credentials`, `~` being $HOME as for the AWS CLI).
    public static func resolve(environment: [String: String] = processEnvironment(),
                               home: String? = nil) throws -> AWSCredentials {
        let home = home ?? environment["HOME"] ?? homeDirectoryOfUser()
        if let key = environment["AWS_ACCESS_KEY_ID"], !key.isEmpty {
            guard let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty else {
                throw CredentialsError("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
            }
            return AWSCredentials(accessKey: key, secretKey: secret, sessionToken: environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 },
                                  source: "AWS_ACCESS_KEY_ID")
        }
        let file = environment["AWS_SHARED_CREDENTIALS_FILE"] ?? home + "/.aws/credentials"
        let profile = environment["AWS_PROFILE"].flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        guard let text = readTextFile(file) else {
            throw CredentialsError("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write profile [\(profile)] in \(file)")
        }
        var section = ""
        var values: [String: String] = [:]
        for raw in text.split(separator: "\n") {
            let line = trimmed(raw)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                section = trimmed(line.dropFirst().dropLast())
                continue
            }
            guard section == profile, let eq = line.firstIndex(of: "=") else { continue }
            values[trimmed(line[..<eq]).lowercased()] = trimmed(line[line.index(after: eq)...])
        }
        guard let key = values["aws_access_key_id"], let secret = values["aws_secret_access_key"] else {
            throw CredentialsError("\(file) has no aws_access_key_id and aws_secret_access_key in profile [\(profile)]")
        }
        return AWSCredentials(accessKey: key, secretKey: secret, sessionToken: values["aws_session_token"], source: "\(file) [\(profile)]")
    }
}


/// `text` without leading and trailing spaces, tabs and carriage returns.
private func trimmed<S: StringProtocol>(_ text: S) -> String {
    let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
    guard let first = text.firstIndex(where: { !blank($0) }), let last = text.lastIndex(where: { !blank($0) }) else { return "" }
    return String(text[first...last])
}

/// The whole of a small text file, or nil when it cannot be read.
private func readTextFile(_ path: String) -> String? {
    guard let file = try? FileDescriptor.open(path, flags: O_RDONLY), let size = try? file.stat().size, size < 1 << 20,
          let bytes = try? file.readExactly(Int(size), at: 0) else { return nil }
    return String(decoding: bytes, as: UTF8.self)
}
