// libssh2 exposes many calls as function-like macros; these wrappers give Swift callable names.
#ifndef SYNCD_CLIBSSH2_SHIM_H
#define SYNCD_CLIBSSH2_SHIM_H
#include <libssh2.h>

static inline LIBSSH2_SESSION *syncd_ssh_session_init(void) { return libssh2_session_init(); }

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
