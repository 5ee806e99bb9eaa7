"""Mount records and the mount helper's logic, against a recording fake of the syscall layer."""

import errno
import os

import pytest

from namespaces import syscalls as sc
from namespaces.syscalls import SyscallError
from overlayfs import mounts as m
from overlayfs.errors import MountError
from overlayfs.mounts import Mount, mount_all, parse_options, split_lowerdir, unmount_all
from tests.fakes import RecordingSyscalls


class ScriptedSyscalls(RecordingSyscalls):
    """RecordingSyscalls whose answers for some calls are a queue, consumed call by call."""

    def __init__(self, script=None, **answers):
        super().__init__(**answers)
        self.script = script or {}

    def __getattr__(self, name):
        fallback = super().__getattr__(name)

        def call(*args):
            queue = self.script.get(name)
            if not queue:
                return fallback(*args)
            self.calls.append((name, args))
            answer = queue.pop(0)
            if isinstance(answer, tuple):
                raise SyscallError(answer[0], name, str(args[0]))
            return answer

        return call


def test_options_split_into_flags_and_data():
    p = parse_options(["ro", "nosuid", "index=off", "lowerdir=/a:/b", "userxattr"])
    assert p.flags == sc.MS_RDONLY | sc.MS_NOSUID
    assert p.data == ("index=off", "lowerdir=/a:/b", "userxattr")
    assert parse_options(["ro", "rw"]).flags == 0
    assert parse_options(["rbind"]).flags == sc.MS_BIND | sc.MS_REC


def test_lowerdir_escapes_round_trip():
    paths = ["/plain", "/with:colon", "/with,comma", "/back\\slash"]
    value = ":".join(m.escape_layer(p) for p in paths)
    assert split_lowerdir(value) == paths
    assert split_lowerdir("/a::/b:") == ["/a", "/b"]


def test_mount_dict_round_trip_and_writable_dir():
    ov = Mount("overlay", "overlay", ("workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"))
    assert Mount.from_dict(ov.to_dict()) == ov
    assert m.writable_dir([ov]) == "/u"
    assert m.writable_dir([Mount("bind", "/src", ("rbind", "rw"))]) == "/src"
    assert Mount("bind", "/src", ("rbind", "ro")).readonly
    with pytest.raises(ValueError):
        m.writable_dir([Mount("bind", "/src", ("rbind", "ro"))])


def test_readonly_bind_is_bind_then_remount():
    fake = RecordingSyscalls()
    mount_all([Mount("bind", "/src", ("rbind", "ro", "nodev"))], "/t", sys=fake)
    assert fake.calls == [
        ("mount", ("/src", "/t", None, sc.MS_BIND | sc.MS_REC, None)),
        (
            "mount",
            (None, "/t", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NODEV, None),
        ),
    ]


def test_failed_remount_unmounts_the_bind():
    fake = ScriptedSyscalls({"mount": [0, (errno.EPERM,)]})
    with pytest.raises(MountError) as exc:
        mount_all([Mount("bind", "/src", ("bind", "ro"))], "/t", sys=fake)
    assert exc.value.filename == "/t" and exc.value.errno == errno.EPERM
    assert fake.names() == ["mount", "mount", "umount2"]
    assert fake.calls[-1] == ("umount2", ("/t", sc.UMOUNT_NOFOLLOW))


def test_failure_of_a_later_record_unmounts_the_earlier_ones():
    fake = ScriptedSyscalls({"mount": [0, 0, (errno.EINVAL,)]})
    recs = [Mount("tmpfs", "tmpfs", ()), Mount("tmpfs", "tmpfs", ()), Mount("tmpfs", "x", ())]
    with pytest.raises(MountError):
        mount_all(recs, "/t", sys=fake)
    assert fake.names() == ["mount", "mount", "mount", "umount2", "umount2"]


def test_short_overlay_uses_plain_mount2(tmp_path):
    fake = RecordingSyscalls()
    rec = Mount("overlay", "overlay", ("index=off", "upperdir=/u", "workdir=/w", "lowerdir=/a:/b"))
    mount_all([rec], "/t", sys=fake, method="auto")
    assert fake.calls == [
        (
            "mount",
            ("overlay", "/t", "overlay", 0, "index=off,upperdir=/u,workdir=/w,lowerdir=/a:/b"),
        )
    ]


def _layers(tmp_path, n):
    out = []
    for i in range(n):
        d = tmp_path / f"layer-with-a-long-name-{i:04d}"
        d.mkdir()
        out.append(str(d))
    return out


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


def test_long_overlay_on_mount2_uses_proc_fd_paths(tmp_path):
    lowers = _layers(tmp_path, 150)
    rec = Mount("overlay", "overlay", ("ro", "lowerdir=" + ":".join(lowers)))
    assert len(",".join(rec.options)) > m.PAGE_SIZE
    fake = RecordingSyscalls()
    before = _open_fds()
    mount_all([rec], "/t", sys=fake, method="mount2")
    assert _open_fds() == before  # the O_PATH fds are closed after the call
    ((name, (_src, _tgt, fstype, flags, data)),) = fake.calls
    assert (name, fstype, flags) == ("mount", "overlay", sc.MS_RDONLY)
    layers = split_lowerdir(data.removeprefix("lowerdir="))
    assert len(layers) == 150 and all(p.startswith("/proc/self/fd/") for p in layers)
    assert len(data) < m.PAGE_SIZE


def test_too_many_layers_for_mount2_is_a_clear_error(tmp_path):
    lowers = _layers(tmp_path, 400)
    fake = RecordingSyscalls()
    with pytest.raises(MountError) as exc:
        mount_all(
            [Mount("overlay", "overlay", ("lowerdir=" + ":".join(lowers),))],
            "/t",
            sys=fake,
            method="mount2",
        )
    assert exc.value.errno == errno.E2BIG and "6.8" in str(exc.value)
    assert fake.calls == []


def test_fsconfig_adds_layers_one_by_one(tmp_path):
    fs_fd = os.open("/dev/null", os.O_RDONLY)
    mnt_fd = os.open("/dev/null", os.O_RDONLY)
    fake = RecordingSyscalls(fsopen=fs_fd, fsmount=mnt_fd)
    rec = Mount(
        "overlay",
        "overlay",
        ("ro", "index=off", "userxattr", f"upperdir={tmp_path}", "lowerdir=/a:/b:/c"),
    )
    mount_all([rec], "/t", sys=fake, method="fsconfig")
    assert fake.calls == [
        ("fsopen", ("overlay", sc.FSOPEN_CLOEXEC)),
        ("fsconfig", (fs_fd, sc.FSCONFIG_SET_STRING, "source", "overlay")),
        ("fsconfig", (fs_fd, sc.FSCONFIG_SET_STRING, "index", "off")),
        ("fsconfig", (fs_fd, sc.FSCONFIG_SET_FLAG, "userxattr")),
        ("fsconfig", (fs_fd, sc.FSCONFIG_SET_STRING, "upperdir", str(tmp_path))),
        ("fsconfig", (fs_fd, sc.FSCONFIG_SET_STRING, "lowerdir+", "/a")),
        ("fsconfig", (fs_fd, sc.FSCONFIG_SET_STRING, "lowerdir+", "/b")),
        ("fsconfig", (fs_fd, sc.FSCONFIG_SET_STRING, "lowerdir+", "/c")),
        ("fsconfig", (fs_fd, sc.FSCONFIG_CMD_CREATE)),
        ("fsmount", (fs_fd, sc.FSMOUNT_CLOEXEC, sc.MOUNT_ATTR_RDONLY)),
        ("move_mount", (mnt_fd, "", sc.AT_FDCWD, "/t", sc.MOVE_MOUNT_F_EMPTY_PATH)),
    ]
    for fd in (fs_fd, mnt_fd):  # both closed by the helper
        with pytest.raises(OSError):
            os.fstat(fd)


def test_fsconfig_passes_paths_over_255_bytes_as_proc_fd(tmp_path):
    """fsconfig copies at most 256 bytes of a string: a longer layer path goes as an fd path."""
    deep = tmp_path / ("x" * 200) / ("y" * 100)
    deep.mkdir(parents=True)
    fs_fd = os.open("/dev/null", os.O_RDONLY)
    mnt_fd = os.open("/dev/null", os.O_RDONLY)
    fake = RecordingSyscalls(fsopen=fs_fd, fsmount=mnt_fd)
    mount_all(
        [Mount("overlay", "overlay", (f"lowerdir={deep}:/b",))], "/t", sys=fake, method="fsconfig"
    )
    layers = [
        args[3] for name, args in fake.calls if name == "fsconfig" and args[2:3] == ("lowerdir+",)
    ]
    assert layers[0].startswith("/proc/self/fd/") and layers[1] == "/b"


def test_fsconfig_failure_is_a_mount_error_and_attaches_nothing():
    fs_fd = os.open("/dev/null", os.O_RDONLY)
    fake = ScriptedSyscalls({"fsconfig": [0, (errno.ENOENT,)]}, fsopen=fs_fd)
    with pytest.raises(MountError) as exc:
        mount_all(
            [Mount("overlay", "overlay", ("lowerdir=/nope:/b",))], "/t", sys=fake, method="fsconfig"
        )
    assert exc.value.errno == errno.ENOENT and exc.value.filename == "/t"
    assert "fsmount" not in fake.names() and "move_mount" not in fake.names()
    with pytest.raises(OSError):
        os.fstat(fs_fd)


def test_unmount_all_pops_every_stacked_mount():
    fake = ScriptedSyscalls({"umount2": [0, 0, (errno.EINVAL,)]})
    assert unmount_all("/t", sys=fake) == 2
    assert fake.calls == [("umount2", ("/t", sc.UMOUNT_NOFOLLOW))] * 3


def test_unmount_of_nothing_is_fine():
    fake = RecordingSyscalls(umount2=(errno.ENOENT,))
    assert unmount_all("/missing", sys=fake) == 0


def test_busy_mount_is_retried_then_detached():
    busy = [(errno.EBUSY,)] * 5
    fake = ScriptedSyscalls({"umount2": [*busy, 0, (errno.EINVAL,)]})
    assert unmount_all("/t", sys=fake) == 1
    flags = [args[1] for _, args in fake.calls]
    assert flags[:5] == [sc.UMOUNT_NOFOLLOW] * 5
    assert flags[5] == sc.UMOUNT_NOFOLLOW | sc.MNT_DETACH


def test_other_unmount_errors_are_raised_with_the_target():
    fake = RecordingSyscalls(umount2=(errno.EPERM,))
    with pytest.raises(MountError) as exc:
        unmount_all("/t", sys=fake)
    assert exc.value.filename == "/t" and exc.value.errno == errno.EPERM


def test_mounted_context_unmounts_when_the_block_raises():
    fake = ScriptedSyscalls({"umount2": [0, (errno.EINVAL,)]})
    with pytest.raises(RuntimeError), m.mounted([Mount("tmpfs", "tmpfs", ())], "/t", sys=fake):
        raise RuntimeError("boom")
    assert fake.names() == ["mount", "umount2", "umount2"]


def test_features_without_the_new_mount_api():
    """A kernel without fsopen (< 5.2): every fsconfig-based feature reads as absent."""
    from overlayfs.features import detect

    f = detect(sys=RecordingSyscalls(fsopen=(errno.ENOSYS,)))
    assert not (f.new_mount_api or f.lowerdir_plus or f.layer_fds or f.userxattr)
    assert f.mount2_max_layers > 130
