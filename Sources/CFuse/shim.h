// Tiny bridge to libfuse3's low-level API for what Swift cannot call directly.
#ifndef CKPTFS_CFUSE_SHIM_H
#define CKPTFS_CFUSE_SHIM_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

/// `fuse_session_new` becomes a macro in libfuse >= 3.17; calling it through this keeps Swift source stable.
static inline struct fuse_session *ckptfs_fuse_session_new(struct fuse_args *args,
        const struct fuse_lowlevel_ops *ops, size_t ops_size, void *userdata) {
    return fuse_session_new(args, ops, ops_size, userdata);
}

#endif
