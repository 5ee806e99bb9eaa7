"""What this kernel's overlayfs can do, probed rather than guessed from the version.

Each probe builds an overlay superblock on throw-away directories through
fsopen/fsconfig and never attaches it, so nothing is mounted and nothing
needs a mount namespace. `pinnace check`, the bench and the VM test report
these; the mount helper itself only needs `mounts.lowerdir_plus_supported`.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from namespaces import syscalls as sc
from overlayfs import mounts

_PARAMS = Path("/sys/module/overlay/parameters")


@dataclass(frozen=True)
class OverlayFeatures:
    kernel: str
    overlay: bool  # listed in /proc/filesystems (or loadable: fsopen worked)
    new_mount_api: bool  # fsopen("overlay") works
    lowerdir_plus: bool  # fsconfig "lowerdir+" one layer at a time (6.8)
    layer_fds: bool  # fsconfig FSCONFIG_SET_FD "lowerdir+" (6.13)
    userxattr: bool  # user.overlay.* xattrs for user-namespace mounts (5.11)
    mount2_max_layers: int  # layers mount(2) fits in a page as /proc/self/fd/NNNN paths
    params: dict[str, str] = field(default_factory=dict)  # module defaults (index, metacopy...)


def _try_create(
    sys: sc.Syscalls, base: str, configure: Callable[[int], None], *, upper: bool = False
) -> bool:
    try:
        fsfd = sys.fsopen("overlay", sc.FSOPEN_CLOEXEC)
    except OSError:
        return False
    try:
        configure(fsfd)
        if upper:
            sys.fsconfig(fsfd, sc.FSCONFIG_SET_STRING, "upperdir", os.path.join(base, "u"))
            sys.fsconfig(fsfd, sc.FSCONFIG_SET_STRING, "workdir", os.path.join(base, "w"))
        sys.fsconfig(fsfd, sc.FSCONFIG_CMD_CREATE)
        return True
    except OSError:
        return False
    finally:
        os.close(fsfd)


def detect(sys: sc.Syscalls | None = None, where: str | None = None) -> OverlayFeatures:
    """Probe overlayfs on the filesystem of `where` (default: the temp dir)."""
    s = sys or sc.libc()
    base = tempfile.mkdtemp(prefix="pinnace-ovlprobe-", dir=where)
    try:
        for d in ("a", "b", "u", "w"):
            os.mkdir(os.path.join(base, d))
        a, b = os.path.join(base, "a"), os.path.join(base, "b")
        try:
            os.close(s.fsopen("overlay", sc.FSOPEN_CLOEXEC))
            new_api = True
        except OSError:
            new_api = False

        def plus(fd: int) -> None:
            s.fsconfig(fd, sc.FSCONFIG_SET_STRING, "lowerdir+", a)
            s.fsconfig(fd, sc.FSCONFIG_SET_STRING, "lowerdir+", b)

        def by_fd(fd: int) -> None:
            for p in (a, b):
                lfd = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    s.fsconfig(fd, sc.FSCONFIG_SET_FD, "lowerdir+", None, lfd)
                finally:
                    os.close(lfd)

        def userxattr(fd: int) -> None:
            s.fsconfig(fd, sc.FSCONFIG_SET_FLAG, "userxattr")
            s.fsconfig(fd, sc.FSCONFIG_SET_STRING, "lowerdir", f"{a}:{b}")

        listed = "overlay" in Path("/proc/filesystems").read_text()
        params = {}
        if _PARAMS.is_dir():
            for p in sorted(_PARAMS.iterdir()):
                try:
                    params[p.name] = p.read_text().strip()
                except OSError:
                    continue
        per_layer = len("/proc/self/fd/1234:")
        fixed = len("index=off,upperdir=/proc/self/fd/1234,workdir=/proc/self/fd/1234,lowerdir=")
        return OverlayFeatures(
            kernel=platform.release(),
            overlay=listed or new_api,
            new_mount_api=new_api,
            lowerdir_plus=new_api and _try_create(s, base, plus),
            layer_fds=new_api and _try_create(s, base, by_fd),
            userxattr=new_api and _try_create(s, base, userxattr, upper=True),
            mount2_max_layers=(mounts.PAGE_SIZE - 1 - fixed) // per_layer,
            params=params,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
