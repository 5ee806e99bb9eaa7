"""The cgroup v2 manager: create, join, limit, observe, freeze, kill and remove a cgroup.

`CgroupManager` is the interface runtime/ and cri/ program against;
`CgroupV2Manager` drives the unified hierarchy found by `discover()`.

Applying resources is two-phase, so a refused resource set leaves the
cgroup as it was:
 1. check that every controller the set needs is available (root
    cgroup.controllers, no-internal-process rule) -> ControllerUnavailable;
 2. enable those controllers down the path (only "+ctl" writes to
    cgroup.subtree_control of the ancestors, never a "-ctl", and only for
    controllers the set needs);
 3. plan every file write with one small `apply_*` function per interface
    file, each validating against the files the cgroup really has;
 4. only then write, in a fixed order.
"""

from __future__ import annotations

import errno
import os
import time

from cgroups.discovery import PROC_CGROUPS, CgroupHierarchy, discover
from cgroups.errors import (
    CgroupError,
    CgroupNotFound,
    CgroupPathError,
    CgroupTimeout,
    CgroupWriteError,
    ControllerUnavailable,
    FeatureUnavailable,
    ResourceError,
)
from cgroups.procs import add_process, fork_into, read_procs
from cgroups.resources import (
    PREFIX,
    Memory,
    Resources,
    blkio_weight_to_io_weight,
    cpu_max_value,
    cpu_shares_to_weight,
    io_rate_value,
    memory_value,
    needed_controllers,
    pids_max_value,
    swap_max_value,
    unified_controller,
)
from namespaces.record import FrozenRecord, Record
from namespaces.signals import SIGKILL
from namespaces.syscalls import Syscalls, libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from typing import Protocol

    from cgroups.stats import CgroupStats
else:
    Protocol = object  # only mypy reads the protocol; typing costs each runtime verb ~9 ms

# cgroups.events and cgroups.stats are imported by the methods that use them: creating
# a container needs neither, and they cost it ~10 ms of imports (pinnace-oci create).
# Likewise paths are str here, not pathlib.Path (~10 ms): `CgroupV2Manager.dir` is the
# cgroup directory; `.path` makes a Path of it for the callers that want one.

SYS_DEV_BLOCK = "/sys/dev/block"
DEFAULT_TIMEOUT = 10.0  # seconds for freeze/thaw/destroy waits

# The order controllers are checked in, so the error for a set missing
# several names the same one every time.
_CONTROLLER_ORDER = ("cpu", "cpuset", "memory", "pids", "io", "hugetlb", "rdma", "misc")


class CgroupManager(Protocol):
    """What the runtime needs from a cgroup, whatever drives it."""

    @property
    def path(self) -> Path: ...
    def exists(self) -> bool: ...
    def create(self, resources: Resources | None = None) -> None: ...
    def add_process(self, pid: int) -> None: ...
    def fork_into(self, flags: int = 0) -> int | None: ...
    def apply(self, resources: Resources) -> None: ...
    def stats(self) -> CgroupStats: ...
    def freeze(self, timeout: float = DEFAULT_TIMEOUT) -> None: ...
    def thaw(self, timeout: float = DEFAULT_TIMEOUT) -> None: ...
    def frozen(self) -> bool: ...
    def kill(self) -> None: ...
    def destroy(self, timeout: float = DEFAULT_TIMEOUT) -> None: ...
    def pids(self, recursive: bool = False) -> list[int]: ...


# --- small file helpers ---------------------------------------------------------------


def write_file(path: str | os.PathLike[str], value: str) -> None:
    """One write(2) of `value` to an existing cgroup file (never O_CREAT: cgroupfs has no new files)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupWriteError(path, value, exc.errno or 0) from exc
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise CgroupWriteError(path, value, exc.errno or 0) from exc
    finally:
        os.close(fd)


def _read_text(path: str) -> str:
    with open(path) as f:  # as Path.read_text(): the locale's encoding
        return f.read()


def _read_words(path: str) -> frozenset[str]:
    try:
        return frozenset(_read_text(path).split())
    except FileNotFoundError:
        return frozenset()


def walk_cgroups(top: str | os.PathLike[str]) -> Iterator[str]:
    """`top` and every cgroup below it, children before their parents (rmdir order)."""
    top = os.fspath(top)
    try:
        entries = list(os.scandir(top))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from walk_cgroups(entry.path)
    yield top


def cgroup_dir(mount_point: str | os.PathLike[str], path: str) -> str:
    """The directory of cgroup `path` (relative to the mount, leading '/' optional).

    '..' is refused rather than resolved: a cgroup path comes from a
    container config, and must not name anything outside the hierarchy.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise CgroupPathError("refusing to manage the hierarchy's root cgroup", mount_point)
    if ".." in parts or any("\0" in p for p in parts):
        raise CgroupPathError(f"cgroup path {path!r} may not contain '..'", mount_point)
    return os.path.join(mount_point, *parts)


def unavailable_reason(
    controller: str, mount_point: str | os.PathLike[str], proc_cgroups: str | None
) -> str:
    """Why `controller` is not in the hierarchy root's cgroup.controllers, from /proc/cgroups.

    /proc/cgroups lists every controller the kernel has, with the v1
    hierarchy it is bound to (0: none) and whether it is enabled.
    """
    where = f"not in {mount_point}/cgroup.controllers"
    rows = {}
    for line in (proc_cgroups or "").splitlines():
        parts = line.split()
        if len(parts) >= 4 and not line.startswith("#"):
            rows[parts[0]] = parts
    row = rows.get(controller)
    if row is None:
        if proc_cgroups is None:
            return where
        return f"{where} (this kernel has no {controller} controller)"
    if row[3] == "0":
        return f"{where} (disabled on the kernel command line: cgroup_disable={controller})"
    if row[1] != "0":
        return f"{where} (bound to a cgroup v1 hierarchy)"
    return f"{where} (not delegated to this hierarchy's root)"


# --- planning the writes ---------------------------------------------------------------


class CgroupView(FrozenRecord):
    """What one cgroup offers, read once before planning: its files and enabled controllers."""

    __slots__ = ("path", "files", "controllers", "sys_dev_block")  # noqa: RUF023

    def __init__(
        self,
        path: str | os.PathLike[str],
        files: frozenset[str],
        controllers: frozenset[str],
        sys_dev_block: str | os.PathLike[str] = SYS_DEV_BLOCK,
    ) -> None:
        self.path = os.fspath(path)
        self.files = files
        self.controllers = controllers
        self.sys_dev_block = os.fspath(sys_dev_block)

    @classmethod
    def read(
        cls, path: str | os.PathLike[str], sys_dev_block: str | os.PathLike[str] = SYS_DEV_BLOCK
    ) -> CgroupView:
        try:
            files = frozenset(e.name for e in os.scandir(path) if e.is_file())
        except FileNotFoundError:
            raise CgroupNotFound("cgroup does not exist", path) from None
        controllers = _read_words(os.path.join(path, "cgroup.controllers"))
        return cls(path, files, controllers, sys_dev_block)


class WriteBatch(Record):
    """Writes planned by the apply_* functions; nothing touches the kernel before commit()."""

    __slots__ = ("view", "writes")

    def __init__(self, view: CgroupView, writes: list[tuple[str, str]] | None = None) -> None:
        self.view = view
        self.writes: list[tuple[str, str]] = [] if writes is None else writes

    def has(self, name: str) -> bool:
        return name in self.view.files

    def writable(self, name: str) -> bool:
        try:
            return bool(os.stat(os.path.join(self.view.path, name)).st_mode & 0o222)
        except FileNotFoundError:
            return False

    def write(self, name: str, value: str, field_: str, reason: str | None = None) -> None:
        """Plan one write; FeatureUnavailable now if the cgroup has no such file."""
        if not self.has(name):
            ctl = name.split(".", 1)[0]
            if reason is None:
                reason = (
                    f"the {ctl} controller is not enabled for this cgroup"
                    if ctl not in self.view.controllers
                    else "this kernel does not provide it"
                )
            raise FeatureUnavailable(field_, name, self.view.path, reason)
        self.writes.append((name, value))

    def check_block_device(self, field_: str, major: int, minor: int) -> None:
        """io limits name whole disks the kernel knows; say so now, not as ENODEV mid-apply."""
        dev = os.path.join(self.view.sys_dev_block, f"{major}:{minor}")
        if not os.path.exists(dev):
            raise ResourceError(field_, f"no block device {major}:{minor} on this host", None)
        if os.path.exists(os.path.join(dev, "partition")):
            raise ResourceError(
                field_, f"{major}:{minor} is a partition; io limits apply to whole disks", None
            )

    def commit(self) -> None:
        done: list[str] = []
        for name, value in self.writes:
            try:
                write_file(os.path.join(self.view.path, name), value)
            except CgroupWriteError as exc:
                raise CgroupWriteError(
                    os.path.join(self.view.path, name), value, exc.errno, written=tuple(done)
                ) from exc
            done.append(name)


if TYPE_CHECKING:
    Applier = Callable[[WriteBatch, Resources], None]


def apply_pids_max(b: WriteBatch, r: Resources) -> None:
    if r.pids and (value := pids_max_value(r.pids.limit)) is not None:
        if value == "max" and not b.has("pids.max"):
            return  # no pids controller here, so no limit to lift
        b.write("pids.max", value, f"{PREFIX}.pids.limit")


def apply_memory_swap_max(b: WriteBatch, r: Resources) -> None:
    """memory+swap converted to swap only; without swap accounting "max"/"0" are moot, as in runc."""
    if not r.memory:
        return
    value = swap_max_value(r.memory.swap, r.memory.limit)
    if value is None:
        return
    if not b.has("memory.swap.max") and value in ("max", "0") and "memory" in b.view.controllers:
        return
    b.write(
        "memory.swap.max",
        value,
        f"{PREFIX}.memory.swap",
        None if "memory" not in b.view.controllers else "swap accounting is off in this kernel",
    )


def _memory_file(b: WriteBatch, name: str, amount: int | None, field_: str) -> None:
    if (value := memory_value(amount)) is not None:
        b.write(name, value, f"{PREFIX}.memory.{field_}")


def apply_memory_max(b: WriteBatch, r: Resources) -> None:
    if r.memory:
        _memory_file(b, "memory.max", r.memory.limit, "limit")


def apply_memory_high(b: WriteBatch, r: Resources) -> None:
    if r.memory:
        _memory_file(b, "memory.high", r.memory.high, "high")


def apply_memory_low(b: WriteBatch, r: Resources) -> None:
    """OCI reservation is a soft floor: memory.low, as runc maps it."""
    if r.memory:
        _memory_file(b, "memory.low", r.memory.reservation, "reservation")


def apply_memory_min(b: WriteBatch, r: Resources) -> None:
    if r.memory:
        _memory_file(b, "memory.min", r.memory.min, "min")


def apply_memory_oom_group(b: WriteBatch, r: Resources) -> None:
    if r.memory and r.memory.oom_group is not None:
        b.write("memory.oom.group", "1" if r.memory.oom_group else "0", f"{PREFIX}.memory.oomGroup")


def _io_weight_devices(b: WriteBatch, r: Resources) -> bool:
    bio = r.block_io
    return bool(bio and (bio.weight or any(w.weight for w in bio.weight_device)))


def apply_io_weight(b: WriteBatch, r: Resources) -> None:
    """blk-iocost's io.weight, on its 1..10000 scale (runc's linear conversion from 10..1000)."""
    bio = r.block_io
    if bio is None or not _io_weight_devices(b, r):
        return
    if not b.has("io.weight") and not b.has("io.bfq.weight"):
        raise FeatureUnavailable(
            f"{PREFIX}.blockIO.weight",
            "io.weight",
            b.view.path,
            "neither io.weight (blk-iocost) nor io.bfq.weight (the bfq scheduler) exists"
            if "io" in b.view.controllers
            else "the io controller is not enabled for this cgroup",
        )
    if not b.has("io.weight"):
        return
    if bio.weight:
        b.write("io.weight", str(blkio_weight_to_io_weight(bio.weight)), f"{PREFIX}.blockIO.weight")
    for i, wd in enumerate(bio.weight_device):
        if wd.weight:
            where = f"{PREFIX}.blockIO.weightDevice[{i}]"
            b.check_block_device(where, wd.major, wd.minor)
            conv = blkio_weight_to_io_weight(wd.weight)
            b.write("io.weight", f"{wd.major}:{wd.minor} {conv}", where)


def apply_io_bfq_weight(b: WriteBatch, r: Resources) -> None:
    """bfq's io.bfq.weight, when the scheduler is loaded: same 1..1000 scale as OCI, as is."""
    bio = r.block_io
    if bio is None or not _io_weight_devices(b, r) or not b.has("io.bfq.weight"):
        return
    if bio.weight:
        b.write("io.bfq.weight", str(bio.weight), f"{PREFIX}.blockIO.weight")
    for i, wd in enumerate(bio.weight_device):
        if wd.weight:
            where = f"{PREFIX}.blockIO.weightDevice[{i}]"
            b.check_block_device(where, wd.major, wd.minor)
            b.write("io.bfq.weight", f"{wd.major}:{wd.minor} {wd.weight}", where)


def apply_io_max(b: WriteBatch, r: Resources) -> None:
    """One io.max line per device ("8:0 rbps=N wiops=M"): the kernel parses one device per write."""
    if not r.block_io:
        return
    per_device: dict[tuple[int, int], list[str]] = {}
    for key, devices in r.block_io.throttles():
        for dev in devices:
            per_device.setdefault((dev.major, dev.minor), []).append(
                f"{key}={io_rate_value(dev.rate)}"
            )
    for (major, minor), limits in per_device.items():
        where = f"{PREFIX}.blockIO.throttle ({major}:{minor})"
        b.check_block_device(where, major, minor)
        b.write("io.max", f"{major}:{minor} {' '.join(limits)}", where)


def apply_cpu_weight(b: WriteBatch, r: Resources) -> None:
    if r.cpu and r.cpu.shares:
        b.write("cpu.weight", str(cpu_shares_to_weight(r.cpu.shares)), f"{PREFIX}.cpu.shares")


def apply_cpu_max(b: WriteBatch, r: Resources) -> None:
    if r.cpu and (value := cpu_max_value(r.cpu.quota, r.cpu.period)) is not None:
        b.write("cpu.max", value, f"{PREFIX}.cpu.quota")


def apply_cpu_idle(b: WriteBatch, r: Resources) -> None:
    if r.cpu and r.cpu.idle is not None:
        b.write("cpu.idle", str(r.cpu.idle), f"{PREFIX}.cpu.idle")


def apply_cpuset_cpus(b: WriteBatch, r: Resources) -> None:
    if r.cpu and r.cpu.cpus:
        b.write("cpuset.cpus", r.cpu.cpus, f"{PREFIX}.cpu.cpus")


def apply_cpuset_mems(b: WriteBatch, r: Resources) -> None:
    if r.cpu and r.cpu.mems:
        b.write("cpuset.mems", r.cpu.mems, f"{PREFIX}.cpu.mems")


def apply_hugetlb_max(b: WriteBatch, r: Resources) -> None:
    """hugetlb.<size>.max, and .rsvd.max where the kernel has it (as runc writes both)."""
    sizes = sorted(
        {f.split(".")[1] for f in b.view.files if f.startswith("hugetlb.") and f.endswith(".max")}
    )
    for i, h in enumerate(r.hugepage_limits):
        where = f"{PREFIX}.hugepageLimits[{i}]"
        reason = f"no {h.page_size} huge pages here (sizes: {', '.join(sizes) or 'none'})"
        if "hugetlb" not in b.view.controllers:
            reason = "the hugetlb controller is not enabled for this cgroup"
        b.write(f"hugetlb.{h.page_size}.max", str(h.limit), where, reason)
        if b.has(f"hugetlb.{h.page_size}.rsvd.max"):
            b.write(f"hugetlb.{h.page_size}.rsvd.max", str(h.limit), where)


def apply_unified(b: WriteBatch, r: Resources) -> None:
    """The `unified` map, written last and as-is (so it overrides typed fields, as in runc)."""
    for key, value in r.unified.items():
        where = f"{PREFIX}.unified.{key}"
        if not b.has(key):
            ctl = unified_controller(key)
            if ctl and ctl not in b.view.controllers:
                reason = f"the {ctl} controller is not enabled for this cgroup"
            else:
                reason = "the cgroup has no such file"
            raise ResourceError(where, reason, path=b.view.path)
        if not b.writable(key):
            raise ResourceError(where, "is a read-only file", path=b.view.path)
        b.write(key, value, where)


# One function per interface file, in the order the files are written.
APPLIERS: tuple[Applier, ...] = (
    apply_pids_max,
    apply_memory_swap_max,
    apply_memory_max,
    apply_memory_high,
    apply_memory_low,
    apply_memory_min,
    apply_memory_oom_group,
    apply_io_weight,
    apply_io_bfq_weight,
    apply_io_max,
    apply_cpu_weight,
    apply_cpu_max,
    apply_cpu_idle,
    apply_cpuset_cpus,
    apply_cpuset_mems,
    apply_hugetlb_max,
    apply_unified,
)


def plan(view: CgroupView, resources: Resources) -> WriteBatch:
    """Every write `resources` means for this cgroup, validated and in order, not yet made."""
    batch = WriteBatch(view)
    for applier in APPLIERS:
        applier(batch, resources)
    return batch


def check_memory_usage(cgroup: str | os.PathLike[str], m: Memory | None) -> None:
    """OCI checkBeforeUpdate: refuse a limit at or below what the cgroup already uses."""
    if m is None or not m.check_before_update:
        return
    try:
        usage = int(_read_text(os.path.join(cgroup, "memory.current")))
    except FileNotFoundError:
        return
    if m.limit and m.limit > 0 and usage >= m.limit:
        raise ResourceError(
            f"{PREFIX}.memory.limit",
            f"is not above the current usage of {usage} bytes (checkBeforeUpdate)",
            m.limit,
            cgroup,
        )
    try:
        swap_usage = int(_read_text(os.path.join(cgroup, "memory.swap.current")))
    except FileNotFoundError:
        return
    if m.swap and m.swap > 0 and usage + swap_usage >= m.swap:
        raise ResourceError(
            f"{PREFIX}.memory.swap",
            f"is not above the current memory+swap usage of {usage + swap_usage} bytes"
            " (checkBeforeUpdate)",
            m.swap,
            cgroup,
        )


# --- the manager ------------------------------------------------------------------------


class CgroupV2Manager:
    """One cgroup of the unified hierarchy, named relative to its mount point.

    Pinnace's own cgroups live under `<unified root>/pinnace/...` (or the
    parent the kubelet names); the manager never writes to any cgroup above
    its own except "+controller" to cgroup.subtree_control, and only for the
    controllers a resource set needs.
    """

    def __init__(
        self,
        path: str,
        hierarchy: CgroupHierarchy | None = None,
        *,
        sys: Syscalls | None = None,
        proc_cgroups: str | os.PathLike[str] = PROC_CGROUPS,
        sys_dev_block: str | os.PathLike[str] = SYS_DEV_BLOCK,
    ) -> None:
        self.hierarchy = hierarchy or discover()
        if self.hierarchy.mount_dir is None:
            raise CgroupError("no cgroup v2 hierarchy is mounted (a cgroup v1-only host)")
        self.mount_dir = self.hierarchy.mount_dir
        self.dir = cgroup_dir(self.mount_dir, path)  # the cgroup directory
        self._sys = sys
        self._proc_cgroups = proc_cgroups
        self._sys_dev_block = sys_dev_block

    def __repr__(self) -> str:
        return f"CgroupV2Manager({self.dir!r})"

    @property
    def path(self) -> Path:
        """The cgroup directory as a Path (`dir` is the str, without importing pathlib)."""
        from pathlib import Path

        return Path(self.dir)

    @property
    def sys(self) -> Syscalls:
        if self._sys is None:
            self._sys = libc()
        return self._sys

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def _require(self) -> None:
        if not os.path.isdir(self.dir):
            raise CgroupNotFound("cgroup does not exist", self.dir)

    # -- controllers --

    def _ancestors(self) -> list[str]:
        """The mount point and every directory between it and this cgroup (not the cgroup)."""
        rel = os.path.relpath(self.dir, self.mount_dir).split(os.sep)
        return [os.path.join(self.mount_dir, *rel[:i]) for i in range(len(rel))]

    def _is_real_root(self, d: str) -> bool:
        return d == self.mount_dir and self.hierarchy.mount_root == "/"

    def _proc_cgroups_text(self) -> str | None:
        try:
            with open(self._proc_cgroups) as f:
                return f.read()
        except OSError:
            return None

    def check_controllers(self, needed: frozenset[str]) -> None:
        """ControllerUnavailable unless every controller in `needed` can be enabled down the path.

        Reads only, so a refused set has written nothing.
        """
        if not needed:
            return
        ordered = sorted(needed, key=lambda c: (_order(c), c))
        available = _read_words(os.path.join(self.mount_dir, "cgroup.controllers"))
        for ctl in ordered:
            if ctl not in available:
                reason = unavailable_reason(ctl, self.mount_dir, self._proc_cgroups_text())
                raise ControllerUnavailable(ctl, self.dir, reason)
        for d in self._ancestors():
            if not os.path.isdir(d):
                break  # created empty by create()
            missing = needed - _read_words(os.path.join(d, "cgroup.subtree_control"))
            if missing and not self._is_real_root(d) and read_procs(d):
                ctl = min(missing, key=_order)
                raise ControllerUnavailable(
                    ctl,
                    self.dir,
                    f"{d} has processes of its own, so it cannot enable {ctl} for its"
                    " children (cgroup v2's no-internal-process rule)",
                )

    def enable_controllers(self, needed: frozenset[str]) -> None:
        """'+ctl' in cgroup.subtree_control from the root down to this cgroup's parent."""
        if not needed:
            return
        for d in self._ancestors():
            missing = needed - _read_words(os.path.join(d, "cgroup.subtree_control"))
            if missing:
                value = " ".join(f"+{c}" for c in sorted(missing, key=_order))
                write_file(os.path.join(d, "cgroup.subtree_control"), value)

    # -- lifecycle --

    def create(self, resources: Resources | None = None) -> None:
        """mkdir the cgroup (and missing parents), enabling what `resources` needs on the way.

        An existing cgroup is reused (as runc joins an existing path). If a
        needed controller is unavailable, nothing is created.
        """
        needed = needed_controllers(resources) if resources else frozenset()
        self.check_controllers(needed)
        created = self._mkdirs()
        try:
            self.enable_controllers(needed)
        except BaseException:
            _rmdirs(created)
            raise

    def _mkdirs(self) -> list[str]:
        """mkdir this cgroup, and its missing parents if any; returns what it created."""
        try:
            os.mkdir(self.dir, 0o755)  # the common case: one syscall
            return [self.dir]
        except FileExistsError:
            return []
        except FileNotFoundError:
            pass  # a parent is missing
        except OSError as exc:
            raise CgroupError(
                f"cannot create cgroup: {os.strerror(exc.errno or 0)}", self.dir
            ) from exc
        created: list[str] = []
        try:
            for d in [*self._ancestors()[1:], self.dir]:
                try:
                    os.mkdir(d, 0o755)
                    created.append(d)
                except FileExistsError:
                    continue
                except OSError as exc:
                    raise CgroupError(
                        f"cannot create cgroup: {os.strerror(exc.errno or 0)}", d
                    ) from exc
        except BaseException:
            _rmdirs(created)
            raise
        return created

    def fork_into(self, flags: int = 0) -> int | None:
        """fork(), the child born in this cgroup (cgroups.procs.fork_into): its PID in the
        parent, 0 in the child, None where the kernel or this process cannot."""
        return fork_into(self.dir, flags, self.sys)

    def add_process(self, pid: int) -> None:
        """Move process `pid` (all its threads) into this cgroup."""
        add_process(self.dir, pid)

    def apply(self, resources: Resources) -> None:
        """Set every limit in `resources`, or none of them if any is refused (see module doc)."""
        self._require()
        needed = needed_controllers(resources)
        self.check_controllers(needed)
        self.enable_controllers(needed)
        batch = plan(CgroupView.read(self.dir, self._sys_dev_block), resources)
        check_memory_usage(self.dir, resources.memory)
        batch.commit()

    def stats(self) -> CgroupStats:
        from cgroups.stats import read_stats

        return read_stats(self.path)

    def pids(self, recursive: bool = False) -> list[int]:
        """PIDs in this cgroup (and, if `recursive`, in every cgroup below it), sorted."""
        self._require()
        if not recursive:
            return sorted(read_procs(self.dir))
        out: list[int] = []
        for d in walk_cgroups(self.dir):
            try:
                out += read_procs(d)
            except CgroupNotFound:
                continue
        return sorted(out)

    # -- freezer --

    def freeze(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Freeze every process below this cgroup; returns once cgroup.events says frozen 1.

        On timeout the cgroup is thawed again (no half-frozen container is
        left behind) and CgroupTimeout raised.
        """
        from cgroups.event_wait import wait_for_event

        self._require()
        write_file(os.path.join(self.dir, "cgroup.freeze"), "1")
        try:
            wait_for_event(self.dir, "frozen", 1, timeout)
        except CgroupTimeout:
            try:
                write_file(os.path.join(self.dir, "cgroup.freeze"), "0")
            except CgroupError:
                pass
            raise

    def thaw(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Undo freeze(); waits until not frozen (which lasts while an ancestor is frozen).

        Waits on frozen() rather than on cgroup.events `frozen 0`: the kernel
        can leave a stale `frozen 1` there after a thaw (cgroups/freezer.py).
        """
        from cgroups.event_wait import wait_for_event

        self._require()
        write_file(os.path.join(self.dir, "cgroup.freeze"), "0")
        if not self.frozen():
            return
        try:
            wait_for_event(self.dir, "frozen", 0, timeout)
        except CgroupTimeout:
            if self.frozen():
                raise

    def frozen(self) -> bool:
        """Frozen by a freeze of this cgroup or an ancestor, and settled (cgroups/freezer.py)."""
        from cgroups.freezer import is_frozen

        try:
            return is_frozen(self.dir, self.mount_dir)
        except (FileNotFoundError, NotADirectoryError):
            raise CgroupNotFound("cgroup does not exist", self.dir) from None

    # -- killing and removal --

    def kill(self) -> None:
        """SIGKILL every process in this cgroup and below: cgroup.kill, or one by one before 5.14.

        Returns without waiting for the processes to die; destroy() waits.
        """
        self._require()
        kill_file = os.path.join(self.dir, "cgroup.kill")
        if os.path.exists(kill_file):
            write_file(kill_file, "1")
        else:
            self.kill_each()

    def kill_each(self) -> None:
        """The pre-5.14 way: freeze (so nothing forks meanwhile), SIGKILL each PID, thaw.

        Each PID is pinned with a pidfd and re-checked against cgroup.procs,
        so a PID reused by a process elsewhere is never signalled.
        """
        from cgroups.event_wait import wait_for_event

        freeze_file = os.path.join(self.dir, "cgroup.freeze")
        can_freeze = os.path.exists(freeze_file)
        if can_freeze:
            write_file(freeze_file, "1")
            try:
                wait_for_event(self.dir, "frozen", 1, 1.0)
            except CgroupTimeout:
                pass  # kill what is there anyway; SIGKILL reaches frozen tasks
        try:
            for d in walk_cgroups(self.dir):
                try:
                    pids = read_procs(d)
                except CgroupNotFound:
                    continue
                for pid in pids:
                    self._kill_pid(d, pid)
        finally:
            if can_freeze:
                try:
                    write_file(freeze_file, "0")
                except CgroupError:
                    pass

    def _kill_pid(self, cgroup: str, pid: int) -> None:
        try:
            fd = self.sys.pidfd_open(pid)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return
            if exc.errno != errno.ENOSYS:
                raise
            try:  # kernels before 5.3 have no pidfd: a small PID-reuse window remains
                os.kill(pid, SIGKILL)
            except ProcessLookupError:
                pass
            return
        try:
            if pid not in read_procs(cgroup):
                return
            try:
                self.sys.pidfd_send_signal(fd, SIGKILL)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
        finally:
            os.close(fd)

    def destroy(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Kill everything in the cgroup, wait until it is empty, and rmdir it and its children.

        Idempotent: a missing cgroup is already destroyed. Waits on
        cgroup.events `populated 0` (poll), so it returns as soon as the
        last process has exited.
        """
        try:
            os.rmdir(self.dir)  # an empty leaf goes with one syscall
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:  # populated, or has children: the long way
                raise CgroupError(
                    f"cannot remove cgroup: {os.strerror(exc.errno or 0)}", self.dir
                ) from exc
        from cgroups.event_wait import read_event, wait_for_event

        deadline = time.monotonic() + timeout
        while True:
            try:
                if read_event(self.dir, "populated"):
                    self.kill()
                    remaining = max(0.0, deadline - time.monotonic())
                    wait_for_event(self.dir, "populated", 0, remaining)
                self._remove_tree()
                return
            except CgroupNotFound:
                return
            except CgroupWriteError:
                if not os.path.isdir(self.dir):
                    return  # removed by someone else meanwhile
                raise
            except OSError as exc:
                # EBUSY: a process joined between the check and the rmdir; go again.
                if exc.errno != errno.EBUSY:
                    raise CgroupError(
                        f"cannot remove cgroup: {os.strerror(exc.errno or 0)}", self.dir
                    ) from exc
                if time.monotonic() >= deadline:
                    raise CgroupTimeout(
                        "the cgroup to become removable", self.dir, timeout
                    ) from exc
                time.sleep(0.01)

    def _remove_tree(self) -> None:
        for d in walk_cgroups(self.dir):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                continue


def _rmdirs(created: list[str]) -> None:
    """Undo a partial create(): remove what it made, deepest first."""
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            pass


def _order(controller: str) -> int:
    try:
        return _CONTROLLER_ORDER.index(controller)
    except ValueError:
        return len(_CONTROLLER_ORDER)


def _conforms(m: CgroupV2Manager) -> CgroupManager:
    """Checked by mypy: CgroupV2Manager implements the CgroupManager protocol."""
    return m
