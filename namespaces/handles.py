"""Namespace handles: open, compare, enter, and pin a namespace to a file.

A pinned namespace is a bind mount of its nsfs file onto an ordinary file,
so it outlives every process in it. Pod sandboxes hold their net, ipc and
uts namespaces this way, with no pause process (the approach of CRI-O's
pinns): a short-lived child unshares, the namespaces are bound to files
under the pin directory, and the child exits.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import gc
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from namespaces import syscalls as sc

NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h


class Kind(enum.Enum):
    """A namespace type: its name under /proc/PID/ns and its clone flag."""

    MNT = ("mnt", sc.CLONE_NEWNS)
    UTS = ("uts", sc.CLONE_NEWUTS)
    IPC = ("ipc", sc.CLONE_NEWIPC)
    PID = ("pid", sc.CLONE_NEWPID)
    NET = ("net", sc.CLONE_NEWNET)
    CGROUP = ("cgroup", sc.CLONE_NEWCGROUP)
    USER = ("user", sc.CLONE_NEWUSER)
    TIME = ("time", sc.CLONE_NEWTIME)

    @property
    def proc_name(self) -> str:
        return self.value[0]

    @property
    def flag(self) -> int:
        return self.value[1]

    @classmethod
    def from_name(cls, name: str) -> Kind:
        """From a /proc name or an OCI spec type ("network", "mount", ...)."""
        oci = {"network": "net", "mount": "mnt"}
        name = oci.get(name, name)
        for k in cls:
            if k.proc_name == name:
                return k
        raise ValueError(f"unknown namespace type {name!r}")


class NamespaceError(OSError):
    """A namespace operation failed; carries the path of the namespace file."""


@dataclass(frozen=True)
class Identity:
    """What makes two namespace files the same namespace (nsfs device and inode)."""

    dev: int
    ino: int


class Namespace:
    """An open namespace: an fd on its nsfs file (or on a pin of it)."""

    def __init__(self, kind: Kind, fd: int, path: str) -> None:
        self.kind = kind
        self.fd = fd
        self.path = path

    @classmethod
    def open(cls, kind: Kind, path: str | os.PathLike[str]) -> Namespace:
        p = os.fspath(path)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NamespaceError(exc.errno, f"cannot open {kind.proc_name} namespace", p) from None
        ns = cls(kind, fd, p)
        if not ns.is_namespace():
            ns.close()
            raise NamespaceError(errno.EINVAL, f"not a {kind.proc_name} namespace file", p)
        return ns

    @classmethod
    def of_process(cls, kind: Kind, pid: int | str = "self") -> Namespace:
        return cls.open(kind, f"/proc/{pid}/ns/{kind.proc_name}")

    def identity(self) -> Identity:
        st = os.fstat(self.fd)
        return Identity(st.st_dev, st.st_ino)

    def is_namespace(self) -> bool:
        """True when the fd is a namespace of this kind (a pin or a /proc/PID/ns file)."""
        return nstype(self.fd) == self.kind.flag

    def same_as(self, other: Namespace) -> bool:
        return self.kind is other.kind and self.identity() == other.identity()

    def enter(self, sys: sc.Syscalls | None = None) -> None:
        """setns(2) into this namespace (the calling thread, or process for some kinds)."""
        try:
            (sys or sc.libc()).setns(self.fd, self.kind.flag)
        except sc.SyscallError as exc:
            raise NamespaceError(exc.errno, f"setns: {exc.strerror}", self.path) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pin(source: str | os.PathLike[str], target: Path, sys: sc.Syscalls | None = None) -> None:
    """Bind-mount a namespace file (e.g. /proc/PID/ns/net) onto `target`.

    The target file is created empty; on failure it is removed again, so a
    failed pin leaves nothing behind.
    """
    s = sys or sc.libc()
    fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    try:
        s.mount(os.fspath(source), str(target), None, sc.MS_BIND, None)
    except sc.SyscallError as exc:
        target.unlink()
        raise NamespaceError(
            exc.errno, f"cannot pin {source}: {exc.strerror}", str(target)
        ) from None


def unpin(target: Path, sys: sc.Syscalls | None = None) -> None:
    """Undo `pin`: detach the bind mount and remove the file. Idempotent."""
    s = sys or sc.libc()
    try:
        s.umount2(str(target), sc.MNT_DETACH)
    except sc.SyscallError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):  # not mounted / already gone
            raise NamespaceError(exc.errno, f"cannot unpin: {exc.strerror}", str(target)) from None
    try:
        target.unlink()
    except FileNotFoundError:
        pass


def nstype(fd: int) -> int | None:
    """The CLONE_NEW* type of a namespace fd (ioctl NS_GET_NSTYPE), None if not one."""
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return None


def is_pinned(target: Path) -> bool:
    """True when `target` is a bind mount of a namespace file."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        return nstype(fd) is not None
    finally:
        os.close(fd)


def create_pinned(
    kinds: Iterable[Kind],
    pin_dir: Path,
    *,
    hostname: str | None = None,
    sys: sc.Syscalls | None = None,
) -> dict[Kind, Path]:
    """Create new namespaces of `kinds` and pin each to `pin_dir/<name>`.

    A child process unshares them (and sets the hostname in a new uts
    namespace), the parent binds the child's ns files, then the child exits.
    All or nothing: a failure unpins whatever was pinned.
    """
    s = sys or sc.libc()
    wanted = list(kinds)
    if Kind.MNT in wanted or Kind.USER in wanted or Kind.PID in wanted:
        # a mount ns cannot be pinned inside itself; user and pid need more care
        raise ValueError("create_pinned supports net, ipc, uts, cgroup and time namespaces")
    flags = 0
    for k in wanted:
        flags |= k.flag
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        gc.disable()  # a forked child runs no finalizers of its parent's objects (gRPC's hang)
        status = 0
        try:
            os.close(ready_r)
            os.close(done_w)
            s.unshare(flags)
            if hostname is not None and Kind.UTS in wanted:
                s.sethostname(hostname)
            os.write(ready_w, b"\0")
            os.read(done_r, 1)
        except BaseException as exc:
            err = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
            os.write(ready_w, bytes([min(err, 255)]))
            status = 1
        finally:
            os._exit(status)
    os.close(ready_w)
    os.close(done_r)
    pinned: dict[Kind, Path] = {}
    try:
        answer = os.read(ready_r, 1)
        if answer != b"\0":
            code = answer[0] if answer else errno.EIO
            raise NamespaceError(
                code, f"cannot create namespaces: {os.strerror(code)}", str(pin_dir)
            )
        for k in wanted:
            target = pin_dir / k.proc_name
            # a new time namespace is for the unsharer's children: its file is *_for_children
            name = "time_for_children" if k is Kind.TIME else k.proc_name
            pin(f"/proc/{pid}/ns/{name}", target, s)
            pinned[k] = target
        return pinned
    except BaseException:
        for target in pinned.values():
            unpin(target, s)
        raise
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)
