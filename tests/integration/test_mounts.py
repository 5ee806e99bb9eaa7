"""Mount helpers against the real kernel, inside a private mount namespace of a child."""

import errno
import os
from pathlib import Path

from namespaces import syscalls as sc
from namespaces.handles import Kind, create_pinned, unpin
from namespaces.mounts import Mounter
from namespaces.userns import IDMap, new_userns_fd
from tests.childproc import in_child


def _private_ns():
    s = sc.libc()
    s.unshare(sc.CLONE_NEWNS)
    s.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)
    return Mounter(s)


def _writable(path):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        assert exc.errno == errno.EROFS, exc
        return False
    os.close(fd)
    os.unlink(path)
    return True


def _tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    target = tmp_path / "target"
    target.mkdir()
    return str(src), str(target)


def test_recursive_readonly_covers_submounts(tmp_path, require_root):
    src, target = _tree(tmp_path)

    def body():
        m = _private_ns()
        m.sys.mount("tmpfs", f"{src}/sub", "tmpfs", 0, "size=1m")
        m.bind(src, target)
        m.make_readonly(target, recursive=True)
        return _writable(f"{target}/x"), _writable(f"{target}/sub/x"), _writable(f"{src}/sub/x")

    assert in_child(body) == (False, False, True)


def test_plain_readonly_leaves_submounts_writable(tmp_path, require_root):
    """Why recursive read-only exists: the old remount only reaches the top mount."""
    src, target = _tree(tmp_path)

    def body():
        m = _private_ns()
        m.sys.mount("tmpfs", f"{src}/sub", "tmpfs", 0, "size=1m")
        m.bind(src, target)
        m.make_readonly(target, recursive=False)
        return _writable(f"{target}/x"), _writable(f"{target}/sub/x")

    assert in_child(body) == (False, True)


def test_idmapped_bind_shifts_ownership(tmp_path, require_root):
    src, target = _tree(tmp_path)
    os.chown(f"{src}/sub", 1000, 1000)

    def body():
        m = _private_ns()
        shift = [IDMap(0, 100000, 65536)]
        userns = new_userns_fd(shift, shift, m.sys)
        m.idmapped_bind(src, target, userns)
        st_top, st_sub = os.stat(target), os.stat(f"{target}/sub")
        m.unmount(target)
        return (st_top.st_uid, st_sub.st_uid, st_sub.st_gid)

    assert in_child(body) == (100000, 101000, 101000)


def test_propagation_names(tmp_path, require_root):
    src, target = _tree(tmp_path)

    def body():
        m = _private_ns()
        m.bind(src, target)
        m.set_propagation(target, "rshared")
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        line = next(ln for ln in mountinfo if ln.split()[4] == target)
        try:
            m.set_propagation(target, "bogus")
        except ValueError as exc:
            return "shared:" in line, str(exc)
        return "shared:" in line, None

    shared, err = in_child(body)
    assert shared
    assert "unknown propagation 'bogus'" in err


def test_pins_survive_in_other_mount_namespaces(tmp_path, require_root):
    pins = create_pinned([Kind.NET], tmp_path)
    try:
        assert in_child(lambda: os.path.exists(pins[Kind.NET]))
    finally:
        unpin(pins[Kind.NET])
