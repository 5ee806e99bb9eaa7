"""`update`: change a running container's resources live (flags, or -r FILE with
linux.resources JSON; "-" reads standard input)."""

from __future__ import annotations

import json
import sys
from typing import Any

from runtime.errors import SpecError
from runtime.state import STOPPED, RuntimeRoot

# runc's update flags -> where they go in linux.resources
FLAG_PATHS: dict[str, tuple[str, str]] = {
    "cpu_shares": ("cpu", "shares"),
    "cpu_period": ("cpu", "period"),
    "cpu_quota": ("cpu", "quota"),
    "cpu_rt_period": ("cpu", "realtimePeriod"),
    "cpu_rt_runtime": ("cpu", "realtimeRuntime"),
    "cpuset_cpus": ("cpu", "cpus"),
    "cpuset_mems": ("cpu", "mems"),
    "memory": ("memory", "limit"),
    "memory_reservation": ("memory", "reservation"),
    "memory_swap": ("memory", "swap"),
    "pids_limit": ("pids", "limit"),
    "blkio_weight": ("blockIO", "weight"),
}
BYTE_FLAGS = {"memory", "memory_reservation", "memory_swap"}


def parse_bytes(raw: str) -> int:
    """`512m`, `1g`, `1048576`, `-1` as runc's units.RAMInBytes takes them."""
    s = raw.strip().lower()
    if s == "-1":
        return -1
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    for suffix in ("kb", "mb", "gb", "tb", "kib", "mib", "gib", "tib", "b"):
        if s.endswith(suffix):
            s = s[: -len(suffix)] + (suffix[0] if suffix[0] in units else "")
            break
    mult = units.get(s[-1:], 1)
    num = s[:-1] if s[-1:] in units else s
    try:
        return int(float(num) * mult)
    except ValueError:
        raise SpecError("--memory", f"invalid size {raw!r}") from None


def merge_flags(resources: dict[str, Any], flags: dict[str, str | None]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(resources))
    for name, raw in flags.items():
        if raw is None:
            continue
        section, key = FLAG_PATHS[name]
        value: Any
        if name in BYTE_FLAGS:
            value = parse_bytes(raw)
        elif name in ("cpuset_cpus", "cpuset_mems"):
            value = raw
        else:
            try:
                value = int(raw)
            except ValueError:
                raise SpecError(f"--{name.replace('_', '-')}", f"not a number: {raw!r}") from None
        out.setdefault(section, {})[key] = value
    return out


def update(
    root: RuntimeRoot, cid: str, *, resources_file: str | None, flags: dict[str, str | None]
) -> None:
    from runtime.errors import InvalidState

    cdir = root.get(cid)
    with cdir.lock():
        state = cdir.load()
        if cdir.status(state) == STOPPED:
            raise InvalidState("container not running", container=cid)
        current = dict(state.resources)
        if resources_file:
            if resources_file == "-":
                text = sys.stdin.read()
            else:
                with open(resources_file) as f:
                    text = f.read()
            try:
                current = json.loads(text)
            except ValueError as exc:
                raise SpecError("-r", f"not valid JSON: {exc}") from None
        _apply(cdir, state, merge_flags(current, flags))


def update_resources(root: RuntimeRoot, cid: str, resources: dict[str, Any]) -> None:
    """Apply `resources` (linux.resources of the spec) live and record them: the library
    call behind `update -r`, for callers that hold the resources already (the CRI server)."""
    from runtime.errors import InvalidState

    cdir = root.get(cid)
    with cdir.lock():
        state = cdir.load()
        if cdir.status(state) == STOPPED:
            raise InvalidState("container not running", container=cid)
        _apply(cdir, state, resources)


def _apply(cdir: Any, state: Any, resources: dict[str, Any]) -> None:
    from cgroups.errors import ResourceError
    from cgroups.manager import CgroupV2Manager
    from cgroups.resources import Resources

    try:
        res = Resources.from_oci(resources)
    except ResourceError as exc:
        raise SpecError("linux.resources", str(exc)) from None
    CgroupV2Manager(state.cgroup).apply(res)
    state.resources = resources
    cdir.save(state)
