"""`pause` and `resume`: freeze and thaw every process of the container (cgroup.freeze)."""

from __future__ import annotations

from runtime.errors import InvalidState
from runtime.state import PAUSED, RUNNING, RuntimeRoot


def pause(root: RuntimeRoot, cid: str) -> None:
    from cgroups.manager import CgroupV2Manager

    cdir = root.get(cid)
    with cdir.lock():
        state = cdir.load()
        if cdir.status(state) != RUNNING:
            raise InvalidState("container not running", container=cid)
        CgroupV2Manager(state.cgroup).freeze()


def resume(root: RuntimeRoot, cid: str) -> None:
    from cgroups.manager import CgroupV2Manager

    cdir = root.get(cid)
    with cdir.lock():
        state = cdir.load()
        if cdir.status(state) != PAUSED:
            raise InvalidState("container not paused", container=cid)
        CgroupV2Manager(state.cgroup).thaw()
