"""CRI resources on a pure cgroup v2 guest: LinuxContainerResources reach the container's
cgroup files at create, UpdateContainerResources changes them live, and a container over
its memory limit is OOM-killed and reported as kubelet expects (137, "OOMKilled")."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2
from tests.fixtures.cri import CRIServer

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("require_root")]

MiB = 1 << 20
# Guest Python under TCG is ~12x slower than the host: generous waits, short containers.
EXIT_TIMEOUT = 180


def cgroup_of(srv: CRIServer, cid: str) -> Path:
    """The container's cgroup directory, as the runtime recorded it at create."""
    state = json.loads((srv.base / "runtime" / cid / "state.json").read_text())
    path = Path(state["cgroup_dir"])
    assert path.is_dir(), state
    assert path.name == cid and srv.cgroup_parent.strip("/") in str(path), path
    return path


def read(cg: Path, name: str) -> str:
    return (cg / name).read_text().strip()


def resources(**kw: object) -> api_pb2.LinuxContainerResources:
    return api_pb2.LinuxContainerResources(**kw)  # type: ignore[arg-type]


def test_create_writes_the_limits_to_the_cgroup_and_status_reports_them(
    cri_server: CRIServer,
) -> None:
    sid, pod = cri_server.run_pod()
    cfg = cri_server.container_config(
        "limited",
        ["sleep", "600"],
        linux=api_pb2.LinuxContainerConfig(
            resources=resources(
                memory_limit_in_bytes=48 * MiB,
                cpu_quota=50000,
                cpu_period=100000,
                cpu_shares=512,
                unified={"pids.max": "64"},
            )
        ),
    )
    cid = cri_server.create(sid, pod, cfg)
    cg = cgroup_of(cri_server, cid)
    assert read(cg, "memory.max") == str(48 * MiB)
    assert read(cg, "memory.swap.max") == "0"  # no swap limit given: no swap, as containerd
    assert read(cg, "cpu.max") == "50000 100000"
    assert read(cg, "cpu.weight") == "59"  # 512 shares, the kubernetes#131216 curve
    assert read(cg, "pids.max") == "64"
    got = cri_server.status(cid).resources.linux
    assert got.memory_limit_in_bytes == 48 * MiB
    assert got.memory_swap_limit_in_bytes == 48 * MiB
    assert (got.cpu_quota, got.cpu_period, got.cpu_shares) == (50000, 100000, 512)
    assert dict(got.unified) == {"pids.max": "64"}


def test_update_changes_a_running_container_live_and_a_bad_update_nothing(
    cri_server: CRIServer,
) -> None:
    sid, pod = cri_server.run_pod()
    first = resources(
        memory_limit_in_bytes=48 * MiB, cpu_quota=50000, cpu_period=100000, cpu_shares=512
    )
    cfg = cri_server.container_config(
        "growing", ["sleep", "600"], linux=api_pb2.LinuxContainerConfig(resources=first)
    )
    cid = cri_server.create(sid, pod, cfg)
    cri_server.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    assert cri_server.status(cid).state == api_pb2.CONTAINER_RUNNING
    cg = cgroup_of(cri_server, cid)
    assert read(cg, "memory.max") == str(48 * MiB)

    # what kubelet sends on an in-place pod resize: the whole set, new values
    second = resources(
        memory_limit_in_bytes=96 * MiB, cpu_quota=150000, cpu_period=100000, cpu_shares=512
    )
    cri_server.rt.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(container_id=cid, linux=second)
    )
    assert read(cg, "memory.max") == str(96 * MiB)
    assert read(cg, "cpu.max") == "150000 100000"
    assert read(cg, "cpu.weight") == "59"
    got = cri_server.status(cid).resources.linux
    assert (got.memory_limit_in_bytes, got.cpu_quota) == (96 * MiB, 150000)

    # refused by the CRI layer (negative memory) and by the cgroup layer (a period below
    # the kernel's 1 ms, next to a valid memory change): neither changes anything
    for bad in (
        resources(memory_limit_in_bytes=-1, cpu_quota=50000, cpu_period=100000),
        resources(memory_limit_in_bytes=32 * MiB, cpu_quota=50000, cpu_period=500),
    ):
        with pytest.raises(grpc.RpcError) as err:
            cri_server.rt.UpdateContainerResources(
                api_pb2.UpdateContainerResourcesRequest(container_id=cid, linux=bad)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert read(cg, "memory.max") == str(96 * MiB)
        assert read(cg, "cpu.max") == "150000 100000"
        assert cri_server.status(cid).resources.linux == got
    assert cri_server.status(cid).state == api_pb2.CONTAINER_RUNNING


def test_a_container_over_its_memory_limit_is_oom_killed(cri_server: CRIServer) -> None:
    sid, pod = cri_server.run_pod()
    # tail keeps the one (newline-free) 64 MiB line in memory: past 20 MiB the kernel's
    # OOM killer SIGKILLs it and sh exits 128 + 9
    cfg = cri_server.container_config(
        "hog",
        ["sh", "-c", "head -c 64m /dev/zero | tail -n 1 > /dev/null"],
        linux=api_pb2.LinuxContainerConfig(resources=resources(memory_limit_in_bytes=20 * MiB)),
    )
    cid = cri_server.create(sid, pod, cfg)
    cg = cgroup_of(cri_server, cid)
    assert read(cg, "memory.max") == str(20 * MiB)
    cri_server.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    st = cri_server.wait_exited(cid, timeout=EXIT_TIMEOUT)
    assert (st.exit_code, st.reason) == (137, "OOMKilled"), st
