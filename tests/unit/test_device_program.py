"""The device-program compiler and the bpf(2) choreography, without the kernel.

The generated program is run here by a tiny interpreter of the eBPF subset
it uses (decoded from the bytes the kernel would get), and its verdicts are
compared with an independent reading of the OCI rules: each access bit is
decided by the last rule that matches the device and covers the bit.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import struct

import pytest

from cgroups import bpf_insn as bi
from cgroups import devices as dv
from cgroups.devices import DeviceRule as R
from namespaces.syscalls import SyscallError

BLOCK, CHAR = dv.BPF_DEVCG_DEV_BLOCK, dv.BPF_DEVCG_DEV_CHAR
M, RD, WR = dv.BPF_DEVCG_ACC_MKNOD, dv.BPF_DEVCG_ACC_READ, dv.BPF_DEVCG_ACC_WRITE
ACCESSES = [a for a in range(1, 8)]  # every non-empty subset of m, r, w

# --- an interpreter for the emitted subset ----------------------------------------------

U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF


class Unsupported(Exception):
    pass


def run(code: bytes, dev_type: int, major: int, minor: int, access: int) -> int:
    """Execute a cgroup-device program on one request; returns r0."""
    insns = bi.decode(code)
    ctx = struct.pack("=III", (access << 16) | dev_type, major, minor)
    regs: list[int | None] = [None] * 11
    regs[1] = -1  # the context pointer: only loads through it are allowed
    pc, steps = 0, 0
    while True:
        steps += 1
        assert steps <= len(insns), "the program loops"  # only forward jumps are emitted
        assert 0 <= pc < len(insns), f"pc {pc} out of the program"
        ins = insns[pc]
        cls, op, src_x = ins.code & 0x07, ins.code & 0xF0, ins.code & bi.BPF_X
        pc += 1
        if cls == bi.BPF_LDX:
            assert ins.code == bi.BPF_LDX | bi.BPF_W | bi.BPF_MEM, str(ins)
            assert regs[ins.src] == -1, "load through something else than the ctx"
            assert ins.off in (0, 4, 8)
            regs[ins.dst] = struct.unpack_from("=I", ctx, ins.off)[0]
        elif cls == bi.BPF_ALU:
            rhs = regs[ins.src] if src_x else ins.imm & U32
            assert rhs is not None, f"read of uninitialised r{ins.src}"
            if op == bi.BPF_MOV:
                regs[ins.dst] = rhs & U32
                continue
            lhs = regs[ins.dst]
            assert lhs is not None, f"read of uninitialised r{ins.dst}"
            if op == bi.BPF_AND:
                regs[ins.dst] = lhs & rhs & U32
            elif op == bi.BPF_RSH:
                regs[ins.dst] = ((lhs & U32) >> (rhs & 31)) & U32
            else:
                raise Unsupported(str(ins))
        elif cls == bi.BPF_JMP32:
            lhs = regs[ins.dst]
            assert lhs is not None, f"read of uninitialised r{ins.dst}"
            rhs = regs[ins.src] if src_x else ins.imm & U32
            assert rhs is not None
            if op == bi.BPF_JNE:
                taken = (lhs & U32) != (rhs & U32)
            elif op == bi.BPF_JEQ:
                taken = (lhs & U32) == (rhs & U32)
            else:
                raise Unsupported(str(ins))
            assert ins.off >= 0, "backward jump"
            if taken:
                pc += ins.off
        elif cls == bi.BPF_JMP and op == bi.BPF_EXIT:
            assert regs[0] is not None, "R0 !read_ok"
            return regs[0]
        else:
            raise Unsupported(str(ins))


def decision(rules, dev_type, major, minor, access) -> bool:
    prog = dv.build_program(rules)
    return run(prog.encode(), dev_type, major, minor, access) == 1


# --- the reference semantics --------------------------------------------------------------


def reference(rules, dev_type, major, minor, access) -> bool:
    """Each requested bit: the last matching rule covering it; all must allow (default deny)."""
    letters = {M: "m", RD: "r", WR: "w"}
    kind = {BLOCK: "b", CHAR: "c"}[dev_type]
    for bit, letter in letters.items():
        if not access & bit:
            continue
        verdict = False
        for r in rules:
            if (
                r.type in ("a", kind)
                and r.major in (None, major)
                and r.minor in (None, minor)
                and letter in r.access
            ):
                verdict = r.allow
        if not verdict:
            return False
    return True


RUNC_LIKE = [dv.DENY_ALL, *dv.DEFAULT_ALLOWED]


@pytest.mark.parametrize(
    ("dev_type", "major", "minor", "access", "allowed"),
    [
        (CHAR, 1, 3, RD | WR, True),  # null
        (CHAR, 1, 3, M, True),
        (CHAR, 1, 5, RD, True),  # zero
        (CHAR, 1, 7, WR, True),  # full
        (CHAR, 1, 8, RD, True),  # random
        (CHAR, 1, 9, RD, True),  # urandom
        (CHAR, 5, 0, RD | WR, True),  # tty
        (CHAR, 5, 1, RD | WR, True),  # console
        (CHAR, 5, 2, RD | WR, True),  # ptmx
        (CHAR, 136, 0, RD | WR, True),  # pts/0
        (CHAR, 136, 4095, RD | WR, True),  # any pts
        (CHAR, 10, 229, RD | WR, True),  # fuse
        (CHAR, 10, 200, RD | WR, True),  # tun
        (CHAR, 1, 1, RD, False),  # mem
        (CHAR, 1, 4, RD, False),  # port
        (CHAR, 1, 11, WR, False),  # kmsg
        (CHAR, 10, 230, RD, False),
        (CHAR, 4, 0, RD | WR, False),  # tty0
        (CHAR, 4, 0, M, True),  # ... may be created (c *:* m)
        (BLOCK, 8, 0, RD, False),  # sda
        (BLOCK, 8, 0, M, True),  # ... may be created (b *:* m)
        (BLOCK, 1, 3, RD, False),  # block 1:3 is not /dev/null
        (BLOCK, 136, 0, RD, False),
        (BLOCK, 8, 0, M | RD, False),
    ],
)
def test_runc_like_allow_list(dev_type, major, minor, access, allowed):
    assert decision(RUNC_LIKE, dev_type, major, minor, access) is allowed
    assert reference(RUNC_LIKE, dev_type, major, minor, access) is allowed


def test_no_rules_denies_everything():
    prog = dv.build_program([])
    assert not prog.default_allow
    for dev_type in (BLOCK, CHAR):
        for access in ACCESSES:
            assert run(prog.encode(), dev_type, 1, 3, access) == 0


def test_later_rule_overrides_earlier():
    allow_then_deny = [R(True, "c", 1, 3), R(False, "c", 1, 3)]
    deny_then_allow = [R(False, "c", 1, 3), R(True, "c", 1, 3)]
    assert not decision(allow_then_deny, CHAR, 1, 3, RD)
    assert decision(deny_then_allow, CHAR, 1, 3, RD)


def test_deny_of_one_bit_denies_a_request_that_includes_it():
    """runc's subset test lets "rw" through a lone "w" deny; per-bit evaluation does not."""
    rules = [R(True, "a"), R(False, "c", 1, 3, "w")]
    assert decision(rules, CHAR, 1, 3, RD)
    assert not decision(rules, CHAR, 1, 3, WR)
    assert not decision(rules, CHAR, 1, 3, RD | WR)
    assert decision(rules, CHAR, 1, 3, M)


def test_bits_granted_by_separate_rules_add_up():
    rules = [dv.DENY_ALL, R(True, "c", 1, 3, "r"), R(True, "c", 1, 3, "w")]
    assert decision(rules, CHAR, 1, 3, RD | WR)
    assert not decision(rules, CHAR, 1, 3, RD | WR | M)
    only_read = [dv.DENY_ALL, R(True, "c", 1, 3, "r")]
    assert not decision(only_read, CHAR, 1, 3, RD | WR)


def test_type_a_with_numbers_matches_both_types():
    rules = [R(True, "a", 8, None, "r")]
    assert decision(rules, BLOCK, 8, 1, RD)
    assert decision(rules, CHAR, 8, 1, RD)
    assert not decision(rules, CHAR, 9, 1, RD)


def test_minor_only_rule():
    rules = [R(True, "c", None, 7, "rw")]
    assert decision(rules, CHAR, 1, 7, RD)
    assert decision(rules, CHAR, 250, 7, WR)
    assert not decision(rules, CHAR, 1, 8, RD)


@pytest.mark.parametrize("number", [0, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF])
def test_u32_edge_numbers(number):
    rules = [R(True, "c", number, number, "r")]
    assert decision(rules, CHAR, number, number, RD)
    assert not decision(rules, CHAR, number ^ 1, number, RD)
    assert not decision(rules, CHAR, number, number ^ 1, RD)


def test_empty_access_rule_decides_nothing():
    rules = [R(True, "a"), R(False, "c", 1, 3, "")]
    assert decision(rules, CHAR, 1, 3, RD | WR | M)


def test_random_rule_sets_match_the_reference():
    rng = random.Random(20240603)
    majors, minors = [1, 5, 136, 0xFFFF_FFFF], [0, 3, 5, 0x8000_0000]

    def maybe(values):
        return None if rng.random() < 0.3 else rng.choice(values)

    for _ in range(300):
        rules = []
        for _ in range(rng.randint(0, 7)):
            letters = "".join(c for c in "rwm" if rng.random() < 0.6)
            rules.append(
                R(rng.random() < 0.6, rng.choice("abc"), maybe(majors), maybe(minors), letters)
            )
        prog = dv.build_program(rules).encode()
        for _ in range(20):
            req = (rng.choice((BLOCK, CHAR)), rng.choice(majors), rng.choice(minors))
            access = rng.choice(ACCESSES)
            want = reference(rules, *req, access)
            assert (run(prog, *req, access) == 1) is want, (rules, req, access)


# --- program shape ------------------------------------------------------------------------


def test_leading_deny_all_costs_nothing():
    prog = dv.build_program([dv.DENY_ALL, R(True, "c", 1, 3)])
    assert prog.rules == (R(True, "c", 1, 3),)
    assert prog.default_allow is False
    assert (
        len(prog.insns) == 6 + 5 + 2
    )  # prelude, one block (type, major, minor, set, exit), default


def test_rules_before_a_wildcard_are_dropped():
    rules, default = dv.effective_rules(
        [R(False, "c", 1, 3), R(True, "a", None, None, "rwm"), R(False, "b", 8, 0)]
    )
    assert default is True
    assert rules == (R(False, "b", 8, 0),)


def test_leading_rules_that_agree_with_the_default_are_dropped():
    rules, default = dv.effective_rules([R(False, "c", 1, 3), R(True, "c", 1, 5)])
    assert default is False
    assert rules == (R(True, "c", 1, 5),)


def test_partial_wildcard_is_not_a_default():
    rules, default = dv.effective_rules([R(True, "a", None, None, "rw")])
    assert default is False
    assert rules == (R(True, "a", None, None, "rw"),)


def test_prelude_reads_the_context_fields():
    text = str(dv.build_program([]))
    assert "r2 = *(u32 *)(r1 +0)" in text
    assert "r4 = *(u32 *)(r1 +4)" in text
    assert "r5 = *(u32 *)(r1 +8)" in text


# --- the encoder --------------------------------------------------------------------------


def test_known_encodings():
    assert bi.exit_insn().encode() == bytes.fromhex("9500000000000000")
    assert bi.alu32_imm(bi.BPF_MOV, 0, 1).encode() == bytes.fromhex("b400000001000000")
    assert bi.ldx_mem(bi.BPF_W, 2, 1, 4).encode() == bytes.fromhex("6112040000000000")
    assert bi.jmp32_imm(bi.BPF_JNE, 4, 136, 3).encode() == bytes.fromhex("5604030088000000")
    assert bi.alu32_reg(bi.BPF_MOV, 3, 2).encode() == bytes.fromhex("bc23000000000000")
    assert bi.alu32_imm(bi.BPF_AND, 3, -2).encode() == bytes.fromhex("54030000feffffff")


def test_round_trip():
    prog = dv.build_program(RUNC_LIKE)
    assert tuple(bi.decode(prog.encode())) == prog.insns


@pytest.mark.parametrize(
    "kwargs",
    [{"code": 256}, {"dst": 11}, {"src": -1}, {"off": 0x8000}, {"imm": 0x8000_0000}],
)
def test_out_of_range_fields(kwargs):
    with pytest.raises(bi.InsnError):
        bi.Insn(**({"code": bi.BPF_JMP | bi.BPF_EXIT} | kwargs))


def test_u32_immediates():
    assert bi.u32_imm(5) == 5
    assert bi.u32_imm(0xFFFF_FFFF) == -1
    assert bi.u32_imm(0x8000_0000) == -0x8000_0000
    with pytest.raises(bi.InsnError):
        bi.u32_imm(1 << 32)


def test_decode_rejects_partial_instructions():
    with pytest.raises(bi.InsnError):
        bi.decode(b"\x95\0\0")


# --- parsing OCI rules --------------------------------------------------------------------


def test_parse_oci_rules():
    rules = dv.parse_rules(
        [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
            {"allow": True, "type": "c", "major": 136, "minor": -1},
            {"allow": True, "type": "b", "major": None, "minor": None, "access": "m"},
        ]
    )
    assert rules == [
        dv.DENY_ALL,
        R(True, "c", 1, 3, "rw"),
        R(True, "c", 136, None, "rwm"),
        R(True, "b", None, None, "m"),
    ]
    assert dv.parse_rules(None) == []


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"allow": True, "type": "x"}, "type"),
        ({"allow": True, "access": "rwx"}, "'x'"),
        ({"allow": True, "major": -2}, "major -2 is negative"),
        ({"allow": True, "minor": -5}, "minor -5 is negative"),
        ({"allow": True, "minor": "3"}, "minor must be an integer"),
        ({"allow": True, "major": True}, "major must be an integer"),
        ({"allow": True, "major": 1 << 32}, "out of range"),
        ({"type": "c"}, "'allow' is required"),
        ({"allow": "yes"}, "allow must be true or false"),
        ({"allow": True, "access": 7}, "access must be a string"),
        ("c 1:3 rwm", "must be an object"),
    ],
)
def test_invalid_rules_name_their_index(entry, words):
    good = {"allow": True, "type": "c", "major": 1, "minor": 5}
    with pytest.raises(dv.DeviceRuleError) as err:
        dv.parse_rules([good, good, entry])
    assert err.value.index == 2
    assert str(err.value).startswith("device rule 2: ")
    assert words in str(err.value)


def test_devices_must_be_a_list():
    with pytest.raises(dv.DeviceRuleError, match="must be a list"):
        dv.parse_rules({"allow": True})


def test_rule_notation():
    assert str(R(True, "c", 136, None, "rw")) == "allow c 136:* rw"


# --- the bpf(2) choreography against a fake kernel ---------------------------------------


class FakeBpf:
    """Enough of the kernel's bpf(2) for the load/attach/query/detach sequence.

    Program fds are real fds (on /dev/null) because devices.py closes them
    with os.close; the test checks every one was closed. Cgroups are told
    apart by the inode of the directory fd.
    """

    def __init__(self, fail: dict[int, int] | None = None, attach_flags: int = 0) -> None:
        self.fail = dict(fail or {})
        self.calls: list[tuple[str, object]] = []
        self.progs: dict[int, bytes] = {}  # id -> code
        self.fd_to_id: dict[int, int] = {}
        self.attached: dict[int, list[int]] = {}  # cgroup ino -> ids
        self.flags: dict[int, int] = {}
        self.default_flags = attach_flags
        self.next_id = 100
        self.opened: list[int] = []

    def _fd_for(self, prog_id: int) -> int:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.opened.append(fd)
        self.fd_to_id[fd] = prog_id
        return fd

    def preattach(self, cgroup_dir, count: int, flags: int) -> list[int]:
        ino = os.stat(cgroup_dir).st_ino
        ids = [self.next_id + i for i in range(count)]
        self.next_id += count
        self.attached[ino] = list(ids)
        self.flags[ino] = flags
        return ids

    def bpf(self, cmd: int, attr: bytearray) -> int:
        if cmd in self.fail:
            err = self.fail[cmd]
            if cmd == dv.BPF_PROG_LOAD:
                level, size, buf = struct.unpack_from("=IIQ", attr, 24)
                self.calls.append(("load-fail", level))
                if level:
                    ctypes.memmove(buf, b"0: (95) exit\nR0 !read_ok\n\0", 26)
            raise SyscallError(err, f"bpf(cmd {cmd})")
        if cmd == dv.BPF_PROG_LOAD:
            ptype, cnt, insns, lic = struct.unpack_from("=IIQQ", attr, 0)
            name = bytes(attr[48:64]).rstrip(b"\0").decode()
            assert ptype == dv.BPF_PROG_TYPE_CGROUP_DEVICE
            assert ctypes.string_at(lic) == b"GPL"
            prog_id = self.next_id
            self.next_id += 1
            self.progs[prog_id] = ctypes.string_at(insns, cnt * 8)
            self.calls.append(("load", (prog_id, name)))
            return self._fd_for(prog_id)
        if cmd == dv.BPF_PROG_QUERY:
            fd, atype, _qflags, _ = struct.unpack_from("=IIII", attr, 0)
            assert atype == dv.BPF_CGROUP_DEVICE
            ino = os.fstat(fd).st_ino
            ids = self.attached.get(ino, [])
            ptr, cap = struct.unpack_from("=QI", attr, 16)
            struct.pack_into("=I", attr, 12, self.flags.get(ino, 0))
            struct.pack_into("=I", attr, 24, len(ids))
            arr = (ctypes.c_uint32 * cap).from_address(ptr)
            for i, pid in enumerate(ids[:cap]):
                arr[i] = pid
            self.calls.append(("query", tuple(ids)))
            if len(ids) > cap:
                raise SyscallError(errno.ENOSPC, "bpf")
            return 0
        if cmd in (dv.BPF_PROG_ATTACH, dv.BPF_PROG_DETACH):
            target, prog_fd, atype, flags, _ = struct.unpack_from("=IIIII", attr, 0)
            assert atype == dv.BPF_CGROUP_DEVICE
            ino = os.fstat(target).st_ino
            prog_id = self.fd_to_id[prog_fd]
            os.fstat(prog_fd)  # still open
            progs = self.attached.setdefault(ino, [])
            if cmd == dv.BPF_PROG_ATTACH:
                assert flags == dv.BPF_F_ALLOW_MULTI
                if progs and not self.flags.get(ino, 0) & dv.BPF_F_ALLOW_MULTI:
                    raise SyscallError(errno.EPERM, "bpf")
                progs.append(prog_id)
                self.flags[ino] = flags
                self.calls.append(("attach", prog_id))
            else:
                if prog_id not in progs:
                    raise SyscallError(errno.ENOENT, "bpf")
                progs.remove(prog_id)
                self.calls.append(("detach", prog_id))
            return 0
        if cmd == dv.BPF_PROG_GET_FD_BY_ID:
            (prog_id,) = struct.unpack_from("=I", attr, 0)
            self.calls.append(("get_fd", prog_id))
            if prog_id not in self.progs and not any(
                prog_id in ids for ids in self.attached.values()
            ):
                raise SyscallError(errno.ENOENT, "bpf")
            return self._fd_for(prog_id)
        if cmd == dv.BPF_OBJ_GET_INFO_BY_FD:
            fd, size, ptr = struct.unpack_from("=IIQ", attr, 0)
            raw = bytearray(size)
            struct.pack_into("=II", raw, 0, dv.BPF_PROG_TYPE_CGROUP_DEVICE, self.fd_to_id[fd])
            raw[64:80] = dv.PROGRAM_NAME.encode().ljust(16, b"\0")
            ctypes.memmove(ptr, bytes(raw), size)
            return 0
        raise AssertionError(f"unexpected bpf command {cmd}")

    def all_closed(self) -> bool:
        for fd in self.opened:
            try:
                os.fstat(fd)
            except OSError:
                continue
            return False
        return True


def test_apply_attaches_new_before_detaching_old(tmp_path):
    kernel = FakeBpf()
    old = kernel.preattach(tmp_path, 2, dv.BPF_F_ALLOW_MULTI)
    info = dv.apply_device_rules(kernel, tmp_path, RUNC_LIKE)
    names = [c[0] for c in kernel.calls]
    assert names == ["query", "load", "attach", "get_fd", "detach", "get_fd", "detach"]
    assert [c[1] for c in kernel.calls if c[0] == "detach"] == old
    assert kernel.attached[os.stat(tmp_path).st_ino] == [info.id]
    assert info.name == dv.PROGRAM_NAME
    assert kernel.progs[info.id] == dv.build_program(RUNC_LIKE).encode()
    assert kernel.all_closed()


def test_apply_on_a_fresh_cgroup(tmp_path):
    kernel = FakeBpf()
    info = dv.apply_device_rules(kernel, tmp_path, [dv.DENY_ALL])
    assert [c[0] for c in kernel.calls] == ["query", "load", "attach"]
    assert dv.attached_device_programs(kernel, tmp_path).prog_ids == (info.id,)
    assert kernel.all_closed()


def test_query_grows_its_buffer(tmp_path):
    kernel = FakeBpf()
    ids = kernel.preattach(tmp_path, 40, dv.BPF_F_ALLOW_MULTI)
    assert dv.attached_device_programs(kernel, tmp_path).prog_ids == tuple(ids)


def test_detach_all(tmp_path):
    kernel = FakeBpf()
    ids = kernel.preattach(tmp_path, 3, dv.BPF_F_ALLOW_MULTI)
    assert dv.detach_device_programs(kernel, tmp_path) == ids
    assert kernel.attached[os.stat(tmp_path).st_ino] == []
    assert kernel.all_closed()


def test_load_failure_carries_the_verifier_log(tmp_path):
    kernel = FakeBpf(fail={dv.BPF_PROG_LOAD: errno.EACCES})
    old = kernel.preattach(tmp_path, 1, dv.BPF_F_ALLOW_MULTI)
    with pytest.raises(dv.DeviceProgramError) as err:
        dv.apply_device_rules(kernel, tmp_path, RUNC_LIKE)
    assert err.value.errno == errno.EACCES
    assert "R0 !read_ok" in err.value.verifier_log
    assert [c for c in kernel.calls if c[0] == "load-fail"] == [("load-fail", 0), ("load-fail", 1)]
    assert kernel.attached[os.stat(tmp_path).st_ino] == old  # the old policy stays


def test_exclusive_program_of_another_manager_is_named(tmp_path):
    kernel = FakeBpf()
    kernel.preattach(tmp_path, 1, 0)  # attached without BPF_F_ALLOW_MULTI
    with pytest.raises(dv.DeviceProgramError, match="without BPF_F_ALLOW_MULTI") as err:
        dv.apply_device_rules(kernel, tmp_path, RUNC_LIKE)
    assert err.value.errno == errno.EPERM
    assert err.value.filename == str(tmp_path)
    assert "detach" not in [c[0] for c in kernel.calls]
    assert kernel.all_closed()


def test_a_program_detached_meanwhile_is_skipped(tmp_path):
    class Racing(FakeBpf):
        def bpf(self, cmd, attr):
            if cmd == dv.BPF_PROG_ATTACH:  # someone else detaches old[0] right now
                self.attached[os.stat(tmp_path).st_ino].remove(old[0])
            return super().bpf(cmd, attr)

    kernel = Racing()
    old = kernel.preattach(tmp_path, 2, dv.BPF_F_ALLOW_MULTI)
    info = dv.apply_device_rules(kernel, tmp_path, RUNC_LIKE)
    assert kernel.attached[os.stat(tmp_path).st_ino] == [info.id]
    assert kernel.all_closed()
