"""Processes of a cgroup: who is in it (cgroup.procs), a child born in it, one moved in.

Kept apart from the manager (resources, discovery, limits) because `exec` needs
only this: it starts its joiner inside the container's cgroup, and every import
is paid by every exec (docs/RUNTIME-DESIGN.md, "Start-up cost").
"""

from __future__ import annotations

import errno
import os
import time

from cgroups.errors import CgroupError, CgroupNotFound, CgroupWriteError
from namespaces.syscalls import SyscallError, Syscalls, libc


def read_procs(cgroup: str | os.PathLike[str]) -> list[int]:
    """PIDs in cgroup.procs of one cgroup (not its children)."""
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            text = f.read()
    except FileNotFoundError:
        raise CgroupNotFound("cgroup does not exist", cgroup) from None
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise CgroupNotFound("cgroup was removed", cgroup) from None
        raise
    return [int(line) for line in text.split()]


def fork_into(cgroup_dir: str, flags: int = 0, sys: Syscalls | None = None) -> int | None:
    """fork(), the child born in the cgroup (clone3 CLONE_INTO_CGROUP, Linux >= 5.7):
    the child's PID in the parent, 0 in the child; None where that cannot be done
    (an older kernel, clone3 refused by a seccomp profile, or more than one thread
    here): fork and add_process() then. `flags` (CLONE_NEW*) has the child born in
    new namespaces too (see Libc.fork_into_cgroup).

    Moving a process in later (add_process) takes the kernel's threadgroup lock for
    writing, which waits for an RCU grace period: ~10-30 ms of every container start
    when no migration happened just before. Being born in the cgroup only reads it.
    The child skips Python's after-fork handlers (see Libc.fork_into_cgroup), hence
    the single-thread condition; the runtime's children exec or exit, and need none.
    """
    if len(os.listdir("/proc/self/task")) != 1:
        return None
    try:
        fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CgroupNotFound("cgroup does not exist", cgroup_dir) from None
    try:
        return (sys or libc()).fork_into_cgroup(fd, flags)
    except SyscallError as exc:
        if exc.errno in (errno.ENOSYS, errno.E2BIG):  # no clone3, or no CLONE_INTO_CGROUP
            return None
        raise CgroupError(
            f"cannot start a process in the cgroup: {os.strerror(exc.errno or 0)}", cgroup_dir
        ) from exc
    finally:
        os.close(fd)


def add_process(cgroup_dir: str, pid: int) -> None:
    """Move process `pid` (all its threads) into the cgroup."""
    if not os.path.isdir(cgroup_dir):
        raise CgroupNotFound("cgroup does not exist", cgroup_dir)
    procs = os.path.join(cgroup_dir, "cgroup.procs")
    for attempt in range(5):
        try:
            fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)
            return
        except OSError as exc:
            # EINVAL can be a task still being forked (TASK_NEW): try again shortly.
            if exc.errno == errno.EINVAL and attempt < 4:
                time.sleep(0.03)
                continue
            reason = f"no process {pid}" if exc.errno == errno.ESRCH else None
            raise CgroupWriteError(procs, str(pid), exc.errno or 0, reason) from exc
