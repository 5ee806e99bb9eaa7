"""Mount options sorted into mount(2) flags, data, propagation and recursive attributes."""

import pytest

from namespaces import syscalls as sc
from runtime import rootfs_options as ro
from runtime.rootfs_options import flags_from_statvfs, parse_options


def test_flags_and_data_keep_their_order():
    o = parse_options(["nosuid", "strictatime", "mode=755", "size=65536k", "noexec"])
    assert o.flags == sc.MS_NOSUID | ro.MS_STRICTATIME | sc.MS_NOEXEC
    assert o.data == "mode=755,size=65536k"
    assert not o.bind and o.propagation == ()


def test_later_option_wins():
    assert parse_options(["ro", "rw"]).flags & sc.MS_RDONLY == 0
    assert parse_options(["ro", "rw"]).cleared == sc.MS_RDONLY
    o = parse_options(["rw", "ro"])
    assert o.flags & sc.MS_RDONLY and not o.cleared & sc.MS_RDONLY
    assert parse_options(["nosuid", "suid"]).flags == 0


@pytest.mark.parametrize(
    ("opt", "flag"),
    [
        ("sync", ro.MS_SYNCHRONOUS),
        ("dirsync", ro.MS_DIRSYNC),
        ("mand", ro.MS_MANDLOCK),
        ("noatime", ro.MS_NOATIME),
        ("nodiratime", ro.MS_NODIRATIME),
        ("relatime", ro.MS_RELATIME),
        ("strictatime", ro.MS_STRICTATIME),
        ("nosymfollow", ro.MS_NOSYMFOLLOW),
        ("nodev", sc.MS_NODEV),
        ("remount", sc.MS_REMOUNT),
        ("lazytime", ro.MS_LAZYTIME),
        ("iversion", ro.MS_I_VERSION),
        ("silent", ro.MS_SILENT),
    ],
)
def test_each_setting_option(opt, flag):
    assert parse_options([opt]).flags == flag


@pytest.mark.parametrize(
    ("opt", "flag"),
    [
        ("async", ro.MS_SYNCHRONOUS),
        ("atime", ro.MS_NOATIME),
        ("dev", sc.MS_NODEV),
        ("exec", sc.MS_NOEXEC),
        ("suid", sc.MS_NOSUID),
        ("nomand", ro.MS_MANDLOCK),
        ("diratime", ro.MS_NODIRATIME),
        ("norelatime", ro.MS_RELATIME),
        ("nostrictatime", ro.MS_STRICTATIME),
        ("symfollow", ro.MS_NOSYMFOLLOW),
        ("loud", ro.MS_SILENT),
    ],
)
def test_each_clearing_option(opt, flag):
    o = parse_options([opt])
    assert o.flags == 0 and o.cleared == flag


def test_bind_and_rbind():
    assert parse_options(["bind"]).bind and not parse_options(["bind"]).recursive_bind
    assert parse_options(["rbind"]).recursive_bind
    assert parse_options(["defaults"]).flags == 0


def test_propagation_options_are_applied_later_in_order():
    o = parse_options(["rbind", "rslave", "private", "runbindable", "shared"])
    assert o.flags == sc.MS_BIND | sc.MS_REC
    assert o.propagation == (
        sc.MS_SLAVE | sc.MS_REC,
        sc.MS_PRIVATE,
        ro.MS_UNBINDABLE | sc.MS_REC,
        sc.MS_SHARED,
    )
    assert o.data == ""


def test_recursive_attributes_go_to_mount_setattr_not_mount():
    o = parse_options(["rbind", "rro", "rnosuid", "rdev", "rnoexec"])
    assert o.flags == sc.MS_BIND | sc.MS_REC
    assert o.rec_set == ro.MOUNT_ATTR_RDONLY | ro.MOUNT_ATTR_NOSUID | ro.MOUNT_ATTR_NOEXEC
    assert o.rec_clr == ro.MOUNT_ATTR_NODEV
    assert o.has_recursive_attrs
    assert parse_options(["rro", "rrw"]).rec_set == 0
    assert parse_options(["rro", "rrw"]).rec_clr == ro.MOUNT_ATTR_RDONLY


def test_recursive_atime_is_one_field():
    o = parse_options(["rnoatime", "rstrictatime"])
    assert o.rec_set == ro.MOUNT_ATTR_STRICTATIME
    assert o.rec_clr == ro.MOUNT_ATTR__ATIME  # the kernel wants the whole field cleared
    assert parse_options(["rrelatime"]).rec_set == ro.MOUNT_ATTR_RELATIME
    assert parse_options(["rrelatime"]).rec_clr == ro.MOUNT_ATTR__ATIME


def test_markers_are_not_data():
    o = parse_options(["rbind", "idmap", "tmpcopyup", "ridmap"])
    assert o.idmap and o.ridmap and o.tmpcopyup
    assert o.data == ""


def test_unknown_options_are_data():
    o = parse_options(["newinstance", "ptmxmode=0666", "gid=5", "nosuid"])
    assert o.data == "newinstance,ptmxmode=0666,gid=5"
    assert o.flags == sc.MS_NOSUID


def test_remount_flags_are_the_per_mount_ones():
    o = parse_options(["rbind", "ro", "nosuid", "sync", "noatime"])
    assert o.remount_flags == sc.MS_RDONLY | sc.MS_NOSUID | ro.MS_NOATIME


def test_flags_from_statvfs():
    # ST_RDONLY|ST_NOSUID|ST_NODEV|ST_RELATIME
    assert flags_from_statvfs(0x1 | 0x2 | 0x4 | 0x1000) == (
        sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | ro.MS_RELATIME
    )
    assert flags_from_statvfs(0x8 | 0x400) == sc.MS_NOEXEC | ro.MS_NOATIME
    # no atime bit at all means strictatime, which a remount must then ask for
    assert flags_from_statvfs(0) == ro.MS_STRICTATIME
