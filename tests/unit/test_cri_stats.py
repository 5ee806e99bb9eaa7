"""The pure parts of stats and metrics: rates over a window, working set, /proc/net/dev,
descriptors agreeing with the values, the server's own Prometheus metrics."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cgroups.stats import MemoryStats
from cri.api import api_pb2
from cri.metrics import (
    DESCRIPTORS,
    ServerMetrics,
    container_metrics,
    list_descriptors,
    parse_address,
    pod_network_metrics,
)
from cri.stats import (
    CpuSample,
    RateTracker,
    memory_usage,
    nano_cores,
    network_usage,
    parse_net_dev,
    working_set,
)

SEC = 1_000_000_000


def test_nano_cores_over_a_window():
    assert nano_cores(None, CpuSample(SEC, 5)) is None
    # half a core for two seconds
    assert nano_cores(CpuSample(SEC, 0), CpuSample(3 * SEC, SEC)) == SEC // 2
    # two cores busy
    assert nano_cores(CpuSample(0, 0), CpuSample(SEC, 2 * SEC)) == 2 * SEC
    assert nano_cores(CpuSample(SEC, 0), CpuSample(SEC, 10)) is None  # no window
    assert nano_cores(CpuSample(0, 100), CpuSample(SEC, 50)) is None  # counter went back


def test_rate_tracker_keeps_the_sample_across_calls_and_ignores_tiny_windows():
    r = RateTracker()
    assert r.rate("c:a", CpuSample(0, 0)) is None
    assert r.rate("c:a", CpuSample(SEC, SEC // 4)) == SEC // 4
    # 1 ms later: too short a window, the last rate is repeated and the sample kept
    assert r.rate("c:a", CpuSample(SEC + 1_000_000, SEC)) == SEC // 4
    assert r.rate("c:a", CpuSample(2 * SEC, SEC // 4 + SEC)) == SEC
    assert r.rate("c:b", CpuSample(2 * SEC, 0)) is None  # each key its own window
    r.keep_only(["c:b"], "c:")
    assert r.rate("c:a", CpuSample(3 * SEC, 0)) is None  # forgotten


def _mem(current: int, limit: int | None = None, **stat: int) -> MemoryStats:
    return MemoryStats(current=current, limit=limit, stat=stat, events=None)


def test_working_set_is_usage_minus_inactive_file_floored_at_zero():
    assert working_set(_mem(100 << 20, inactive_file=30 << 20)) == 70 << 20
    assert working_set(_mem(10, inactive_file=20)) == 0
    assert working_set(_mem(42)) == 42


def test_memory_usage_fields():
    m = memory_usage(_mem(100, 1000, inactive_file=40, anon=50, pgfault=7, pgmajfault=2), ts=5)
    assert m.timestamp == 5
    assert m.working_set_bytes.value == 60
    assert m.usage_bytes.value == 100
    assert m.available_bytes.value == 940
    assert m.rss_bytes.value == 50
    assert (m.page_faults.value, m.major_page_faults.value) == (7, 2)
    unlimited = memory_usage(_mem(100), ts=5)
    assert not unlimited.HasField("available_bytes")
    assert not unlimited.HasField("rss_bytes")


NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      10    0    0    0     0          0         0     1234      10    0    0    0     0       0          0
  eth0: 99000     300    3    0    0     0          0         0    55000     200    4    0    0     0       0          0
"""


def test_parse_net_dev_and_default_interface():
    ifaces = parse_net_dev(NET_DEV)
    assert [(i.name, i.rx_bytes, i.rx_errors, i.tx_bytes, i.tx_errors) for i in ifaces] == [
        ("lo", 1234, 0, 1234, 0),
        ("eth0", 99000, 3, 55000, 4),
    ]
    usage = network_usage(ifaces, ts=9)
    assert usage.default_interface.name == "eth0"
    assert usage.default_interface.rx_bytes.value == 99000
    assert [i.name for i in usage.interfaces] == ["lo", "eth0"]
    assert not network_usage(ifaces[:1], ts=9).HasField("default_interface")


def test_descriptors_agree_with_the_values():
    listed = {d.name: list(d.label_keys) for d in list_descriptors().descriptors}
    assert len(listed) == len(DESCRIPTORS)
    c = api_pb2.ContainerStats()
    c.attributes.id = "cid"
    c.attributes.metadata.name = "web"
    c.cpu.usage_core_nano_seconds.value = 3 * SEC + 999
    c.memory.working_set_bytes.value = 10
    c.memory.rss_bytes.value = 8
    c.memory.usage_bytes.value = 12
    c.memory.page_faults.value = 9
    c.memory.major_page_faults.value = 2
    c.writable_layer.used_bytes.value = 4096
    c.writable_layer.inodes_used.value = 3
    c.writable_layer.fs_id.mountpoint = "/var/lib/pinnace/snapshots"
    pod = api_pb2.PodSandboxAttributes(id="pid")
    pod.metadata.name, pod.metadata.namespace = "p", "ns"
    metrics = container_metrics(
        c, pod=pod, image="busybox", memory_limit=1 << 20, processes=2, ts=1
    )
    values: dict[tuple[str, ...], int] = {}
    for m in metrics:
        labels = dict(zip(listed[m.name], m.label_values, strict=True))
        assert labels["id"] == "cid" and labels["pod"] == "p" and labels["namespace"] == "ns"
        assert labels["container"] == "web" and labels["image"] == "busybox"
        values[(m.name, labels.get("failure_type", ""))] = m.value.value
    assert values[("container_cpu_usage_seconds_total", "")] == 3  # whole seconds
    assert values[("container_memory_working_set_bytes", "")] == 10
    assert values[("container_memory_failures_total", "pgfault")] == 7  # minor faults
    assert values[("container_memory_failures_total", "pgmajfault")] == 2
    assert values[("container_spec_memory_limit_bytes", "")] == 1 << 20
    assert values[("container_fs_usage_bytes", "")] == 4096
    assert values[("container_processes", "")] == 2
    # unset stats give no series rather than zeros
    assert (
        container_metrics(
            api_pb2.ContainerStats(), pod=pod, image="", memory_limit=None, processes=None, ts=1
        )
        == []
    )
    p = api_pb2.PodSandboxStats(attributes=pod)
    p.linux.network.interfaces.add(name="lo").rx_bytes.value = 77
    net = pod_network_metrics(p, ts=1)
    assert {m.name for m in net} == {
        "container_network_receive_bytes_total",
        "container_network_receive_errors_total",
        "container_network_transmit_bytes_total",
        "container_network_transmit_errors_total",
    }
    (rx,) = [m for m in net if m.name == "container_network_receive_bytes_total"]
    assert dict(zip(listed[rx.name], rx.label_values, strict=True))["interface"] == "lo"
    assert rx.value.value == 77 and rx.metric_type == api_pb2.COUNTER


def test_parse_address():
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:9100") == ("::1", 9100)
    for bad in ("localhost", ":80", "host:port"):
        with pytest.raises(ValueError):
            parse_address(bad)


def _sample(metrics: ServerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_server_metrics_count_rpcs_pulls_states_and_ooms_once(tmp_path: Path):
    recs = [
        SimpleNamespace(id="a", state="running"),
        SimpleNamespace(id="b", state="exited"),
        SimpleNamespace(id="c", state="creating"),
    ]
    containers = SimpleNamespace(dir=str(tmp_path), all=lambda: recs, on_event=None)
    seen: list[tuple[str, str]] = []
    containers.on_event = lambda cid, kind: seen.append((cid, kind))
    m = ServerMetrics(containers)
    m.watch(containers)
    m.observe_rpc("Version", "OK", 0.01)
    m.observe_rpc("PullImage", "OK", 1.0)
    m.observe_rpc("PullImage", "NOT_FOUND", 0.5)
    assert _sample(m, "pinnace_cri_rpc_duration_seconds_count", method="Version", code="OK") == 1
    assert _sample(m, "pinnace_cri_image_pulls_total", result="success") == 1
    assert _sample(m, "pinnace_cri_image_pulls_total", result="failure") == 1
    assert _sample(m, "pinnace_cri_containers", state="running") == 1
    assert _sample(m, "pinnace_cri_containers", state="exited") == 1
    assert _sample(m, "pinnace_cri_containers", state="unknown") == 1
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "exit.json").write_text(
        json.dumps({"exit_code": 137, "signal": 9, "finished_at": 1, "oom_killed": True})
    )
    containers.on_event("b", "stopped")
    containers.on_event("b", "stopped")  # seen again: counted once
    containers.on_event("a", "stopped")  # no exit record: not an OOM
    assert seen == [("b", "stopped"), ("b", "stopped"), ("a", "stopped")]
    assert _sample(m, "pinnace_cri_oom_kills_total") == 1
