/// The release of this build, shown by `--version` and exchanged in the wire handshake.
public let syncdVersion = "0.1.0"
