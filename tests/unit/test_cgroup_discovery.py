from pathlib import Path

from cgroups.discovery import (
    CgroupHierarchy,
    CgroupMode,
    choose_unified_mount,
    discover,
    parse_mountinfo,
    parse_proc_cgroups,
    parse_self_cgroup,
)

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
PURE = """\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_mountinfo_fields_and_optional_tags():
    mounts = parse_mountinfo(HYBRID)
    assert [m.fstype for m in mounts] == ["tmpfs", "cgroup", "cgroup", "cgroup2"]
    assert mounts[3].mount_point == "/sys/fs/cgroup/unified"
    assert "nsdelegate" in mounts[3].super_options


def test_mountinfo_unescapes_octal():
    line = r"50 25 0:40 / /mnt/with\040space rw - tmpfs a\134b rw"
    (m,) = parse_mountinfo(line)
    assert m.mount_point == "/mnt/with space"
    assert m.source == "a\\b"


def test_unified_mount_preference():
    hybrid = choose_unified_mount(parse_mountinfo(HYBRID))
    assert hybrid is not None and hybrid.mount_point == "/sys/fs/cgroup/unified"
    both = PURE + "60 25 0:50 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    pure = choose_unified_mount(parse_mountinfo(both))
    assert pure is not None and pure.mount_point == "/sys/fs/cgroup"
    assert choose_unified_mount(parse_mountinfo("")) is None


def test_proc_cgroups_bound_to_v1():
    text = (
        "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nio\t0\t1\t1\npids\t8\t1\t0\n"
    )
    assert parse_proc_cgroups(text) == {"cpu"}


def test_self_cgroup():
    assert parse_self_cgroup("9:name=systemd:/\n0::/a/b\n") == "/a/b"
    assert parse_self_cgroup("1:cpu:/\n") is None


def test_own_path_relative_to_mount_root():
    h = CgroupHierarchy(
        CgroupMode.UNIFIED, Path("/sys/fs/cgroup"), "/pod", frozenset(), "/pod/ctr", frozenset()
    )
    assert h.own_path == Path("/sys/fs/cgroup/ctr")
    outside = CgroupHierarchy(
        CgroupMode.UNIFIED, Path("/sys/fs/cgroup"), "/pod", frozenset(), "/other", frozenset()
    )
    assert outside.own_path is None


def test_discover_from_files(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mi = tmp_path / "mountinfo"
    mi.write_text(f"30 25 0:26 / {root} rw - cgroup2 cgroup2 rw\n")
    pc = tmp_path / "cgroups"
    pc.write_text("#h\ncpu\t0\t1\t1\n")
    sc = tmp_path / "self"
    sc.write_text("0::/user.slice\n")
    h = discover(mi, pc, sc)
    assert h.mode is CgroupMode.UNIFIED
    assert h.controllers == {"cpuset", "cpu", "io", "memory", "pids"}
    assert h.own_path == root / "user.slice"


def test_discover_legacy_only(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    pc = tmp_path / "cgroups"
    pc.write_text("cpu\t1\t1\t1\n")
    h = discover(mi, pc, tmp_path / "missing")
    assert h.mode is CgroupMode.LEGACY
    assert h.mount_point is None
    assert h.v1_controllers == {"cpu"}
