"""Mount one `mounts` entry inside the container's rootfs, by file descriptor.

The mount point is resolved inside the rootfs (openat2 RESOLVE_IN_ROOT or
the O_NOFOLLOW walk of namespaces.rootpath), created if missing, held as
an O_PATH fd, and mounted on through /proc/self/fd/N: a symlink in the
container's tree, or one swapped in while we work, can redirect the mount
only to another place inside the rootfs, never onto the host
(CVE-2021-30465). After the mount the destination is opened again to reach
the new mount's root, checked to be a different mount, and only then
remounted (flags), given recursive attributes and propagation.
"""

from __future__ import annotations

import errno
import os
import stat

from namespaces import syscalls as sc
from namespaces.record import Record
from namespaces.rootpath import RootFS
from namespaces.userns import new_userns_fd
from runtime.errors import RootfsError
from runtime.rootfs_options import ATIME_FLAGS, flags_from_statvfs
from runtime.rootfs_spec import MountSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

MOVE_MOUNT_T_EMPTY_PATH = 0x40
# Flags a user namespace cannot drop from a mount it did not make (EPERM).
LOCKED_FLAGS = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | ATIME_FLAGS


def fd_path(fd: int) -> str:
    """The magic link the kernel resolves to exactly what `fd` is."""
    return f"/proc/self/fd/{fd}"


class step:
    """Turn an OSError inside into a RootfsError naming the entry and the step."""

    __slots__ = ("path", "what", "where")

    def __init__(self, where: str, what: str, path: str | None = None) -> None:
        self.where, self.what, self.path = where, what, path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, OSError):
            raise RootfsError(
                self.where, self.what, exc.errno, path=self.path or exc.filename
            ) from exc


class MountContext(Record):
    """What every mount of one container needs to know."""

    __slots__ = ("cgroup_path", "idmap_trees", "in_userns", "namespaces", "root", "sys")

    def __init__(
        self,
        sys: sc.Syscalls,
        root: RootFS,
        namespaces: frozenset[str] = frozenset(),
        in_userns: bool = False,
        cgroup_path: str | None = None,
        idmap_trees: Mapping[int, int] | None = None,
    ) -> None:
        self.sys = sys
        self.root = root
        self.namespaces = namespaces
        self.in_userns = in_userns
        self.cgroup_path = cgroup_path
        self.idmap_trees = dict() if idmap_trees is None else idmap_trees


def mount_entry(m: MountSpec, ctx: MountContext) -> None:
    """Mount `m` at its destination inside ctx.root; RootfsError says which and why."""
    source_fd = -1
    source_is_dir = True
    bind_source: str | None = None
    if m.is_cgroup and "cgroup" not in ctx.namespaces:
        # No cgroup namespace: a cgroup2 mount would show the host's whole tree.
        # Bind the container's own cgroup instead (runc does the same).
        if ctx.cgroup_path is None:
            raise RootfsError(m.where, "no cgroup namespace and no cgroup directory to bind")
        bind_source = ctx.cgroup_path
    elif m.bind and not (m.options.idmap or m.options.ridmap):
        bind_source = m.source
    try:
        if bind_source is not None:
            with step(m.where, f"open the source {bind_source}"):
                source_fd = os.open(bind_source, os.O_PATH | os.O_CLOEXEC)
                source_is_dir = stat.S_ISDIR(os.fstat(source_fd).st_mode)
        elif m.index in ctx.idmap_trees:
            source_is_dir = stat.S_ISDIR(os.fstat(ctx.idmap_trees[m.index]).st_mode)
        elif m.bind:
            with step(m.where, f"stat the source {m.source}"):
                source_is_dir = stat.S_ISDIR(os.stat(m.source).st_mode)
        with step(m.where, "create the mount point"):
            target = open_target(ctx.root, m.clean_destination, directory=source_is_dir)
        try:
            _mount_on(m, ctx, target, source_fd)
        finally:
            os.close(target)
    finally:
        if source_fd >= 0:
            os.close(source_fd)


def _mount_on(m: MountSpec, ctx: MountContext, target: int, source_fd: int) -> None:
    s = ctx.sys
    check_beneath(ctx.root, target, m.where)
    if m.type in ("proc", "sysfs") and not m.bind:
        # procfs or sysfs on a symlinked /proc would land where masks do not look
        check_not_redirected(ctx.root, target, m)
    opts = m.options
    force_ro = False
    if source_fd >= 0:
        with step(m.where, f"bind {m.source if not m.is_cgroup else ctx.cgroup_path}"):
            rec = sc.MS_REC if (opts.recursive_bind or m.is_cgroup) else 0
            s.mount(fd_path(source_fd), fd_path(target), None, sc.MS_BIND | rec, None)
    elif opts.idmap or opts.ridmap:
        _attach_idmapped(m, ctx, target)
    elif m.is_cgroup:
        data = opts.data if m.type == "cgroup2" else None  # v1 controller names mean nothing to v2
        with step(m.where, "mount cgroup2"):
            s.mount("cgroup2", fd_path(target), "cgroup2", opts.flags, data or None)
    else:
        try:
            with step(m.where, f"mount {m.type}"):
                s.mount(m.source, fd_path(target), m.type, opts.flags, opts.data or None)
        except RootfsError as exc:
            if not (m.type == "sysfs" and exc.errno == errno.EPERM):
                raise
            # sysfs needs a network namespace of our own (in a user namespace);
            # without one, the host's /sys read-only is what runc gives too.
            with step(m.where, "bind /sys (sysfs not mountable here)"):
                s.mount("/sys", fd_path(target), None, sc.MS_BIND | sc.MS_REC, None)
            force_ro = True
    bound = source_fd >= 0 or force_ro or opts.idmap or opts.ridmap
    with step(m.where, "open the new mount"):
        top = ctx.root.open(m.clean_destination, os.O_PATH)
    try:
        if not opts.flags & sc.MS_REMOUNT and mount_id(top) == mount_id(target):
            raise RootfsError(m.where, "the destination changed during the mount")
        if bound:
            _remount_bind(m, s, top, force_ro)
        if opts.has_recursive_attrs or force_ro:
            rec_set = opts.rec_set | (sc.MOUNT_ATTR_RDONLY if force_ro else 0)
            with step(m.where, "set recursive mount attributes"):
                s.mount_setattr(
                    top,
                    "",
                    sc.AT_EMPTY_PATH | sc.AT_RECURSIVE,
                    sc.MountAttr(attr_set=rec_set, attr_clr=opts.rec_clr),
                )
        for flag in opts.propagation:
            with step(m.where, "set propagation"):
                s.mount(None, fd_path(top), None, flag, None)
        if opts.tmpcopyup:
            with step(m.where, "copy the mount point's contents into the tmpfs"):
                copy_tree(target, top)
    finally:
        os.close(top)


def _remount_bind(m: MountSpec, s: sc.Syscalls, top: int, force_ro: bool) -> None:
    """Apply ro/nosuid/... to a bind: mount(2) ignores them on the MS_BIND call itself.

    Start from the flags the mount has (inherited from its source) and
    change only what the options name, so "rbind,rw" of a nosuid source
    stays nosuid.
    """
    opts = m.options
    current = flags_from_statvfs(os.fstatvfs(top).f_flag)
    want = current & ~opts.cleared
    if opts.remount_flags & ATIME_FLAGS:
        want &= ~ATIME_FLAGS
    want |= opts.remount_flags | (sc.MS_RDONLY if force_ro else 0)
    if want == current:
        return
    base = sc.MS_REMOUNT | sc.MS_BIND
    try:
        with step(m.where, "remount with the mount's flags"):
            s.mount(None, fd_path(top), None, base | want, None)
    except RootfsError as exc:
        if exc.errno != errno.EPERM:
            raise
        # In a user namespace the flags of a mount made outside are locked: keep them.
        keep = current & LOCKED_FLAGS
        if keep & ATIME_FLAGS:
            want &= ~ATIME_FLAGS
        with step(m.where, "remount keeping the source's locked flags"):
            s.mount(None, fd_path(top), None, base | want | keep, None)


def _attach_idmapped(m: MountSpec, ctx: MountContext, target: int) -> None:
    tree = ctx.idmap_trees.get(m.index)
    owned = tree is None
    if tree is None:
        tree = open_idmapped_tree(m, ctx.sys)
    try:
        with step(m.where, "attach the idmapped mount"):
            ctx.sys.move_mount(
                tree, "", target, "", sc.MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
            )
    finally:
        if owned:
            os.close(tree)


def open_idmapped_tree(m: MountSpec, s: sc.Syscalls, userns_fd: int | None = None) -> int:
    """A detached clone of m.source with its ids shifted, not attached anywhere yet.

    Maps come from the mount's uidMappings/gidMappings; without them from
    `userns_fd`, or else the caller's own user namespace (the container's,
    when called in the init). Setting MOUNT_ATTR_IDMAP needs CAP_SYS_ADMIN
    over the filesystem's user namespace: for host filesystems that means
    calling this outside the container's user namespace.
    """
    own_ns = -1
    with step(m.where, "make the id-mapping user namespace"):
        if m.uid_mappings:
            own_ns = userns_fd = new_userns_fd(m.uid_mappings, m.gid_mappings, s)
        elif userns_fd is None:
            own_ns = userns_fd = os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        rec = sc.AT_RECURSIVE if m.options.recursive_bind else 0
        with step(m.where, f"clone {m.source}"):
            tree = s.open_tree(
                sc.AT_FDCWD, m.source, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | rec
            )
        try:
            with step(m.where, "idmap the clone"):
                s.mount_setattr(
                    tree,
                    "",
                    sc.AT_EMPTY_PATH | (sc.AT_RECURSIVE if m.options.ridmap else 0),
                    sc.MountAttr(attr_set=sc.MOUNT_ATTR_IDMAP, userns_fd=userns_fd),
                )
        except BaseException:
            os.close(tree)
            raise
        return tree
    finally:
        if own_ns >= 0:
            os.close(own_ns)


# -- mount points ------------------------------------------------------------------


def open_target(root: RootFS, rel: str, *, directory: bool) -> int:
    """An O_PATH fd of the mount point `rel` in `root`, created if missing.

    A directory for most mounts; an empty file for a bind of a file.
    Symlinks on the way are followed inside the root only.
    """
    if directory:
        return root.mkdir_all(rel)
    try:
        return root.open(rel, os.O_PATH)
    except FileNotFoundError:
        pass
    resolved = root.resolve(rel)
    parent_rel, name = os.path.split(resolved)
    if name in ("", ".", ".."):
        raise IsADirectoryError(errno.EISDIR, "not a file name", rel)
    parent = root.mkdir_all(parent_rel)
    try:
        fd = os.open(
            name,
            os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=parent,
        )
        os.close(fd)
    except FileExistsError:
        pass  # created meanwhile: the open below resolves it in the root again
    finally:
        os.close(parent)
    return root.open(rel, os.O_PATH)


def check_beneath(root: RootFS, fd: int, where: str) -> None:
    """Refuse an fd that is not below the root (a belt to openat2's braces)."""
    real = os.readlink(fd_path(fd))
    top = os.readlink(fd_path(root.fd))
    if real != top and not real.startswith(top.rstrip("/") + "/"):
        raise RootfsError(where, f"the mount point resolved outside the rootfs, to {real}")


def check_not_redirected(root: RootFS, fd: int, m: MountSpec) -> None:
    real = os.readlink(fd_path(fd))
    want = os.path.join(os.readlink(fd_path(root.fd)), m.clean_destination)
    if real != want:
        raise RootfsError(
            m.where, f"the mount point is redirected by a symlink (to {real}): refused for {m.type}"
        )


def mount_id(fd: int) -> int:
    """The id of the mount `fd` is on (from /proc/self/fdinfo)."""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.ENOTSUP, "no mnt_id in fdinfo", f"/proc/self/fdinfo/{fd}")


def make_mount_private(path: str, s: sc.Syscalls) -> None:
    """Make the mount holding `path` private (walking up to the mount point).

    pivot_root refuses a new root whose parent mount is shared, and a bind
    of the rootfs under a shared parent would propagate to the host.
    """
    while True:
        try:
            s.mount(None, path, None, sc.MS_PRIVATE, None)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL or path == "/":
                raise
            path = os.path.dirname(path)


# -- tmpcopyup ----------------------------------------------------------------------


def copy_tree(src: int, dst: int) -> None:
    """Copy what is under directory fd `src` into directory fd `dst` (both may be O_PATH).

    Owners, modes, symlinks, fifos and device nodes are kept; nothing is
    followed, so a symlink in the source is copied as a symlink.
    """
    sfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=src)
    dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dst)
    try:
        for name in os.listdir(sfd):
            st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o700, dir_fd=dfd)
                sub_s = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
                sub_d = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                try:
                    copy_tree(sub_s, sub_d)
                finally:
                    os.close(sub_s)
                    os.close(sub_d)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
            elif stat.S_ISREG(st.st_mode):
                _copy_file(sfd, dfd, name)
            else:
                os.mknod(name, st.st_mode & ~0o7777 | 0o600, st.st_rdev, dir_fd=dfd)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(name, mode, dir_fd=dfd)  # the last component is not a symlink
    finally:
        os.close(sfd)
        os.close(dfd)


def _copy_file(sfd: int, dfd: int, name: str) -> None:
    fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
    try:
        fout = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dfd,
        )
        try:
            while chunk := os.read(fin, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fout, view) :]
        finally:
            os.close(fout)
    finally:
        os.close(fin)
