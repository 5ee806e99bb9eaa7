"""`delete`: remove a stopped (or, with --force, any) container and everything it had."""

from __future__ import annotations

import os

from namespaces.signals import SIGKILL
from runtime.errors import ContainerNotFound, InvalidState
from runtime.state import (
    CREATED,
    STOPPED,
    ContainerState,
    RuntimeRoot,
    ensure_gone,
    proc_start_time,
    remove_empty_parent,
    signal_process,
)


def delete(root: RuntimeRoot, cid: str, *, force: bool = False) -> None:
    try:
        cdir = root.get(cid)
    except ContainerNotFound:
        if force:  # runc: --force on a container that is not there succeeds
            return
        raise
    with cdir.lock():
        try:
            state = cdir.load()
        except ContainerNotFound:
            cdir.remove()
            if force:
                return
            raise
        status = cdir.status(state)
        if status not in (STOPPED, CREATED) and not force:
            raise InvalidState(
                f"cannot delete container {cid} that is not stopped: {status}", container=cid
            )
        _destroy(state)
        if state.hooks.get("poststop"):
            from runtime import hooks

            # failures are logged as warnings and deletion goes on (the spec)
            hooks.run_hooks(
                "poststop", state.hooks["poststop"], state.oci(STOPPED), cwd=state.bundle
            )
        cdir.remove()


def _destroy(state: ContainerState) -> None:
    """Kill every process of the container (thawing it if paused) and remove its cgroup."""
    if not _remove_empty_cgroup(state.cgroup_dir):
        from cgroups.manager import CgroupV2Manager

        m = CgroupV2Manager(state.cgroup)
        if m.exists():
            m.destroy()  # kills, thaws, waits until empty, removes
            remove_empty_parent(m.dir)
    # The init was in the cgroup, so it is dead by now; unless the cgroup was not ours
    # to empty. signal_process pins the PID, so a recycled one is never hit.
    if state.pid and proc_start_time(state.pid) == state.pid_start:
        try:
            signal_process(state.pid, state.pid_start, SIGKILL)
        except ProcessLookupError:
            pass
        ensure_gone(state.pid, state.pid_start)


def _remove_empty_cgroup(path: str) -> bool:
    """A stopped container's cgroup is an empty leaf: one rmdir, without importing the
    cgroup manager (~15 ms of imports). False when that is not the case (processes
    left, sub-cgroups, no recorded path): the manager then kills, waits and removes."""
    if not path:
        return False
    try:
        os.rmdir(path)
    except OSError:
        return False
    remove_empty_parent(path)
    return True
