"""Snapshots of layers in containerd's vocabulary, stored as overlayfs directories.

A snapshot is *active* (writable, from `prepare`), a *view* (read-only, from
`view`) or *committed* (immutable, from `commit`, usable as a parent). An
image's layers become a chain of committed snapshots named by chain ID, so
a layer shared by many images is unpacked and stored once; a container's
root is an active snapshot on top of its image's top chain ID.

On disk, under `root` (default /var/lib/pinnace/snapshots):

    lock                 flock(2)ed for every operation: processes serialise here
    metadata.json        every snapshot: id, kind, parent, labels, times, usage
    snapshots/<id>/fs    the layer (an overlay upperdir, or a lowerdir once committed)
    snapshots/<id>/work  overlayfs's workdir for it

Crash safety. Every change happens with the lock held, and the only
state is metadata.json, replaced atomically (write a temp file, fsync,
rename, fsync the directory). `prepare` creates `snapshots/<id>` *before*
the metadata that names it, and `remove` deletes the directory *after*
the metadata stops naming it; `commit` only rewrites metadata. So an
interrupted operation leaves at worst a `snapshots/<id>` that no record
names (or a stale temp file), which `cleanup()` deletes: any directory
not in the metadata is garbage by construction. An id is only allocated
when the metadata is written, so a crashed prepare's id is reused next
time, and its leftover directory is cleared first.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import errno
import fcntl
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from overlayfs.errors import (
    MountedError,
    SnapshotError,
    SnapshotExistsError,
    SnapshotInUseError,
    SnapshotNotFoundError,
    SnapshotStateError,
)
from overlayfs.mounts import Mount

DEFAULT_ROOT = "/var/lib/pinnace/snapshots"
_META_VERSION = 1
_BAD_ROOT_CHARS = ":,\\\n"


class Kind(enum.Enum):
    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


@dataclass(frozen=True)
class Info:
    """What `stat` and `walk` report about one snapshot."""

    name: str
    kind: Kind
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0


@dataclass(frozen=True)
class Usage:
    """Disk use of a snapshot's own layer: bytes allocated and inodes (hardlinks once)."""

    size: int
    inodes: int


@runtime_checkable
class Snapshotter(Protocol):
    """containerd's snapshotter interface, in Python."""

    def stat(self, key: str) -> Info: ...
    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]: ...
    def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]: ...
    def mounts(self, key: str) -> list[Mount]: ...
    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None: ...
    def remove(self, key: str) -> None: ...
    def usage(self, key: str) -> Usage: ...
    def walk(self, match: Callable[[Info], bool] | None = None) -> Iterator[Info]: ...
    def cleanup(self) -> list[str]: ...
    def close(self) -> None: ...


@dataclass
class _Record:
    id: int
    kind: Kind
    parent: str
    labels: dict[str, str]
    created: float
    updated: float
    usage: Usage | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "parent": self.parent,
            "labels": self.labels,
            "created": self.created,
            "updated": self.updated,
        }
        if self.usage is not None:
            d["usage"] = {"size": self.usage.size, "inodes": self.usage.inodes}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Record:
        u = d.get("usage")
        return cls(
            id=int(d["id"]),
            kind=Kind(d["kind"]),
            parent=str(d.get("parent", "")),
            labels=dict(d.get("labels", {})),
            created=float(d.get("created", 0.0)),
            updated=float(d.get("updated", 0.0)),
            usage=Usage(int(u["size"]), int(u["inodes"])) if u else None,
        )


@dataclass
class _State:
    next_id: int = 1
    snaps: dict[str, _Record] = field(default_factory=dict)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or "\0" in key or len(key) > 4096:
        raise ValueError(f"invalid snapshot key {key!r}")


def mount_points() -> list[str]:
    """Every mount point of this mount namespace (mountinfo's 5th field, unescaped)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split(" - ", 1)[0].split()[4]
        out.append(_unescape_mountinfo(raw))
    return out


def _unescape_mountinfo(s: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \ooo."""
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1 : i + 4].isdigit() and len(s[i + 1 : i + 4]) == 3:
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def disk_usage(path: str) -> Usage:
    """Allocated bytes (st_blocks) and inodes under `path`, staying on its filesystem.

    Hardlinked inodes count once; symlinks are counted, never followed.
    """
    top = os.lstat(path)
    seen: set[int] = set()
    size = top.st_blocks * 512
    inodes = 1
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if st.st_dev != top.st_dev:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                size += st.st_blocks * 512
                inodes += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return Usage(size, inodes)


class OverlaySnapshotter:
    """The overlayfs snapshotter: each snapshot a directory, metadata in one JSON file.

    Safe to share between processes (flock) and between threads of one
    process (a lock per instance; separate instances have separate flock
    descriptions, so they exclude each other too).
    """

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, *, sync: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        bad = [c for c in _BAD_ROOT_CHARS if c in self.root]
        if bad:
            # overlayfs splits options at ',' and layers at ':' (and unescapes '\'):
            # refusing them here keeps every Mount record plain and unambiguous.
            raise ValueError(
                f"snapshot root {self.root!r} contains {bad!r}, which overlayfs splits on"
            )
        self.sync = sync
        os.makedirs(self._snapdir, mode=0o700, exist_ok=True)
        self._meta = os.path.join(self.root, "metadata.json")
        self._lockfd = os.open(
            os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self._tlock = threading.RLock()

    # -- plumbing -------------------------------------------------------------

    @property
    def _snapdir(self) -> str:
        return os.path.join(self.root, "snapshots")

    def _dir(self, sid: int) -> str:
        return os.path.join(self._snapdir, str(sid))

    def close(self) -> None:
        if self._lockfd >= 0:
            os.close(self._lockfd)
            self._lockfd = -1

    def __enter__(self) -> OverlaySnapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _locked(self, exclusive: bool = True) -> Iterator[_State]:
        if self._lockfd < 0:
            raise ValueError("snapshotter is closed")
        with self._tlock:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield self._load()
            finally:
                fcntl.flock(self._lockfd, fcntl.LOCK_UN)

    def _load(self) -> _State:
        try:
            with open(self._meta, "rb") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return _State()
        except ValueError as exc:
            raise OSError(errno.EIO, f"corrupt snapshot metadata: {exc}", self._meta) from None
        if raw.get("version") != _META_VERSION:
            raise OSError(errno.EIO, f"unknown metadata version {raw.get('version')}", self._meta)
        snaps = {k: _Record.from_json(v) for k, v in raw["snapshots"].items()}
        return _State(int(raw["next_id"]), snaps)

    def _save(self, st: _State) -> None:
        """Replace metadata.json atomically: temp file, fsync, rename, fsync the directory."""
        doc = {
            "version": _META_VERSION,
            "next_id": st.next_id,
            "snapshots": {k: r.to_json() for k, r in st.snaps.items()},
        }
        tmp = os.path.join(self.root, f".metadata.json.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, separators=(",", ":"))
                f.flush()
                if self.sync:
                    os.fsync(f.fileno())
            os.replace(tmp, self._meta)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if self.sync:
            self._fsync_dir(self.root)

    @staticmethod
    def _fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _get(st: _State, key: str) -> _Record:
        rec = st.snaps.get(key)
        if rec is None:
            raise SnapshotNotFoundError(key)
        return rec

    def _chain(self, st: _State, parent: str) -> list[_Record]:
        """The parent and its ancestors, nearest first (overlayfs's lowerdir order)."""
        chain: list[_Record] = []
        seen: set[str] = set()
        while parent:
            if parent in seen:
                raise SnapshotError(parent, "parent chain loops")
            seen.add(parent)
            rec = self._get(st, parent)
            chain.append(rec)
            parent = rec.parent
        return chain

    def _rmtree(self, key: str, path: str) -> None:
        """Delete a snapshot directory, refusing if anything is mounted on or below it.

        rmtree does not stop at mount points: deleting through a bind mount
        would delete whatever it shows.
        """
        prefix = path.rstrip("/") + "/"
        for mp in mount_points():
            if mp == path or mp.startswith(prefix):
                raise MountedError(key, mp)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    @staticmethod
    def _info(name: str, rec: _Record) -> Info:
        return Info(name, rec.kind, rec.parent, dict(rec.labels), rec.created, rec.updated)

    def _mounts(self, key: str, rec: _Record, chain: list[_Record]) -> list[Mount]:
        fs = os.path.join(self._dir(rec.id), "fs")
        lowers = [os.path.join(self._dir(p.id), "fs") for p in chain]
        if rec.kind is Kind.ACTIVE:
            if not lowers:
                return [Mount("bind", fs, ("rbind", "rw"))]
            work = os.path.join(self._dir(rec.id), "work")
            return [
                Mount(
                    "overlay",
                    "overlay",
                    (
                        "index=off",
                        f"workdir={work}",
                        f"upperdir={fs}",
                        f"lowerdir={':'.join(lowers)}",
                    ),
                )
            ]
        if rec.kind is Kind.VIEW:
            if not lowers:
                return [Mount("bind", fs, ("rbind", "ro"))]
            if len(lowers) == 1:  # overlayfs wants two lowers without an upper
                return [Mount("bind", lowers[0], ("rbind", "ro"))]
            return [
                Mount("overlay", "overlay", ("ro", "index=off", f"lowerdir={':'.join(lowers)}"))
            ]
        raise SnapshotStateError(key, "is committed: view or prepare it to mount it")

    # -- the interface --------------------------------------------------------

    def stat(self, key: str) -> Info:
        with self._locked(exclusive=False) as st:
            return self._info(key, self._get(st, key))

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new writable snapshot on `parent` (a committed snapshot, or "" for an empty one)."""
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new read-only snapshot of `parent`: its mounts give EROFS on every write."""
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        _check_key(key)
        with self._locked() as st:
            if key in st.snaps:
                raise SnapshotExistsError(key)
            chain = self._chain(st, parent)
            if chain and chain[0].kind is not Kind.COMMITTED:
                raise SnapshotStateError(
                    parent, f"is {chain[0].kind.value}: only a committed snapshot can be a parent"
                )
            now = time.time()
            rec = _Record(st.next_id, kind, parent, dict(labels or {}), now, now)
            d = self._dir(rec.id)
            if os.path.lexists(d):  # left by a prepare that crashed before its metadata
                self._rmtree(key, d)
            try:
                os.mkdir(d, 0o700)
                os.mkdir(os.path.join(d, "fs"), 0o755)
                os.mkdir(os.path.join(d, "work"), 0o700)
                if self.sync:
                    self._fsync_dir(d)
                    self._fsync_dir(self._snapdir)
                st.next_id += 1
                st.snaps[key] = rec
                self._save(st)
            except BaseException:
                shutil.rmtree(d, ignore_errors=True)
                raise
            return self._mounts(key, rec, chain)

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of an active snapshot or view, again (containerd's Mounts)."""
        with self._locked(exclusive=False) as st:
            rec = self._get(st, key)
            return self._mounts(key, rec, self._chain(st, rec.parent))

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active snapshot `key` into committed snapshot `name` (a chain ID, for layers).

        SnapshotExistsError when `name` is taken: for a chain ID that means
        the layer is already unpacked, and the caller removes `key`.
        Unmount `key` first: a committed layer must not change under its children.
        """
        _check_key(name)
        with self._locked() as st:
            rec = self._get(st, key)
            if rec.kind is not Kind.ACTIVE:
                raise SnapshotStateError(
                    key, f"is {rec.kind.value}: only an active snapshot can be committed"
                )
            if name in st.snaps:
                raise SnapshotExistsError(name)
            new = copy.copy(rec)
            new.kind = Kind.COMMITTED
            new.updated = time.time()
            new.usage = disk_usage(os.path.join(self._dir(rec.id), "fs"))
            if labels is not None:
                new.labels = dict(labels)
            del st.snaps[key]
            st.snaps[name] = new
            self._save(st)

    def remove(self, key: str) -> None:
        """Delete a snapshot and its layer; refused while children name it as their parent."""
        with self._locked() as st:
            rec = self._get(st, key)
            children = sorted(k for k, r in st.snaps.items() if r.parent == key)
            if children:
                raise SnapshotInUseError(key, children)
            d = self._dir(rec.id)
            prefix = d + "/"
            for mp in mount_points():  # check before the record goes, not after
                if mp == d or mp.startswith(prefix):
                    raise MountedError(key, mp)
            del st.snaps[key]
            self._save(st)
            if os.path.lexists(d):
                self._rmtree(key, d)

    def usage(self, key: str) -> Usage:
        """Bytes and inodes of the snapshot's own layer (recorded at commit for committed ones)."""
        with self._locked(exclusive=False) as st:
            rec = self._get(st, key)
            if rec.kind is Kind.COMMITTED and rec.usage is not None:
                return rec.usage
            return disk_usage(os.path.join(self._dir(rec.id), "fs"))

    def walk(self, match: Callable[[Info], bool] | None = None) -> Iterator[Info]:
        """Every snapshot (those `match` accepts), from one consistent read of the metadata."""
        with self._locked(exclusive=False) as st:
            infos = [self._info(k, r) for k, r in sorted(st.snaps.items())]
        return iter([i for i in infos if match is None or match(i)])

    def layer_path(self, key: str) -> str:
        """The directory holding the snapshot's own layer: where a layer tar is applied."""
        with self._locked(exclusive=False) as st:
            return os.path.join(self._dir(self._get(st, key).id), "fs")

    def cleanup(self) -> list[str]:
        """Delete what interrupted operations left: unnamed snapshot dirs, temp metadata files.

        Returns the paths removed. A leftover with something mounted in it is
        kept (and not listed): deleting through a mount would reach into it.
        """
        removed: list[str] = []
        with self._locked() as st:
            live = {str(r.id) for r in st.snaps.values()}
            for name in sorted(os.listdir(self._snapdir)):
                if name in live:
                    continue
                path = os.path.join(self._snapdir, name)
                try:
                    self._rmtree(name, path)
                except MountedError:
                    continue
                removed.append(path)
            for name in os.listdir(self.root):
                if name.startswith(".metadata.json.tmp-"):
                    path = os.path.join(self.root, name)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        removed.append(path)
        return removed
