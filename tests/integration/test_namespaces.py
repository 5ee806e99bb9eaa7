"""Namespace handles, pins and user-namespace maps against the real kernel."""

import os
import subprocess
from pathlib import Path

import pytest

from namespaces import syscalls as sc
from namespaces.handles import (
    Kind,
    Namespace,
    NamespaceError,
    create_pinned,
    is_pinned,
    pin,
    unpin,
)
from namespaces.userns import IDMap, parse_map, write_maps


def _mounts():
    return Path("/proc/self/mountinfo").read_text()


@pytest.fixture
def pin_dir(tmp_path, require_root):
    d = tmp_path / "pinnace-pins"
    d.mkdir()
    before = _mounts().count(str(d))
    yield d
    for f in d.iterdir():
        unpin(f)
    assert _mounts().count(str(d)) == before


def test_identity_and_kind_checks():
    child = subprocess.Popen(["sleep", "60"])
    try:
        with Namespace.of_process(Kind.NET) as a, Namespace.of_process(Kind.NET, child.pid) as b:
            assert a.is_namespace()
            assert a.same_as(b)  # a child shares our net namespace
            assert a.identity() == b.identity()
    finally:
        child.kill()
        child.wait()
    with pytest.raises(NamespaceError) as exc:
        Namespace.open(Kind.UTS, "/proc/self/ns/net")
    assert exc.value.filename == "/proc/self/ns/net"
    with pytest.raises(NamespaceError):
        Namespace.open(Kind.NET, "/etc/hostname")
    assert Kind.from_name("network") is Kind.NET
    with pytest.raises(ValueError):
        Kind.from_name("bogus")


def test_pinned_namespaces_outlive_their_process(pin_dir):
    pins = create_pinned([Kind.NET, Kind.UTS, Kind.IPC], pin_dir, hostname="pod-a")
    assert set(pins) == {Kind.NET, Kind.UTS, Kind.IPC}
    for path in pins.values():
        assert is_pinned(path)
    with Namespace.open(Kind.NET, pins[Kind.NET]) as pod, Namespace.of_process(Kind.NET) as host:
        assert not pod.same_as(host)
    # Enter the pinned uts+net namespaces from a child: the hostname and the
    # (loopback-only) interfaces are the pod's, not the host's.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            for kind in (Kind.UTS, Kind.NET):
                Namespace.open(kind, pins[kind]).enter()
            links = sorted(os.listdir("/sys/class/net"))  # this /sys shows the caller's netns
            os.write(
                w, f"{os.uname().nodename} {len(os.listdir('/proc/self/fd'))} {links}".encode()
            )
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 4096).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert answer.startswith("pod-a ")
    assert os.uname().nodename != "pod-a"


def test_pinned_time_namespace_is_the_new_one(pin_dir):
    pins = create_pinned([Kind.TIME, Kind.CGROUP], pin_dir)
    for kind in (Kind.TIME, Kind.CGROUP):
        with Namespace.open(kind, pins[kind]) as pod, Namespace.of_process(kind) as host:
            assert not pod.same_as(host), kind


def test_pin_failure_leaves_nothing(pin_dir):
    with pytest.raises(NamespaceError):
        pin("/etc/hostname-does-not-exist", pin_dir / "bad")
    assert not (pin_dir / "bad").exists()


def test_unpin_is_idempotent(pin_dir):
    pins = create_pinned([Kind.NET], pin_dir)
    unpin(pins[Kind.NET])
    unpin(pins[Kind.NET])
    assert not pins[Kind.NET].exists()


def test_create_pinned_refuses_mount_ns(pin_dir):
    with pytest.raises(ValueError):
        create_pinned([Kind.MNT], pin_dir)


def test_write_maps_to_a_real_user_namespace(require_root):
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            sc.libc().unshare(sc.CLONE_NEWUSER)
            os.write(go_w, b"1")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(go_r, 1) == b"1"
        write_maps(pid, [IDMap(0, 200000, 1000)], [IDMap(0, 200000, 1000)], deny_setgroups=True)
        assert parse_map(Path(f"/proc/{pid}/uid_map").read_text()) == [IDMap(0, 200000, 1000)]
        assert Path(f"/proc/{pid}/setgroups").read_text().strip() == "deny"
        with pytest.raises(OSError) as exc:  # a map is written once
            write_maps(pid, [IDMap(0, 300000, 1)], [IDMap(0, 300000, 1)])
        assert exc.value.filename == f"/proc/{pid}/uid_map"
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (go_r, go_w, done_r, done_w):
            os.close(fd)
