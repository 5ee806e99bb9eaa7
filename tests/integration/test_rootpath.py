"""Safe path resolution inside a root, against hostile trees on the real filesystem.

Every case runs twice: with openat2(RESOLVE_IN_ROOT) and with the portable
component walk used on kernels without openat2.
"""

import errno
import os

import pytest

from namespaces import syscalls as sc
from namespaces.rootpath import PathEscapeError, RootFS, lexical_clean


class NoOpenat2(sc.Libc):
    """The real kernel, as an old one without openat2 would answer."""

    def openat2(self, dirfd, path, flags, mode, resolve):
        raise sc.SyscallError(errno.ENOSYS, "openat2", path)


@pytest.fixture(params=["openat2", "walk"])
def make_root(request, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("in-root passwd\n")
    opened = []

    def make():
        r = RootFS(root, None if request.param == "openat2" else NoOpenat2())
        opened.append(r)
        return r

    yield make, root, outside
    for r in opened:
        r.close()


def _read(fd):
    try:
        return os.read(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY), 4096).decode()
    finally:
        os.close(fd)


def test_dotdot_is_clamped_at_root(make_root):
    make, _root, _ = make_root
    r = make()
    fd = r.open("../../../../etc/passwd", os.O_RDONLY)
    with os.fdopen(fd) as f:
        assert f.read() == "in-root passwd\n"
    assert r.resolve("../../../etc/passwd") == "etc/passwd"


def test_absolute_symlink_is_resolved_in_root(make_root):
    make, root, outside = make_root
    os.symlink(str(outside / "secret"), root / "link")  # host path: must not be reached
    os.symlink("/etc/passwd", root / "abs")
    r = make()
    with os.fdopen(r.open("abs", os.O_RDONLY)) as f:
        assert f.read() == "in-root passwd\n"
    with pytest.raises(FileNotFoundError):
        r.open("link", os.O_RDONLY)


def test_relative_symlink_chain_escape(make_root):
    make, root, _outside = make_root
    (root / "a").mkdir()
    os.symlink("../..", root / "a" / "up")  # naively: tmp_path
    os.symlink("up/outside/secret", root / "a" / "chain")
    assert (root / "a" / "chain").read_text() == "host secret\n"  # the host follows it out
    r = make()
    with pytest.raises(FileNotFoundError):
        r.open("a/chain", os.O_RDONLY)
    assert r.resolve("a/up/etc") == "etc"


def test_symlinked_directory_then_create(make_root):
    """symlink-then-write: a dir symlink pointing out of the root gets a file in-root."""
    make, root, outside = make_root
    os.symlink(str(outside), root / "evil")
    r = make()
    fd = r.mkdir_all("evil/sub")
    os.close(fd)
    assert (root / str(outside).lstrip("/") / "sub").is_dir()
    assert not (outside / "sub").exists()
    fd = r.open("evil/sub/new", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x")
    os.close(fd)
    assert not (outside / "sub").exists()
    assert (root / str(outside).lstrip("/") / "sub" / "new").read_bytes() == b"x"


def test_no_follow_opens_the_link_itself(make_root):
    make, root, outside = make_root
    os.symlink(str(outside / "secret"), root / "link")
    r = make()
    fd = r.open("link", os.O_PATH, follow_last=False)
    try:
        assert os.readlink("", dir_fd=fd) == str(outside / "secret")
    finally:
        os.close(fd)


def test_symlink_loop(make_root):
    make, root, _ = make_root
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    r = make()
    with pytest.raises(OSError) as exc:
        r.open("a", os.O_RDONLY)
    assert exc.value.errno == errno.ELOOP


def test_file_in_the_middle(make_root):
    make, _, _ = make_root
    r = make()
    with pytest.raises(NotADirectoryError):
        r.mkdir_all("etc/passwd/x")


def test_ensure_beneath_refuses_escapes(make_root):
    make, _, _ = make_root
    r = make()
    assert r.ensure_beneath("a/b/../c") == "a/c"
    for bad in ("../x", "a/../../x", "/../../etc"):
        with pytest.raises(PathEscapeError) as exc:
            r.ensure_beneath(bad)
        assert exc.value.filename == bad


def test_lexical_clean():
    assert lexical_clean("/../../a/./b/../c") == "a/c"
    assert lexical_clean("..") == ""
