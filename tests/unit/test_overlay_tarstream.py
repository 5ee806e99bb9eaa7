"""The streaming tar reader: formats it must read, and hostile headers it must refuse early."""

import hashlib
import io
import tarfile

import pytest

from overlayfs.errors import ArchiveError, UnsupportedEntryError
from overlayfs.tarstream import BLOCK, MAX_META, EntryType, TarReader


def make_tar(members, fmt=tarfile.PAX_FORMAT, pax_headers=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_headers or {}) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name, type=tarfile.REGTYPE, data=b"", **kw):
    info = tarfile.TarInfo(name)
    info.type = type
    info.size = len(data) if type == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(info, k, v)
    return info, (data if type == tarfile.REGTYPE else None)


def read_all(raw):
    r = TarReader(io.BytesIO(raw))
    out = []
    for e in r:
        out.append((e, b"".join(r.read_chunks())))
    r.drain()
    return out, r


def header(name=b"x", size=0, typeflag=b"0", magic=b"ustar\x0000"):
    """A raw ustar header block with a correct checksum."""
    b = bytearray(BLOCK)
    b[0 : len(name)] = name
    b[100:108] = b"0000644\0"
    b[108:116] = b"0000000\0"
    b[116:124] = b"0000000\0"
    b[124:136] = b"%011o\0" % size
    b[136:148] = b"00000000000\0"
    b[156:157] = typeflag
    b[257:265] = magic
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_every_entry_type_in_each_format(fmt):
    raw = make_tar(
        [
            member("d/", tarfile.DIRTYPE, mode=0o2755, mtime=100),
            member("d/f", data=b"hello", mode=0o4755, uid=1000, gid=100, mtime=200),
            member("d/l", tarfile.SYMTYPE, linkname="../target"),
            member("d/h", tarfile.LNKTYPE, linkname="d/f"),
            member("d/c", tarfile.CHRTYPE, devmajor=1, devminor=3),
            member("d/b", tarfile.BLKTYPE, devmajor=8, devminor=1),
            member("d/p", tarfile.FIFOTYPE),
        ],
        fmt=fmt,
    )
    got, r = read_all(raw)
    kinds = [(e.name, e.type) for e, _ in got]
    assert kinds == [
        ("d/", EntryType.DIR),
        ("d/f", EntryType.FILE),
        ("d/l", EntryType.SYMLINK),
        ("d/h", EntryType.HARDLINK),
        ("d/c", EntryType.CHAR),
        ("d/b", EntryType.BLOCK),
        ("d/p", EntryType.FIFO),
    ]
    f, data = got[1]
    assert (data, f.mode, f.uid, f.gid, f.mtime_ns) == (b"hello", 0o4755, 1000, 100, 200 * 10**9)
    assert got[0][0].mode == 0o2755
    assert got[2][0].linkname == "../target"
    assert (got[4][0].devmajor, got[4][0].devminor) == (1, 3)
    assert r.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert r.offset == len(raw)


def test_long_names_pax_and_gnu():
    long = "a/" * 120 + "file"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        raw = make_tar(
            [member(long, data=b"x"), member("s", tarfile.SYMTYPE, linkname="t/" * 80)], fmt=fmt
        )
        got, _ = read_all(raw)
        assert got[0][0].name == long
        assert got[1][0].linkname == "t/" * 80


def test_pax_xattrs_times_and_big_ids():
    info, data = member("f", data=b"abc")
    info.pax_headers = {
        "SCHILY.xattr.user.comment": "hi",
        "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
        "mtime": "1700000000.123456789",
        "atime": "1600000000.5",
        "uid": str(3_000_000_000),
    }
    got, _ = read_all(make_tar([(info, data)]))
    e = got[0][0]
    assert e.xattrs == {"user.comment": b"hi", "security.capability": b"\x01\x00\x00\x02"}
    assert e.mtime_ns == 1700000000_123456789
    assert e.atime_ns == 1600000000_500000000
    assert e.uid == 3_000_000_000


def test_gnu_base256_numbers():
    raw = make_tar([member("f", uid=2**30, gid=2**31)], fmt=tarfile.GNU_FORMAT)
    e = read_all(raw)[0][0][0]
    assert (e.uid, e.gid) == (2**30, 2**31)


def test_global_pax_header_applies_to_following_entries():
    raw = make_tar(
        [member("a", data=b"1"), member("b", data=b"2")], pax_headers={"SCHILY.xattr.user.g": "v"}
    )
    got, _ = read_all(raw)
    assert [e.xattrs for e, _ in got] == [{"user.g": b"v"}, {"user.g": b"v"}]


def test_unread_data_is_skipped_and_the_digest_covers_it():
    raw = make_tar([member("a", data=b"x" * 5000), member("b", data=b"y")])
    r = TarReader(io.BytesIO(raw))
    names = [e.name for e in r]  # never reads data
    r.drain()
    assert names == ["a", "b"]
    assert r.digest == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_v7_directory_and_missing_end_marker():
    raw = header(b"olddir/", magic=b"\0" * 8)
    got, _ = read_all(raw)  # no end-of-archive blocks at all: accepted at a header boundary
    assert got[0][0].type is EntryType.DIR


def test_bad_checksum():
    raw = bytearray(make_tar([member("a", data=b"x")]))
    raw[10] ^= 0xFF
    with pytest.raises(ArchiveError, match="checksum"):
        read_all(bytes(raw))


def test_not_a_tar():
    with pytest.raises(ArchiveError):
        read_all(b"this is not a tar archive" * 40)


def test_truncated_data():
    raw = make_tar([member("a", data=b"x" * 3000)])
    with pytest.raises(ArchiveError, match="truncated"):
        read_all(raw[:1500])


def test_oversized_pax_header_refused_before_reading_it():
    """A pax header claiming 2 GiB is refused from its header alone: nothing is buffered."""
    raw = header(b"PaxHeader", size=2 << 30, typeflag=b"x")
    with pytest.raises(ArchiveError, match="larger than"):
        read_all(raw)


def pax_record(key, value):
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n += 1
    return b"%d" % n + body


def test_many_pax_headers_cannot_add_up_past_the_cap():
    """Each header is under the cap, together they are over it: refused, memory stays bounded."""
    rec = pax_record(b"SCHILY.xattr.user.pad", b"x" * (600 * 1024))
    block = header(b"PaxHeader", size=len(rec), typeflag=b"x") + rec + b"\0" * (-len(rec) % BLOCK)
    assert len(rec) < MAX_META
    with pytest.raises(ArchiveError, match="larger than"):
        read_all(block + block + header(b"f"))


def test_nul_in_pax_path_refused():
    info, data = member("a")
    info.pax_headers = {"path": "evil\0name"}
    with pytest.raises(ArchiveError, match="NUL"):
        read_all(make_tar([(info, data)]))


def test_sparse_and_unknown_types_refused():
    with pytest.raises(UnsupportedEntryError, match="sparse"):
        read_all(header(b"s", typeflag=b"S"))
    with pytest.raises(UnsupportedEntryError, match="unknown"):
        read_all(header(b"q", typeflag=b"Q"))
    info, data = member("a")
    info.pax_headers = {"GNU.sparse.major": "1"}
    with pytest.raises(UnsupportedEntryError):
        read_all(make_tar([(info, data)]))


def test_bad_pax_record_lengths():
    for rec in (b"999 path=x\n", b"5 a\n", b"x path=y\n"):
        raw = header(b"P", size=len(rec), typeflag=b"x") + rec + b"\0" * (-len(rec) % BLOCK)
        with pytest.raises(ArchiveError, match="pax"):
            read_all(raw + header(b"f"))
