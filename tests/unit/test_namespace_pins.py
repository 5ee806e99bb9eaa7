"""pin/unpin decisions, against a recording fake of the syscall layer."""

import errno

import pytest

from namespaces import syscalls as sc
from namespaces.handles import NamespaceError, pin, unpin
from tests.fakes import RecordingSyscalls


def test_pin_is_a_plain_bind_of_the_ns_file(tmp_path):
    fake = RecordingSyscalls()
    pin("/proc/42/ns/net", tmp_path / "net", fake)
    assert fake.calls == [
        ("mount", ("/proc/42/ns/net", str(tmp_path / "net"), None, sc.MS_BIND, None))
    ]
    assert (tmp_path / "net").exists()


def test_failed_pin_removes_its_file(tmp_path):
    fake = RecordingSyscalls(mount=(errno.EPERM,))
    with pytest.raises(NamespaceError) as exc:
        pin("/proc/42/ns/net", tmp_path / "net", fake)
    assert exc.value.filename == str(tmp_path / "net")
    assert not (tmp_path / "net").exists()


def test_unpin_detaches_and_tolerates_not_mounted(tmp_path):
    target = tmp_path / "net"
    target.touch()
    fake = RecordingSyscalls(umount2=(errno.EINVAL,))
    unpin(target, fake)
    assert fake.calls == [("umount2", (str(target), sc.MNT_DETACH))]
    assert not target.exists()


def test_unpin_reports_busy(tmp_path):
    target = tmp_path / "net"
    target.touch()
    with pytest.raises(NamespaceError):
        unpin(target, RecordingSyscalls(umount2=(errno.EBUSY,)))
