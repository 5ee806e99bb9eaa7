"""`delete`: remove a stopped (or, with --force, any) container and everything it had."""

from __future__ import annotations

import contextlib
import os
import signal

from runtime import hooks
from runtime.errors import ContainerNotFound, InvalidState
from runtime.state import CREATED, STOPPED, RuntimeRoot, ensure_gone


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
        _destroy(state.cgroup, state.pid, state.pid_start)
        if state.hooks.get("poststop"):
            # failures are logged as warnings and deletion goes on (the spec)
            hooks.run_hooks(
                "poststop", state.hooks["poststop"], state.oci(STOPPED), cwd=state.bundle
            )
        cdir.remove()


def _destroy(cgroup: str, pid: int, pid_start: int) -> None:
    """Kill every process of the container (thawing it if paused) and remove its cgroup."""
    from cgroups.manager import CgroupV2Manager
    from runtime.create import remove_empty_parent

    m = CgroupV2Manager(cgroup)
    if m.exists():
        m.destroy()  # kills, thaws, waits until empty, removes
        remove_empty_parent(m.path)
    if pid and pid_start:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        ensure_gone(pid, pid_start)
