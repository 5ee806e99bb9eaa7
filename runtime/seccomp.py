"""`linux.seccomp`: validated into numbers at plan time, compiled and loaded by libseccomp.

libseccomp (libseccomp.so.2, through ctypes) turns the rules into a BPF
program for every listed architecture; it is a library, not a kernel call,
so it lives here and not in namespaces/syscalls.py. ctypes and the library
are loaded lazily: a config without seccomp never pays for them, and the
init calls `preload()` before pivot_root (the library cannot be found
after it).

Semantics follow runc where the spec leaves room:
- a syscall name libseccomp does not know is skipped with a note (the
  profile may name calls of newer kernels);
- a rule whose action equals the default action is skipped (libseccomp
  refuses it as redundant);
- several conditions on the same argument index are OR-ed, one rule per
  condition (libseccomp cannot AND them; docker's profile relies on the OR,
  e.g. `personality` with one allowed value per condition);
- libseccomp's own no_new_privs is off: the runtime sets it only when the
  config asks (`process.noNewPrivileges`).
"""

from __future__ import annotations

import errno
import os

from namespaces.record import FrozenRecord
from namespaces.syscalls import SyscallError
from runtime.errors import ProcessSetupError, SpecError

TYPE_CHECKING = False  # no typing, dataclasses: every engine's config has a filter
if TYPE_CHECKING:
    from typing import Any

    from namespaces.syscalls import Syscalls

# Actions (seccomp.h). ERRNO and TRACE carry a 16-bit datum.
ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000
ACT_NOTIFY = 0x7FC00000

ACTIONS: dict[str, int] = {
    "SCMP_ACT_KILL": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": ACT_TRAP,
    "SCMP_ACT_ERRNO": ACT_ERRNO,
    "SCMP_ACT_TRACE": ACT_TRACE,
    "SCMP_ACT_ALLOW": ACT_ALLOW,
    "SCMP_ACT_LOG": ACT_LOG,
    "SCMP_ACT_NOTIFY": ACT_NOTIFY,
}
WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
MAX_ERRNO = 4095  # the kernel clamps SECCOMP_RET_ERRNO data to this

OPERATORS: dict[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
MAX_ARGS = 6

# OCI architecture names -> libseccomp's names (seccomp_arch_resolve_name)
ARCHITECTURES: dict[str, str] = {
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_MIPS": "mips",
    "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32",
    "SCMP_ARCH_MIPSEL": "mipsel",
    "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
    "SCMP_ARCH_PPC": "ppc",
    "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le",
    "SCMP_ARCH_S390": "s390",
    "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_PARISC": "parisc",
    "SCMP_ARCH_PARISC64": "parisc64",
    "SCMP_ARCH_RISCV64": "riscv64",
    "SCMP_ARCH_LOONGARCH64": "loongarch64",
    "SCMP_ARCH_M68K": "m68k",
    "SCMP_ARCH_SH": "sh",
    "SCMP_ARCH_SHEB": "sheb",
}

# Filter attributes (enum scmp_filter_attr)
ATTR_ACT_BADARCH = 2
ATTR_CTL_NNP = 3
ATTR_CTL_TSYNC = 4
ATTR_CTL_LOG = 6
ATTR_CTL_SSB = 7

# libseccomp attributes -> the seccomp(2) flags seccomp_load passes for them
KERNEL_FLAGS = {ATTR_CTL_TSYNC: 1, ATTR_CTL_LOG: 2, ATTR_CTL_SSB: 4}

FLAGS: dict[str, int | None] = {
    "SECCOMP_FILTER_FLAG_TSYNC": ATTR_CTL_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": ATTR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": ATTR_CTL_SSB,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": None,  # only changes SCMP_ACT_NOTIFY
}

NR_SCMP_ERROR = -1
LIBRARY = "libseccomp.so.2"


class ArgCondition(FrozenRecord):
    __slots__ = ("arg", "op", "value", "value_two")

    def __init__(self, arg: int, op: int, value: int, value_two: int = 0) -> None:
        self.arg = arg  # the syscall argument's index, 0..5
        self.op = op
        self.value = value
        self.value_two = value_two


class Rule(FrozenRecord):
    """One libseccomp rule: an action for a syscall number, under AND-ed conditions."""

    __slots__ = ("action", "conditions", "field", "name", "syscall")

    def __init__(
        self,
        action: int,
        syscall: int,
        name: str,
        field: str,  # where it came from, e.g. linux.seccomp.syscalls[3]
        conditions: tuple[ArgCondition, ...] = (),
    ) -> None:
        self.action = action
        self.syscall = syscall
        self.name = name
        self.field = field
        self.conditions = conditions


class SeccompProgram(FrozenRecord):
    """A checked `linux.seccomp`, everything resolved to numbers; compile it with `build`."""

    __slots__ = ("arches", "attributes", "bpf", "default_action", "notes", "rules")

    def __init__(
        self,
        default_action: int,
        arches: tuple[int, ...],  # libseccomp arch tokens
        rules: tuple[Rule, ...],
        attributes: tuple[tuple[int, int], ...],  # (scmp_filter_attr, value)
        notes: tuple[str, ...] = (),
        bpf: bytes | None = None,  # the compiled filter, once `compiled` has made it
    ) -> None:
        self.default_action = default_action
        self.arches = arches
        self.rules = rules
        self.attributes = attributes
        self.notes = notes
        self.bpf = bpf

    def kernel_flags(self) -> int:
        """The seccomp(2) SECCOMP_FILTER_FLAG_* bits libseccomp would load it with."""
        return sum(
            KERNEL_FLAGS[attr] for attr, on in self.attributes if on and attr in KERNEL_FLAGS
        )


# --- libseccomp through ctypes ---------------------------------------------------


class _Lib:
    """libseccomp's functions that build, compile and load a filter, with their C
    signatures (names and the version are _Names')."""

    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
        c_ctx = ctypes.c_void_p

        class ArgCmp(ctypes.Structure):
            _fields_ = (
                ("arg", ctypes.c_uint),
                ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64),
            )

        self.ArgCmp = ArgCmp
        self.seccomp_init = lib.seccomp_init
        self.seccomp_init.argtypes = [ctypes.c_uint32]
        self.seccomp_init.restype = c_ctx
        self.seccomp_release = lib.seccomp_release
        self.seccomp_release.argtypes = [c_ctx]
        self.seccomp_release.restype = None
        self.seccomp_arch_add = lib.seccomp_arch_add
        self.seccomp_arch_add.argtypes = [c_ctx, ctypes.c_uint32]
        self.seccomp_arch_add.restype = ctypes.c_int
        self.seccomp_rule_add_array = lib.seccomp_rule_add_array
        self.seccomp_rule_add_array.argtypes = [
            c_ctx,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(ArgCmp),
        ]
        self.seccomp_rule_add_array.restype = ctypes.c_int
        self.seccomp_attr_set = lib.seccomp_attr_set
        self.seccomp_attr_set.argtypes = [c_ctx, ctypes.c_int, ctypes.c_uint32]
        self.seccomp_attr_set.restype = ctypes.c_int
        self.seccomp_load = lib.seccomp_load
        self.seccomp_load.argtypes = [c_ctx]
        self.seccomp_load.restype = ctypes.c_int
        self.seccomp_export_pfc = lib.seccomp_export_pfc
        self.seccomp_export_pfc.argtypes = [c_ctx, ctypes.c_int]
        self.seccomp_export_pfc.restype = ctypes.c_int
        self.seccomp_export_bpf = lib.seccomp_export_bpf
        self.seccomp_export_bpf.argtypes = [c_ctx, ctypes.c_int]
        self.seccomp_export_bpf.restype = ctypes.c_int


class _Names:
    """libseccomp's name lookups and version: all that planning a filter and finding it
    in the cache need. Made through namespaces.ctypes_lite, so a create or exec whose
    filter is cached never imports ctypes (~1.5 ms); only compiling one (_Lib) does."""

    def __init__(self) -> None:
        from namespaces import ctypes_lite as ct

        lib = ct.Library(LIBRARY)
        self._syscall = lib.seccomp_syscall_resolve_name  # int (const char *)
        self._arch = lib.seccomp_arch_resolve_name  # uint32_t (const char *)
        self._arch.restype = ct.c_uint32
        get_version = lib.seccomp_version  # const struct scmp_version * (void)
        get_version.restype = ct.c_void_p
        major, minor, micro = (ct.c_uint * 3).from_address(get_version())
        self._version = f"{major}.{minor}.{micro}"

    def version(self) -> str:
        return self._version

    def resolve_syscall(self, name: str) -> int:
        return int(self._syscall(name.encode()))

    def resolve_arch(self, name: str) -> int:
        return int(self._arch(name.encode()))


_lookups: _Names | None = None
_lib: _Lib | None = None


def lookups() -> _Names:
    """libseccomp's lookups, loaded once per process (OSError if it cannot be)."""
    global _lookups
    if _lookups is None:
        _lookups = _Names()
    return _lookups


def library() -> _Lib:
    """libseccomp, loaded once per process."""
    global _lib
    if _lib is None:
        _lib = _Lib()
    return _lib


def preload() -> None:
    """Load ctypes and libseccomp now: the init calls this before pivot_root."""
    library()


def available() -> bool:
    try:
        library()
    except OSError:
        return False
    return True


# --- plan: validate and resolve ----------------------------------------------------


def _uint(value: Any, where: str, *, bits: int = 64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise SpecError(where, f"must be an unsigned {bits}-bit integer, not {value!r}")
    return value


def _errno(raw: dict[str, Any], key: str, where: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    n = _uint(value, f"{where}.{key}", bits=32)
    if n > MAX_ERRNO:
        raise SpecError(f"{where}.{key}", f"{n} is not an errno (0..{MAX_ERRNO})")
    return n


def _action(name: Any, errno_ret: int | None, where: str, errno_key: str) -> int:
    if not isinstance(name, str) or name not in ACTIONS:
        raise SpecError(where, f"unknown seccomp action {name!r}")
    if name == "SCMP_ACT_NOTIFY":
        raise SpecError(where, "SCMP_ACT_NOTIFY (a seccomp listener) is not supported yet")
    if errno_ret is not None and name not in WITH_ERRNO:
        raise SpecError(errno_key, f"{name} does not return an errno")
    if name in WITH_ERRNO:
        return ACTIONS[name] | ((errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    return ACTIONS[name]


def _conditions(raw: Any, where: str) -> list[ArgCondition]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(where, "must be an array")
    out = []
    for j, arg in enumerate(raw):
        at = f"{where}[{j}]"
        if not isinstance(arg, dict):
            raise SpecError(at, "must be an object with index, value and op")
        index = _uint(arg.get("index"), f"{at}.index", bits=32)
        if index >= MAX_ARGS:
            raise SpecError(f"{at}.index", f"{index} is not a syscall argument (0..5)")
        op = arg.get("op")
        if not isinstance(op, str) or op not in OPERATORS:
            raise SpecError(f"{at}.op", f"unknown seccomp operator {op!r}")
        value = _uint(arg.get("value", 0), f"{at}.value")
        two = _uint(arg.get("valueTwo", 0), f"{at}.valueTwo")
        out.append(ArgCondition(index, OPERATORS[op], value, two))
    return out


def plan_seccomp(raw: Any, *, field_name: str = "linux.seccomp") -> SeccompProgram:
    """Check `linux.seccomp` and resolve names to numbers; loads libseccomp, not a filter.

    Unknown actions, operators, architectures and flags are SpecErrors;
    syscall names unknown to libseccomp and architectures this libseccomp
    cannot build for are skipped with a note.
    """
    if not isinstance(raw, dict):
        raise SpecError(field_name, "must be an object")
    try:
        lib = lookups()
    except OSError as exc:
        raise SpecError(
            field_name, f"seccomp needs {LIBRARY}, which cannot be loaded: {exc}"
        ) from None
    notes: list[str] = []
    if raw.get("listenerPath") or raw.get("listenerMetadata"):
        raise SpecError(f"{field_name}.listenerPath", "seccomp listeners are not supported yet")
    default_errno = _errno(raw, "defaultErrnoRet", field_name)
    default = _action(
        raw.get("defaultAction"),
        default_errno,
        f"{field_name}.defaultAction",
        f"{field_name}.defaultErrnoRet",
    )

    arches: list[int] = []
    arch_list = raw.get("architectures") or []
    if not isinstance(arch_list, list):
        raise SpecError(f"{field_name}.architectures", "must be an array")
    for i, name in enumerate(arch_list):
        where = f"{field_name}.architectures[{i}]"
        if not isinstance(name, str) or name not in ARCHITECTURES:
            raise SpecError(where, f"unknown architecture {name!r}")
        token = lib.resolve_arch(ARCHITECTURES[name])
        if token == 0:
            notes.append(f"{where}: {name} is not supported by libseccomp {lib.version()}: skipped")
        elif token not in arches:
            arches.append(token)

    attributes: list[tuple[int, int]] = [(ATTR_CTL_NNP, 0)]
    flag_list = raw.get("flags") or []
    if not isinstance(flag_list, list):
        raise SpecError(f"{field_name}.flags", "must be an array")
    for i, flag in enumerate(flag_list):
        where = f"{field_name}.flags[{i}]"
        if not isinstance(flag, str) or flag not in FLAGS:
            raise SpecError(where, f"unknown seccomp flag {flag!r}")
        attr = FLAGS[flag]
        if attr is None:
            notes.append(f"{where}: {flag} only matters with SCMP_ACT_NOTIFY: ignored")
        else:
            attributes.append((attr, 1))

    rules: list[Rule] = []
    syscalls = raw.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise SpecError(f"{field_name}.syscalls", "must be an array")
    for i, entry in enumerate(syscalls):
        where = f"{field_name}.syscalls[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(where, "must be an object with names and action")
        names = entry.get("names")
        if not isinstance(names, list) or not names:
            raise SpecError(f"{where}.names", "must be a non-empty array of syscall names")
        action = _action(
            entry.get("action"),
            _errno(entry, "errnoRet", where),
            f"{where}.action",
            f"{where}.errnoRet",
        )
        conds = _conditions(entry.get("args"), f"{where}.args")
        if action == default:
            continue  # redundant: libseccomp refuses it, runc skips it
        indexes = [c.arg for c in conds]
        # the same argument twice: OR (one rule each), else one rule with all of them
        groups = [(c,) for c in conds] if len(set(indexes)) < len(indexes) else [tuple(conds)]
        for j, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise SpecError(f"{where}.names[{j}]", "must be a syscall name")
            nr = lib.resolve_syscall(name)
            if nr == NR_SCMP_ERROR:
                notes.append(
                    f"{where}.names[{j}]: syscall {name!r} unknown to libseccomp "
                    f"{lib.version()}: skipped"
                )
                continue
            for group in groups:
                rules.append(Rule(action, nr, name, where, group))
    return SeccompProgram(default, tuple(arches), tuple(rules), tuple(attributes), tuple(notes))


# --- compile and load -----------------------------------------------------------------


class Filter:
    """A libseccomp filter context built from a program; release it (or use `with`)."""

    def __init__(self, program: SeccompProgram) -> None:
        self.lib = library()
        ctx = self.lib.seccomp_init(program.default_action)
        if not ctx:
            raise ProcessSetupError("seccomp_init failed", field="linux.seccomp.defaultAction")
        self.ctx: int | None = ctx
        try:
            self._build(program)
        except BaseException:
            self.release()
            raise

    def _check(self, ret: int, what: str, where: str) -> None:
        if ret < 0:
            raise ProcessSetupError(f"{what}: {os.strerror(-ret)}", field=where)

    def _build(self, program: SeccompProgram) -> None:
        lib = self.lib
        for attr, value in program.attributes:
            self._check(
                lib.seccomp_attr_set(self.ctx, attr, value),
                f"seccomp_attr_set({attr})",
                "linux.seccomp.flags",
            )
        for token in program.arches:
            ret = lib.seccomp_arch_add(self.ctx, token)
            if ret != -errno.EEXIST:  # the native architecture is always there
                self._check(ret, f"seccomp_arch_add({token:#x})", "linux.seccomp.architectures")
        for rule in program.rules:
            n = len(rule.conditions)
            arr = (lib.ArgCmp * max(n, 1))()
            for k, c in enumerate(rule.conditions):
                arr[k].arg = c.arg
                arr[k].op = c.op
                arr[k].datum_a = c.value
                arr[k].datum_b = c.value_two
            ret = lib.seccomp_rule_add_array(self.ctx, rule.action, rule.syscall, n, arr)
            self._check(ret, f"cannot add the rule for {rule.name!r}", rule.field)

    def release(self) -> None:
        if self.ctx is not None:
            self.lib.seccomp_release(self.ctx)
            self.ctx = None

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def load(self) -> None:
        """Install the filter in the calling thread (all threads with TSYNC)."""
        ret = self.lib.seccomp_load(self.ctx)
        if ret < 0:
            hint = ""
            if -ret == errno.EACCES:
                hint = " (without no_new_privs, loading a filter needs CAP_SYS_ADMIN)"
            raise ProcessSetupError(
                f"loading the seccomp filter failed: {os.strerror(-ret)}{hint}",
                field="linux.seccomp",
            )

    def _export(self, fn: Any) -> bytes:
        fd = os.memfd_create("pinnace-seccomp-export", os.MFD_CLOEXEC)
        try:
            self._check(fn(self.ctx, fd), "exporting the seccomp filter", "linux.seccomp")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def export_pfc(self) -> str:
        """libseccomp's human-readable pseudo-filter code of the program."""
        return self._export(self.lib.seccomp_export_pfc).decode()

    def export_bpf(self) -> bytes:
        """The raw BPF program (struct sock_filter array) the kernel would get."""
        return self._export(self.lib.seccomp_export_bpf)


def load(program: SeccompProgram, *, sys: Syscalls | None = None) -> None:
    """Install `program` in the calling process: its compiled filter through seccomp(2)
    when `compiled` made one (libseccomp is not even loaded then), else through
    libseccomp."""
    if program.bpf is not None and sys is not None:
        try:
            sys.seccomp_set_filter(program.kernel_flags(), program.bpf)
        except SyscallError as exc:
            hint = ""
            if exc.errno == errno.EACCES:
                hint = " (without no_new_privs, loading a filter needs CAP_SYS_ADMIN)"
            raise ProcessSetupError(
                f"loading the seccomp filter failed: {exc.strerror}{hint}", field="linux.seccomp"
            ) from None
        return
    with Filter(program) as f:
        f.load()


# --- compiled filters, cached --------------------------------------------------------
# libseccomp takes ~12 ms here to build and compile docker's default profile (~370
# rules), and every container and every exec of an engine carries a profile, nearly
# always the same one. So the runtime compiles each distinct program once and keeps the
# BPF under --root (tmpfs, root only): the key hashes everything the compilation reads
# (the resolved program, the libseccomp version, the machine), so a new libseccomp or
# a changed profile is a new entry, never a stale one.
CACHE_FORMAT = 1
MAX_BPF_BYTES = 8 * 4096  # the kernel takes at most BPF_MAXINSNS (4096) 8-byte instructions


def cache_key(program: SeccompProgram) -> str:
    # BLAKE2b from CPython's built-in module: hashlib would first load OpenSSL (~4 ms).
    from _blake2 import blake2b

    parts = (
        CACHE_FORMAT,
        lookups().version(),
        os.uname().machine,
        program.default_action,
        program.arches,
        [
            (r.action, r.syscall, [(c.arg, c.op, c.value, c.value_two) for c in r.conditions])
            for r in program.rules
        ],
        program.attributes,
    )
    return blake2b(repr(parts).encode(), digest_size=32).hexdigest()


# The cache lives in memory (tmpfs), so it is bounded: past CACHE_LIMIT entries the least
# recently used go (a hit touches its entry's mtime). A node sees a handful of distinct
# profiles, so the limit only matters to a caller that makes a new profile per container.
# A runtime killed between writing and renaming leaves a temp file; one older than
# TMP_GRACE seconds belongs to nobody and is removed with the next prune.
CACHE_LIMIT = 128
TMP_GRACE = 60.0


def compiled(program: SeccompProgram, cache_dir: str) -> SeccompProgram:
    """`program` with its BPF: from `cache_dir` when compiled before, else compiled by
    libseccomp now and stored there (atomically, 0600). Called by the runtime before
    it forks, so the container's init needs neither libseccomp nor the compile."""
    path = os.path.join(cache_dir, cache_key(program) + ".bpf")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    else:
        try:
            bpf = os.read(fd, MAX_BPF_BYTES + 1)
            if bpf and len(bpf) % 8 == 0 and len(bpf) <= MAX_BPF_BYTES:
                os.utime(fd)  # recently used: pruning takes the oldest first
                return program.replace(bpf=bpf)
        finally:
            os.close(fd)
    with Filter(program) as f:
        bpf = f.export_bpf()
    # the --root too, if this is its first use: 0700 like RuntimeRoot.new makes it
    os.makedirs(os.path.dirname(cache_dir), mode=0o700, exist_ok=True)
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, bpf)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    prune_cache(cache_dir)
    return program.replace(bpf=bpf)


def prune_cache(cache_dir: str, *, limit: int = CACHE_LIMIT) -> list[str]:
    """Remove what `to_prune` picks from `cache_dir`; the names removed.

    Runs after each new entry (a miss), never on a hit. Concurrent runtimes may
    prune at once: a name already gone is skipped, and a reader that opened an
    entry before it was unlinked still reads it whole.
    """
    import time

    entries: list[tuple[str, float]] = []
    try:
        with os.scandir(cache_dir) as it:
            for e in it:
                try:
                    entries.append((e.name, e.stat(follow_symlinks=False).st_mtime))
                except FileNotFoundError:
                    pass
    except FileNotFoundError:
        return []
    removed = []
    for name in to_prune(entries, limit=limit, now=time.time()):
        try:
            os.unlink(os.path.join(cache_dir, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def to_prune(
    entries: list[tuple[str, float]], *, limit: int, now: float, grace: float = TMP_GRACE
) -> list[str]:
    """Which of (name, mtime) to remove: temp files older than `grace`, and the least
    recently used *.bpf beyond `limit`. Anything else in the directory is left alone."""
    stale = [n for n, t in entries if n.endswith(".tmp") and now - t > grace]
    bpf = sorted((t, n) for n, t in entries if n.endswith(".bpf"))
    excess = len(bpf) - limit
    return stale + [n for _t, n in bpf[: max(excess, 0)]]
