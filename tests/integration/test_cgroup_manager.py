"""The cgroup v2 manager against the host's real unified hierarchy.

On this project's hybrid dev hosts the hierarchy has no cpu/memory/pids/io
controllers: grouping, freeze, kill, destroy and cpu.stat are tested here,
and a limit must fail with ControllerUnavailable having written nothing.
The limits themselves are enforced in tests/vm/test_cgroup_limits.py.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from cgroups.discovery import discover
from cgroups.errors import (
    CgroupNotFound,
    CgroupPathError,
    CgroupWriteError,
    ControllerUnavailable,
    ResourceError,
)
from cgroups.events import OOMWatcher
from cgroups.manager import CgroupV2Manager
from cgroups.resources import (
    BlockIO,
    Cpu,
    Memory,
    Pids,
    Resources,
    ThrottleDevice,
)

pytestmark = pytest.mark.usefixtures("require_root")

WAIT = 30  # seconds a child gets to die or answer; never reached when things work


@pytest.fixture(scope="module")
def hierarchy():
    h = discover()
    if h.mount_point is None:
        pytest.skip("no cgroup v2 hierarchy on this host")
    return h


@pytest.fixture(scope="module", autouse=True)
def root_cgroup_untouched(hierarchy):
    """Nothing here needs a controller, so the host's root must end exactly as it began."""
    subtree = hierarchy.mount_point / "cgroup.subtree_control"
    before = subtree.read_text()
    yield
    assert subtree.read_text() == before


def scratch_name() -> str:
    return f"pinnace-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cg(hierarchy, spawn):
    """A manager for a scratch cgroup (not yet created); destroyed after the test."""
    m = CgroupV2Manager(scratch_name(), hierarchy)
    yield m
    m.destroy()
    assert not m.exists()


def in_cgroup(pid: int) -> str:
    return next(
        line[3:]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if line.startswith("0::")
    )


def snapshot(d: Path) -> dict[str, str]:
    """Every readable file of a cgroup, to prove a refused apply changed nothing."""
    out = {}
    for f in sorted(d.iterdir()):
        if f.is_file() and not f.name.endswith((".stat", ".pressure", ".events", ".local")):
            try:
                out[f.name] = f.read_text()
            except OSError:
                continue  # write-only (cgroup.kill)
    return out


# --- grouping --------------------------------------------------------------------------------


def test_create_add_list_and_destroy(cg, spawn, hierarchy):
    cg.create()
    assert cg.path.parent == hierarchy.mount_point
    p = spawn("sleep", "600")
    cg.add_process(p.pid)
    assert cg.pids() == [p.pid]
    assert in_cgroup(p.pid).endswith("/" + cg.path.name)

    child = CgroupV2Manager(f"{cg.path.name}/child", hierarchy)
    child.create()
    q = spawn("sleep", "600")
    child.add_process(q.pid)
    assert cg.pids() == [p.pid]
    assert cg.pids(recursive=True) == sorted([p.pid, q.pid])
    assert (cg.path / "cgroup.events").read_text().startswith("populated 1")

    cg.destroy()
    assert not cg.exists()
    assert not child.exists()
    assert p.wait(timeout=WAIT) == -signal.SIGKILL
    assert q.wait(timeout=WAIT) == -signal.SIGKILL
    cg.destroy()  # idempotent


def test_create_makes_missing_parents_and_reuses_existing(cg, hierarchy):
    deep = CgroupV2Manager(f"/{cg.path.name}/pod/ctr", hierarchy)
    deep.create()
    assert deep.path == cg.path / "pod" / "ctr"
    deep.create()  # already there: joined, not an error
    assert deep.exists()
    cg.destroy()  # children first
    assert not (cg.path / "pod").exists()


def test_add_process_of_a_dead_pid(cg, spawn):
    cg.create()
    p = spawn("true")
    p.wait(timeout=WAIT)
    with pytest.raises(CgroupWriteError) as err:
        cg.add_process(p.pid)
    assert err.value.errno == errno.ESRCH
    assert err.value.path == cg.path / "cgroup.procs"


def test_operations_on_a_missing_cgroup(cg):
    for call in (cg.pids, cg.freeze, cg.kill, cg.stats, lambda: cg.apply(Resources())):
        with pytest.raises(CgroupNotFound) as err:
            call()
        assert err.value.path == cg.path
    cg.destroy()  # nothing to do


def test_paths_outside_the_hierarchy_are_refused(hierarchy):
    with pytest.raises(CgroupPathError):
        CgroupV2Manager("pinnace-test-x/../../etc", hierarchy)


# --- freezer ---------------------------------------------------------------------------------


def answers(p: subprocess.Popen, timeout: float) -> bool:
    """Send a line to a `cat` child; True if it echoes it back within `timeout`."""
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(b"ping\n")
    p.stdin.flush()
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        return False
    return os.read(p.stdout.fileno(), 100) == b"ping\n"


def test_freeze_and_thaw(cg, spawn, hierarchy):
    cg.create()
    child = CgroupV2Manager(f"{cg.path.name}/child", hierarchy)
    child.create()
    p = spawn("cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    child.add_process(p.pid)
    assert answers(p, WAIT)

    cg.freeze()
    assert cg.frozen()
    assert "frozen 1" in (cg.path / "cgroup.events").read_text()
    assert child.frozen()  # a frozen parent freezes its subtree
    assert not answers(p, 0.5)  # a frozen task cannot run to echo the line

    cg.thaw()
    assert not cg.frozen()
    assert not child.frozen()
    ready, _, _ = select.select([p.stdout], [], [], WAIT)  # the pending ping now arrives
    assert ready
    assert os.read(p.stdout.fileno(), 100) == b"ping\n"


def test_destroy_a_frozen_cgroup(cg, spawn):
    cg.create()
    p = spawn("sleep", "600")
    cg.add_process(p.pid)
    cg.freeze()
    cg.destroy()
    assert p.wait(timeout=WAIT) == -signal.SIGKILL
    assert not cg.exists()


# --- kill ------------------------------------------------------------------------------------


def sleepers_in(parent, spawn, hierarchy):
    """Create `parent` and a child cgroup below it: one sleep in the parent, two in the child."""
    parent.create()
    child = CgroupV2Manager(f"{os.path.relpath(parent.dir, parent.mount_dir)}/child", hierarchy)
    child.create()
    procs = [spawn("sleep", "600") for _ in range(3)]
    parent.add_process(procs[0].pid)
    for p in procs[1:]:
        child.add_process(p.pid)
    return child, procs


@pytest.mark.parametrize("how", ["cgroup.kill", "each pid"])
def test_kill_everything_below(cg, spawn, hierarchy, how):
    _child, procs = sleepers_in(cg, spawn, hierarchy)
    if how == "cgroup.kill":
        if not (cg.path / "cgroup.kill").exists():
            pytest.skip("kernel before 5.14: no cgroup.kill")
        cg.kill()
    else:
        cg.kill_each()
    for p in procs:
        assert p.wait(timeout=WAIT) == -signal.SIGKILL
    assert cg.exists()  # kill() kills, destroy() removes
    assert not cg.frozen()  # the fallback thaws what it froze
    assert (cg.path / "cgroup.freeze").read_text().strip() == "0"


def test_kill_fallback_never_leaves_a_cgroup_frozen(cg, spawn, hierarchy):
    """The kernel can keep a stale `frozen 1` in cgroup.events after the fallback's thaw
    (a few in a hundred on a loaded host); frozen(), thaw() and freeze() must see through it."""
    cg.create()
    for i in range(20):
        sub = CgroupV2Manager(f"{cg.path.name}/round{i}", hierarchy)
        child, procs = sleepers_in(sub, spawn, hierarchy)
        sub.kill_each()
        for p in procs:
            assert p.wait(timeout=WAIT) == -signal.SIGKILL
        assert not sub.frozen()
        assert not child.frozen()
        sub.thaw()  # returns at once, whatever cgroup.events says
        sub.freeze()
        assert sub.frozen()
        sub.thaw()
        assert not sub.frozen()
        sub.destroy()


def test_kill_of_an_empty_cgroup(cg):
    cg.create()
    cg.kill()
    cg.kill_each()
    assert cg.pids() == []


# --- stats -----------------------------------------------------------------------------------


def test_cpu_stat_counts_a_busy_child(cg, spawn):
    cg.create()
    busy = "read go; i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"
    p = spawn("sh", "-c", busy, stdin=subprocess.PIPE)
    cg.add_process(p.pid)
    p.stdin.write(b"go\n")
    p.stdin.close()
    assert p.wait(timeout=120) == 0
    cpu = cg.stats().cpu
    assert cpu is not None
    assert cpu.usage_usec > 0
    assert cpu.user_usec > 0
    assert cpu.usage_usec >= cpu.user_usec


def test_stats_of_missing_controllers_are_none(cg, hierarchy):
    cg.create()
    s = cg.stats()
    assert s.cpu is not None  # cpu.stat's usage lines exist without the cpu controller
    if "memory" not in hierarchy.controllers:
        assert s.memory is None
    if "pids" not in hierarchy.controllers:
        assert s.pids is None
    if "io" not in hierarchy.controllers:
        assert s.io is None
    if (cg.path / "cpu.pressure").exists():
        assert s.cpu_pressure is not None
        assert s.cpu_pressure.some.total >= 0


# --- limits this hierarchy cannot give ------------------------------------------------------

LIMITS = [
    ("memory", Resources(memory=Memory(limit=64 << 20))),
    ("memory", Resources(unified={"memory.high": "64M"})),
    ("pids", Resources(pids=Pids(16))),
    ("cpu", Resources(cpu=Cpu(quota=10000, period=100000))),
    ("cpu", Resources(cpu=Cpu(shares=512))),
    ("cpuset", Resources(cpu=Cpu(cpus="0"))),
    ("io", Resources(block_io=BlockIO(throttle_read_bps_device=(ThrottleDevice(8, 0, 1),)))),
]


@pytest.mark.parametrize(("controller", "resources"), LIMITS)
def test_unavailable_limit_is_refused_before_any_write(cg, hierarchy, controller, resources):
    if controller in hierarchy.controllers:
        pytest.skip(f"{controller} is available here: enforced in the VM tier")
    cg.create()
    files_before = snapshot(cg.path)
    root_before = (hierarchy.mount_point / "cgroup.subtree_control").read_text()

    # Mixed with a limit this host *can* apply: that one must not be written either.
    mixed = Resources(
        cpu=resources.cpu,
        memory=resources.memory,
        pids=resources.pids,
        block_io=resources.block_io,
        unified={**resources.unified, "cgroup.max.descendants": "7"},
    )
    with pytest.raises(ControllerUnavailable) as err:
        cg.apply(mixed)
    assert err.value.controller == controller
    assert err.value.path == cg.path
    assert str(hierarchy.mount_point / "cgroup.controllers") in err.value.reason
    if controller in hierarchy.v1_controllers:
        assert "cgroup v1" in err.value.reason
    assert snapshot(cg.path) == files_before
    assert (hierarchy.mount_point / "cgroup.subtree_control").read_text() == root_before


@pytest.mark.parametrize(("controller", "resources"), LIMITS[:3])
def test_create_with_an_unavailable_limit_leaves_nothing(hierarchy, controller, resources):
    if controller in hierarchy.controllers:
        pytest.skip(f"{controller} is available here: enforced in the VM tier")
    m = CgroupV2Manager(f"{scratch_name()}/ctr", hierarchy)
    with pytest.raises(ControllerUnavailable) as err:
        m.create(resources)
    assert err.value.controller == controller
    assert not m.path.parent.exists()


def test_oom_watcher_needs_the_memory_controller(cg, hierarchy):
    if "memory" in hierarchy.controllers:
        pytest.skip("memory is available here: the VM tier watches real OOM kills")
    cg.create()
    with OOMWatcher() as w, pytest.raises(ControllerUnavailable):
        w.add(cg.path)


# --- what a hybrid host can apply -------------------------------------------------------------


def test_unified_core_files_apply_without_controllers(cg):
    """cgroup.max.* belong to no controller: the unified map can set them anywhere."""
    cg.create()
    cg.apply(Resources(unified={"cgroup.max.descendants": "3", "cgroup.max.depth": "2"}))
    assert (cg.path / "cgroup.max.descendants").read_text() == "3\n"
    assert (cg.path / "cgroup.max.depth").read_text() == "2\n"

    with pytest.raises(ResourceError) as err:
        cg.apply(Resources(unified={"cgroup.max.depth": "5", "cgroup.nosuchfile": "1"}))
    assert err.value.field == "linux.resources.unified.cgroup.nosuchfile"
    assert (cg.path / "cgroup.max.depth").read_text() == "2\n"  # nothing half-applied


def test_empty_and_ignored_resources_apply_anywhere(cg):
    cg.create(Resources())
    cg.apply(Resources(cpu=Cpu(realtime_runtime=1000), memory=Memory(swappiness=10)))
    cg.apply(Resources.from_oci({"devices": [{"allow": False, "access": "rwm"}]}))
