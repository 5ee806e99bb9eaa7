"""Reading a cgroup's statistics files into typed values.

Which files exist depends on the controllers enabled for the cgroup: on a
hybrid host only cpu.stat's usage lines and the PSI files are there. A
missing file is not an error, it reads as None, so CRI's ContainerStats can
report what the host has. The parsers are pure functions of the file text
(cgroup-v2.rst's "flat keyed" and "nested keyed" formats).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cgroups.errors import CgroupError, CgroupNotFound


@dataclass(frozen=True)
class CpuStats:
    """cpu.stat. The usage lines are always there; the throttling ones need the cpu controller."""

    usage_usec: int
    user_usec: int
    system_usec: int
    nr_periods: int | None = None
    nr_throttled: int | None = None
    throttled_usec: int | None = None
    nr_bursts: int | None = None
    burst_usec: int | None = None
    raw: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryEvents:
    """memory.events: how often each boundary was hit (hierarchical counts)."""

    low: int = 0
    high: int = 0
    max: int = 0
    oom: int = 0
    oom_kill: int = 0
    oom_group_kill: int = 0


@dataclass(frozen=True)
class MemoryStats:
    """memory.current/max/peak/swap.* and the parsed memory.stat and memory.events.

    `limit` and `swap_limit` are None when the file says "max".
    """

    current: int
    limit: int | None
    stat: Mapping[str, int]
    events: MemoryEvents | None
    peak: int | None = None
    swap_current: int | None = None
    swap_limit: int | None = None


@dataclass(frozen=True)
class PidsStats:
    """pids.current, pids.max (None when "max") and how often forks hit it (pids.events max)."""

    current: int
    limit: int | None
    limit_hits: int | None = None


@dataclass(frozen=True)
class IoDeviceStats:
    """One io.stat line: bytes and operations read, written and discarded on a device."""

    major: int
    minor: int
    rbytes: int = 0
    wbytes: int = 0
    rios: int = 0
    wios: int = 0
    dbytes: int = 0
    dios: int = 0
    raw: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PressureLine:
    """One PSI line: share of wall time stalled (percent) over 10s/60s/300s, and total usec."""

    avg10: float
    avg60: float
    avg300: float
    total: int


@dataclass(frozen=True)
class Pressure:
    """A PSI file: "some" tasks stalled, and "full" (all non-idle tasks stalled) when present."""

    some: PressureLine
    full: PressureLine | None = None


@dataclass(frozen=True)
class CgroupStats:
    """Everything readable about one cgroup; None where the controller or file is missing."""

    cpu: CpuStats | None = None
    memory: MemoryStats | None = None
    pids: PidsStats | None = None
    io: tuple[IoDeviceStats, ...] | None = None
    cpu_pressure: Pressure | None = None
    memory_pressure: Pressure | None = None
    io_pressure: Pressure | None = None


# --- parsers (pure) -----------------------------------------------------------------


def parse_flat_keyed(text: str) -> dict[str, int]:
    """ "key value" lines (cpu.stat, memory.stat, memory.events, cgroup.events)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_limit(text: str) -> int | None:
    """A single value that is a number or "max" (memory.max, pids.max): "max" is None."""
    value = text.strip()
    return None if value == "max" else int(value)


def parse_cpu_stat(text: str) -> CpuStats:
    kv = parse_flat_keyed(text)
    return CpuStats(
        usage_usec=kv.get("usage_usec", 0),
        user_usec=kv.get("user_usec", 0),
        system_usec=kv.get("system_usec", 0),
        nr_periods=kv.get("nr_periods"),
        nr_throttled=kv.get("nr_throttled"),
        throttled_usec=kv.get("throttled_usec"),
        nr_bursts=kv.get("nr_bursts"),
        burst_usec=kv.get("burst_usec"),
        raw=kv,
    )


def parse_memory_events(text: str) -> MemoryEvents:
    kv = parse_flat_keyed(text)
    return MemoryEvents(
        low=kv.get("low", 0),
        high=kv.get("high", 0),
        max=kv.get("max", 0),
        oom=kv.get("oom", 0),
        oom_kill=kv.get("oom_kill", 0),
        oom_group_kill=kv.get("oom_group_kill", 0),
    )


def parse_io_stat(text: str) -> tuple[IoDeviceStats, ...]:
    """ "MAJ:MIN key=value ..." lines; keys beyond the six standard ones stay in `raw`."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        kv: dict[str, int] = {}
        for item in parts[1:]:
            key, sep, value = item.partition("=")
            if sep:
                try:
                    kv[key] = int(value)
                except ValueError:
                    continue
        out.append(
            IoDeviceStats(
                major=int(major),
                minor=int(minor),
                rbytes=kv.get("rbytes", 0),
                wbytes=kv.get("wbytes", 0),
                rios=kv.get("rios", 0),
                wios=kv.get("wios", 0),
                dbytes=kv.get("dbytes", 0),
                dios=kv.get("dios", 0),
                raw=kv,
            )
        )
    return tuple(out)


def _pressure_line(parts: list[str]) -> PressureLine:
    kv = dict(p.partition("=")[::2] for p in parts)
    return PressureLine(
        avg10=float(kv.get("avg10", 0)),
        avg60=float(kv.get("avg60", 0)),
        avg300=float(kv.get("avg300", 0)),
        total=int(kv.get("total", 0)),
    )


def parse_pressure(text: str) -> Pressure | None:
    """ "some avg10=.. avg60=.. avg300=.. total=.." and an optional "full ..." line."""
    some = full = None
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "some":
            some = _pressure_line(parts[1:])
        elif parts and parts[0] == "full":
            full = _pressure_line(parts[1:])
    return None if some is None else Pressure(some, full)


# --- reading a cgroup ---------------------------------------------------------------


def read_file(cgroup: Path, name: str) -> str | None:
    """A cgroup file's text, or None if the file is absent (controller not enabled).

    EOPNOTSUPP is what a PSI file answers when cgroup.pressure is 0: absent
    too. ENODEV is the kernel's answer for files of a removed cgroup.
    """
    try:
        with open(cgroup / name, encoding="ascii") as f:
            return f.read()
    except FileNotFoundError:
        if not cgroup.is_dir():
            raise CgroupNotFound("cgroup does not exist", cgroup) from None
        return None
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            return None
        if exc.errno == errno.ENODEV:
            raise CgroupNotFound("cgroup was removed", cgroup) from None
        raise CgroupError(f"cannot read {name}: {os.strerror(exc.errno or 0)}", cgroup) from exc


def _opt_int(cgroup: Path, name: str) -> int | None:
    text = read_file(cgroup, name)
    return None if text is None else parse_limit(text)


def read_cpu(cgroup: Path) -> CpuStats | None:
    text = read_file(cgroup, "cpu.stat")
    return None if text is None else parse_cpu_stat(text)


def read_memory(cgroup: Path) -> MemoryStats | None:
    current = read_file(cgroup, "memory.current")
    if current is None:
        return None
    stat = read_file(cgroup, "memory.stat")
    events = read_file(cgroup, "memory.events")
    return MemoryStats(
        current=int(current),
        limit=_opt_int(cgroup, "memory.max"),
        stat=parse_flat_keyed(stat) if stat is not None else {},
        events=parse_memory_events(events) if events is not None else None,
        peak=_opt_int(cgroup, "memory.peak"),
        swap_current=_opt_int(cgroup, "memory.swap.current"),
        swap_limit=_opt_int(cgroup, "memory.swap.max"),
    )


def read_pids(cgroup: Path) -> PidsStats | None:
    current = read_file(cgroup, "pids.current")
    if current is None:
        return None
    events = read_file(cgroup, "pids.events")
    return PidsStats(
        current=int(current),
        limit=_opt_int(cgroup, "pids.max"),
        limit_hits=parse_flat_keyed(events).get("max") if events is not None else None,
    )


def read_io(cgroup: Path) -> tuple[IoDeviceStats, ...] | None:
    text = read_file(cgroup, "io.stat")
    return None if text is None else parse_io_stat(text)


def read_pressure(cgroup: Path, resource: str) -> Pressure | None:
    text = read_file(cgroup, f"{resource}.pressure")
    return None if text is None else parse_pressure(text)


def read_stats(cgroup: Path) -> CgroupStats:
    """All statistics of one cgroup directory."""
    if not cgroup.is_dir():
        raise CgroupNotFound("cgroup does not exist", cgroup)
    return CgroupStats(
        cpu=read_cpu(cgroup),
        memory=read_memory(cgroup),
        pids=read_pids(cgroup),
        io=read_io(cgroup),
        cpu_pressure=read_pressure(cgroup, "cpu"),
        memory_pressure=read_pressure(cgroup, "memory"),
        io_pressure=read_pressure(cgroup, "io"),
    )
