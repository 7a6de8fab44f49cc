// Tiny bridge to libfuse3's low-level API for what Swift cannot call directly.
#ifndef CKPTFS_CFUSE_SHIM_H
#define CKPTFS_CFUSE_SHIM_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

/// `fuse_session_new` becomes a macro in libfuse >= 3.17; calling it through this keeps Swift source stable.
static inline struct fuse_session *ckptfs_fuse_session_new(struct fuse_args *args,
        const struct fuse_lowlevel_ops *ops, size_t ops_size, void *userdata) {
    return fuse_session_new(args, ops, ops_size, userdata);
}

// FUSE features newer than libfuse 3.14: mmap of direct-I/O files (protocol 7.39) and passthrough (7.40,
// Linux >= 6.9). The layouts and numbers below are the kernel's (include/uapi/linux/fuse.h).

/// `FUSE_INIT_EXT`, and the INIT flags above bit 31 as bits of `flags2`: `FUSE_DIRECT_IO_ALLOW_MMAP`
/// (bit 36) and `FUSE_PASSTHROUGH` (bit 37).
#define CKPTFS_INIT_EXT (1u << 30)
#define CKPTFS_INIT2_DIRECT_IO_ALLOW_MMAP (1u << 4)
#define CKPTFS_INIT2_PASSTHROUGH (1u << 5)
/// `FUSE_INIT` opcode and header sizes: `fuse_in_header` is 40 bytes, `fuse_out_header` 16.
#define CKPTFS_OP_INIT 26
#define CKPTFS_IN_HEADER 40

/// The `flags2` the kernel offers if `request` (as read from /dev/fuse) is FUSE_INIT, else 0.
static inline uint32_t ckptfs_init_offered_flags2(const void *request, size_t length) {
    uint32_t opcode, flags, flags2;
    if (length < CKPTFS_IN_HEADER + 20) return 0;
    memcpy(&opcode, (const char *)request + 4, 4);
    memcpy(&flags, (const char *)request + CKPTFS_IN_HEADER + 12, 4);
    memcpy(&flags2, (const char *)request + CKPTFS_IN_HEADER + 16, 4);
    return opcode == CKPTFS_OP_INIT && (flags & CKPTFS_INIT_EXT) ? flags2 : 0;
}

/// Adds `flags2` to libfuse's successful INIT reply (`iov[1]` is its `fuse_init_out`), with backing files
/// at most `depth` file systems deep if passthrough is among them. Returns 1 if it patched the reply.
static inline int ckptfs_init_accept(struct iovec *iov, int count, uint32_t flags2, uint32_t depth) {
    int32_t error;
    uint32_t flags, reply2;
    if (count < 2 || iov[0].iov_len < 16 || iov[1].iov_len < 40) return 0;
    memcpy(&error, (const char *)iov[0].iov_base + 4, 4);
    if (error != 0) return 0;
    char *out = (char *)iov[1].iov_base;
    memcpy(&flags, out + 12, 4);
    memcpy(&reply2, out + 32, 4);
    flags |= CKPTFS_INIT_EXT;
    reply2 |= flags2;
    memcpy(out + 12, &flags, 4);
    memcpy(out + 32, &reply2, 4);
    if (flags2 & CKPTFS_INIT2_PASSTHROUGH) memcpy(out + 36, &depth, 4);  // max_stack_depth
    return 1;
}

/// The kernel's `fuse_backing_map`.
struct ckptfs_backing_map { int32_t fd; uint32_t flags; uint64_t padding; };

/// `FUSE_DEV_IOC_BACKING_OPEN`: registers `fd` as a backing file; returns its id (> 0), or -1 and errno.
static inline int ckptfs_backing_open(int device, int fd) {
    struct ckptfs_backing_map map = { fd, 0, 0 };
    return ioctl(device, _IOW(229, 1, struct ckptfs_backing_map), &map);
}

/// `FUSE_DEV_IOC_BACKING_CLOSE`: drops a backing id (files opened with it keep their backing file).
static inline int ckptfs_backing_close(int device, uint32_t backing) {
    return ioctl(device, _IOW(229, 2, uint32_t), &backing);
}

/// `FOPEN_PASSTHROUGH` and `FOPEN_NOFLUSH`, and the kernel's `fuse_open_out` with its `backing_id`.
#define CKPTFS_FOPEN_PASSTHROUGH (1u << 7)
#define CKPTFS_FOPEN_NOFLUSH (1u << 5)
struct ckptfs_open_out { uint64_t fh; uint32_t open_flags; int32_t backing_id; };

static inline void ckptfs_fill_open(struct ckptfs_open_out *out, uint64_t fh, int32_t backing, int noflush) {
    out->fh = fh;
    out->open_flags = CKPTFS_FOPEN_PASSTHROUGH | (noflush ? CKPTFS_FOPEN_NOFLUSH : 0);
    out->backing_id = backing;
}

/// Answers OPEN with a passthrough handle: reads and writes of it go to the backing file in the kernel.
/// With `noflush`, its `close()` sends no FLUSH.
static inline int ckptfs_reply_open_passthrough(fuse_req_t req, uint64_t fh, int32_t backing, int noflush) {
    struct ckptfs_open_out out;
    ckptfs_fill_open(&out, fh, backing, noflush);
    return fuse_reply_buf(req, (const char *)&out, sizeof out);
}

/// Answers CREATE with the new entry and a passthrough handle (`fuse_entry_out`, 128 bytes, then
/// `fuse_open_out`).
static inline int ckptfs_reply_create_passthrough(fuse_req_t req, const struct fuse_entry_param *e, uint64_t fh,
        int32_t backing) {
    struct {
        uint64_t nodeid, generation, entry_valid, attr_valid;
        uint32_t entry_valid_nsec, attr_valid_nsec;
        uint64_t ino, size, blocks, atime, mtime, ctime;
        uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags;
        struct ckptfs_open_out open;
    } out;
    memset(&out, 0, sizeof out);
    out.nodeid = e->ino;
    out.generation = e->generation;
    out.entry_valid = (uint64_t)e->entry_timeout;
    out.entry_valid_nsec = (uint32_t)((e->entry_timeout - (double)out.entry_valid) * 1e9);
    out.attr_valid = (uint64_t)e->attr_timeout;
    out.attr_valid_nsec = (uint32_t)((e->attr_timeout - (double)out.attr_valid) * 1e9);
    out.ino = e->attr.st_ino;
    out.size = (uint64_t)e->attr.st_size;
    out.blocks = (uint64_t)e->attr.st_blocks;
    out.atime = (uint64_t)e->attr.st_atim.tv_sec;
    out.mtime = (uint64_t)e->attr.st_mtim.tv_sec;
    out.ctime = (uint64_t)e->attr.st_ctim.tv_sec;
    out.atimensec = (uint32_t)e->attr.st_atim.tv_nsec;
    out.mtimensec = (uint32_t)e->attr.st_mtim.tv_nsec;
    out.ctimensec = (uint32_t)e->attr.st_ctim.tv_nsec;
    out.mode = e->attr.st_mode;
    out.nlink = (uint32_t)e->attr.st_nlink;
    out.uid = e->attr.st_uid;
    out.gid = e->attr.st_gid;
    out.rdev = (uint32_t)e->attr.st_rdev;
    out.blksize = (uint32_t)e->attr.st_blksize;
    ckptfs_fill_open(&out.open, fh, backing, 0);
    return fuse_reply_buf(req, (const char *)&out, sizeof out);
}

#endif
