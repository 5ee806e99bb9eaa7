"""plan_process: every validation error names its JSON field; valid input becomes a typed plan."""

import copy
import os

import pytest

from runtime import process as P
from runtime.errors import SpecError

BASE_PROCESS = {
    "args": ["sh", "-c", "true"],
    "env": ["PATH=/bin", "TERM=xterm"],
    "cwd": "/",
    "user": {"uid": 1000, "gid": 1000, "umask": 0o027, "additionalGids": [5, 10]},
    "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}],
    "capabilities": {
        "bounding": ["CAP_KILL"],
        "effective": ["CAP_KILL"],
        "permitted": ["CAP_KILL"],
    },
    "noNewPrivileges": True,
    "oomScoreAdj": 100,
}
BASE_LINUX = {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]}


def plan(edit_process=None, edit_linux=None, rootfs=None):
    proc = copy.deepcopy(BASE_PROCESS)
    linux = copy.deepcopy(BASE_LINUX)
    if edit_process:
        edit_process(proc)
    if edit_linux:
        edit_linux(linux)
    return P.plan_process(proc, linux, rootfs=rootfs)


def error_of(edit_process=None, edit_linux=None) -> SpecError:
    with pytest.raises(SpecError) as info:
        plan(edit_process, edit_linux)
    return info.value


def test_valid_process_becomes_a_typed_plan():
    p = plan()
    assert p.args == ("sh", "-c", "true")
    assert p.env == ("PATH=/bin", "TERM=xterm")
    assert p.user == P.User(1000, 1000, 0o027, (5, 10))
    assert p.rlimits == (
        P.Rlimit("RLIMIT_NOFILE", P.RLIMITS["RLIMIT_NOFILE"], 1024, 4096, "process.rlimits[0]"),
    )
    assert p.no_new_privileges is True
    assert p.oom_score_adj == 100
    assert p.seccomp is None and p.personality is None and p.sysctls == ()
    assert p.notes == ()


def test_spec_error_str_is_field_then_message():
    e = error_of(lambda p: p.update(cwd="relative"))
    assert e.field == "process.cwd"
    assert str(e).startswith("process.cwd: ")


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda p: p.pop("args"), "process.args", "missing"),
        (lambda p: p.update(args=[]), "process.args", "empty"),
        (lambda p: p.update(args="sh"), "process.args", "array"),
        (lambda p: p.update(args=[""]), "process.args[0]", "program"),
        (lambda p: p.update(args=["sh", 3]), "process.args[1]", "string"),
        (lambda p: p.update(args=["sh", "a\0b"]), "process.args[1]", "NUL"),
        (lambda p: p.update(env=["PATH=/bin", "NOEQUALS"]), "process.env[1]", "KEY=VALUE"),
        (lambda p: p.update(env=["=value"]), "process.env[0]", "empty name"),
        (lambda p: p.update(env="PATH=/bin"), "process.env", "array"),
        (lambda p: p.pop("cwd"), "process.cwd", "missing"),
        (lambda p: p.update(cwd="tmp"), "process.cwd", "absolute"),
        (lambda p: p.update(cwd=7), "process.cwd", "absolute"),
        (lambda p: p["user"].update(uid=-1), "process.user.uid", "id"),
        (lambda p: p["user"].update(uid=2**32 - 1), "process.user.uid", "id"),
        (lambda p: p["user"].update(gid="0"), "process.user.gid", "id"),
        (lambda p: p["user"].update(gid=True), "process.user.gid", "id"),
        (lambda p: p["user"].update(umask=0o1000), "process.user.umask", "0o777"),
        (lambda p: p["user"].update(umask=-1), "process.user.umask", "0o777"),
        (lambda p: p["user"].update(additionalGids=[1, 2**32]), "process.user.additionalGids[1]", "id"),
        (lambda p: p["user"].update(additionalGids=5), "process.user.additionalGids", "array"),
        (lambda p: p.update(user="root"), "process.user", "object"),
        (lambda p: p["rlimits"].append({"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}), "process.rlimits[1].type", "unknown"),
        (lambda p: p["rlimits"].append({"type": "RLIMIT_NOFILE", "soft": 1, "hard": 1}), "process.rlimits[1].type", "already set by process.rlimits[0]"),
        (lambda p: p["rlimits"].append({"type": "RLIMIT_CORE", "soft": 2, "hard": 1}), "process.rlimits[1]", "above the hard"),
        (lambda p: p["rlimits"].append({"type": "RLIMIT_CORE", "soft": -1, "hard": 1}), "process.rlimits[1].soft", "unsigned"),
        (lambda p: p["rlimits"].append({"type": "RLIMIT_CORE", "soft": 1}), "process.rlimits[1].hard", "unsigned"),
        (lambda p: p["rlimits"].append({"type": "RLIMIT_CORE", "soft": 0, "hard": 2**64}), "process.rlimits[1].hard", "unsigned"),
        (lambda p: p["rlimits"].append({"type": "RLIMIT_CORE", "soft": 0, "hard": 2**63}), "process.rlimits[1].hard", "unlimited"),
        (lambda p: p["rlimits"].append("RLIMIT_CORE"), "process.rlimits[1]", "object"),
        (lambda p: p.update(rlimits={}), "process.rlimits", "array"),
        (lambda p: p.update(noNewPrivileges="yes"), "process.noNewPrivileges", "true or false"),
        (lambda p: p.update(oomScoreAdj=-1001), "process.oomScoreAdj", "-1000"),
        (lambda p: p.update(oomScoreAdj=1001), "process.oomScoreAdj", "1000"),
        (lambda p: p.update(oomScoreAdj=1.5), "process.oomScoreAdj", "between"),
        (lambda p: p.update(apparmorProfile="docker-default"), "process.apparmorProfile", "AppArmor"),
        (lambda p: p.update(selinuxLabel="system_u:system_r:container_t:s0"), "process.selinuxLabel", "SELinux"),
        (lambda p: p.update(ioPriority={"class": "IOPRIO_CLASS_RT", "priority": 1}), "process.ioPriority", "not supported"),
        (lambda p: p.update(scheduler={"policy": "SCHED_FIFO"}), "process.scheduler", "not supported"),
        (lambda p: p["capabilities"]["bounding"].append("CAP_FOO"), "process.capabilities.bounding[1]", "unknown capability 'CAP_FOO'"),
    ],
)  # fmt: skip
def test_process_field_errors(edit, field, words):
    e = error_of(edit)
    assert e.field == field
    assert words in e.message


def test_not_a_process_object():
    with pytest.raises(SpecError) as info:
        P.plan_process(["sh"], {}, rootfs=None)
    assert info.value.field == "process"


def test_empty_lsm_fields_are_fine_and_windows_fields_are_noted():
    p = plan(lambda p: p.update(apparmorProfile="", selinuxLabel="", commandLine="x"))
    p2 = plan(lambda p: p["user"].update(username="bob"))
    assert any("commandLine" in n for n in p.notes)
    assert any("username" in n for n in p2.notes)


def test_missing_user_is_root_and_missing_umask_keeps_the_runtimes():
    p = plan(lambda p: p.pop("user"))
    assert p.user == P.User(0, 0, None, ())


def test_unlimited_rlimit_is_accepted():
    p = plan(lambda p: p.update(rlimits=[{"type": "RLIMIT_CORE", "soft": 0, "hard": 2**64 - 1}]))
    assert p.rlimits[0].hard == P.RLIM_INFINITY_OCI


# --- personality ---------------------------------------------------------------------------


def test_personality_domains():
    assert plan(edit_linux=lambda lx: lx.update(personality={"domain": "LINUX32"})).personality == 8
    assert plan(edit_linux=lambda lx: lx.update(personality={"domain": "LINUX"})).personality == 0


def test_personality_errors_and_flags_note():
    e = error_of(edit_linux=lambda lx: lx.update(personality={"domain": "BSD"}))
    assert e.field == "linux.personality.domain"
    e = error_of(edit_linux=lambda lx: lx.update(personality="LINUX"))
    assert e.field == "linux.personality"
    p = plan(edit_linux=lambda lx: lx.update(personality={"domain": "LINUX", "flags": ["X"]}))
    assert any("linux.personality.flags" in n for n in p.notes)


# --- sysctls ---------------------------------------------------------------------------------


def sysctl_error(sysctl, namespaces=None):
    def edit(linux):
        linux["sysctl"] = sysctl
        if namespaces is not None:
            linux["namespaces"] = namespaces

    return error_of(edit_linux=edit)


@pytest.mark.parametrize(
    "key",
    [
        "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
        "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced", "fs.mqueue.msg_max",
        "net.ipv4.ip_forward", "net/ipv4/ping_group_range", "net.ipv6.conf.all.disable_ipv6",
    ],
)  # fmt: skip
def test_namespaced_sysctls_are_allowed(key):
    p = plan(edit_linux=lambda lx: lx.update(sysctl={key: "1"}))
    (s,) = p.sysctls
    assert s.key == key and s.value == "1"
    assert s.path == key.replace(".", "/")
    assert s.field == f'linux.sysctl["{key}"]'


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("kernel.hostname", "`hostname` field"),
        ("kernel.domainname", "`domainname` field"),
        ("kernel.pid_max", "not a namespaced sysctl"),
        ("vm.overcommit_memory", "not a namespaced sysctl"),
        ("fs.file-max", "not a namespaced sysctl"),
        ("Net.ipv4.ip_forward", "a-z"),
        ("net.ipv4..ip_forward", "'..'"),
        ("net/../kernel/pid_max", "'..'"),
        ("net.ipv4.ip_forward.", "empty"),
        ("", "1-255"),
        ("net." + "a" * 300, "1-255"),
        ("net.ipv4.ip forward", "a-z"),
    ],
)
def test_sysctl_key_errors(key, words):
    e = sysctl_error({key: "1"})
    assert e.field == f'linux.sysctl["{key}"]'
    assert words in e.message


@pytest.mark.parametrize(
    ("value", "words"),
    [("1\n", "newline"), ("1\x002", "NUL"), ("x" * 4096, "longer"), (1, "string")],
)
def test_sysctl_value_errors(value, words):
    e = sysctl_error({"net.ipv4.ip_forward": value})
    assert e.field == 'linux.sysctl["net.ipv4.ip_forward"]'
    assert words in e.message


def test_sysctl_needs_the_namespace():
    e = sysctl_error({"kernel.shmmax": "1"}, [{"type": "mount"}, {"type": "network"}])
    assert "ipc namespace" in e.message
    e = sysctl_error({"net.ipv4.ip_forward": "1"}, [{"type": "mount"}, {"type": "ipc"}])
    assert "network namespace" in e.message


def test_sysctl_refused_in_the_hosts_joined_namespace():
    e = sysctl_error(
        {"net.ipv4.ip_forward": "1"},
        [{"type": "mount"}, {"type": "network", "path": "/proc/self/ns/net"}],
    )
    assert "is the host's" in e.message
    e = sysctl_error(
        {"kernel.sem": "1 2 3 4"}, [{"type": "mount"}, {"type": "ipc", "path": "/proc/self/ns/ipc"}]
    )
    assert "is the host's" in e.message


def test_sysctl_in_a_joined_namespace_that_is_not_the_hosts(tmp_path):
    # /proc/self/ns/uts is a namespace file with another inode than our net namespace
    p = plan(
        edit_linux=lambda lx: lx.update(
            sysctl={"net.ipv4.ip_forward": "1"},
            namespaces=[{"type": "mount"}, {"type": "network", "path": "/proc/self/ns/uts"}],
        )
    )
    assert len(p.sysctls) == 1
    e = sysctl_error(
        {"net.ipv4.ip_forward": "1"},
        [{"type": "mount"}, {"type": "network", "path": str(tmp_path / "missing")}],
    )
    assert "cannot check" in e.message


def test_sysctl_not_an_object():
    assert sysctl_error(["net.ipv4.ip_forward=1"]).field == "linux.sysctl"


def test_sysctl_namespace_classification():
    assert P.sysctl_namespace("fs.mqueue.queues_max") == "ipc"
    assert P.sysctl_namespace("kernel/shmmax") == "ipc"
    assert P.sysctl_namespace("net.core.somaxconn") == "net"
    assert P.sysctl_namespace("kernel.threads-max") is None


# --- seccomp, through plan_process -------------------------------------------------------------


def test_seccomp_errors_carry_their_field():
    e = error_of(edit_linux=lambda lx: lx.update(seccomp={"defaultAction": "SCMP_ACT_NOPE"}))
    assert e.field == "linux.seccomp.defaultAction"


def test_seccomp_notes_reach_the_plan():
    p = plan(
        edit_linux=lambda lx: lx.update(
            seccomp={
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["not_a_syscall"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    assert p.seccomp is not None
    assert any("not_a_syscall" in n for n in p.notes)


def test_rootfs_lookup_miss_is_only_a_note(tmp_path):
    (tmp_path / "bin").mkdir()
    p = plan(lambda p: p.update(args=["nope"]), rootfs=str(tmp_path))
    assert any('exec: "nope": executable file not found in $PATH' in n for n in p.notes)
    exe = tmp_path / "bin" / "sh"
    exe.write_text("#!/bin/sh\n")
    os.chmod(exe, 0o755)
    assert plan(rootfs=str(tmp_path)).notes == ()
