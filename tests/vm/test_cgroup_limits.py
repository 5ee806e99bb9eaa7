"""Each limit the manager writes is enforced by the kernel (pure cgroup v2 guest).

Few and small: the guest runs under qemu TCG, where Python is ~12x and fork
~35x slower than on the host. Waits poll a kernel counter up to a generous
deadline; nothing asserts on elapsed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

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

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("require_root")]

WAIT = 120  # seconds; generous for TCG, never reached when things work


@pytest.fixture
def cg(spawn):
    m = CgroupV2Manager(f"pinnace-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    yield m
    m.destroy(timeout=WAIT)
    assert not m.exists()


def gated(spawn, cg, *argv: str, **kw):
    """Start a child that waits for a line on stdin, move it into `cg`, then let it go."""
    p = spawn(*argv, stdin=subprocess.PIPE, **kw)
    cg.add_process(p.pid)
    p.stdin.write(b"go\n")
    p.stdin.close()
    p.stdin = None  # so communicate() does not flush it
    return p


def limited(cg, resources: Resources) -> None:
    cg.create(resources)
    cg.apply(resources)


def test_memory_max_oom_kills_and_is_counted(cg, spawn):
    # swap == limit: no swap at all, so the 32 MiB limit is hard
    limited(cg, Resources(memory=Memory(limit=32 << 20, swap=32 << 20)))
    assert (cg.path / "memory.max").read_text() == f"{32 << 20}\n"
    with OOMWatcher() as watcher:
        watcher.add(cg.path)
        hog = gated(
            spawn,
            cg,
            sys.executable,
            "-c",
            "import sys; sys.stdin.readline(); b = bytearray(b'x') * (256 << 20)",
        )
        assert hog.wait(timeout=WAIT) == -signal.SIGKILL
        events = watcher.wait(WAIT)
    assert [e.cgroup for e in events] == [cg.path]
    assert events[0].new_kills >= 1
    counted = cg.stats().memory.events
    assert counted.oom_kill >= 1
    assert counted.oom_kill == events[0].events.oom_kill


def test_pids_max_stops_a_fork_bomb(cg, spawn):
    limited(cg, Resources(pids=Pids(8)))
    assert (cg.path / "pids.max").read_text() == "8\n"
    # Bounded: at most 40 forks, and the shell gives up at the first failed one.
    # The sleeps must not hold the shell's stdout/stderr pipes open.
    bomb = (
        "read go; n=0; while [ $n -lt 40 ]; do sleep 600 >/dev/null 2>&1 & n=$((n+1)); done;"
        " echo all $n"
    )
    p = gated(spawn, cg, "sh", "-c", bomb, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=WAIT)
    assert b"all 40" not in out, err
    pids = cg.stats().pids
    assert pids.limit == 8
    assert pids.limit_hits >= 1  # pids.events: forks refused at the limit
    assert pids.current <= 8
    assert len(cg.pids()) <= 8


def test_cpu_max_throttles_a_busy_loop(cg, spawn):
    limited(cg, Resources(cpu=Cpu(quota=10000, period=100000)))
    assert (cg.path / "cpu.max").read_text() == "10000 100000\n"
    gated(spawn, cg, "sh", "-c", "read go; while :; do :; done")
    deadline = time.monotonic() + WAIT
    cpu = cg.stats().cpu
    # throttled_usec is added when a throttled period ends, so wait for that too
    while (cpu.nr_throttled == 0 or cpu.throttled_usec == 0) and time.monotonic() < deadline:
        time.sleep(0.2)
        cpu = cg.stats().cpu
    assert cpu.nr_periods > 0
    assert cpu.nr_throttled > 0
    assert cpu.throttled_usec > 0


def virtio_disk() -> tuple[int, int]:
    """major:minor of the guest's virtio disk, from /sys/block/*/dev."""
    for disk in sorted(Path("/sys/block").iterdir()):
        if disk.name.startswith("vd"):
            major, minor = (disk / "dev").read_text().strip().split(":")
            return int(major), int(minor)
    pytest.fail(f"no virtio disk in /sys/block: {os.listdir('/sys/block')}")


def io_max_line(cg: CgroupV2Manager, major: int, minor: int) -> str | None:
    for line in (cg.path / "io.max").read_text().splitlines():
        if line.startswith(f"{major}:{minor} "):
            return line
    return None


def test_io_max_written_and_read_back(cg):
    major, minor = virtio_disk()
    limited(
        cg,
        Resources(
            block_io=BlockIO(
                throttle_read_bps_device=(ThrottleDevice(major, minor, 1 << 20),),
                throttle_write_iops_device=(ThrottleDevice(major, minor, 100),),
            )
        ),
    )
    assert (
        io_max_line(cg, major, minor)
        == f"{major}:{minor} rbps=1048576 wbps=max riops=max wiops=100"
    )
    # rate 0 is OCI's "no limit": written as max, and a device with no limit left disappears
    cg.apply(
        Resources(
            block_io=BlockIO(
                throttle_read_bps_device=(ThrottleDevice(major, minor, 0),),
                throttle_write_iops_device=(ThrottleDevice(major, minor, 0),),
            )
        )
    )
    assert io_max_line(cg, major, minor) is None
    assert cg.stats().io is not None


def test_other_files_from_an_oci_config_read_back(cg):
    """cpu.weight, cpuset, memory.low/high/swap, io.weight, hugetlb and `unified`, in one apply."""
    doc = {
        "cpu": {"shares": 2048, "cpus": "0", "mems": "0"},
        "memory": {"limit": 64 << 20, "reservation": 16 << 20, "swap": 96 << 20},
        "pids": {"limit": -1},
        "blockIO": {"weight": 500},
        "unified": {"memory.high": str(48 << 20), "memory.oom.group": "1"},
    }
    sizes = sorted(
        p.name.removeprefix("hugepages-").removesuffix("kB")
        for p in Path("/sys/kernel/mm/hugepages").glob("hugepages-*kB")
    )
    if sizes:
        kb = int(sizes[0])
        size = f"{kb // 1024}MB" if kb % (1024 * 1024) else f"{kb // (1024 * 1024)}GB"
        doc["hugepageLimits"] = [{"pageSize": size, "limit": 0}]
    r = Resources.from_oci(doc)
    limited(cg, r)

    def read(name: str):
        return (cg.path / name).read_text().strip()

    assert read("cpu.weight") == "174"
    assert read("cpuset.cpus") == "0"
    assert read("cpuset.mems") == "0"
    assert read("memory.max") == str(64 << 20)
    assert read("memory.low") == str(16 << 20)
    assert read("memory.high") == str(48 << 20)
    assert read("memory.oom.group") == "1"
    assert read("pids.max") == "max"
    if (cg.path / "memory.swap.max").exists():
        assert read("memory.swap.max") == str(32 << 20)
    if (cg.path / "io.weight").exists():
        assert read("io.weight").splitlines()[0] == "default 4950"
    if sizes:
        assert read(f"hugetlb.{size}.max") == "0"
    s = cg.stats()
    assert s.memory.limit == 64 << 20
    assert s.pids.limit is None
