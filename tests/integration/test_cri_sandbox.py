"""The pod sandbox manager against the real kernel: pinned namespaces, sysctls, rollback."""

import json
import os
import secrets
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from cri.api import api_pb2
from cri.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from cri.records import read_json, write_json_atomic
from cri.sandbox import SandboxManager
from namespaces.handles import Kind, Namespace, is_pinned, unpin
from runtime.state import proc_start_time
from tests.childproc import in_child

PORT_SYSCTL = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
SHMMNI = "/proc/sys/kernel/shmmni"


def pod_config(
    name="web",
    *,
    uid=None,
    attempt=0,
    network=api_pb2.POD,
    ipc=api_pb2.POD,
    pid=api_pb2.CONTAINER,
    hostname="pod-a",
    sysctls=None,
    dns=None,
    labels=None,
):
    cfg = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, uid=uid or f"uid-{name}", namespace="default", attempt=attempt
        ),
        hostname=hostname,
        labels=labels or {"app": name},
        annotations={"note": "test"},
    )
    opts = cfg.linux.security_context.namespace_options
    opts.network, opts.ipc, opts.pid = network, ipc, pid
    cfg.linux.sysctls.update(sysctls or {})
    if dns is not None:
        cfg.dns_config.CopyFrom(dns)
    return cfg


def _mounts_under(path: Path) -> list[str]:
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(path))
    ]


def _cgroup_root() -> Path:
    from cgroups.discovery import discover

    point = discover().mount_point
    assert point is not None
    return point


@pytest.fixture
def cgroup_top(require_root):
    """A test-only top cgroup name; whatever got created under it is removed at the end."""
    top = f"/pinnace-test-sbx-{secrets.token_hex(4)}"
    yield top
    from cgroups.manager import walk_cgroups

    for d in walk_cgroups(_cgroup_root() / top.lstrip("/")):
        os.rmdir(d)


@pytest.fixture
def make_manager(tmp_path, cgroup_top):
    """SandboxManagers on tmp_path; every sandbox left at the end is removed and checked."""
    made = []

    def make(pod_init=None):
        m = SandboxManager(
            str(tmp_path / "state"),
            str(tmp_path / "run"),
            default_cgroup_parent=f"{cgroup_top}/pods",
            pod_init=pod_init,
        )
        made.append(m)
        return m

    yield make
    for m in made:
        m.recover()  # picks up sandboxes other managers on the same dirs made
        for rec in m.list():
            m.remove(rec.id)
    assert _mounts_under(tmp_path) == []
    assert list((tmp_path / "run" / "sandboxes").iterdir()) == []


@pytest.fixture
def manager(make_manager):
    return make_manager()


def _pid_of_sleeper_in_new_pidns(net, ipc, uts):
    """A stand-in for the zygote's pod init: pid 1 of a new pid namespace, a sleep."""
    from namespaces import syscalls as sc

    r, w = os.pipe()
    mid = os.fork()
    if mid == 0:
        try:
            os.close(r)
            for kind, path in ((Kind.NET, net), (Kind.IPC, ipc), (Kind.UTS, uts)):
                if path:
                    Namespace.open(kind, path).enter()
            sc.libc().unshare(sc.CLONE_NEWPID)
            init = os.fork()
            if init == 0:
                os.close(w)
                os.execv("/usr/bin/sleep", ["sleep", "600"])
            os.write(w, str(init).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        pid = int(f.read())
    os.waitpid(mid, 0)
    start = proc_start_time(pid)
    assert start is not None
    return pid, start


class PodInitStub:
    """The pod-init callable; remembers every (pid, start) it made so all get killed."""

    def __init__(self):
        self.made = []

    def __call__(self, net, ipc, uts):
        pid, start = _pid_of_sleeper_in_new_pidns(net, ipc, uts)
        self.made.append((pid, start))
        return pid, start


@pytest.fixture
def pod_init():
    stub = PodInitStub()
    yield stub
    for pid, start in stub.made:
        if proc_start_time(pid) == start:
            os.kill(pid, signal.SIGKILL)


def _read(path):
    return Path(path).read_text().strip()


def _inside(rec_paths, fn):
    """Run fn in a child that entered the given (kind, pin) namespaces."""

    def body():
        for kind, path in rec_paths:
            Namespace.open(kind, path).enter()
        return fn()

    return in_child(body)


def test_run_creates_pinned_namespaces_with_hostname_loopback_and_sysctls(manager):
    host_port, host_shmmni = _read(PORT_SYSCTL), _read(SHMMNI)
    rec = manager.run(
        pod_config(sysctls={"net.ipv4.ip_unprivileged_port_start": "80", "kernel/shmmni": "1000"})
    )
    assert rec.state == "ready"
    assert len(rec.id) == 64 and int(rec.id, 16) >= 0
    for kind, path in ((Kind.NET, rec.netns), (Kind.IPC, rec.ipcns), (Kind.UTS, rec.utsns)):
        assert Path(path).parent == Path(rec.dir)
        assert is_pinned(Path(path))
        with Namespace.open(kind, path) as pod, Namespace.of_process(kind) as host:
            assert not pod.same_as(host), kind

    assert _inside([(Kind.UTS, rec.utsns)], lambda: os.uname().nodename) == "pod-a"
    assert os.uname().nodename != "pod-a"
    assert _inside([(Kind.NET, rec.netns)], lambda: _read(PORT_SYSCTL)) == "80"
    assert _inside([(Kind.IPC, rec.ipcns)], lambda: _read(SHMMNI)) == "1000"
    assert (_read(PORT_SYSCTL), _read(SHMMNI)) == (host_port, host_shmmni)

    link = subprocess.run(
        ["nsenter", f"--net={rec.netns}", "ip", "-o", "link", "show", "lo"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert ",UP" in link and "LOWER_UP" in link, link
    links = subprocess.run(
        ["nsenter", f"--net={rec.netns}", "ip", "-o", "link"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert len(links) == 1  # loopback only

    ctx = manager.context(rec.id)
    assert (ctx.netns, ctx.ipcns, ctx.utsns) == (rec.netns, rec.ipcns, rec.utsns)
    assert ctx.pidns == "" and not ctx.host_pid
    assert ctx.hostname == "pod-a"
    assert ctx.sysctls == {"net.ipv4.ip_unprivileged_port_start": "80", "kernel/shmmni": "1000"}
    assert ctx.cgroup_parent == f"{manager.default_cgroup_parent}/{rec.id}"


def test_pod_files(manager):
    dns = api_pb2.DNSConfig(
        servers=["10.96.0.10"], searches=["default.svc.cluster.local"], options=["ndots:5"]
    )
    rec = manager.run(pod_config(dns=dns, hostname="files-pod"))
    ctx = manager.context(rec.id)
    hosts = Path(ctx.hosts_path).read_text()
    assert "127.0.0.1\tlocalhost\n" in hosts
    assert "127.0.1.1\tfiles-pod\n" in hosts
    assert Path(ctx.resolv_path).read_text() == (
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert Path(ctx.hostname_path).read_text() == "files-pod\n"
    for p in (ctx.hosts_path, ctx.resolv_path, ctx.hostname_path):
        assert Path(p).parent == Path(rec.dir)
        assert Path(p).stat().st_mode & 0o777 == 0o644

    plain = manager.run(pod_config("plain"))
    assert (
        Path(manager.context(plain.id).resolv_path).read_text()
        == Path("/etc/resolv.conf").read_text()
    )


def test_host_network_and_ipc_use_the_hosts_namespaces(manager):
    rec = manager.run(
        pod_config(network=api_pb2.NODE, ipc=api_pb2.NODE, pid=api_pb2.NODE, hostname="")
    )
    assert (rec.netns, rec.ipcns, rec.utsns) == ("", "", "")
    assert sorted(p.name for p in Path(rec.dir).iterdir()) == ["hostname", "hosts", "resolv.conf"]
    ctx = manager.context(rec.id)
    assert ctx.host_pid and ctx.pidns == ""
    assert ctx.hostname == os.uname().nodename
    assert Path(ctx.hosts_path).read_text() == Path("/etc/hosts").read_text()
    with pytest.raises(InvalidArgument, match="network namespace"):
        manager.run(pod_config("other", network=api_pb2.NODE, sysctls={"net.ipv4.ip_forward": "1"}))


def test_duplicate_name_is_already_exists_with_the_existing_id(manager):
    first = manager.run(pod_config())
    with pytest.raises(AlreadyExists) as exc:
        manager.run(pod_config())
    assert exc.value.subject == first.id and first.id in str(exc.value)
    second = manager.run(pod_config(attempt=1))  # kubelet's next attempt is another name
    assert second.id != first.id
    assert len(manager.list()) == 2


def test_concurrent_runs(manager):
    """Two pods are created at once; two runs of one name yield one sandbox."""
    results, errors = [], []

    def run(cfg):
        try:
            results.append(manager.run(cfg))
        except Exception as exc:
            errors.append(exc)

    cfgs = [pod_config("a"), pod_config("b"), pod_config("c"), pod_config("c")]
    threads = [threading.Thread(target=run, args=(c,)) for c in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.name for r in results) == ["a", "b", "c"]
    assert len(errors) == 1 and isinstance(errors[0], AlreadyExists)
    netns = {Namespace.open(Kind.NET, r.netns).identity() for r in results}
    assert len(netns) == 3


def test_stop_and_remove_are_idempotent_and_leave_nothing(manager, tmp_path, cgroup_top):
    rec = manager.run(pod_config())
    # the runtime creates the pod cgroup when its first container starts
    cg = _cgroup_root() / rec.cgroup_parent.lstrip("/")
    cg.mkdir(parents=True)
    manager.stop(rec.id)
    manager.stop(rec.id[:12])
    got = manager.get(rec.id)
    assert got.state == "notready"
    assert is_pinned(Path(rec.netns))  # kubelet may still ask for the status
    assert manager.status(rec.id).status.state == api_pb2.SANDBOX_NOTREADY
    with pytest.raises(FailedPrecondition):
        manager.context(rec.id)

    manager.remove(rec.id)
    manager.remove(rec.id)
    manager.remove("0" * 64)
    assert _mounts_under(tmp_path) == []
    assert not Path(rec.dir).exists()
    assert not (tmp_path / "state" / "sandboxes" / rec.id).exists()
    assert not cg.exists()
    assert cg.parent.exists()  # only the pod's own cgroup goes
    with pytest.raises(NotFound):
        manager.get(rec.id)
    with pytest.raises(NotFound):
        manager.stop(rec.id)
    assert manager.run(pod_config()).id != rec.id  # the name is free again


def test_an_explicit_cgroup_parent_is_kept(manager, cgroup_top):
    cfg = pod_config()
    cfg.linux.cgroup_parent = f"{cgroup_top}/kubepods/pod-uid-web"
    rec = manager.run(cfg)
    assert rec.cgroup_parent == cfg.linux.cgroup_parent
    cg = _cgroup_root() / rec.cgroup_parent.lstrip("/")
    cg.mkdir(parents=True)
    manager.remove(rec.id)
    assert cg.is_dir()  # kubelet's, not ours


def test_list_filters_and_prefix_lookup(manager):
    a = manager.run(pod_config("a", labels={"app": "x", "tier": "fe"}))
    b = manager.run(pod_config("b", labels={"app": "x", "tier": "be"}))
    c = manager.run(pod_config("c", labels={"app": "y"}))
    manager.stop(b.id)

    def ids(**kw):
        return sorted(r.id for r in manager.list(api_pb2.PodSandboxFilter(**kw)))

    assert sorted(r.id for r in manager.list()) == sorted([a.id, b.id, c.id])
    assert ids(id=a.id[:10]) == [a.id]
    assert ids(label_selector={"app": "x"}) == sorted([a.id, b.id])
    assert ids(label_selector={"app": "x", "tier": "be"}) == [b.id]
    notready = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY)
    ready = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)
    assert ids(state=notready) == [b.id]
    assert ids(state=ready, label_selector={"app": "x"}) == [a.id]
    assert manager.get(c.id[:8]).id == c.id
    with pytest.raises(NotFound):
        manager.get("")  # matches everything, so nothing
    with pytest.raises(NotFound):
        manager.get("z")


def test_status_fields(manager):
    rec = manager.run(pod_config(sysctls={"net.ipv4.ip_unprivileged_port_start": "80"}), "runc")
    resp = manager.status(rec.id, verbose=True)
    st = resp.status
    assert st.id == rec.id
    assert (st.metadata.name, st.metadata.uid, st.metadata.namespace, st.metadata.attempt) == (
        "web",
        "uid-web",
        "default",
        0,
    )
    assert st.state == api_pb2.SANDBOX_READY
    assert st.created_at == rec.created_at > 0
    assert st.HasField("network") and st.network.ip == ""
    opts = st.linux.namespaces.options
    assert (opts.network, opts.ipc, opts.pid) == (api_pb2.POD, api_pb2.POD, api_pb2.CONTAINER)
    assert dict(st.labels) == {"app": "web"} and dict(st.annotations) == {"note": "test"}
    assert st.runtime_handler == "runc"
    info = json.loads(resp.info["info"])
    assert info["id"] == rec.id and info["netns"] == rec.netns
    assert info["config"]["metadata"]["name"] == "web"
    assert manager.status(rec.id).info == {}
    pb = manager.to_proto(manager.get(rec.id))
    assert (pb.id, pb.metadata.name, pb.state, pb.runtime_handler) == (
        rec.id,
        "web",
        api_pb2.SANDBOX_READY,
        "runc",
    )
    assert rec.config_proto().linux.sysctls["net.ipv4.ip_unprivileged_port_start"] == "80"


def _assert_nothing_left(manager, tmp_path):
    assert _mounts_under(tmp_path) == []
    assert list((tmp_path / "run" / "sandboxes").iterdir()) == []
    assert list((tmp_path / "state" / "sandboxes").iterdir()) == []
    assert manager.list() == []


@pytest.mark.parametrize(
    ("sysctls", "message"),
    [
        ({"net.ipv4.ip_unprivileged_port_start": "99999999"}, "refused"),
        ({"net.ipv4.no_such_knob": "1"}, "does not exist"),
        ({"net.ipv4.tcp_available_congestion_control": "reno"}, "read-only"),
        ({"kernel.shmmni": "1", "kernel.msg_no_such": "1"}, "does not exist"),
    ],
)
def test_a_failure_after_pinning_leaves_nothing(manager, tmp_path, sysctls, message):
    with pytest.raises(InvalidArgument, match=message):
        manager.run(pod_config(sysctls=sysctls))
    _assert_nothing_left(manager, tmp_path)
    manager.run(pod_config())  # the name was released


def test_a_failing_pod_init_leaves_nothing(make_manager, tmp_path):
    def broken(net, ipc, uts):
        assert is_pinned(Path(net))  # called after the namespaces exist
        raise OSError(5, "zygote went away")

    manager = make_manager(broken)
    with pytest.raises(Internal, match="zygote went away"):
        manager.run(pod_config(pid=api_pb2.POD))
    _assert_nothing_left(manager, tmp_path)


def test_pod_pid_namespace(make_manager, pod_init):
    manager = make_manager(pod_init)
    rec = manager.run(pod_config(pid=api_pb2.POD))
    assert rec.pidns_mode == "POD" and (rec.pod_init_pid, rec.pod_init_start) == pod_init.made[0]
    ctx = manager.context(rec.id)
    assert ctx.pidns == f"/proc/{rec.pod_init_pid}/ns/pid"
    with Namespace.open(Kind.PID, ctx.pidns) as pod, Namespace.of_process(Kind.PID) as host:
        assert not pod.same_as(host)
    nspid = next(
        line
        for line in Path(f"/proc/{rec.pod_init_pid}/status").read_text().splitlines()
        if line.startswith("NSpid:")
    )
    assert nspid.split()[-1] == "1"
    with (
        Namespace.open(Kind.NET, rec.netns) as a,
        Namespace.of_process(Kind.NET, rec.pod_init_pid) as b,
    ):
        assert a.same_as(b)
    manager.stop(rec.id)
    assert proc_start_time(rec.pod_init_pid) != rec.pod_init_start
    manager.stop(rec.id)

    no_init = make_manager()
    with pytest.raises(InvalidArgument, match="pod init"):
        no_init.run(pod_config("other", pid=api_pb2.POD))


def test_recover_rolls_back_a_sandbox_left_creating(make_manager, tmp_path, pod_init):
    """A server killed in the middle of RunPodSandbox: pins made, pod init started."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)

            def init_then_die(net, ipc, uts):
                pid, start = pod_init(net, ipc, uts)
                os.write(w, json.dumps([pid, start]).encode())
                os._exit(9)  # the "server" dies after the pod init exists

            make_manager(init_then_die).run(pod_config(pid=api_pb2.POD))
        finally:
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as f:
        init_pid, init_start = json.loads(f.read())
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    pod_init.made.append((init_pid, init_start))
    (sid,) = [p.name for p in (tmp_path / "state" / "sandboxes").iterdir()]
    record = read_json(str(tmp_path / "state" / "sandboxes" / sid / "sandbox.json"))
    assert record["state"] == "creating"
    assert sorted(_mounts_under(tmp_path)) == sorted(
        str(tmp_path / "run" / "sandboxes" / sid / n) for n in ("ipc", "net", "uts")
    )

    manager = make_manager()
    done = manager.recover()
    assert done == [f"rolled back sandbox {sid} left in creating"]
    assert proc_start_time(init_pid) != init_start  # the pod init is not a live process
    _assert_nothing_left(manager, tmp_path)


def test_recover_keeps_ready_sandboxes_and_marks_lost_ones_notready(make_manager, tmp_path):
    first = make_manager()
    keep = first.run(pod_config("keep"))
    lost = first.run(pod_config("lost"))
    stopped = first.run(pod_config("stopped"))
    first.stop(stopped.id)
    unpin(Path(lost.netns))  # what a reboot does to /run
    # a killed writer's temp file is cleaned up
    write_json_atomic(str(tmp_path / "state" / "sandboxes" / keep.id / "x.json"), {})
    os.rename(
        tmp_path / "state" / "sandboxes" / keep.id / "x.json",
        tmp_path / "state" / "sandboxes" / keep.id / ".sandbox.json.1.tmp",
    )

    second = make_manager()
    done = second.recover()
    assert done == [f"marked sandbox {lost.id} notready: net namespace pin {lost.netns} is gone"]
    assert {r.id: r.state for r in second.list()} == {
        keep.id: "ready",
        lost.id: "notready",
        stopped.id: "notready",
    }
    assert not (tmp_path / "state" / "sandboxes" / keep.id / ".sandbox.json.1.tmp").exists()
    with pytest.raises(AlreadyExists):
        second.run(pod_config("keep"))
    assert second.context(keep.id).netns == keep.netns
    second.remove(lost.id)
    assert not Path(lost.dir).exists()
