// Linux calls that Swift's Glibc module does not expose (they sit behind _GNU_SOURCE).
#ifndef SYNCD_CSYSTEMSHIMS_H
#define SYNCD_CSYSTEMSHIMS_H

extern int sync_file_range(int fd, long long offset, long long nbytes, unsigned int flags);

/// Starts writeback of a file's dirty pages without waiting for it (SYNC_FILE_RANGE_WRITE).
static inline int syncd_start_writeback(int fd) { return sync_file_range(fd, 0, 0, 2); }
#endif
