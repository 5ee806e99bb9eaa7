"""`events`: container statistics (once with --stats, else every interval) and OOM events.

The JSON shape is runc's: {"type": "stats"|"oom", "id": ID, "data": {...}}.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Any

from runtime.errors import InvalidState
from runtime.state import STOPPED, RuntimeRoot


def stats_event(cid: str, cgroup: str) -> dict[str, Any]:
    from cgroups.manager import CgroupV2Manager

    st = CgroupV2Manager(cgroup).stats()
    return {"type": "stats", "id": cid, "data": _plain(asdict(st))}


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def events(root: RuntimeRoot, cid: str, *, stats_once: bool, interval: float) -> None:
    cdir = root.get(cid)
    state = cdir.load()
    if cdir.status(state) == STOPPED:
        raise InvalidState("container not running", container=cid)
    if stats_once:
        _emit(stats_event(cid, state.cgroup))
        return
    watcher = _oom_watcher(state.cgroup)
    next_stats = 0.0
    try:
        while cdir.status(state) != STOPPED:
            now = time.monotonic()
            if now >= next_stats:
                _emit(stats_event(cid, state.cgroup))
                next_stats = now + interval
            if watcher is not None:
                for _ in watcher.wait(timeout=min(1.0, max(0.0, next_stats - now))):
                    _emit({"type": "oom", "id": cid})
            else:
                time.sleep(min(1.0, max(0.0, next_stats - now)))
    finally:
        if watcher is not None:
            watcher.close()


def _oom_watcher(cgroup: str) -> Any:
    """An inotify watch of memory.events, or None where there is no memory controller."""
    from cgroups.errors import CgroupError
    from cgroups.events import OOMWatcher
    from cgroups.manager import CgroupV2Manager

    try:
        w = OOMWatcher()
        w.add(CgroupV2Manager(cgroup).path)
        return w
    except (CgroupError, OSError):
        return None


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()
