"""User-namespace ID maps: validate, format, and write uid_map/gid_map/setgroups.

The kernel accepts a map once, whole, and answers a bad one with a bare
EINVAL or EPERM. Checking the ranges first (the same rules the kernel
applies) turns that into an error that says which range is wrong.
"""

from __future__ import annotations

import errno
import gc
import os

from namespaces import syscalls as sc
from namespaces.record import FrozenRecord

TYPE_CHECKING = False  # type-only imports: `create` imports this module (namespaces/record.py)
if TYPE_CHECKING:
    from collections.abc import Sequence

ID_MAX = 2**32 - 1  # (uid_t)-1 is never a valid id
MAX_LINES = 340  # kernel limit since 4.15 (5 before)


class IDMapError(ValueError):
    """An ID map the kernel would refuse, with the reason and the offending range."""


class IDMap(FrozenRecord):
    """One line of an ID map: container ids [container_id, +size) are host ids [host_id, +size)."""

    # the fields in order (repr, and the positional order of __init__)
    __slots__ = ("container_id", "host_id", "size")

    def __init__(self, container_id: int, host_id: int, size: int) -> None:
        self.container_id = container_id
        self.host_id = host_id
        self.size = size

    def line(self) -> str:
        return f"{self.container_id} {self.host_id} {self.size}"


def _overlap(a_start: int, a_size: int, b_start: int, b_size: int) -> bool:
    return a_start < b_start + b_size and b_start < a_start + a_size


def validate(maps: Sequence[IDMap], what: str = "uid") -> None:
    """Raise IDMapError for a map the kernel would refuse."""
    if not maps:
        raise IDMapError(f"{what} map is empty")
    if len(maps) > MAX_LINES:
        raise IDMapError(f"{what} map has {len(maps)} ranges; the kernel takes at most {MAX_LINES}")
    for m in maps:
        if m.size < 1:
            raise IDMapError(f"{what} range {m.line()!r}: size must be at least 1")
        if m.container_id < 0 or m.host_id < 0:
            raise IDMapError(f"{what} range {m.line()!r}: ids must not be negative")
        for start in (m.container_id, m.host_id):
            if start + m.size - 1 >= ID_MAX:
                raise IDMapError(
                    f"{what} range {m.line()!r}: goes past the largest id {ID_MAX - 1}"
                )
    for i, a in enumerate(maps):
        for b in maps[i + 1 :]:
            if _overlap(a.container_id, a.size, b.container_id, b.size):
                raise IDMapError(
                    f"{what} ranges {a.line()!r} and {b.line()!r} overlap inside the namespace"
                )
            if _overlap(a.host_id, a.size, b.host_id, b.size):
                raise IDMapError(f"{what} ranges {a.line()!r} and {b.line()!r} overlap on the host")


def format_map(maps: Sequence[IDMap]) -> str:
    return "".join(m.line() + "\n" for m in maps)


def parse_map(text: str) -> list[IDMap]:
    """Parse /proc/PID/uid_map (or gid_map) text."""
    out = []
    for line in text.splitlines():
        if line.strip():
            a, b, c = line.split()
            out.append(IDMap(int(a), int(b), int(c)))
    return out


def map_id(maps: Sequence[IDMap], container_id: int) -> int | None:
    """The host id for a container id, or None when it is not mapped."""
    for m in maps:
        if m.container_id <= container_id < m.container_id + m.size:
            return m.host_id + (container_id - m.container_id)
    return None


def write_maps(
    pid: int,
    uid_maps: Sequence[IDMap],
    gid_maps: Sequence[IDMap],
    *,
    deny_setgroups: bool = False,
    proc: str | os.PathLike[str] = "/proc",
) -> None:
    """Write a process's uid_map, setgroups and gid_map, in the order the kernel needs.

    setgroups must be written before gid_map; "deny" is required when an
    unprivileged writer maps its own gid, and stops setgroups(2) in the
    namespace for good.
    """
    validate(uid_maps, "uid")
    validate(gid_maps, "gid")
    base = os.path.join(proc, str(pid))
    _write(os.path.join(base, "uid_map"), format_map(uid_maps))
    if deny_setgroups:
        _write(os.path.join(base, "setgroups"), "deny")
    _write(os.path.join(base, "gid_map"), format_map(gid_maps))


def _write(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        os.write(fd, text.encode())  # one write: the kernel takes a map in a single write(2)
    except OSError as exc:
        reason = {
            errno.EPERM: "not allowed (already written, or the writer lacks the capability "
            "over these ids in the parent namespace)",
            errno.EINVAL: "refused by the kernel",
        }.get(exc.errno or 0, exc.strerror)
        raise OSError(exc.errno, f"cannot write {text.strip()!r}: {reason}", path) from None
    finally:
        os.close(fd)


def new_userns_fd(
    uid_maps: Sequence[IDMap], gid_maps: Sequence[IDMap], sys: sc.Syscalls | None = None
) -> int:
    """An fd of a new user namespace with these maps, held by no process.

    Idmapped mounts need a user namespace only as a carrier of the maps: a
    helper child unshares it, we write its maps from outside (as a runtime
    does), keep an fd on its ns file and let the child exit.
    """
    s = sys or sc.libc()
    validate(uid_maps, "uid")
    validate(gid_maps, "gid")
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        gc.disable()  # a forked child runs no finalizers of its parent's objects (gRPC's hang)
        try:
            os.close(go_r)
            os.close(done_w)
            s.unshare(sc.CLONE_NEWUSER)
            # our pid as the mounted /proc numbers it: the caller may sit in a new
            # pid namespace while /proc is still the host's
            os.write(go_w, os.readlink("/proc/self").encode())
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(go_w)
    os.close(done_r)
    try:
        answer = os.read(go_r, 32)
        if not answer.isdigit():
            raise OSError(errno.EPERM, "could not create a user namespace", f"pid {pid}")
        proc_pid = int(answer)
        write_maps(proc_pid, uid_maps, gid_maps)
        return os.open(f"/proc/{proc_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(done_w)
        os.close(go_r)
        os.waitpid(pid, 0)
