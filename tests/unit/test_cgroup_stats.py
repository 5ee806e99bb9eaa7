"""Parsing cgroup v2 statistics files, and reading a fake cgroup with files missing."""

from typing import Any

import pytest

from cgroups.errors import CgroupNotFound
from cgroups.stats import (
    CpuStats,
    IoDeviceStats,
    MemoryEvents,
    PressureLine,
    parse_cpu_stat,
    parse_flat_keyed,
    parse_io_stat,
    parse_limit,
    parse_memory_events,
    parse_pressure,
    read_stats,
)

CPU_STAT = """\
usage_usec 1234567
user_usec 1000000
system_usec 234567
core_sched.force_idle_usec 0
nr_periods 120
nr_throttled 37
throttled_usec 2900123
nr_bursts 0
burst_usec 0
"""
CPU_STAT_NO_CONTROLLER = "usage_usec 19\nuser_usec 19\nsystem_usec 0\nnice_usec 0\n"
MEMORY_EVENTS = "low 0\nhigh 3\nmax 17\noom 2\noom_kill 2\noom_group_kill 0\n"
IO_STAT = """\
254:0 rbytes=1593344 wbytes=0 rios=89 wios=0 dbytes=0 dios=0
8:16 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0 cost.vrate=100.00 cost.usage=9
"""
PRESSURE = """\
some avg10=1.50 avg60=0.25 avg300=0.00 total=123456
full avg10=0.00 avg60=0.00 avg300=0.00 total=789
"""


def test_cpu_stat_with_the_cpu_controller():
    s = parse_cpu_stat(CPU_STAT)
    assert s.usage_usec == 1234567
    assert s.user_usec == 1000000
    assert s.system_usec == 234567
    assert (s.nr_periods, s.nr_throttled, s.throttled_usec) == (120, 37, 2900123)
    assert s.nr_bursts == 0
    assert s.raw["core_sched.force_idle_usec"] == 0


def test_cpu_stat_without_the_cpu_controller():
    s = parse_cpu_stat(CPU_STAT_NO_CONTROLLER)
    assert s == CpuStats(19, 19, 0, raw=s.raw)
    assert s.nr_throttled is None


def test_memory_events():
    assert parse_memory_events(MEMORY_EVENTS) == MemoryEvents(0, 3, 17, 2, 2, 0)
    assert parse_memory_events("low 0\noom_kill 4\n") == MemoryEvents(oom_kill=4)  # older kernels


def test_flat_keyed_skips_junk():
    assert parse_flat_keyed("a 1\nb two\nc 3 4\n\nd 5\n") == {"a": 1, "d": 5}


def test_limits():
    assert parse_limit("max\n") is None
    assert parse_limit("1048576\n") == 1048576


def test_io_stat_per_device():
    devs = parse_io_stat(IO_STAT)
    assert devs[0] == IoDeviceStats(254, 0, 1593344, 0, 89, 0, 0, 0, raw=devs[0].raw)
    assert (devs[1].major, devs[1].minor, devs[1].wbytes, devs[1].wios) == (8, 16, 8192, 2)
    assert devs[1].raw["cost.usage"] == 9
    assert "cost.vrate" not in devs[1].raw  # not an integer
    assert parse_io_stat("") == ()


def test_pressure():
    p: Any = parse_pressure(PRESSURE)
    assert p.some == PressureLine(1.5, 0.25, 0.0, 123456)
    assert p.full == PressureLine(0.0, 0.0, 0.0, 789)
    only_some: Any = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert only_some.full is None
    assert parse_pressure("") is None


def test_read_stats_of_a_cgroup_without_resource_controllers(tmp_path):
    """What a hybrid host's unified hierarchy offers: cpu.stat usage and PSI, nothing else."""
    (tmp_path / "cpu.stat").write_text(CPU_STAT_NO_CONTROLLER)
    (tmp_path / "cpu.pressure").write_text(PRESSURE)
    s: Any = read_stats(tmp_path)
    assert s.cpu.usage_usec == 19
    assert s.cpu_pressure.some.total == 123456
    assert s.memory is None
    assert s.pids is None
    assert s.io is None
    assert s.memory_pressure is None


def test_read_stats_with_every_controller(tmp_path):
    files = {
        "cpu.stat": CPU_STAT,
        "memory.current": "8192\n",
        "memory.max": "max\n",
        "memory.peak": "16384\n",
        "memory.swap.current": "0\n",
        "memory.swap.max": "0\n",
        "memory.stat": "anon 4096\nfile 4096\n",
        "memory.events": MEMORY_EVENTS,
        "pids.current": "3\n",
        "pids.max": "10\n",
        "pids.events": "max 4\n",
        "io.stat": IO_STAT,
        "io.pressure": PRESSURE,
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    s: Any = read_stats(tmp_path)
    assert s.memory.current == 8192
    assert s.memory.limit is None
    assert s.memory.peak == 16384
    assert s.memory.swap_limit == 0
    assert s.memory.stat == {"anon": 4096, "file": 4096}
    assert s.memory.events.oom_kill == 2
    assert (s.pids.current, s.pids.limit, s.pids.limit_hits) == (3, 10, 4)
    assert [d.major for d in s.io] == [254, 8]
    assert s.io_pressure.full.total == 789


def test_read_stats_of_a_missing_cgroup(tmp_path):
    with pytest.raises(CgroupNotFound):
        read_stats(tmp_path / "gone")
