"""The one thin layer through which Pinnace makes raw kernel calls.

Python 3.11 has no os.unshare/os.setns and no wrappers for the new mount API,
openat2 or pidfd calls, so they are made here on libc through ctypes' C module
(namespaces/ctypes_lite.py). Every
call raises `SyscallError` (an OSError with errno, the call's name and the path
it concerns). Logic above this module takes a `Syscalls` object, so its unit
tests can pass a recording fake instead of touching the kernel.
"""

from __future__ import annotations

import errno as errno_mod
import os

from namespaces import ctypes_lite as ct
from namespaces.record import FrozenRecord
from namespaces.signals import SIGCHLD

# Type-only imports: every pinnace-oci verb imports this module (see
# namespaces/record.py for the cost).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# mount(2) flags (linux/mount.h).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000

MNT_DETACH = 0x2

# Numbers of the calls libc does not wrap. Since Linux 5.1 new calls get one
# number on every architecture (424 and up), so these hold on x86_64 and arm64.
SYS_PIDFD_SEND_SIGNAL = 424
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_PIDFD_OPEN = 434
SYS_CLOSE_RANGE = 436
SYS_OPENAT2 = 437
SYS_MOUNT_SETATTR = 442
SYS_BPF = 321  # x86_64 only (arm64: 280); used by Libc.bpf
_LINUX_CAPABILITY_VERSION_3 = 0x20080522  # linux/capability.h: 64-bit sets
SECCOMP_SET_MODE_FILTER = 1  # linux/seccomp.h
# Read once: after personality(LINUX32) uname says i686, and the init sets the
# personality before its capset.
_MACHINE = os.uname().machine

OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x100000

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

CLOSE_RANGE_CLOEXEC = 0x4

# prctl(2) options used to probe seccomp support without installing a filter.
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class SyscallError(OSError):
    """A failed kernel call: errno, the call's name, and the path it concerned."""

    def __init__(self, err: int, call: str, path: str | None = None) -> None:
        super().__init__(err, f"{call}: {os.strerror(err)}", path)
        self.call = call


class _OpenHow(ct.Structure):
    _fields_ = (
        ("flags", ct.c_uint64),
        ("mode", ct.c_uint64),
        ("resolve", ct.c_uint64),
    )


class _MountAttr(ct.Structure):
    _fields_ = (
        ("attr_set", ct.c_uint64),
        ("attr_clr", ct.c_uint64),
        ("propagation", ct.c_uint64),
        ("userns_fd", ct.c_uint64),
    )


class MountAttr(FrozenRecord):
    """What mount_setattr(2) changes: attributes to set/clear, propagation, idmap userns."""

    # the fields in order (repr, and the positional order of __init__)
    __slots__ = ("attr_set", "attr_clr", "propagation", "userns_fd")  # noqa: RUF023

    def __init__(
        self, attr_set: int = 0, attr_clr: int = 0, propagation: int = 0, userns_fd: int = 0
    ) -> None:
        self.attr_set = attr_set
        self.attr_clr = attr_clr
        self.propagation = propagation
        self.userns_fd = userns_fd


class Syscalls(Protocol):
    """The kernel calls Pinnace makes; `Libc` is the real one, tests pass fakes."""

    def unshare(self, flags: int) -> None: ...
    def setns(self, fd: int, nstype: int = 0) -> None: ...
    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None: ...
    def umount2(self, target: str, flags: int = 0) -> None: ...
    def pivot_root(self, new_root: str, put_old: str) -> None: ...
    def sethostname(self, name: str) -> None: ...
    def setdomainname(self, name: str) -> None: ...
    def open_tree(self, dirfd: int, path: str, flags: int) -> int: ...
    def move_mount(
        self, from_dirfd: int, from_path: str, to_dirfd: int, to_path: str, flags: int
    ) -> None: ...
    def mount_setattr(self, dirfd: int, path: str, flags: int, attr: MountAttr) -> None: ...
    def openat2(self, dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int: ...
    def pidfd_open(self, pid: int, flags: int = 0) -> int: ...
    def pidfd_send_signal(self, pidfd: int, sig: int) -> None: ...
    def close_range(self, first: int, last: int, flags: int = 0) -> None: ...
    def prctl(self, option: int, arg2: int = 0, arg3: int = 0) -> int: ...
    def capset(self, effective: int, permitted: int, inheritable: int) -> None: ...
    def seccomp_set_filter(self, flags: int, program: bytes) -> None: ...

    # --- new mount API (fsopen/fsconfig/fsmount), added for overlayfs/ ----------
    def fsopen(self, fs_name: str, flags: int = 0) -> int: ...
    def fsconfig(
        self, fs_fd: int, cmd: int, key: str | None = None, value: str | None = None, aux: int = 0
    ) -> None: ...
    def fsmount(self, fs_fd: int, flags: int = 0, attr_flags: int = 0) -> int: ...

    # --- inotify: added for cgroups/ (cgroup.events and memory.events watches) ---
    def inotify_init1(self, flags: int = 0) -> int: ...
    def inotify_add_watch(self, fd: int, path: str, mask: int) -> int: ...
    def inotify_rm_watch(self, fd: int, wd: int) -> None: ...

    # --- bpf(2), for cgroup v2 device programs (cgroups/devices.py) ---
    def bpf(self, cmd: int, attr: bytearray) -> int: ...

    # --- personality(2), for the OCI linux.personality domain (runtime/process.py) ---
    def personality(self, persona: int) -> int: ...

    # --- clone3(2) as fork, born in a cgroup, for runtime/ (CgroupV2Manager.fork_into) ---
    def fork_into_cgroup(self, cgroup_fd: int, flags: int = 0) -> int: ...


def _enc(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


class Libc:
    """Syscalls made through ctypes on the C library, errno preserved."""

    def __init__(self) -> None:
        # dlopen(NULL): the C library the interpreter runs on is already loaded. (Not
        # ctypes.util.find_library("c"): it imports subprocess and forks `ldconfig -p`,
        # ~15 ms of every pinnace-oci create.)
        self._libc = ct.Library()
        self._syscall = self._libc.syscall
        self._syscall.restype = ct.c_long

    def _check(self, ret: int, call: str, path: str | None = None) -> int:
        if ret < 0:
            raise SyscallError(ct.get_errno(), call, path)
        return ret

    def unshare(self, flags: int) -> None:
        self._check(self._libc.unshare(ct.c_int(flags)), "unshare")

    def setns(self, fd: int, nstype: int = 0) -> None:
        self._check(self._libc.setns(ct.c_int(fd), ct.c_int(nstype)), "setns")

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        ret = self._libc.mount(
            _enc(source), _enc(target), _enc(fstype), ct.c_ulong(flags), _enc(data)
        )
        self._check(ret, "mount", target)

    def umount2(self, target: str, flags: int = 0) -> None:
        self._check(self._libc.umount2(_enc(target), ct.c_int(flags)), "umount2", target)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        # glibc has no wrapper; the number predates the generic table
        nr = {"x86_64": 155, "aarch64": 41}[_MACHINE]
        ret = self._syscall(ct.c_long(nr), _enc(new_root), _enc(put_old))
        self._check(ret, "pivot_root", new_root)

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        self._check(self._libc.sethostname(raw, ct.c_size_t(len(raw))), "sethostname")

    def setdomainname(self, name: str) -> None:
        raw = name.encode()
        self._check(self._libc.setdomainname(raw, ct.c_size_t(len(raw))), "setdomainname")

    def open_tree(self, dirfd: int, path: str, flags: int) -> int:
        ret = self._syscall(ct.c_long(SYS_OPEN_TREE), ct.c_int(dirfd), _enc(path), ct.c_uint(flags))
        return self._check(ret, "open_tree", path)

    def move_mount(
        self, from_dirfd: int, from_path: str, to_dirfd: int, to_path: str, flags: int
    ) -> None:
        ret = self._syscall(
            ct.c_long(SYS_MOVE_MOUNT),
            ct.c_int(from_dirfd),
            _enc(from_path),
            ct.c_int(to_dirfd),
            _enc(to_path),
            ct.c_uint(flags),
        )
        self._check(ret, "move_mount", to_path)

    def mount_setattr(self, dirfd: int, path: str, flags: int, attr: MountAttr) -> None:
        raw = _MountAttr(attr.attr_set, attr.attr_clr, attr.propagation, attr.userns_fd)
        ret = self._syscall(
            ct.c_long(SYS_MOUNT_SETATTR),
            ct.c_int(dirfd),
            _enc(path),
            ct.c_uint(flags),
            ct.byref(raw),
            ct.c_size_t(ct.sizeof(raw)),
        )
        self._check(ret, "mount_setattr", path)

    def openat2(self, dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
        how = _OpenHow(flags, mode, resolve)
        ret = self._syscall(
            ct.c_long(SYS_OPENAT2),
            ct.c_int(dirfd),
            _enc(path),
            ct.byref(how),
            ct.c_size_t(ct.sizeof(how)),
        )
        return self._check(ret, "openat2", path)

    def pidfd_open(self, pid: int, flags: int = 0) -> int:
        ret = self._syscall(ct.c_long(SYS_PIDFD_OPEN), ct.c_int(pid), ct.c_uint(flags))
        return self._check(ret, "pidfd_open", f"pid {pid}")

    def pidfd_send_signal(self, pidfd: int, sig: int) -> None:
        ret = self._syscall(
            ct.c_long(SYS_PIDFD_SEND_SIGNAL),
            ct.c_int(pidfd),
            ct.c_int(sig),
            None,
            ct.c_uint(0),
        )
        self._check(ret, "pidfd_send_signal")

    def close_range(self, first: int, last: int, flags: int = 0) -> None:
        ret = self._syscall(
            ct.c_long(SYS_CLOSE_RANGE),
            ct.c_uint(first),
            ct.c_uint(last),
            ct.c_uint(flags),
        )
        self._check(ret, "close_range")

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0) -> int:
        ret = self._libc.prctl(ct.c_int(option), ct.c_ulong(arg2), ct.c_ulong(arg3), None, None)
        return self._check(ret, "prctl")

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        """capset(2) of this thread's three sets, as 64-bit masks (capability version 3:
        two 32-bit halves per set). Raw, not libcap: loading python-prctl and libcap cost
        the container's init ~2 ms before it could mount anything."""
        nr = {"x86_64": 126, "aarch64": 91}[_MACHINE]
        header = (ct.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)  # pid 0: this thread
        data = (ct.c_uint32 * 6)(
            effective & 0xFFFFFFFF,
            permitted & 0xFFFFFFFF,
            inheritable & 0xFFFFFFFF,
            effective >> 32,
            permitted >> 32,
            inheritable >> 32,
        )
        self._check(self._syscall(ct.c_long(nr), header, data), "capset")

    def seccomp_set_filter(self, flags: int, program: bytes) -> None:
        """seccomp(SECCOMP_SET_MODE_FILTER, flags, prog): install a classic-BPF filter
        (`program` is its struct sock_filter array, 8 bytes per instruction)."""
        nr = {"x86_64": 317, "aarch64": 277}[_MACHINE]
        insns = ct.char_buffer(program)

        class SockFprog(ct.Structure):
            _fields_ = (("len", ct.c_ushort), ("filter", ct.c_void_p))

        prog = SockFprog(len(program) // 8, ct.addressof(insns))
        ret = self._syscall(
            ct.c_long(nr),
            ct.c_uint(SECCOMP_SET_MODE_FILTER),
            ct.c_uint(flags),
            ct.byref(prog),
        )
        if ret > 0:  # TSYNC: the id of a thread that could not be synchronised
            raise SyscallError(errno_mod.EBUSY, "seccomp", f"thread {ret}")
        self._check(ret, "seccomp")

    # --- new mount API (fsopen/fsconfig/fsmount), added for overlayfs/ ----------
    # overlayfs mounts many lower layers one at a time with `lowerdir+` (Linux
    # >= 6.8), which has no mount(2) option-page limit.

    def fsopen(self, fs_name: str, flags: int = 0) -> int:
        ret = self._syscall(ct.c_long(SYS_FSOPEN), _enc(fs_name), ct.c_uint(flags))
        return self._check(ret, "fsopen", fs_name)

    def fsconfig(
        self, fs_fd: int, cmd: int, key: str | None = None, value: str | None = None, aux: int = 0
    ) -> None:
        ret = self._syscall(
            ct.c_long(SYS_FSCONFIG),
            ct.c_int(fs_fd),
            ct.c_uint(cmd),
            _enc(key),
            _enc(value),
            ct.c_int(aux),
        )
        self._check(ret, "fsconfig", f"{key}={value}" if key and value else key)

    def fsmount(self, fs_fd: int, flags: int = 0, attr_flags: int = 0) -> int:
        ret = self._syscall(
            ct.c_long(SYS_FSMOUNT),
            ct.c_int(fs_fd),
            ct.c_uint(flags),
            ct.c_uint(attr_flags),
        )
        return self._check(ret, "fsmount")

    # --- inotify: added for cgroups/ (cgroup.events and memory.events watches) ---
    # Python has no os.inotify_*; the events are read from the fd with os.read.

    def inotify_init1(self, flags: int = 0) -> int:
        return self._check(self._libc.inotify_init1(ct.c_int(flags)), "inotify_init1")

    def inotify_add_watch(self, fd: int, path: str, mask: int) -> int:
        ret = self._libc.inotify_add_watch(ct.c_int(fd), _enc(path), ct.c_uint32(mask))
        return self._check(ret, "inotify_add_watch", path)

    def inotify_rm_watch(self, fd: int, wd: int) -> None:
        ret = self._libc.inotify_rm_watch(ct.c_int(fd), ct.c_int(wd))
        self._check(ret, "inotify_rm_watch")

    # --- bpf(2), for cgroup v2 device programs (cgroups/devices.py) -----------------------

    def bpf(self, cmd: int, attr: bytearray) -> int:
        """bpf(2) with a raw `union bpf_attr` image, updated in place.

        A bytearray, not bytes: commands such as BPF_PROG_QUERY write their
        results (prog_cnt, attach_flags) back into the attr the caller passed.
        Pointers inside attr (insns, log_buf, prog_ids...) are the caller's
        to keep alive for the duration of the call.
        """
        buf = (ct.c_char * len(attr)).from_buffer(attr)
        ret = self._syscall(ct.c_long(SYS_BPF), ct.c_int(cmd), buf, ct.c_uint(len(attr)))
        return self._check(ret, f"bpf(cmd {cmd})")

    # --- personality(2), for the OCI linux.personality domain (runtime/process.py) ---

    def personality(self, persona: int) -> int:
        """Set the execution domain; returns the previous one (0xffffffff only queries)."""
        ret = self._libc.personality(ct.c_ulong(persona))
        return self._check(ret, "personality")

    # --- clone3(2) as fork, born in a cgroup, for runtime/ (CgroupV2Manager.fork_into) ---

    def fork_into_cgroup(self, cgroup_fd: int, flags: int = 0) -> int:
        """fork(2), the child starting in the cgroup `cgroup_fd` is open on (clone3 with
        CLONE_INTO_CGROUP, Linux >= 5.7); returns the child's PID, and 0 in the child.
        `flags` adds CLONE_NEW* flags: the child is born in new namespaces (with
        CLONE_NEWPID it is PID 1 of the new one), as unshare(2) then fork would make it.

        A raw syscall, not glibc's fork(): the child skips glibc's atfork handlers and
        Python's after-fork work (os.register_at_fork callbacks, thread and lock
        re-initialisation). That is only sound in a single-threaded process whose child
        needs none of it; CgroupV2Manager.fork_into checks the first. The call holds the
        GIL throughout (as ct.PyDLL would), as os.fork does, so the child resumes holding it.
        No new stack (stack 0): like fork, the child continues on a copy of the parent's.
        """
        args = _CloneArgs(flags=CLONE_INTO_CGROUP | flags, exit_signal=SIGCHLD, cgroup=cgroup_fd)
        syscall = ct.Library(holds_gil=True).syscall
        syscall.restype = ct.c_long
        ret = syscall(ct.c_long(SYS_CLONE3), ct.byref(args), ct.c_size_t(ct.sizeof(args)))
        return self._check(ret, "clone3", f"cgroup fd {cgroup_fd}")


_default: Libc | None = None


def libc() -> Libc:
    """The process-wide real syscall layer (loaded once)."""
    global _default
    if _default is None:
        _default = Libc()
    return _default


def is_enosys(exc: OSError) -> bool:
    """True when the kernel does not know the call at all."""
    return exc.errno == errno_mod.ENOSYS


# --- new mount API constants (linux/mount.h), added for overlayfs/ -----------------
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432

FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1

FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_PATH = 3
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6

MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

AT_FDCWD = -100
UMOUNT_NOFOLLOW = 0x8

# --- clone3(2), for Libc.fork_into_cgroup (linux/sched.h) ---------------------------
SYS_CLONE3 = 435
CLONE_INTO_CGROUP = 0x200000000


class _CloneArgs(ct.Structure):
    """struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes): a kernel that
    predates the field refuses the size with E2BIG."""

    _fields_ = (
        ("flags", ct.c_uint64),
        ("pidfd", ct.c_uint64),
        ("child_tid", ct.c_uint64),
        ("parent_tid", ct.c_uint64),
        ("exit_signal", ct.c_uint64),
        ("stack", ct.c_uint64),
        ("stack_size", ct.c_uint64),
        ("tls", ct.c_uint64),
        ("set_tid", ct.c_uint64),
        ("set_tid_size", ct.c_uint64),
        ("cgroup", ct.c_uint64),
    )
