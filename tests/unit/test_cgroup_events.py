"""Event waits and the OOM watcher, on fake event files (real inotify, fake cgroup).

inotify reports writes to a regular file as the kernel reports changes of
memory.events, so the watcher's logic can be driven without a memory
controller; tests/vm proves it against a real OOM kill. (A regular file
never signals POLLPRI, so cgroup.events waits here exercise the re-reads;
tests/integration exercises the kernel's notification.)
"""

import errno
import os
import signal
import struct
import threading

import pytest

from cgroups.discovery import CgroupHierarchy, CgroupMode
from cgroups.errors import CgroupNotFound, CgroupTimeout, ControllerUnavailable
from cgroups.event_wait import event_value, read_event
from cgroups.events import (
    IN_IGNORED,
    IN_MODIFY,
    OOMWatcher,
    parse_inotify_events,
    wait_for_event,
)
from cgroups.manager import CgroupV2Manager
from tests.fakes import RecordingSyscalls

EVENTS = "low 0\nhigh 0\nmax 0\noom 0\noom_kill {}\noom_group_kill 0\n"


def later(delay, fn, *args):
    t = threading.Timer(delay, fn, args)
    t.start()
    return t


def test_parse_inotify_events():
    buf = struct.pack("=iIII", 1, IN_MODIFY, 0, 0)
    buf += struct.pack("=iIII", 2, IN_IGNORED, 0, 16) + b"name".ljust(16, b"\0")
    buf += struct.pack("=iIII", 3, IN_MODIFY, 0, 0)
    assert parse_inotify_events(buf) == [(1, IN_MODIFY), (2, IN_IGNORED), (3, IN_MODIFY)]
    assert parse_inotify_events(b"") == []


def test_read_event(tmp_path):
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert read_event(tmp_path, "populated") == 1
    assert read_event(tmp_path, "frozen") == 0
    assert read_event(tmp_path, "missing") is None
    assert event_value(b"populated 1\nfrozen 10\n", "frozen") == 10
    with pytest.raises(CgroupNotFound):
        read_event(tmp_path / "gone", "populated")


def test_wait_returns_when_the_file_changes(tmp_path):
    events = tmp_path / "cgroup.events"
    events.write_text("populated 1\nfrozen 0\n")
    t = later(0.05, events.write_text, "populated 1\nfrozen 1\n")
    try:
        wait_for_event(tmp_path, "frozen", 1, timeout=30)
    finally:
        t.join()
    assert read_event(tmp_path, "frozen") == 1


def test_wait_on_a_missing_cgroup(tmp_path):
    with pytest.raises(CgroupNotFound):
        wait_for_event(tmp_path / "gone", "populated", 0, timeout=1)


def test_wait_times_out_with_a_typed_error(tmp_path):
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(CgroupTimeout) as err:
        wait_for_event(tmp_path, "populated", 0, timeout=0.05)
    assert err.value.path == tmp_path
    assert "populated 0" in str(err.value)


def test_oom_watcher_reports_only_oom_kill_increases(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for cg in (a, b):
        cg.mkdir()
        (cg / "memory.events").write_text(EVENTS.format(5))  # kills before add() don't count
    with OOMWatcher() as w:
        w.add(a)
        w.add(b)
        assert w.watched == {a, b}
        assert w.wait(0.05) == []
        (a / "memory.events").write_text(EVENTS.format(5).replace("max 0", "max 9"))
        assert w.wait(0.2) == []  # another counter moved: no OOM kill
        t = later(0.05, (b / "memory.events").write_text, EVENTS.format(7))
        try:
            got = w.wait(30)
        finally:
            t.join()
        assert len(got) == 1
        assert got[0].cgroup == b
        assert got[0].new_kills == 2
        assert got[0].events.oom_kill == 7


def test_oom_watcher_drops_removed_cgroups(tmp_path):
    (tmp_path / "memory.events").write_text(EVENTS.format(0))
    with OOMWatcher() as w:
        w.add(tmp_path)
        (tmp_path / "memory.events").unlink()  # what rmdir of the cgroup does to the watch
        assert w.wait(5) == []
        assert w.watched == frozenset()
        assert list(w) == []  # iteration ends when nothing is left to watch


def test_oom_watcher_callback_loop(tmp_path):
    (tmp_path / "memory.events").write_text(EVENTS.format(0))
    seen, stop = [], threading.Event()

    def on_oom(event):
        seen.append(event)
        stop.set()

    with OOMWatcher() as w:
        w.add(tmp_path)
        t = later(0.05, (tmp_path / "memory.events").write_text, EVENTS.format(1))
        try:
            w.run(on_oom, stop, interval=0.05)
        finally:
            t.join()
    assert [e.new_kills for e in seen] == [1]


def test_oom_watcher_needs_the_memory_controller(tmp_path):
    with OOMWatcher() as w:
        with pytest.raises(ControllerUnavailable) as err:
            w.add(tmp_path)
        assert err.value.controller == "memory"
        with pytest.raises(CgroupNotFound):
            w.add(tmp_path / "gone")
        w.remove(tmp_path)  # not watched: nothing to do


def test_kill_each_pins_pids_with_pidfds(tmp_path):
    """The pre-5.14 fallback signals through pidfds and skips PIDs that are gone."""
    cg = tmp_path / "ctr"
    (cg / "child").mkdir(parents=True)
    (cg / "cgroup.procs").write_text("111\n")
    (cg / "cgroup.freeze").write_text("0\n")
    (cg / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    (cg / "child" / "cgroup.procs").write_text("222\n")
    fd = os.open(os.devnull, os.O_RDONLY)
    sys = RecordingSyscalls(pidfd_open={111: fd, 222: (errno.ESRCH,)})
    hierarchy = CgroupHierarchy(CgroupMode.UNIFIED, tmp_path, "/", frozenset(), "/")
    m = CgroupV2Manager("ctr", hierarchy, sys=sys)
    m.kill()  # no cgroup.kill file here: the fallback
    assert sys.calls == [
        ("pidfd_open", (222,)),
        ("pidfd_open", (111,)),
        ("pidfd_send_signal", (fd, signal.SIGKILL)),
    ]
    with pytest.raises(OSError):
        os.fstat(fd)  # closed after use
    assert (cg / "cgroup.freeze").read_text().startswith("0")  # thawed again
