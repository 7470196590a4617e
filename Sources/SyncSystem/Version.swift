/// The release of this build, shown by `--version` and exchanged in the wire handshake.
public let syncdVersion = "0.1.0"

/// Name prefix of in-progress files that syncd writes beside their final path; never synced, never final.
public let partialFilePrefix = ".syncd-part."

/// Directory (at a project's top) holding the agent's state; never synced.
public let agentStateDirectoryName = ".syncd"
