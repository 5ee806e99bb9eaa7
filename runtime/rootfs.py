"""The container's root filesystem: validate, prepare (before pivot), pivot, finish.

Called in this order (docs/RUNTIME-DESIGN.md): `validate_rootfs` by
`create` before anything is forked; in the container's init, in its new
mount namespace, `prepare_rootfs`, then `pivot_into`, then
`finish_rootfs`. Every mount target is resolved inside the rootfs by fd
(runtime/rootfs_mount.py); every error names the config entry that failed
(`mounts[3] (/sys): mount sysfs: EPERM (...)`).

Propagation: the init first makes its copy of the host's mounts slaves
(private when rootfsPropagation asks for private; shared when it asks for
shared, so that bidirectional volumes reach the host, as with runc), makes
the mount holding the rootfs private, and binds the rootfs onto itself so
that it is a mount point pivot_root accepts. rootfsPropagation itself is
applied to the new `/` after the pivot.
"""

from __future__ import annotations

import os

from namespaces import syscalls as sc
from namespaces.rootpath import RootFS
from runtime.devices import setup_dev
from runtime.errors import RootfsError, SpecError
from runtime.rootfs_mount import (
    MountContext,
    make_mount_private,
    mount_entry,
    open_idmapped_tree,
    step,
)
from runtime.rootfs_options import PROPAGATION
from runtime.rootfs_paths import mask_path, open_dev_null, readonly_path, remount_root_readonly
from runtime.rootfs_spec import (
    RootfsSpec,
    parse_paths,
    parse_propagation,
    parse_rootfs,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = [
    "RootfsError",
    "finish_rootfs",
    "open_idmapped_trees",
    "pivot_into",
    "preload",
    "prepare_rootfs",
    "rootfs_path",
    "validate_rootfs",
]


def preload() -> None:
    """Import now what the rootfs code imports lazily (nothing is importable after pivot)."""
    import namespaces.userns  # noqa: F401  (idmapped mounts with their own maps)


def validate_rootfs(config: dict[str, Any], bundle: str) -> None:
    """Check root, mounts, devices, masked/readonly paths and rootfsPropagation (SpecError)."""
    spec = parse_rootfs(config, bundle)
    for m in spec.mounts:
        idmapped = m.options.idmap or m.options.ridmap
        if idmapped and not m.uid_mappings and "user" not in spec.namespaces:
            raise SpecError(
                f"mounts[{m.index}].uidMappings",
                "an idmapped mount without its own maps needs a user namespace to take them from",
            )


def rootfs_path(config: dict[str, Any], bundle: str) -> str:
    """The absolute, symlink-free host path of root.path (relative paths: to the bundle)."""
    return parse_rootfs(config, bundle).rootfs


def prepare_rootfs(
    config: dict[str, Any],
    bundle: str,
    *,
    sys: sc.Syscalls,
    in_userns: bool,
    cgroup_path: str | None = None,
    idmap_trees: Mapping[int, int] | None = None,
) -> None:
    """In the init's new mount namespace, before pivot: build the container's tree.

    `cgroup_path` is the container's cgroup directory on the host, bound at a
    cgroup mount's destination when the container has no cgroup namespace.
    `idmap_trees` maps a mount index to a detached idmapped tree made by
    `open_idmapped_trees` outside the container's user namespace.
    """
    spec = parse_rootfs(config, bundle)
    with step("linux.rootfsPropagation", "isolate the container's mounts from the host's"):
        sys.mount(None, "/", None, first_propagation(spec.propagation), None)
    with step("root.path", f"make the mount holding {spec.rootfs} private"):
        make_mount_private(spec.rootfs, sys)
    with step("root.path", f"bind {spec.rootfs} onto itself"):
        sys.mount(spec.rootfs, spec.rootfs, None, sc.MS_BIND | sc.MS_REC, None)
    # Opened after the bind, so the fd is on the new mount pivot_root will take.
    with step("root.path", f"open {spec.rootfs}"):
        root = RootFS(spec.rootfs, sys)
    try:
        ctx = MountContext(
            sys=sys,
            root=root,
            namespaces=spec.namespaces,
            in_userns=in_userns,
            cgroup_path=cgroup_path,
            idmap_trees=idmap_trees or {},
        )
        for m in spec.mounts:
            mount_entry(m, ctx)
        if needs_dev_setup(spec):
            setup_dev(
                root,
                spec.devices,
                in_userns=in_userns,
                with_core=os.path.exists("/proc/kcore")
                and any(m.type == "proc" and not m.bind for m in spec.mounts),
                sys=sys,
            )
    finally:
        root.close()


def first_propagation(configured: str | None) -> int:
    """What "/" gets before anything is mounted: rslave unless private or shared is asked."""
    if configured in ("private", "rprivate"):
        return sc.MS_PRIVATE | sc.MS_REC
    if configured in ("shared", "rshared"):
        return sc.MS_SHARED | sc.MS_REC
    return sc.MS_SLAVE | sc.MS_REC


def needs_dev_setup(spec: RootfsSpec) -> bool:
    """runc's rule: /dev is ours to populate unless the config binds one in."""
    return not any(m.bind and m.clean_destination == "dev" for m in spec.mounts)


def open_idmapped_trees(
    config: dict[str, Any], bundle: str, *, sys: sc.Syscalls, userns_fd: int | None = None
) -> dict[int, int]:
    """Detached idmapped clones of every idmap/ridmap mount's source, by mount index.

    For a container with a user namespace: MOUNT_ATTR_IDMAP needs
    CAP_SYS_ADMIN over the source filesystem's user namespace, which the
    init no longer has. The runtime calls this on the host side
    (`userns_fd`: the container's user namespace, for mounts without maps of
    their own), passes the fds to the init and closes them afterwards.
    """
    trees: dict[int, int] = {}
    try:
        for m in parse_rootfs(config, bundle).mounts:
            if m.options.idmap or m.options.ridmap:
                trees[m.index] = open_idmapped_tree(m, sys, userns_fd)
    except BaseException:
        for fd in trees.values():
            os.close(fd)
        raise
    return trees


def pivot_into(rootfs: str, *, no_pivot: bool, sys: sc.Syscalls) -> None:
    """Make `rootfs` (already a mount point, see prepare_rootfs) the process's `/`.

    pivot_root(".", ".") stacks the old root on top of the new one, at the
    cwd; it is made a slave (so its unmount cannot reach the host) and
    detached. No temporary put_old directory is ever created in the rootfs.
    With `no_pivot` (a ramdisk root cannot be pivoted away from), the rootfs
    is moved onto "/" and chrooted into instead.
    """
    with step("root.path", f"open {rootfs}"):
        new_root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if no_pivot:
            _move_root(new_root, sys)
        else:
            _pivot(new_root, sys)
    finally:
        os.close(new_root)
    os.chdir("/")


def _pivot(new_root: int, sys: sc.Syscalls) -> None:
    with step("root.path", "open the old root"):
        old_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(new_root)
        with step("root.path", "pivot_root"):
            sys.pivot_root(".", ".")
        # The old root now sits on top of the new one. Step onto it by fd (what
        # "." is after pivot_root is not something the kernel promises), make
        # its tree slaves so that detaching it cannot unmount anything on the
        # host through shared peers, and detach it.
        os.fchdir(old_root)
        with step("root.path", "make the old root a slave"):
            sys.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC, None)
        with step("root.path", "detach the old root"):
            sys.umount2(".", sc.MNT_DETACH)
        os.fchdir(new_root)
    finally:
        os.close(old_root)


def _move_root(new_root: int, sys: sc.Syscalls) -> None:
    os.fchdir(new_root)
    with step("root.path", "make / private (a move under a shared / reaches its peers)"):
        sys.mount(None, "/", None, sc.MS_PRIVATE, None)
    with step("root.path", "move the rootfs onto /"):
        sys.mount(".", "/", None, sc.MS_MOVE, None)
    with step("root.path", "chroot"):
        os.chroot(".")


def finish_rootfs(config: dict[str, Any], *, sys: sc.Syscalls) -> None:
    """After pivot: rootfsPropagation, readonlyPaths, maskedPaths, root.readonly."""
    linux = config.get("linux") or {}
    readonly_paths = parse_paths(linux.get("readonlyPaths"), "linux.readonlyPaths")
    masked_paths = parse_paths(linux.get("maskedPaths"), "linux.maskedPaths")
    propagation = parse_propagation(linux.get("rootfsPropagation"))
    if propagation is not None:
        with step("linux.rootfsPropagation", f"make / {propagation}"):
            sys.mount(None, "/", None, PROPAGATION[propagation], None)
    with step("root", "open /"):
        root = RootFS("/", sys)
    null_fd = -1
    try:
        for i, p in enumerate(readonly_paths):
            readonly_path(root, p, f"linux.readonlyPaths[{i}] ({p})", sys)
        for i, p in enumerate(masked_paths):
            where = f"linux.maskedPaths[{i}] ({p})"
            if null_fd < 0:
                null_fd = open_dev_null(root)
            mask_path(root, p, where, null_fd, sys)
    finally:
        if null_fd >= 0:
            os.close(null_fd)
        root.close()
    if (config.get("root") or {}).get("readonly"):
        remount_root_readonly(sys)
