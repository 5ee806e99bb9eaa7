"""cgroup.events (populated, frozen): read one key, or wait until it has a value.

The kernel signals a change of the file (cgroup_file_notify -> kernfs_notify)
by waking poll(2) on an open fd with POLLPRI, so a wait returns as soon as the
kernel is done rather than after a sleep. Kept apart from cgroups/events.py
(inotify, OOM kills) and free of pathlib and dataclasses: `delete --force` of
a running container waits here, and every runtime verb pays for its imports.
"""

from __future__ import annotations

import errno
import os
import select
import time

from cgroups.errors import CgroupNotFound, CgroupTimeout

RECHECK = 1.0  # seconds between re-reads when no notification arrives


def event_value(text: bytes, key: str) -> int | None:
    """The value of `key` in cgroup.events' "key value" lines; None when absent."""
    prefix = key.encode() + b" "
    for line in text.splitlines():
        if line.startswith(prefix):
            try:
                return int(line[len(prefix) :])
            except ValueError:
                return None
    return None


def read_event(cgroup_dir: str | os.PathLike[str], key: str) -> int | None:
    """One key of the cgroup's cgroup.events; CgroupNotFound if the cgroup is gone."""
    fd = _open_events(cgroup_dir)
    try:
        return event_value(_pread(fd, cgroup_dir), key)
    finally:
        os.close(fd)


def wait_for_event(cgroup_dir: str | os.PathLike[str], key: str, want: int, timeout: float) -> None:
    """Block until cgroup.events says `key want` (e.g. frozen 1), or raise CgroupTimeout.

    Waits with poll(2) on the open file: kernfs reports POLLPRI once the
    file was notified since it was last read, and each read re-arms it, so a
    change between the read and the poll cannot be missed. (Not inotify: an
    inotify fd per wait costs an SRCU grace period, ~10ms, when it is closed.)
    The kernel sends at most one notification per 10ms per file and delays
    the next (CGROUP_FILE_NOTIFY_MIN_INTV), so the file is also re-read after
    1, 2, 4... ms, up to RECHECK seconds apart.
    """
    fd = _open_events(cgroup_dir)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        deadline = time.monotonic() + timeout
        slice_ = 0.001
        while True:
            if event_value(_pread(fd, cgroup_dir), key) == want:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CgroupTimeout(f"'{key} {want}' in cgroup.events", cgroup_dir, timeout)
            poller.poll(max(1, int(min(remaining, slice_) * 1000)))
            slice_ = min(slice_ * 2, RECHECK)
    finally:
        os.close(fd)


def _open_events(cgroup_dir: str | os.PathLike[str]) -> int:
    try:
        return os.open(os.path.join(cgroup_dir, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise CgroupNotFound("cgroup does not exist", cgroup_dir) from None


def _pread(fd: int, cgroup_dir: str | os.PathLike[str]) -> bytes:
    try:
        return os.pread(fd, 4096, 0)
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # the cgroup was removed while the file was open
            raise CgroupNotFound("cgroup was removed", cgroup_dir) from None
        raise
