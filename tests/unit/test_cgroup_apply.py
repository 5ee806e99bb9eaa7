"""Planning and validating cgroup writes against a fake cgroup tree in tmp_path.

The real kernel is in tests/integration and tests/vm; here the point is
which file gets which value, and that a refused set writes nothing.
"""

from pathlib import Path

import pytest

from cgroups.discovery import CgroupHierarchy, CgroupMode
from cgroups.errors import (
    CgroupPathError,
    ControllerUnavailable,
    FeatureUnavailable,
    ResourceError,
)
from cgroups.manager import CgroupV2Manager, CgroupView, cgroup_dir, plan, unavailable_reason
from cgroups.resources import (
    BlockIO,
    Cpu,
    HugepageLimit,
    Memory,
    Pids,
    Resources,
    ThrottleDevice,
    WeightDevice,
)

ALL = "cpuset cpu io memory hugetlb pids"
V2_FILES = {
    "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.freeze": "0\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    "cpu.weight": "100\n",
    "cpu.max": "max 100000\n",
    "cpu.idle": "0\n",
    "cpuset.cpus": "\n",
    "cpuset.mems": "\n",
    "memory.max": "max\n",
    "memory.high": "max\n",
    "memory.low": "0\n",
    "memory.min": "0\n",
    "memory.swap.max": "max\n",
    "memory.oom.group": "0\n",
    "memory.current": "4096\n",
    "memory.swap.current": "0\n",
    "pids.max": "max\n",
    "io.max": "",
    "io.weight": "default 100\n",
    "hugetlb.2MB.max": "max\n",
    "hugetlb.2MB.rsvd.max": "max\n",
    "hugetlb.1GB.max": "max\n",
}
READ_ONLY = {"memory.current", "memory.swap.current", "cpu.stat", "cgroup.events"}

PROC_CGROUPS_HYBRID = """\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t1\t1
cpu\t1\t1\t1
memory\t4\t38\t1
hugetlb\t0\t1\t1
pids\t8\t1\t1
rdma\t0\t1\t0
misc\t0\t1\t1
"""


def make_cgroup(path: Path, files: dict[str, str], controllers: str = ALL) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in {**files, "cgroup.controllers": controllers + "\n"}.items():
        f = path / name
        f.write_text(text)
        f.chmod(0o444 if name in READ_ONLY or name == "cgroup.controllers" else 0o644)
    return path


@pytest.fixture
def devblock(tmp_path):
    """A fake /sys/dev/block: disks 8:0 and 254:0, and partition 8:1."""
    root = tmp_path / "dev-block"
    for dev in ("8:0", "254:0", "8:1"):
        (root / dev).mkdir(parents=True)
    (root / "8:1" / "partition").write_text("1\n")
    return root


def view(tmp_path, devblock, files=None, controllers=ALL, drop=()):
    files = {k: v for k, v in (files or V2_FILES).items() if k not in drop}
    cg = make_cgroup(tmp_path / "cg", files, controllers)
    return CgroupView.read(cg, devblock)


def writes(v, resources):
    return plan(v, resources).writes


# --- one apply_* per file -----------------------------------------------------------------


def test_full_plan_order_and_values(tmp_path, devblock):
    r = Resources(
        cpu=Cpu(shares=1024, quota=50000, period=100000, cpus="0-1", mems="0", idle=0),
        memory=Memory(
            limit=512 << 20, reservation=256 << 20, swap=1 << 30, high=400 << 20, min=1 << 20
        ),
        pids=Pids(100),
        block_io=BlockIO(
            weight=500,
            weight_device=(WeightDevice(8, 0, 1000),),
            throttle_read_bps_device=(ThrottleDevice(8, 0, 1048576),),
            throttle_write_iops_device=(ThrottleDevice(8, 0, 0), ThrottleDevice(254, 0, 50)),
        ),
        hugepage_limits=(HugepageLimit("2MB", 4 << 21),),
        unified={"memory.oom.group": "1"},
    )
    assert writes(view(tmp_path, devblock), r) == [
        ("pids.max", "100"),
        ("memory.swap.max", str((1 << 30) - (512 << 20))),
        ("memory.max", str(512 << 20)),
        ("memory.high", str(400 << 20)),
        ("memory.low", str(256 << 20)),
        ("memory.min", str(1 << 20)),
        ("io.weight", "4950"),
        ("io.weight", "8:0 10000"),
        ("io.max", "8:0 rbps=1048576 wiops=max"),
        ("io.max", "254:0 wiops=50"),
        ("cpu.weight", "100"),
        ("cpu.max", "50000 100000"),
        ("cpu.idle", "0"),
        ("cpuset.cpus", "0-1"),
        ("cpuset.mems", "0"),
        ("hugetlb.2MB.max", str(4 << 21)),
        ("hugetlb.2MB.rsvd.max", str(4 << 21)),
        ("memory.oom.group", "1"),  # unified last: it overrides typed fields, as in runc
    ]


def test_empty_resources_write_nothing(tmp_path, devblock):
    assert writes(view(tmp_path, devblock), Resources()) == []
    ignored_only = Resources(cpu=Cpu(realtime_runtime=1), memory=Memory(swappiness=5))
    assert writes(view(tmp_path, devblock), ignored_only) == []


def test_unlimited_values(tmp_path, devblock):
    r = Resources(memory=Memory(limit=-1), pids=Pids(-1), cpu=Cpu(quota=-1))
    assert writes(view(tmp_path, devblock), r) == [
        ("pids.max", "max"),
        ("memory.swap.max", "max"),
        ("memory.max", "max"),
        ("cpu.max", "max"),
    ]


def test_memory_oom_group_extension(tmp_path, devblock):
    r = Resources(memory=Memory(oom_group=True))
    assert writes(view(tmp_path, devblock), r) == [("memory.oom.group", "1")]


def test_swap_without_swap_accounting(tmp_path, devblock):
    v = view(tmp_path, devblock, drop=("memory.swap.max",))
    # "no swap" and "unlimited swap" need no file, as runc ignores them
    assert writes(v, Resources(memory=Memory(limit=100, swap=100))) == [("memory.max", "100")]
    assert writes(v, Resources(memory=Memory(limit=-1))) == [("memory.max", "max")]
    with pytest.raises(FeatureUnavailable) as err:
        writes(v, Resources(memory=Memory(limit=100, swap=300)))
    assert err.value.field == "linux.resources.memory.swap"
    assert err.value.file == "memory.swap.max"
    assert "swap accounting" in err.value.reason


def test_controller_not_enabled_for_the_cgroup(tmp_path, devblock):
    v = view(tmp_path, devblock, controllers="cpu", drop=("pids.max",))
    with pytest.raises(FeatureUnavailable) as err:
        writes(v, Resources(pids=Pids(5)))
    assert err.value.file == "pids.max"
    assert "pids controller is not enabled" in err.value.reason


def test_cpu_idle_needs_a_newer_kernel(tmp_path, devblock):
    v = view(tmp_path, devblock, drop=("cpu.idle",))
    with pytest.raises(FeatureUnavailable) as err:
        writes(v, Resources(cpu=Cpu(idle=1)))
    assert err.value.field == "linux.resources.cpu.idle"
    assert "kernel does not provide" in err.value.reason


def test_io_weight_with_bfq_and_iocost(tmp_path, devblock):
    files = {**V2_FILES, "io.bfq.weight": "default 100\n"}
    r = Resources(block_io=BlockIO(weight=500, weight_device=(WeightDevice(254, 0, 200),)))
    assert writes(view(tmp_path, devblock, files), r) == [
        ("io.weight", "4950"),
        ("io.weight", "254:0 1920"),
        ("io.bfq.weight", "500"),  # bfq uses OCI's own 1..1000 scale
        ("io.bfq.weight", "254:0 200"),
    ]


def test_io_weight_with_bfq_only(tmp_path, devblock):
    files = {**V2_FILES, "io.bfq.weight": "default 100\n"}
    v = view(tmp_path, devblock, files, drop=("io.weight",))
    assert writes(v, Resources(block_io=BlockIO(weight=500))) == [("io.bfq.weight", "500")]


def test_io_weight_without_any_weight_file(tmp_path, devblock):
    v = view(tmp_path, devblock, drop=("io.weight",))
    with pytest.raises(FeatureUnavailable) as err:
        writes(v, Resources(block_io=BlockIO(weight=500)))
    assert "io.bfq.weight" in err.value.reason
    # throttling alone still works without a weight interface
    r = Resources(block_io=BlockIO(throttle_read_iops_device=(ThrottleDevice(8, 0, 10),)))
    assert writes(v, r) == [("io.max", "8:0 riops=10")]


@pytest.mark.parametrize(("dev", "why"), [((9, 9), "no block device 9:9"), ((8, 1), "partition")])
def test_io_max_needs_a_whole_disk(tmp_path, devblock, dev, why):
    r = Resources(block_io=BlockIO(throttle_read_bps_device=(ThrottleDevice(dev[0], dev[1], 100),)))
    with pytest.raises(ResourceError, match=why):
        writes(view(tmp_path, devblock), r)


def test_hugetlb_unknown_page_size(tmp_path, devblock):
    with pytest.raises(FeatureUnavailable) as err:
        writes(view(tmp_path, devblock), Resources(hugepage_limits=(HugepageLimit("64KB", 0),)))
    assert err.value.file == "hugetlb.64KB.max"
    assert "sizes: 1GB, 2MB" in err.value.reason


def test_hugetlb_without_rsvd_files(tmp_path, devblock):
    v = view(tmp_path, devblock, drop=("hugetlb.2MB.rsvd.max",))
    assert writes(v, Resources(hugepage_limits=(HugepageLimit("2MB", 0),))) == [
        ("hugetlb.2MB.max", "0")
    ]


def test_unified_validation(tmp_path, devblock):
    v = view(tmp_path, devblock, controllers="cpu memory", drop=("pids.max",))
    with pytest.raises(ResourceError) as err:
        writes(v, Resources(unified={"memory.nonexistent": "1"}))
    assert err.value.field == "linux.resources.unified.memory.nonexistent"
    assert err.value.reason == "the cgroup has no such file"
    with pytest.raises(ResourceError, match="pids controller is not enabled"):
        writes(v, Resources(unified={"pids.max": "10"}))
    with pytest.raises(ResourceError, match="read-only"):
        writes(v, Resources(unified={"memory.current": "10"}))
    assert writes(v, Resources(unified={"memory.high": "1G"})) == [("memory.high", "1G")]


def test_a_refused_field_refuses_the_whole_set(tmp_path, devblock):
    """Planning stops at the first bad field, before commit() wrote anything."""
    v = view(tmp_path, devblock)
    r = Resources(pids=Pids(10), memory=Memory(limit=100), unified={"memory.nope": "1"})
    with pytest.raises(ResourceError):
        plan(v, r)
    assert (Path(v.path) / "pids.max").read_text() == "max\n"
    assert (Path(v.path) / "memory.max").read_text() == "max\n"


# --- the manager against a fake hierarchy -------------------------------------------------


def fake_hierarchy(mount: Path, controllers: str = ALL, mount_root: str = "/") -> CgroupHierarchy:
    return CgroupHierarchy(
        CgroupMode.UNIFIED, mount, mount_root, frozenset(controllers.split()), "/", frozenset()
    )


@pytest.fixture
def tree(tmp_path):
    """mount/ (root), mount/pod (an existing parent), mount/pod/ctr not yet created."""
    mount = tmp_path / "mnt"
    make_cgroup(mount, {"cgroup.subtree_control": "cpu\n", "cgroup.procs": "1\n"}, "cpu memory")
    make_cgroup(mount / "pod", {"cgroup.subtree_control": "\n", "cgroup.procs": ""}, "cpu")
    proc = tmp_path / "proc-cgroups"
    proc.write_text(PROC_CGROUPS_HYBRID)
    return mount, proc


def test_create_enables_only_needed_controllers_down_the_path(tree):
    mount, proc = tree
    m = CgroupV2Manager("/pod/ctr", fake_hierarchy(mount), proc_cgroups=proc)
    m.create(Resources(memory=Memory(limit=1 << 20)))
    assert m.path == mount / "pod" / "ctr"
    assert m.path.is_dir()
    # regular files stand in for cgroupfs: the write replaces the start of the file
    assert (mount / "cgroup.subtree_control").read_text().startswith("+memory")
    assert (mount / "pod" / "cgroup.subtree_control").read_text().startswith("+memory")


def test_create_without_resources_touches_no_subtree_control(tree):
    mount, proc = tree
    m = CgroupV2Manager("pod/ctr", fake_hierarchy(mount), proc_cgroups=proc)
    m.create()
    assert m.exists()
    assert (mount / "cgroup.subtree_control").read_text() == "cpu\n"
    assert (mount / "pod" / "cgroup.subtree_control").read_text() == "\n"


def test_already_enabled_controllers_are_not_rewritten(tree):
    mount, proc = tree
    m = CgroupV2Manager("pod/ctr", fake_hierarchy(mount), proc_cgroups=proc)
    (mount / "pod" / "cgroup.subtree_control").write_text("cpu\n")
    m.create(Resources(cpu=Cpu(shares=100)))
    assert (mount / "cgroup.subtree_control").read_text() == "cpu\n"
    assert (mount / "pod" / "cgroup.subtree_control").read_text() == "cpu\n"


@pytest.mark.parametrize(
    ("resources", "controller", "reason"),
    [
        (Resources(pids=Pids(5)), "pids", "bound to a cgroup v1 hierarchy"),
        (Resources(cpu=Cpu(cpus="0")), "cpuset", "bound to a cgroup v1 hierarchy"),
        (Resources(hugepage_limits=(HugepageLimit("2MB", 0),)), "hugetlb", "not delegated"),
        (Resources(unified={"rdma.max": "x"}), "rdma", "cgroup_disable=rdma"),
        (Resources(unified={"foo.bar": "x"}), "foo", "this kernel has no foo controller"),
    ],
)
def test_unavailable_controller_creates_nothing(tree, resources, controller, reason):
    mount, proc = tree
    m = CgroupV2Manager("pod/ctr", fake_hierarchy(mount), proc_cgroups=proc)
    before = (mount / "cgroup.subtree_control").read_text()
    with pytest.raises(ControllerUnavailable) as err:
        m.create(resources)
    assert err.value.controller == controller
    assert reason in err.value.reason
    assert str(mount / "cgroup.controllers") in str(err.value)
    assert not m.exists()
    assert (mount / "cgroup.subtree_control").read_text() == before


def test_several_unavailable_controllers_name_the_first_in_a_fixed_order(tree):
    mount, proc = tree
    m = CgroupV2Manager("pod/ctr", fake_hierarchy(mount), proc_cgroups=proc)
    r = Resources(pids=Pids(5), cpu=Cpu(cpus="0"), unified={"io.max": "x"})
    with pytest.raises(ControllerUnavailable) as err:
        m.create(r)
    assert err.value.controller == "cpuset"


def test_no_internal_process_rule_is_checked_first(tree):
    mount, proc = tree
    (mount / "pod" / "cgroup.procs").write_text("4242\n")
    m = CgroupV2Manager("pod/ctr", fake_hierarchy(mount), proc_cgroups=proc)
    with pytest.raises(ControllerUnavailable, match="no-internal-process") as err:
        m.create(Resources(memory=Memory(limit=1 << 20)))
    assert err.value.controller == "memory"
    assert not m.exists()
    # the hierarchy's real root is exempt from the rule (it has PID 1 here)
    (mount / "pod" / "cgroup.procs").write_text("")
    m.create(Resources(memory=Memory(limit=1 << 20)))


def test_apply_on_fake_tree_writes_after_validating(tree, devblock):
    mount, proc = tree
    m = CgroupV2Manager("pod/ctr", fake_hierarchy(mount), proc_cgroups=proc, sys_dev_block=devblock)
    make_cgroup(mount / "pod" / "ctr", V2_FILES)
    m.apply(Resources(cpu=Cpu(shares=1024), memory=Memory(limit=1 << 20)))
    # regular files stand in for cgroupfs: the write replaces the start of the file
    assert (m.path / "cpu.weight").read_text().strip() == "100"
    assert (m.path / "memory.max").read_text() == str(1 << 20)


def test_check_before_update_refuses_a_limit_below_usage(tree, devblock):
    mount, proc = tree
    m = CgroupV2Manager("pod/ctr", fake_hierarchy(mount), proc_cgroups=proc, sys_dev_block=devblock)
    make_cgroup(mount / "pod" / "ctr", V2_FILES)  # memory.current is 4096
    (mount / "cgroup.controllers").write_text(ALL)
    with pytest.raises(ResourceError, match="current usage of 4096") as err:
        m.apply(Resources(pids=Pids(3), memory=Memory(limit=4096, check_before_update=True)))
    assert err.value.field == "linux.resources.memory.limit"
    assert (m.path / "pids.max").read_text() == "max\n"
    m.apply(Resources(memory=Memory(limit=8192, check_before_update=True)))
    assert (m.path / "memory.max").read_text().strip() == "8192"


# --- paths and reasons ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "/", "..", "a/../../etc", "a/..", "./."])
def test_cgroup_paths_never_leave_the_hierarchy(bad):
    with pytest.raises(CgroupPathError):
        cgroup_dir(Path("/sys/fs/cgroup"), bad)


def test_cgroup_path_forms():
    root = Path("/sys/fs/cgroup")
    assert cgroup_dir(root, "/pinnace/a") == str(root / "pinnace" / "a")
    assert cgroup_dir(root, "pinnace//a/./") == str(root / "pinnace" / "a")


def test_unavailable_reasons():
    mp = Path("/sys/fs/cgroup/unified")
    assert unavailable_reason("memory", mp, PROC_CGROUPS_HYBRID) == (
        "not in /sys/fs/cgroup/unified/cgroup.controllers (bound to a cgroup v1 hierarchy)"
    )
    assert "cgroup_disable=rdma" in unavailable_reason("rdma", mp, PROC_CGROUPS_HYBRID)
    assert "not delegated" in unavailable_reason("misc", mp, PROC_CGROUPS_HYBRID)
    assert "no io controller" in unavailable_reason("io", mp, PROC_CGROUPS_HYBRID)
    assert unavailable_reason("io", mp, None) == (
        "not in /sys/fs/cgroup/unified/cgroup.controllers"
    )
