@testable import Client
@testable import Fleet
@testable import Control
import SyncConfig
import Testing

/// How `hosts: swarm:MANAGER` turns what docker printed on the manager into hosts.
@Suite struct SwarmNodeTests {
    @Test func theManagerFirstThenEveryNodeThatRunsTasks() throws {
        let text = """
            self m1
            w2 10.0.0.12 active trainer-b
            m1 10.0.0.10 active manager
            w1 10.0.0.11 active trainer-a
            w3 10.0.0.13 drain trainer-c
            w4 fd00::14 pause trainer-d

            """
        let hosts = try Project.parseSwarmNodes(text, manager: "gpu-manager", user: "ubuntu", port: 2222)
        #expect(hosts.map(\.description) == ["gpu-manager", "ubuntu@10.0.0.11:2222", "ubuntu@10.0.0.12:2222", "ubuntu@[fd00::14]:2222"])
        let plain = try Project.parseSwarmNodes("self a\na 127.0.0.1 active x\nb 10.1.1.1 active y\n", manager: "m", user: nil, port: 22)
        #expect(plain.map(\.description) == ["m", "10.1.1.1"])
        #expect(throws: SyncError.self) { try Project.parseSwarmNodes("self \n", manager: "m", user: nil, port: 22) }
    }
}
