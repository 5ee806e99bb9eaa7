"""What a container of a pod gets, checked from inside it, and a wrong call to each RPC.

Through gRPC against a real `pinnace cri`: pod namespaces shared or not, identity and
security context, mounts, a tty, images pulled from a registry, ExecSync's limits."""

from __future__ import annotations

import os
import re

import grpc
import pytest

from cri.api import api_pb2
from tests.fixtures.cri import CRIServer, read_log

pytestmark = pytest.mark.root


def run_to_exit(srv: CRIServer, sid: str, pod, cfg) -> tuple[api_pb2.ContainerStatus, str]:
    cid = srv.create_started(sid, pod, cfg)
    st = srv.wait_exited(cid)
    out = "\n".join(text for stream, _tag, text in read_log(st.log_path) if stream == "stdout")
    return st, out


def _pid_namespace(mode: api_pb2.NamespaceMode) -> api_pb2.LinuxPodSandboxConfig:
    return api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(
            namespace_options=api_pb2.NamespaceOption(pid=mode)
        )
    )


def test_pod_pid_namespace_is_shared_only_when_asked(cri_server: CRIServer):
    srv = cri_server
    # NamespaceMode POD for pid: containers see each other, and pid 1 is the pod's reaper
    sid, pod = srv.run_pod(linux=_pid_namespace(api_pb2.POD))
    srv.create_started(sid, pod, srv.container_config("sleeper", ["sleep", "1000"]))
    _st, out = run_to_exit(srv, sid, pod, srv.container_config("looker", ["ps", "-o", "pid,args"]))
    assert re.search(r"^\s*1\s", out, re.M), out
    assert "sleep 1000" in out
    # CONTAINER: its own pid namespace, where it is pid 1 and sees no sleeper
    sid2, pod2 = srv.run_pod(linux=_pid_namespace(api_pb2.CONTAINER))
    srv.create_started(sid2, pod2, srv.container_config("sleeper", ["sleep", "1000"]))
    _st, out = run_to_exit(
        srv, sid2, pod2, srv.container_config("looker", ["sh", "-c", "echo $$; ps -o args"])
    )
    assert out.splitlines()[0] == "1"
    assert "sleep 1000" not in out


def test_containers_of_a_pod_share_its_network_and_hostname(cri_server: CRIServer):
    srv = cri_server
    sid, pod = srv.run_pod()
    server = srv.container_config("srv", ["nc", "-l", "-p", "7070", "-e", "echo", "hello-from-a"])
    srv.create_started(sid, pod, server)
    client = srv.container_config(
        "cli",
        [
            "sh",
            "-c",
            "for i in $(seq 50); do nc 127.0.0.1 7070 && break; sleep 0.1; done; hostname",
        ],
    )
    _st, out = run_to_exit(srv, sid, pod, client)
    assert "hello-from-a" in out  # over the pod's loopback
    assert pod.metadata.name in out
    with open("/proc/net/tcp") as f:  # nothing of it on the host's network
        assert ":1BA6 " not in f.read()


def test_security_context_identity_and_readonly_root(cri_server: CRIServer):
    srv = cri_server
    sid, pod = srv.run_pod()
    cfg = srv.container_config(
        "sec",
        [
            "sh",
            "-c",
            "id -u; id -g; id -G; touch /x 2>&1 | grep -c 'Read-only'; "
            "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status",
        ],
    )
    sc = cfg.linux.security_context
    sc.run_as_user.value = 1234
    sc.run_as_group.value = 2345
    sc.supplemental_groups.extend([7, 8])
    sc.readonly_rootfs = True
    sc.no_new_privs = True
    sc.capabilities.drop_capabilities.append("ALL")
    st, out = run_to_exit(srv, sid, pod, cfg)
    assert st.exit_code == 0, out
    lines = out.splitlines()
    assert lines[:2] == ["1234", "2345"]
    assert set(lines[2].split()) == {"2345", "7", "8"}
    assert lines[3] == "1"
    assert lines[4].split() == ["CapEff:", "0000000000000000"]
    assert lines[5].split() == ["NoNewPrivs:", "1"]
    assert st.user.linux.uid == 1234


def test_mounts_readonly_and_propagation(cri_server: CRIServer, tmp_path):
    srv = cri_server
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from-host\n")
    sid, pod = srv.run_pod()
    cfg = srv.container_config(
        "m",
        [
            "sh",
            "-c",
            "cat /data/in.txt; echo new > /data/out.txt; echo rw=$?; echo x > /ro/y 2>/dev/null; echo ro=$?",
        ],
        mounts=[
            api_pb2.Mount(container_path="/data", host_path=str(data)),
            api_pb2.Mount(container_path="/ro", host_path=str(data), readonly=True),
        ],
    )
    st, out = run_to_exit(srv, sid, pod, cfg)
    assert out.splitlines() == ["from-host", "rw=0", "ro=1"]
    assert (data / "out.txt").read_text() == "new\n"
    assert not (data / "y").exists()
    assert [m.container_path for m in st.mounts] == ["/data", "/ro"]
    bad = srv.container_config(
        "bad", ["true"], mounts=[api_pb2.Mount(container_path="relative", host_path=str(data))]
    )
    with pytest.raises(grpc.RpcError) as err:
        srv.create(sid, pod, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_tty_container_logs_through_the_pty(cri_server: CRIServer):
    srv = cri_server
    sid, pod = srv.run_pod()
    cfg = srv.container_config("tty", ["sh", "-c", "tty; echo on-a-tty"], tty=True)
    st, out = run_to_exit(srv, sid, pod, cfg)
    assert st.exit_code == 0
    assert "/dev/pts/" in out or "/dev/console" in out, out
    assert "on-a-tty" in out


@pytest.mark.cri_settings(exec_output_limit=1000)
def test_exec_sync_output_is_capped(cri_server: CRIServer):
    srv = cri_server
    sid, pod = srv.run_pod()
    cid = srv.create_started(sid, pod, srv.container_config("e", ["sleep", "1000"]))
    r = srv.rt.ExecSync(
        api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", "head -c 5000 /dev/zero; id -u"], timeout=10
        )
    )
    assert r.exit_code == 0 and len(r.stdout) == 1000


def test_update_resources_on_a_host_without_controllers(cri_server: CRIServer, hierarchy_root):
    """Here the unified hierarchy has no cpu/memory controllers: asking for a limit must be
    a clear error naming the controller, not a silent success (the VM tier tests it works)."""
    if "memory" in (hierarchy_root / "cgroup.controllers").read_text().split():
        pytest.skip("this host has a v2 memory controller: the VM tier covers it")
    srv = cri_server
    sid, pod = srv.run_pod()
    cid = srv.create_started(sid, pod, srv.container_config("u", ["sleep", "1000"]))
    with pytest.raises(grpc.RpcError) as err:
        srv.rt.UpdateContainerResources(
            api_pb2.UpdateContainerResourcesRequest(
                container_id=cid,
                linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 << 20),
            )
        )
    assert err.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "memory" in err.value.details()
    assert srv.status(cid).resources.linux.memory_limit_in_bytes == 0


def test_a_pulled_image_runs(cri_server: CRIServer, registry, pushed_images):
    from images.builder import BUSYBOX

    srv = cri_server
    ref = f"{registry.host}/{pushed_images[BUSYBOX].repository}:latest"
    image_id = srv.img.PullImage(
        api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
    ).image_ref
    assert image_id.startswith("sha256:")
    sid, pod = srv.run_pod()
    st, out = run_to_exit(srv, sid, pod, srv.container_config("p", ["echo", "pulled"], image=ref))
    assert out == "pulled" and st.image_ref == image_id
    # an image in use cannot be removed; once the container is gone it can
    with pytest.raises(grpc.RpcError) as err:
        srv.img.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image_id)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    srv.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=st.id))
    srv.img.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image_id)))


def test_stream_variants_list_the_same(cri_server: CRIServer):
    srv = cri_server
    sid, pod = srv.run_pod()
    cid = srv.create(sid, pod, srv.container_config("s", ["true"]))
    [resp] = list(srv.rt.StreamContainers(api_pb2.StreamContainersRequest()))
    assert [c.id for c in resp.containers] == [cid]
    [resp2] = list(srv.rt.StreamPodSandboxes(api_pb2.StreamPodSandboxesRequest()))
    assert [s.id for s in resp2.pod_sandboxes] == [sid]
    [resp3] = list(srv.img.StreamImages(api_pb2.StreamImagesRequest()))
    assert len(resp3.images) == 2  # the two fixture images of the store


UNKNOWN = "f" * 64


@pytest.mark.parametrize(
    ("method", "request_", "code"),
    [
        ("ContainerStatus", api_pb2.ContainerStatusRequest(container_id=UNKNOWN), "NOT_FOUND"),
        ("ContainerStatus", api_pb2.ContainerStatusRequest(), "INVALID_ARGUMENT"),
        ("StartContainer", api_pb2.StartContainerRequest(container_id=UNKNOWN), "NOT_FOUND"),
        ("StopContainer", api_pb2.StopContainerRequest(container_id=UNKNOWN), "NOT_FOUND"),
        ("ExecSync", api_pb2.ExecSyncRequest(container_id=UNKNOWN, cmd=["true"]), "NOT_FOUND"),
        (
            "ExecSync",
            api_pb2.ExecSyncRequest(container_id=UNKNOWN, cmd=["true"], timeout=-1),
            "INVALID_ARGUMENT",
        ),
        (
            "ReopenContainerLog",
            api_pb2.ReopenContainerLogRequest(container_id=UNKNOWN),
            "NOT_FOUND",
        ),
        (
            "UpdateContainerResources",
            api_pb2.UpdateContainerResourcesRequest(
                container_id=UNKNOWN, linux=api_pb2.LinuxContainerResources()
            ),
            "NOT_FOUND",
        ),
        (
            "UpdateContainerResources",
            api_pb2.UpdateContainerResourcesRequest(container_id=UNKNOWN),
            "INVALID_ARGUMENT",
        ),
        ("PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=UNKNOWN), "NOT_FOUND"),
        ("RemoveContainer", api_pb2.RemoveContainerRequest(), "INVALID_ARGUMENT"),
        (
            "CreateContainer",
            api_pb2.CreateContainerRequest(pod_sandbox_id=UNKNOWN),
            "INVALID_ARGUMENT",
        ),
        (
            "RunPodSandbox",
            api_pb2.RunPodSandboxRequest(config=api_pb2.PodSandboxConfig()),
            "INVALID_ARGUMENT",
        ),
        (
            "RunPodSandbox",
            api_pb2.RunPodSandboxRequest(
                config=api_pb2.PodSandboxConfig(
                    metadata=api_pb2.PodSandboxMetadata(name="n", uid="u", namespace="d")
                ),
                runtime_handler="kata",
            ),
            "NOT_FOUND",
        ),
        ("Exec", api_pb2.ExecRequest(container_id=UNKNOWN, cmd=["sh"], stdout=True), "NOT_FOUND"),
        ("Attach", api_pb2.AttachRequest(container_id=UNKNOWN, stdout=True), "NOT_FOUND"),
        ("PortForward", api_pb2.PortForwardRequest(pod_sandbox_id=UNKNOWN, port=[80]), "NOT_FOUND"),
        ("UpdatePodSandboxResources", api_pb2.UpdatePodSandboxResourcesRequest(), "UNIMPLEMENTED"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_wrong_calls_get_the_right_status(cri_server: CRIServer, method, request_, code):
    with pytest.raises(grpc.RpcError) as err:
        getattr(cri_server.rt, method)(request_)
    assert err.value.code() == getattr(grpc.StatusCode, code), err.value.details()
    assert err.value.details()  # always a message


def test_idempotent_calls_on_unknown_ids_succeed(cri_server: CRIServer):
    rt = cri_server.rt
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=UNKNOWN))
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=UNKNOWN))
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=UNKNOWN))
    img = cri_server.img.ImageStatus(
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="nope:1"))
    )
    assert not img.HasField("image")
    assert os.path.exists(cri_server.socket)


def test_a_target_container_shares_its_pid_namespace(cri_server: CRIServer):
    """kubectl debug: an ephemeral container with pid mode TARGET sees its target's processes."""
    srv = cri_server
    sid, pod = srv.run_pod(linux=_pid_namespace(api_pb2.CONTAINER))
    target = srv.create_started(sid, pod, srv.container_config("app", ["sleep", "1000"]))
    cfg = srv.container_config("debug", ["ps", "-o", "args"])
    opts = cfg.linux.security_context.namespace_options
    opts.pid = api_pb2.TARGET
    opts.target_id = target
    _st, out = run_to_exit(srv, sid, pod, cfg)
    assert "sleep 1000" in out
    bad = srv.container_config("debug2", ["true"])
    bad.linux.security_context.namespace_options.pid = api_pb2.TARGET
    bad.linux.security_context.namespace_options.target_id = "f" * 64
    with pytest.raises(grpc.RpcError) as err:
        srv.create(sid, pod, bad)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
