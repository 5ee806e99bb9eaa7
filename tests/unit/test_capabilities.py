"""Capability sets: names to bitmasks, what the kernel would refuse, and the prctl calls made."""

import pytest

from runtime import capabilities as C
from runtime.errors import ProcessSetupError, SpecError
from tests.fakes import RecordingSyscalls


def bit(*names):
    return C.mask_of(names)


def test_table_matches_the_kernel_header_numbers():
    assert C.CAPABILITIES["CAP_CHOWN"] == 0
    assert C.CAPABILITIES["CAP_SYS_ADMIN"] == 21
    assert C.CAPABILITIES["CAP_SYS_RESOURCE"] == 24
    assert C.CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    assert sorted(C.CAPABILITIES.values()) == list(range(41))


def test_kernel_last_cap_reads_proc():
    with open("/proc/sys/kernel/cap_last_cap") as f:
        assert C.kernel_last_cap() == int(f.read())


def test_kernel_last_cap_without_proc(tmp_path):
    assert C.kernel_last_cap(str(tmp_path / "missing")) == 40


def test_sets_become_bitmasks():
    plan = C.plan_capabilities(
        {
            "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_CHOWN"],
            "permitted": ["CAP_CHOWN", "CAP_KILL"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL"],
        },
        last_cap=40,
    )
    assert plan.bounding == 0b10000100001
    assert plan.effective == 0b1
    assert plan.permitted == bit("CAP_CHOWN", "CAP_KILL")
    assert plan.inheritable == plan.ambient == bit("CAP_KILL")
    assert plan.notes == ()
    assert plan.get("bounding") == plan.bounding


def test_absent_section_or_set_is_empty():
    assert C.plan_capabilities(None, last_cap=40) == C.CapabilityPlan(last_cap=40)
    plan = C.plan_capabilities({"bounding": ["CAP_KILL"]}, last_cap=40)
    assert (plan.effective, plan.permitted, plan.inheritable, plan.ambient) == (0, 0, 0, 0)


def test_names_of_and_mask_of_round_trip():
    names = ["CAP_CHOWN", "CAP_SETUID", "CAP_BPF"]
    assert C.names_of(C.mask_of(names)) == names


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"bounding": ["CAP_CHOWN", "CAP_NOPE"]}, "process.capabilities.bounding[1]", "unknown capability 'CAP_NOPE'"),
        ({"effective": ["chown"]}, "process.capabilities.effective[0]", "unknown capability"),
        ({"ambient": [7]}, "process.capabilities.ambient[0]", "string"),
        ({"permitted": "CAP_KILL"}, "process.capabilities.permitted", "array"),
        (["CAP_KILL"], "process.capabilities", "object"),
        ({"effective": ["CAP_KILL"], "permitted": []}, "process.capabilities.effective", "CAP_KILL not in the permitted"),
        ({"inheritable": ["CAP_KILL"], "bounding": ["CAP_CHOWN"]}, "process.capabilities.inheritable", "CAP_KILL not in the bounding"),
    ],
)  # fmt: skip
def test_errors_name_the_set_and_index(raw, field, words):
    with pytest.raises(SpecError) as info:
        C.plan_capabilities(raw, last_cap=40)
    assert info.value.field == field
    assert words in info.value.message


def test_caps_newer_than_the_kernel_are_ignored_with_a_note():
    plan = C.plan_capabilities(
        {"bounding": ["CAP_KILL", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]}, last_cap=38
    )
    assert plan.bounding == bit("CAP_KILL")
    assert plan.last_cap == 38
    assert len(plan.notes) == 2
    assert "process.capabilities.bounding[1]: CAP_BPF" in plan.notes[0]
    assert "cap_last_cap 38" in plan.notes[0]


def test_ambient_outside_permitted_and_inheritable_is_dropped_with_a_note():
    plan = C.plan_capabilities(
        {
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL", "CAP_CHOWN"],
        },
        last_cap=40,
    )
    assert plan.ambient == bit("CAP_KILL")
    assert "CAP_CHOWN" in plan.notes[0] and "ambient" in plan.notes[0]


def test_drop_bounding_drops_only_what_is_still_there():
    plan = C.CapabilityPlan(bounding=bit("CAP_CHOWN", "CAP_KILL"), last_cap=6)
    # the kernel says caps 0..4 are in the bounding set, 5 and 6 are not
    present = {cap: int(cap <= 4) for cap in range(7)}
    sys = RecordingSyscalls()

    def prctl(option, arg2=0, arg3=0):
        sys.calls.append(("prctl", (option, arg2)))
        return present[arg2] if option == C.PR_CAPBSET_READ else 0

    sys.prctl = prctl  # type: ignore[attr-defined]
    C.drop_bounding(plan, sys=sys)
    drops = [a[1] for n, a in sys.calls if a[0] == C.PR_CAPBSET_DROP]
    assert drops == [1, 2, 3, 4]  # 0 (CHOWN) kept, 5 (KILL) kept, 6 already gone


def test_drop_bounding_error_names_the_capability():
    plan = C.CapabilityPlan(bounding=0, last_cap=0)
    sys = RecordingSyscalls(prctl={C.PR_CAPBSET_READ: 1, C.PR_CAPBSET_DROP: (1,)})
    with pytest.raises(ProcessSetupError) as info:
        C.drop_bounding(plan, sys=sys)
    assert "CAP_CHOWN" in str(info.value)
    assert info.value.field == "process.capabilities.bounding"


def test_raise_ambient_clears_then_raises_each():
    plan = C.CapabilityPlan(ambient=bit("CAP_CHOWN", "CAP_NET_RAW"), last_cap=40)
    sys = RecordingSyscalls()
    C.raise_ambient(plan, sys=sys)
    assert sys.calls == [
        ("prctl", (C.PR_CAP_AMBIENT, C.PR_CAP_AMBIENT_CLEAR_ALL, 0)),
        ("prctl", (C.PR_CAP_AMBIENT, C.PR_CAP_AMBIENT_RAISE, 0)),
        ("prctl", (C.PR_CAP_AMBIENT, C.PR_CAP_AMBIENT_RAISE, 13)),
    ]


def test_raise_ambient_failure_names_the_capability():
    plan = C.CapabilityPlan(ambient=bit("CAP_NET_RAW"), last_cap=40)
    sys = RecordingSyscalls()

    def prctl(option, arg2=0, arg3=0):
        if arg2 == C.PR_CAP_AMBIENT_RAISE:
            from namespaces.syscalls import SyscallError

            raise SyscallError(1, "prctl")
        return 0

    sys.prctl = prctl  # type: ignore[attr-defined]
    with pytest.raises(ProcessSetupError, match="CAP_NET_RAW"):
        C.raise_ambient(plan, sys=sys)


def test_read_status_sets():
    text = (
        "Name:\tsh\nCapInh:\t0000000000000001\nCapPrm:\t0000000000000021\n"
        "CapEff:\t0000000000000021\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000001\n"
    )
    assert C.read_status_sets(text) == {
        "inheritable": 1,
        "permitted": 0x21,
        "effective": 0x21,
        "bounding": 0x1FFFFFFFFFF,
        "ambient": 1,
    }


def test_set_capabilities_is_one_capset_of_the_three_masks():
    plan = C.CapabilityPlan(effective=0b101, permitted=0b111, inheritable=1 << 40)
    fake = RecordingSyscalls()
    C.set_capabilities(plan, sys=fake)
    assert fake.calls == [("capset", (0b101, 0b111, 1 << 40))]


def test_set_capabilities_failure_names_the_section():
    fake = RecordingSyscalls(capset=(1,))  # EPERM
    with pytest.raises(ProcessSetupError, match="capset failed") as err:
        C.set_capabilities(C.CapabilityPlan(), sys=fake)
    assert err.value.field == "process.capabilities"
