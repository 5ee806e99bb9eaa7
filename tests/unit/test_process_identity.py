"""apply_identity's order of steps and its error messages, with every kernel-facing call recorded."""

import errno
import os
import resource

import pytest

from namespaces.syscalls import SyscallError
from runtime import capabilities as C
from runtime import process as P
from runtime import seccomp as S
from runtime.errors import ProcessSetupError
from tests.fakes import RecordingSyscalls


class Recorder:
    """Replaces the os/resource/capability/seccomp calls of apply_identity with records."""

    def __init__(self, monkeypatch, sys):
        self.events: list[tuple] = []
        self.cwd = "/"
        self.chdir_denied_once = False
        ev = self.events

        def prctl(option, arg2=0, arg3=0):
            ev.append(("prctl", option, arg2))
            return 0

        sys.prctl = prctl
        sys.personality = lambda p: ev.append(("personality", p))
        monkeypatch.setattr(resource, "prlimit", lambda pid, r, lim: ev.append(("rlimit", r, lim)))
        monkeypatch.setattr(os, "setgroups", lambda g: ev.append(("setgroups", tuple(g))))
        monkeypatch.setattr(os, "setresgid", lambda *a: ev.append(("setresgid", a)))
        monkeypatch.setattr(os, "setresuid", lambda *a: ev.append(("setresuid", a)))
        monkeypatch.setattr(os, "umask", lambda m: ev.append(("umask", m)))
        monkeypatch.setattr(os, "getcwd", lambda: self.cwd)

        def chdir(path):
            if self.chdir_denied_once:
                self.chdir_denied_once = False
                ev.append(("chdir-denied", path))
                raise PermissionError(errno.EACCES, "Permission denied", path)
            ev.append(("chdir", path))

        monkeypatch.setattr(os, "chdir", chdir)
        monkeypatch.setattr(P, "_setgroups_allowed", lambda: True)
        monkeypatch.setattr(C, "drop_bounding", lambda plan, sys: ev.append(("bounding",)))
        monkeypatch.setattr(C, "set_capabilities", lambda plan, sys: ev.append(("capset",)))
        monkeypatch.setattr(C, "raise_ambient", lambda plan, sys: ev.append(("ambient",)))
        monkeypatch.setattr(S, "load", lambda prog, sys: ev.append(("seccomp",)))

    def names(self):
        return [e[0] for e in self.events]


def make_plan(**process_changes):
    process = {
        "args": ["sh"],
        "cwd": "/work",
        "user": {"uid": 1000, "gid": 100, "umask": 0o022, "additionalGids": [10]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024}],
        "noNewPrivileges": False,
    }
    process.update(process_changes)
    linux = {
        "personality": {"domain": "LINUX32"},
        "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"},
    }
    return P.plan_process(process, linux, rootfs=None)


def test_order_without_no_new_privs_loads_seccomp_before_dropping_capabilities(monkeypatch):
    sys = RecordingSyscalls()
    rec = Recorder(monkeypatch, sys)
    P.apply_identity(make_plan(), sys=sys)
    assert rec.events == [
        ("rlimit", resource.RLIMIT_NOFILE, (512, 1024)),
        ("personality", 8),
        ("seccomp",),
        ("chdir", "/work"),
        ("bounding",),
        ("prctl", P.PR_SET_KEEPCAPS, 1),
        ("setgroups", (10,)),
        ("setresgid", (100, 100, 100)),
        ("setresuid", (1000, 1000, 1000)),
        ("prctl", P.PR_SET_KEEPCAPS, 0),
        ("capset",),
        ("ambient",),
        ("umask", 0o022),
    ]


def test_with_no_new_privs_seccomp_waits_for_exec_and_nnp_is_last(monkeypatch):
    sys = RecordingSyscalls()
    rec = Recorder(monkeypatch, sys)
    P.apply_identity(make_plan(noNewPrivileges=True), sys=sys)
    assert "seccomp" not in rec.names()
    assert rec.events[-1] == ("prctl", P.PR_SET_NO_NEW_PRIVS, 1)


def test_cwd_denied_to_root_is_retried_as_the_user(monkeypatch):
    sys = RecordingSyscalls()
    rec = Recorder(monkeypatch, sys)
    rec.chdir_denied_once = True
    P.apply_identity(make_plan(), sys=sys)
    names = rec.names()
    assert names.index("chdir-denied") < names.index("setresuid") < names.index("chdir")


def test_cwd_outside_the_root_is_refused(monkeypatch):
    sys = RecordingSyscalls()
    rec = Recorder(monkeypatch, sys)
    rec.cwd = "(unreachable)/tmp/host"
    with pytest.raises(ProcessSetupError) as info:
        P.apply_identity(make_plan(), sys=sys)
    assert info.value.field == "process.cwd"
    assert "outside of the container's root" in str(info.value)
    assert "capset" not in rec.names()  # refused before the process is finished


def test_getcwd_enoent_is_refused_too(monkeypatch):
    sys = RecordingSyscalls()
    Recorder(monkeypatch, sys)

    def gone():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(os, "getcwd", gone)
    with pytest.raises(ProcessSetupError, match="outside of the container's root"):
        P.apply_identity(make_plan(), sys=sys)


def test_unset_umask_is_left_alone(monkeypatch):
    sys = RecordingSyscalls()
    rec = Recorder(monkeypatch, sys)
    P.apply_identity(make_plan(user={"uid": 0, "gid": 0}), sys=sys)
    assert "umask" not in rec.names()


def test_setgroups_denied_skips_groups_unless_asked(monkeypatch):
    sys = RecordingSyscalls()
    rec = Recorder(monkeypatch, sys)
    monkeypatch.setattr(P, "_setgroups_allowed", lambda: False)
    P.apply_identity(make_plan(user={"uid": 0, "gid": 0}), sys=sys)
    assert "setgroups" not in rec.names()
    with pytest.raises(ProcessSetupError) as info:
        P.apply_identity(make_plan(), sys=sys)
    assert info.value.field == "process.user.additionalGids"


def test_unmapped_uid_error_says_so(monkeypatch):
    sys = RecordingSyscalls()
    Recorder(monkeypatch, sys)

    def fail(*a):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "setresuid", fail)
    with pytest.raises(ProcessSetupError) as info:
        P.apply_identity(make_plan(), sys=sys)
    assert info.value.field == "process.user.uid"
    assert "uid 1000" in str(info.value) and "not mapped" in str(info.value)


def test_personality_failure_names_the_field(monkeypatch):
    sys = RecordingSyscalls()
    Recorder(monkeypatch, sys)

    def fail(p):
        raise SyscallError(errno.EINVAL, "personality")

    sys.personality = fail  # type: ignore[attr-defined]
    with pytest.raises(ProcessSetupError) as info:
        P.apply_identity(make_plan(), sys=sys)
    assert info.value.field == "linux.personality.domain"


def test_raising_the_hard_rlimit_names_the_limit_and_the_capability(monkeypatch):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = make_plan(
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": 1, "hard": hard + 1}],
    )

    def refuse(pid, r, lim):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(resource, "prlimit", refuse)
    with pytest.raises(ProcessSetupError) as info:
        P.apply_rlimits(plan.rlimits)
    msg = str(info.value)
    assert info.value.field == "process.rlimits[0]"
    assert "RLIMIT_NOFILE" in msg and "CAP_SYS_RESOURCE" in msg


def test_rlimit_infinity_is_translated():
    assert P._to_rlim(P.RLIM_INFINITY_OCI) == resource.RLIM_INFINITY
    assert P._above(resource.RLIM_INFINITY, 10)
    assert not P._above(10, resource.RLIM_INFINITY)
    assert P._above(11, 10) and not P._above(10, 10)


def test_oom_score_adj_range_is_checked_before_writing():
    from runtime.errors import SpecError

    with pytest.raises(SpecError) as info:
        P.apply_oom_score_adj(os.getpid(), 1001)
    assert info.value.field == "process.oomScoreAdj"


def test_preload_loads_libseccomp_only_when_the_plan_needs_it(monkeypatch):
    loaded = []
    monkeypatch.setattr(S, "preload", lambda: loaded.append("libseccomp"))
    P.preload(P.plan_process({"args": ["sh"], "cwd": "/"}, {}, rootfs=None))
    assert loaded == []
    P.preload(make_plan())
    assert loaded == ["libseccomp"]
