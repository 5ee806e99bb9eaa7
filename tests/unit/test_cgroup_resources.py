"""OCI linux.resources parsing, validation and the v1->v2 conversions (pure logic)."""

from typing import Any

import pytest

from cgroups.errors import ResourceError
from cgroups.resources import (
    BlockIO,
    Cpu,
    HugepageLimit,
    Memory,
    Pids,
    Resources,
    ThrottleDevice,
    WeightDevice,
    blkio_weight_to_io_weight,
    check_unified_key,
    cpu_max_value,
    cpu_shares_to_weight,
    io_rate_value,
    memory_value,
    needed_controllers,
    pids_max_value,
    swap_max_value,
)

# --- conversions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shares", "weight"),
    [
        (0, 0),  # unset
        (1, 1),  # below the v1 minimum: clamped like the kernel clamps
        (2, 1),
        (3, 2),
        (102, 17),  # 100m CPU in Kubernetes
        (512, 59),
        (1024, 100),  # v1 default -> v2 default
        (2000, 170),  # runc 1.4.0-rc.1 writes 170 for --cpu-shares 2000
        (2048, 174),
        (22000, 1204),  # the figure youki matched against runc 1.3.2
        (262143, 10000),
        (262144, 10000),
        (10**6, 10000),  # above the maximum: clamped
    ],
)
def test_shares_to_weight_is_runcs_log_quadratic_mapping(shares, weight):
    assert cpu_shares_to_weight(shares) == weight


def test_shares_to_weight_is_monotonic_and_in_range():
    weights = [cpu_shares_to_weight(s) for s in range(2, 262145, 97)]
    assert weights == sorted(weights)
    assert min(weights) >= 1
    assert max(weights) <= 10000


@pytest.mark.parametrize(
    ("quota", "period", "value"),
    [
        (None, None, None),
        (0, 0, None),
        (50000, None, "50000"),
        (50000, 100000, "50000 100000"),
        (-1, None, "max"),
        (-1, 100000, "max 100000"),
        (0, 20000, "max 20000"),
    ],
)
def test_cpu_max_as_runc_writes_it(quota, period, value):
    assert cpu_max_value(quota, period) == value


@pytest.mark.parametrize(
    ("swap", "limit", "value"),
    [
        (None, None, None),
        (0, 100, None),
        (None, -1, "max"),  # unlimited memory and unset swap: both unlimited
        (0, -1, "max"),
        (-1, 100, "max"),
        (-1, None, "max"),
        (300, -1, "300"),  # nothing to subtract from
        (300, 100, "200"),  # memory+swap total -> swap alone
        (100, 100, "0"),  # same value: no swap at all
    ],
)
def test_swap_conversion(swap, limit, value):
    assert swap_max_value(swap, limit) == value


@pytest.mark.parametrize(("swap", "limit"), [(300, None), (300, 0), (100, 300)])
def test_swap_conversion_refuses_impossible_pairs(swap, limit):
    with pytest.raises(ResourceError) as err:
        swap_max_value(swap, limit)
    assert err.value.field == "linux.resources.memory.swap"


def test_small_value_helpers():
    assert memory_value(None) is None
    assert memory_value(0) is None
    assert memory_value(-1) == "max"
    assert memory_value(4096) == "4096"
    assert pids_max_value(None) is None
    assert pids_max_value(-1) == "max"
    assert pids_max_value(0) == "max"  # spec 1.2 "default is no limit", as podman/CRI-O send it
    assert pids_max_value(64) == "64"
    assert blkio_weight_to_io_weight(0) == 0
    assert blkio_weight_to_io_weight(10) == 1
    assert blkio_weight_to_io_weight(500) == 4950
    assert blkio_weight_to_io_weight(1000) == 10000
    assert io_rate_value(0) == "max"
    assert io_rate_value(1048576) == "1048576"


# --- parsing ------------------------------------------------------------------------

FULL = {
    "cpu": {
        "shares": 1024,
        "quota": 50000,
        "period": 100000,
        "realtimeRuntime": 950000,
        "realtimePeriod": 1000000,
        "cpus": "0-1",
        "mems": "0",
        "idle": 0,
    },
    "memory": {
        "limit": 536870912,
        "reservation": 268435456,
        "swap": 1073741824,
        "kernel": -1,
        "kernelTCP": -1,
        "swappiness": 0,
        "disableOOMKiller": False,
        "useHierarchy": True,
        "checkBeforeUpdate": True,
    },
    "pids": {"limit": 32771},
    "blockIO": {
        "weight": 10,
        "leafWeight": 10,
        "weightDevice": [
            {"major": 8, "minor": 0, "weight": 500, "leafWeight": 300},
            {"major": 8, "minor": 16, "weight": 500},
        ],
        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 600}],
        "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 300}],
    },
    "hugepageLimits": [{"pageSize": "2MB", "limit": 9223372036854772000}],
    "unified": {"memory.high": "400000000", "cgroup.max.descendants": "10"},
    "devices": [{"allow": False, "access": "rwm"}],  # cgroups/devices.py's business
    "network": {"classID": 1048577},  # v1 only, ignored
    "somethingNew": {"x": 1},  # unknown properties are ignored
}


def test_parse_the_specs_example_config():
    r: Any = Resources.from_oci(FULL)
    assert r.cpu == Cpu(
        shares=1024,
        quota=50000,
        period=100000,
        cpus="0-1",
        mems="0",
        idle=0,
        realtime_runtime=950000,
        realtime_period=1000000,
    )
    assert r.memory.limit == 536870912
    assert r.memory.reservation == 268435456
    assert r.memory.check_before_update is True
    assert r.pids == Pids(32771)
    assert r.block_io.weight == 10
    assert r.block_io.weight_device == (
        WeightDevice(8, 0, 500, 300),
        WeightDevice(8, 16, 500, None),
    )
    assert r.block_io.throttle_read_bps_device == (ThrottleDevice(8, 0, 600),)
    assert r.block_io.throttle_write_iops_device == (ThrottleDevice(8, 16, 300),)
    assert r.hugepage_limits == (HugepageLimit("2MB", 9223372036854772000),)
    assert r.unified == {"memory.high": "400000000", "cgroup.max.descendants": "10"}


def test_empty_and_missing_sections():
    assert Resources.from_oci(None) == Resources()
    assert Resources.from_oci({}) == Resources()
    assert needed_controllers(Resources.from_oci({})) == frozenset()


def test_ignored_fields_are_reported():
    ignored = Resources.from_oci(FULL).ignored_fields()
    assert ignored == [
        "linux.resources.cpu.realtimeRuntime",
        "linux.resources.cpu.realtimePeriod",
        "linux.resources.memory.swappiness",
        "linux.resources.blockIO.leafWeight",
        "linux.resources.blockIO.weightDevice[].leafWeight",
    ]
    assert Resources(memory=Memory(disable_oom_killer=True, swappiness=10)).ignored_fields() == [
        "linux.resources.memory.swappiness",
        "linux.resources.memory.disableOOMKiller",
    ]


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"cpu": {"shares": "1024"}}, "linux.resources.cpu.shares"),
        ({"cpu": {"shares": True}}, "linux.resources.cpu.shares"),
        ({"cpu": {"shares": -5}}, "linux.resources.cpu.shares"),
        ({"cpu": {"quota": 500}}, "linux.resources.cpu.quota"),  # below the kernel's 1ms
        ({"cpu": {"period": 999}}, "linux.resources.cpu.period"),
        ({"cpu": {"period": 1000001}}, "linux.resources.cpu.period"),
        ({"cpu": {"cpus": "0-"}}, "linux.resources.cpu.cpus"),
        ({"cpu": {"cpus": "3-1"}}, "linux.resources.cpu.cpus"),
        ({"cpu": {"mems": 0}}, "linux.resources.cpu.mems"),
        ({"cpu": {"idle": 2}}, "linux.resources.cpu.idle"),
        ({"cpu": []}, "linux.resources.cpu"),
        ({"memory": {"limit": -2}}, "linux.resources.memory.limit"),
        ({"memory": {"limit": 1.5}}, "linux.resources.memory.limit"),
        ({"memory": {"swap": 100}}, "linux.resources.memory.swap"),  # no memory limit
        ({"memory": {"limit": 200, "swap": 100}}, "linux.resources.memory.swap"),
        ({"memory": {"swappiness": 101}}, "linux.resources.memory.swappiness"),
        ({"memory": {"checkBeforeUpdate": "yes"}}, "linux.resources.memory.checkBeforeUpdate"),
        ({"pids": {"limit": "10"}}, "linux.resources.pids.limit"),
        ({"blockIO": {"weight": 5}}, "linux.resources.blockIO.weight"),
        ({"blockIO": {"weight": 1001}}, "linux.resources.blockIO.weight"),
        (
            {"blockIO": {"weightDevice": [{"major": 8, "minor": 0, "weight": 2000}]}},
            "linux.resources.blockIO.weightDevice[0].weight",
        ),
        (
            {"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0}]}},
            "linux.resources.blockIO.throttleReadBpsDevice[0].rate",
        ),
        (
            {"blockIO": {"throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": -1}]}},
            "linux.resources.blockIO.throttleWriteBpsDevice[0].rate",
        ),
        (
            {"blockIO": {"throttleReadIOPSDevice": {}}},
            "linux.resources.blockIO.throttleReadIOPSDevice",
        ),
        (
            {"hugepageLimits": [{"pageSize": "2M", "limit": 1}]},
            "linux.resources.hugepageLimits[0].pageSize",
        ),
        ({"hugepageLimits": [{"pageSize": "2MB"}]}, "linux.resources.hugepageLimits[0].limit"),
        (
            {"hugepageLimits": [{"pageSize": "2MB", "limit": 1}, {"pageSize": "2MB", "limit": 2}]},
            "linux.resources.hugepageLimits",
        ),
        ({"unified": {"memory.high": 5}}, "linux.resources.unified.memory.high"),
        ({"unified": ["memory.high"]}, "linux.resources.unified"),
    ],
)
def test_invalid_values_name_their_field(doc, field):
    with pytest.raises(ResourceError) as err:
        Resources.from_oci(doc)
    assert err.value.field == field
    assert field in str(err.value)


@pytest.mark.parametrize(
    "key",
    [
        "../memory.max",
        "a/b.c",
        "..",
        "memory",  # not CONTROLLER.FILE
        "memory.max\0",
        "cgroup.procs",
        "cgroup.kill",
        "cgroup.subtree_control",
        "cgroup.freeze",
        "memory.pressure",
        "MEMORY.max",
    ],
)
def test_unified_keys_are_refused(key):
    with pytest.raises(ResourceError) as err:
        Resources(unified={key: "1"})
    assert err.value.field == "linux.resources.unified"


def test_unified_keys_accepted():
    for key in ("memory.high", "memory.oom.group", "cgroup.max.depth", "hugetlb.2MB.rsvd.max"):
        assert check_unified_key(key) == key


def test_direct_construction_validates_too():
    with pytest.raises(ResourceError, match=r"linux\.resources\.memory\.limit"):
        Memory(limit=-7)
    with pytest.raises(ResourceError, match=r"linux\.resources\.blockIO\.throttleDevice\.major"):
        ThrottleDevice(-1, 0, 10)


# --- which controllers a resource set needs ---------------------------------------------


@pytest.mark.parametrize(
    ("resources", "needed"),
    [
        (Resources(), set()),
        (Resources(cpu=Cpu(shares=512)), {"cpu"}),
        (Resources(cpu=Cpu(quota=-1)), {"cpu"}),
        (Resources(cpu=Cpu(cpus="0")), {"cpuset"}),
        (Resources(cpu=Cpu(shares=0, cpus="")), set()),  # zero values mean unset
        (Resources(cpu=Cpu(realtime_runtime=1000)), set()),  # ignored on v2
        (Resources(memory=Memory(limit=1 << 20)), {"memory"}),
        (Resources(memory=Memory(oom_group=False)), {"memory"}),
        (Resources(memory=Memory(swappiness=10, kernel=100)), set()),
        (Resources(pids=Pids(0)), set()),  # no limit: nothing to enforce
        (Resources(pids=Pids(None)), set()),
        (Resources(block_io=BlockIO(weight=100)), {"io"}),
        (Resources(block_io=BlockIO(leaf_weight=100)), set()),
        (
            Resources(block_io=BlockIO(throttle_read_bps_device=(ThrottleDevice(8, 0, 1),))),
            {"io"},
        ),
        (Resources(hugepage_limits=(HugepageLimit("2MB", 0),)), {"hugetlb"}),
        (Resources(unified={"memory.high": "1", "cgroup.max.depth": "3"}), {"memory"}),
    ],
)
def test_needed_controllers(resources, needed):
    assert needed_controllers(resources) == needed


def test_no_pids_limit_needs_no_controller():
    assert "pids" not in needed_controllers(Resources.from_oci({"pids": {"limit": 0}}))
    assert "pids" not in needed_controllers(Resources.from_oci({"pids": {"limit": -1}}))
    assert "pids" in needed_controllers(Resources.from_oci({"pids": {"limit": 5}}))
