"""Typed resource limits in the shape of the OCI runtime spec's `linux.resources`.

The OCI spec was written for cgroup v1; on v2 several fields need a
conversion (shares to weight, memory+swap to swap, blkio weight to io
weight) and some have no v2 file at all. The conversions here follow what
runc does, so a container gets the same cgroup files under Pinnace as under
runc; each is documented where it is defined.

Validation happens at construction (`__post_init__`), so an invalid value
fails with a `ResourceError` naming its OCI field before any cgroup exists.
`Resources.from_oci(spec["linux"]["resources"])` parses the JSON form; unknown
properties are ignored, as the spec requires of runtimes. Device rules
(`linux.resources.devices`) are the eBPF device program's business
(cgroups/devices.py) and are not parsed here.
"""

from __future__ import annotations

import math

from cgroups.errors import ResourceError
from namespaces.record import FrozenRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeGuard, TypeVar

    _T = TypeVar("_T")

PREFIX = "linux.resources"

# Kernel ranges (kernel/sched/core.c, Documentation/admin-guide/cgroup-v2.rst).
CPU_SHARES_MIN, CPU_SHARES_MAX = 2, 262144  # v1 cpu.shares, what OCI `shares` means
CPU_WEIGHT_MIN, CPU_WEIGHT_MAX = 1, 10000
CFS_PERIOD_MIN, CFS_PERIOD_MAX = 1000, 1000000  # usec
CFS_QUOTA_MIN = 1000  # usec
BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX = 10, 1000  # v1 blkio.weight, what OCI `weight` means
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

_UNIFIED_HEAD = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_UNIFIED_TAIL = _UNIFIED_HEAD | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ.")

# cgroup.* files the manager itself owns: setting them through `unified` would
# move processes, kill, freeze or restructure the tree behind its back.
UNIFIED_FORBIDDEN = frozenset(
    {
        "cgroup.procs",
        "cgroup.threads",
        "cgroup.subtree_control",
        "cgroup.kill",
        "cgroup.freeze",
        "cgroup.type",
        "cgroup.events",
        "cgroup.controllers",
        "cgroup.stat",
    }
)


# --- value checks ---------------------------------------------------------------
#
# The syntax checks use str methods, not the re module (its import costs every
# runtime verb ~5 ms). Each is what a regex match() with a final `$` did, so
# like it they accept one trailing newline.


def _anchored(value: str) -> str:
    """What `$` anchors: the string, less one final newline."""
    return value[:-1] if value.endswith("\n") else value


def _is_cpu_list(value: str) -> bool:
    r"""^\d+(-\d+)?(,\d+(-\d+)?)*$"""
    for part in _anchored(value).split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdecimal() or (dash and not hi.isdecimal()):
            return False
    return True


def _is_page_size(value: str) -> bool:
    r"""^[1-9]\d*(KB|MB|GB)$"""
    body = _anchored(value)
    number = body[:-2]
    return (
        body[-2:] in ("KB", "MB", "GB")
        and number[:1] in ("1", "2", "3", "4", "5", "6", "7", "8", "9")
        and (len(number) == 1 or number[1:].isdecimal())
    )


def _is_unified_key(key: str) -> bool:
    r"""^[a-z0-9_]+\.[A-Za-z0-9_.]+$"""
    head, _, tail = _anchored(key).partition(".")
    return bool(head and tail) and set(head) <= _UNIFIED_HEAD and set(tail) <= _UNIFIED_TAIL


def _is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    """isinstance(value, collections.abc.Mapping), importing that (~2 ms) only past dict."""
    if isinstance(value, dict):
        return True
    from collections.abc import Mapping

    return isinstance(value, Mapping)


def _int(name: str, value: object, lo: int, hi: int) -> int:
    # bool is an int in Python but never a number in the spec's JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ResourceError(f"{PREFIX}.{name}", "must be an integer", value)
    if not lo <= value <= hi:
        raise ResourceError(f"{PREFIX}.{name}", f"must be between {lo} and {hi}", value)
    return value


def _opt_int(name: str, value: object, lo: int, hi: int) -> int | None:
    return None if value is None else _int(name, value, lo, hi)


def _opt_bool(name: str, value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ResourceError(f"{PREFIX}.{name}", "must be true or false", value)


def _opt_str(name: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ResourceError(f"{PREFIX}.{name}", "must be a string", value)


def _cpu_list(name: str, value: str | None) -> str | None:
    """cpuset list syntax ("0-3,7"); empty means unset, as runc treats it."""
    if value is None or value == "":
        return value
    if not _is_cpu_list(value):
        raise ResourceError(f"{PREFIX}.{name}", 'must be a list like "0-3,7"', value)
    for part in value.split(","):
        lo, _, hi = part.partition("-")
        if hi and int(hi) < int(lo):
            raise ResourceError(f"{PREFIX}.{name}", f"range {part} runs backwards", value)
    return value


def _memory_amount(name: str, value: int | None) -> int | None:
    """Bytes, with -1 meaning unlimited ("max") and 0 meaning unset, as in the spec."""
    return _opt_int(name, value, -1, INT64_MAX)


# --- the value classes (FrozenRecord: see namespaces/record.py) --------------------


class Cpu(FrozenRecord):
    """`linux.resources.cpu`. realtimeRuntime/realtimePeriod have no v2 file and are ignored."""

    __slots__ = (  # noqa: RUF023
        "shares",
        "quota",
        "period",
        "cpus",
        "mems",
        "idle",
        "realtime_runtime",
        "realtime_period",
    )

    def __init__(
        self,
        shares: int | None = None,  # v1 shares 2..262144; converted to cpu.weight
        quota: int | None = None,  # usec per period; -1 (or any negative) = no limit
        period: int | None = None,  # usec
        cpus: str | None = None,  # cpuset.cpus
        mems: str | None = None,  # cpuset.mems
        idle: int | None = None,  # cpu.idle (0 or 1), OCI 1.1
        realtime_runtime: int | None = None,  # ignored on cgroup v2
        realtime_period: int | None = None,  # ignored on cgroup v2
    ) -> None:
        self.shares = shares
        self.quota = quota
        self.period = period
        self.cpus = cpus
        self.mems = mems
        self.idle = idle
        self.realtime_runtime = realtime_runtime
        self.realtime_period = realtime_period
        _opt_int("cpu.shares", self.shares, 0, UINT64_MAX)
        quota = _opt_int("cpu.quota", self.quota, -(2**63), INT64_MAX)
        if quota is not None and 0 < quota < CFS_QUOTA_MIN:
            raise ResourceError(
                f"{PREFIX}.cpu.quota", f"the kernel's minimum is {CFS_QUOTA_MIN}us", quota
            )
        period = _opt_int("cpu.period", self.period, 0, UINT64_MAX)
        if period and not CFS_PERIOD_MIN <= period <= CFS_PERIOD_MAX:
            raise ResourceError(
                f"{PREFIX}.cpu.period",
                f"must be between {CFS_PERIOD_MIN} and {CFS_PERIOD_MAX} usec",
                period,
            )
        _cpu_list("cpu.cpus", _opt_str("cpu.cpus", self.cpus))
        _cpu_list("cpu.mems", _opt_str("cpu.mems", self.mems))
        _opt_int("cpu.idle", self.idle, 0, 1)
        _opt_int("cpu.realtimeRuntime", self.realtime_runtime, -(2**63), INT64_MAX)
        _opt_int("cpu.realtimePeriod", self.realtime_period, 0, UINT64_MAX)


class Memory(FrozenRecord):
    """`linux.resources.memory`, plus three v2 knobs OCI has no field for.

    `high`, `min` and `oom_group` are Pinnace extensions (OCI users reach
    them through `unified`). kernel, kernelTCP, swappiness and
    disableOOMKiller are v1 knobs with no v2 file: kept so callers can warn,
    never written.
    """

    __slots__ = (  # noqa: RUF023
        "limit",
        "reservation",
        "swap",
        "kernel",
        "kernel_tcp",
        "swappiness",
        "disable_oom_killer",
        "use_hierarchy",
        "check_before_update",
        "high",
        "min",
        "oom_group",
    )

    def __init__(
        self,
        limit: int | None = None,  # memory.max
        reservation: int | None = None,  # memory.low, as runc maps it (a soft floor)
        swap: int | None = None,  # memory+swap total, converted for memory.swap.max
        kernel: int | None = None,  # ignored (v1 kmem)
        kernel_tcp: int | None = None,  # ignored (v1 kmem.tcp)
        swappiness: int | None = None,  # ignored (v1 only)
        disable_oom_killer: bool | None = None,  # ignored (v1 memory.oom_control)
        use_hierarchy: bool | None = None,  # ignored (always hierarchical on v2)
        check_before_update: bool | None = None,  # refuse a limit below current usage
        high: int | None = None,  # memory.high (Pinnace extension)
        min: int | None = None,  # memory.min (Pinnace extension)
        oom_group: bool | None = None,  # memory.oom.group (Pinnace extension)
    ) -> None:
        self.limit = limit
        self.reservation = reservation
        self.swap = swap
        self.kernel = kernel
        self.kernel_tcp = kernel_tcp
        self.swappiness = swappiness
        self.disable_oom_killer = disable_oom_killer
        self.use_hierarchy = use_hierarchy
        self.check_before_update = check_before_update
        self.high = high
        self.min = min
        self.oom_group = oom_group
        _memory_amount("memory.limit", self.limit)
        _memory_amount("memory.reservation", self.reservation)
        _memory_amount("memory.swap", self.swap)
        _opt_int("memory.kernel", self.kernel, -1, INT64_MAX)
        _opt_int("memory.kernelTCP", self.kernel_tcp, -1, INT64_MAX)
        _opt_int("memory.swappiness", self.swappiness, 0, 100)
        _opt_bool("memory.disableOOMKiller", self.disable_oom_killer)
        _opt_bool("memory.useHierarchy", self.use_hierarchy)
        _opt_bool("memory.checkBeforeUpdate", self.check_before_update)
        _memory_amount("memory.high", self.high)
        _memory_amount("memory.min", self.min)
        _opt_bool("memory.oomGroup", self.oom_group)
        # Converting now makes an impossible memory/swap pair fail at parse time.
        swap_max_value(self.swap, self.limit)


class Pids(FrozenRecord):
    """`linux.resources.pids`: limit -1 (any negative) is "max", 0 is a real limit of 0.

    That is the current runtime-spec guidance, which runc 1.4 follows; an
    absent limit writes nothing.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        _opt_int("pids.limit", self.limit, -(2**63), INT64_MAX)


class WeightDevice(FrozenRecord):
    """One `blockIO.weightDevice` entry; leafWeight has no v2 file and is ignored."""

    __slots__ = ("major", "minor", "weight", "leaf_weight")  # noqa: RUF023

    def __init__(
        self, major: int, minor: int, weight: int | None = None, leaf_weight: int | None = None
    ) -> None:
        self.major = major
        self.minor = minor
        self.weight = weight
        self.leaf_weight = leaf_weight
        _int("blockIO.weightDevice.major", self.major, 0, 2**32 - 1)
        _int("blockIO.weightDevice.minor", self.minor, 0, 2**32 - 1)
        _opt_int("blockIO.weightDevice.weight", self.weight, BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX)
        _opt_int("blockIO.weightDevice.leafWeight", self.leaf_weight, 10, 1000)


class ThrottleDevice(FrozenRecord):
    """One `blockIO.throttle*Device` entry: a rate for one device; 0 removes the limit."""

    __slots__ = ("major", "minor", "rate")

    def __init__(self, major: int, minor: int, rate: int) -> None:
        self.major = major
        self.minor = minor
        self.rate = rate
        _int("blockIO.throttleDevice.major", self.major, 0, 2**32 - 1)
        _int("blockIO.throttleDevice.minor", self.minor, 0, 2**32 - 1)
        _int("blockIO.throttleDevice.rate", self.rate, 0, UINT64_MAX)


class BlockIO(FrozenRecord):
    """`linux.resources.blockIO`. weight is v1's 10..1000 scale; leafWeight is ignored."""

    __slots__ = (  # noqa: RUF023
        "weight",
        "leaf_weight",
        "weight_device",
        "throttle_read_bps_device",
        "throttle_write_bps_device",
        "throttle_read_iops_device",
        "throttle_write_iops_device",
    )

    def __init__(
        self,
        weight: int | None = None,
        leaf_weight: int | None = None,
        weight_device: tuple[WeightDevice, ...] = (),
        throttle_read_bps_device: tuple[ThrottleDevice, ...] = (),
        throttle_write_bps_device: tuple[ThrottleDevice, ...] = (),
        throttle_read_iops_device: tuple[ThrottleDevice, ...] = (),
        throttle_write_iops_device: tuple[ThrottleDevice, ...] = (),
    ) -> None:
        self.weight = weight
        self.leaf_weight = leaf_weight
        self.weight_device = weight_device
        self.throttle_read_bps_device = throttle_read_bps_device
        self.throttle_write_bps_device = throttle_write_bps_device
        self.throttle_read_iops_device = throttle_read_iops_device
        self.throttle_write_iops_device = throttle_write_iops_device
        if self.weight != 0:  # 0 is the Go zero value: unset
            _opt_int("blockIO.weight", self.weight, BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX)
        _opt_int("blockIO.leafWeight", self.leaf_weight, 0, 1000)

    def throttles(self) -> tuple[tuple[str, tuple[ThrottleDevice, ...]], ...]:
        """(io.max key, devices) for the four throttle lists."""
        return (
            ("rbps", self.throttle_read_bps_device),
            ("wbps", self.throttle_write_bps_device),
            ("riops", self.throttle_read_iops_device),
            ("wiops", self.throttle_write_iops_device),
        )


class HugepageLimit(FrozenRecord):
    """One `hugepageLimits` entry: pageSize as in the file names ("2MB", "1GB"), bytes."""

    __slots__ = ("page_size", "limit")  # noqa: RUF023

    def __init__(self, page_size: str, limit: int) -> None:
        self.page_size = page_size
        self.limit = limit
        if not isinstance(self.page_size, str) or not _is_page_size(self.page_size):
            raise ResourceError(
                f"{PREFIX}.hugepageLimits.pageSize",
                'must look like "2MB" or "1GB" (<size><KB|MB|GB>)',
                self.page_size,
            )
        _int("hugepageLimits.limit", self.limit, 0, UINT64_MAX)


class Resources(FrozenRecord):
    """`linux.resources` minus devices: what the cgroup manager applies."""

    __slots__ = ("cpu", "memory", "pids", "block_io", "hugepage_limits", "unified")  # noqa: RUF023

    def __init__(
        self,
        cpu: Cpu | None = None,
        memory: Memory | None = None,
        pids: Pids | None = None,
        block_io: BlockIO | None = None,
        hugepage_limits: tuple[HugepageLimit, ...] = (),
        unified: Mapping[str, str] | None = None,
    ) -> None:
        self.cpu = cpu
        self.memory = memory
        self.pids = pids
        self.block_io = block_io
        self.hugepage_limits = hugepage_limits
        self.unified: Mapping[str, str] = {} if unified is None else unified
        for key, value in self.unified.items():
            check_unified_key(key)
            if not isinstance(value, str):
                raise ResourceError(f"{PREFIX}.unified.{key}", "value must be a string", value)
        sizes = [h.page_size for h in self.hugepage_limits]
        dup = {s for s in sizes if sizes.count(s) > 1}
        if dup:
            raise ResourceError(
                f"{PREFIX}.hugepageLimits", f"page size {sorted(dup)[0]} is listed twice"
            )

    @classmethod
    def from_oci(cls, resources: Mapping[str, Any] | None) -> Resources:
        """Parse `linux.resources` from an OCI config.json (already JSON-decoded)."""
        return parse_resources(resources)

    def ignored_fields(self) -> list[str]:
        """OCI fields that are set but have no cgroup v2 file, so a caller can warn."""
        out = []
        c, m, b = self.cpu, self.memory, self.block_io
        if c and c.realtime_runtime:
            out.append(f"{PREFIX}.cpu.realtimeRuntime")
        if c and c.realtime_period:
            out.append(f"{PREFIX}.cpu.realtimePeriod")
        if m:
            for name, ignored in (
                ("kernel", m.kernel is not None and m.kernel > 0),
                ("kernelTCP", m.kernel_tcp is not None and m.kernel_tcp > 0),
                ("swappiness", m.swappiness is not None),
                ("disableOOMKiller", bool(m.disable_oom_killer)),
            ):
                if ignored:
                    out.append(f"{PREFIX}.memory.{name}")
        if b and b.leaf_weight:
            out.append(f"{PREFIX}.blockIO.leafWeight")
        if b and any(w.leaf_weight for w in b.weight_device):
            out.append(f"{PREFIX}.blockIO.weightDevice[].leafWeight")
        return out


# --- conversions (runc's, so cgroup files match runc's for the same spec) ---------


def cpu_shares_to_weight(shares: int) -> int:
    """OCI cpu.shares (v1 scale 2..262144) to cgroup v2 cpu.weight (1..10000); 0 = unset.

    This is the log-quadratic mapping runc uses since 1.3.2 / 1.4 (the
    opencontainers/cgroups library from v0.0.3) and crun since 1.23. With
    l = log2(shares) it is ceil(10 ** ((l*l + 125*l) / 612 - 7/34)): it passes
    through (2, 1), (1024, 100) and (262144, 10000), so the v1 default of
    1024 shares lands on v2's default weight of 100. The older linear
    1 + (shares - 2) * 9999 // 262142 mapped 1024 to 39, leaving containers
    at ~40% of the weight of every system service (kubernetes#131216).
    Out-of-range shares are clamped as the v1 kernel clamps them.
    """
    if shares == 0:
        return 0
    if shares <= CPU_SHARES_MIN:
        return CPU_WEIGHT_MIN
    if shares >= CPU_SHARES_MAX:
        return CPU_WEIGHT_MAX
    l2 = math.log2(shares)
    exponent = (l2 * l2 + 125 * l2) / 612.0 - 7.0 / 34.0
    return min(CPU_WEIGHT_MAX, max(CPU_WEIGHT_MIN, math.ceil(10**exponent)))


def cpu_max_value(quota: int | None, period: int | None) -> str | None:
    """cpu.max from OCI quota/period as runc writes it; None when neither is set.

    A non-positive quota with a period means "max PERIOD" (no limit, but the
    period is still set); a quota alone keeps the kernel's current period.
    """
    if not quota and not period:
        return None
    value = str(quota) if quota is not None and quota > 0 else "max"
    return f"{value} {period}" if period else value


def swap_max_value(swap: int | None, limit: int | None) -> str | None:
    """memory.swap.max from OCI memory.swap (memory+swap total); None = leave it alone.

    v1's memsw limit counts memory plus swap, v2's swap.max counts swap only,
    so the value written is swap - limit, as runc does:
      limit -1, swap unset      -> "max" (unlimited memory means unlimited swap too)
      swap -1                   -> "max"
      swap unset/0              -> nothing
      limit -1, swap N          -> N (nothing to subtract from)
      swap == limit             -> "0" (no swap at all)
      no limit, or swap < limit -> ResourceError
    """
    field_ = f"{PREFIX}.memory.swap"
    if limit == -1 and not swap:
        return "max"
    if not swap:
        return None
    if swap == -1:
        return "max"
    if limit == -1:
        return str(swap)
    if not limit:
        raise ResourceError(field_, "a swap limit needs a memory limit", swap)
    if swap < limit:
        raise ResourceError(field_, f"memory+swap must be >= the memory limit {limit}", swap)
    return str(swap - limit)


def memory_value(value: int | None) -> str | None:
    """A memory.* byte amount: -1 is "max", 0 or None leaves the file alone."""
    if not value:
        return None
    return "max" if value == -1 else str(value)


def pids_max_value(limit: int | None) -> str | None:
    """pids.limit: <= 0 is "no limit", None leaves pids.max alone.

    Runtime spec 1.2 documents "default is no limit" and the engines that
    drive runtimes send 0 to mean that (podman and CRI-O, as crun and runc up
    to 1.3 read it); only runc 1.4, after a later spec change, writes a
    literal 0. A literal 0 would also stop the container's init from forking.
    """
    if limit is None:
        return None
    return "max" if limit <= 0 else str(limit)


def blkio_weight_to_io_weight(weight: int) -> int:
    """OCI blkio weight (10..1000) to io.weight (1..10000), runc's linear mapping; 0 = unset."""
    if weight == 0:
        return 0
    return 1 + (weight - BLKIO_WEIGHT_MIN) * 9999 // (BLKIO_WEIGHT_MAX - BLKIO_WEIGHT_MIN)


def io_rate_value(rate: int) -> str:
    """An io.max rate: 0 is v1's "no limit" (the kernel rejects 0 in io.max), so "max"."""
    return "max" if rate == 0 else str(rate)


# --- which controllers a resource set needs -----------------------------------------


def unified_controller(key: str) -> str | None:
    """The controller a `unified` key belongs to ("memory.high" -> "memory"); None for cgroup.*."""
    prefix = key.split(".", 1)[0]
    return None if prefix == "cgroup" else prefix


def check_unified_key(key: object) -> str:
    """A `unified` key must name one file of this cgroup: CONTROLLER.FILE, no '/' or '..'."""
    name = f"{PREFIX}.unified"
    if not isinstance(key, str):
        raise ResourceError(name, "keys must be strings", key)
    if "/" in key or "\0" in key or key in (".", "..") or ".." in key:
        raise ResourceError(name, "a key names one file of the cgroup: no '/' or '..'", key)
    if not _is_unified_key(key):
        raise ResourceError(name, "a key must look like CONTROLLER.FILE (memory.high)", key)
    if key in UNIFIED_FORBIDDEN:
        raise ResourceError(name, "this file is managed by the cgroup manager itself", key)
    if key.endswith(".pressure"):
        raise ResourceError(name, "PSI files hold triggers, not resource settings", key)
    return key


def needed_controllers(r: Resources) -> frozenset[str]:
    """The controllers the files this resource set writes belong to."""
    need: set[str] = set()
    if c := r.cpu:
        if c.shares or c.quota or c.period or c.idle is not None:
            need.add("cpu")
        if c.cpus or c.mems:
            need.add("cpuset")
    if m := r.memory:
        amounts = (m.limit, m.reservation, m.swap, m.high, m.min)
        if any(amounts) or m.oom_group is not None:
            need.add("memory")
    if r.pids and r.pids.limit is not None and r.pids.limit > 0:
        need.add("pids")  # "no limit" needs no controller: without one there is none
    if b := r.block_io:
        weighted = b.weight or any(w.weight for w in b.weight_device)
        if weighted or any(devs for _, devs in b.throttles()):
            need.add("io")
    if r.hugepage_limits:
        need.add("hugetlb")
    for key in r.unified:
        ctl = unified_controller(key)
        if ctl:
            need.add(ctl)
    return frozenset(need)


# --- parsing the OCI JSON ---------------------------------------------------------


def _section(d: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = d.get(key)
    if value is None:
        return None
    if not _is_mapping(value):
        raise ResourceError(f"{PREFIX}.{key}", "must be an object", value)
    return value


def _list(d: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ResourceError(f"{PREFIX}.{where}", "must be a list", value)
    return value


def _entries(d: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    out = []
    for i, item in enumerate(_list(d, key, where)):
        if not _is_mapping(item):
            raise ResourceError(f"{PREFIX}.{where}[{i}]", "must be an object", item)
        out.append(item)
    return out


def _req(entry: Mapping[str, Any], where: str, *keys: str) -> list[Any]:
    """The required properties of a list entry, in order."""
    for key in keys:
        if entry.get(key) is None:
            raise ResourceError(f"{PREFIX}.{where}.{key}", "is required")
    return [entry[key] for key in keys]


def _renamed(where: str, build: Callable[..., _T], *args: object) -> _T:
    """build(*args), one list entry; a ResourceError names the entry by its index in the list."""
    try:
        return build(*args)
    except ResourceError as exc:
        attr = exc.field.rsplit(".", 1)[1]
        raise ResourceError(f"{PREFIX}.{where}.{attr}", exc.reason, exc.value) from None


def _weight_device(e: Mapping[str, Any], where: str) -> WeightDevice:
    major, minor = _req(e, where, "major", "minor")
    return WeightDevice(major, minor, e.get("weight"), e.get("leafWeight"))


def _throttles(b: Mapping[str, Any], key: str) -> tuple[ThrottleDevice, ...]:
    return tuple(
        _renamed(
            f"blockIO.{key}[{i}]",
            ThrottleDevice,
            *_req(e, f"blockIO.{key}[{i}]", "major", "minor", "rate"),
        )
        for i, e in enumerate(_entries(b, key, f"blockIO.{key}"))
    )


def parse_resources(d: Mapping[str, Any] | None) -> Resources:
    """`linux.resources` (a decoded JSON object, or None) as typed, validated Resources."""
    if d is None:
        return Resources()
    if not _is_mapping(d):
        raise ResourceError(PREFIX, "must be an object", d)
    cpu = mem = pids = bio = None
    if (c := _section(d, "cpu")) is not None:
        cpu = Cpu(
            shares=c.get("shares"),
            quota=c.get("quota"),
            period=c.get("period"),
            cpus=c.get("cpus"),
            mems=c.get("mems"),
            idle=c.get("idle"),
            realtime_runtime=c.get("realtimeRuntime"),
            realtime_period=c.get("realtimePeriod"),
        )
    if (m := _section(d, "memory")) is not None:
        mem = Memory(
            limit=m.get("limit"),
            reservation=m.get("reservation"),
            swap=m.get("swap"),
            kernel=m.get("kernel"),
            kernel_tcp=m.get("kernelTCP"),
            swappiness=m.get("swappiness"),
            disable_oom_killer=m.get("disableOOMKiller"),
            use_hierarchy=m.get("useHierarchy"),
            check_before_update=m.get("checkBeforeUpdate"),
        )
    if (p := _section(d, "pids")) is not None:
        pids = Pids(limit=p.get("limit"))
    if (b := _section(d, "blockIO")) is not None:
        weight_devices = tuple(
            _renamed(where, _weight_device, e, where)
            for i, e in enumerate(_entries(b, "weightDevice", "blockIO.weightDevice"))
            for where in (f"blockIO.weightDevice[{i}]",)
        )
        bio = BlockIO(
            weight=b.get("weight"),
            leaf_weight=b.get("leafWeight"),
            weight_device=weight_devices,
            throttle_read_bps_device=_throttles(b, "throttleReadBpsDevice"),
            throttle_write_bps_device=_throttles(b, "throttleWriteBpsDevice"),
            throttle_read_iops_device=_throttles(b, "throttleReadIOPSDevice"),
            throttle_write_iops_device=_throttles(b, "throttleWriteIOPSDevice"),
        )
    huge = tuple(
        _renamed(
            f"hugepageLimits[{i}]",
            HugepageLimit,
            *_req(e, f"hugepageLimits[{i}]", "pageSize", "limit"),
        )
        for i, e in enumerate(_entries(d, "hugepageLimits", "hugepageLimits"))
    )
    unified = d.get("unified") or {}
    if not _is_mapping(unified):
        raise ResourceError(f"{PREFIX}.unified", "must be an object of strings", unified)
    return Resources(
        cpu=cpu,
        memory=mem,
        pids=pids,
        block_io=bio,
        hugepage_limits=huge,
        unified=dict(unified),
    )
