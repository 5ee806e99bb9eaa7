"""Validation and bookkeeping of pod sandboxes that needs no kernel."""

import base64
from typing import Any

import pytest

from cri.api import api_pb2
from cri.errors import InvalidArgument, NotFound
from cri.sandbox import (
    SandboxRecord,
    filter_matches,
    normalize_cgroup_parent,
    plan_sandbox,
    plan_sysctl,
    sandbox_name,
    sysctl_path,
    sysctl_scope,
)


def config(name="web", uid="u-1", namespace="default", attempt=2, **modes):
    cfg = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, uid=uid, namespace=namespace, attempt=attempt
        )
    )
    opts = cfg.linux.security_context.namespace_options
    opts.network = modes.get("network", api_pb2.POD)
    opts.ipc = modes.get("ipc", api_pb2.POD)
    opts.pid = modes.get("pid", api_pb2.CONTAINER)
    return cfg


def plan(cfg, handler="", pod_init=True):
    return plan_sandbox(cfg, handler, pod_init_available=pod_init)


def test_a_valid_config_is_planned():
    cfg = config()
    cfg.linux.sysctls["net.core.somaxconn"] = "1024"
    cfg.linux.sysctls["kernel.sem"] = "250 32000 32 128"
    p = plan(cfg)
    assert p.name == "web_default_u-1_2" == sandbox_name("web", "default", "u-1", 2)
    assert (p.network, p.ipc, p.pid) == ("POD", "POD", "CONTAINER")
    assert [(s.path, s.scope) for s in p.sysctls] == [
        ("kernel/sem", "ipc"),
        ("net/core/somaxconn", "net"),
    ]
    assert p.cgroup_parent == ""


@pytest.mark.parametrize("field", ["name", "uid", "namespace"])
def test_metadata_fields_are_required(field):
    cfg = config(**{field: ""})
    with pytest.raises(InvalidArgument, match=f"metadata.{field} is required"):
        plan(cfg)
    with pytest.raises(InvalidArgument):
        plan(api_pb2.PodSandboxConfig())


def test_runtime_handlers():
    for h in ("", "pinnace", "runc"):
        plan(config(), h)
    with pytest.raises(NotFound, match="no runtime for 'kata' is configured") as exc:
        plan(config(), "kata")
    assert exc.value.subject == "kata"


def test_namespace_modes():
    assert plan(config(pid=api_pb2.POD)).pid == "POD"
    assert plan(config(pid=api_pb2.NODE, network=api_pb2.NODE, ipc=api_pb2.NODE)).network == "NODE"
    with pytest.raises(InvalidArgument, match="pod init provider"):
        plan(config(pid=api_pb2.POD), pod_init=False)
    with pytest.raises(InvalidArgument, match="TARGET is for containers"):
        plan(config(pid=api_pb2.TARGET))
    with pytest.raises(InvalidArgument, match="network namespace mode CONTAINER"):
        plan(config(network=api_pb2.CONTAINER))
    with pytest.raises(InvalidArgument, match="ipc namespace mode TARGET"):
        plan(config(ipc=api_pb2.TARGET))


def test_user_namespaces():
    cfg = config()
    cfg.linux.security_context.namespace_options.userns_options.mode = api_pb2.NODE
    plan(cfg)  # kubelet's hostUsers: true
    cfg.linux.security_context.namespace_options.userns_options.mode = api_pb2.POD
    with pytest.raises(InvalidArgument, match="user namespaces are not supported yet"):
        plan(cfg)
    cfg.linux.security_context.namespace_options.userns_options.mode = api_pb2.CONTAINER
    with pytest.raises(InvalidArgument, match="user namespace mode CONTAINER"):
        plan(cfg)


@pytest.mark.parametrize(
    ("name", "path", "scope"),
    [
        ("net.ipv4.ip_forward", "net/ipv4/ip_forward", "net"),
        ("net/ipv4/conf/eth0.100/forwarding", "net/ipv4/conf/eth0.100/forwarding", "net"),
        ("kernel.shmmax", "kernel/shmmax", "ipc"),
        ("kernel.shm_rmid_forced", "kernel/shm_rmid_forced", "ipc"),
        ("kernel.msgmnb", "kernel/msgmnb", "ipc"),
        ("kernel.sem", "kernel/sem", "ipc"),
        ("fs.mqueue.msg_max", "fs/mqueue/msg_max", "ipc"),
        ("kernel.hostname", "kernel/hostname", None),
        ("kernel.semaphores", "kernel/semaphores", None),
        ("vm.swappiness", "vm/swappiness", None),
        ("fs.mqueue", "fs/mqueue", None),
        ("net", "net", None),
    ],
)
def test_sysctl_paths_and_scopes(name, path, scope):
    assert sysctl_path(name) == path
    assert sysctl_scope(path) == scope


@pytest.mark.parametrize(
    "name",
    [
        "",
        "net..ipv4",
        "net/../../etc/passwd",
        "net/ipv4/..",
        "net.ipv4.a b",
        "net/./x",
        "net.ipv4\n",
    ],
)
def test_bad_sysctl_names(name):
    with pytest.raises(InvalidArgument, match="invalid sysctl name"):
        sysctl_path(name)


def test_sysctl_rules():
    ok = plan_sysctl("kernel.sem", "250 32000 32 128", pod_net=True, pod_ipc=True)
    assert (ok.value, ok.scope) == ("250 32000 32 128", "ipc")
    with pytest.raises(InvalidArgument, match="not namespaced"):
        plan_sysctl("vm.overcommit_memory", "1", pod_net=True, pod_ipc=True)
    with pytest.raises(InvalidArgument, match="network namespace"):
        plan_sysctl("net.core.somaxconn", "1", pod_net=False, pod_ipc=True)
    with pytest.raises(InvalidArgument, match="ipc namespace"):
        plan_sysctl("kernel.msgmax", "1", pod_net=True, pod_ipc=False)
    for bad in ("", "1\n", "1\n2", "1  2", " 1", "$(reboot)", "x" * 257):
        with pytest.raises(InvalidArgument, match="not a simple value"):
            plan_sysctl("net.core.somaxconn", bad, pod_net=True, pod_ipc=True)


def test_a_bad_sysctl_fails_the_plan():
    cfg = config(network=api_pb2.NODE)
    cfg.linux.sysctls["net.ipv4.ip_forward"] = "1"
    with pytest.raises(InvalidArgument) as exc:
        plan(cfg)
    assert exc.value.subject == "net.ipv4.ip_forward"


def test_cgroup_parent():
    cfg = config()
    cfg.linux.cgroup_parent = "kubepods/besteffort/podu-1/"
    assert plan(cfg).cgroup_parent == "/kubepods/besteffort/podu-1"
    assert normalize_cgroup_parent("//a/./b") == "/a/b"
    for bad in ("/", "/a/../../b", "a/\0"):
        with pytest.raises(InvalidArgument, match="invalid cgroup parent"):
            normalize_cgroup_parent(bad)


def record(**kw):
    cfg = config()
    cfg.hostname = "h"
    base: dict[str, Any] = dict(
        id="ab" * 32,
        name="web",
        uid="u-1",
        namespace="default",
        attempt=2,
        state="ready",
        created_at=5,
        labels={"app": "x", "tier": "fe"},
        annotations={},
        runtime_handler="",
        config=base64.b64encode(cfg.SerializeToString()).decode(),
    )
    base.update(kw)
    return SandboxRecord(**base)


def test_record_json_round_trip_and_config():
    rec = record(netns="/run/x/net", pod_init_pid=7, pod_init_start=9)
    back = SandboxRecord.from_json(rec.to_json())
    assert back == rec
    assert back.full_name == "web_default_u-1_2"
    assert back.config_proto().hostname == "h"
    assert back.config_proto().metadata.name == "web"
    assert SandboxRecord.from_json({**rec.to_json(), "added_later": 1}) == rec


@pytest.mark.parametrize(("key", "value"), [("state", "running"), ("id", "../x")])
def test_foreign_records_are_refused(key, value):
    with pytest.raises(ValueError):
        SandboxRecord.from_json({**record().to_json(), key: value})
    obj = record().to_json()
    del obj["uid"]
    with pytest.raises(TypeError):
        SandboxRecord.from_json(obj)


def test_filter():
    rec = record()
    ready = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)
    notready = api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY)
    F = api_pb2.PodSandboxFilter
    assert filter_matches(rec, None)
    assert filter_matches(rec, F())
    assert filter_matches(rec, F(id="abab"))
    assert not filter_matches(rec, F(id="abb"))
    assert filter_matches(rec, F(state=ready))
    assert not filter_matches(rec, F(state=notready))
    assert filter_matches(record(state="notready"), F(state=notready))
    assert filter_matches(rec, F(label_selector={"app": "x"}))
    assert not filter_matches(rec, F(label_selector={"app": "x", "tier": "be"}))
    assert not filter_matches(rec, F(label_selector={"zone": "a"}))
