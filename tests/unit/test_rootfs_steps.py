"""The steps of runtime.rootfs against a recording fake: which calls, in which order.

Paths are resolved in a scratch directory on the real filesystem (no
mounts are made); the kernel calls that would mount go to the fake. fds the
fake hands out are real ones (of /dev/null) so that the code closing them
closes nothing of the test process's.
"""

import errno
import os
import stat

import pytest

from namespaces import syscalls as sc
from namespaces.rootpath import RootFS
from runtime import rootfs, rootfs_paths
from runtime.devices import DEFAULT_DEVICES, create_device
from runtime.errors import RootfsError
from runtime.rootfs_mount import MOVE_MOUNT_T_EMPTY_PATH, make_mount_private, open_target
from runtime.rootfs_spec import DeviceSpec
from tests.fakes import RecordingSyscalls


def _fd():
    return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "proc/sys").mkdir(parents=True)
    (tmp_path / "proc/kcore").write_text("")
    (tmp_path / "dev").mkdir()
    r = RootFS(tmp_path)
    yield r
    r.close()


def test_rootfs_error_names_entry_step_and_errno():
    err = RootfsError("mounts[3] (/sys)", "mount sysfs", errno.EPERM, path="/sys")
    assert str(err) == "mounts[3] (/sys): mount sysfs: EPERM (Operation not permitted)"
    assert (err.where, err.step, err.errno, err.path) == (
        "mounts[3] (/sys)",
        "mount sysfs",
        1,
        "/sys",
    )
    assert str(RootfsError("x", "refused")) == "x: refused"


def test_pivot_is_pivot_root_dot_dot_then_slave_and_detach(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = RecordingSyscalls()
    rootfs.pivot_into(str(tmp_path), no_pivot=False, sys=fake)
    assert fake.calls == [
        ("pivot_root", (".", ".")),
        ("mount", (None, ".", None, sc.MS_SLAVE | sc.MS_REC, None)),
        ("umount2", (".", sc.MNT_DETACH)),
    ]


def test_no_pivot_moves_onto_root_and_chroots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    chroots: list[str] = []
    monkeypatch.setattr(os, "chroot", chroots.append)
    fake = RecordingSyscalls()
    rootfs.pivot_into(str(tmp_path), no_pivot=True, sys=fake)
    assert fake.calls == [
        ("mount", (None, "/", None, sc.MS_PRIVATE, None)),
        ("mount", (".", "/", None, sc.MS_MOVE, None)),
    ]
    assert chroots == ["."]


def test_pivot_failure_names_the_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = RecordingSyscalls(pivot_root=(errno.EINVAL,))
    with pytest.raises(RootfsError, match=r"root.path: pivot_root: EINVAL"):
        rootfs.pivot_into(str(tmp_path), no_pivot=False, sys=fake)


class _MountFake(RecordingSyscalls):
    """mount() answers EINVAL for paths that are not mount points."""

    def __init__(self, mount_points):
        super().__init__()
        self.mount_points = mount_points

    def mount(self, source, target, fstype, flags, data):
        self.calls.append(("mount", (source, target, fstype, flags, data)))
        if target not in self.mount_points:
            raise sc.SyscallError(errno.EINVAL, "mount", target)


def test_make_mount_private_walks_up_to_the_mount_point():
    fake = _MountFake({"/var"})
    make_mount_private("/var/lib/b/rootfs", fake)
    assert [args[1] for _, args in fake.calls] == [
        "/var/lib/b/rootfs",
        "/var/lib/b",
        "/var/lib",
        "/var",
    ]
    assert all(args[3] == sc.MS_PRIVATE for _, args in fake.calls)


def test_make_mount_private_stops_at_root():
    fake = _MountFake(set())
    with pytest.raises(OSError):
        make_mount_private("/a", fake)
    assert [args[1] for _, args in fake.calls] == ["/a", "/"]


def test_readonly_path_clones_readonly_then_attaches(root):
    tree = _fd()
    fake = RecordingSyscalls(open_tree=tree)
    rootfs_paths.readonly_path(root, "/proc/sys", "linux.readonlyPaths[0] (/proc/sys)", fake)
    assert fake.names() == ["open_tree", "mount_setattr", "move_mount"]
    (_, (target, path, flags)) = fake.calls[0]
    assert path == "" and flags & sc.AT_RECURSIVE and flags & sc.AT_EMPTY_PATH
    assert flags & sc.OPEN_TREE_CLONE
    attr = fake.calls[1][1][3]
    assert attr.attr_set == sc.MOUNT_ATTR_RDONLY and fake.calls[1][1][2] & sc.AT_RECURSIVE
    assert fake.calls[2][1] == (
        tree,
        "",
        target,
        "",
        sc.MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
    )
    with pytest.raises(OSError):
        os.fstat(tree)  # closed


def test_missing_paths_are_skipped(root):
    fake = RecordingSyscalls()
    rootfs_paths.readonly_path(root, "/proc/nonexistent", "w", fake)
    rootfs_paths.mask_path(root, "/proc/nonexistent", "w", 99, fake)
    assert fake.calls == []


def test_mask_directory_with_readonly_tmpfs(root):
    fs, tree = _fd(), _fd()
    fake = RecordingSyscalls(fsopen=fs, fsmount=tree)
    rootfs_paths.mask_path(root, "/proc/sys", "w", 99, fake)
    assert fake.names() == ["fsopen", "fsconfig", "fsmount", "move_mount"]
    assert fake.calls[0][1][0] == "tmpfs"
    assert fake.calls[2][1] == (fs, sc.FSMOUNT_CLOEXEC, sc.MOUNT_ATTR_RDONLY)
    assert fake.calls[3][1][0] == tree


def test_mask_file_with_dev_null(root):
    tree = _fd()
    fake = RecordingSyscalls(open_tree=tree)
    rootfs_paths.mask_path(root, "/proc/kcore", "w", 42, fake)
    assert fake.names() == ["open_tree", "move_mount"]
    assert fake.calls[0][1] == (
        42,
        "",
        sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH,
    )


def test_dev_null_must_be_the_real_device(root, tmp_path):
    (tmp_path / "dev/null").write_text("")
    with pytest.raises(RootfsError, match="not the 1:3 character device"):
        rootfs_paths.open_dev_null(root)
    (tmp_path / "dev/null").unlink()
    (tmp_path / "dev/null").symlink_to("/dev/null")  # even the host's: a symlink is refused
    with pytest.raises(RootfsError, match="not the 1:3 character device"):
        rootfs_paths.open_dev_null(root)
    (tmp_path / "dev/null").unlink()
    os.mknod(tmp_path / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    fd = rootfs_paths.open_dev_null(root)
    os.close(fd)


def test_readonly_root_keeps_the_flags(monkeypatch):
    fake = RecordingSyscalls()
    rootfs_paths.remount_root_readonly(fake)
    assert fake.calls == [("mount_setattr", (sc.AT_FDCWD, "/", 0, sc.MountAttr(attr_set=1)))]
    fake = RecordingSyscalls(mount_setattr=(errno.ENOSYS,))
    monkeypatch.setattr(
        os,
        "statvfs",
        lambda p: os.statvfs_result((0,) * 8 + (0x2 | 0x4 | 0x1000, 255)),
    )
    rootfs_paths.remount_root_readonly(fake)
    from runtime.rootfs_options import MS_RELATIME

    flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | MS_RELATIME
    assert fake.calls[1] == ("mount", (None, "/", None, flags, None))


def test_open_target_creates_dirs_and_files_in_root(root, tmp_path):
    fd = open_target(root, "a/b/c", directory=True)
    os.close(fd)
    assert (tmp_path / "a/b/c").is_dir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").symlink_to("/run/resolv.conf")
    fd = open_target(root, "etc/resolv.conf", directory=False)
    os.close(fd)
    assert (tmp_path / "run/resolv.conf").is_file()  # the symlink's in-root target


def test_create_device_mknod_and_owner(root, tmp_path):
    fake = RecordingSyscalls()
    create_device(
        root,
        DeviceSpec("/dev/x/fuse", "c", 10, 229, 0o600, 3, 4, index=0),
        in_userns=False,
        sys=fake,
    )
    st = os.lstat(tmp_path / "dev/x/fuse")
    assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert (os.major(st.st_rdev), os.minor(st.st_rdev), st.st_uid, st.st_gid) == (10, 229, 3, 4)
    # the same device again: accepted as it is
    create_device(root, DeviceSpec("/dev/x/fuse", "c", 10, 229, index=0), in_userns=False, sys=fake)
    assert fake.calls == []


def test_create_device_mismatch_is_an_error_for_config_devices(root, tmp_path):
    (tmp_path / "dev/fuse").write_text("")
    with pytest.raises(RootfsError, match=r"linux.devices\[0\] \(/dev/fuse\).*EEXIST"):
        create_device(
            root,
            DeviceSpec("/dev/fuse", "c", 10, 229, index=0),
            in_userns=False,
            sys=RecordingSyscalls(),
        )


def test_default_device_replaces_what_the_image_has(root, tmp_path):
    (tmp_path / "dev/null").symlink_to("/etc/shadow")
    create_device(root, DEFAULT_DEVICES[0], in_userns=False, sys=RecordingSyscalls())
    st = os.lstat(tmp_path / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_device_in_userns_is_a_bind_of_the_host_node(root, tmp_path):
    fake = RecordingSyscalls()
    create_device(root, DEFAULT_DEVICES[1], in_userns=True, sys=fake)  # /dev/zero
    assert (tmp_path / "dev/zero").is_file()  # the empty bind target
    ((name, (src, tgt, _fstype, flags, _data)),) = fake.calls
    assert name == "mount" and flags == sc.MS_BIND
    assert src.startswith("/proc/self/fd/") and tgt.startswith("/proc/self/fd/")
