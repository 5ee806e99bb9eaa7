"""A streaming reader of tar archives (ustar, pax, GNU long names), written for hostile input.

Layer tars come from registries: every size read from a header is capped
before anything is buffered (pax and GNU long-name headers at 1 MiB in
total per entry, names at PATH_MAX, xattrs at the kernel's limits), every
number is range-checked, and the reader only ever moves forward, so a
layer streams from the network or a decompressor without a temp file.
Python's tarfile reads pax headers of any size into memory and has had
parsing CVEs; this reader is small enough to review.

Everything read is hashed: after `drain()` the sha256 is the layer's
DiffID (the digest of the uncompressed tar that the image config lists).

Formats: POSIX ustar and pax (`x` and `g` headers; path, linkpath, size,
uid, gid, mtime, atime, SCHILY.xattr.*, LIBARCHIVE.xattr.*), GNU `L`/`K`
long names and base-256 numbers, old v7 headers. Sparse files and other
GNU extensions are refused with UnsupportedEntryError.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from overlayfs.errors import ArchiveError, UnsupportedEntryError

BLOCK = 512
MAX_META = 1 << 20  # all pax/GNU header data before one entry, like Go's archive/tar
MAX_PATH = 4096  # PATH_MAX, NUL included
MAX_XATTR_NAME = 255  # XATTR_NAME_MAX
MAX_XATTR_VALUE = 1 << 16  # XATTR_SIZE_MAX
MAX_SIZE = 1 << 50  # a file larger than a petabyte is a corrupt header
_CHUNK = 1 << 20


class EntryType(enum.Enum):
    FILE = "file"
    HARDLINK = "hardlink"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    DIR = "dir"
    FIFO = "fifo"


_TYPES = {
    b"0": EntryType.FILE,
    b"\0": EntryType.FILE,
    b"7": EntryType.FILE,  # contiguous file: a regular file everywhere but one old Unix
    b"1": EntryType.HARDLINK,
    b"2": EntryType.SYMLINK,
    b"3": EntryType.CHAR,
    b"4": EntryType.BLOCK,
    b"5": EntryType.DIR,
    b"6": EntryType.FIFO,
}
_META_TYPES = {b"x", b"g", b"L", b"K"}
_UNSUPPORTED = {
    b"S": "GNU sparse file",
    b"D": "GNU dump directory",
    b"M": "GNU multi-volume continuation",
    b"V": "volume label",
    b"N": "GNU old long name",
}


class Readable(Protocol):
    """Anything with read(n): a file, a socket's makefile, a decompressor."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass
class TarEntry:
    """One member, with pax and GNU overrides applied; names decoded with surrogateescape."""

    name: str
    type: EntryType
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int | None = None
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    offset: int = 0  # of its header block in the uncompressed stream


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


class TarReader:
    """Reads entries one at a time from an uncompressed tar stream.

    Use as `for entry in reader: ... reader.read_chunks() ...`; data an
    entry's consumer did not read is skipped before the next header.
    """

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.offset = 0  # bytes consumed from the uncompressed stream
        self._remaining = 0  # data bytes of the current entry not yet read
        self._padding = 0
        self._global: dict[str, bytes] = {}
        self._done = False

    @property
    def digest(self) -> str:
        """`sha256:<hex>` of everything read so far (the DiffID once drained)."""
        return "sha256:" + self._hash.hexdigest()

    # -- raw input ----------------------------------------------------------

    def _read(self, n: int) -> bytes:
        """Up to n bytes (fewer only at end of stream); decompressor errors become ArchiveError."""
        parts: list[bytes] = []
        want = n
        while want > 0:
            try:
                b = self._stream.read(want)
            except ArchiveError:
                raise
            except Exception as exc:  # zlib.error, EOFError, BadGzipFile, ZstdError, OSError
                raise ArchiveError(self.offset, f"cannot read the layer stream: {exc}") from exc
            if not b:
                break
            parts.append(b)
            want -= len(b)
        data = b"".join(parts)
        self._hash.update(data)
        self.offset += len(data)
        return data

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise ArchiveError(self.offset, f"truncated archive in {what}")
        return data

    def _skip(self, n: int) -> None:
        while n > 0:
            got = len(self._read_exact(min(n, _CHUNK), "entry data"))
            n -= got

    def drain(self) -> None:
        """Read to the end of the stream so that `digest` covers all of it."""
        self._skip_current()
        while self._read(_CHUNK):
            pass

    # -- entries --------------------------------------------------------------

    def read_chunks(self) -> Iterator[bytes]:
        """The current entry's remaining data, in chunks."""
        while self._remaining > 0:
            n = min(self._remaining, _CHUNK)
            chunk = self._read_exact(n, "entry data")
            self._remaining -= n
            yield chunk

    def _skip_current(self) -> None:
        self._skip(self._remaining + self._padding)
        self._remaining = self._padding = 0

    def __iter__(self) -> Iterator[TarEntry]:
        while True:
            entry = self.next()
            if entry is None:
                return
            yield entry

    def next(self) -> TarEntry | None:
        """The next entry, or None at the end of the archive."""
        if self._done:
            return None
        self._skip_current()
        pax: dict[str, bytes] = {}
        longname: bytes | None = None
        longlink: bytes | None = None
        meta_total = 0
        while True:
            start = self.offset
            block = self._read(BLOCK)
            if not block:  # end of stream where a header would start: accept as the end
                self._done = True
                return None
            if len(block) != BLOCK:
                raise ArchiveError(start, "truncated archive in a header")
            if block == bytes(BLOCK):
                self._done = True  # end-of-archive marker; drain() reads the rest
                return None
            h = _parse_header(block, start)
            if h.typeflag in _META_TYPES:
                meta_total += h.size
                if h.size > MAX_META or meta_total > MAX_META:
                    raise ArchiveError(start, f"extended headers larger than {MAX_META} bytes")
                data = self._read_exact(h.size, "an extended header")
                self._skip(_pad(h.size))
                if h.typeflag == b"x":
                    pax.update(_parse_pax(data, start))
                elif h.typeflag == b"g":
                    self._global.update(_parse_pax(data, start))
                elif h.typeflag == b"L":
                    longname = _cstr(data)
                else:
                    longlink = _cstr(data)
                continue
            return self._finish(h, start, {**self._global, **pax}, longname, longlink)

    def _finish(
        self,
        h: _Header,
        start: int,
        pax: dict[str, bytes],
        longname: bytes | None,
        longlink: bytes | None,
    ) -> TarEntry:
        name = h.name if longname is None else longname
        link = h.linkname if longlink is None else longlink
        size, uid, gid, mtime_ns, atime_ns = h.size, h.uid, h.gid, h.mtime * 10**9, None
        xattrs: dict[str, bytes] = {}
        for key, val in pax.items():
            if key == "path" and val:
                name = val
            elif key == "linkpath" and val:
                link = val
            elif key == "size" and val:
                size = _pax_int(key, val, start)
            elif key == "uid" and val:
                uid = _pax_int(key, val, start)
            elif key == "gid" and val:
                gid = _pax_int(key, val, start)
            elif key == "mtime" and val:
                mtime_ns = _pax_time(val, start)
            elif key == "atime" and val:
                atime_ns = _pax_time(val, start)
            elif key.startswith("SCHILY.xattr."):
                xattrs[key[len("SCHILY.xattr.") :]] = val
            elif key.startswith("LIBARCHIVE.xattr."):
                xname = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
                try:
                    xattrs[xname] = base64.b64decode(val + b"=" * (-len(val) % 4))
                except ValueError:
                    raise ArchiveError(start, f"bad base64 in pax {key}", _decode(name)) from None
            elif key.startswith("GNU.sparse."):
                raise UnsupportedEntryError(_decode(name), "GNU sparse files are not supported")
        ename = _decode(name)
        if h.typeflag in _UNSUPPORTED:
            raise UnsupportedEntryError(
                ename, f"{_UNSUPPORTED[h.typeflag]} entries are not supported"
            )
        etype = _TYPES.get(h.typeflag)
        if etype is None:
            raise UnsupportedEntryError(ename, f"unknown tar entry type {h.typeflag!r}")
        if etype is EntryType.FILE and h.typeflag in (b"0", b"\0") and name.endswith(b"/"):
            etype = EntryType.DIR  # v7 tar marked directories with a trailing slash only
        _check_name(name, start, "name")
        if etype in (EntryType.HARDLINK, EntryType.SYMLINK):
            _check_name(link, start, "link target", entry=ename)
        for xname, xval in xattrs.items():
            if not xname or len(xname.encode()) > MAX_XATTR_NAME or "\0" in xname:
                raise ArchiveError(start, f"bad xattr name {xname!r}", ename)
            if len(xval) > MAX_XATTR_VALUE:
                raise ArchiveError(start, f"xattr {xname} larger than {MAX_XATTR_VALUE}", ename)
        if not 0 <= size <= MAX_SIZE:
            raise ArchiveError(start, f"implausible size {size}", ename)
        if not (0 <= uid < 2**32 and 0 <= gid < 2**32):
            raise ArchiveError(start, f"uid/gid {uid}/{gid} out of range", ename)
        # Only regular files carry data; a size on any other type is ignored (as Go's tar does).
        self._remaining = size if etype is EntryType.FILE else 0
        self._padding = _pad(size) if etype is EntryType.FILE else 0
        return TarEntry(
            name=ename,
            type=etype,
            mode=h.mode & 0o7777,
            uid=uid,
            gid=gid,
            size=self._remaining,
            mtime_ns=mtime_ns,
            atime_ns=atime_ns,
            linkname=_decode(link),
            devmajor=h.devmajor,
            devminor=h.devminor,
            xattrs=xattrs,
            offset=start,
        )


def _pad(size: int) -> int:
    return -size % BLOCK


def _check_name(raw: bytes, offset: int, what: str, entry: str = "") -> None:
    ename = entry or _decode(raw)
    if len(raw) >= MAX_PATH:
        raise ArchiveError(offset, f"{what} longer than {MAX_PATH - 1} bytes", ename[:200])
    if b"\0" in raw:
        raise ArchiveError(offset, f"{what} contains a NUL byte", ename)


@dataclass(frozen=True)
class _Header:
    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    typeflag: bytes
    linkname: bytes
    devmajor: int
    devminor: int


def _number(field: bytes, offset: int, what: str) -> int:
    """A numeric field: octal ASCII, or GNU base-256 when the high bit of the first byte is set."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ArchiveError(offset, f"bad {what} field {field!r}") from None


def _parse_header(block: bytes, offset: int) -> _Header:
    stored = _number(block[148:156], offset, "checksum")
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b & 0x80)
    if stored not in (unsigned, signed):
        raise ArchiveError(offset, "header checksum mismatch (not a tar archive, or corrupt)")
    name = _cstr(block[0:100])
    magic = block[257:263]
    if magic == b"ustar\x00":  # POSIX: a prefix field; GNU ("ustar  ") uses those bytes otherwise
        prefix = _cstr(block[345:500])
        if prefix:
            name = prefix + b"/" + name
    return _Header(
        name=name,
        mode=_number(block[100:108], offset, "mode"),
        uid=_number(block[108:116], offset, "uid"),
        gid=_number(block[116:124], offset, "gid"),
        size=_number(block[124:136], offset, "size"),
        mtime=_number(block[136:148], offset, "mtime"),
        typeflag=block[156:157],
        linkname=_cstr(block[157:257]),
        devmajor=_number(block[329:337], offset, "devmajor") if magic[:5] == b"ustar" else 0,
        devminor=_number(block[337:345], offset, "devminor") if magic[:5] == b"ustar" else 0,
    )


def _parse_pax(data: bytes, offset: int) -> dict[str, bytes]:
    """pax records, `"%d %s=%s\\n"` with the length counting the whole record."""
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad with NULs
            break
        sp = data.find(b" ", pos, pos + 21)
        if sp < 0:
            raise ArchiveError(offset, "bad pax record (no length)")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise ArchiveError(offset, "bad pax record length") from None
        end = pos + length
        if length <= sp - pos + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ArchiveError(offset, "bad pax record (length does not match)")
        key, eq, val = data[sp + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise ArchiveError(offset, "bad pax record (no key=value)")
        try:
            out[key.decode("utf-8")] = val
        except UnicodeDecodeError:
            raise ArchiveError(offset, "pax key is not UTF-8") from None
        pos = end
    return out


def _pax_int(key: str, val: bytes, offset: int) -> int:
    try:
        n = int(val.decode("ascii"), 10)
    except (UnicodeDecodeError, ValueError):
        raise ArchiveError(offset, f"bad pax {key} {val[:40]!r}") from None
    if n < 0:
        raise ArchiveError(offset, f"negative pax {key}")
    return n


def _pax_time(val: bytes, offset: int) -> int:
    """A pax time, decimal seconds with an optional fraction, as nanoseconds."""
    try:
        text = val.decode("ascii")
        sec, _, frac = text.partition(".")
        neg = sec.startswith("-")
        whole = int(sec, 10)
        nanos = int((frac + "000000000")[:9], 10) if frac else 0
        if frac and not frac.isdigit():
            raise ValueError(text)
    except (UnicodeDecodeError, ValueError):
        raise ArchiveError(offset, f"bad pax time {val[:40]!r}") from None
    return whole * 10**9 + (-nanos if neg else nanos)
