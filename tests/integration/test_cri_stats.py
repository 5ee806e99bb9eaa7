"""Stats and metrics through gRPC against a real `pinnace cri`: the numbers follow what the
tests make the containers do (burn CPU, write bytes, send packets over loopback).

On this host the unified hierarchy has no memory or pids controller: memory fields stay
unset here (tests/vm/test_cri_stats_vm.py checks them where the controllers exist)."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from cgroups.discovery import discover
from cri.api import api_pb2
from tests.fixtures.cri import CRIServer

pytestmark = pytest.mark.root

MB = 1 << 20


def _run(
    srv: CRIServer, command: list[str], *, labels: dict[str, str] | None = None
) -> tuple[str, str]:
    sid, pod = srv.run_pod()
    cid = srv.create(sid, pod, srv.container_config("c", command, labels=labels or {}))
    srv.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    return sid, cid


def _stats(srv: CRIServer, cid: str) -> api_pb2.ContainerStats:
    resp = srv.rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid))
    stats: api_pb2.ContainerStats = resp.stats
    return stats


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen in {timeout}s")
        time.sleep(0.1)


def test_cpu_usage_grows_and_nano_cores_over_two_samples(cri_server: CRIServer):
    _sid, cid = _run(cri_server, ["sh", "-c", "while :; do :; done"])
    first = _stats(cri_server, cid)
    assert first.attributes.id == cid and first.attributes.metadata.name == "c"
    assert first.cpu.HasField("usage_core_nano_seconds")
    time.sleep(0.5)  # a window for the rate; the assertion does not depend on its length
    second = _stats(cri_server, cid)
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    assert second.cpu.timestamp > first.cpu.timestamp
    assert second.cpu.usage_nano_cores.value > 0
    assert second.cpu.usage_nano_cores.value <= (os.cpu_count() or 1) * 1_100_000_000
    # where the unified hierarchy has no memory controller the memory fields stay unset
    point = discover().mount_point
    assert point is not None
    if "memory" not in (point / "cgroup.controllers").read_text().split():
        assert not second.memory.HasField("working_set_bytes")
    else:
        assert second.memory.working_set_bytes.value > 0


def test_writable_layer_counts_bytes_written_to_the_root_fs(cri_server: CRIServer):
    _sid, cid = _run(
        cri_server, ["sh", "-c", "dd if=/dev/zero of=/blob bs=1M count=5 && touch /done; sleep 600"]
    )

    def done() -> bool:
        req = api_pb2.ExecSyncRequest(container_id=cid, cmd=["test", "-f", "/done"], timeout=10)
        return bool(cri_server.rt.ExecSync(req).exit_code == 0)

    _wait_for("dd writing 5 MB", done)
    w = _stats(cri_server, cid).writable_layer
    assert w.used_bytes.value >= 5 * MB
    assert w.inodes_used.value >= 3  # the upper dir, /blob, /done
    assert w.fs_id.mountpoint.endswith("snapshots") and w.timestamp > 0


def test_list_container_stats_filters(cri_server: CRIServer):
    _sid_a, a = _run(cri_server, ["sleep", "600"], labels={"app": "a"})
    sid_b, b = _run(cri_server, ["sleep", "600"], labels={"app": "b"})
    rt = cri_server.rt

    def ids(**kw: Any) -> set[str]:
        req = api_pb2.ListContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(**kw))
        return {s.attributes.id for s in rt.ListContainerStats(req).stats}

    everything = {
        s.attributes.id for s in rt.ListContainerStats(api_pb2.ListContainerStatsRequest()).stats
    }
    assert everything == {a, b}
    assert ids(id=a) == {a}
    assert ids(id=a[:12]) == {a}
    assert ids(pod_sandbox_id=sid_b) == {b}
    assert ids(label_selector={"app": "a"}) == {a}
    assert ids(label_selector={"app": "c"}) == set()
    assert ids(id=a, pod_sandbox_id=sid_b) == set()
    with pytest.raises(grpc.RpcError) as err:
        _stats(cri_server, "f" * 64)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_pod_stats_have_containers_processes_and_loopback_traffic(cri_server: CRIServer):
    sid, cid = _run(cri_server, ["sleep", "600"])
    rt = cri_server.rt

    def pod_stats() -> api_pb2.PodSandboxStats:
        resp = rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sid))
        stats: api_pb2.PodSandboxStats = resp.stats
        return stats

    def lo(p: api_pb2.PodSandboxStats) -> api_pb2.NetworkInterfaceUsage:
        found: list[api_pb2.NetworkInterfaceUsage] = [
            i for i in p.linux.network.interfaces if i.name == "lo"
        ]
        assert len(found) == 1, p.linux.network
        return found[0]

    first = pod_stats()
    assert first.attributes.id == sid
    assert [c.attributes.id for c in first.linux.containers] == [cid]
    assert first.linux.process.process_count.value >= 1
    assert first.linux.cpu.HasField("usage_core_nano_seconds")
    # network "none": the pod has only loopback, so no default interface
    assert not first.linux.network.HasField("default_interface")
    before = lo(first)
    # connection attempts to closed ports: SYN and RST cross lo inside the pod's netns
    cmd = ["sh", "-c", "for p in 1 2 3 4 5; do nc 127.0.0.1 $p </dev/null; done; true"]
    rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=30))
    after = lo(pod_stats())
    assert after.rx_bytes.value > before.rx_bytes.value
    assert after.tx_bytes.value > before.tx_bytes.value
    # the list form with a filter
    listed = rt.ListPodSandboxStats(
        api_pb2.ListPodSandboxStatsRequest(filter=api_pb2.PodSandboxStatsFilter(id=sid))
    ).stats
    assert [p.attributes.id for p in listed] == [sid]
    other = rt.ListPodSandboxStats(
        api_pb2.ListPodSandboxStatsRequest(
            filter=api_pb2.PodSandboxStatsFilter(label_selector={"no": "such"})
        )
    ).stats
    assert list(other) == []


def test_metrics_rpcs_describe_and_report(cri_server: CRIServer):
    sid, cid = _run(cri_server, ["sleep", "600"])
    rt = cri_server.rt
    descs = {
        d.name: d
        for d in rt.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest()).descriptors
    }
    for name in (
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_usage_bytes",
        "container_spec_memory_limit_bytes",
        "container_fs_usage_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_processes",
    ):
        assert name in descs and descs[name].help and "pod" in descs[name].label_keys
    pods = rt.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest()).pod_metrics
    (pm,) = [p for p in pods if p.pod_sandbox_id == sid]
    (cm,) = pm.container_metrics
    assert cm.container_id == cid
    by_name = {m.name: m for m in cm.metrics}
    for name in ("container_cpu_usage_seconds_total", "container_fs_usage_bytes"):
        m = by_name[name]
        assert len(m.label_values) == len(descs[name].label_keys)
        assert dict(zip(descs[name].label_keys, m.label_values, strict=True))["id"] == cid
    assert by_name["container_cpu_usage_seconds_total"].metric_type == api_pb2.COUNTER
    assert by_name["container_fs_usage_bytes"].value.value > 0
    assert by_name["container_processes"].value.value >= 1
    rx = [m for m in pm.metrics if m.name == "container_network_receive_bytes_total"]
    keys = descs["container_network_receive_bytes_total"].label_keys
    assert [dict(zip(keys, m.label_values, strict=True))["interface"] for m in rx] == ["lo"]
    streamed = list(rt.StreamPodSandboxMetrics(api_pb2.StreamPodSandboxMetricsRequest()))
    assert len(streamed) == 1
    assert sid in {p.pod_sandbox_id for p in streamed[0].pod_sandbox_metrics}


def _scrape(srv: CRIServer) -> str:
    addr = (srv.base / "run" / "metrics.addr").read_text().strip()
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        text: str = r.read().decode()
    return text


def test_prometheus_endpoint_shows_rpcs_and_containers(cri_server: CRIServer):
    _sid, _cid = _run(cri_server, ["sleep", "600"])
    rt = cri_server.rt
    rt.Version(api_pb2.VersionRequest())
    with pytest.raises(grpc.RpcError):
        rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="f" * 64))
    with pytest.raises(grpc.RpcError):
        cri_server.img.PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image="127.0.0.1:1/no/such:1"))
        )
    text = _scrape(cri_server)
    lines = text.splitlines()

    def value(prefix: str) -> float:
        (line,) = [ln for ln in lines if ln.startswith(prefix + " ")]
        return float(line.rsplit(" ", 1)[1])

    assert value('pinnace_cri_rpc_duration_seconds_count{code="OK",method="Version"}') >= 1
    assert value('pinnace_cri_rpc_duration_seconds_count{code="OK",method="StartContainer"}') == 1
    assert (
        value('pinnace_cri_rpc_duration_seconds_count{code="NOT_FOUND",method="ContainerStatus"}')
        == 1
    )
    assert value('pinnace_cri_containers{state="running"}') == 1
    assert value('pinnace_cri_image_pulls_total{result="failure"}') == 1
    assert value("pinnace_cri_oom_kills_total") == 0


@pytest.mark.cri_settings(metrics_address="")
def test_metrics_endpoint_can_be_disabled(cri_server: CRIServer):
    cri_server.rt.Version(api_pb2.VersionRequest())
    assert not (cri_server.base / "run" / "metrics.addr").exists()
