"""The container's /dev: default devices, linux.devices, /dev/ptmx and the fd symlinks.

Nodes are made with mknod where the init may (CAP_MKNOD in the initial
user namespace). In a user namespace mknod of a device is refused, so the
host's node is bind-mounted onto an empty file instead, as runc does.
Every node is created relative to an fd of its directory inside the
rootfs, never through a path a symlink could redirect.
"""

from __future__ import annotations

import errno
import os
import stat

from namespaces import syscalls as sc
from namespaces.rootpath import RootFS, lexical_clean
from runtime.errors import RootfsError
from runtime.rootfs_mount import fd_path, step
from runtime.rootfs_spec import DeviceSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# config-linux.md "Default Devices": every container gets these, owned by root.
DEFAULT_DEVICES = (
    DeviceSpec("/dev/null", "c", 1, 3),
    DeviceSpec("/dev/zero", "c", 1, 5),
    DeviceSpec("/dev/full", "c", 1, 7),
    DeviceSpec("/dev/random", "c", 1, 8),
    DeviceSpec("/dev/urandom", "c", 1, 9),
    DeviceSpec("/dev/tty", "c", 5, 0),
)

DEV_SYMLINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)


def setup_dev(
    root: RootFS,
    devices: Iterable[DeviceSpec],
    *,
    in_userns: bool,
    with_core: bool,
    sys: sc.Syscalls,
) -> None:
    """Populate the container's /dev: nodes, the ptmx symlink, fd/stdio/core symlinks."""
    wanted = list(devices)
    taken = {lexical_clean(d.path) for d in wanted}
    for d in DEFAULT_DEVICES:
        if lexical_clean(d.path) not in taken:
            create_device(root, d, in_userns=in_userns, sys=sys)
    for d in wanted:
        create_device(root, d, in_userns=in_userns, sys=sys)
    with step("/dev", "open /dev"):
        dev = root.mkdir_all("dev")
    try:
        with step("/dev/ptmx", "make /dev/ptmx a symlink to pts/ptmx"):
            # the devpts instance's own ptmx; the host's /dev/ptmx would open host ptys
            try:
                os.unlink("ptmx", dir_fd=dev)
            except FileNotFoundError:
                pass
            os.symlink("pts/ptmx", "ptmx", dir_fd=dev)
        links = list(DEV_SYMLINKS)
        if with_core:  # the kernel has /proc/kcore and the container a /proc
            links.append(("core", "/proc/kcore"))
        for name, target in links:
            with step(f"/dev/{name}", f"symlink to {target}"):
                try:
                    os.symlink(target, name, dir_fd=dev)
                except FileExistsError:
                    pass
    finally:
        os.close(dev)


def create_device(root: RootFS, d: DeviceSpec, *, in_userns: bool, sys: sc.Syscalls) -> None:
    """Create one node, or check the one already there (the spec: a mismatch is an error)."""
    rel = lexical_clean(d.path)
    parent_rel, name = os.path.split(rel)
    with step(d.where, "create its directory"):
        parent = root.mkdir_all(parent_rel)
    try:
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if _matches(st, d):
                return
            if d.index is not None:
                raise RootfsError(
                    d.where, "a different file already exists there", errno.EEXIST, path=d.path
                )
            # a default device shadowed by something else in the image: replace it
            with step(d.where, "remove what the image has there"):
                os.unlink(name, dir_fd=parent)
        if in_userns and d.kind != "p":
            _bind_host_node(parent, name, d, sys)
        else:
            _mknod(parent, name, d)
    finally:
        os.close(parent)


def _matches(st: os.stat_result, d: DeviceSpec) -> bool:
    if stat.S_IFMT(st.st_mode) != stat.S_IFMT(d.mode):
        # a bind-mounted host node shows as that node; an unmounted placeholder as a file
        return False
    return d.kind == "p" or st.st_rdev == d.rdev


def _mknod(parent: int, name: str, d: DeviceSpec) -> None:
    with step(d.where, f"mknod {d.kind} {d.major}:{d.minor}"):
        old = os.umask(0)
        try:
            os.mknod(name, d.mode, d.rdev, dir_fd=parent)
        finally:
            os.umask(old)
    with step(d.where, f"chown {d.uid}:{d.gid}"):
        os.chown(name, d.uid, d.gid, dir_fd=parent, follow_symlinks=False)


def _bind_host_node(parent: int, name: str, d: DeviceSpec, sys: sc.Syscalls) -> None:
    """In a user namespace: an empty file with the host's node bound on it."""
    with step(d.where, "create the bind target"):
        fd = os.open(
            name,
            os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
            0,
            dir_fd=parent,
        )
        os.close(fd)
    with step(d.where, f"open the host's {d.path}"):
        src = os.open(d.path, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(src)
        if not _matches(st, d):
            raise RootfsError(
                d.where,
                f"the host's {d.path} is not the {d.kind} {d.major}:{d.minor} device asked for",
            )
        with step(d.where, "open the bind target"):
            tgt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            with step(d.where, f"bind the host's {d.path}"):
                sys.mount(fd_path(src), fd_path(tgt), None, sc.MS_BIND, None)
        finally:
            os.close(tgt)
    finally:
        os.close(src)
