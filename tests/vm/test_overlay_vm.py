"""overlayfs on the guest kernel (Debian bookworm, 6.1): 130 layers without `lowerdir+`.

6.1 has no fsconfig `lowerdir+` (6.8), so the mount helper must fall back to
mount(2) with /proc/self/fd layer paths; this is the one kernel where that
path is the only one.
"""

import os
from pathlib import Path

import pytest

from overlayfs import mounts as m
from overlayfs.features import detect
from overlayfs.snapshotter import OverlaySnapshotter
from tests.hostfacts import kernel_version

pytestmark = pytest.mark.vm

N_LAYERS = 130


def test_130_layer_overlay_on_the_guest_kernel(tmp_path):
    v = kernel_version()
    f = detect()
    print(f"overlay features on {f}")  # shown with `vagrant/vm-tier -s`
    assert f.lowerdir_plus == (v >= (6, 8)) == m.lowerdir_plus_supported()
    assert f.layer_fds == (v >= (6, 13)) and f.userxattr and f.new_mount_api
    before = Path("/proc/self/mountinfo").read_text()
    target = tmp_path / "merged"
    target.mkdir()
    with OverlaySnapshotter(tmp_path / "pinnace-test-snaps", sync=False) as sn:
        parent = ""
        for i in range(N_LAYERS):
            sn.prepare(f"x{i}", parent)
            Path(sn.layer_path(f"x{i}"), f"f{i:03d}").write_text(str(i))
            sn.commit(f"l{i}", f"x{i}")
            parent = f"l{i}"
        mounts = sn.prepare("ctr", parent)
        assert len(",".join(mounts[0].options)) > m.PAGE_SIZE
        try:
            with m.mounted(mounts, target):  # method="auto"
                assert len(os.listdir(target)) == N_LAYERS
                Path(target, "written").write_text("upper")
        finally:
            assert Path("/proc/self/mountinfo").read_text() == before
        assert os.listdir(sn.layer_path("ctr")) == ["written"]
        sn.remove("ctr")
