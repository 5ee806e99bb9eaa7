"""Mount operations a container root needs, in terms of the syscall layer.

Bind mounts, propagation changes, recursive read-only and idmapped mounts.
Recursive read-only needs mount_setattr(AT_RECURSIVE): the old
MS_REMOUNT|MS_BIND|MS_RDONLY only changes the top mount, leaving submounts
writable, which is why Kubernetes' "recursive read-only" needs Linux >= 5.12.
"""

from __future__ import annotations

import os

from namespaces import syscalls as sc
from namespaces.record import Record

AT_FDCWD = -100

PROPAGATION = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
}


class Mounter(Record):
    """Mount helpers bound to one syscall layer (the real one, or a fake in tests)."""

    __slots__ = ("sys",)

    def __init__(self, sys: sc.Syscalls) -> None:
        self.sys = sys

    def bind(self, source: str, target: str, *, recursive: bool = True) -> None:
        flags = sc.MS_BIND | (sc.MS_REC if recursive else 0)
        self.sys.mount(source, target, None, flags, None)

    def set_propagation(self, target: str, mode: str) -> None:
        """private/shared/slave, with an r- prefix for the whole subtree."""
        try:
            flags = PROPAGATION[mode]
        except KeyError:
            raise ValueError(
                f"unknown propagation {mode!r} (want one of {', '.join(PROPAGATION)})"
            ) from None
        self.sys.mount(None, target, None, flags, None)

    def make_readonly(self, target: str, *, recursive: bool) -> None:
        """Read-only for `target`, and with `recursive` for every mount below it."""
        if recursive:
            self.sys.mount_setattr(
                AT_FDCWD, target, sc.AT_RECURSIVE, sc.MountAttr(attr_set=sc.MOUNT_ATTR_RDONLY)
            )
        else:
            flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY
            self.sys.mount(None, target, None, flags, None)

    def idmapped_bind(self, source: str, target: str, userns_fd: int) -> None:
        """Bind `source` at `target` with ownership shifted through a user namespace.

        Clone the tree detached (open_tree), idmap the clone (mount_setattr),
        then attach it (move_mount): the tree is never visible unmapped.
        """
        tree = self.sys.open_tree(
            AT_FDCWD, source, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_RECURSIVE
        )
        try:
            self.sys.mount_setattr(
                tree,
                "",
                sc.AT_EMPTY_PATH | sc.AT_RECURSIVE,
                sc.MountAttr(attr_set=sc.MOUNT_ATTR_IDMAP, userns_fd=userns_fd),
            )
            self.sys.move_mount(tree, "", AT_FDCWD, target, sc.MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(tree)

    def unmount(self, target: str, *, detach: bool = False) -> None:
        self.sys.umount2(target, sc.MNT_DETACH if detach else 0)
