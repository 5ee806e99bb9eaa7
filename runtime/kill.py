"""`kill`: send a signal to the container's init, or with --all to every process in it."""

from __future__ import annotations

import os

from namespaces import signals
from runtime.errors import InvalidState, RuntimeFailure
from runtime.state import STOPPED, RuntimeRoot, signal_process


def parse_signal(raw: str) -> int:
    """`KILL`, `SIGKILL` or `9`, as runc takes them."""
    if raw.isdigit():
        num = int(raw)
        if not 0 < num < signals.NSIG:
            raise RuntimeFailure(f"invalid signal: {raw}")
        return num
    name = raw.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    known = signals.number(name)
    if known is None:
        raise RuntimeFailure(f"unknown signal {raw!r}")
    return known


def kill(root: RuntimeRoot, cid: str, sig: int, *, all_processes: bool = False) -> None:
    cdir = root.get(cid)
    state = cdir.load()
    if cdir.status(state) == STOPPED:
        raise InvalidState("container not running", container=cid)
    if all_processes:
        kill_all(state.cgroup, sig)
        return
    try:
        signal_process(state.pid, state.pid_start, sig)
    except ProcessLookupError:
        raise InvalidState("container not running", container=cid) from None


def kill_all(cgroup: str, sig: int) -> None:
    """Every process of the container's cgroup; SIGKILL goes through cgroup.kill at once."""
    from cgroups.manager import CgroupV2Manager

    m = CgroupV2Manager(cgroup)
    if not m.exists():
        return
    if sig == signals.SIGKILL:
        m.kill()
        return
    for pid in m.pids(recursive=True):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
