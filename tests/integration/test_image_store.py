"""The image store against the real kernel: unpack into overlay snapshots, mount them,
two processes at once, and kill -9 at every step followed by recover().

Fixture images are the busybox builds of tests/fixtures/images.py; the
layered one has a second layer that adds /etc/layer2.txt and whites out
/www/index.html. Mounts happen only in forked children inside private mount
namespaces (tests/childproc.py), so nothing can reach the host's mount table.
Concurrency is made certain, not likely: children meet at a barrier placed
at a named checkpoint inside the store (e.g. both have applied the layer,
neither has committed it yet).
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import signal
import stat
import subprocess
import traceback
from pathlib import Path

import pytest

import images.content
import images.store
from images.archive import import_layout
from images.builder import (
    BUSYBOX,
    BUSYBOX_LAYERED,
    LAYERED_ADDED_FILE,
    LAYERED_DELETED_FILE,
)
from images.store import (
    EXTRACT_PREFIX,
    LABEL_DIFF_ID,
    DiffIDMismatchError,
    ImageStore,
    UnpackError,
    chain_ids,
)
from overlayfs.mounts import mount_all, unmount_all
from overlayfs.snapshotter import Kind
from tests.childproc import in_private_mntns, run_children

pytestmark = pytest.mark.usefixtures("require_root", "host_mounts_unchanged")

LAYERED = f"{BUSYBOX_LAYERED}:latest"
PLAIN = f"{BUSYBOX}:latest"


@pytest.fixture
def host_mounts_unchanged():
    before = Path("/proc/self/mountinfo").read_text()
    yield
    assert Path("/proc/self/mountinfo").read_text() == before, "a mount leaked to the host"


@pytest.fixture
def root(scratch_dir):
    return scratch_dir / "store"


@pytest.fixture
def store(root):
    s = ImageStore(root)
    yield s
    s.close()


def import_fixture(store, fixture_images, *refs, unpack=False):
    return import_layout(store, fixture_images.layout, refs=list(refs), unpack=unpack)


# -- children -------------------------------------------------------------------------


def _hook_checkpoints(hook):
    images.store._checkpoint = hook
    images.content._checkpoint = hook


def barrier_at(point, barrier, counts=None):
    """A checkpoint hook: wait at the barrier every time `point` is reached; count
    every point in `counts`."""

    def hook(name):
        if counts is not None:
            counts[name] = counts.get(name, 0) + 1
        if name == point:
            barrier.wait()

    return hook


def killed_at(point, fn, *, nth=1):
    """Run fn in a child that SIGKILLs itself the nth time it reaches `point`."""
    pid = os.fork()
    if pid == 0:
        try:
            seen = {"n": 0}

            def hook(name):
                if name == point:
                    seen["n"] += 1
                    if seen["n"] == nth:
                        os.kill(os.getpid(), signal.SIGKILL)

            _hook_checkpoints(hook)
            fn()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"the child never reached {point!r} #{nth} (wait status {status})"
    )


def new_barrier(n=2):
    return multiprocessing.get_context("fork").Barrier(n, timeout=60)


# -- invariants ----------------------------------------------------------------------


def snapshot_dirs(store):
    return sorted(os.listdir(Path(store.snapshotter.root) / "snapshots"))


def check_consistent(store, *, unpacked=True):
    """What must hold after any crash plus recover(): every blob is what its name says,
    every record is whole, no snapshot, lease or temp file is left by the dead."""
    for blob in store.content.walk():
        got = hashlib.sha256(store.content.path(blob.digest).read_bytes()).hexdigest()
        assert f"sha256:{got}" == blob.digest, f"blob {blob.digest} has other content"
    for img in store.list():
        for digest in img.blobs():
            assert store.content.has(digest), f"{img.name} lost blob {digest}"
        if unpacked:
            assert store.is_unpacked(img), f"{img.name} is recorded but not unpacked"
    snaps = list(store.snapshotter.walk())
    assert [s.name for s in snaps if s.kind is not Kind.COMMITTED] == []
    assert all(s.name.startswith("sha256:") for s in snaps)
    named = sorted(Path(store.snapshotter.layer_path(s.name)).parent.name for s in snaps)
    assert snapshot_dirs(store) == named, "unnamed snapshot dirs"
    assert list(store.leases_dir.iterdir()) == []
    assert [p.name for p in store.images_dir.iterdir() if ".tmp-" in p.name] == []
    assert [n for n in os.listdir(store.content.ingest_dir) if not n.endswith(".data")] == []


def assert_empty(store):
    assert store.list() == []
    assert list(store.content.walk()) == []
    assert list(store.snapshotter.walk()) == []
    assert snapshot_dirs(store) == []
    assert os.listdir(store.content.ingest_dir) == []
    assert list(store.leases_dir.iterdir()) == []


# -- unpacking -------------------------------------------------------------------------


def test_each_layer_is_unpacked_once_and_committed_by_chain_id(store, fixture_images, monkeypatch):
    import_fixture(store, fixture_images, LAYERED, PLAIN)
    layered, plain = store.get(LAYERED), store.get(PLAIN)
    assert layered.chain_ids[0] == plain.chain_ids[0], "the fixture images share a base layer"
    assert layered.chain_ids == chain_ids(fixture_images.images[BUSYBOX_LAYERED].diff_ids)
    applied = []
    real = images.store.apply_layer  # type: ignore[attr-defined]

    def counting(stream, path):
        applied.append(path)
        return real(stream, path)

    monkeypatch.setattr(images.store, "apply_layer", counting)
    assert not store.is_unpacked(layered)
    assert store.unpack(LAYERED) == layered.top_chain_id
    assert len(applied) == 2
    assert store.unpack(plain) == plain.top_chain_id  # the base layer is already there
    assert store.unpack(LAYERED) == layered.top_chain_id
    assert len(applied) == 2
    snaps = {s.name: s for s in store.snapshotter.walk()}
    assert set(snaps) == set(layered.chain_ids)
    top = snaps[layered.top_chain_id]
    assert top.kind is Kind.COMMITTED and top.parent == layered.chain_ids[0]
    assert top.labels == {LABEL_DIFF_ID: layered.diff_ids[1]}
    # the whiteout is stored the overlayfs way: a 0:0 character device in the upper layer
    upper = Path(store.snapshotter.layer_path(layered.top_chain_id))
    st = os.lstat(upper / LAYERED_DELETED_FILE)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (upper / LAYERED_ADDED_FILE).read_text() == "added by the second layer\n"
    assert store.leases() == []


def _look_inside(mounts, target):
    """In a private mount namespace: mount the root, read it, run its busybox, unmount."""
    target.mkdir(exist_ok=True)
    mount_all(mounts, target)
    try:
        root = Path(target)
        seen = {
            "added": (root / LAYERED_ADDED_FILE).read_text(),
            "deleted_exists": (root / LAYERED_DELETED_FILE).exists(),
            "www": sorted(os.listdir(root / "www")),
            "passwd": (root / "etc/passwd").read_text().splitlines()[0],
        }

        def enter():
            os.chroot(target)
            os.chdir("/")

        proc = subprocess.run(
            ["/bin/busybox", "sh", "-c", "cat /etc/layer2.txt; ls /www; echo done"],
            preexec_fn=enter,
            capture_output=True,
            text=True,
            timeout=30,
        )
        seen["exec"] = (proc.returncode, proc.stdout, proc.stderr)
        try:
            (root / "written").write_text("by the container")
            seen["write"] = "ok"
        except OSError as e:
            seen["write"] = e.errno
        return seen
    finally:
        unmount_all(target)


def test_the_unpacked_image_mounts_with_the_whiteout_in_effect(store, fixture_images, scratch_dir):
    """A read-only view and a writable root of the layered image, mounted for real."""
    import errno

    import_fixture(store, fixture_images, LAYERED)
    view = store.rootfs_mounts(LAYERED, "pinnace-test-view", readonly=True)
    seen = in_private_mntns(_look_inside, view, scratch_dir / "view")
    assert seen["added"] == "added by the second layer\n"
    assert seen["deleted_exists"] is False
    assert seen["www"] == []
    assert seen["passwd"] == "root:x:0:0:root:/root:/bin/sh"
    assert seen["exec"] == (0, "added by the second layer\ndone\n", "")
    assert seen["write"] == errno.EROFS

    rw = store.rootfs_mounts(LAYERED, "pinnace-test-rw")
    seen = in_private_mntns(_look_inside, rw, scratch_dir / "rw")
    assert seen["write"] == "ok" and seen["deleted_exists"] is False
    upper = Path(store.snapshotter.layer_path("pinnace-test-rw"))
    assert (upper / "written").read_text() == "by the container"
    top = store.get(LAYERED).top_chain_id
    assert not (Path(store.snapshotter.layer_path(top)) / "written").exists()

    # GC keeps a container's root and everything below it, even without a record
    store.remove(LAYERED)
    store.snapshotter.remove("pinnace-test-view")
    result = store.gc()
    assert result.snapshots == []
    assert {s.name for s in store.snapshotter.walk()} >= {"pinnace-test-rw"}
    store.snapshotter.remove("pinnace-test-rw")
    store.gc()
    assert_empty(store)


def test_a_diff_id_mismatch_keeps_nothing_of_the_layer(store, fixture_images):
    import_fixture(store, fixture_images, PLAIN)
    img = store.get(PLAIN)
    wrong = "sha256:" + "0" * 64
    lying = dataclasses.replace(img, diff_ids=(wrong,), chain_ids=chain_ids((wrong,)))
    with pytest.raises(DiffIDMismatchError) as exc:
        store.unpack(lying)
    assert exc.value.digest == img.layers[0].digest
    assert exc.value.expected == wrong and exc.value.actual == img.diff_ids[0]
    assert list(store.snapshotter.walk()) == []
    assert snapshot_dirs(store) == []
    assert store.leases() == []


def test_a_blob_damaged_on_disk_is_caught_while_unpacking(store, fixture_images):
    import_fixture(store, fixture_images, PLAIN)
    img = store.get(PLAIN)
    path = store.content.path(img.layers[0].digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(UnpackError) as exc:
        store.unpack(img)
    assert exc.value.digest == img.layers[0].digest
    assert list(store.snapshotter.walk()) == []
    assert snapshot_dirs(store) == []


def test_usage_counts_content_and_layers(store, fixture_images):
    empty = store.usage()
    import_fixture(store, fixture_images, LAYERED, unpack=True)
    used = store.usage()
    img = store.get(LAYERED)
    assert used.content_bytes >= empty.content_bytes + img.size
    assert used.snapshot_bytes > 1_000_000  # the busybox binary, uncompressed
    assert used.snapshot_inodes > 50
    store.remove(LAYERED)
    freed = store.gc()
    assert freed.bytes_freed >= img.size
    assert store.usage().snapshot_bytes == 0
    assert_empty(store)


# -- two processes at once ---------------------------------------------------------------


def test_two_processes_unpacking_the_same_image_at_once(root, store, fixture_images):
    """Both apply each layer before either commits it (a barrier at every layer makes
    sure); one commit wins each chain ID, the other drops its copy; same top for both."""
    import_fixture(store, fixture_images, LAYERED)
    barrier = new_barrier()

    def unpack():
        counts: dict[str, int] = {}
        _hook_checkpoints(barrier_at("unpack.applied", barrier, counts))
        with ImageStore(root) as s:
            return s.unpack(LAYERED), counts.get("unpack.lost_race", 0)

    (top1, lost1), (top2, lost2) = run_children(unpack, unpack)
    img = store.get(LAYERED)
    assert top1 == top2 == img.top_chain_id
    assert lost1 + lost2 == 2, "each layer: applied twice, committed once, one copy dropped"
    assert {s.name for s in store.snapshotter.walk()} == set(img.chain_ids)
    check_consistent(store)


def test_two_writers_of_one_blob_in_two_processes(root, store, fixture_images):
    """The second writer waits for the first one's lock, then finds the blob committed."""
    layer = fixture_images.images[BUSYBOX].layers[0]
    data = fixture_images.layout.read_blob(layer.digest)
    barrier = new_barrier()

    def first():
        with ImageStore(root) as s, s.content.writer(layer.digest, layer.size) as w:
            w.write(data[: len(data) // 2])
            barrier.wait()  # holding the ingest lock now
            w.write(data[len(data) // 2 :])
            w.commit()
            return w.exists

    def second():
        barrier.wait()
        with ImageStore(root) as s, s.content.writer(layer.digest, layer.size) as w:
            exists = w.exists
            if not exists:
                w.write(data[w.offset :])
            w.commit()
            return exists

    assert run_children(first, second) == [False, True]
    assert store.content.read(layer.digest, max_size=1 << 30) == data
    assert os.listdir(store.content.ingest_dir) == []


def test_a_pull_in_progress_survives_a_remove_and_gc(root, store, fixture_images):
    """A lease taken (and filled) before the remove keeps the blobs through GC; the
    'pull' then records and unpacks the image."""
    import_fixture(store, fixture_images, PLAIN)
    img = store.get(PLAIN)
    leased, gc_done = new_barrier(), new_barrier()

    def pull():
        with ImageStore(root) as s, s.lease() as lease:
            lease.add(*img.blobs())
            assert all(s.content.has(d) for d in img.blobs())  # nothing to download
            leased.wait()
            gc_done.wait()
            s.create(PLAIN, img.target)
            return s.unpack(PLAIN)

    def remove_and_gc():
        leased.wait()
        with ImageStore(root) as s:
            s.remove(PLAIN)
            result = s.gc()
        gc_done.wait()
        return result.blobs

    top, collected = run_children(pull, remove_and_gc)
    assert collected == []
    assert top == img.top_chain_id
    check_consistent(store)
    store.remove(PLAIN)
    store.gc()
    assert_empty(store)


def test_recover_leaves_a_live_unpack_alone(root, store, fixture_images):
    """recover() at start-up of one process must not take what another, alive, is doing."""
    import_fixture(store, fixture_images, LAYERED)
    inside, recovered = new_barrier(), new_barrier()

    def unpack():
        done: list[str] = []

        def hook(name):
            if name == "unpack.applied" and not done:
                done.append(name)
                inside.wait()
                recovered.wait()

        _hook_checkpoints(hook)
        with ImageStore(root) as s:
            return s.unpack(LAYERED)

    def recover():
        inside.wait()
        with ImageStore(root) as s:
            report = s.recover(ingest_max_age=0)
            extracts = [x.name for x in s.snapshotter.walk() if x.name.startswith(EXTRACT_PREFIX)]
            leases = s.leases()
        recovered.wait()
        return report, extracts, leases

    top, (report, extracts, leases) = run_children(unpack, recover)
    assert report.snapshots == [] and report.leases == [] and report.snapshot_dirs == []
    assert len(extracts) == 1 and len(leases) == 1
    assert top == store.get(LAYERED).top_chain_id
    check_consistent(store)


# -- kill -9 at every step ---------------------------------------------------------------

IMPORT_POINTS = [
    ("content.commit.synced", 1),
    ("content.commit.synced", 3),
    ("content.commit.renamed", 2),
    ("unpack.prepared", 1),
    ("unpack.applied", 1),
    ("unpack.applied", 2),
    ("unpack.committed", 1),
    ("unpack.committed", 2),
    ("records.before_save", 1),
    ("write.images.json.synced", 1),
    ("records.saved", 1),
]


@pytest.mark.parametrize(
    ("point", "nth"),
    IMPORT_POINTS,
    ids=[f"{p}#{n}" for p, n in IMPORT_POINTS],
)
def test_kill_9_during_an_import_then_recover(root, store, fixture_images, point, nth):
    """An import (ingest, unpack, records) SIGKILLed at `point`: after recover() the store
    is consistent; retrying succeeds; removing the image and GC leave the store empty."""

    def doomed():
        with ImageStore(root) as s:
            import_fixture(s, fixture_images, LAYERED, unpack=True)

    killed_at(point, doomed, nth=nth)
    with ImageStore(root) as s:
        report = s.recover()
        if point.startswith("unpack.") and point != "unpack.committed":
            assert any(n.startswith(EXTRACT_PREFIX) for n in report.snapshots), report
        assert len(report.leases) == 1, report  # the import's lease, of a dead process
        check_consistent(s)
        if point == "records.saved":
            assert [i.name for i in s.list()] == [LAYERED]
        else:
            assert s.list() == []
        # an ingest killed after its fsync is complete: the retry commits it without data
        assert all(i.offset > 0 for i in s.content.ingests())

        [img] = import_fixture(s, fixture_images, LAYERED, unpack=True)
        check_consistent(s)
        assert s.is_unpacked(img)
        s.remove(LAYERED)
        s.gc()
        s.recover(ingest_max_age=0)
        assert_empty(s)


def test_kill_9_in_the_middle_of_a_blob_then_resume(root, store, fixture_images):
    """A writer killed mid-blob leaves its bytes; the next writer resumes from them."""
    layer = fixture_images.images[BUSYBOX].layers[0]
    data = fixture_images.layout.read_blob(layer.digest)
    half = len(data) // 2

    def doomed():
        with ImageStore(root) as s, s.content.writer(layer.digest, layer.size) as w:
            w.write(data[:half])
            os.kill(os.getpid(), signal.SIGKILL)

    killed_at("never", doomed)
    with ImageStore(root) as s:
        assert s.recover().ingests == [], "young partial data is kept for the resume"
        assert not s.content.has(layer.digest)
        with s.content.writer(layer.digest, layer.size) as w:
            assert w.offset == half
            w.write(data[half:])
            w.commit()
        assert s.content.read(layer.digest, max_size=1 << 30) == data
        assert os.listdir(s.content.ingest_dir) == []


@pytest.mark.parametrize("point", ["gc.snapshot_removed", "gc.blob_deleted"])
def test_kill_9_during_gc_then_recover(root, store, fixture_images, point):
    import_fixture(store, fixture_images, LAYERED, PLAIN, unpack=True)
    store.remove(LAYERED)

    def doomed():
        with ImageStore(root) as s:
            s.gc()

    killed_at(point, doomed)
    with ImageStore(root) as s:
        s.recover()
        check_consistent(s)
        assert [i.name for i in s.list()] == [PLAIN]
        s.gc()
        plain = s.get(PLAIN)
        assert {b.digest for b in s.content.walk()} == set(plain.blobs())
        assert {x.name for x in s.snapshotter.walk()} == set(plain.chain_ids)


def test_kill_9_while_removing_a_record(root, store, fixture_images):
    import_fixture(store, fixture_images, PLAIN)

    def doomed():
        with ImageStore(root) as s:
            s.remove(PLAIN)

    killed_at("write.images.json.synced", doomed)
    with ImageStore(root) as s:
        report = s.recover()
        assert len(report.temp_files) == 1
        assert [i.name for i in s.list()] == [PLAIN], "the old records stand"
        check_consistent(s, unpacked=False)


def test_the_store_lock_is_released_when_its_holder_is_killed(root, store, fixture_images):
    import_fixture(store, fixture_images, PLAIN)
    target = store.get(PLAIN).target
    killed_at("records.before_save", lambda: ImageStore(root).create("again:1", target))
    assert [i.name for i in store.list()] == [PLAIN]  # would block if the lock were held
