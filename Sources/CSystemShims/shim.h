// Linux calls that Swift's Glibc module does not expose (they sit behind _GNU_SOURCE).
#ifndef SYNCD_CSYSTEMSHIMS_H
#define SYNCD_CSYSTEMSHIMS_H

extern int sync_file_range(int fd, long long offset, long long nbytes, unsigned int flags);

/* Names the calling thread (at most 15 bytes and the NUL). */
#include <pthread.h>
extern int pthread_setname_np(pthread_t thread, const char *name);
static inline int syncd_name_thread(const char *name) { return pthread_setname_np(pthread_self(), name); }

/// Starts writeback of a file's dirty pages without waiting for it (SYNC_FILE_RANGE_WRITE).
static inline int syncd_start_writeback(int fd) { return sync_file_range(fd, 0, 0, 2); }

/// The uid of the process at the other end of a connected unix socket (SO_PEERCRED), or -1 with errno set.
struct syncd_ucred { int pid; unsigned int uid; unsigned int gid; };
extern int getsockopt(int fd, int level, int name, void *value, unsigned int *length);
static inline long long syncd_peer_uid(int fd) {
    struct syncd_ucred cred;
    unsigned int length = sizeof cred;
    if (getsockopt(fd, 1 /* SOL_SOCKET */, 17 /* SO_PEERCRED */, &cred, &length) != 0) return -1;
    return (long long)cred.uid;
}

/// Returns freed heap memory to the system (glibc's malloc_trim).
extern int malloc_trim(unsigned long pad);
static inline void syncd_release_free_memory(void) { malloc_trim(0); }

/// Caps glibc's malloc arenas (M_ARENA_MAX): each thread that allocates may otherwise get an arena of its own,
/// whose freed memory stays resident.
extern int mallopt(int param, int value);
static inline void syncd_limit_malloc_arenas(int count) { mallopt(-8 /* M_ARENA_MAX */, count); }

/// Blocks of at least `bytes` are mapped from the system and unmapped when freed (M_MMAP_THRESHOLD set, which
/// also stops glibc raising the threshold to the largest block freed, up to 32 MiB, and keeping such blocks in
/// the heap, resident, after they are freed).
static inline void syncd_map_large_allocations(int bytes) { mallopt(-3 /* M_MMAP_THRESHOLD */, bytes); }

/// A pipe whose ends are close-on-exec (and non-blocking if asked) from birth: set afterwards with fcntl, a
/// child spawned by another thread in between would inherit them.
extern int pipe2(int fds[2], int flags);
static inline int syncd_pipe(int fds[2], int nonblocking) {
    return pipe2(fds, 02000000 /* O_CLOEXEC */ | (nonblocking ? 04000 /* O_NONBLOCK */ : 0));
}

/// Asks for a pipe's buffer to hold `bytes` (F_SETPIPE_SZ); returns the size it got, or -1 with errno set (EBADF
/// or EINVAL when `fd` is no pipe, EPERM past the user's share of pipe memory).
extern int fcntl(int fd, int command, ...);
static inline int syncd_grow_pipe(int fd, int bytes) { return fcntl(fd, 1031 /* F_SETPIPE_SZ */, bytes); }

/// A pipe's buffer size (F_GETPIPE_SZ), or -1 with errno set when `fd` is no pipe.
static inline int syncd_pipe_size(int fd) { return fcntl(fd, 1032 /* F_GETPIPE_SZ */); }

/// Bytes waiting in the pipe at `fd`, either end (FIONREAD), or -1 with errno set.
extern int ioctl(int fd, unsigned long request, ...);
static inline int syncd_pipe_queued(int fd) {
    int n = 0;
    return ioctl(fd, 0x541B /* FIONREAD */, &n) == 0 ? n : -1;
}

/// accept(2) whose new socket is close-on-exec from birth.
extern int accept4(int fd, void *address, unsigned int *length, int flags);
static inline int syncd_accept(int fd) { return accept4(fd, 0, 0, 02000000 /* SOCK_CLOEXEC */); }

/// renameat2(2) with RENAME_NOREPLACE: fails with EEXIST instead of replacing the target.
extern int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
static inline int syncd_rename_noreplace(int from_dir, const char *from, int to_dir, const char *to) {
    return renameat2(from_dir, from, to_dir, to, 1 /* RENAME_NOREPLACE */);
}

/// lseek(2) to the next data region (SEEK_DATA) or hole (SEEK_HOLE) at or after `offset`; -1 with errno set
/// (ENXIO past the last data region).
extern long long lseek64(int fd, long long offset, int whence);
static inline long long syncd_seek_data(int fd, long long offset) { return lseek64(fd, offset, 3 /* SEEK_DATA */); }
static inline long long syncd_seek_hole(int fd, long long offset) { return lseek64(fd, offset, 4 /* SEEK_HOLE */); }

/// fallocate(2) with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: frees the blocks of a range, which then reads as
/// zeros. -1 with errno set (EOPNOTSUPP where the file system cannot).
extern int fallocate(int fd, int mode, long long offset, long long length);
static inline int syncd_punch_hole(int fd, long long offset, long long length) {
    return fallocate(fd, 0x02 | 0x01, offset, length);
}
/// Makes a spawned child close every descriptor from `from` up once the earlier file actions ran
/// (posix_spawn_file_actions_addclosefrom_np, glibc 2.34): it keeps only what it was given explicitly, whatever
/// another thread had open without close-on-exec at that moment.
#include <spawn.h>
extern int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *actions, int from);
static inline int syncd_spawn_close_from(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}
/// O_NOATIME: reading a file does not update its access time (allowed on one's own files; EPERM otherwise).
static const int syncd_o_noatime = 01000000;

/// syncfs(2): writes back every dirty page and inode of the file system holding `fd`, and waits for it (on ext4,
/// xfs and btrfs it also commits the journal), so many files become durable for the price of one flush.
extern int syncfs(int fd);
static inline int syncd_syncfs(int fd) { return syncfs(fd); }

/// openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS: opens `path` (relative, several
/// components) below `dir` in one call, refusing any symlink on the way (ELOOP) and anything that would leave
/// `dir` (EXDEV). -1 with errno set; ENOSYS on kernels before 5.6.
extern long syscall(long number, ...);
struct syncd_open_how { unsigned long long flags, mode, resolve; };
static inline int syncd_open_beneath(int dir, const char *path, int flags) {
    struct syncd_open_how how = { (unsigned long long)(unsigned int)flags, 0, 0x08 | 0x04 | 0x02 };
    return (int)syscall(437 /* SYS_openat2 */, dir, path, &how, sizeof how);
}
/// Unix sockets in the abstract namespace (Linux): a name that exists only while its listener is open, with no
/// file to clean up and no path length set by where a directory is. `name` is at most 100 bytes.
#include <errno.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <string.h>
#include <unistd.h>
static inline int syncd_abstract_address(struct sockaddr_un *address, const char *name) {
    size_t length = strlen(name);
    if (length == 0 || length > sizeof address->sun_path - 2) return -1;
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    memcpy(address->sun_path + 1, name, length);
    return (int)(offsetof(struct sockaddr_un, sun_path) + 1 + length);
}
/// A stream socket, close-on-exec, bound and listening at abstract `name` (`listening`) or connected to it;
/// -1 with errno set (EADDRINUSE when the name is taken, ECONNREFUSED when nobody listens).
static inline int syncd_abstract_socket(const char *name, int listening) {
    struct sockaddr_un address;
    int length = syncd_abstract_address(&address, name);
    if (length < 0) { errno = ENAMETOOLONG; return -1; }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int failed = listening
        ? bind(fd, (struct sockaddr *)&address, (socklen_t)length) != 0 || listen(fd, 16) != 0
        : connect(fd, (struct sockaddr *)&address, (socklen_t)length) != 0;
    if (failed) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}
static inline int syncd_listen_abstract(const char *name) { return syncd_abstract_socket(name, 1); }
static inline int syncd_connect_abstract(const char *name) { return syncd_abstract_socket(name, 0); }
/// Sends `count` (at most 4) descriptors over a unix socket with one byte of data (SCM_RIGHTS); 0 or -1.
static inline int syncd_send_fds(int socket_fd, const int *fds, int count) {
    if (count < 1 || count > 4) { errno = EINVAL; return -1; }
    char byte = 'F';
    struct iovec io = { &byte, 1 };
    union { struct cmsghdr align; char space[CMSG_SPACE(4 * sizeof(int))]; } control;
    memset(&control, 0, sizeof control);
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    message.msg_control = control.space;
    message.msg_controllen = CMSG_SPACE(count * sizeof(int));
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(count * sizeof(int));
    memcpy(CMSG_DATA(header), fds, count * sizeof(int));
    return sendmsg(socket_fd, &message, MSG_NOSIGNAL) == 1 ? 0 : -1;
}
/// Receives up to `capacity` (at most 4) descriptors sent by `syncd_send_fds`, close-on-exec; returns how many
/// came (0 when the message held none; -1 with errno set, or at end of stream with errno 0).
static inline int syncd_receive_fds(int socket_fd, int *fds, int capacity) {
    if (capacity < 1 || capacity > 4) { errno = EINVAL; return -1; }
    char byte;
    struct iovec io = { &byte, 1 };
    union { struct cmsghdr align; char space[CMSG_SPACE(4 * sizeof(int))]; } control;
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    message.msg_control = control.space;
    message.msg_controllen = sizeof control.space;
    ssize_t n = recvmsg(socket_fd, &message, 0x40000000 /* MSG_CMSG_CLOEXEC */);
    if (n <= 0) { if (n == 0) errno = 0; return -1; }
    int received = 0;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&message); h; h = CMSG_NXTHDR(&message, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
        int here = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < here; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
            if (received < capacity) fds[received++] = fd; else close(fd);
        }
    }
    if (message.msg_flags & MSG_CTRUNC) {
        for (int i = 0; i < received; i++) close(fds[i]);
        errno = EMSGSIZE;
        return -1;
    }
    return received;
}
#endif
