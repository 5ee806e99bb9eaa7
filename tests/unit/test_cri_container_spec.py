"""cri.container_spec: CRI ContainerConfig + pod + image -> OCI config.json, rule by rule."""

import json
import os
import stat
from typing import Any

import pytest

from cri import container_spec as cs
from cri.api import api_pb2
from cri.errors import InvalidArgument
from cri.podcontext import PodContext
from runtime.defaults import DEFAULT_CAPABILITIES, DEFAULT_PATH, MASKED_PATHS, READONLY_PATHS
from runtime.seccomp_profile import default_profile

PASSWD = """root:x:0:0:root:/root:/bin/sh
alice:x:1000:1000::/home/alice:/bin/sh
bob:x:1001:1002::/home/bob:/bin/sh
"""
GROUP = """root:x:0:
wheel:x:10:root,alice
alice:x:1000:
video:x:44:alice
staff:x:1002:
"""
IMAGE = {"config": {"Entrypoint": ["/entry"], "Cmd": ["default-arg"], "Env": ["A=1"]}}


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return str(root)


def pod_ctx(**kw):
    base: dict[str, Any] = dict(
        sandbox_id="sb1",
        netns="/run/pinnace/cri/sandboxes/sb1/net",
        ipcns="/run/pinnace/cri/sandboxes/sb1/ipc",
        utsns="/run/pinnace/cri/sandboxes/sb1/uts",
        pidns="",
        host_pid=False,
        hostname="web-0",
        hosts_path="",
        resolv_path="",
        hostname_path="",
        cgroup_parent="/pinnace/pods/sb1",
    )
    base.update(kw)
    return PodContext(**base)


def sandbox_cfg(privileged=False):
    sb = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", namespace="default", uid="u-1")
    )
    sb.linux.security_context.privileged = privileged
    return sb


def container(**kw):
    cfg = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="app"), **kw)
    cfg.image.image = "busybox:latest"
    return cfg


def build(rootfs, cfg=None, *, sandbox=None, pod=None, image=IMAGE, **kw):
    return cs.build_spec(
        cfg if cfg is not None else container(),
        sandbox if sandbox is not None else sandbox_cfg(),
        pod if pod is not None else pod_ctx(),
        image,
        rootfs,
        container_id=kw.pop("container_id", "c1"),
        **kw,
    )


def invalid(subject_part, rootfs, cfg=None, **kw):
    with pytest.raises(InvalidArgument) as e:
        build(rootfs, cfg, **kw)
    assert subject_part in e.value.subject, (e.value.subject, e.value.message)
    assert e.value.code.name == "INVALID_ARGUMENT"
    return e.value


# --- top level ---------------------------------------------------------------------------


def test_top_level_fields(rootfs):
    spec = build(rootfs)
    assert spec["ociVersion"] == "1.2.0"
    assert spec["root"] == {"path": rootfs, "readonly": False}
    assert spec["hostname"] == "web-0"
    assert spec["linux"]["cgroupsPath"] == "/pinnace/pods/sb1/c1"
    json.dumps(spec)  # all of it serializable


def test_rootfs_must_be_absolute_and_id_valid(rootfs):
    with pytest.raises(InvalidArgument) as e:
        cs.build_spec(container(), sandbox_cfg(), pod_ctx(), IMAGE, "rel", container_id="c1")
    assert e.value.subject == "rootfs"
    invalid("container_id", rootfs, container_id="../c1")


def test_annotations_carry_containerds_keys_over_the_requests(rootfs):
    cfg = container(annotations={"a": "b", cs.ANN_SANDBOX_ID: "forged"})
    ann = build(rootfs, cfg)["annotations"]
    assert ann["a"] == "b"
    assert ann["io.kubernetes.cri.container-type"] == "container"
    assert ann["io.kubernetes.cri.sandbox-id"] == "sb1"
    assert ann["io.kubernetes.cri.container-name"] == "app"
    assert ann["io.kubernetes.cri.sandbox-name"] == "web"
    assert ann["io.kubernetes.cri.sandbox-namespace"] == "default"
    assert ann["io.kubernetes.cri.image-name"] == "busybox:latest"


# --- process -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        (["/bin/cmd"], ["x"], ["/bin/cmd", "x"]),
        (["/bin/cmd"], [], ["/bin/cmd"]),  # command alone drops the image's Cmd too
        ([], ["x", "y"], ["/entry", "x", "y"]),
        ([], [], ["/entry", "default-arg"]),
    ],
)
def test_process_args(rootfs, command, args, expected):
    assert build(rootfs, container(command=command, args=args))["process"]["args"] == expected


def test_empty_entrypoint_string_means_none(rootfs):
    image = {"config": {"Entrypoint": [""], "Cmd": ["sh"]}}
    assert build(rootfs, image=image)["process"]["args"] == ["sh"]


def test_no_command_anywhere_is_invalid(rootfs):
    invalid("command", rootfs, image={"config": {}})


def test_image_config_section_may_be_given_directly(rootfs):
    assert build(rootfs, image={"Cmd": ["top"]})["process"]["args"] == ["top"]


def test_malformed_image_cmd_is_invalid(rootfs):
    invalid("image.config.Cmd", rootfs, image={"config": {"Cmd": "sh -c x"}})


def test_env_image_then_request_by_key_order_kept(rootfs):
    image = {"config": {"Cmd": ["sh"], "Env": ["PATH=/img/bin", "A=1", "B=2"]}}
    cfg = container(
        envs=[api_pb2.KeyValue(key="A", value=b"x"), api_pb2.KeyValue(key="C", value=b"3")]
    )
    env = build(rootfs, cfg, image=image)["process"]["env"]
    assert env == ["PATH=/img/bin", "HOSTNAME=web-0", "A=x", "B=2", "C=3"]


def test_env_gets_default_path_and_tty_term(rootfs):
    image = {"config": {"Cmd": ["sh"]}}
    spec = build(rootfs, container(tty=True), image=image)
    assert spec["process"]["env"] == [f"PATH={DEFAULT_PATH}", "HOSTNAME=web-0", "TERM=xterm"]
    assert spec["process"]["terminal"] is True
    assert build(rootfs, image=image)["process"]["terminal"] is False


@pytest.mark.parametrize(
    "kv", [api_pb2.KeyValue(key="", value=b"x"), api_pb2.KeyValue(key="A=B", value=b"x")]
)
def test_bad_env_name_is_invalid(rootfs, kv):
    invalid("envs[0]", rootfs, container(envs=[kv]))


def test_non_utf8_env_value_is_invalid(rootfs):
    invalid("envs[0]", rootfs, container(envs=[api_pb2.KeyValue(key="A", value=b"\xff")]))


def test_cwd(rootfs):
    image = {"config": {"Cmd": ["sh"], "WorkingDir": "/srv"}}
    assert build(rootfs, container(working_dir="/work"), image=image)["process"]["cwd"] == "/work"
    assert build(rootfs, image=image)["process"]["cwd"] == "/srv"
    assert build(rootfs)["process"]["cwd"] == "/"
    invalid("working_dir", rootfs, container(working_dir="rel"))
    invalid("image.config.WorkingDir", rootfs, image={"config": {"Cmd": ["x"], "WorkingDir": "r"}})


def test_process_defaults_from_the_request(rootfs):
    cfg = container()
    cfg.linux.security_context.no_new_privs = True
    cfg.linux.resources.oom_score_adj = 500
    p = build(rootfs, cfg)["process"]
    assert p["noNewPrivileges"] is True
    assert p["oomScoreAdj"] == 500
    assert build(rootfs)["process"]["noNewPrivileges"] is False


def test_oom_score_adj_out_of_range(rootfs):
    cfg = container()
    cfg.linux.resources.oom_score_adj = 1001
    invalid("oom_score_adj", rootfs, cfg)


# --- user --------------------------------------------------------------------------------


def _user(rootfs, cfg=None, **kw):
    return build(rootfs, cfg, **kw)["process"]["user"]


def test_default_user_is_root_with_roots_groups(rootfs):
    assert _user(rootfs) == {"uid": 0, "gid": 0, "additionalGids": [0, 10]}


def test_run_as_user_takes_gid_from_passwd(rootfs):
    cfg = container()
    cfg.linux.security_context.run_as_user.value = 1000
    assert _user(rootfs, cfg) == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 10, 44]}


def test_run_as_user_unknown_to_passwd_gets_gid_0(rootfs):
    cfg = container()
    cfg.linux.security_context.run_as_user.value = 4242
    assert _user(rootfs, cfg) == {"uid": 4242, "gid": 0, "additionalGids": [0]}


def test_run_as_username(rootfs):
    cfg = container()
    cfg.linux.security_context.run_as_username = "bob"
    assert _user(rootfs, cfg) == {"uid": 1001, "gid": 1002, "additionalGids": [1002]}


def test_run_as_username_missing_is_invalid(rootfs):
    cfg = container()
    cfg.linux.security_context.run_as_username = "mallory"
    e = invalid("run_as_username", rootfs, cfg)
    assert "mallory" in e.message


def test_run_as_group_overrides_primary_gid(rootfs):
    cfg = container()
    cfg.linux.security_context.run_as_user.value = 1000
    cfg.linux.security_context.run_as_group.value = 3000
    assert _user(rootfs, cfg) == {"uid": 1000, "gid": 3000, "additionalGids": [3000, 10, 44]}


def test_supplemental_groups_appended_and_deduplicated(rootfs):
    cfg = container()
    cfg.linux.security_context.run_as_user.value = 1000
    cfg.linux.security_context.supplemental_groups.extend([44, 5000, 5000])
    assert _user(rootfs, cfg)["additionalGids"] == [1000, 10, 44, 5000]


def test_strict_policy_skips_etc_group(rootfs):
    cfg = container()
    cfg.linux.security_context.run_as_user.value = 1000
    cfg.linux.security_context.supplemental_groups.append(7)
    cfg.linux.security_context.supplemental_groups_policy = api_pb2.Strict
    assert _user(rootfs, cfg)["additionalGids"] == [1000, 7]


def test_image_user_by_name_and_by_uid_gid(rootfs):
    assert _user(rootfs, image={"config": {"Cmd": ["x"], "User": "alice"}})["uid"] == 1000
    u = _user(rootfs, image={"config": {"Cmd": ["x"], "User": "1001:44"}})
    assert u == {"uid": 1001, "gid": 44, "additionalGids": [44]}
    u = _user(rootfs, image={"config": {"Cmd": ["x"], "User": "alice:staff"}})
    assert (u["uid"], u["gid"]) == (1000, 1002)


def test_image_user_unknown_is_invalid(rootfs):
    invalid("image.config.User", rootfs, image={"config": {"Cmd": ["x"], "User": "nobody"}})
    invalid("image.config.User", rootfs, image={"config": {"Cmd": ["x"], "User": "alice:nog"}})


def test_request_user_beats_image_user(rootfs):
    cfg = container()
    cfg.linux.security_context.run_as_user.value = 1001
    assert _user(rootfs, cfg, image={"config": {"Cmd": ["x"], "User": "alice"}})["uid"] == 1001


def test_pod_level_user_group_and_groups_apply_when_the_containers_are_unset(rootfs):
    sb = sandbox_cfg()
    sb.linux.security_context.run_as_user.value = 1000
    sb.linux.security_context.run_as_group.value = 2000
    sb.linux.security_context.supplemental_groups.append(9)
    assert _user(rootfs, sandbox=sb) == {
        "uid": 1000,
        "gid": 2000,
        "additionalGids": [2000, 10, 44, 9],
    }
    cfg = container()
    cfg.linux.security_context.run_as_user.value = 1001
    assert _user(rootfs, cfg, sandbox=sb)["uid"] == 1001


def test_negative_or_huge_ids_are_invalid(rootfs):
    cfg = container()
    cfg.linux.security_context.run_as_user.value = -1
    invalid("run_as_user", rootfs, cfg)
    cfg = container()
    cfg.linux.security_context.run_as_group.value = 2**32
    invalid("run_as_group", rootfs, cfg)
    cfg = container()
    cfg.linux.security_context.supplemental_groups.append(-5)
    invalid("supplemental_groups[0]", rootfs, cfg)


# --- namespaces and hostname ------------------------------------------------------------


def _ns(spec):
    return {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}


def test_namespaces_join_the_pods(rootfs):
    ns = _ns(build(rootfs))
    assert ns == {
        "mount": None,
        "network": "/run/pinnace/cri/sandboxes/sb1/net",
        "ipc": "/run/pinnace/cri/sandboxes/sb1/ipc",
        "uts": "/run/pinnace/cri/sandboxes/sb1/uts",
        "pid": None,
        "cgroup": None,
    }


def test_host_namespaces_are_omitted_and_no_hostname_is_set(rootfs):
    spec = build(rootfs, pod=pod_ctx(netns="", ipcns="", utsns="", host_pid=True))
    assert _ns(spec) == {"mount": None, "cgroup": None}
    assert "hostname" not in spec


def test_pod_pid_namespace_is_joined(rootfs):
    assert _ns(build(rootfs, pod=pod_ctx(pidns="/proc/77/ns/pid")))["pid"] == "/proc/77/ns/pid"


def _with_pid_mode(mode, target=""):
    cfg = container()
    cfg.linux.security_context.namespace_options.pid = mode
    cfg.linux.security_context.namespace_options.target_id = target
    return cfg


def test_container_pid_mode_gets_its_own_even_in_a_shared_pod(rootfs):
    spec = build(rootfs, _with_pid_mode(api_pb2.CONTAINER), pod=pod_ctx(pidns="/proc/77/ns/pid"))
    assert _ns(spec)["pid"] is None
    assert "pid" in _ns(spec)


def test_node_pid_mode_needs_a_host_pid_pod(rootfs):
    invalid("namespace_options.pid", rootfs, _with_pid_mode(api_pb2.NODE))
    spec = build(rootfs, _with_pid_mode(api_pb2.NODE), pod=pod_ctx(host_pid=True))
    assert "pid" not in _ns(spec)


def test_target_pid_mode_uses_the_resolver(rootfs):
    seen = []

    def resolver(cid):
        seen.append(cid)
        return f"/proc/99/ns/pid#{cid}"

    spec = build(rootfs, _with_pid_mode(api_pb2.TARGET, "other"), target_pidns=resolver)
    assert _ns(spec)["pid"] == "/proc/99/ns/pid#other"
    assert seen == ["other"]


def test_target_pid_mode_without_resolver_or_target_is_invalid(rootfs):
    invalid("target_id", rootfs, _with_pid_mode(api_pb2.TARGET, "other"))
    invalid("target_id", rootfs, _with_pid_mode(api_pb2.TARGET, ""), target_pidns=lambda c: "/x")


def test_user_namespaces_are_refused(rootfs):
    cfg = container()
    cfg.linux.security_context.namespace_options.userns_options.mode = api_pb2.POD
    invalid("userns_options", rootfs, cfg)
    cfg.linux.security_context.namespace_options.userns_options.mode = api_pb2.NODE
    assert "user" not in _ns(build(rootfs, cfg))


def test_sysctls_from_the_pod(rootfs):
    pod = pod_ctx(sysctls={"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000"})
    assert build(rootfs, pod=pod)["linux"]["sysctl"] == pod.sysctls
    assert "sysctl" not in build(rootfs)["linux"]


def test_net_sysctl_with_the_hosts_network_is_invalid(rootfs):
    pod = pod_ctx(netns="", sysctls={"net.ipv4.ip_forward": "1"})
    invalid("sysctls", rootfs, pod=pod)


# --- mounts ------------------------------------------------------------------------------


def _by_dest(spec):
    return {m["destination"]: m for m in spec["mounts"]}


def test_default_mounts_are_there(rootfs):
    dests = [m["destination"] for m in build(rootfs)["mounts"]]
    assert dests == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    mounts = _by_dest(build(rootfs))
    assert "ro" in mounts["/sys"]["options"]
    assert "ro" in mounts["/sys/fs/cgroup"]["options"]


def test_pod_files_are_bind_mounted_ro_with_a_readonly_rootfs(rootfs):
    pod = pod_ctx(hosts_path="/p/hosts", resolv_path="/p/resolv.conf", hostname_path="/p/hostname")
    mounts = _by_dest(build(rootfs, pod=pod))
    assert mounts["/etc/hosts"] == {
        "destination": "/etc/hosts",
        "type": "bind",
        "source": "/p/hosts",
        "options": ["rbind", "rprivate", "rw"],
    }
    assert mounts["/etc/resolv.conf"]["source"] == "/p/resolv.conf"
    assert mounts["/etc/hostname"]["source"] == "/p/hostname"
    cfg = container()
    cfg.linux.security_context.readonly_rootfs = True
    spec = build(rootfs, cfg, pod=pod)
    assert spec["root"]["readonly"] is True
    assert "ro" in _by_dest(spec)["/etc/hosts"]["options"]
    assert "/etc/hosts" not in _by_dest(build(rootfs))


def test_request_mount_of_a_pod_file_or_default_wins(rootfs):
    cfg = container(
        mounts=[
            api_pb2.Mount(container_path="/etc/hosts", host_path="/kubelet/hosts"),
            api_pb2.Mount(container_path="/dev/shm", host_path="/pod/shm"),
        ]
    )
    spec = build(rootfs, cfg, pod=pod_ctx(hosts_path="/p/hosts"))
    hosts = [m for m in spec["mounts"] if m["destination"] == "/etc/hosts"]
    assert [m["source"] for m in hosts] == ["/kubelet/hosts"]
    shm = [m for m in spec["mounts"] if m["destination"] == "/dev/shm"]
    assert [m["source"] for m in shm] == ["/pod/shm"]


@pytest.mark.parametrize(
    ("propagation", "opt", "root_prop"),
    [
        (api_pb2.PROPAGATION_PRIVATE, "rprivate", None),
        (api_pb2.PROPAGATION_HOST_TO_CONTAINER, "rslave", "rslave"),
        (api_pb2.PROPAGATION_BIDIRECTIONAL, "rshared", "rshared"),
    ],
)
def test_mount_propagation(rootfs, propagation, opt, root_prop):
    cfg = container(
        mounts=[api_pb2.Mount(container_path="/data", host_path="/srv", propagation=propagation)]
    )
    spec = build(rootfs, cfg)
    assert _by_dest(spec)["/data"] == {
        "destination": "/data",
        "type": "bind",
        "source": "/srv",
        "options": ["rbind", opt, "rw"],
    }
    assert spec["linux"].get("rootfsPropagation") == root_prop


def test_readonly_and_recursive_readonly(rootfs):
    cfg = container(
        mounts=[
            api_pb2.Mount(container_path="/a", host_path="/a", readonly=True),
            api_pb2.Mount(
                container_path="/b", host_path="/b", readonly=True, recursive_read_only=True
            ),
        ]
    )
    mounts = _by_dest(build(rootfs, cfg))
    assert mounts["/a"]["options"] == ["rbind", "rprivate", "ro"]
    assert mounts["/b"]["options"] == ["rbind", "rprivate", "ro", "rro"]


def test_recursive_readonly_needs_readonly_and_private(rootfs):
    m = api_pb2.Mount(container_path="/b", host_path="/b", recursive_read_only=True)
    invalid("mounts[0].recursive_read_only", rootfs, container(mounts=[m]))
    m.readonly = True
    m.propagation = api_pb2.PROPAGATION_HOST_TO_CONTAINER
    invalid("mounts[0].recursive_read_only", rootfs, container(mounts=[m]))


def test_mounts_sorted_parents_first(rootfs):
    cfg = container(
        mounts=[
            api_pb2.Mount(container_path="/a/b/c", host_path="/x"),
            api_pb2.Mount(container_path="/a", host_path="/y"),
            api_pb2.Mount(container_path="/a/b", host_path="/z"),
        ]
    )
    dests = [m["destination"] for m in build(rootfs, cfg)["mounts"]][7:]
    assert dests == ["/a", "/a/b", "/a/b/c"]


@pytest.mark.parametrize(
    ("mount", "subject"),
    [
        (api_pb2.Mount(container_path="rel", host_path="/x"), "mounts[0].container_path"),
        (api_pb2.Mount(container_path="/d", host_path="x"), "mounts[0].host_path"),
        (
            api_pb2.Mount(container_path="/d", host_path="/x", propagation=7),  # type: ignore[arg-type]
            "propagation",
        ),
        (
            api_pb2.Mount(container_path="/d", image=api_pb2.ImageSpec(image="busybox")),
            "mounts[0].image",
        ),
        (
            api_pb2.Mount(
                container_path="/d",
                host_path="/x",
                uidMappings=[api_pb2.IDMapping(host_id=1, container_id=0, length=1)],
            ),
            "uidMappings",
        ),
    ],
)
def test_bad_mounts_are_invalid(rootfs, mount, subject):
    e = invalid(subject, rootfs, container(mounts=[mount]))
    if "image" in subject:
        assert e.message == "image volumes are not supported"


def test_mounting_one_path_twice_is_invalid(rootfs):
    mounts = [
        api_pb2.Mount(container_path="/d", host_path="/x"),
        api_pb2.Mount(container_path="/d/", host_path="/y"),
    ]
    invalid("mounts[1]", rootfs, container(mounts=mounts))


# --- devices -----------------------------------------------------------------------------


def test_device_from_the_hosts_node(rootfs):
    st = os.stat("/dev/null")
    cfg = container(
        devices=[
            api_pb2.Device(host_path="/dev/null", container_path="/dev/xnull", permissions="rw")
        ]
    )
    linux = build(rootfs, cfg)["linux"]
    assert linux["devices"] == [
        {
            "path": "/dev/xnull",
            "type": "c",
            "major": 1,
            "minor": 3,
            "fileMode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
        }
    ]
    assert linux["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
    ]


def test_no_devices_means_deny_all_rule_only(rootfs):
    linux = build(rootfs)["linux"]
    assert linux["devices"] == []
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_device_that_is_not_a_device_or_missing_is_invalid(rootfs, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    for host in (str(f), str(tmp_path / "missing")):
        d = api_pb2.Device(host_path=host, container_path="/dev/x", permissions="rwm")
        invalid("devices[0].host_path", rootfs, container(devices=[d]))


def test_device_bad_permissions_or_paths_are_invalid(rootfs):
    d = api_pb2.Device(host_path="/dev/null", container_path="/dev/x", permissions="rwx")
    invalid("devices[0].permissions", rootfs, container(devices=[d]))
    d = api_pb2.Device(host_path="/dev/null", container_path="dev/x", permissions="r")
    invalid("devices[0].container_path", rootfs, container(devices=[d]))


# --- resources ---------------------------------------------------------------------------


def test_resources_to_oci_all_fields():
    res = api_pb2.LinuxContainerResources(
        cpu_period=100000,
        cpu_quota=50000,
        cpu_shares=512,
        memory_limit_in_bytes=64 << 20,
        memory_swap_limit_in_bytes=128 << 20,
        cpuset_cpus="0-1,3",
        cpuset_mems="0",
        hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=4 << 20)],
        unified={"memory.high": "50000000"},
    )
    assert cs.resources_to_oci(res) == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1,3", "mems": "0"},
        "memory": {"limit": 64 << 20, "swap": 128 << 20},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
        "unified": {"memory.high": "50000000"},
    }


def test_resources_unset_and_swap_defaults():
    assert cs.resources_to_oci(api_pb2.LinuxContainerResources()) == {}
    res = api_pb2.LinuxContainerResources(memory_limit_in_bytes=1 << 20)
    assert cs.resources_to_oci(res)["memory"] == {"limit": 1 << 20, "swap": 1 << 20}
    res = api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=1 << 20, memory_swap_limit_in_bytes=-1
    )
    assert cs.resources_to_oci(res)["memory"] == {"limit": 1 << 20, "swap": -1}
    res = api_pb2.LinuxContainerResources(cpu_quota=-1)
    assert cs.resources_to_oci(res) == {"cpu": {"quota": -1}}


def test_resources_in_the_spec(rootfs):
    cfg = container()
    cfg.linux.resources.cpu_shares = 2
    cfg.linux.resources.memory_limit_in_bytes = 1 << 30
    res = build(rootfs, cfg)["linux"]["resources"]
    assert res["cpu"] == {"shares": 2}
    assert res["memory"] == {"limit": 1 << 30, "swap": 1 << 30}
    assert "pids" not in res


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpu_shares", -2),
        ("cpu_quota", -2),
        ("cpu_period", -1),
        ("memory_limit_in_bytes", -1),
        ("memory_swap_limit_in_bytes", -2),
        ("memory_swap_limit_in_bytes", 1 << 20),  # swap without a memory limit
        ("cpuset_cpus", "0-a"),
        ("cpuset_mems", "x"),
    ],
)
def test_bad_resources_are_invalid(field, value):
    res = api_pb2.LinuxContainerResources(**{field: value})
    with pytest.raises(InvalidArgument) as e:
        cs.resources_to_oci(res)
    assert e.value.subject == f"linux.resources.{field}"


def test_swap_smaller_than_memory_is_invalid():
    res = api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=2 << 20, memory_swap_limit_in_bytes=1 << 20
    )
    with pytest.raises(InvalidArgument, match="swap"):
        cs.resources_to_oci(res)


def test_bad_hugepage_and_unified_keys_are_invalid():
    res = api_pb2.LinuxContainerResources(hugepage_limits=[api_pb2.HugepageLimit(page_size="2M")])
    with pytest.raises(InvalidArgument) as e:
        cs.resources_to_oci(res)
    assert e.value.subject == "linux.resources.hugepage_limits[0].page_size"
    for key in ("../memory.max", "cgroup.procs", "nodot"):
        with pytest.raises(InvalidArgument) as e:
            cs.resources_to_oci(api_pb2.LinuxContainerResources(unified={key: "1"}))
        assert e.value.subject == f"linux.resources.unified[{key}]"


# --- security context --------------------------------------------------------------------


def _caps(spec):
    return spec["process"]["capabilities"]


def test_default_capabilities_masked_paths_and_seccomp(rootfs):
    spec = build(rootfs)
    caps = _caps(spec)
    assert set(caps["bounding"]) == set(DEFAULT_CAPABILITIES)
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert caps["inheritable"] == caps["ambient"] == []
    assert spec["linux"]["maskedPaths"] == list(MASKED_PATHS)
    assert spec["linux"]["readonlyPaths"] == list(READONLY_PATHS)
    # nothing asked at all: Pinnace confines by default (CRI-O's choice)
    assert spec["linux"]["seccomp"] == default_profile()


def test_capabilities_add_and_drop_with_or_without_prefix(rootfs):
    cfg = container()
    c = cfg.linux.security_context.capabilities
    c.add_capabilities.extend(["NET_ADMIN", "cap_sys_time"])
    c.drop_capabilities.extend(["CAP_CHOWN", "kill"])
    b = set(_caps(build(rootfs, cfg))["bounding"])
    assert b == set(DEFAULT_CAPABILITIES) - {"CAP_CHOWN", "CAP_KILL"} | {
        "CAP_NET_ADMIN",
        "CAP_SYS_TIME",
    }


def test_capabilities_all(rootfs):
    from runtime.capabilities import CAPABILITIES

    cfg = container()
    c = cfg.linux.security_context.capabilities
    c.add_capabilities.append("ALL")
    c.drop_capabilities.append("SYS_ADMIN")
    assert set(_caps(build(rootfs, cfg))["bounding"]) == set(CAPABILITIES) - {"CAP_SYS_ADMIN"}
    cfg = container()
    c = cfg.linux.security_context.capabilities
    c.drop_capabilities.append("ALL")
    c.add_capabilities.append("NET_BIND_SERVICE")
    assert _caps(build(rootfs, cfg))["bounding"] == ["CAP_NET_BIND_SERVICE"]


def test_ambient_capabilities(rootfs):
    cfg = container()
    cfg.linux.security_context.capabilities.drop_capabilities.append("ALL")
    cfg.linux.security_context.capabilities.add_ambient_capabilities.append("NET_BIND_SERVICE")
    caps = _caps(build(rootfs, cfg))
    for s in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        assert caps[s] == ["CAP_NET_BIND_SERVICE"], s


@pytest.mark.parametrize(
    "which", ["add_capabilities", "drop_capabilities", "add_ambient_capabilities"]
)
def test_unknown_capability_is_invalid(rootfs, which):
    cfg = container()
    getattr(cfg.linux.security_context.capabilities, which).append("CAP_FLY")
    e = invalid(f"capabilities.{which}[0]", rootfs, cfg)
    assert "CAP_FLY" in e.message


def test_privileged_container_needs_a_privileged_pod(rootfs):
    cfg = container()
    cfg.linux.security_context.privileged = True
    invalid("privileged", rootfs, cfg)


def test_privileged(rootfs):
    from runtime.capabilities import CAPABILITIES

    cfg = container()
    cfg.linux.security_context.privileged = True
    cfg.linux.security_context.capabilities.drop_capabilities.append("ALL")  # ignored
    cfg.linux.security_context.masked_paths.append("/proc/kcore")  # ignored
    spec = build(rootfs, cfg, sandbox=sandbox_cfg(privileged=True))
    assert set(_caps(spec)["bounding"]) == set(CAPABILITIES)
    assert "seccomp" not in spec["linux"]
    assert spec["linux"]["maskedPaths"] == []
    assert spec["linux"]["readonlyPaths"] == []
    mounts = _by_dest(spec)
    assert "ro" not in mounts["/sys"]["options"]
    assert "ro" not in mounts["/sys/fs/cgroup"]["options"]
    assert spec["linux"]["devices"] == []  # host devices are not added


def test_explicit_masked_and_readonly_paths(rootfs):
    cfg = container()
    cfg.linux.security_context.masked_paths.append("/proc/foo")
    cfg.linux.security_context.readonly_paths.extend(["/proc/bar", "/proc/baz"])
    linux = build(rootfs, cfg)["linux"]
    assert linux["maskedPaths"] == ["/proc/foo"]
    assert linux["readonlyPaths"] == ["/proc/bar", "/proc/baz"]
    cfg.linux.security_context.masked_paths.append("rel")
    invalid("masked_paths[1]", rootfs, cfg)


def _seccomp_cfg(kind, ref=""):
    cfg = container()
    cfg.linux.security_context.seccomp.profile_type = kind
    cfg.linux.security_context.seccomp.localhost_ref = ref
    return cfg


def test_seccomp_runtime_default_and_unconfined(rootfs):
    spec = build(rootfs, _seccomp_cfg(api_pb2.SecurityProfile.RuntimeDefault))
    assert spec["linux"]["seccomp"] == default_profile()
    spec = build(rootfs, _seccomp_cfg(api_pb2.SecurityProfile.Unconfined))
    assert "seccomp" not in spec["linux"]


def test_seccomp_unknown_type_is_invalid(rootfs):
    invalid("seccomp", rootfs, _seccomp_cfg(9))


PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}],
}


def test_seccomp_localhost_profile_loaded(rootfs, tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE))
    spec = build(rootfs, _seccomp_cfg(api_pb2.SecurityProfile.Localhost, str(path)))
    assert spec["linux"]["seccomp"] == PROFILE


def test_seccomp_localhost_relative_ref_is_under_the_seccomp_root(rootfs, tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.json").write_text(json.dumps(PROFILE))
    cfg = _seccomp_cfg(api_pb2.SecurityProfile.Localhost, "profiles/p.json")
    assert build(rootfs, cfg, seccomp_root=str(tmp_path))["linux"]["seccomp"] == PROFILE
    cfg = _seccomp_cfg(api_pb2.SecurityProfile.Localhost, "../etc/passwd")
    invalid("seccomp", rootfs, cfg, seccomp_root=str(tmp_path / "profiles"))


def test_seccomp_localhost_missing_empty_or_bad_is_invalid(rootfs, tmp_path):
    invalid("seccomp", rootfs, _seccomp_cfg(api_pb2.SecurityProfile.Localhost, ""))
    missing = str(tmp_path / "nope.json")
    e = invalid("seccomp", rootfs, _seccomp_cfg(api_pb2.SecurityProfile.Localhost, missing))
    assert "nope.json" in e.message
    bad = tmp_path / "bad.json"
    for text in ("{not json", "[1]", json.dumps({"syscalls": []})):
        bad.write_text(text)
        invalid("seccomp", rootfs, _seccomp_cfg(api_pb2.SecurityProfile.Localhost, str(bad)))
    bad.write_text(json.dumps({"defaultAction": "SCMP_ACT_EXPLODE"}))
    e = invalid("seccomp", rootfs, _seccomp_cfg(api_pb2.SecurityProfile.Localhost, str(bad)))
    assert "SCMP_ACT_EXPLODE" in e.message


def test_seccomp_docker_format_is_converted(rootfs, tmp_path):
    arch = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64"}
    go = cs._GO_ARCH[os.uname().machine]
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [
            {
                "architecture": arch.get(go, "SCMP_ARCH_X86_64"),
                "subArchitectures": ["SCMP_ARCH_X86"],
            }
        ],
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW", "comment": "always"},
            {"name": "write", "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["reboot"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"caps": ["CAP_SYS_BOOT"]},
            },
            {"names": ["chown"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_CHOWN"]}},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": [go]}},
        ],
    }
    path = tmp_path / "docker.json"
    path.write_text(json.dumps(profile))
    got = build(rootfs, _seccomp_cfg(api_pb2.SecurityProfile.Localhost, str(path)))["linux"][
        "seccomp"
    ]
    assert (
        got["architectures"] == [arch.get(go, "SCMP_ARCH_X86_64"), "SCMP_ARCH_X86"]
        or go not in arch
    )
    assert got["syscalls"] == [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["write"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
    ]


def test_seccomp_deprecated_path_strings(rootfs, tmp_path):
    def with_path(p):
        cfg = container()
        cfg.linux.security_context.seccomp_profile_path = p
        return cfg

    assert build(rootfs, with_path("runtime/default"))["linux"]["seccomp"] == default_profile()
    assert "seccomp" not in build(rootfs, with_path("unconfined"))["linux"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PROFILE))
    assert build(rootfs, with_path(f"localhost/{path}"))["linux"]["seccomp"] == PROFILE
    invalid("seccomp_profile_path", rootfs, with_path("bogus"))


def test_pod_seccomp_applies_when_the_container_has_none(rootfs):
    sb = sandbox_cfg()
    sb.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Unconfined
    assert "seccomp" not in build(rootfs, sandbox=sb)["linux"]


# --- the runtime accepts what we write ---------------------------------------------------


def test_the_runtime_accepts_the_spec(rootfs, tmp_path):
    """runtime.create.prepare runs every check of config.json without creating anything."""
    from runtime.create import CreateOptions, prepare

    (tmp_path / "rootfs" / "bin").mkdir()
    cfg = container(
        command=["/bin/sh"],
        mounts=[api_pb2.Mount(container_path="/data", host_path=str(tmp_path), readonly=True)],
        devices=[api_pb2.Device(host_path="/dev/null", container_path="/dev/n2", permissions="rw")],
        envs=[api_pb2.KeyValue(key="X", value=b"y")],
    )
    cfg.linux.security_context.run_as_user.value = 1000
    cfg.linux.security_context.capabilities.add_ambient_capabilities.append("NET_BIND_SERVICE")
    cfg.linux.resources.cpu_shares = 512
    cfg.linux.resources.memory_limit_in_bytes = 1 << 26
    pod = pod_ctx(netns="", ipcns="", utsns="", hosts_path=str(tmp_path / "hosts"))
    spec = build(rootfs, cfg, pod=pod)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(spec))
    prepared = prepare("c1", CreateOptions(str(bundle)))
    assert prepared.cgroup == "/pinnace/pods/sb1/c1"
