"""Hostile rootfs trees and configs: every attempt to reach the host must fail.

A sentinel directory on the host (under /tmp, named pinnace-sentinel-*)
is what the container's tree points at; after each case it must hold
exactly what it held before, and the host's mount table must be unchanged
(the `host_mounts_unchanged` fixture of test_rootfs_container).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from pathlib import Path

import pytest

from tests.integration.test_rootfs_container import (
    ContainerSetupFailed,
    host_mounts_unchanged,  # noqa: F401  (fixture)
    mounts_inside,
    run_container,
)

pytestmark = pytest.mark.usefixtures("require_root", "host_mounts_unchanged")


@pytest.fixture
def sentinel():
    """A host directory with one canary file; checked untouched at the end."""
    path = Path("/tmp") / f"pinnace-sentinel-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    (path / "canary").write_text("host\n")
    yield path
    try:
        assert sorted(os.listdir(path)) == ["canary"], "the container wrote into the host"
        assert (path / "canary").read_text() == "host\n"
        assert not os.path.ismount(path)
    finally:
        shutil.rmtree(path)


def _landed(path):
    """Inside the container: is `path` a mount point, and what is in it."""
    return path in mounts_inside(), sorted(os.listdir(path))


def test_symlinked_destination_to_a_host_path_lands_inside_the_rootfs(make_bundle, sentinel):
    def edit(c):
        c["mounts"].append({"destination": "/evil", "type": "tmpfs", "source": "tmpfs"})

    bundle = make_bundle(["true"], edit=edit)
    (bundle / "rootfs/evil").symlink_to(sentinel)  # absolute: /tmp/pinnace-sentinel-...
    mounted, entries = run_container(bundle, lambda: _landed(str(sentinel)))
    assert mounted and entries == []  # the tmpfs, at the same path inside the container
    assert (bundle / "rootfs" / str(sentinel).lstrip("/")).is_dir()  # created in the rootfs


def test_relative_symlink_climbing_out_is_clamped_at_the_root(make_bundle, sentinel):
    def edit(c):
        c["mounts"].append({"destination": "/up/evil", "type": "tmpfs", "source": "tmpfs"})

    bundle = make_bundle(["true"], edit=edit)
    # rootfs/up -> ../../../../../../..: on the host that is "/", in the root it is "/"
    (bundle / "rootfs/up").symlink_to("../../../../../../.." + str(sentinel.parent))
    mounted, entries = run_container(bundle, lambda: _landed(str(sentinel.parent / "evil")))
    assert mounted and entries == []


def test_dotdot_destination_stays_inside_the_rootfs(make_bundle, sentinel):
    dest = "/../../../../.." + str(sentinel)

    def edit(c):
        c["mounts"].append({"destination": dest, "type": "tmpfs", "source": "tmpfs"})

    bundle = make_bundle(["true"], edit=edit)
    mounted, entries = run_container(bundle, lambda: _landed(str(sentinel)))
    assert mounted and entries == []


def test_file_bind_onto_a_symlink_to_a_host_file(make_bundle, sentinel, scratch_dir):
    payload = scratch_dir / "payload"
    payload.write_text("from the config\n")

    def edit(c):
        c["mounts"].append(
            {
                "destination": "/etc/resolv.conf",
                "type": "bind",
                "source": str(payload),
                "options": ["bind"],
            }
        )

    bundle = make_bundle(["true"], edit=edit)
    (bundle / "rootfs/etc/resolv.conf").symlink_to(sentinel / "canary")

    def probe():
        with open(str(sentinel / "canary")) as f:
            return f.read()

    # the bind lands on the in-root target (created as an empty file there)
    assert run_container(bundle, probe) == "from the config\n"


def test_bind_destination_symlinked_to_host_etc(make_bundle, scratch_dir):
    src = scratch_dir / "vol"
    src.mkdir()
    (src / "mine").write_text("volume\n")

    def edit(c):
        c["mounts"].append(
            {"destination": "/data", "type": "bind", "source": str(src), "options": ["rbind"]}
        )

    bundle = make_bundle(["true"], edit=edit)
    (bundle / "rootfs/data").symlink_to("/etc")
    before = sorted(os.listdir("/etc"))
    out = run_container(bundle, lambda: sorted(os.listdir("/etc")))
    assert out == ["mine"]  # the container's /etc got the volume
    assert sorted(os.listdir("/etc")) == before


def test_proc_on_a_symlinked_proc_is_refused(make_bundle, sentinel):
    bundle = make_bundle(["true"])
    (bundle / "rootfs/proc").rmdir()
    (bundle / "rootfs/proc").symlink_to(sentinel)
    with pytest.raises(ContainerSetupFailed) as info:
        run_container(bundle, mounts_inside)
    assert "mounts[0] (/proc)" in info.value.message
    assert "symlink" in info.value.message


@pytest.mark.parametrize("fake", ["symlink", "regular file", "wrong device"])
def test_masked_path_refuses_a_fake_dev_null(make_bundle, scratch_dir, fake):
    """CVE-2025-31133: /dev/null in the container is not what it says."""
    fakedev = scratch_dir / "dev"
    fakedev.mkdir()
    victim = scratch_dir / "victim"
    victim.write_text("must stay unreadable through the mask\n")
    if fake == "symlink":
        (fakedev / "null").symlink_to("/proc/sys/kernel/core_pattern")
    elif fake == "regular file":
        (fakedev / "null").write_text("")
    else:
        os.mknod(fakedev / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 5))

    def edit(c):
        # the container brings its own /dev: no tmpfs, nothing the runtime created
        c["mounts"] = [m for m in c["mounts"] if not m["destination"].startswith("/dev")]
        c["mounts"].insert(
            1, {"destination": "/dev", "type": "bind", "source": str(fakedev), "options": ["rbind"]}
        )

    bundle = make_bundle(["true"], edit=edit)
    with pytest.raises(ContainerSetupFailed) as info:
        run_container(bundle, mounts_inside)
    assert info.value.kind == "RootfsError"
    assert "linux.maskedPaths" in info.value.message
    assert "not the 1:3 character device" in info.value.message


def test_masked_and_readonly_paths_behind_symlinks_stay_in_the_root(make_bundle):
    def edit(c):
        c["linux"]["maskedPaths"].append("/masked")
        c["linux"]["readonlyPaths"].append("/ro")

    bundle = make_bundle(["true"], edit=edit)
    (bundle / "rootfs/masked").symlink_to("/etc/passwd")
    (bundle / "rootfs/ro").symlink_to("/home")
    host_passwd = Path("/etc/passwd").read_text()

    def probe():
        with open("/etc/passwd") as f:
            passwd = f.read()
        home: int | None = 0
        try:
            os.mkdir("/home/pinnace-test")
        except OSError as exc:
            home = exc.errno
        return passwd, home

    passwd, home = run_container(bundle, probe)
    assert passwd == ""  # the container's passwd is masked...
    assert home == errno.EROFS  # ...and its /home read-only
    assert Path("/etc/passwd").read_text() == host_passwd
    assert "root" in (bundle / "rootfs/etc/passwd").read_text()


def test_device_path_through_a_symlink_stays_in_the_root(make_bundle, sentinel):
    def edit(c):
        c["linux"]["devices"] = [
            {"path": "/dev/evil/null2", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666}
        ]
        # no /dev tmpfs: /dev is the image's own directory
        c["mounts"] = [m for m in c["mounts"] if not m["destination"].startswith("/dev")]

    bundle = make_bundle(["true"], edit=edit)
    (bundle / "rootfs/dev/evil").symlink_to(sentinel)

    def probe():
        st = os.stat(str(sentinel / "null2"))
        return stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)

    assert run_container(bundle, probe) == (True, 1, 3)
