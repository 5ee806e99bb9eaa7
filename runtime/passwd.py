"""Users and groups of an image: /etc/passwd and /etc/group read inside its root filesystem.

A container's user is named by the image (`User: "nginx"`) or by its
caller (`run_as_username`), and only the image's own databases say which
uid and gid that is. The image is untrusted: its /etc/passwd may be a
symlink to `/etc/shadow` or `../../../host/etc/passwd`, or a FIFO that
blocks a reader forever. So every database is opened through
namespaces.rootpath.RootFS (symlinks resolve as if the rootfs were `/`),
without blocking, only when it is a regular file, and only its first
MAX_DB_BYTES are read. A missing or unreadable database means no entries
(a scratch image has none), as libc's lookups do.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

PASSWD = "/etc/passwd"
GROUP = "/etc/group"
MAX_DB_BYTES = 4 << 20  # far above any real database; bounds what a hostile image costs us


class UserLookupError(LookupError):
    """A user or group name the image's database does not define; `name` and `db` say which."""

    def __init__(self, name: str, db: str, rootfs: str) -> None:
        kind = "user" if db == PASSWD else "group"
        super().__init__(f"{kind} {name!r} not found in the image's {db}")
        self.name = name
        self.db = db
        self.rootfs = rootfs


@dataclass(frozen=True)
class ResolvedUser:
    """A process identity: uid, primary gid, and the passwd name when the uid has one."""

    uid: int
    gid: int
    name: str | None = None


def read_db(rootfs: str, path: str) -> list[list[str]]:
    """Rows (colon-split fields) of a database inside `rootfs`; [] when it cannot be read."""
    from namespaces.rootpath import RootFS

    try:
        with RootFS(rootfs) as root:
            fd = root.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []  # a FIFO, device or directory is no database
        chunks: list[bytes] = []
        left = MAX_DB_BYTES
        while left > 0:
            data = os.read(fd, min(left, 65536))
            if not data:
                break
            chunks.append(data)
            left -= len(data)
    except OSError:
        return []
    finally:
        os.close(fd)
    text = b"".join(chunks).decode("utf-8", errors="replace")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # universal newlines
    return [line.split(":") for line in lines if line.strip()]


def lookup_uid(rootfs: str, uid: int | str) -> ResolvedUser:
    """The passwd entry of `uid`; an unknown uid is still valid (gid 0, no name), as in docker.

    A string uid is compared as written ("007" is not "7"), as `pinnace run -u` always did.
    """
    key = str(uid)
    for row in read_db(rootfs, PASSWD):
        if len(row) > 3 and row[2] == key and row[3].isdigit():
            return ResolvedUser(int(key), int(row[3]), row[0])
    return ResolvedUser(int(key), 0, None)


def lookup_name(rootfs: str, name: str) -> ResolvedUser:
    """The passwd entry named `name`; UserLookupError when there is none."""
    for row in read_db(rootfs, PASSWD):
        if len(row) > 3 and row[0] == name and row[2].isdigit() and row[3].isdigit():
            return ResolvedUser(int(row[2]), int(row[3]), name)
    raise UserLookupError(name, PASSWD, rootfs)


def lookup_group(rootfs: str, group: str) -> int:
    """A group name or number -> gid; UserLookupError for a name /etc/group lacks."""
    if group.isdigit():
        return int(group)
    for row in read_db(rootfs, GROUP):
        if len(row) > 2 and row[0] == group and row[2].isdigit():
            return int(row[2])
    raise UserLookupError(group, GROUP, rootfs)


def member_gids(rootfs: str, name: str) -> list[int]:
    """Gids of the groups whose member list names `name` (containerd's supplementary groups)."""
    out: list[int] = []
    for row in read_db(rootfs, GROUP):
        if len(row) > 3 and row[2].isdigit() and name in row[3].split(","):
            gid = int(row[2])
            if gid not in out:
                out.append(gid)
    return out


def resolve(spec: str, rootfs: str) -> ResolvedUser:
    """`uid`, `uid:gid`, `name`, `name:group` (an image's User, docker's -u) -> an identity."""
    user, _, group = spec.partition(":")
    resolved = lookup_uid(rootfs, user) if user.isdigit() else lookup_name(rootfs, user)
    if group:
        resolved = ResolvedUser(resolved.uid, lookup_group(rootfs, group), resolved.name)
    return resolved


def resolve_user(spec: str, rootfs: str) -> dict[str, int]:
    """`resolve` as the OCI `process.user` object (uid and gid)."""
    r = resolve(spec, rootfs)
    return {"uid": r.uid, "gid": r.gid}
