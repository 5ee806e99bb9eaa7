"""Applying layer tars into a snapshot directory as root: every entry kind, and hostile archives.

Each hostile test builds a sentinel directory *outside* the snapshot and
asserts it is byte-for-byte, mode-for-mode untouched afterwards. Its
docstring says whether the case is REFUSED (a typed error naming the entry)
or NEUTRALISED (applied inside the snapshot, as a chroot would resolve it).
"""

import errno
import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from overlayfs.errors import ArchiveError, EntryApplyError, LayerError, UnsafeEntryError
from overlayfs.unpack import OPAQUE_XATTR, apply_layer

F, D, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def entry(name, kind=F, data=b"", *, link="", mode=None, uid=0, gid=0, mtime=1_600_000_000, **kw):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == F else 0
    info.linkname = link
    info.mode = mode if mode is not None else (0o755 if kind == D else 0o644)
    info.uid, info.gid, info.mtime = uid, gid, mtime
    for k, v in kw.items():
        setattr(info, k, v)
    return info, (data if kind == F else None)


def tar_bytes(*members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def apply(root, *members):
    return apply_layer(io.BytesIO(tar_bytes(*members)), root)


@pytest.fixture
def root(tmp_path, require_root):
    r = tmp_path / "pinnace-test-layer"
    r.mkdir()
    return r


def _tree(path):
    """Everything observable about a tree: names, types, modes, owners, contents, link targets."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = Path(p).read_bytes()
            else:
                body = None
            out[os.path.relpath(p, path)] = (
                st.st_mode,
                st.st_uid,
                st.st_nlink,
                body,
                st.st_mtime_ns,
            )
    st = os.lstat(path)
    out["."] = (st.st_mode, st.st_uid, st.st_nlink, None, st.st_mtime_ns)
    return out


@pytest.fixture
def sentinel(tmp_path):
    """A directory outside the snapshot, and a check that nothing in it changed."""
    s = tmp_path / "outside-dir"
    s.mkdir()
    (s / "secret").write_text("do not touch")
    (s / "sub").mkdir()
    (s / "sub" / "file").write_text("nor this")
    before = _tree(s)
    parent_before = sorted(os.listdir(tmp_path))

    class Sentinel:
        path = s
        rel = "../outside-dir"  # seen from the snapshot root

        @staticmethod
        def untouched():
            assert _tree(s) == before
            assert sorted(os.listdir(tmp_path)) == parent_before

    yield Sentinel
    Sentinel.untouched()


# --- the ordinary kinds ---------------------------------------------------------


def test_every_entry_kind_with_its_metadata(root):
    cap = b"\x01\x00\x00\x02" + b"\x00\x04\x00\x00" * 2 + b"\x00" * 8  # cap_net_bind_service+ep
    su, su_data = entry("bin/su", data=b"#!su", mode=0o4755, uid=1000, gid=1000)
    ping, ping_data = entry("bin/ping", data=b"ping", mode=0o755, uid=1000)
    ping.pax_headers = {
        "SCHILY.xattr.security.capability": cap.decode("latin-1"),
        "SCHILY.xattr.user.note": "hello",
        "SCHILY.xattr.trusted.pinnace": "t",
        "mtime": "1600000000.25",
    }
    sh, _ = entry("bin/sh", SYM, link="/bin/busybox", uid=7, gid=8, mtime=1_400_000_000)
    sh.pax_headers = {"SCHILY.xattr.trusted.on-link": "L"}
    result = apply(
        root,
        entry("./", D, mode=0o755, mtime=1_500_000_000),
        entry("bin/", D, mode=0o755, mtime=1_500_000_001),
        (su, su_data),
        (ping, ping_data),
        (sh, None),
        entry("bin/su-again", LNK, link="bin/su"),
        entry("tmp/", D, mode=0o1777),
        entry("srv/", D, mode=0o2775, uid=1000, gid=50),
        entry("dev/", D),
        entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        entry("dev/loop9", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=9, gid=6),
        entry("run/", D),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o620),
    )
    assert result.entries == 13 and result.skipped == []

    st = os.stat(root / "bin/su")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and (st.st_uid, st.st_gid) == (1000, 1000)
    assert st.st_nlink == 2 and os.stat(root / "bin/su-again").st_ino == st.st_ino
    assert os.getxattr(root / "bin/ping", "security.capability") == cap  # survived the chown
    assert os.getxattr(root / "bin/ping", "user.note") == b"hello"
    assert os.getxattr(root / "bin/ping", "trusted.pinnace") == b"t"
    assert os.stat(root / "bin/ping").st_mtime_ns == 1_600_000_000_250_000_000
    lst = os.lstat(root / "bin/sh")
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert (lst.st_uid, lst.st_gid, lst.st_mtime) == (7, 8, 1_400_000_000)
    assert os.getxattr(root / "bin/sh", "trusted.on-link", follow_symlinks=False) == b"L"
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
    srv = os.stat(root / "srv")
    assert stat.S_IMODE(srv.st_mode) == 0o2775 and (srv.st_uid, srv.st_gid) == (1000, 50)
    null = os.stat(root / "dev/null")
    assert (
        stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    )
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.stat(root / "dev/loop9")
    assert stat.S_ISBLK(loop.st_mode) and loop.st_gid == 6 and stat.S_IMODE(loop.st_mode) == 0o660
    fifo = os.stat(root / "run/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620
    # directory times are set after their contents were created
    assert os.stat(root / "bin").st_mtime == 1_500_000_001
    assert os.stat(root).st_mtime == 1_500_000_000


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_compressions_and_the_diff_id(root, compression):
    raw = tar_bytes(entry("a", data=b"x" * 100_000), entry("d/", D), entry("d/b", data=b"y"))
    if compression == "zstd":
        import zstandard  # a dependency of overlayfs for +zstd layers (pyproject.toml)

        blob = zstandard.ZstdCompressor().compress(raw)
    else:
        blob = gzip.compress(raw) if compression == "gzip" else raw
    result = apply_layer(io.BytesIO(blob), root)
    assert result.compression == compression
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.size == len(raw)
    assert (root / "a").read_bytes() == b"x" * 100_000 and (root / "d/b").read_text() == "y"


def test_corrupt_gzip_is_an_archive_error(root):
    blob = bytearray(gzip.compress(tar_bytes(entry("a", data=b"x" * 5000))))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(ArchiveError):
        apply_layer(io.BytesIO(bytes(blob)), root)


def test_changeset_over_existing_files(root):
    """OCI: a dir over a dir keeps its contents and takes the new attributes; all else replaces."""
    apply(
        root,
        entry("d/", D, mode=0o700),
        entry("d/keep", data=b"k"),
        entry("f", data=b"old"),
        entry("f2", data=b"file"),
        entry("ln", SYM, link="target"),
        entry("d/", D, mode=0o750),
        entry("f", data=b"new"),
        entry("f2/", D),
        entry("ln", data=b"now a file"),
    )
    assert (root / "d/keep").read_text() == "k"
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o750
    assert (root / "f").read_text() == "new"
    assert (root / "f2").is_dir()
    assert not (root / "ln").is_symlink() and (root / "ln").read_text() == "now a file"


def test_a_later_entry_does_not_write_through_a_hardlink(root):
    """Replacing one name of a hardlinked pair unlinks it; the other name keeps its content."""
    apply(root, entry("a", data=b"A"), entry("b", LNK, link="a"), entry("b", data=b"B"))
    assert (root / "a").read_text() == "A" and (root / "b").read_text() == "B"
    assert os.stat(root / "a").st_nlink == 1


def test_whiteouts_become_overlay_whiteouts(root):
    result = apply(
        root,
        entry("etc/", D),
        entry("etc/.wh.passwd"),
        entry("opq/", D),
        entry("opq/.wh..wh..opq"),
        entry("opq/new", data=b"n"),
        entry(".wh..wh.plnk"),  # aufs hardlink dir metadata: ignored
    )
    wo = os.lstat(root / "etc/passwd")
    assert stat.S_ISCHR(wo.st_mode) and wo.st_rdev == 0
    assert not os.path.lexists(root / "etc/.wh.passwd")
    assert os.getxattr(root / "opq", OPAQUE_XATTR) == b"y"
    assert (root / "opq/new").read_text() == "n"
    assert result.whiteouts == 3 and len(result.skipped) == 1


def test_a_whiteout_never_hides_its_own_layers_files(root):
    """OCI: whiteouts apply to lower layers only; `a` made by this layer stays."""
    result = apply(root, entry("a", data=b"mine"), entry(".wh.a"))
    assert (root / "a").read_text() == "mine"
    assert "in this layer" in result.skipped[0]


def test_a_directory_recreated_over_a_whiteout_is_opaque(root):
    """rm -r + mkdir in one layer: the new dir must not show the lower one's contents."""
    apply(root, entry(".wh.cache"), entry("cache/", D), entry("cache/fresh", data=b"f"))
    assert os.getxattr(root / "cache", OPAQUE_XATTR) == b"y"


def test_forged_overlay_xattrs_are_dropped(root):
    """NEUTRALISED: trusted.overlay.* from a tar would be trusted by the kernel; not applied."""
    info, data = entry("d/", D)
    info.pax_headers = {
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.user.ok": "1",
    }
    result = apply(root, (info, data))
    assert os.listxattr(root / "d") == ["user.ok"]
    assert len(result.skipped) == 2


def test_a_missing_parent_directory_is_created(root):
    apply(root, entry("deep/er/file", data=b"x"))
    assert (root / "deep/er/file").read_text() == "x"
    assert stat.S_IMODE(os.stat(root / "deep").st_mode) == 0o755


# --- hostile archives ----------------------------------------------------------------


def test_dotdot_path_is_refused(root, sentinel):
    """REFUSED: `../outside-dir/pwned` climbs above the root; UnsafeEntryError names it."""
    with pytest.raises(UnsafeEntryError) as exc:
        apply(root, entry(f"{sentinel.rel}/pwned", data=b"x"))
    assert exc.value.entry == "../outside-dir/pwned"
    with pytest.raises(UnsafeEntryError):
        apply(root, entry("a/../../outside-dir/secret", data=b"x"))


def test_dotdot_that_stays_inside_is_cleaned(root, sentinel):
    """NEUTRALISED: `a/../b` never leaves the root; applied as `b`."""
    apply(root, entry("a/", D), entry("a/../b", data=b"x"))
    assert (root / "b").read_text() == "x"


def test_absolute_path_lands_inside(root, sentinel):
    """NEUTRALISED: an absolute name is relative to the layer root, as tar strips the `/`."""
    name = f"{sentinel.path}/secret"
    apply(root, entry(name, data=b"pwned"))
    assert (root / str(sentinel.path).lstrip("/") / "secret").read_text() == "pwned"


def test_symlink_then_write_through_it(root, sentinel):
    """NEUTRALISED: `evil -> /<outside>` then `evil/pwned`: the symlink resolves inside the root.

    RESOLVE_IN_ROOT treats the root as `/`: an absolute target is re-rooted,
    so the file lands in the snapshot, as it would for a process chrooted there.
    """
    target = str(sentinel.path)
    apply(
        root,
        entry("evil", SYM, link=target),
        entry("evil/pwned", data=b"x"),
        entry("evil/secret", data=b"overwritten?"),
    )
    inside = root / str(sentinel.path).lstrip("/")
    assert (inside / "pwned").read_text() == "x"
    assert (inside / "secret").read_text() == "overwritten?"
    assert os.readlink(root / "evil") == target  # created as-is


@pytest.mark.parametrize(
    ("name", "target"),
    [("evil", "../../../../outside-dir"), ("a/b/evil", "../../../x"), ("b", "../../..")],
)
def test_relative_symlink_above_the_root_is_refused(root, sentinel, name, target):
    """REFUSED: a relative target climbing above the root (docker's rule), before anything
    can be written through it; one that climbs only up to the root is fine."""
    with pytest.raises(UnsafeEntryError) as exc:
        apply(root, entry(name, SYM, link=target), entry(f"{name}/pwned", data=b"x"))
    assert exc.value.entry == name
    assert "points above the image's root" in str(exc.value)
    apply(root, entry("a/b/ok", SYM, link="../../x"))
    assert os.readlink(root / "a/b/ok") == "../../x"


def test_symlink_chain_escaping(root, sentinel):
    """NEUTRALISED: a -> b, b -> /, c -> a/<outside>: the chain is resolved in-root."""
    apply(
        root,
        entry("a", SYM, link="b"),
        entry("b", SYM, link="/"),
        entry("c", SYM, link=f"a{sentinel.path}"),
        entry("c/pwned", data=b"x"),
        entry("a/outside-dir/also", data=b"y"),
    )
    assert (root / str(sentinel.path).lstrip("/") / "pwned").read_text() == "x"
    assert (root / "outside-dir/also").read_text() == "y"


def test_symlink_replaced_not_followed(root, sentinel):
    """NEUTRALISED: a dir or file entry named like an existing symlink replaces the link itself."""
    apply(
        root,
        entry("evil", SYM, link=str(sentinel.path)),
        entry("evil/", D, mode=0o777),
        entry("evil2", SYM, link=f"{sentinel.path}/secret"),
        entry("evil2", data=b"replaced", mode=0o666),
    )
    assert (root / "evil").is_dir() and not (root / "evil").is_symlink()
    assert (root / "evil2").read_text() == "replaced"


def test_hardlink_to_outside_is_refused(root, sentinel):
    """REFUSED: hardlinks to `../outside-dir/secret` (escape) and to `/…/secret` (not in layer)."""
    with pytest.raises(UnsafeEntryError) as exc:
        apply(root, entry("h", LNK, link=f"{sentinel.rel}/secret"))
    assert exc.value.entry == "h"
    with pytest.raises(LayerError, match="not in this layer") as exc2:
        apply(root, entry("h2", LNK, link=f"{sentinel.path}/secret"))
    assert exc2.value.entry == "h2"
    assert os.stat(sentinel.path / "secret").st_nlink == 1


def test_hardlink_through_a_symlink_is_refused(root, sentinel):
    """REFUSED: `evil -> <outside>` then hardlink to `evil/secret`: resolved in-root, absent there."""
    with pytest.raises(LayerError, match="not in this layer"):
        apply(
            root, entry("evil", SYM, link=str(sentinel.path)), entry("h", LNK, link="evil/secret")
        )
    assert not os.path.lexists(root / "h")


def test_hardlink_to_a_symlink_links_the_symlink(root, sentinel):
    """NEUTRALISED: linkat without AT_SYMLINK_FOLLOW: the new name is the symlink, not its target."""
    apply(root, entry("ln", SYM, link=f"{sentinel.path}/secret"), entry("h", LNK, link="ln"))
    assert os.readlink(root / "h") == f"{sentinel.path}/secret"


def test_whiteouts_targeting_outside_are_refused(root, sentinel):
    """REFUSED: `../.wh.x` and `a/../../.wh.etc` climb above the root."""
    for name in ("../.wh.outside-dir", "a/../../.wh.etc", f"{sentinel.rel}/.wh.secret"):
        with pytest.raises(UnsafeEntryError) as exc:
            apply(root, entry(name))
        assert exc.value.entry == name


def test_whiteout_of_dot_and_dotdot_is_refused(root, sentinel):
    """REFUSED: `.wh..` and `.wh...` would white out the directory holding them."""
    for name in ("d/.wh..", "d/.wh...", ".wh."):
        with pytest.raises(UnsafeEntryError):
            apply(root, entry(name))


def test_whiteout_through_a_symlink(root, sentinel):
    """NEUTRALISED: `evil -> <outside>` then `evil/.wh.secret`: the whiteout is made in-root."""
    apply(root, entry("evil", SYM, link=str(sentinel.path)), entry("evil/.wh.secret"))
    wo = os.lstat(root / str(sentinel.path).lstrip("/") / "secret")
    assert stat.S_ISCHR(wo.st_mode) and wo.st_rdev == 0


def test_opaque_marker_through_a_symlink(root, sentinel):
    """NEUTRALISED: `evil/.wh..wh..opq` sets the opaque xattr on the in-root directory."""
    apply(root, entry("evil", SYM, link="/outside-dir"), entry("evil/.wh..wh..opq"))
    assert os.getxattr(root / "outside-dir", OPAQUE_XATTR) == b"y"
    assert OPAQUE_XATTR not in os.listxattr(sentinel.path)


def test_entry_under_a_file_fails_with_the_entry_name(root, sentinel):
    """REFUSED: `f/child` where `f` is a file: the kernel's ENOTDIR, as EntryApplyError."""
    with pytest.raises(EntryApplyError) as exc:
        apply(root, entry("f", data=b"x"), entry("f/child", data=b"y"))
    assert exc.value.entry == "f/child" and exc.value.errno == errno.ENOTDIR


def test_root_entry_must_be_a_directory(root, sentinel):
    """REFUSED: an entry named `./` that is a symlink would replace the snapshot root."""
    with pytest.raises(UnsafeEntryError):
        apply(root, entry("./", SYM, link=str(sentinel.path)))
