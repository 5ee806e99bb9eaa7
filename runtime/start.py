"""`start`: release a created container's init (it is blocked opening the exec fifo)."""

from __future__ import annotations

import os
import select
import time

from runtime.errors import InvalidState, RuntimeFailure
from runtime.state import CREATED, RUNNING, STOPPED, RuntimeRoot, proc_start_time

START_TIMEOUT = 60.0


def start(root: RuntimeRoot, cid: str) -> None:
    cdir = root.get(cid)
    with cdir.lock():
        state = cdir.load()
        status = cdir.status(state)
        if status != CREATED:
            if status == STOPPED:
                raise InvalidState("cannot start a container that has stopped", container=cid)
            raise InvalidState(f"cannot start an already {status} container", container=cid)
        # Non-blocking open of the read end completes the init's blocked open for writing.
        fd = os.open(cdir.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            _await_go(fd, state.pid, state.pid_start, cid)
        finally:
            os.close(fd)
        # Gone, the fifo says "running" (ContainerDir.status); state.json keeps "created",
        # as it does after the front end's start (runtime/front_end.c).
        os.unlink(cdir.fifo)
    if state.hooks.get("poststart"):
        from runtime import hooks

        # failures are logged as warnings and the container goes on (the spec)
        hooks.run_hooks("poststart", state.hooks["poststart"], state.oci(RUNNING), cwd=state.bundle)


def _await_go(fd: int, pid: int, pid_start: int, cid: str) -> None:
    """Read the init's byte; fail if the init dies instead of writing it."""
    deadline = time.monotonic() + START_TIMEOUT
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while time.monotonic() < deadline:
        if poller.poll(50):
            try:
                if os.read(fd, 1) == b"0":
                    return
            except BlockingIOError:
                continue
        if proc_start_time(pid) != pid_start:
            raise RuntimeFailure("the container's init exited before it could start", container=cid)
    raise RuntimeFailure(f"the init did not answer within {START_TIMEOUT:.0f}s", container=cid)
