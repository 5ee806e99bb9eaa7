"""After pivot_root: readonlyPaths, maskedPaths and a read-only root, all by fd.

These run in the container's root, where /proc may or may not be mounted,
so they use the new mount API on file descriptors (open_tree, fsopen,
fsmount, move_mount, mount_setattr) rather than path strings: each path is
resolved once inside the root, and the mount lands on exactly that fd.

A masked file gets /dev/null bound over it. The container's /dev/null is
checked first (O_PATH|O_NOFOLLOW, then fstat): a container could have made
it a symlink to, or a copy of, something it wants writable
(CVE-2025-31133), so anything but the 1:3 character device is refused.
"""

from __future__ import annotations

import errno
import os
import stat

from namespaces import syscalls as sc
from namespaces.rootpath import RootFS
from runtime.errors import RootfsError
from runtime.rootfs_mount import MOVE_MOUNT_T_EMPTY_PATH, step
from runtime.rootfs_options import flags_from_statvfs

NULL_RDEV = os.makedev(1, 3)


def readonly_path(root: RootFS, path: str, where: str, sys: sc.Syscalls) -> None:
    """Bind `path` onto itself, read-only with every submount; missing paths are skipped."""
    target = _open_or_skip(root, path, where)
    if target < 0:
        return
    try:
        with step(where, "clone it"):
            tree = sys.open_tree(
                target,
                "",
                sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH | sc.AT_RECURSIVE,
            )
        try:
            with step(where, "make the clone read-only"):
                sys.mount_setattr(
                    tree,
                    "",
                    sc.AT_EMPTY_PATH | sc.AT_RECURSIVE,
                    sc.MountAttr(attr_set=sc.MOUNT_ATTR_RDONLY),
                )
            with step(where, "attach the read-only clone"):
                _attach(sys, tree, target)
        finally:
            os.close(tree)
    finally:
        os.close(target)


def open_dev_null(root: RootFS) -> int:
    """An O_PATH fd of the container's /dev/null, proven to be the 1:3 char device."""
    where = "linux.maskedPaths"
    with step(where, "open the container's /dev/null"):
        fd = root.open("dev/null", os.O_PATH, follow_last=False)
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != NULL_RDEV:
        os.close(fd)
        kind = stat.filemode(st.st_mode)[0]
        raise RootfsError(
            where,
            f"/dev/null in the container is not the 1:3 character device "
            f"(type {kind!r}, rdev {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}): refusing to "
            "mask with it",
            path="/dev/null",
        )
    return fd


def mask_path(root: RootFS, path: str, where: str, null_fd: int, sys: sc.Syscalls) -> None:
    """Hide `path`: an empty read-only tmpfs over a directory, /dev/null over anything else."""
    target = _open_or_skip(root, path, where)
    if target < 0:
        return
    try:
        if stat.S_ISDIR(os.fstat(target).st_mode):
            with step(where, "make an empty read-only tmpfs"):
                fs = sys.fsopen("tmpfs", sc.FSOPEN_CLOEXEC)
                try:
                    sys.fsconfig(fs, sc.FSCONFIG_CMD_CREATE)
                    tree = sys.fsmount(fs, sc.FSMOUNT_CLOEXEC, sc.MOUNT_ATTR_RDONLY)
                finally:
                    os.close(fs)
        else:
            with step(where, "clone /dev/null"):
                tree = sys.open_tree(
                    null_fd, "", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH
                )
        try:
            with step(where, "mount over it"):
                _attach(sys, tree, target)
        finally:
            os.close(tree)
    finally:
        os.close(target)


def remount_root_readonly(sys: sc.Syscalls) -> None:
    """root.readonly: only the / mount itself, keeping its nosuid/nodev/atime flags."""
    try:
        with step("root.readonly", "make / read-only"):
            sys.mount_setattr(sc.AT_FDCWD, "/", 0, sc.MountAttr(attr_set=sc.MOUNT_ATTR_RDONLY))
        return
    except RootfsError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    keep = flags_from_statvfs(os.statvfs("/").f_flag)
    with step("root.readonly", "remount / read-only"):
        sys.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | keep, None)


def _attach(sys: sc.Syscalls, tree: int, target: int) -> None:
    sys.move_mount(tree, "", target, "", sc.MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)


def _open_or_skip(root: RootFS, path: str, where: str) -> int:
    """O_PATH fd of `path` in the root, or -1 when it does not exist (runc skips those)."""
    try:
        return root.open(path, os.O_PATH)
    except FileNotFoundError:
        return -1
    except OSError as exc:
        raise RootfsError(where, "open it", exc.errno, path=path) from exc
