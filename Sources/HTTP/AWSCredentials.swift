import Foundation

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
    public static func resolve(environment: [String: String] = ProcessInfo.processInfo.environment,
                               home: String = ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()) throws -> AWSCredentials {
        if let key = environment["AWS_ACCESS_KEY_ID"], !key.isEmpty {
            guard let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty else {
                throw CredentialsError("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
            }
            return AWSCredentials(accessKey: key, secretKey: secret, sessionToken: environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 },
                                  source: "AWS_ACCESS_KEY_ID")
        }
        let file = environment["AWS_SHARED_CREDENTIALS_FILE"] ?? home + "/.aws/credentials"
        let profile = environment["AWS_PROFILE"].flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw CredentialsError("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write profile [\(profile)] in \(file)")
        }
        var section = ""
        var values: [String: String] = [:]
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                continue
            }
            guard section == profile, let eq = line.firstIndex(of: "=") else { continue }
            values[line[..<eq].trimmingCharacters(in: .whitespaces).lowercased()] = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
        }
        guard let key = values["aws_access_key_id"], let secret = values["aws_secret_access_key"] else {
            throw CredentialsError("\(file) has no aws_access_key_id and aws_secret_access_key in profile [\(profile)]")
        }
        return AWSCredentials(accessKey: key, secretKey: secret, sessionToken: values["aws_session_token"], source: "\(file) [\(profile)]")
    }
}

