import Builds
import Client
import Control
import Fleet
import Foundation
import Logging
import ProjectScan
import SyncConfig
import SyncSystem
import Watch

/// sd_notify(3) over `$NOTIFY_SOCKET`: READY=1, STATUS=…, STOPPING=1, WATCHDOG=1. Silent without a socket.
final class Notifier {
    private let fd: Int32
    private var address = sockaddr_un()
    private var length: socklen_t = 0

    init() {
        guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty,
              path.utf8.count < MemoryLayout.size(ofValue: address.sun_path) else { fd = -1; return }
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }  // abstract namespace
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
    }

    func send(_ state: String) {
        guard fd >= 0 else { return }
        var address = self.address
        _ = state.withCString { text in
            withUnsafePointer(to: &address) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, text, strlen(text), Int32(MSG_NOSIGNAL), $0, length) }
            }
        }
    }
}
