"""Mount decisions against a recording fake: which calls, in which order, with which flags."""

import errno

import pytest

from namespaces import syscalls as sc
from namespaces.mounts import AT_FDCWD, Mounter
from tests.fakes import RecordingSyscalls


def test_recursive_readonly_uses_mount_setattr():
    fake = RecordingSyscalls()
    Mounter(fake).make_readonly("/r", recursive=True)
    ((name, args),) = fake.calls
    assert name == "mount_setattr"
    assert args[:3] == (AT_FDCWD, "/r", sc.AT_RECURSIVE)
    assert args[3].attr_set == sc.MOUNT_ATTR_RDONLY


def test_idmapped_bind_is_clone_setattr_move_and_closes_the_tree(monkeypatch):
    closed: list[int] = []
    monkeypatch.setattr("namespaces.mounts.os.close", closed.append)
    fake = RecordingSyscalls(open_tree=7)
    Mounter(fake).idmapped_bind("/src", "/dst", userns_fd=9)
    assert fake.names() == ["open_tree", "mount_setattr", "move_mount"]
    assert fake.calls[1][1][3].userns_fd == 9
    assert fake.calls[2][1] == (7, "", AT_FDCWD, "/dst", sc.MOVE_MOUNT_F_EMPTY_PATH)
    assert closed == [7]


def test_idmapped_bind_failure_still_closes_and_never_attaches(monkeypatch):
    closed: list[int] = []
    monkeypatch.setattr("namespaces.mounts.os.close", closed.append)
    fake = RecordingSyscalls(open_tree=7, mount_setattr=(errno.EINVAL,))
    with pytest.raises(sc.SyscallError):
        Mounter(fake).idmapped_bind("/src", "/dst", userns_fd=9)
    assert "move_mount" not in fake.names()
    assert closed == [7]


def test_mount_attr_and_mounter_are_values():
    a = sc.MountAttr(attr_set=sc.MOUNT_ATTR_IDMAP, userns_fd=9)
    assert a == sc.MountAttr(sc.MOUNT_ATTR_IDMAP, 0, 0, 9)
    assert a != sc.MountAttr()
    assert hash(a) == hash(sc.MountAttr(sc.MOUNT_ATTR_IDMAP, userns_fd=9))
    assert repr(sc.MountAttr()) == "MountAttr(attr_set=0, attr_clr=0, propagation=0, userns_fd=0)"
    fake = RecordingSyscalls()
    assert Mounter(fake) == Mounter(sys=fake)
    assert repr(Mounter(fake)) == f"Mounter(sys={fake!r})"
