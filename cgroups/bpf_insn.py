"""eBPF instructions: the encoding of `struct bpf_insn` from linux/bpf.h.

Pinnace builds its cgroup device programs itself instead of depending on a
compiler toolchain or libbpf: the programs are a few straight-line compare
and return blocks, so a small encoder is all it takes. Each instruction is
8 bytes in host byte order (x86_64 and arm64 are little-endian):

    u8 code | u8 dst_reg:4, src_reg:4 | s16 off | s32 imm

`code` is class | size/op | mode/source. Jump offsets count instructions,
relative to the instruction after the jump.
"""

from __future__ import annotations

import struct
import sys

from namespaces.record import FrozenRecord

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# Instruction classes (the low 3 bits of code).
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04  # 32-bit arithmetic: results are zero-extended into the 64-bit register
BPF_JMP = 0x05
BPF_JMP32 = 0x06  # compares the low 32 bits only (Linux >= 5.1)
BPF_ALU64 = 0x07

# Load/store sizes and modes.
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10
BPF_DW = 0x18
BPF_MEM = 0x60

# Operand source: the immediate (K) or the source register (X).
BPF_K = 0x00
BPF_X = 0x08

# ALU operations.
BPF_ADD = 0x00
BPF_SUB = 0x10
BPF_OR = 0x40
BPF_AND = 0x50
BPF_LSH = 0x60
BPF_RSH = 0x70
BPF_XOR = 0xA0
BPF_MOV = 0xB0

# Jump operations.
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
BPF_JNE = 0x50
BPF_EXIT = 0x90

INSN_SIZE = 8
_LITTLE = sys.byteorder == "little"
_FMT = "<BBhi" if _LITTLE else ">BBhi"

_ALU_NAMES = {
    BPF_ADD: "+=",
    BPF_SUB: "-=",
    BPF_OR: "|=",
    BPF_AND: "&=",
    BPF_LSH: "<<=",
    BPF_RSH: ">>=",
    BPF_XOR: "^=",
    BPF_MOV: "=",
}
_JMP_NAMES = {
    BPF_JEQ: "==",
    BPF_JGT: ">",
    BPF_JGE: ">=",
    BPF_JSET: "&",
    BPF_JNE: "!=",
}
_SIZE_NAMES = {BPF_W: "u32", BPF_H: "u16", BPF_B: "u8", BPF_DW: "u64"}


class InsnError(ValueError):
    """An instruction field is out of range; names the field and the value."""


class Insn(FrozenRecord):
    """One eBPF instruction, as the fields of struct bpf_insn."""

    __slots__ = ("code", "dst", "src", "off", "imm")  # noqa: RUF023

    def __init__(self, code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> None:
        self.code = code
        self.dst = dst
        self.src = src
        self.off = off
        self.imm = imm
        if not 0 <= self.code <= 0xFF:
            raise InsnError(f"opcode {self.code:#x} is not a byte")
        for name, reg in (("dst", self.dst), ("src", self.src)):
            if not 0 <= reg <= 10:
                raise InsnError(f"{name} register r{reg} does not exist (r0..r10)")
        if not -0x8000 <= self.off <= 0x7FFF:
            raise InsnError(f"offset {self.off} does not fit in s16")
        if not -0x8000_0000 <= self.imm <= 0x7FFF_FFFF:
            raise InsnError(f"immediate {self.imm} does not fit in s32")

    @property
    def cls(self) -> int:
        return self.code & 0x07

    def encode(self) -> bytes:
        # The register bitfields follow the byte order: dst is the low nibble on little-endian.
        regs = (self.src << 4) | self.dst if _LITTLE else (self.dst << 4) | self.src
        return struct.pack(_FMT, self.code, regs, self.off, self.imm)

    @classmethod
    def decode(cls, raw: bytes) -> Insn:
        code, regs, off, imm = struct.unpack(_FMT, raw)
        lo, hi = regs & 0x0F, regs >> 4
        return cls(code, lo, hi, off, imm) if _LITTLE else cls(code, hi, lo, off, imm)

    def __str__(self) -> str:
        return disassemble_one(self)


def u32_imm(value: int) -> int:
    """A u32 constant as the s32 the imm field holds (JMP32 compares all 32 bits)."""
    if not 0 <= value <= 0xFFFF_FFFF:
        raise InsnError(f"{value} is not a u32")
    return value - 0x1_0000_0000 if value > 0x7FFF_FFFF else value


def ldx_mem(size: int, dst: int, src: int, off: int) -> Insn:
    """dst = *(size *)(src + off)"""
    return Insn(BPF_LDX | size | BPF_MEM, dst, src, off, 0)


def alu32_imm(op: int, dst: int, imm: int) -> Insn:
    """w_dst op= imm (32-bit)"""
    return Insn(BPF_ALU | op | BPF_K, dst, 0, 0, imm)


def alu32_reg(op: int, dst: int, src: int) -> Insn:
    """w_dst op= w_src (32-bit)"""
    return Insn(BPF_ALU | op | BPF_X, dst, src, 0, 0)


def jmp32_imm(op: int, dst: int, imm: int, off: int) -> Insn:
    """if (w_dst op imm) goto pc + 1 + off"""
    return Insn(BPF_JMP32 | op | BPF_K, dst, 0, off, imm)


def jmp32_reg(op: int, dst: int, src: int, off: int) -> Insn:
    """if (w_dst op w_src) goto pc + 1 + off"""
    return Insn(BPF_JMP32 | op | BPF_X, dst, src, off, 0)


def exit_insn() -> Insn:
    """return r0"""
    return Insn(BPF_JMP | BPF_EXIT)


def encode(insns: Iterable[Insn]) -> bytes:
    """The byte image the kernel's BPF_PROG_LOAD reads (attr.insns)."""
    return b"".join(i.encode() for i in insns)


def decode(raw: bytes) -> list[Insn]:
    if len(raw) % INSN_SIZE:
        raise InsnError(f"{len(raw)} bytes is not a whole number of instructions")
    return [Insn.decode(raw[i : i + INSN_SIZE]) for i in range(0, len(raw), INSN_SIZE)]


def disassemble_one(insn: Insn) -> str:
    """A readable form in the kernel verifier's notation (w = 32-bit register)."""
    cls, op, src_x = insn.cls, insn.code & 0xF0, insn.code & BPF_X
    if cls == BPF_LDX and insn.code & 0xE0 == BPF_MEM:
        size = _SIZE_NAMES[insn.code & 0x18]
        return f"r{insn.dst} = *({size} *)(r{insn.src} {insn.off:+d})"
    if cls in (BPF_ALU, BPF_ALU64) and op in _ALU_NAMES:
        reg = "w" if cls == BPF_ALU else "r"
        rhs = f"{reg}{insn.src}" if src_x else str(insn.imm)
        return f"{reg}{insn.dst} {_ALU_NAMES[op]} {rhs}"
    if cls == BPF_JMP and op == BPF_EXIT:
        return "exit"
    if cls == BPF_JMP and op == BPF_JA:
        return f"goto {insn.off:+d}"
    if cls in (BPF_JMP, BPF_JMP32) and op in _JMP_NAMES:
        reg = "w" if cls == BPF_JMP32 else "r"
        rhs = f"{reg}{insn.src}" if src_x else str(insn.imm)
        return f"if {reg}{insn.dst} {_JMP_NAMES[op]} {rhs} goto {insn.off:+d}"
    return f"<code {insn.code:#04x} dst r{insn.dst} src r{insn.src} off {insn.off} imm {insn.imm}>"


def disassemble(insns: Iterable[Insn]) -> str:
    return "\n".join(f"{n:4d}: {disassemble_one(i)}" for n, i in enumerate(insns))
