"""Seccomp filters loaded for real (early and late), and the default profile, around busybox."""

from __future__ import annotations

import errno

import pytest

from runtime import defaults
from runtime.seccomp_profile import default_profile
from tests.integration.test_process_container import run_container, status_field

pytestmark = pytest.mark.usefixtures("require_root")

DENY_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    ],
}
MKDIR_SCRIPT = "mkdir /tmp/denied; echo rc=$?; echo ok > /tmp/file && cat /tmp/file; grep Seccomp: /proc/self/status"


@pytest.mark.parametrize("nnp", [True, False], ids=["late-with-nnp", "early-without-nnp"])
def test_a_profile_denying_mkdir(make_bundle, nnp):
    r = run_container(
        make_bundle(["true"]),
        ["sh", "-c", MKDIR_SCRIPT],
        process={"noNewPrivileges": nnp},
        linux={"seccomp": DENY_MKDIR},
    )
    assert r.status == 0, r.err
    assert "mkdir: can't create directory '/tmp/denied': Operation not permitted" in r.err
    lines = r.out.splitlines()
    assert lines[0] == "rc=1"
    assert lines[1] == "ok"  # everything else still works
    assert lines[2].split() == ["Seccomp:", "2"]  # filter mode


def test_errno_ret_is_the_errno_the_program_sees(make_bundle):
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}
        ],
    }
    r = run_container(make_bundle(["true"]), ["mkdir", "/tmp/x"], linux={"seccomp": profile})
    assert r.status == 1
    assert "Read-only file system" in r.err


def test_no_filter_without_a_seccomp_section(make_bundle):
    r = run_container(make_bundle(["true"]), ["cat", "/proc/self/status"])
    assert r.status == 0, r.err
    assert status_field(r.out, "Seccomp") == "0"


BASICS = (
    "echo hello; ls / > /tmp/ls && grep -q bin /tmp/ls && echo ls-ok; "
    "cat /etc/passwd | grep -c root; id -u; date +%Y > /tmp/y && echo date-ok; "
    "sleep 0; echo $(echo subshell); ps > /tmp/ps && echo ps-ok"
)
SYS_ADMIN_CAPS = [*defaults.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"]
PRIVILEGED = "busybox unshare -u true; echo unshare=$?; mount -t tmpfs none /tmp; echo mount=$?"


@pytest.mark.parametrize("nnp", [True, False], ids=["late", "early"])
def test_default_profile_runs_ordinary_programs(make_bundle, nnp):
    caps = list(defaults.DEFAULT_CAPABILITIES)
    r = run_container(
        make_bundle(["true"]),
        ["sh", "-c", BASICS],
        process={
            "noNewPrivileges": nnp,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        },
        linux={"seccomp": default_profile()},
    )
    assert r.status == 0, r.err
    assert r.out.split() == ["hello", "ls-ok", "1", "0", "date-ok", "subshell", "ps-ok"]


def _privileged_run(bundle, seccomp):
    caps = SYS_ADMIN_CAPS
    linux = {"seccomp": seccomp} if seccomp else {}
    return run_container(
        bundle,
        ["sh", "-c", PRIVILEGED],
        process={
            "noNewPrivileges": True,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        },
        linux=linux,
    )


def test_default_profile_denies_unshare_and_mount_even_with_cap_sys_admin(make_bundle):
    bundle = make_bundle(["true"])
    control = _privileged_run(bundle, None)
    assert "unshare=0" in control.out and "mount=0" in control.out, control.err
    r = _privileged_run(bundle, default_profile())
    assert r.out.split() == ["unshare=1", "mount=1"], r.err
    assert "unshare: unshare(0x4000000): Operation not permitted" in r.err
    assert "mount: permission denied" in r.err  # busybox's words for EPERM


@pytest.mark.parametrize("nnp", [True, False], ids=["late-with-nnp", "early-without-nnp"])
def test_the_cli_compiles_a_profile_once_and_loads_it_raw(oci, make_bundle, nnp):
    """pinnace-oci compiles each distinct profile once (runtime.seccomp.compiled) and the
    init loads the cached BPF with seccomp(2): the filter must act as libseccomp's does,
    for `run`, again from the cache, and for `exec`."""
    from runtime import seccomp

    def edit(config):
        config["process"]["noNewPrivileges"] = nnp
        config["linux"]["seccomp"] = DENY_MKDIR

    bundle = make_bundle(["sh", "-c", MKDIR_SCRIPT], edit=edit)
    for cid in ("first", "cached"):
        res = oci("run", "--bundle", str(bundle), cid, check=False)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == ["rc=1", "ok", "Seccomp:\t2"], res.stdout
        assert "Operation not permitted" in res.stderr
    cache = oci.root / "@seccomp"
    (entry,) = cache.iterdir()
    assert entry.suffix == ".bpf"
    assert entry.stat().st_mode & 0o777 == 0o600
    with seccomp.Filter(seccomp.plan_seccomp(DENY_MKDIR)) as f:
        assert entry.read_bytes() == f.export_bpf()

    sleeper = make_bundle(["sleep", "100"], edit=edit)
    oci("run", "--detach", "--bundle", str(sleeper), "long")
    res = oci("exec", "long", "sh", "-c", "mkdir /tmp/x; echo rc=$?", check=False)
    assert res.stdout == "rc=1\n", res.stderr
    assert len(list(cache.iterdir())) == 1  # the same program: the same entry
