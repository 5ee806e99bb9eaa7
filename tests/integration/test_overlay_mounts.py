"""Snapshots mounted by the real kernel: 130 layers, read-only views, whiteouts, no leftovers.

Every test runs under `no_mount_leak`: /proc/self/mountinfo before and after
must be the same (anything new is detached, then the test fails).
Mounts happen in tmp dirs in the host's mount namespace, except where a
test says it uses a private mount namespace in a forked child.
"""

import errno
import io
import os
import tarfile
from pathlib import Path

import pytest

from namespaces import syscalls as sc
from overlayfs import mounts as m
from overlayfs.errors import MountedError, MountError
from overlayfs.features import detect
from overlayfs.mounts import Mount, mount_all, mounted, unmount_all
from overlayfs.snapshotter import OverlaySnapshotter
from overlayfs.unpack import apply_layer
from tests.childproc import in_private_mntns
from tests.hostfacts import kernel_version

N_LAYERS = 130


def _mountinfo():
    return set(Path("/proc/self/mountinfo").read_text().splitlines())


@pytest.fixture(autouse=True)
def no_mount_leak(require_root):
    """Fail a test that leaves a mount, after detaching what it left (deepest first)."""
    before = _mountinfo()
    yield
    leaked = sorted(_mountinfo() - before)
    for line in reversed(leaked):
        target = line.split(" - ")[0].split()[4]
        try:
            sc.libc().umount2(target, sc.MNT_DETACH)
        except OSError:
            pass
    assert leaked == [], f"test left mounts behind: {leaked}"


@pytest.fixture
def sn(tmp_path):
    s = OverlaySnapshotter(tmp_path / "pinnace-test-snaps")
    yield s
    s.close()


def build_chain(sn, n):
    """n committed layers, layer i adding file f{i} (and overwriting `top` with i)."""
    parent = ""
    for i in range(n):
        key = f"extract-{i}"
        sn.prepare(key, parent)
        d = sn.layer_path(key)
        Path(d, f"f{i:03d}").write_text(str(i))
        Path(d, "top").write_text(str(i))
        name = f"sha256:{i:064x}"
        sn.commit(name, key)
        parent = name
    return parent


def check_merged(sn, merged, key, n):
    names = sorted(os.listdir(merged))
    assert names == sorted([f"f{i:03d}" for i in range(n)] + ["top"])
    assert Path(merged, "top").read_text() == str(n - 1)  # the nearest layer wins
    Path(merged, "written").write_text("upper")
    Path(merged, "f000").write_text("changed")  # copy-up of the lowest layer's file
    upper = sn.layer_path(key)
    assert sorted(os.listdir(upper)) == ["f000", "written"]
    assert Path(upper, "f000").read_text() == "changed"
    assert Path(sn.layer_path("sha256:" + "0" * 64), "f000").read_text() == "0"  # lower intact


@pytest.mark.parametrize("method", ["auto", "fsconfig", "mount2"])
def test_130_layers(sn, tmp_path, method):
    """Past the mount(2) page limit: every layer visible, writes land in the upper dir."""
    if method == "fsconfig" and not m.lowerdir_plus_supported():
        pytest.skip("this kernel has no lowerdir+ (Linux < 6.8)")
    top = build_chain(sn, N_LAYERS)
    mounts = sn.prepare("ctr", top)
    assert len(",".join(mounts[0].options)) > m.PAGE_SIZE
    merged = tmp_path / "merged"
    merged.mkdir()
    with mounted(mounts, merged, method=method):
        check_merged(sn, merged, "ctr", N_LAYERS)
    assert os.listdir(merged) == []
    sn.remove("ctr")


def test_130_layers_in_a_private_mount_namespace(sn, tmp_path):
    """The same through mount(2) with /proc/self/fd paths, inside a forked child's mount ns."""
    top = build_chain(sn, N_LAYERS)
    mounts = sn.prepare("ctr", top)
    merged = tmp_path / "merged"
    merged.mkdir()

    def child():
        mount_all(mounts, merged, method="mount2")
        check_merged(sn, merged, "ctr", N_LAYERS)
        return unmount_all(merged)

    assert in_private_mntns(child) == 1
    assert Path(sn.layer_path("ctr"), "written").read_text() == "upper"


def _assert_erofs(path):
    with pytest.raises(OSError) as exc:
        Path(path, "new-file").write_text("x")
    assert exc.value.errno == errno.EROFS


@pytest.mark.parametrize("parents", [0, 1, 3])
def test_views_are_read_only(sn, tmp_path, parents):
    """view() mounts give EROFS: no parent and one parent are ro binds, more an ro overlay."""
    top = build_chain(sn, parents) if parents else ""
    mounts = sn.view("v", top)
    target = tmp_path / "view"
    target.mkdir()
    with mounted(mounts, target):
        if parents:
            assert Path(target, "top").read_text() == str(parents - 1)
        _assert_erofs(target)
        with pytest.raises(OSError) as exc:
            os.unlink(target / "top") if parents else os.mkdir(target / "d")
        assert exc.value.errno == errno.EROFS
    sn.remove("v")


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.size = len(data)
            t.addfile(info, io.BytesIO(data) if data else None)
    buf.seek(0)
    return buf


def _apply(sn, key, parent, members):
    sn.prepare(key + "-extract", parent)
    apply_layer(_tar(members), sn.layer_path(key + "-extract"))
    sn.commit(key, key + "-extract")


def test_whiteouts_and_opaque_dirs_take_effect_when_mounted(sn, tmp_path):
    """OCI whiteouts converted by apply_layer hide lower content in the mounted overlay."""
    F, D = tarfile.REGTYPE, tarfile.DIRTYPE
    _apply(
        sn,
        "l1",
        "",
        [
            ("etc/", D, b""),
            ("etc/keep", F, b"k"),
            ("etc/gone", F, b"g"),
            ("opq/", D, b""),
            ("opq/old1", F, b"1"),
            ("opq/sub/", D, b""),
            ("opq/sub/old2", F, b"2"),
            ("redo/", D, b""),
            ("redo/old", F, b"o"),
        ],
    )
    _apply(
        sn,
        "l2",
        "l1",
        [
            ("etc/", D, b""),
            ("etc/.wh.gone", F, b""),
            ("opq/", D, b""),
            ("opq/.wh..wh..opq", F, b""),
            ("opq/new", F, b"n"),
            (".wh.redo", F, b""),
        ],
    )
    _apply(sn, "l3", "l2", [("redo/", D, b""), ("redo/fresh", F, b"f")])
    target = tmp_path / "root"
    target.mkdir()
    with mounted(sn.view("v", "l3"), target):
        assert sorted(os.listdir(target)) == ["etc", "opq", "redo"]
        assert os.listdir(target / "etc") == ["keep"]
        assert os.listdir(target / "opq") == ["new"]
        assert os.listdir(target / "redo") == ["fresh"]
    with mounted(sn.view("v2", "l2"), target):
        assert sorted(os.listdir(target)) == ["etc", "opq"]  # redo deleted at l2


def test_a_failing_mount_list_leaves_nothing_mounted(sn, tmp_path):
    """The second record fails: the first (a bind) is unmounted before the error surfaces."""
    target = tmp_path / "t"
    target.mkdir()
    good = Mount("bind", str(tmp_path), ("rbind", "ro"))
    bad = Mount("overlay", "overlay", (f"lowerdir={tmp_path}/missing1:{tmp_path}/missing2",))
    for method in ("mount2", "fsconfig") if m.lowerdir_plus_supported() else ("mount2",):
        with pytest.raises(MountError) as exc:
            mount_all([good, bad], target, method=method)
        assert exc.value.filename == str(target) and exc.value.errno == errno.ENOENT


@pytest.mark.skipif(not m.lowerdir_plus_supported(), reason="needs lowerdir+ (Linux >= 6.8)")
def test_fsconfig_errors_carry_the_kernels_own_message(tmp_path):
    """The fs_context log ("e overlay: Unknown parameter ...") travels in MountError.detail."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    bad = Mount("overlay", "overlay", ("nosuchoption=1", f"lowerdir={tmp_path}/a:{tmp_path}/b"))
    with pytest.raises(MountError) as exc:
        mount_all([bad], tmp_path, method="fsconfig")
    assert exc.value.errno == errno.EINVAL
    assert "nosuchoption" in exc.value.detail and "nosuchoption" in str(exc.value)


def test_remove_refuses_while_something_is_mounted_inside(sn, tmp_path):
    """rmtree does not stop at mount points: removal is refused, not run through the mount."""
    sn.prepare("k")
    inside = Path(sn.layer_path("k"), "mnt")
    inside.mkdir()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep me")
    with mounted([Mount("bind", str(precious), ("bind",))], inside):
        with pytest.raises(MountedError) as exc:
            sn.remove("k")
        assert exc.value.mount_point == str(inside)
    assert (precious / "data").read_text() == "keep me"
    sn.remove("k")


def test_unmount_all_on_a_plain_directory_does_nothing(tmp_path):
    assert unmount_all(tmp_path) == 0
    assert unmount_all(tmp_path / "missing") == 0


def test_feature_probes_match_the_kernel_version():
    """Probed, not guessed; on these stock kernels they must agree with the version anyway.

    `lowerdir+` arrived in 6.8, layers as fds (FSCONFIG_SET_FD) in 6.13,
    userxattr in 5.11, fsopen in 5.2.
    """
    f = detect()
    v = kernel_version()
    assert f.overlay and f.new_mount_api == (v >= (5, 2))
    assert f.lowerdir_plus == (v >= (6, 8)) == m.lowerdir_plus_supported()
    assert f.layer_fds == (v >= (6, 13))
    assert f.userxattr == (v >= (5, 11))
    assert f.mount2_max_layers > N_LAYERS
