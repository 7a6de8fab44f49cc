// Linux calls and flags that Glibc's Swift overlay does not export (glibc declares them only with
// _GNU_SOURCE, which this module must not define: its headers would then differ from Glibc's).
#ifndef CKPTFS_CLINUX_SHIM_H
#define CKPTFS_CLINUX_SHIM_H

#include <fcntl.h>
#include <sys/types.h>

/// `O_DIRECT`, whose value differs between architectures.
static const int ckptfs_o_direct = __O_DIRECT;

/// `O_TMPFILE` (an unnamed file in the directory opened), whose value differs between architectures.
static const int ckptfs_o_tmpfile = __O_TMPFILE | __O_DIRECTORY;

/// `AT_EMPTY_PATH` (`linkat` of the descriptor itself), the same on every architecture.
static const int ckptfs_at_empty_path = 0x1000;

/// glibc's `fallocate` (declared by <fcntl.h> only with _GNU_SOURCE).
extern int fallocate(int fd, int mode, off_t offset, off_t length);

/// Frees the disk blocks of `length` bytes at `offset` of `fd`, keeping the file's size
/// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`): the range then reads as zeros. -1 with errno set on
/// failure (`EOPNOTSUPP` where the file system cannot).
static inline int ckptfs_punch_hole(int fd, off_t offset, off_t length) {
    return fallocate(fd, 0x02 | 0x01, offset, length);
}

#endif
