// Linux calls that Swift's Glibc module does not expose (they sit behind _GNU_SOURCE).
#ifndef SYNCD_CSYSTEMSHIMS_H
#define SYNCD_CSYSTEMSHIMS_H

extern int sync_file_range(int fd, long long offset, long long nbytes, unsigned int flags);

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

/// A pipe whose ends are close-on-exec (and non-blocking if asked) from birth: set afterwards with fcntl, a
/// child spawned by another thread in between would inherit them.
extern int pipe2(int fds[2], int flags);
static inline int syncd_pipe(int fds[2], int nonblocking) {
    return pipe2(fds, 02000000 /* O_CLOEXEC */ | (nonblocking ? 04000 /* O_NONBLOCK */ : 0));
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
#endif
