"""The CRI RuntimeService through gRPC against a real `pinnace cri` process: the calls kubelet
makes, in the order it makes them, with real namespaces, mounts, cgroups and containers."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2
from tests.fixtures.cri import IMAGE_USER, CRIServer, read_log

pytestmark = pytest.mark.root


def code_of(call, *args, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kw)
    return err.value.code()


# -- connecting -------------------------------------------------------------------------


def test_version_status_runtime_config_and_socket_mode(cri_server: CRIServer):
    v = cri_server.rt.Version(api_pb2.VersionRequest(version="0.1.0"))
    assert v.runtime_name == "pinnace" and v.runtime_api_version == "v1"
    assert v.runtime_version
    st = cri_server.rt.Status(api_pb2.StatusRequest())
    cond = {c.type: c for c in st.status.conditions}
    assert cond["RuntimeReady"].status is True
    assert cond["NetworkReady"].status is False and cond["NetworkReady"].reason
    handlers = {h.name: h for h in st.runtime_handlers}
    assert "" in handlers
    assert handlers[""].features.user_namespaces is False
    rc = cri_server.rt.RuntimeConfig(api_pb2.RuntimeConfigRequest())
    assert rc.linux.cgroup_driver == api_pb2.CGROUPFS
    mode = os.stat(cri_server.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    fs = cri_server.img.ImageFsInfo(api_pb2.ImageFsInfoRequest())
    assert fs.image_filesystems and fs.image_filesystems[0].used_bytes.value > 0


def test_unimplemented_rpcs_say_why(cri_server: CRIServer):
    with pytest.raises(grpc.RpcError) as err:
        cri_server.rt.CheckpointContainer(api_pb2.CheckpointContainerRequest(container_id="x"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CRIU" in err.value.details()


# -- sandboxes -------------------------------------------------------------------------


def test_sandbox_lifecycle_is_idempotent(cri_server: CRIServer):
    sid, cfg = cri_server.run_pod(labels={"app": "web"})
    st = cri_server.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid))
    assert st.status.state == api_pb2.SANDBOX_READY
    assert st.status.metadata.name == cfg.metadata.name
    listed = cri_server.rt.ListPodSandbox(
        api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(label_selector={"app": "web"})
        )
    ).items
    assert [s.id for s in listed] == [sid]
    none = cri_server.rt.ListPodSandbox(
        api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(label_selector={"app": "db"}))
    ).items
    assert list(none) == []
    # a second sandbox of the same name is refused
    assert (
        code_of(cri_server.rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=cfg))
        == grpc.StatusCode.ALREADY_EXISTS
    )
    for _ in range(2):
        cri_server.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid))
    st = cri_server.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid))
    assert st.status.state == api_pb2.SANDBOX_NOTREADY
    for _ in range(2):
        cri_server.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert (
        code_of(cri_server.rt.PodSandboxStatus, api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid))
        == grpc.StatusCode.NOT_FOUND
    )
    assert not list((cri_server.base / "run" / "sandboxes").glob(f"{sid}*"))


def test_bad_sandbox_configs(cri_server: CRIServer):
    rt = cri_server.rt
    empty = api_pb2.RunPodSandboxRequest(config=api_pb2.PodSandboxConfig())
    assert code_of(rt.RunPodSandbox, empty) == grpc.StatusCode.INVALID_ARGUMENT
    cfg = cri_server.pod_config()
    cfg.linux.sysctls["kernel.panic"] = "1"  # not namespaced
    assert (
        code_of(rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=cfg))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert list(rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items) == []


# -- containers ------------------------------------------------------------------------


def test_container_runs_logs_and_exits(cri_server: CRIServer):
    sid, pod = cri_server.run_pod()
    cfg = cri_server.container_config(
        "c1",
        ["sh", "-c", "echo out-one; echo err-one >&2; printf partial; sleep 0.2; hostname; exit 3"],
        labels={"tier": "x"},
    )
    cid = cri_server.create(sid, pod, cfg)
    st = cri_server.status(cid)
    assert st.state == api_pb2.CONTAINER_CREATED
    assert st.image_ref.startswith("sha256:")
    cri_server.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    st = cri_server.wait_exited(cid)
    assert st.exit_code == 3 and st.reason == "Error"
    assert st.started_at >= st.created_at > 0 and st.finished_at >= st.started_at
    lines = read_log(st.log_path)
    assert ("stdout", "F", "out-one") in lines
    assert ("stderr", "F", "err-one") in lines
    assert ("stdout", "P", "partial") in lines
    assert ("stdout", "F", pod.metadata.name) in lines  # the pod's hostname
    listed = cri_server.rt.ListContainers(
        api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(
                state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_EXITED),
                label_selector={"tier": "x"},
            )
        )
    ).containers
    assert [c.id for c in listed] == [cid]
    # a stopped container cannot start again
    assert (
        code_of(cri_server.rt.StartContainer, api_pb2.StartContainerRequest(container_id=cid))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    for _ in range(2):
        cri_server.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    assert (
        code_of(cri_server.rt.ContainerStatus, api_pb2.ContainerStatusRequest(container_id=cid))
        == grpc.StatusCode.NOT_FOUND
    )
    assert Path(st.log_path).exists()  # kubelet owns the log file


def test_stop_with_timeout_then_kill(cri_server: CRIServer):
    sid, pod = cri_server.run_pod()
    # ignores SIGTERM: StopContainer must fall back to SIGKILL after the timeout
    cfg = cri_server.container_config(
        "stubborn", ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
    )
    cid = cri_server.create_started(sid, pod, cfg)
    assert cri_server.status(cid).state == api_pb2.CONTAINER_RUNNING
    cri_server.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1))
    st = cri_server.status(cid)
    assert st.state == api_pb2.CONTAINER_EXITED and st.exit_code == 137
    cri_server.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1))
    # a polite one exits on SIGTERM
    cfg = cri_server.container_config(
        "polite", ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]
    )
    cid2 = cri_server.create_started(sid, pod, cfg)
    time.sleep(0.3)  # let the shell install its trap
    cri_server.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid2, timeout=20))
    st = cri_server.status(cid2)
    assert st.exit_code == 0 and st.reason == "Completed"


def test_stop_sandbox_stops_its_containers_and_remove_leaves_nothing(cri_server: CRIServer):
    sid, pod = cri_server.run_pod()
    cids = []
    for n in ("a", "b"):
        cid = cri_server.create_started(sid, pod, cri_server.container_config(n, ["sleep", "1000"]))
        cids.append(cid)
    cri_server.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid))
    for cid in cids:
        assert cri_server.status(cid).state == api_pb2.CONTAINER_EXITED
    cri_server.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid))
    assert list(cri_server.rt.ListContainers(api_pb2.ListContainersRequest()).containers) == []
    base = cri_server.base
    runtime_root = base / "runtime"  # no container's directory; the seccomp cache stays
    assert not [p for p in runtime_root.iterdir() if p.name != "@seccomp"]
    assert not list((base / "run" / "containers").iterdir())
    with open("/proc/self/mountinfo") as f:
        assert str(base / "run") not in f.read()


def test_exec_sync(cri_server: CRIServer):
    sid, pod = cri_server.run_pod()
    cid = cri_server.create_started(sid, pod, cri_server.container_config("e", ["sleep", "1000"]))
    r = cri_server.rt.ExecSync(
        api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", "echo hi; echo no >&2; exit 4"], timeout=10
        )
    )
    assert (r.stdout, r.stderr, r.exit_code) == (b"hi\n", b"no\n", 4)
    with pytest.raises(grpc.RpcError) as err:
        cri_server.rt.ExecSync(
            api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "100"], timeout=1)
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (
        code_of(cri_server.rt.ExecSync, api_pb2.ExecSyncRequest(container_id=cid, cmd=[]))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(cri_server.rt.ExecSync, api_pb2.ExecSyncRequest(container_id="nope", cmd=["true"]))
        == grpc.StatusCode.NOT_FOUND
    )


def test_user_from_image_passwd(cri_server: CRIServer):
    sid, pod = cri_server.run_pod()
    cfg = cri_server.container_config("u", ["id", "-u"], image=IMAGE_USER)
    cid = cri_server.create(sid, pod, cfg)
    st = cri_server.status(cid)
    assert st.user.linux.uid == 1000
    cri_server.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    st = cri_server.wait_exited(cid)
    assert ("stdout", "F", "1000") in read_log(st.log_path)


def test_bad_container_requests(cri_server: CRIServer):
    rt = cri_server.rt
    sid, pod = cri_server.run_pod()
    no_image = cri_server.container_config("x", ["true"], image="docker.io/library/nope:1")
    assert code_of(cri_server.create, sid, pod, no_image) == grpc.StatusCode.NOT_FOUND
    assert (
        code_of(cri_server.create, "0" * 64, pod, cri_server.container_config("x", ["true"]))
        == grpc.StatusCode.NOT_FOUND
    )
    bad_cap = cri_server.container_config("x", ["true"])
    bad_cap.linux.security_context.capabilities.add_capabilities.append("CAP_NOPE")
    assert code_of(cri_server.create, sid, pod, bad_cap) == grpc.StatusCode.INVALID_ARGUMENT
    # like runc, the program is looked up after the mounts, when the container starts:
    # it exits 127 and says why in its log (containerd fails StartContainer instead)
    no_cmd = cri_server.container_config("nocmd", ["/does/not/exist"])
    bad = cri_server.create(sid, pod, no_cmd)
    rt.StartContainer(api_pb2.StartContainerRequest(container_id=bad))
    st = cri_server.wait_exited(bad)
    assert st.exit_code == 127 and st.reason == "Error"
    assert any("no such file" in line for _, _, line in read_log(st.log_path))
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=bad))
    ok = cri_server.create(sid, pod, cri_server.container_config("dup", ["sleep", "100"]))
    dup = cri_server.container_config("dup", ["sleep", "100"])
    assert code_of(cri_server.create, sid, pod, dup) == grpc.StatusCode.ALREADY_EXISTS
    assert (
        code_of(rt.StopContainer, api_pb2.StopContainerRequest(container_id="nope"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(rt.StopContainer, api_pb2.StopContainerRequest(container_id=ok, timeout=-1))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(rt.ReopenContainerLog, api_pb2.ReopenContainerLogRequest(container_id=ok))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    # failed creates left nothing: only the one good container exists
    ids = [c.id for c in rt.ListContainers(api_pb2.ListContainersRequest()).containers]
    assert ids == [ok]
    assert len(list((cri_server.base / "run" / "containers").iterdir())) == 1
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid))
    assert (
        code_of(cri_server.create, sid, pod, cri_server.container_config("late", ["true"]))
        == grpc.StatusCode.FAILED_PRECONDITION
    )


def test_reopen_container_log(cri_server: CRIServer):
    sid, pod = cri_server.run_pod()
    cfg = cri_server.container_config(
        "r", ["sh", "-c", "i=0; while :; do echo line$i; i=$((i+1)); sleep 0.05; done"]
    )
    cid = cri_server.create_started(sid, pod, cfg)
    log = cri_server.status(cid).log_path
    time.sleep(0.3)
    os.rename(log, log + ".1")
    cri_server.rt.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
    deadline = time.monotonic() + 10
    while not (os.path.exists(log) and os.path.getsize(log) > 0):
        assert time.monotonic() < deadline, "nothing written to the reopened log"
        time.sleep(0.05)
    assert read_log(log + ".1") and read_log(log)


def test_kill9_of_the_server_loses_nothing(cri_server: CRIServer):
    sid, pod = cri_server.run_pod()
    runner = cri_server.create(
        sid,
        pod,
        cri_server.container_config(
            "runner", ["sh", "-c", "while :; do echo tick; sleep 0.1; done"]
        ),
    )
    cri_server.rt.StartContainer(api_pb2.StartContainerRequest(container_id=runner))
    ender = cri_server.create(
        sid, pod, cri_server.container_config("ender", ["sh", "-c", "sleep 1; exit 7"])
    )
    cri_server.rt.StartContainer(api_pb2.StartContainerRequest(container_id=ender))
    created = cri_server.create(sid, pod, cri_server.container_config("waiting", ["true"]))
    before = {c: cri_server.status(c) for c in (runner, created)}
    sandbox_before = cri_server.rt.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid)
    ).status
    cri_server.kill9()
    log = before[runner].log_path
    size = os.path.getsize(log)
    time.sleep(1.5)  # meanwhile `ender` exits with nobody serving
    assert os.path.getsize(log) > size, "the log stopped when the server died"
    cri_server.start()
    after = cri_server.status(runner)
    assert after.state == api_pb2.CONTAINER_RUNNING
    assert after.started_at == before[runner].started_at and after.log_path == log
    st = cri_server.wait_exited(ender, timeout=10)
    assert st.exit_code == 7
    assert cri_server.status(created).state == api_pb2.CONTAINER_CREATED
    sandbox_after = cri_server.rt.PodSandboxStatus(
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid)
    ).status
    assert sandbox_after == sandbox_before
    cri_server.rt.StartContainer(api_pb2.StartContainerRequest(container_id=created))
    assert cri_server.wait_exited(created).exit_code == 0
    cri_server.rt.StopContainer(api_pb2.StopContainerRequest(container_id=runner, timeout=0))
    assert cri_server.status(runner).exit_code == 137


def test_container_events_stream(cri_server: CRIServer):
    stream = cri_server.rt.GetContainerEvents(api_pb2.GetEventsRequest())
    sid, pod = cri_server.run_pod()
    cid = cri_server.create_started(sid, pod, cri_server.container_config("ev", ["true"]))
    cri_server.wait_exited(cid)
    cri_server.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    kinds = []
    for ev in stream:
        assert ev.container_id == cid
        kinds.append(ev.container_event_type)
        if ev.container_event_type == api_pb2.CONTAINER_DELETED_EVENT:
            break
    stream.cancel()
    assert kinds == [
        api_pb2.CONTAINER_CREATED_EVENT,
        api_pb2.CONTAINER_STARTED_EVENT,
        api_pb2.CONTAINER_STOPPED_EVENT,
        api_pb2.CONTAINER_DELETED_EVENT,
    ]


def test_recovery_rolls_back_an_interrupted_create(cri_server: CRIServer):
    sid, _pod = cri_server.run_pod()
    cri_server.kill9()
    # what a server killed inside CreateContainer leaves: a record in "creating"
    d = cri_server.base / "state" / "containers" / ("f" * 64)
    d.mkdir(parents=True)
    (d / "container.json").write_text(
        json.dumps(
            {
                "id": "f" * 64,
                "sandbox_id": sid,
                "name": "half",
                "attempt": 0,
                "state": "creating",
                "created_at": 1,
                "dir": str(d),
                "run_dir": str(cri_server.base / "run" / "containers" / ("f" * 64)),
                "snapshot": "cri-" + "f" * 64,
            }
        )
    )
    cri_server.start()
    assert not d.exists()
    assert list(cri_server.rt.ListContainers(api_pb2.ListContainersRequest()).containers) == []


def test_events_reach_every_subscriber_in_order(cri_server: CRIServer):
    subs = [cri_server.rt.GetContainerEvents(api_pb2.GetEventsRequest()) for _ in range(3)]
    sid, pod = cri_server.run_pod()
    want = []
    for i in range(3):
        cid = cri_server.create_started(sid, pod, cri_server.container_config(f"ev{i}", ["true"]))
        cri_server.wait_exited(cid)
        want += [
            (cid, api_pb2.CONTAINER_CREATED_EVENT),
            (cid, api_pb2.CONTAINER_STARTED_EVENT),
            (cid, api_pb2.CONTAINER_STOPPED_EVENT),
        ]
    for sub in subs:  # each read only now: nothing was lost while they waited
        got = [(ev.container_id, ev.container_event_type) for _, ev in zip(want, sub, strict=False)]
        assert got == want
        sub.cancel()
