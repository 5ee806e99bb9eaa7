"""The config `pinnace-oci spec` writes: runc's template, containerd's capabilities, valid for us."""

import json
import os

import pytest

from runtime import capabilities as C
from runtime import defaults as D
from runtime import process as P
from runtime import seccomp_profile


def test_process_section():
    c = D.default_config()
    proc = c["process"]
    assert proc["args"] == ["sh"] and proc["terminal"] is True
    assert proc["user"] == {"uid": 0, "gid": 0}
    assert proc["cwd"] == "/"
    assert proc["env"][0].startswith("PATH=/usr/local/sbin:") and "TERM=xterm" in proc["env"]
    assert proc["noNewPrivileges"] is True
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    caps = proc["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}  # no inheritable, as containerd
    assert sorted(caps["bounding"]) == sorted(
        [
            "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
            "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
        ]
    )  # fmt: skip
    assert caps["bounding"] == caps["effective"] == caps["permitted"]


def test_args_and_terminal_are_parameters():
    c = D.default_config(args=["/bin/app", "-v"], terminal=False)
    assert c["process"]["args"] == ["/bin/app", "-v"]
    assert c["process"]["terminal"] is False


def test_linux_section():
    c = D.default_config()
    linux = c["linux"]
    assert [n["type"] for n in linux["namespaces"]] == [
        "pid", "network", "ipc", "uts", "mount", "cgroup",
    ]  # fmt: skip
    assert all("path" not in n for n in linux["namespaces"])
    assert linux["maskedPaths"] == [
        "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
        "/sys/firmware", "/sys/devices/virtual/powercap",
    ]  # fmt: skip
    assert linux["readonlyPaths"] == [
        "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
    ]  # fmt: skip
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert linux["seccomp"] == seccomp_profile.default_profile()
    assert c["root"] == {"path": "rootfs", "readonly": True}
    assert c["ociVersion"] == "1.2.0"


def test_mounts():
    mounts = {m["destination"]: m for m in D.default_config()["mounts"]}
    assert list(mounts) == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup",
    ]  # fmt: skip
    assert mounts["/proc"]["type"] == "proc"
    assert mounts["/dev"]["type"] == "tmpfs" and "mode=755" in mounts["/dev"]["options"]
    assert mounts["/dev/pts"]["type"] == "devpts" and "gid=5" in mounts["/dev/pts"]["options"]
    assert mounts["/dev/shm"]["source"] == "shm" and "mode=1777" in mounts["/dev/shm"]["options"]
    assert mounts["/dev/mqueue"]["type"] == "mqueue"
    assert mounts["/sys"]["type"] == "sysfs" and "ro" in mounts["/sys"]["options"]
    assert (
        mounts["/sys/fs/cgroup"]["type"] == "cgroup" and "ro" in mounts["/sys/fs/cgroup"]["options"]
    )


def test_rootless_variant():
    c = D.default_config(rootless=True)
    linux = c["linux"]
    types = [n["type"] for n in linux["namespaces"]]
    assert "network" not in types and types[-1] == "user"
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    assert "resources" not in linux
    mounts = {m["destination"]: m for m in c["mounts"]}
    assert mounts["/sys"]["type"] == "none" and "rbind" in mounts["/sys"]["options"]
    assert not any(
        o.startswith(("gid=", "uid=")) for m in c["mounts"] for o in m.get("options", [])
    )


@pytest.mark.parametrize("rootless", [False, True])
def test_default_config_passes_our_own_validation(rootless):
    c = json.loads(json.dumps(D.default_config(rootless=rootless)))  # as read from config.json
    plan = P.plan_process(c["process"], c["linux"], rootfs=None)
    assert plan.notes == ()
    assert plan.no_new_privileges
    assert plan.seccomp is not None and plan.seccomp.rules
    assert C.names_of(plan.capabilities.bounding) == sorted(
        D.DEFAULT_CAPABILITIES, key=C.CAPABILITIES.__getitem__
    )
    assert plan.capabilities.inheritable == 0 and plan.capabilities.ambient == 0


def test_default_config_passes_the_runtime_s_other_validators(tmp_path):
    """The lifecycle's own checks (namespaces, id maps, rootfs) accept it too."""
    from runtime import rootfs, spec

    (tmp_path / "rootfs").mkdir()
    for rootless in (False, True):
        c = D.default_config(rootless=rootless)
        assert spec.check_top(c, str(tmp_path)) == str(tmp_path / "rootfs")
        spec.namespaces(c)
        spec.id_maps(c, "uidMappings")
        rootfs.validate_rootfs(c, str(tmp_path))
