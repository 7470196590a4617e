// libssh2 exposes many calls as function-like macros; these wrappers give Swift callable names.
#ifndef SYNCD_CLIBSSH2_SHIM_H
#define SYNCD_CLIBSSH2_SHIM_H
#include <libssh2.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/// libssh2's own receive, and then an immediate ACK (TCP_QUICKACK). OpenSSH's sshd turns Nagle's algorithm off only
/// for interactive sessions, so on an exec channel it holds a small packet back until the previous one is ACKed;
/// with Linux's delayed ACKs that cost a setup round trip 40 ms now and then (channel open, exec, the first answer).
static ssize_t syncd_ssh_recv_quickack(libssh2_socket_t socket, void *buffer, size_t length, int flags, void **abstract) {
    (void)abstract;
    ssize_t rc = recv(socket, buffer, length, flags);
    if (rc < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    int one = 1;
    (void)setsockopt(socket, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    return rc;
}

static inline LIBSSH2_SESSION *syncd_ssh_session_init(void) {
    LIBSSH2_SESSION *session = libssh2_session_init();
    if (session) libssh2_session_callback_set(session, LIBSSH2_CALLBACK_RECV, (void *)syncd_ssh_recv_quickack);
    return session;
}

static inline LIBSSH2_CHANNEL *syncd_ssh_channel_open_session(LIBSSH2_SESSION *session) {
    return libssh2_channel_open_session(session);
}

static inline int syncd_ssh_channel_exec(LIBSSH2_CHANNEL *channel, const char *command) {
    return libssh2_channel_exec(channel, command);
}

static inline ssize_t syncd_ssh_channel_read(LIBSSH2_CHANNEL *channel, char *buffer, size_t length) {
    return libssh2_channel_read(channel, buffer, length);
}

static inline ssize_t syncd_ssh_channel_read_stderr(LIBSSH2_CHANNEL *channel, char *buffer, size_t length) {
    return libssh2_channel_read_stderr(channel, buffer, length);
}

static inline ssize_t syncd_ssh_channel_write(LIBSSH2_CHANNEL *channel, const char *buffer, size_t length) {
    return libssh2_channel_write(channel, buffer, length);
}

static inline int syncd_ssh_channel_send_eof(LIBSSH2_CHANNEL *channel) { return libssh2_channel_send_eof(channel); }

static inline const char *syncd_ssh_version(void) { return libssh2_version(0); }
#endif
