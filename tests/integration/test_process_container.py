"""apply_sysctls, apply_identity and exec_process on the real kernel, running busybox.

Each test runs in a forked child with a private mount namespace: it mounts
/proc in a `make_bundle` rootfs, forks the would-be container process, which
chroots into the rootfs, applies the plan and execs busybox; stdout, stderr
and the exit status come back. The harness is shared with the seccomp tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime import capabilities as C
from runtime import process as P
from tests.childproc import in_private_mntns

pytestmark = pytest.mark.usefixtures("require_root")

SETUP_FAILED = 99  # the harness's exit status when apply_* raised (traceback on stderr)
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Result:
    status: int
    out: str
    err: str


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def _container(rootfs, process, linux, preserve_fds, unshare_flags, before_chroot, keep_fds):
    from namespaces import syscalls as sc

    s = sc.libc()
    if unshare_flags:
        s.unshare(unshare_flags)
    s.mount(
        "proc",
        os.path.join(rootfs, "proc"),
        "proc",
        sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
        None,
    )
    plan = P.plan_process(process, linux, rootfs=rootfs)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            P.preload(plan)  # as the init does: nothing can be imported after the chroot
            if before_chroot is not None:
                before_chroot()
            os.chroot(rootfs)
            os.chdir("/")
            P.apply_sysctls(plan)
            P.apply_identity(plan, sys=s)
            P.exec_process(plan, preserve_fds=preserve_fds, sys=s, keep_fds=keep_fds)
        except BaseException:
            os.write(2, traceback.format_exc().encode())
        os._exit(SETUP_FAILED)
    os.close(out_w)
    os.close(err_w)
    out = _read_all(out_r)
    err = _read_all(err_r)
    _, status = os.waitpid(pid, 0)
    return Result(os.waitstatus_to_exitcode(status), out, err)


def run_container(
    bundle: Path,
    args: list[str],
    *,
    process: dict | None = None,
    linux: dict | None = None,
    preserve_fds: int = 0,
    unshare_flags: int = 0,
    before_chroot=None,
    keep_fds: tuple[int, ...] = (),
) -> Result:
    """Run `args` as the container process of `bundle` (a make_bundle dir) and collect it."""
    proc = {"args": args, "env": [PATH_ENV], "cwd": "/", "user": {"uid": 0, "gid": 0}}
    proc.update(process or {})
    result: Result = in_private_mntns(
        _container,
        str(bundle / "rootfs"),
        proc,
        linux or {},
        preserve_fds,
        unshare_flags,
        before_chroot,
        keep_fds,
    )
    return result


def status_sets(text: str) -> dict[str, int]:
    return C.read_status_sets(text)


def status_field(text: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.*)$", text, re.M)
    assert m, f"{name} not in {text!r}"
    return m.group(1).strip()


def has_cap_sys_resource() -> bool:
    sets = C.read_status_sets(Path("/proc/self/status").read_text())
    return bool(sets["effective"] >> C.CAPABILITIES["CAP_SYS_RESOURCE"] & 1)


# --- identity -------------------------------------------------------------------------------


def test_user_groups_umask_rlimits_and_home(make_bundle):
    r = run_container(
        make_bundle(["true"]),
        ["sh", "-c", "id -u; id -g; id -G; umask; ulimit -n; ulimit -Hn; echo $HOME; pwd"],
        process={
            "cwd": "/tmp",
            "user": {"uid": 1000, "gid": 1000, "umask": 0o027, "additionalGids": [10, 20]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}],
        },
    )
    assert r.status == 0, r.err
    uid, gid, groups, umask, soft, hard, home, cwd = r.out.split("\n")[:8]
    assert (uid, gid) == ("1000", "1000")
    assert set(groups.split()) == {"1000", "10", "20"}  # id -G lists the gid first
    assert umask == "0027"
    assert (soft, hard) == ("100", "200")
    assert home == "/home/app"  # from the container's /etc/passwd
    assert cwd == "/tmp"


def test_no_signal_is_ignored_or_blocked_in_the_container(make_bundle):
    # the runtime is Python, which ignores SIGPIPE and SIGXFSZ: none of that may leak
    r = run_container(make_bundle(["true"]), ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])
    assert r.status == 0, r.err
    assert r.out.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]


def test_root_keeps_no_supplementary_groups_of_the_runtime(make_bundle):
    r = run_container(make_bundle(["true"]), ["id", "-G"])
    assert r.status == 0, r.err
    assert r.out.split() == ["0"]


def test_capability_sets_of_a_non_root_process(make_bundle):
    caps = {
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"],
        "permitted": ["CAP_CHOWN", "CAP_NET_RAW"],
        "effective": ["CAP_CHOWN"],
        "inheritable": ["CAP_CHOWN", "CAP_NET_RAW"],
        "ambient": ["CAP_NET_RAW"],
    }
    r = run_container(
        make_bundle(["true"]),
        ["cat", "/proc/self/status"],
        process={"user": {"uid": 1000, "gid": 1000}, "capabilities": caps},
    )
    assert r.status == 0, r.err
    got = status_sets(r.out)
    m = C.mask_of
    # after execve a non-root process keeps exactly its ambient set in permitted and effective
    assert got == {
        "bounding": m(caps["bounding"]),
        "inheritable": m(caps["inheritable"]),
        "permitted": m(["CAP_NET_RAW"]),
        "effective": m(["CAP_NET_RAW"]),
        "ambient": m(["CAP_NET_RAW"]),
    }


def test_capability_sets_of_root_with_no_new_privs(make_bundle):
    caps = {
        "bounding": ["CAP_CHOWN", "CAP_KILL"],
        "permitted": ["CAP_CHOWN"],
        "effective": ["CAP_CHOWN"],
    }
    r = run_container(
        make_bundle(["true"]),
        ["cat", "/proc/self/status"],
        process={"capabilities": caps, "noNewPrivileges": True},
    )
    assert r.status == 0, r.err
    got = status_sets(r.out)
    assert got["bounding"] == C.mask_of(["CAP_CHOWN", "CAP_KILL"])
    # root would gain its bounding set at exec; no_new_privs caps it at what it had
    assert got["permitted"] == got["effective"] == C.mask_of(["CAP_CHOWN"])
    assert got["inheritable"] == got["ambient"] == 0
    assert status_field(r.out, "NoNewPrivs") == "1"


def test_no_new_privs_off_by_default(make_bundle):
    r = run_container(make_bundle(["true"]), ["cat", "/proc/self/status"])
    assert r.status == 0, r.err
    assert status_field(r.out, "NoNewPrivs") == "0"
    assert status_sets(r.out)["bounding"] == 0  # no capabilities section: none at all


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="LINUX32 reports i686 on x86_64")
def test_personality_linux32(make_bundle):
    r = run_container(
        make_bundle(["true"]), ["uname", "-m"], linux={"personality": {"domain": "LINUX32"}}
    )
    assert r.status == 0, r.err
    assert r.out.strip() == "i686"


@pytest.mark.skipif(has_cap_sys_resource(), reason="with CAP_SYS_RESOURCE the raise succeeds")
def test_raising_a_hard_rlimit_fails_clearly(make_bundle):
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    r = run_container(
        make_bundle(["true"]),
        ["true"],
        process={"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 64, "hard": hard + 1}]},
    )
    assert r.status == SETUP_FAILED
    assert "process.rlimits[0]: cannot set RLIMIT_NOFILE" in r.err
    assert "CAP_SYS_RESOURCE" in r.err


# --- sysctls --------------------------------------------------------------------------------


def test_sysctls_in_new_ipc_and_net_namespaces(make_bundle):
    from namespaces import syscalls as sc

    host_shmmax = Path("/proc/sys/kernel/shmmax").read_text()
    host_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    r = run_container(
        make_bundle(["true"]),
        ["cat", "/proc/sys/kernel/shmmax", "/proc/sys/net/ipv4/ip_forward"],
        linux={
            "namespaces": [{"type": "mount"}, {"type": "ipc"}, {"type": "network"}],
            "sysctl": {"kernel.shmmax": "123456789", "net/ipv4/ip_forward": "1"},
        },
        unshare_flags=sc.CLONE_NEWIPC | sc.CLONE_NEWNET,
    )
    assert r.status == 0, r.err
    assert r.out.split() == ["123456789", "1"]
    assert Path("/proc/sys/kernel/shmmax").read_text() == host_shmmax
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == host_forward


def test_sysctl_write_failure_names_the_key(make_bundle):
    from namespaces import syscalls as sc

    r = run_container(
        make_bundle(["true"]),
        ["true"],
        linux={
            "namespaces": [{"type": "mount"}, {"type": "network"}],
            "sysctl": {"net.ipv4.no_such_knob": "1"},
        },
        unshare_flags=sc.CLONE_NEWNET,
    )
    assert r.status == SETUP_FAILED
    assert (
        'linux.sysctl["net.ipv4.no_such_knob"]: cannot open /proc/sys/net/ipv4/no_such_knob'
        in r.err
    )


# --- file descriptors and the working directory ---------------------------------------------


def test_only_stdio_and_preserved_fds_reach_the_program(make_bundle):
    def leak_fds():
        keep = os.open("/", os.O_PATH | os.O_CLOEXEC)
        os.dup2(keep, 9, inheritable=False)  # the caller's own fd, needed until exec
        preserved = os.open("/", os.O_RDONLY | os.O_CLOEXEC)
        os.dup2(preserved, 3, inheritable=False)  # close-on-exec: exec_process clears it
        leaked = os.open("/", os.O_RDONLY)
        os.dup2(leaked, 7, inheritable=True)  # an inheritable leak: must be closed
        os.dup2(leaked, 300, inheritable=True)

    r = run_container(
        make_bundle(["true"]),
        ["ls", "-l", "/proc/self/fd"],
        preserve_fds=1,
        before_chroot=leak_fds,
        keep_fds=(9,),
    )
    assert r.status == 0, r.err
    fds = {}
    for line in r.out.splitlines():
        m = re.search(r" (\d+) -> (.*)$", line)
        if m:
            fds[int(m.group(1))] = m.group(2)
    own = [fd for fd, target in fds.items() if re.fullmatch(r"/proc/\d+/fd", target)]
    for fd in own:  # ls's own handle on the directory it lists
        del fds[fd]
    assert sorted(fds) == [0, 1, 2, 3]


def test_cwd_through_a_leaked_host_fd_is_refused(make_bundle, tmp_path):
    host_dir = tmp_path / "host-secret"
    host_dir.mkdir()

    def leak_dir():
        fd = os.open(str(host_dir), os.O_RDONLY | os.O_DIRECTORY)
        os.dup2(fd, 42, inheritable=True)

    r = run_container(
        make_bundle(["true"]),
        ["sh", "-c", "echo EXECUTED"],
        process={"cwd": "/proc/self/fd/42"},
        before_chroot=leak_dir,
    )
    assert r.status == SETUP_FAILED
    assert "EXECUTED" not in r.out
    assert (
        "process.cwd: the working directory '/proc/self/fd/42' is outside of the container's root"
        in r.err
    )


def test_missing_cwd_is_an_error(make_bundle):
    r = run_container(make_bundle(["true"]), ["true"], process={"cwd": "/no/such/dir"})
    assert r.status == SETUP_FAILED
    assert "process.cwd: cannot change to /no/such/dir" in r.err


# --- exec -------------------------------------------------------------------------------------


def test_program_not_in_path_is_runc_s_message_and_127(make_bundle):
    r = run_container(make_bundle(["true"]), ["nope"])
    assert r.status == 127
    assert r.err == 'exec: "nope": executable file not found in $PATH\n'


def test_program_that_is_not_executable_is_126(make_bundle):
    r = run_container(make_bundle(["true"]), ["/etc/passwd"])
    assert r.status == 126
    assert r.err == 'exec: "/etc/passwd": permission denied\n'


def test_path_comes_from_the_container_env_not_the_runtime(make_bundle):
    bundle = make_bundle(["true"])
    (bundle / "rootfs" / "opt" / "tools").mkdir(parents=True)
    os.symlink("/bin/busybox", bundle / "rootfs" / "opt" / "tools" / "hello-tool")
    r = run_container(bundle, ["hello-tool", "echo", "found"], process={"env": ["PATH=/opt/tools"]})
    assert r.status == 127 and "hello-tool" in r.err  # busybox does not know that applet name
    r = run_container(
        bundle, ["busybox", "echo", "found"], process={"env": ["PATH=/opt/tools:/bin"]}
    )
    assert (r.status, r.out) == (0, "found\n"), r.err
    r = run_container(bundle, ["busybox", "true"], process={"env": ["PATH=/opt/tools"]})
    assert r.status == 127


def test_environment_reaches_the_program(make_bundle):
    r = run_container(
        make_bundle(["true"]),
        ["env"],
        process={
            "env": [PATH_ENV, "A=1", "B=two words", "A=3"],
            "user": {"uid": 65534, "gid": 65534},
        },
    )
    assert r.status == 0, r.err
    env = dict(line.split("=", 1) for line in r.out.splitlines())
    assert env["A"] == "3" and env["B"] == "two words"
    assert env["HOME"] == "/nonexistent"


# --- oom_score_adj, written by the runtime -------------------------------------------------------


def test_oom_score_adj_raise_and_clamped_lower(spawn):
    child = spawn("sleep", "60", stdout=subprocess.DEVNULL)
    path = Path(f"/proc/{child.pid}/oom_score_adj")
    assert P.apply_oom_score_adj(child.pid, 500) == 500
    assert path.read_text().strip() == "500"
    own = int(Path("/proc/self/oom_score_adj").read_text())
    got = P.apply_oom_score_adj(child.pid, -999)
    if has_cap_sys_resource():
        assert got == -999
    else:
        assert got == own  # clamped: never more protected than the runtime itself
    assert path.read_text().strip() == str(got)


def test_capabilities_above_31_are_set_too(make_bundle):
    """capset takes each set as two 32-bit halves: CAP_BPF (39) and
    CAP_CHECKPOINT_RESTORE (40) live in the second, CAP_CHOWN (0) in the first."""
    names = ["CAP_CHOWN", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]
    caps = {kind: names for kind in ("bounding", "permitted", "effective", "inheritable")}
    caps["ambient"] = names
    r = run_container(
        make_bundle(["true"]),
        ["cat", "/proc/self/status"],
        process={"user": {"uid": 1000, "gid": 1000}, "capabilities": caps},
    )
    assert r.status == 0, r.err
    assert status_sets(r.out) == dict.fromkeys(
        ("bounding", "inheritable", "permitted", "effective", "ambient"), C.mask_of(names)
    )
