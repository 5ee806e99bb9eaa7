"""The five capability sets of a container's process: bounding, effective, permitted,
inheritable and ambient (OCI `process.capabilities`).

Names are checked against the kernel's table below, which is the list of
`linux/capability.h`; the running kernel may know fewer
(`/proc/sys/kernel/cap_last_cap`), and a name it does not know yet is left
out with a note rather than failing, so one config works on old and new
kernels. A name nobody knows is a SpecError: it is almost always a typo, and
silently running with fewer capabilities than asked hides it (runc only
warns).

The sets become bitmasks at plan time; `apply_*` are the kernel calls, made
by the container's init in the order `runtime.process.apply_identity`
documents, all through the syscall layer (capset(2) included: python-prctl
and the libcap it loads cost the init ~2 ms before it could mount anything).
"""

from __future__ import annotations

from namespaces.record import FrozenRecord
from namespaces.syscalls import SyscallError, Syscalls
from runtime.errors import ProcessSetupError, SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# linux/capability.h, in kernel order
CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
NAMES_BY_NUMBER = {v: k for k, v in CAPABILITIES.items()}

SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

# prctl(2) options (linux/prctl.h)
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"


def kernel_last_cap(path: str = CAP_LAST_CAP_FILE) -> int:
    """The highest capability number the running kernel knows."""
    try:
        with open(path, "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())  # no /proc: assume the table is right


def mask_of(names: Iterable[str]) -> int:
    """Bitmask of capability names (all must be known)."""
    out = 0
    for n in names:
        out |= 1 << CAPABILITIES[n]
    return out


def names_of(mask: int) -> list[str]:
    """Capability names in a bitmask, in kernel order."""
    return [NAMES_BY_NUMBER[i] for i in sorted(NAMES_BY_NUMBER) if mask >> i & 1]


class CapabilityPlan(FrozenRecord):
    """The five sets as bitmasks over capabilities 0..last_cap."""

    __slots__ = (
        "ambient",
        "bounding",
        "effective",
        "inheritable",
        "last_cap",
        "notes",
        "permitted",
    )

    def __init__(
        self,
        bounding: int = 0,
        effective: int = 0,
        inheritable: int = 0,
        permitted: int = 0,
        ambient: int = 0,
        last_cap: int = max(CAPABILITIES.values()),
        notes: tuple[str, ...] = (),
    ) -> None:
        self.bounding = bounding
        self.effective = effective
        self.inheritable = inheritable
        self.permitted = permitted
        self.ambient = ambient
        self.last_cap = last_cap
        self.notes = notes

    def get(self, which: str) -> int:
        value: int = getattr(self, which)
        return value


def plan_capabilities(
    raw: Any, *, field_name: str = "process.capabilities", last_cap: int | None = None
) -> CapabilityPlan:
    """Validate `process.capabilities`; an absent section or set means an empty one (as runc).

    Refused (SpecError), because the kernel would refuse them at capset time
    after the container is half made: effective not within permitted, and
    inheritable not within bounding (no process of the container holds an
    inheritable capability before, so the kernel's `new inheritable <= old
    inheritable | bounding` reduces to that). Ambient capabilities outside
    permitted & inheritable cannot be raised: they are dropped with a note,
    as runc warns and goes on.
    """
    last = kernel_last_cap() if last_cap is None else last_cap
    if raw is None:
        return CapabilityPlan(last_cap=last)
    if not isinstance(raw, dict):
        raise SpecError(field_name, "must be an object of capability sets")
    notes: list[str] = []
    masks: dict[str, int] = {}
    for which in SETS:
        names = raw.get(which)
        where = f"{field_name}.{which}"
        if names is None:
            masks[which] = 0
            continue
        if not isinstance(names, list):
            raise SpecError(where, "must be an array of capability names")
        mask = 0
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise SpecError(f"{where}[{i}]", "must be a string like CAP_CHOWN")
            number = CAPABILITIES.get(name)
            if number is None:
                raise SpecError(f"{where}[{i}]", f"unknown capability {name!r}")
            if number > last:
                notes.append(
                    f"{where}[{i}]: {name} is not known to this kernel "
                    f"(cap_last_cap {last}): ignored"
                )
                continue
            mask |= 1 << number
        masks[which] = mask
    extra = masks["effective"] & ~masks["permitted"]
    if extra:
        raise SpecError(
            f"{field_name}.effective",
            f"{', '.join(names_of(extra))} not in the permitted set (the kernel refuses that)",
        )
    extra = masks["inheritable"] & ~masks["bounding"]
    if extra:
        raise SpecError(
            f"{field_name}.inheritable",
            f"{', '.join(names_of(extra))} not in the bounding set (the kernel refuses that)",
        )
    lost = masks["ambient"] & ~(masks["permitted"] & masks["inheritable"])
    if lost:
        notes.append(
            f"{field_name}.ambient: {', '.join(names_of(lost))} not in both permitted and "
            "inheritable: cannot be raised, ignored"
        )
        masks["ambient"] &= ~lost
    return CapabilityPlan(**masks, last_cap=last, notes=tuple(notes))


def drop_bounding(plan: CapabilityPlan, *, sys: Syscalls) -> None:
    """Drop every capability not in the bounding set (needs CAP_SETPCAP).

    Capabilities already out of the bounding set are skipped: dropping again
    would still need CAP_SETPCAP, which a second exec into a container may
    not have.
    """
    for cap in range(plan.last_cap + 1):
        if plan.bounding >> cap & 1:
            continue
        try:
            if not sys.prctl(PR_CAPBSET_READ, cap):
                continue
            sys.prctl(PR_CAPBSET_DROP, cap)
        except SyscallError as exc:
            raise ProcessSetupError(
                f"cannot drop {NAMES_BY_NUMBER.get(cap, cap)} from the bounding set: "
                f"{exc.strerror}",
                field="process.capabilities.bounding",
            ) from None


def set_capabilities(plan: CapabilityPlan, *, sys: Syscalls) -> None:
    """capset(2): effective, permitted and inheritable exactly as planned."""
    try:
        sys.capset(plan.effective, plan.permitted, plan.inheritable)
    except SyscallError as exc:
        raise ProcessSetupError(
            f"capset failed: {exc.strerror}", field="process.capabilities"
        ) from None


def raise_ambient(plan: CapabilityPlan, *, sys: Syscalls) -> None:
    """Clear the ambient set, then raise the planned ones (each must be permitted and inheritable)."""
    try:
        sys.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0)
    except SyscallError as exc:
        if not plan.ambient:
            return  # a kernel without ambient capabilities (< 4.3): nothing asked
        raise ProcessSetupError(
            f"cannot clear the ambient set: {exc.strerror}", field="process.capabilities.ambient"
        ) from None
    for cap in range(plan.last_cap + 1):
        if plan.ambient >> cap & 1:
            try:
                sys.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)
            except SyscallError as exc:
                raise ProcessSetupError(
                    f"cannot raise {NAMES_BY_NUMBER.get(cap, cap)}: {exc.strerror}",
                    field="process.capabilities.ambient",
                ) from None


def read_status_sets(status_text: str) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a /proc/PID/status text, as bitmasks.

    Keys are the OCI set names (inheritable, permitted, effective, bounding, ambient).
    """
    keys = {
        "CapInh": "inheritable",
        "CapPrm": "permitted",
        "CapEff": "effective",
        "CapBnd": "bounding",
        "CapAmb": "ambient",
    }
    out: dict[str, int] = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[keys[key]] = int(value.strip(), 16)
    return out
