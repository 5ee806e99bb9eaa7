"""The content store: verified atomic commits, resumable ingests, one writer per digest.

Plain files in a temporary directory; the cross-process and kill -9 cases are
in tests/integration/test_image_store.py.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from images.content import (
    ContentDigestMismatchError,
    ContentNotFoundError,
    ContentSizeError,
    ContentStore,
    IngestLockedError,
)
from images.digest import InvalidDigestError, sha256_digest

DATA = b"pinnace content store\n" * 1000
DIGEST = sha256_digest(DATA)
HEX = DIGEST.split(":")[1]


@pytest.fixture
def cs(scratch_dir):
    return ContentStore(scratch_dir / "content")


def ingest_files(cs):
    return sorted(os.listdir(cs.ingest_dir))


def test_a_committed_blob_is_readable_verified_and_read_only(cs):
    with cs.writer(DIGEST, len(DATA)) as w:
        assert (w.offset, w.exists) == (0, False)
        w.write(DATA[:100])
        w.write(DATA[100:])
        assert not cs.has(DIGEST), "visible before commit"
        w.commit()
    assert cs.has(DIGEST)
    assert cs.read(DIGEST) == DATA
    with cs.open(DIGEST) as f:
        assert f.read() == DATA
    assert cs.path(DIGEST) == cs.root / "blobs" / "sha256" / HEX
    assert oct(cs.path(DIGEST).stat().st_mode & 0o777) == oct(0o444)
    assert cs.info(DIGEST).size == len(DATA)
    assert [b.digest for b in cs.walk()] == [DIGEST]
    assert ingest_files(cs) == [], "the lock file goes with the writer"


def test_wrong_content_is_refused_and_discarded(cs):
    other = b"x" * len(DATA)
    with pytest.raises(ContentDigestMismatchError) as exc, cs.writer(DIGEST, len(DATA)) as w:
        w.write(other)
        w.commit()
    assert exc.value.digest == DIGEST
    assert exc.value.actual == sha256_digest(other)
    assert DIGEST in str(exc.value)
    assert not cs.has(DIGEST)
    # nothing to resume from: the next writer starts at zero
    with cs.writer(DIGEST, len(DATA)) as w:
        assert w.offset == 0


def test_more_data_than_promised_is_refused(cs):
    with pytest.raises(ContentSizeError) as exc, cs.writer(DIGEST, 10) as w:
        w.write(DATA[:11])
    assert exc.value.digest == DIGEST
    assert exc.value.expected == 10
    with cs.writer(DIGEST, len(DATA)) as w:
        assert w.offset == 0, "oversized data is not kept for a resume"


def test_an_interrupted_ingest_resumes_where_it_stopped(cs):
    class Dropped(Exception):
        pass

    with pytest.raises(Dropped), cs.writer(DIGEST, len(DATA)) as w:
        w.write(DATA[:5000])
        raise Dropped
    assert not cs.has(DIGEST)
    assert [(i.digest, i.offset, i.locked) for i in cs.ingests()] == [(DIGEST, 5000, False)]
    with cs.writer(DIGEST, len(DATA)) as w:
        assert w.offset == 5000
        w.write(DATA[5000:])
        w.commit()
    assert cs.read(DIGEST) == DATA
    assert cs.ingests() == []


def test_a_short_commit_keeps_the_data_for_a_resume(cs):
    with cs.writer(DIGEST, len(DATA)) as w:
        w.write(DATA[:10])
        with pytest.raises(ContentSizeError) as exc:
            w.commit()
        assert (exc.value.expected, exc.value.actual) == (len(DATA), 10)
    with cs.writer(DIGEST, len(DATA)) as w:
        assert w.offset == 10


def test_a_corrupted_partial_is_caught_at_commit_not_trusted(cs):
    """The ingest file is re-hashed on resume, so a tampered prefix fails the digest check."""
    with cs.writer(DIGEST, len(DATA)) as w:
        w.write(DATA[:100])
    (cs.ingest_dir / f"{HEX}.data").write_bytes(b"Y" * 100)
    with pytest.raises(ContentDigestMismatchError), cs.writer(DIGEST, len(DATA)) as w:
        assert w.offset == 100
        w.write(DATA[100:])
        w.commit()
    assert not cs.has(DIGEST)


def test_reset_starts_over_when_the_server_ignores_range(cs):
    with cs.writer(DIGEST, len(DATA)) as w:
        w.write(DATA[:10])
    with cs.writer(DIGEST, len(DATA)) as w:
        assert w.offset == 10
        w.reset()
        assert w.offset == 0
        w.write(DATA)
        w.commit()
    assert cs.read(DIGEST) == DATA


def test_non_resumable_writers_leave_nothing_on_failure(cs):
    with pytest.raises(ContentSizeError), cs.writer(DIGEST, len(DATA), resumable=False) as w:
        w.write(DATA[:10])
        w.commit()
    assert ingest_files(cs) == []


def test_writing_a_committed_digest_is_a_no_op(cs):
    cs.write([DATA], DIGEST, len(DATA))
    mtime = cs.path(DIGEST).stat().st_mtime_ns
    with cs.writer(DIGEST, len(DATA)) as w:
        assert w.exists and w.offset == len(DATA)
        w.write(b"ignored")
        w.commit()
        assert w.committed
    assert cs.read(DIGEST) == DATA
    assert cs.path(DIGEST).stat().st_mtime_ns == mtime
    assert cs.write([b"never read"], DIGEST, len(DATA)) is False


def test_one_writer_per_digest_at_a_time(cs):
    """A second writer waits (or, not blocking, is refused); once the first commits,
    the second finds the blob there and its commit is a no-op."""
    first = cs.writer(DIGEST, len(DATA))
    first.open()
    first.write(DATA[:10])
    with pytest.raises(IngestLockedError) as exc, cs.writer(DIGEST, len(DATA), blocking=False):
        pass
    assert exc.value.digest == DIGEST
    assert [i.locked for i in cs.ingests()] == [True]

    seen = {}

    def second():
        with cs.writer(DIGEST, len(DATA)) as w:
            seen["exists"] = w.exists
            w.commit()

    t = threading.Thread(target=second)
    t.start()
    t.join(0.2)
    assert t.is_alive(), "the second writer should be waiting for the lock"
    first.write(DATA[10:])
    first.commit()
    first.close()
    t.join(30)
    assert not t.is_alive()
    assert seen == {"exists": True}
    assert cs.read(DIGEST) == DATA
    assert ingest_files(cs) == []


def test_many_threads_writing_one_digest(cs):
    errors = []

    def write():
        try:
            with cs.writer(DIGEST, len(DATA)) as w:
                for i in range(w.offset, len(DATA), 4096):
                    w.write(DATA[i : i + 4096])
                w.commit()
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert cs.read(DIGEST) == DATA
    assert ingest_files(cs) == []


def test_add_learns_the_digest_and_calls_before_commit_first(cs):
    seen = []

    def before(d):
        seen.append((d, cs.has(d)))

    digest, size = cs.add([DATA[:7], DATA[7:]], before_commit=before)
    assert (digest, size) == (DIGEST, len(DATA))
    assert seen == [(DIGEST, False)]
    assert cs.read(DIGEST) == DATA
    assert cs.add([DATA]) == (DIGEST, len(DATA)), "adding it again is harmless"
    with pytest.raises(ContentDigestMismatchError):
        cs.add([b"other"], expected=DIGEST)
    assert ingest_files(cs) == []


def test_missing_blobs_and_bad_digests_are_typed_errors(cs):
    with pytest.raises(ContentNotFoundError) as exc:
        cs.open(DIGEST)
    assert exc.value.digest == DIGEST and isinstance(exc.value, FileNotFoundError)
    with pytest.raises(ContentNotFoundError):
        cs.delete(DIGEST)
    with pytest.raises(ContentNotFoundError):
        cs.info(DIGEST)
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:../../" + "0" * 58, DIGEST + "\n"):
        with pytest.raises(InvalidDigestError):
            cs.writer(bad, 1)
        with pytest.raises(InvalidDigestError):
            cs.has(bad)


def test_read_verifies_and_refuses_what_does_not_fit(cs):
    cs.write([DATA], DIGEST, len(DATA))
    with pytest.raises(ContentSizeError):
        cs.read(DIGEST, max_size=100)
    path = cs.path(DIGEST)
    path.chmod(0o644)
    path.write_bytes(b"rotted on disk")
    with pytest.raises(ContentDigestMismatchError):
        cs.read(DIGEST)


def test_walk_skips_names_that_are_not_digests(cs):
    cs.write([DATA], DIGEST, len(DATA))
    (cs.blob_dir / "not-a-digest").write_bytes(b"x")
    (cs.blob_dir / ("a" * 64)).mkdir()
    assert [b.digest for b in cs.walk()] == [DIGEST]


def test_delete_and_usage(cs):
    empty = cs.usage()
    cs.write([DATA], DIGEST, len(DATA))
    used = cs.usage()
    assert used[0] >= empty[0] + len(DATA) and used[1] == empty[1] + 1
    cs.delete(DIGEST)
    assert not cs.has(DIGEST)
    assert cs.usage() == empty


def test_cleanup_ingests_by_age_and_when_committed(cs):
    other = b"other blob"
    other_digest = sha256_digest(other)
    for d, data in ((DIGEST, DATA), (other_digest, other)):
        with cs.writer(d, len(data)) as w:
            w.write(data[:3])
    assert cs.cleanup_ingests(max_age=3600) == [], "young and unheld: kept for resume"
    cs.add([other])  # committed meanwhile by a path that does not use the ingest
    assert cs.cleanup_ingests(max_age=3600) == [f"{other_digest[7:]}.data"]
    assert cs.cleanup_ingests(max_age=60, now=time.time() + 61) == [f"{HEX}.data"]
    assert ingest_files(cs) == []


def test_cleanup_ingests_keeps_what_a_writer_holds(cs):
    with cs.writer(DIGEST, len(DATA)) as w:
        w.write(DATA[:3])
        assert cs.cleanup_ingests(max_age=0, now=time.time() + 10) == []
        w.write(DATA[3:])
        w.commit()
    assert cs.read(DIGEST) == DATA


def test_cleanup_ingests_removes_temp_files_of_dead_processes(cs):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    dead = cs.ingest_dir / f".tmp-{pid}-deadbeef"
    dead.write_bytes(b"partial add")
    mine = cs.ingest_dir / f".tmp-{os.getpid()}-cafe"
    mine.write_bytes(b"in progress")
    stale_lock = cs.ingest_dir / f"{HEX}.lock"
    stale_lock.write_bytes(b"")
    removed = cs.cleanup_ingests(max_age=3600)
    assert dead.name in removed
    assert not dead.exists() and mine.exists() and not stale_lock.exists()


def test_a_blob_is_renamed_into_place_whole(cs, monkeypatch):
    """Nothing is under the digest until the fsynced, verified file is renamed there."""
    import images.content as content

    seen = []

    def checkpoint(point):
        seen.append((point, cs.has(DIGEST)))

    monkeypatch.setattr(content, "_checkpoint", checkpoint)
    cs.write([DATA], DIGEST, len(DATA))
    assert seen == [("content.commit.synced", False), ("content.commit.renamed", True)]
    assert hashlib.sha256(cs.path(DIGEST).read_bytes()).hexdigest() == HEX
