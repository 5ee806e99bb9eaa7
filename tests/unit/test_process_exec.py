"""exec_process's pure parts: PATH lookup inside a root, the environment, which fds get closed."""

import errno
import os

import pytest

from namespaces.syscalls import SyscallError
from runtime import process as P
from runtime.errors import ExecLookupError
from tests.fakes import RecordingSyscalls


@pytest.fixture
def root(tmp_path):
    """A small rootfs: /bin/tool (executable), /bin/data (not), /usr/bin -> /bin (absolute)."""
    r = tmp_path / "rootfs"
    (r / "bin").mkdir(parents=True)
    (r / "work").mkdir()
    (r / "usr").mkdir()
    for name, mode in (("tool", 0o755), ("data", 0o644)):
        (r / "bin" / name).write_text("#!/bin/sh\n")
        os.chmod(r / "bin" / name, mode)
    (r / "work" / "local").write_text("#!/bin/sh\n")
    os.chmod(r / "work" / "local", 0o700)
    os.symlink("/bin", r / "usr" / "bin")
    # a host directory the rootfs must never reach through its absolute symlink
    return str(r)


def lookup(name, path, root, cwd="/"):
    return P.lookup_executable(name, path, root=root, cwd=cwd)


def test_found_in_path(root):
    assert lookup("tool", "/sbin:/bin", root) == "/bin/tool"


def test_absolute_symlinked_path_entry_resolves_inside_the_root(root):
    assert lookup("tool", "/usr/bin", root) == "/usr/bin/tool"


def test_path_entries_that_are_not_executable_are_skipped(root):
    with pytest.raises(ExecLookupError) as info:
        lookup("data", "/bin", root)
    assert str(info.value) == 'exec: "data": executable file not found in $PATH'
    assert info.value.exit_code == 127


def test_not_found_is_runc_s_message_and_127(root):
    with pytest.raises(ExecLookupError) as info:
        lookup("nope", "/bin:/usr/bin", root)
    assert str(info.value) == 'exec: "nope": executable file not found in $PATH'
    assert info.value.exit_code == 127


def test_no_path_finds_nothing_by_bare_name(root):
    with pytest.raises(ExecLookupError):
        lookup("tool", None, root)
    with pytest.raises(ExecLookupError):
        lookup("tool", "", root)


def test_empty_path_entry_is_the_cwd(root):
    assert lookup("local", "/bin::", root, cwd="/work") == "./local"
    assert lookup("local", ":/bin", root, cwd="/work") == "./local"


def test_names_with_a_slash_are_not_searched(root):
    assert lookup("/bin/tool", "", root) == "/bin/tool"
    assert lookup("./local", "", root, cwd="/work") == "./local"
    assert lookup("../bin/tool", "", root, cwd="/work") == "../bin/tool"


def test_a_direct_path_that_is_missing_or_not_executable(root):
    with pytest.raises(ExecLookupError) as info:
        lookup("/bin/nope", "/bin", root)
    assert str(info.value) == 'exec: "/bin/nope": stat /bin/nope: no such file or directory'
    assert info.value.exit_code == 127
    with pytest.raises(ExecLookupError) as info:
        lookup("/bin/data", "/bin", root)
    assert str(info.value) == 'exec: "/bin/data": permission denied'
    assert info.value.exit_code == 126
    with pytest.raises(ExecLookupError) as info:
        lookup("/bin", "/bin", root)
    assert info.value.exit_code == 126


def test_lookup_never_leaves_the_root(root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil").write_text("#!/bin/sh\n")
    os.chmod(outside / "evil", 0o755)
    with pytest.raises(ExecLookupError):
        lookup("evil", f"/../../{outside.name}:{outside}", root)


def test_env_value_last_one_wins():
    assert P._env_value(["PATH=/a", "X=1", "PATH=/b"], "PATH") == "/b"
    assert P._env_value(["PATHX=/a"], "PATH") is None


def plan_with(env, uid=0):
    return P.plan_process(
        {"args": ["sh"], "cwd": "/", "env": env, "user": {"uid": uid, "gid": 0}}, {}, rootfs=None
    )


def test_exec_environment_keeps_order_semantics_and_adds_home():
    env = P.exec_environment(plan_with(["A=1", "B=x=y", "A=2"]))
    assert env["A"] == "2" and env["B"] == "x=y"
    assert env["HOME"] == "/root"  # uid 0 in this host's /etc/passwd
    assert P.exec_environment(plan_with(["HOME=/home/me"]))["HOME"] == "/home/me"
    assert P.exec_environment(plan_with([], uid=4242424))["HOME"] == "/"


def test_close_fds_spares_preserved_and_kept(monkeypatch):
    made = []
    monkeypatch.setattr(os, "set_inheritable", lambda fd, v: made.append((fd, v)))
    sys = RecordingSyscalls()
    P.close_fds(2, sys=sys, keep_fds=(9, 7, 2, 9))
    assert made == [(3, True), (4, True), (7, False), (9, False)]
    assert sys.calls == [
        ("close_range", (5, 6, 0)),
        ("close_range", (8, 8, 0)),
        ("close_range", (10, P.MAX_FD, 0)),
    ]


def test_close_fds_adjacent_kept_fds(monkeypatch):
    monkeypatch.setattr(os, "set_inheritable", lambda fd, v: None)
    sys = RecordingSyscalls()
    P.close_fds(0, sys=sys, keep_fds=(3, 4))
    assert sys.calls == [("close_range", (5, P.MAX_FD, 0))]


def test_close_fds_without_close_range_walks_proc(monkeypatch):
    closed: list[int] = []
    monkeypatch.setattr(os, "set_inheritable", lambda fd, v: None)
    monkeypatch.setattr(os, "listdir", lambda p: ["0", "1", "2", "3", "5", "8"])
    monkeypatch.setattr(os, "close", closed.append)
    sys = RecordingSyscalls(close_range=(errno.ENOSYS,))
    P.close_fds(0, sys=sys, keep_fds=(5,))
    assert closed == [3, 8]


def test_close_fds_other_errors_propagate(monkeypatch):
    monkeypatch.setattr(os, "set_inheritable", lambda fd, v: None)
    sys = RecordingSyscalls(close_range=(errno.EINVAL,))
    with pytest.raises(SyscallError):
        P.close_fds(0, sys=sys)
