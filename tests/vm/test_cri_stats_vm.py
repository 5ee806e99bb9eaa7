"""Stats where cgroup v2 has every controller: memory (working set, RSS, the limit) and pids
follow what the container does. The host tier checks CPU, the writable layer and network."""

from __future__ import annotations

import time

import pytest

from cri.api import api_pb2
from tests.fixtures.cri import CRIServer

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("require_root")]

MiB = 1 << 20
WAIT = 180  # guest Python under TCG is ~12x slower than the host


def test_memory_and_pids_follow_the_container(cri_server: CRIServer) -> None:
    sid, pod = cri_server.run_pod()
    cfg = cri_server.container_config(
        "mem",
        # 40 MiB in a tmpfs file: shmem, charged to the container and resident (not
        # reclaimable without swap), counted in the working set; then two processes stay
        ["sh", "-c", "dd if=/dev/zero of=/dev/shm/x bs=1M count=40 && touch /ok; sleep 600"],
        linux=api_pb2.LinuxContainerConfig(
            resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=256 * MiB)
        ),
    )
    cid = cri_server.create(sid, pod, cfg)
    cri_server.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    deadline = time.monotonic() + WAIT
    while True:
        req = api_pb2.ExecSyncRequest(container_id=cid, cmd=["test", "-f", "/ok"], timeout=60)
        if cri_server.rt.ExecSync(req).exit_code == 0:
            break
        assert time.monotonic() < deadline, "dd did not finish"
        time.sleep(0.5)
    stats = cri_server.rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    mem = stats.memory
    assert mem.working_set_bytes.value >= 35 * MiB
    assert mem.usage_bytes.value >= mem.working_set_bytes.value
    assert mem.available_bytes.value == 256 * MiB - mem.working_set_bytes.value
    assert mem.HasField("rss_bytes") and mem.page_faults.value > 0
    assert stats.cpu.usage_core_nano_seconds.value > 0
    pod_stats = cri_server.rt.PodSandboxStats(
        api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sid)
    ).stats.linux
    assert pod_stats.process.process_count.value >= 1  # sleep (pids.current of the pod)
    assert pod_stats.memory.working_set_bytes.value >= 35 * MiB
    assert [c.attributes.id for c in pod_stats.containers] == [cid]
    metrics = cri_server.rt.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest())
    (pm,) = [p for p in metrics.pod_metrics if p.pod_sandbox_id == sid]
    values = {m.name: m.value.value for m in pm.container_metrics[0].metrics}
    assert values["container_memory_working_set_bytes"] >= 35 * MiB
    assert values["container_spec_memory_limit_bytes"] == 256 * MiB
    assert values["container_processes"] >= 1
