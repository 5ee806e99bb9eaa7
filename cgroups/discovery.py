"""Where the cgroup v2 hierarchy is, which controllers it has, and where we are in it.

Pinnace never assumes /sys/fs/cgroup: a pure v2 host mounts the unified
hierarchy there, a hybrid host (systemd's "hybrid" mode, this project's dev
VMs) mounts it at /sys/fs/cgroup/unified with the resource controllers bound
to v1 hierarchies instead. Everything is read from the kernel's own files.
"""

from __future__ import annotations

import os

from namespaces.record import FrozenRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import ClassVar

PROC_MOUNTINFO = "/proc/self/mountinfo"
PROC_CGROUPS = "/proc/cgroups"
PROC_SELF_CGROUP = "/proc/self/cgroup"


class CgroupMode:
    """How the host mounts cgroups: one of the four constants below, compared by identity.

    A plain class rather than an enum.Enum (which costs the runtime's every verb
    ~4 ms to import); `.value` and `.name` are as the Enum had them.
    """

    __slots__ = ("name", "value")
    UNIFIED: ClassVar[CgroupMode]  # cgroup v2 only
    HYBRID: ClassVar[CgroupMode]  # v2 mounted beside v1 controller hierarchies
    LEGACY: ClassVar[CgroupMode]  # v1 only
    NONE: ClassVar[CgroupMode]

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"<CgroupMode.{self.name}: {self.value!r}>"


CgroupMode.UNIFIED = CgroupMode("UNIFIED", "unified")
CgroupMode.HYBRID = CgroupMode("HYBRID", "hybrid")
CgroupMode.LEGACY = CgroupMode("LEGACY", "legacy")
CgroupMode.NONE = CgroupMode("NONE", "none")


class CgroupDiscoveryError(Exception):
    """The cgroup hierarchy could not be found or read; carries the path concerned."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(f"{message}: {path}" if path else message)
        self.path = path


class Mount(FrozenRecord):
    """One line of /proc/self/mountinfo, the fields Pinnace needs."""

    __slots__ = ("root", "mount_point", "fstype", "source", "options", "super_options")  # noqa: RUF023

    def __init__(
        self,
        root: str,
        mount_point: str,
        fstype: str,
        source: str,
        options: frozenset[str],
        super_options: frozenset[str],
    ) -> None:
        self.root = root
        self.mount_point = mount_point
        self.fstype = fstype
        self.source = source
        self.options = options
        self.super_options = super_options


class CgroupHierarchy(FrozenRecord):
    """The unified hierarchy as this process sees it.

    The mount point is kept as a str (`mount_dir`, what the cgroup manager uses);
    `mount_point` and `own_path` give pathlib.Path for the callers that want one.
    """

    __slots__ = ("mode", "mount_dir", "mount_root", "controllers", "own_cgroup", "v1_controllers")  # noqa: RUF023

    def __init__(
        self,
        mode: CgroupMode,
        mount_point: str | os.PathLike[str] | None,
        mount_root: str,  # cgroup path of the mount's root (not "/" inside a cgroup ns or bind)
        controllers: frozenset[str],  # in the root's cgroup.controllers
        own_cgroup: str | None,  # "0::" path from /proc/self/cgroup
        v1_controllers: frozenset[str] = frozenset(),  # bound to v1
    ) -> None:
        self.mode = mode
        self.mount_dir = None if mount_point is None else os.fspath(mount_point)
        self.mount_root = mount_root
        self.controllers = controllers
        self.own_cgroup = own_cgroup
        self.v1_controllers = v1_controllers

    @property
    def mount_point(self) -> Path | None:
        from pathlib import Path

        return None if self.mount_dir is None else Path(self.mount_dir)

    @property
    def own_path(self) -> Path | None:
        """This process's cgroup directory, if it is visible through the mount."""
        mount_point = self.mount_point
        if mount_point is None or self.own_cgroup is None:
            return None
        rel = os.path.relpath(self.own_cgroup, self.mount_root)
        if rel.startswith(".."):
            return None
        return (mount_point / rel).resolve() if rel != "." else mount_point


def _read_text(path: str | os.PathLike[str]) -> str:
    with open(path) as f:  # as Path.read_text(): the locale's encoding
        return f.read()


def _unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and i + 4 <= len(field_) and field_[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/PID/mountinfo (proc(5)); optional fields end at the lone '-'."""
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        lf = left.split()
        rf = right.split()
        if len(lf) < 6 or len(rf) < 3:
            continue
        mounts.append(
            Mount(
                root=_unescape(lf[3]),
                mount_point=_unescape(lf[4]),
                fstype=rf[0],
                source=_unescape(rf[1]),
                options=frozenset(lf[5].split(",")),
                super_options=frozenset(rf[2].split(",")),
            )
        )
    return mounts


def parse_proc_cgroups(text: str) -> frozenset[str]:
    """Controllers bound to a v1 hierarchy: /proc/cgroups rows with hierarchy != 0."""
    bound = set()
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        if len(parts) >= 4 and parts[1] != "0" and parts[3] == "1":
            bound.add(parts[0])
    return frozenset(bound)


def parse_self_cgroup(text: str) -> str | None:
    """The v2 path ("0::/x") from /proc/PID/cgroup, or None on a v1-only host."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def choose_unified_mount(mounts: list[Mount]) -> Mount | None:
    """The cgroup2 mount to use: /sys/fs/cgroup, then .../unified, then any other."""
    v2 = [m for m in mounts if m.fstype == "cgroup2"]
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        for m in v2:
            if m.mount_point == preferred:
                return m
    return v2[0] if v2 else None


def discover(
    mountinfo: str | os.PathLike[str] = PROC_MOUNTINFO,
    proc_cgroups: str | os.PathLike[str] = PROC_CGROUPS,
    self_cgroup: str | os.PathLike[str] = PROC_SELF_CGROUP,
) -> CgroupHierarchy:
    """Read the kernel's files and describe the unified hierarchy."""
    try:
        mounts = parse_mountinfo(_read_text(mountinfo))
    except OSError as exc:
        raise CgroupDiscoveryError(f"cannot read mount table ({exc.strerror})", mountinfo) from exc
    try:
        v1 = parse_proc_cgroups(_read_text(proc_cgroups))
    except OSError:
        v1 = frozenset()
    try:
        own = parse_self_cgroup(_read_text(self_cgroup))
    except OSError:
        own = None
    unified = choose_unified_mount(mounts)
    has_v1 = any(m.fstype == "cgroup" for m in mounts)
    if unified is None:
        mode = CgroupMode.LEGACY if has_v1 else CgroupMode.NONE
        return CgroupHierarchy(mode, None, "/", frozenset(), own, v1 if has_v1 else frozenset())
    point = unified.mount_point
    ctl_file = os.path.join(point, "cgroup.controllers")
    try:
        controllers = frozenset(_read_text(ctl_file).split())
    except OSError as exc:
        raise CgroupDiscoveryError(f"cannot read controllers ({exc.strerror})", ctl_file) from exc
    v1_bound = v1 if has_v1 else frozenset()
    mode = CgroupMode.HYBRID if has_v1 else CgroupMode.UNIFIED
    return CgroupHierarchy(mode, point, unified.root, controllers, own, v1_bound)
