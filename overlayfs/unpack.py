"""Apply an OCI layer (a tar changeset) into a snapshot's layer directory, securely.

The directory becomes an overlayfs layer, so OCI whiteouts are converted
to overlayfs's own format on the way in: `.wh.NAME` becomes a whiteout
(a 0:0 character device named NAME), `.wh..wh..opq` makes its directory
opaque (xattr trusted.overlay.opaque=y).

The archive is untrusted. The rules, and what each hostile case gets:

* Names are cleaned lexically first. A leading `/` is dropped (neutralised:
  `/etc/passwd` in a layer *is* the image's /etc/passwd, as tar treats it);
  a `..` that climbs above the root is refused (UnsafeEntryError), since no
  well-formed layer has one.
* A symlink whose relative target climbs above the root (`evil -> ../../..`
  at the top) is refused, as docker's archive code does; absolute targets
  are kept as they are (they mean the image's own root).
* Every entry's parent directory is resolved inside the root by the kernel
  (openat2 RESOLVE_IN_ROOT via namespaces.rootpath.RootFS), so a symlink
  planted by an earlier entry (`evil -> /tmp/x`, a chain of them) is
  followed as a chroot would: neutralised, it lands inside the snapshot. The final component is never followed: an existing
  entry is replaced (unlinked, or removed recursively when a directory),
  except that a directory over a directory keeps its contents (OCI "changeset
  over existing files").
* Hardlink targets are cleaned the same way, must already exist in this
  layer (a link to anything else is refused: it could only be outside),
  and are linked with linkat(2) without following a final symlink.
* Whiteouts are judged like names (a whiteout escaping is refused) and
  resolved in-root (one through a symlink lands inside). Per the OCI spec
  a whiteout hides lower layers only: a name this layer already created is
  left alone. A directory created over a whiteout of this layer is made
  opaque, as overlayfs does itself on rmdir+mkdir.
* Xattrs named trusted.overlay.* / user.overlay.* are dropped (reported
  in `ApplyResult.skipped`): a layer must not forge overlayfs metadata
  (redirects, metacopy, origin) that the kernel would trust.

Metadata order matters: content, then lchown (which clears setuid/setgid
and file capabilities), then chmod, then xattrs (security.capability
after chown), then times; directory times last of all, deepest first,
once nothing more will be created inside them.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from namespaces.rootpath import PathEscapeError, RootFS
from overlayfs.errors import (
    ArchiveError,
    EntryApplyError,
    LayerError,
    UnsafeEntryError,
)
from overlayfs.tarstream import EntryType, Readable, TarEntry, TarReader

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_FORGED_XATTRS = ("trusted.overlay.", "user.overlay.")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class ApplyResult:
    """What applying a layer did: its DiffID, and what was neutralised rather than applied."""

    diff_id: str  # sha256 of the uncompressed tar: compare with the image config's rootfs.diff_ids
    size: int  # bytes of uncompressed tar
    compression: str  # "gzip", "zstd" or "none"
    entries: int = 0
    whiteouts: int = 0
    skipped: list[str] = field(default_factory=list)


class _Prefixed(io.RawIOBase):
    """A stream with bytes already peeked put back in front (a raw file for BufferedReader)."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = len(buf)
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
        else:
            data = self._rest.read(n)
        buf[: len(data)] = data
        return len(data)


def detect_compression(head: bytes) -> str:
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


def decompressed(stream: Readable) -> tuple[Readable, str]:
    """The uncompressed tar stream of a layer blob, whatever its compression; and which it was.

    Detected from the magic bytes rather than the media type, so a
    mislabelled layer still applies (containerd does the same).
    """
    head = b""
    while len(head) < 4:
        more = stream.read(4 - len(head))
        if not more:
            break
        head += more
    kind = detect_compression(head)
    src = io.BufferedReader(_Prefixed(head, stream), buffer_size=1 << 16)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=src, mode="rb"), kind
    if kind == "zstd":
        try:
            import zstandard
        except ImportError:
            raise ArchiveError(
                0, "zstd layer, but the zstandard package is not installed"
            ) from None
        reader: Readable = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
        return reader, kind
    return src, kind


def apply_layer(
    stream: Readable, root: str | os.PathLike[str] | RootFS, *, chown: bool = True
) -> ApplyResult:
    """Apply a layer tar (plain, gzip or zstd) into directory `root`, which becomes its layer.

    `chown=False` keeps the applier's own ownership (for an unprivileged
    build); otherwise uid/gid come from the archive, numerically.
    Raises a LayerError subclass naming the entry that failed; what was
    applied before it stays (the caller removes the snapshot).
    """
    rootfs = root if isinstance(root, RootFS) else RootFS(root)
    try:
        raw, kind = decompressed(stream)
        reader = TarReader(raw)
        result = ApplyResult(diff_id="", size=0, compression=kind)
        applier = _Applier(rootfs, result, chown)
        for entry in reader:
            result.entries += 1
            applier.apply(entry, reader.read_chunks)
        applier.finish()
        reader.drain()
        result.diff_id = reader.digest
        result.size = reader.offset
        return result
    finally:
        if not isinstance(root, RootFS):
            rootfs.close()


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _refuse_escaping_symlink(entry: TarEntry, path: str) -> None:
    """A relative symlink whose target climbs above the layer's root is refused, as
    docker's archive code does: no sane image has one, and it only serves to aim a
    later entry (or a later layer, or a process that does not resolve in-root) at
    the host. Absolute targets are fine: they resolve inside the root like a chroot.
    """
    target = entry.linkname
    if target.startswith("/"):
        return
    depth = path.count("/")  # directories between the root and the link itself
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise UnsafeEntryError(
                    entry.name, f"symlink target {target!r} points above the image's root"
                )
        elif part not in ("", "."):
            depth += 1


def _split(path: str) -> tuple[str, str]:
    parent, _, base = path.rpartition("/")
    return parent, base


class _Applier:
    def __init__(self, rootfs: RootFS, result: ApplyResult, chown: bool) -> None:
        self.rootfs = rootfs
        self.result = result
        self.chown = chown
        self.dirs: list[tuple[str, int, int]] = []  # (path, atime_ns, mtime_ns), in order made

    # -- names ---------------------------------------------------------------

    def _clean(self, entry: TarEntry, name: str, what: str) -> str:
        try:
            return self.rootfs.ensure_beneath(name)
        except PathEscapeError:
            raise UnsafeEntryError(
                entry.name, f"{what} {name!r} climbs out of the layer with '..'"
            ) from None

    def _parent(self, parent: str) -> int:
        """An O_PATH fd of `parent` resolved in-root, created (mode 0755) if missing."""
        try:
            return self.rootfs.open(parent, os.O_PATH | os.O_DIRECTORY)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        return self.rootfs.mkdir_all(parent)

    # -- entries -------------------------------------------------------------

    def apply(self, entry: TarEntry, data: Callable[[], Any]) -> None:
        path = self._clean(entry, entry.name, "name")
        parent, base = _split(path)
        try:
            if base.startswith(WHITEOUT_PREFIX):
                self._whiteout(entry, parent, base)
            elif not path:
                self._root_dir(entry)
            else:
                pfd = self._parent(parent)
                try:
                    self._create(entry, path, pfd, base, data)
                finally:
                    os.close(pfd)
        except LayerError:
            raise
        except OSError as exc:
            raise EntryApplyError(entry.name, exc) from exc

    def _create(
        self, entry: TarEntry, path: str, pfd: int, base: str, data: Callable[[], Any]
    ) -> None:
        t = entry.type
        if t is EntryType.DIR:
            self._dir(entry, path, pfd, base)
        elif t is EntryType.FILE:
            self._make_room(pfd, base, is_dir=False)
            fd = os.open(
                base,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=pfd,
            )
            try:
                for chunk in data():
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                self._meta(entry, fd, fd, times=True)
            finally:
                os.close(fd)
        elif t is EntryType.SYMLINK:
            _refuse_escaping_symlink(entry, path)
            self._make_room(pfd, base, is_dir=False)
            os.symlink(entry.linkname, base, dir_fd=pfd)
            if self.chown:
                os.chown(base, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
            for name, value in self._xattrs(entry):
                # lsetxattr through the parent's magic link: the symlink itself, never its target
                self._setxattr(entry, f"/proc/self/fd/{pfd}/{base}", name, value, follow=False)
            os.utime(base, ns=self._times(entry), dir_fd=pfd, follow_symlinks=False)
        elif t is EntryType.HARDLINK:
            self._hardlink(entry, pfd, base)
        else:
            kind = {
                EntryType.CHAR: stat.S_IFCHR,
                EntryType.BLOCK: stat.S_IFBLK,
                EntryType.FIFO: stat.S_IFIFO,
            }[t]
            dev = os.makedev(entry.devmajor, entry.devminor) if t is not EntryType.FIFO else 0
            self._make_room(pfd, base, is_dir=False)
            os.mknod(base, kind | 0o600, dev, dir_fd=pfd)
            fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                self._meta(entry, fd, f"/proc/self/fd/{fd}", times=True)
            finally:
                os.close(fd)

    def _make_room(self, pfd: int, base: str, *, is_dir: bool) -> os.stat_result | None:
        """Clear `base` for a new entry (OCI: unlink and recreate; a dir over a dir stays)."""
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            if not is_dir:
                shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)
        return st

    def _dir(self, entry: TarEntry, path: str, pfd: int, base: str) -> None:
        old = self._make_room(pfd, base, is_dir=True)
        if old is None or not stat.S_ISDIR(old.st_mode):
            os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self._meta(entry, fd, fd, times=False)
            if old is not None and _is_whiteout(old):
                # deleted and recreated in this layer: nothing of the lower dir may show through
                os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
        self.dirs.append((path, *self._times(entry)))

    def _root_dir(self, entry: TarEntry) -> None:
        if entry.type is not EntryType.DIR:
            raise UnsafeEntryError(entry.name, "names the layer's root but is not a directory")
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.rootfs.fd)
        try:
            self._meta(entry, fd, fd, times=False)
        finally:
            os.close(fd)
        self.dirs.append(("", *self._times(entry)))

    def _hardlink(self, entry: TarEntry, pfd: int, base: str) -> None:
        target = self._clean(entry, entry.linkname, "hardlink target")
        if not target:
            raise UnsafeEntryError(entry.name, "hardlink to the layer's root directory")
        tparent, tbase = _split(target)
        try:
            tpfd = self.rootfs.open(tparent, os.O_PATH | os.O_DIRECTORY)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise LayerError(
                    entry.name, f"hardlink target {entry.linkname!r} is not in this layer"
                ) from None
            raise
        try:
            try:
                tst = os.stat(tbase, dir_fd=tpfd, follow_symlinks=False)
            except FileNotFoundError:
                raise LayerError(
                    entry.name, f"hardlink target {entry.linkname!r} is not in this layer"
                ) from None
            if stat.S_ISDIR(tst.st_mode):
                raise UnsafeEntryError(entry.name, f"hardlink to directory {entry.linkname!r}")
            try:
                cur = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                if (cur.st_dev, cur.st_ino) == (tst.st_dev, tst.st_ino):
                    return  # already that inode
            except FileNotFoundError:
                pass
            self._make_room(pfd, base, is_dir=False)
            os.link(tbase, base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tpfd)

    def _whiteout(self, entry: TarEntry, parent: str, base: str) -> None:
        self.result.whiteouts += 1
        if base == OPAQUE_MARKER:
            pfd = self._parent(parent)
            try:
                fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
            finally:
                os.close(pfd)
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            self.result.skipped.append(f"{entry.name}: aufs metadata, ignored")
            return
        victim = base[len(WHITEOUT_PREFIX) :]
        if victim in ("", ".", ".."):
            raise UnsafeEntryError(
                entry.name, f"whiteout of {victim!r} would hide its own directory"
            )
        pfd = self._parent(parent)
        try:
            try:
                st = os.stat(victim, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
                return
            if not _is_whiteout(st):
                # OCI: a whiteout hides lower layers only, never what this layer put there
                self.result.skipped.append(
                    f"{entry.name}: {victim!r} is in this layer, the whiteout applies below it only"
                )
        finally:
            os.close(pfd)

    # -- metadata ------------------------------------------------------------

    @staticmethod
    def _times(entry: TarEntry) -> tuple[int, int]:
        atime = entry.atime_ns if entry.atime_ns is not None else entry.mtime_ns
        return atime, entry.mtime_ns

    def _xattrs(self, entry: TarEntry) -> list[tuple[str, bytes]]:
        out = []
        for name, value in entry.xattrs.items():
            if name.startswith(_FORGED_XATTRS):
                self.result.skipped.append(f"{entry.name}: xattr {name} dropped (overlayfs's own)")
                continue
            out.append((name, value))
        return out

    def _setxattr(
        self, entry: TarEntry, where: int | str, name: str, value: bytes, *, follow: bool = True
    ) -> None:
        try:
            os.setxattr(where, name, value, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            self.result.skipped.append(f"{entry.name}: xattr {name} not supported here")

    def _meta(self, entry: TarEntry, fd: int, where: int | str, *, times: bool) -> None:
        """Ownership, then mode (chown clears setuid), then xattrs, then times, on one inode.

        `where` is the fd itself, or /proc/self/fd/N for an O_PATH fd (a
        device or fifo must not be opened for real): either way the very
        inode just created, never a path that could be swapped.
        """
        if self.chown:
            os.chown(where, entry.uid, entry.gid)
        os.chmod(where, entry.mode & 0o7777)
        for name, value in self._xattrs(entry):
            self._setxattr(entry, where, name, value)
        if times:
            os.utime(where, ns=self._times(entry))

    def finish(self) -> None:
        """Set directory times last, deepest (latest made) first, after all their contents."""
        for path, atime, mtime in reversed(self.dirs):
            try:
                fd = self.rootfs.open(path, os.O_PATH, follow_last=False)
            except OSError:
                continue  # replaced or removed by a later entry
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.utime(f"/proc/self/fd/{fd}", ns=(atime, mtime))
            finally:
                os.close(fd)
