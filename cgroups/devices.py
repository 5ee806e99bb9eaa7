"""Device access control on cgroup v2: an eBPF program per cgroup.

cgroup v2 has no devices.allow/deny files. The kernel instead runs every
BPF_PROG_TYPE_CGROUP_DEVICE program attached to the cgroup (and to its
ancestors) when a process in it opens or mknods a device node, and refuses
with EPERM when one of them returns 0. Like runc and crun, Pinnace compiles
the OCI rules (linux.resources.devices) into such a program, loads it with
bpf(BPF_PROG_LOAD), attaches it with BPF_F_ALLOW_MULTI and, when the rules
change, attaches the new program before detaching the old ones, so there
is no moment without a filter.

Semantics (the OCI spec and the v1 devices controller's): rules apply in
order and a later rule overrides an earlier one. Each access bit (r, w, m)
of a request is decided by the last rule that matches the device and
covers that bit; the request is allowed only if every bit is. With no rule
deciding a bit the answer is deny: a container starts with no devices,
and the usual rule list is a deny-all followed by an allow-list.

The program evaluates the rules from last to first with early returns.
The context is struct bpf_cgroup_dev_ctx {u32 access_type; u32 major;
u32 minor}, access_type = (access << 16) | type. Registers:

    r2 = type        (BPF_DEVCG_DEV_BLOCK 1, BPF_DEVCG_DEV_CHAR 2)
    r3 = access bits not decided yet (MKNOD 1, READ 2, WRITE 4)
    r4 = major, r5 = minor, r1 = scratch once the context is read

and each rule is a block that jumps to the next block on a mismatch:

    if w2 != TYPE goto next        (unless type "a")
    if w4 != MAJOR goto next       (unless wildcard)
    if w5 != MINOR goto next       (unless wildcard)
    w1 = w3; w1 &= ACCESS; if w1 == 0 goto next   (unless ACCESS is rwm)
    deny:  w0 = 0; exit
    allow: w3 &= ~ACCESS; if w3 != 0 goto next; w0 = 1; exit
"""

from __future__ import annotations

import errno
import os
import struct

from cgroups import bpf_insn as bi
from cgroups.bpf_insn import Insn
from namespaces import ctypes_lite as ct
from namespaces.record import FrozenRecord
from namespaces.syscalls import SyscallError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType
    from typing import Any, Protocol, TypeGuard
else:
    Protocol = object  # typing costs every runtime verb ~9 ms; only mypy reads the protocol

# bpf(2) commands (enum bpf_cmd, linux/bpf.h).
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16

BPF_PROG_TYPE_CGROUP_DEVICE = 15  # enum bpf_prog_type
BPF_CGROUP_DEVICE = 6  # enum bpf_attach_type
BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1

# struct bpf_cgroup_dev_ctx encodings.
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
ACC_ALL = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE

PROGRAM_NAME = "pinnace_devices"  # < 16 bytes, [A-Za-z0-9_.]: shown by bpftool
LICENSE = b"GPL"  # not needed for this program type (no GPL-only helpers); harmless
VERIFIER_LOG_SIZE = 256 * 1024

_ACCESS_BITS = {"r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE, "m": BPF_DEVCG_ACC_MKNOD}
_TYPE_CODES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
_U32_MAX = 0xFFFF_FFFF

# Registers of the generated program.
_R_RET, _R_TMP, _R_TYPE, _R_ACC, _R_MAJOR, _R_MINOR = 0, 1, 2, 3, 4, 5


# --- rules -----------------------------------------------------------------------------


class DeviceRuleError(ValueError):
    """An OCI device rule is malformed; names the rule's index in the list."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(f"device rule {index}: {message}" if index is not None else message)
        self.index = index
        self.reason = message


class DeviceRule(FrozenRecord):
    """One entry of linux.resources.devices; None for major/minor is the wildcard."""

    __slots__ = ("allow", "type", "major", "minor", "access")  # noqa: RUF023

    def __init__(
        self,
        allow: bool,
        type: str = "a",  # "a" (both), "b" (block) or "c" (char)
        major: int | None = None,
        minor: int | None = None,
        access: str = "rwm",  # "" is a rule that grants or denies nothing
    ) -> None:
        self.allow = allow
        self.type = type
        self.major = major
        self.minor = minor
        self.access = access
        if not isinstance(self.allow, bool):
            raise DeviceRuleError(f"allow must be true or false, not {self.allow!r}")
        if self.type not in ("a", "b", "c"):
            raise DeviceRuleError(f"type must be 'a', 'b' or 'c', not {self.type!r}")
        for name, value in (("major", self.major), ("minor", self.minor)):
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise DeviceRuleError(f"{name} must be an integer, not {value!r}")
            if not 0 <= value <= _U32_MAX:
                raise DeviceRuleError(f"{name} {value} is out of range (0..{_U32_MAX}, -1 = any)")
        if not isinstance(self.access, str):
            raise DeviceRuleError(f"access must be a string of r, w, m, not {self.access!r}")
        bad = sorted(set(self.access) - set(_ACCESS_BITS))
        if bad:
            raise DeviceRuleError(
                f"access {self.access!r} has unknown letter(s) {''.join(bad)!r} (only r, w, m)"
            )

    @property
    def access_mask(self) -> int:
        mask = 0
        for letter in self.access:
            mask |= _ACCESS_BITS[letter]
        return mask

    @property
    def matches_everything(self) -> bool:
        """Type a, any major, any minor, rwm: decides every request on its own."""
        return (
            self.type == "a"
            and self.major is None
            and self.minor is None
            and self.access_mask == ACC_ALL
        )

    def __str__(self) -> str:
        """The v1 devices.allow notation, "c 1:3 rwm", plus the verdict."""
        num = "*" if self.major is None else str(self.major)
        mnr = "*" if self.minor is None else str(self.minor)
        return f"{'allow' if self.allow else 'deny'} {self.type} {num}:{mnr} {self.access}"


def _number(raw: object, name: str) -> int | None:
    """OCI major/minor: absent, null or -1 is the wildcard."""
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise DeviceRuleError(f"{name} must be an integer, not {raw!r}")
    if raw == -1:
        return None
    if raw < 0:
        raise DeviceRuleError(f"{name} {raw} is negative (only -1 means any)")
    return raw


# isinstance against collections.abc (~2 ms to import) only for what JSON does not give.


def _is_sequence(value: object) -> TypeGuard[Sequence[object]]:
    if isinstance(value, (list, tuple)):
        return True
    from collections.abc import Sequence

    return isinstance(value, Sequence)


def _is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    if isinstance(value, dict):
        return True
    from collections.abc import Mapping

    return isinstance(value, Mapping)


def parse_rules(raw: object) -> list[DeviceRule]:
    """linux.resources.devices (decoded JSON) -> validated rules; errors name the index."""
    if raw is None:
        return []
    if not _is_sequence(raw) or isinstance(raw, (str, bytes)):
        raise DeviceRuleError(f"devices must be a list of rules, not {type(raw).__name__}")
    rules = []
    for index, entry in enumerate(raw):
        try:
            rules.append(_parse_rule(entry))
        except DeviceRuleError as exc:
            raise DeviceRuleError(exc.reason, index) from None
    return rules


def _parse_rule(entry: object) -> DeviceRule:
    if not _is_mapping(entry):
        raise DeviceRuleError(f"must be an object, not {type(entry).__name__}")
    if "allow" not in entry:
        raise DeviceRuleError("'allow' is required")
    kind = entry.get("type")
    access = entry.get("access")
    return DeviceRule(
        allow=entry["allow"],
        type="a" if kind is None else kind,
        major=_number(entry.get("major"), "major"),
        minor=_number(entry.get("minor"), "minor"),
        access="rwm" if access is None else access,
    )


def _char(major: int, minor: int | None, access: str = "rwm") -> DeviceRule:
    return DeviceRule(True, "c", major, minor, access)


# What runc grants every container besides the devices in its spec: mknod of
# any node (opening one still needs a rule) and the standard /dev nodes; fuse
# as containerd/podman do. A runtime prepends a deny-all (the OCI default).
DEFAULT_ALLOWED: tuple[DeviceRule, ...] = (
    DeviceRule(True, "c", None, None, "m"),
    DeviceRule(True, "b", None, None, "m"),
    _char(1, 3),  # /dev/null
    _char(1, 5),  # /dev/zero
    _char(1, 7),  # /dev/full
    _char(1, 8),  # /dev/random
    _char(1, 9),  # /dev/urandom
    _char(5, 0),  # /dev/tty
    _char(5, 1),  # /dev/console
    _char(5, 2),  # /dev/ptmx
    _char(136, None),  # /dev/pts/*
    _char(10, 200),  # /dev/net/tun
    _char(10, 229),  # /dev/fuse
)
DENY_ALL = DeviceRule(False, "a", None, None, "rwm")


# --- the program -----------------------------------------------------------------------


class DeviceProgram(FrozenRecord):
    """The compiled program and what it was compiled from."""

    __slots__ = ("insns", "rules", "default_allow")  # noqa: RUF023

    def __init__(
        self,
        insns: tuple[Insn, ...],
        rules: tuple[DeviceRule, ...],  # the rules that still matter, in spec order
        default_allow: bool,  # the verdict when none of them decides
    ) -> None:
        self.insns = insns
        self.rules = rules
        self.default_allow = default_allow

    def encode(self) -> bytes:
        return bi.encode(self.insns)

    def __str__(self) -> str:
        return bi.disassemble(self.insns)


def effective_rules(rules: Sequence[DeviceRule]) -> tuple[tuple[DeviceRule, ...], bool]:
    """Drop the rules that can never decide anything; return them and the default.

    A rule matching everything with rwm decides every request, so the rules
    before it are dead and its verdict becomes the default (the usual leading
    deny-all costs nothing). Leading rules whose verdict equals the default
    change nothing either; nor do rules with an empty access string.
    """
    live = [r for r in rules if r.access_mask]
    default_allow = False
    for i in range(len(live) - 1, -1, -1):
        if live[i].matches_everything:
            default_allow = live[i].allow
            live = live[i + 1 :]
            break
    while live and live[0].allow == default_allow:
        live.pop(0)
    return tuple(live), default_allow


def _rule_block(rule: DeviceRule) -> list[Insn]:
    """One rule's instructions; every jump targets the end of the block (the next rule)."""
    # Built with placeholder offsets (None = "to the next block"), fixed up below.
    body: list[tuple[str, int, int] | Insn] = []
    if rule.type != "a":
        body.append(("jne", _R_TYPE, _TYPE_CODES[rule.type]))
    if rule.major is not None:
        body.append(("jne", _R_MAJOR, rule.major))
    if rule.minor is not None:
        body.append(("jne", _R_MINOR, rule.minor))
    mask = rule.access_mask
    if mask != ACC_ALL:
        body.append(bi.alu32_reg(bi.BPF_MOV, _R_TMP, _R_ACC))
        body.append(bi.alu32_imm(bi.BPF_AND, _R_TMP, mask))
        body.append(("jeq", _R_TMP, 0))
    if not rule.allow:
        body.append(bi.alu32_imm(bi.BPF_MOV, _R_RET, 0))
    else:
        if mask != ACC_ALL:
            # These bits are granted; any others still pending go on to earlier rules.
            body.append(bi.alu32_imm(bi.BPF_AND, _R_ACC, bi.u32_imm(~mask & _U32_MAX)))
            body.append(("jne", _R_ACC, 0))
        body.append(bi.alu32_imm(bi.BPF_MOV, _R_RET, 1))
    body.append(bi.exit_insn())

    out: list[Insn] = []
    for pc, item in enumerate(body):
        if isinstance(item, Insn):
            out.append(item)
            continue
        op, reg, imm = item
        to_next = len(body) - (pc + 1)
        code = bi.BPF_JNE if op == "jne" else bi.BPF_JEQ
        out.append(bi.jmp32_imm(code, reg, bi.u32_imm(imm), to_next))
    return out


def build_program(rules: Sequence[DeviceRule]) -> DeviceProgram:
    """Compile OCI device rules (later rules win; default deny) into eBPF."""
    live, default_allow = effective_rules(rules)
    insns = [
        bi.ldx_mem(bi.BPF_W, _R_TYPE, 1, 0),  # access_type
        bi.alu32_reg(bi.BPF_MOV, _R_ACC, _R_TYPE),
        bi.alu32_imm(bi.BPF_AND, _R_TYPE, 0xFFFF),
        bi.alu32_imm(bi.BPF_RSH, _R_ACC, 16),
        bi.ldx_mem(bi.BPF_W, _R_MAJOR, 1, 4),
        bi.ldx_mem(bi.BPF_W, _R_MINOR, 1, 8),
    ]
    for rule in reversed(live):
        insns.extend(_rule_block(rule))
    insns.append(bi.alu32_imm(bi.BPF_MOV, _R_RET, 1 if default_allow else 0))
    insns.append(bi.exit_insn())
    return DeviceProgram(tuple(insns), live, default_allow)


# --- the kernel side -------------------------------------------------------------------


class BpfSyscall(Protocol):
    """The one call this module needs: namespaces.syscalls.Syscalls (Libc) provides it."""

    def bpf(self, cmd: int, attr: bytearray) -> int: ...


class DeviceProgramError(OSError):
    """A bpf(2) step failed: errno, what was being done, the cgroup path.

    `verifier_log` holds the kernel verifier's explanation when a load was
    rejected (empty otherwise).
    """

    def __init__(
        self, err: int, message: str, path: str | None = None, verifier_log: str = ""
    ) -> None:
        text = f"{message}: {os.strerror(err)}"
        if verifier_log:
            text += f"\nverifier log:\n{verifier_log.rstrip()}"
        super().__init__(err, text, path)
        self.verifier_log = verifier_log


class ProgramInfo(FrozenRecord):
    """What BPF_OBJ_GET_INFO_BY_FD says about a loaded program."""

    __slots__ = ("id", "type", "tag", "name")  # noqa: RUF023

    def __init__(
        self,
        id: int,
        type: int,
        tag: str,  # hex of the kernel's hash of the instructions
        name: str,
    ) -> None:
        self.id = id
        self.type = type
        self.tag = tag
        self.name = name


class Attached(FrozenRecord):
    """The device programs attached directly to one cgroup (not inherited ones)."""

    __slots__ = ("attach_flags", "prog_ids")

    def __init__(self, attach_flags: int, prog_ids: tuple[int, ...]) -> None:
        self.attach_flags = attach_flags
        self.prog_ids = prog_ids


def _addr(buf: ct.Array[ct.c_char] | ct.Array[ct.c_uint32]) -> int:
    return ct.addressof(buf)


def load_program(
    syscalls: BpfSyscall, program: DeviceProgram | Sequence[Insn], *, name: str = PROGRAM_NAME
) -> int:
    """bpf(BPF_PROG_LOAD) -> the program's fd; on rejection the error carries the verifier log.

    The first attempt asks for no log (cheap, as libbpf does); a failure is
    retried once with log_level 1 to learn why.
    """
    insns = program.insns if isinstance(program, DeviceProgram) else tuple(program)
    code = ct.char_buffer(bi.encode(insns))
    lic = ct.char_buffer(LICENSE + b"\0")
    raw_name = name.encode()[:15]

    def attempt(log: ct.Array[ct.c_char] | None) -> int:
        attr = bytearray(72)
        struct.pack_into(
            "=IIQQIIQII16sII",
            attr,
            0,
            BPF_PROG_TYPE_CGROUP_DEVICE,
            len(insns),
            _addr(code),
            _addr(lic),
            1 if log is not None else 0,  # log_level
            len(log) if log is not None else 0,
            _addr(log) if log is not None else 0,
            0,  # kern_version
            0,  # prog_flags
            raw_name,
            0,  # prog_ifindex
            0,  # expected_attach_type: not checked for this type
        )
        return syscalls.bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(None)
    except SyscallError as first:
        log = ct.char_buffer(VERIFIER_LOG_SIZE)
        try:
            fd = attempt(log)
        except SyscallError as second:
            text = log.value.decode(errors="replace")
            raise DeviceProgramError(
                second.errno or first.errno or errno.EINVAL,
                f"loading the device program ({len(insns)} instructions) failed",
                verifier_log=text,
            ) from second
        return fd  # the kernel changed its mind (e.g. a transient ENOMEM); use it


def _bpf_step(syscalls: BpfSyscall, cmd: int, attr: bytearray, path: str | None, what: str) -> int:
    """One bpf(2) step; a SyscallError becomes a DeviceProgramError with the path."""
    try:
        return syscalls.bpf(cmd, attr)
    except SyscallError as exc:
        raise DeviceProgramError(exc.errno or errno.EIO, what, path) from exc


def attach_program(
    syscalls: BpfSyscall, cgroup_fd: int, prog_fd: int, *, path: str | None = None
) -> None:
    """bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI) on a cgroup directory fd.

    The attachment holds its own reference: prog_fd may be closed afterwards.
    """
    attr = bytearray(20)
    struct.pack_into("=IIIII", attr, 0, cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, 0)
    _bpf_step(syscalls, BPF_PROG_ATTACH, attr, path, "attaching the device program")


def detach_program(
    syscalls: BpfSyscall, cgroup_fd: int, prog_fd: int, *, path: str | None = None
) -> None:
    """bpf(BPF_PROG_DETACH) of one program: with ALLOW_MULTI the program must be named."""
    attr = bytearray(20)
    struct.pack_into("=IIIII", attr, 0, cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, 0, 0)
    _bpf_step(syscalls, BPF_PROG_DETACH, attr, path, "detaching a device program")


def query_programs(syscalls: BpfSyscall, cgroup_fd: int, *, path: str | None = None) -> Attached:
    """bpf(BPF_PROG_QUERY): the ids of device programs attached to this very cgroup."""
    capacity = 16
    while True:
        ids = (ct.c_uint32 * capacity)()
        attr = bytearray(40)
        struct.pack_into(
            "=IIIIQI", attr, 0, cgroup_fd, BPF_CGROUP_DEVICE, 0, 0, _addr(ids), capacity
        )
        try:
            _bpf_step(syscalls, BPF_PROG_QUERY, attr, path, "querying device programs")
        except DeviceProgramError as exc:
            count = struct.unpack_from("=I", attr, 24)[0]
            if exc.errno == errno.ENOSPC and count > capacity:
                capacity = count  # more were attached than we made room for
                continue
            raise
        flags, count = struct.unpack_from("=I", attr, 12)[0], struct.unpack_from("=I", attr, 24)[0]
        return Attached(flags, tuple(ids[: min(count, capacity)]))


def program_fd_by_id(syscalls: BpfSyscall, prog_id: int) -> int:
    """bpf(BPF_PROG_GET_FD_BY_ID): an fd on an attached program, to name it in a detach."""
    attr = bytearray(12)
    struct.pack_into("=III", attr, 0, prog_id, 0, 0)
    return _bpf_step(
        syscalls,
        BPF_PROG_GET_FD_BY_ID,
        attr,
        f"bpf prog id {prog_id}",
        "opening a device program by id",
    )


def program_info(syscalls: BpfSyscall, prog_fd: int) -> ProgramInfo:
    """bpf(BPF_OBJ_GET_INFO_BY_FD): id, type, tag and name (the start of bpf_prog_info)."""
    info = ct.char_buffer(80)
    attr = bytearray(16)
    struct.pack_into("=IIQ", attr, 0, prog_fd, len(info), _addr(info))
    _bpf_step(
        syscalls,
        BPF_OBJ_GET_INFO_BY_FD,
        attr,
        f"bpf prog fd {prog_fd}",
        "reading device program info",
    )
    raw = info.raw
    ptype, pid = struct.unpack_from("=II", raw, 0)
    tag = raw[8:16].hex()
    name = raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgramInfo(pid, ptype, tag, name)


class open_cgroup_dir:  # lower case: used as a function, like the @contextmanager it was
    """An O_DIRECTORY fd on the cgroup: what attach, detach and query take as target.

    `with open_cgroup_dir(path) as fd:`; a class rather than a @contextmanager
    because contextlib costs every runtime verb ~3.5 ms to import.
    """

    __slots__ = ("fd",)

    def __init__(self, cgroup_dir: str | os.PathLike[str]) -> None:
        path = os.fspath(cgroup_dir)
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceProgramError(
                exc.errno or errno.EIO, "opening the cgroup directory", path
            ) from exc

    def __enter__(self) -> int:
        return self.fd

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        os.close(self.fd)


def _detach_by_id(syscalls: BpfSyscall, cgroup_fd: int, prog_id: int, path: str) -> bool:
    """Detach one program by id; False when it was already gone (a concurrent detach)."""
    try:
        fd = program_fd_by_id(syscalls, prog_id)
    except DeviceProgramError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    try:
        detach_program(syscalls, cgroup_fd, fd, path=path)
    except DeviceProgramError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    finally:
        os.close(fd)
    return True


def apply_device_rules(
    syscalls: BpfSyscall, cgroup_dir: str | os.PathLike[str], rules: Sequence[DeviceRule]
) -> ProgramInfo:
    """Make `rules` the cgroup's device policy; returns the new program's info.

    Attach first, detach the previous programs after (runc's order): while
    both are attached both must allow, so the policy is never looser than
    either the old or the new one.
    """
    program = build_program(rules)
    path = os.fspath(cgroup_dir)
    with open_cgroup_dir(path) as cgroup_fd:
        old = query_programs(syscalls, cgroup_fd, path=path)
        prog_fd = load_program(syscalls, program)
        try:
            try:
                attach_program(syscalls, cgroup_fd, prog_fd, path=path)
            except DeviceProgramError as exc:
                if (
                    exc.errno == errno.EPERM
                    and old.prog_ids
                    and not (old.attach_flags & BPF_F_ALLOW_MULTI)
                ):
                    raise DeviceProgramError(
                        exc.errno,
                        "attaching the device program: the cgroup already has one attached "
                        f"without BPF_F_ALLOW_MULTI (ids {list(old.prog_ids)}, by another manager?)",
                        path,
                    ) from exc
                raise
            info = program_info(syscalls, prog_fd)
        finally:
            os.close(prog_fd)
        for prog_id in old.prog_ids:
            _detach_by_id(syscalls, cgroup_fd, prog_id, path)
    return info


def attached_device_programs(syscalls: BpfSyscall, cgroup_dir: str | os.PathLike[str]) -> Attached:
    """The device programs attached directly to the cgroup."""
    path = os.fspath(cgroup_dir)
    with open_cgroup_dir(path) as cgroup_fd:
        return query_programs(syscalls, cgroup_fd, path=path)


def detach_device_programs(syscalls: BpfSyscall, cgroup_dir: str | os.PathLike[str]) -> list[int]:
    """Detach every device program attached directly to the cgroup; returns their ids.

    Removing the cgroup releases them too; this is for giving a cgroup back
    its unrestricted state (and for tests that clean up step by step).
    """
    path = os.fspath(cgroup_dir)
    with open_cgroup_dir(path) as cgroup_fd:
        attached = query_programs(syscalls, cgroup_fd, path=path)
        return [pid for pid in attached.prog_ids if _detach_by_id(syscalls, cgroup_fd, pid, path)]
