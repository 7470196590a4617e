#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Reads just enough of a private key file to know whether it needs a passphrase.
enum PrivateKeyFile {
    static func isEncrypted(path: String) -> Bool {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return false }
        if text.contains("ENCRYPTED") { return true }  // PEM: Proc-Type: 4,ENCRYPTED or BEGIN ENCRYPTED PRIVATE KEY
        guard text.contains("BEGIN OPENSSH PRIVATE KEY") else { return false }
        let body = text.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        guard let data = Data(base64Encoded: body) else { return false }
        let bytes = [UInt8](data)
        let magic = Array("openssh-key-v1".utf8) + [0]
        guard bytes.count > magic.count + 4, Array(bytes[0..<magic.count]) == magic else { return false }
        let lengthStart = magic.count
        let length = Int(bytes[lengthStart]) << 24 | Int(bytes[lengthStart + 1]) << 16 | Int(bytes[lengthStart + 2]) << 8 | Int(bytes[lengthStart + 3])
        guard bytes.count >= lengthStart + 4 + length else { return false }
        let cipher = String(decoding: bytes[(lengthStart + 4)..<(lengthStart + 4 + length)], as: UTF8.self)
        return cipher != "none"
    }
}

/// Asks for a key's passphrase: SSH_ASKPASS when set, else the terminal with echo off.
enum Passphrase {
    static func ask(for key: String) throws -> String {
        let env = ProcessInfo.processInfo.environment
        let prompt = "Enter passphrase for \(key): "
        if let askpass = env["SSH_ASKPASS"], !askpass.isEmpty, FileManager.default.isExecutableFile(atPath: askpass) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: askpass)
            process.arguments = [prompt]
            let out = Pipe()
            process.standardOutput = out
            try process.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw SSHError.passphraseUnavailable(key: key) }
            return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
        }
        let tty = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard tty >= 0 else { throw SSHError.passphraseUnavailable(key: key) }
        defer { close(tty) }
        var saved = termios()
        guard tcgetattr(tty, &saved) == 0 else { throw SSHError.passphraseUnavailable(key: key) }
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(tty, TCSAFLUSH, &quiet)
        defer { tcsetattr(tty, TCSAFLUSH, &saved); _ = write(tty, "\n", 1) }
        _ = prompt.withCString { write(tty, $0, strlen($0)) }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(tty, &byte, 1) == 1 && byte != 10 { line.append(byte) }
        return String(decoding: line, as: UTF8.self)
    }
}
