"""Waiting on cgroup event files: memory.events (inotify); cgroup.events waits are in
cgroups/event_wait.py (re-exported here).

The kernel signals a change of a cgroup's state (populated, frozen) or of
its memory event counters by notifying the file (cgroup_file_notify ->
kernfs_notify), which wakes both poll(2) on an open fd of the file (POLLPRI)
and inotify watches on it (IN_MODIFY). Waiting on that instead of sleeping
in a loop makes freeze and destroy return as soon as the kernel is done, and
lets one `OOMWatcher` inotify fd follow the memory.events of every container
on a node.

The inotify calls go through the syscall layer (namespaces/syscalls.py).
"""

from __future__ import annotations

import errno
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cgroups.errors import CgroupError, CgroupNotFound, ControllerUnavailable
from cgroups.event_wait import wait_for_event as wait_for_event  # re-exported
from cgroups.stats import MemoryEvents, parse_memory_events
from namespaces.syscalls import Syscalls, libc

# linux/inotify.h
IN_MODIFY = 0x00000002
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000

_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len (struct inotify_event)


def parse_inotify_events(buf: bytes) -> list[tuple[int, int]]:
    """(wd, mask) of each struct inotify_event in a read(2) buffer; names are skipped."""
    out, off = [], 0
    while off + _EVENT.size <= len(buf):
        wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
        out.append((wd, mask))
        off += _EVENT.size + length
    return out


class Inotify:
    """One non-blocking inotify fd with a timed wait; closes with the `with` block."""

    def __init__(self, sys: Syscalls | None = None) -> None:
        self._sys = sys or libc()
        self.fd = self._sys.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN)

    def add(self, path: Path, mask: int = IN_MODIFY) -> int:
        return self._sys.inotify_add_watch(self.fd, str(path), mask)

    def remove(self, wd: int) -> None:
        try:
            self._sys.inotify_rm_watch(self.fd, wd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # already gone with its file
                raise

    def read(self, timeout: float | None) -> list[tuple[int, int]]:
        """Events that arrive within `timeout` seconds (None: wait for ever); [] on timeout."""
        ms = None if timeout is None else max(0, int(timeout * 1000))
        if not self._poll.poll(ms):
            return []
        events: list[tuple[int, int]] = []
        while True:
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return events
            if not buf:
                return events
            events += parse_inotify_events(buf)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- OOM kills -------------------------------------------------------------------------


@dataclass(frozen=True)
class OOMEvent:
    """The kernel OOM-killed `new_kills` processes in `cgroup` (or below it) since last seen."""

    cgroup: Path
    new_kills: int
    events: MemoryEvents  # the counters after the kill(s)


class OOMWatcher:
    """Reports increases of memory.events oom_kill for any number of cgroups, via inotify.

    `add()` records each cgroup's current counters, so only kills after it
    are reported. Use `wait()` from a loop of your own, iterate (blocks until
    every watched cgroup is gone), or `run(callback, stop)` in a thread.
    A watched cgroup that is removed drops out on its own (IN_IGNORED).
    """

    def __init__(self, sys: Syscalls | None = None) -> None:
        self._ino = Inotify(sys)
        self._by_wd: dict[int, Path] = {}
        self._last: dict[Path, MemoryEvents] = {}
        self._lock = threading.Lock()

    @property
    def watched(self) -> frozenset[Path]:
        return frozenset(self._last)

    def fileno(self) -> int:
        """The inotify fd, for a caller's own poll/select loop (then call wait(0))."""
        return self._ino.fd

    def add(self, cgroup: Path) -> None:
        """Start following `cgroup`'s memory.events; needs the memory controller."""
        cgroup = Path(cgroup)
        events_file = cgroup / "memory.events"
        try:
            wd = self._ino.add(events_file, IN_MODIFY)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            if not cgroup.is_dir():
                raise CgroupNotFound("cgroup does not exist", cgroup) from None
            raise ControllerUnavailable(
                "memory", cgroup, "memory.events is missing: the memory controller is not enabled"
            ) from None
        with self._lock:
            self._by_wd[wd] = cgroup
            self._last[cgroup] = self._read(cgroup) or MemoryEvents()

    def remove(self, cgroup: Path) -> None:
        cgroup = Path(cgroup)
        with self._lock:
            for wd, path in list(self._by_wd.items()):
                if path == cgroup:
                    del self._by_wd[wd]
                    self._ino.remove(wd)
            self._last.pop(cgroup, None)

    @staticmethod
    def _read(cgroup: Path) -> MemoryEvents | None:
        try:
            text = (cgroup / "memory.events").read_text()
        except OSError:
            return None  # removed meanwhile: IN_IGNORED follows
        # No oom_kill line is no reading at all (never a reset of the count to 0).
        return parse_memory_events(text) if "oom_kill" in text else None

    def _check(self, cgroup: Path) -> OOMEvent | None:
        now = self._read(cgroup)
        before = self._last.get(cgroup)
        if now is None or before is None:
            return None
        self._last[cgroup] = now
        if now.oom_kill > before.oom_kill:
            return OOMEvent(cgroup, now.oom_kill - before.oom_kill, now)
        return None

    def wait(self, timeout: float | None = None) -> list[OOMEvent]:
        """OOM kills reported within `timeout` seconds (None: until the first one)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._by_wd:
                return []
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            raw = self._ino.read(remaining)
            out = []
            with self._lock:
                changed: list[Path] = []
                for wd, mask in raw:
                    if mask & IN_Q_OVERFLOW:  # lost events: re-read everything
                        changed = list(self._last)
                        break
                    path = self._by_wd.get(wd)
                    if path is None:
                        continue
                    if mask & IN_IGNORED:
                        del self._by_wd[wd]
                        self._last.pop(path, None)
                    elif path not in changed:
                        changed.append(path)
                for path in changed:
                    event = self._check(path)
                    if event is not None:
                        out.append(event)
            if out or (deadline is not None and time.monotonic() >= deadline):
                return out

    def __iter__(self) -> Iterator[OOMEvent]:
        while self._by_wd:
            yield from self.wait(None)

    def run(
        self,
        callback: Callable[[OOMEvent], None],
        stop: threading.Event,
        interval: float = 0.5,
    ) -> None:
        """Call `callback` for each OOM kill until `stop` is set (checked every `interval`)."""
        while not stop.is_set():
            for event in self.wait(interval):
                callback(event)

    def close(self) -> None:
        self._ino.close()

    def __enter__(self) -> OOMWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def oom_kill_count(cgroup: Path) -> int:
    """memory.events oom_kill now; CgroupError if the memory controller is not enabled."""
    try:
        return parse_memory_events((cgroup / "memory.events").read_text()).oom_kill
    except FileNotFoundError:
        raise CgroupError("no memory.events (memory controller not enabled)", cgroup) from None
