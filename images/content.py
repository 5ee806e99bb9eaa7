"""The content store: blobs named by their sha256 digest, written so a crash never lies.

On disk, under `root` (default /var/lib/pinnace/content):

    blobs/sha256/<hex>     committed blobs, read-only (0444), content == name
    ingest/<hex>.lock      flock(2)ed by the one writer of that digest
    ingest/<hex>.data      the bytes received so far for <hex> (resumable)
    ingest/.tmp-<pid>-*    blobs of a not-yet-known digest being written (`add`)

Why it is shaped like this:

* A blob appears under its digest only by rename(2) of a complete, verified
  (sha256 and size), fsynced file, followed by an fsync of the directory: a
  reader, a crash or a kill -9 at any point sees the whole blob or none.
* Every writer of a digest holds an exclusive flock on `ingest/<hex>.lock`
  for as long as it writes, so two pulls of one layer serialise: the second
  waits, then finds the blob committed and its commit is a no-op. The lock
  file is unlinked by its holder before unlocking; a waiter that wakes on an
  unlinked inode notices (the path names another inode, or none) and retries.
* What a writer received stays in `ingest/<hex>.data` when it fails (or is
  killed), so the next writer of that digest starts at `offset` and a pull
  resumes with an HTTP Range request. The data is re-hashed on resume, never
  trusted: commit verifies the whole blob either way.
* `cleanup_ingests` (run at start by ImageStore.recover) removes ingests
  nobody holds that are older than a limit or whose blob has meanwhile been
  committed, and temp files of dead processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from images.digest import (
    SHA256,
    DigestMismatchError,
    InvalidDigestError,
    digest_hex,
)
from overlayfs.snapshotter import disk_usage

DEFAULT_ROOT = Path("/var/lib/pinnace/content")
_CHUNK = 1 << 20
_HEX_RE = re.compile(r"^[a-f0-9]{64}$")
_TMP_PREFIX = ".tmp-"


def _hex(digest: str) -> str:
    """The hex of a digest, refusing what images.digest lets through with a trailing
    newline (its pattern ends in `$`): a digest becomes a file name here."""
    hex_ = digest_hex(digest)
    if not _HEX_RE.fullmatch(hex_):
        raise InvalidDigestError(digest)
    return hex_


def _checkpoint(point: str) -> None:
    """A named point in a write (crash tests replace this to SIGKILL the writer there)."""


# -- errors -------------------------------------------------------------------


class ContentError(Exception):
    """Something is wrong with one blob; `digest` names it."""

    def __init__(self, digest: str, message: str) -> None:
        super().__init__(f"blob {digest}: {message}")
        self.digest = digest


class ContentNotFoundError(ContentError, FileNotFoundError):
    """No committed blob has this digest."""

    def __init__(self, digest: str) -> None:
        ContentError.__init__(self, digest, "not in the content store")
        self.errno = errno.ENOENT

    def __str__(self) -> str:
        return str(self.args[0])


class ContentDigestMismatchError(ContentError, DigestMismatchError):
    """The bytes written for a digest hash to something else: the data is discarded."""

    def __init__(self, expected: str, actual: str, where: str) -> None:
        DigestMismatchError.__init__(self, expected, actual, where)
        self.digest = expected


class ContentSizeError(ContentError):
    """The bytes written for a digest are more, or fewer, than the size it was promised."""

    def __init__(self, digest: str, expected: int, actual: int, message: str = "") -> None:
        super().__init__(digest, message or f"expected {expected} bytes, got {actual}")
        self.expected = expected
        self.actual = actual


class IngestLockedError(ContentError):
    """Another writer holds this digest's ingest (only when not waiting for it)."""

    def __init__(self, digest: str) -> None:
        super().__init__(digest, "another writer is ingesting it")


# -- records ------------------------------------------------------------------


@dataclass(frozen=True)
class BlobInfo:
    """A committed blob: its digest, size in bytes and when it was committed."""

    digest: str
    size: int
    committed: float


@dataclass(frozen=True)
class IngestInfo:
    """A partial blob: how many bytes a resumed writer would start from."""

    digest: str
    offset: int
    updated: float
    locked: bool


# -- locking ------------------------------------------------------------------


def _lock_path(path: Path, *, blocking: bool) -> int | None:
    """An fd holding an exclusive flock on `path`, created if missing; None if busy.

    The holder unlinks the file before it unlocks, so after waking we check
    that `path` still names the inode we locked; if not, we locked a dead
    file and must start over with the new one.
    """
    flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                os.close(fd)
                return None
            st = os.fstat(fd)
            try:
                cur = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                cur = None
            if cur is not None and (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _unlock_and_unlink(path: Path, fd: int) -> None:
    """Remove the lock file while still holding it, then release (see `_lock_path`)."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the writer ---------------------------------------------------------------


class ContentWriter:
    """Writes one blob of known digest and size; use as a context manager.

        with store.writer(digest, size) as w:
            # w.offset bytes are already there (resume from them; 0 for a new blob,
            # `size` when the blob is already committed: nothing left to send)
            for chunk in response: w.write(chunk)
            w.commit()

    On an exception inside the block (or leaving it without `commit`) the
    bytes so far stay for the next writer, unless the writer was made with
    `resumable=False` (imports: a short file will not grow) or what was
    written cannot be part of the blob (too long, wrong digest).
    """

    def __init__(
        self, store: ContentStore, digest: str, size: int, *, resumable: bool, blocking: bool
    ) -> None:
        _hex(digest)
        if not isinstance(size, int) or size < 0:
            raise ContentSizeError(digest, 0, size, f"invalid size {size!r}")
        self.store = store
        self.digest = digest
        self.size = size
        self.resumable = resumable
        self.blocking = blocking
        self.offset = 0
        self.exists = False  # the blob was already committed when this writer started
        self.committed = False
        self._hex = _hex(digest)
        self._lock_path = store.ingest_dir / f"{self._hex}.lock"
        self._data_path = store.ingest_dir / f"{self._hex}.data"
        self._lock_fd = -1
        self._fd = -1
        self._hash = hashlib.sha256()

    def __enter__(self) -> ContentWriter:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(discard=not self.resumable)

    def open(self) -> None:
        """Take the digest's ingest lock and find where to resume (see the class doc)."""
        if self._lock_fd >= 0:
            return
        fd = _lock_path(self._lock_path, blocking=self.blocking)
        if fd is None:
            raise IngestLockedError(self.digest)
        self._lock_fd = fd
        try:
            if self.store.has(self.digest):
                self.exists = True
                self.offset = self.size
                self._discard_data()
                return
            self._fd = os.open(
                self._data_path,
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o600,
            )
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > self.size:
                self._truncate()  # not a prefix of this blob: start over
            else:
                self._rehash(st.st_size)
        except BaseException:
            self.close(discard=False)
            raise

    def _rehash(self, length: int) -> None:
        """Hash the bytes a previous writer left, so commit covers the whole blob."""
        os.lseek(self._fd, 0, os.SEEK_SET)
        left = length
        while left > 0:
            chunk = os.read(self._fd, min(left, _CHUNK))
            if not chunk:
                break
            self._hash.update(chunk)
            left -= len(chunk)
        if left:  # shrank under us: impossible while we hold the lock, but be exact
            self._truncate()
            return
        self.offset = length

    def _truncate(self) -> None:
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hash = hashlib.sha256()
        self.offset = 0

    def reset(self) -> None:
        """Start again from byte 0 (e.g. the registry ignored a Range request)."""
        self._check_open()
        if self.exists:
            return
        self._truncate()

    def _check_open(self) -> None:
        if self._lock_fd < 0:
            raise ValueError(f"writer of {self.digest} is not open")
        if self.committed:
            raise ValueError(f"writer of {self.digest} is already committed")

    def write(self, data: bytes) -> None:
        """Append `data`; refuses (and discards the ingest) past the promised size."""
        self._check_open()
        if self.exists:
            return  # already committed by someone else: nothing to store
        if self.offset + len(data) > self.size:
            actual = self.offset + len(data)
            self._truncate()
            raise ContentSizeError(
                self.digest,
                self.size,
                actual,
                f"more data than the expected {self.size} bytes (at least {actual})",
            )
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._hash.update(data)
        self.offset += len(data)

    def commit(self) -> None:
        """Verify size and digest, then make the blob visible under its digest atomically.

        A wrong size leaves the data for a resume (a short download is
        incomplete, not corrupt); a wrong digest discards it.
        """
        self._check_open()
        if self.exists:
            self.committed = True
            return
        if self.offset != self.size:
            raise ContentSizeError(self.digest, self.size, self.offset)
        actual = f"{SHA256}:{self._hash.hexdigest()}"
        if actual != self.digest:
            self._truncate()
            raise ContentDigestMismatchError(self.digest, actual, "content ingest")
        os.fsync(self._fd)
        os.fchmod(self._fd, 0o444)
        _checkpoint("content.commit.synced")
        os.rename(self._data_path, self.store.blob_dir / self._hex)
        _checkpoint("content.commit.renamed")
        _fsync_dir(self.store.blob_dir)
        self.committed = True

    def close(self, *, discard: bool = False) -> None:
        """Release the ingest; keep the partial data unless committed or `discard`."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd < 0:
            return
        try:
            if discard and not self.committed:
                self._discard_data()
        finally:
            _unlock_and_unlink(self._lock_path, self._lock_fd)
            self._lock_fd = -1

    def _discard_data(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._data_path)

    def __del__(self) -> None:
        if getattr(self, "_lock_fd", -1) >= 0:
            self.close()


# -- the store ----------------------------------------------------------------


class ContentStore:
    """Blobs by digest under `root`; safe to share between threads and processes."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.blob_dir = self.root / "blobs" / SHA256
        self.ingest_dir = self.root / "ingest"
        self.blob_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.ingest_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- reading ----------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """Where the blob of `digest` lives (whether or not it is there)."""
        return self.blob_dir / _hex(digest)

    def has(self, digest: str) -> bool:
        try:
            st = os.stat(self.path(digest), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode)

    def info(self, digest: str) -> BlobInfo:
        try:
            st = os.stat(self.path(digest), follow_symlinks=False)
        except FileNotFoundError:
            raise ContentNotFoundError(digest) from None
        return BlobInfo(digest, st.st_size, st.st_mtime)

    def open(self, digest: str) -> BinaryIO:
        """The blob for reading (not re-verified: it was verified when committed)."""
        try:
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ContentNotFoundError(digest) from None
        return os.fdopen(fd, "rb")

    def read(self, digest: str, *, max_size: int = 64 << 20) -> bytes:
        """A small blob (manifest, config) in memory, verified against its digest."""
        with self.open(digest) as f:
            data = f.read(max_size + 1)
        if len(data) > max_size:
            raise ContentSizeError(
                digest, max_size, len(data), f"larger than {max_size} bytes: not read into memory"
            )
        actual = f"{SHA256}:{hashlib.sha256(data).hexdigest()}"
        if actual != digest:
            raise ContentDigestMismatchError(digest, actual, str(self.path(digest)))
        return data

    def walk(self) -> Iterator[BlobInfo]:
        """Every committed blob (names that are not a digest are skipped)."""
        with os.scandir(self.blob_dir) as it:
            entries = [e for e in it if _HEX_RE.fullmatch(e.name)]
        for e in sorted(entries, key=lambda e: e.name):
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield BlobInfo(f"{SHA256}:{e.name}", st.st_size, st.st_mtime)

    def usage(self) -> tuple[int, int]:
        """Bytes allocated and inodes used by the whole store (blobs and ingests)."""
        u = disk_usage(str(self.root))
        return u.size, u.inodes

    # -- writing ----------------------------------------------------------------

    def writer(
        self, digest: str, size: int, *, resumable: bool = True, blocking: bool = True
    ) -> ContentWriter:
        """A writer of one blob of known digest and size (see ContentWriter).

        The ingest lock is taken on entering the with-block; with
        `blocking=False` a busy ingest raises IngestLockedError instead of waiting.
        """
        return ContentWriter(self, digest, size, resumable=resumable, blocking=blocking)

    def write(self, chunks: Iterable[bytes], digest: str, size: int) -> bool:
        """Store a whole blob from `chunks`; False if it was already there (nothing read)."""
        with self.writer(digest, size, resumable=False) as w:
            if w.exists:
                return False
            w.reset()
            for chunk in chunks:
                w.write(chunk)
            w.commit()
            return True

    def add(
        self,
        chunks: Iterable[bytes],
        *,
        expected: str | None = None,
        before_commit: Callable[[str], None] | None = None,
    ) -> tuple[str, int]:
        """Store a blob whose digest is learnt while writing it; return (digest, size).

        For archive members (docker-archive layers) that are named by path,
        not digest. `before_commit(digest)` runs before the blob becomes
        visible, so a caller can lease it first (GC must not see it unleased).
        Identical content committed concurrently is harmless: same bytes, same name.
        """
        if expected is not None:
            _hex(expected)
        tmp = self.ingest_dir / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            h = hashlib.sha256()
            size = 0
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    h.update(chunk)
                    size += len(chunk)
                os.fsync(fd)
                os.fchmod(fd, 0o444)
            finally:
                os.close(fd)
            digest = f"{SHA256}:{h.hexdigest()}"
            if expected is not None and digest != expected:
                raise ContentDigestMismatchError(expected, digest, "content add")
            if before_commit is not None:
                before_commit(digest)
            if not self.has(digest):
                os.rename(tmp, self.path(digest))
                _fsync_dir(self.blob_dir)
            return digest, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def delete(self, digest: str) -> None:
        """Remove a committed blob (GC's job: callers decide that nothing needs it)."""
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            raise ContentNotFoundError(digest) from None

    # -- ingests ----------------------------------------------------------------

    def ingests(self) -> list[IngestInfo]:
        """Partial blobs on disk, and whether a writer holds each right now."""
        out = []
        for name in sorted(os.listdir(self.ingest_dir)):
            if not name.endswith(".data") or not _HEX_RE.fullmatch(name[:-5]):
                continue
            digest = f"{SHA256}:{name[:-5]}"
            try:
                st = os.stat(self.ingest_dir / name, follow_symlinks=False)
            except FileNotFoundError:
                continue
            out.append(IngestInfo(digest, st.st_size, st.st_mtime, self._ingest_locked(name[:-5])))
        return out

    def _ingest_locked(self, hex_: str) -> bool:
        path = self.ingest_dir / f"{hex_}.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def cleanup_ingests(self, max_age: float, *, now: float | None = None) -> list[str]:
        """Remove ingests nobody holds that are older than `max_age` seconds or whose blob
        is committed meanwhile, stale lock files, and temp files of dead processes.

        Returns the file names removed. An ingest younger than `max_age`
        stays: it is what lets a pull killed mid-layer resume where it stopped.
        """
        now = time.time() if now is None else now
        removed: list[str] = []
        names = sorted(os.listdir(self.ingest_dir))
        hexes = {n.rsplit(".", 1)[0] for n in names if n.endswith((".data", ".lock"))}
        for hex_ in sorted(h for h in hexes if _HEX_RE.fullmatch(h)):
            lock = self.ingest_dir / f"{hex_}.lock"
            data = self.ingest_dir / f"{hex_}.data"
            fd = _lock_path(lock, blocking=False)
            if fd is None:
                continue  # a live writer
            try:
                try:
                    st = os.stat(data, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and (now - st.st_mtime > max_age or self.has(f"{SHA256}:{hex_}")):
                    os.unlink(data)
                    removed.append(data.name)
            finally:
                _unlock_and_unlink(lock, fd)
        for name in names:
            if not name.startswith(_TMP_PREFIX):
                continue
            pid_text = name[len(_TMP_PREFIX) :].split("-", 1)[0]
            path = self.ingest_dir / name
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue
            alive = pid_text.isdigit() and _pid_alive(int(pid_text))
            if not alive or now - st.st_mtime > max_age:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(name)
        return removed
