"""The snapshotter's bookkeeping: kinds, parents, mounts it answers, persistence, crash leftovers.

No mounts here (tests/integration/test_overlay_mounts.py mounts them): only
directories in a tmp root and the metadata file.
"""

import json
import os
import signal

import pytest

from overlayfs.errors import (
    SnapshotExistsError,
    SnapshotInUseError,
    SnapshotNotFoundError,
    SnapshotStateError,
)
from overlayfs.mounts import Mount, writable_dir
from overlayfs.snapshotter import Kind, OverlaySnapshotter, Snapshotter


@pytest.fixture
def sn(tmp_path):
    s = OverlaySnapshotter(tmp_path / "snaps")
    yield s
    s.close()


def layer(sn, key, parent="", files=()):
    """prepare + write files + commit: one committed layer named `key`."""
    sn.prepare(f"extract {key}", parent)
    for name, data in files:
        with open(os.path.join(sn.layer_path(f"extract {key}"), name), "w") as f:
            f.write(data)
    sn.commit(key, f"extract {key}")


def fs(sn, key):
    return sn.layer_path(key)


def test_is_a_snapshotter(sn):
    assert isinstance(sn, Snapshotter)


def test_prepare_without_parent_is_a_writable_bind(sn):
    mounts = sn.prepare("c1")
    assert mounts == [Mount("bind", fs(sn, "c1"), ("rbind", "rw"))]
    assert writable_dir(mounts) == fs(sn, "c1")
    assert sn.stat("c1").kind is Kind.ACTIVE


def test_prepare_on_a_chain_is_an_overlay_nearest_parent_first(sn):
    layer(sn, "sha256:l1")
    layer(sn, "sha256:l2", "sha256:l1")
    layer(sn, "sha256:l3", "sha256:l2")
    (mnt,) = sn.prepare("ctr", "sha256:l3")
    opts = dict(o.split("=", 1) for o in mnt.options if "=" in o)
    assert mnt.type == "overlay"
    assert opts["upperdir"] == fs(sn, "ctr")
    assert opts["workdir"] == os.path.join(os.path.dirname(fs(sn, "ctr")), "work")
    assert opts["lowerdir"].split(":") == [fs(sn, f"sha256:l{i}") for i in (3, 2, 1)]
    assert opts["index"] == "off"
    assert sn.mounts("ctr") == [mnt]


def test_views_are_read_only(sn):
    assert sn.view("v0") == [Mount("bind", fs(sn, "v0"), ("rbind", "ro"))]
    layer(sn, "a")
    assert sn.view("v1", "a") == [Mount("bind", fs(sn, "a"), ("rbind", "ro"))]
    layer(sn, "b", "a")
    (ov,) = sn.view("v2", "b")
    assert ov.type == "overlay" and ov.readonly
    assert not any(o.startswith(("upperdir", "workdir")) for o in ov.options)
    with pytest.raises(ValueError):
        writable_dir([ov])


def test_errors_name_the_snapshot(sn):
    sn.prepare("a")
    with pytest.raises(SnapshotExistsError) as exc:
        sn.prepare("a")
    assert exc.value.key == "a"
    with pytest.raises(SnapshotNotFoundError) as nf:
        sn.prepare("b", "missing")
    assert nf.value.key == "missing"
    with pytest.raises(SnapshotStateError, match="only a committed snapshot can be a parent"):
        sn.prepare("b", "a")
    sn.view("v")
    with pytest.raises(SnapshotStateError, match="only an active snapshot can be committed"):
        sn.commit("x", "v")
    with pytest.raises(SnapshotNotFoundError):
        sn.remove("nope")
    with pytest.raises(ValueError):
        sn.prepare("")


def test_layers_are_stored_once_by_chain_id(sn):
    """Two images sharing a base: the second commit of a chain ID is refused, its copy removed."""
    layer(sn, "sha256:base", files=[("f", "1")])
    sn.prepare("extract again", "")
    with pytest.raises(SnapshotExistsError) as exc:
        sn.commit("sha256:base", "extract again")
    assert exc.value.key == "sha256:base"
    sn.remove("extract again")
    assert [i.name for i in sn.walk()] == ["sha256:base"]


def test_remove_refuses_a_parent_with_children(sn):
    layer(sn, "base")
    layer(sn, "mid", "base")
    sn.prepare("c1", "mid")
    sn.view("v1", "mid")
    with pytest.raises(SnapshotInUseError) as exc:
        sn.remove("mid")
    assert exc.value.key == "mid" and exc.value.children == ["c1", "v1"]
    with pytest.raises(SnapshotInUseError):
        sn.remove("base")
    for key in ("c1", "v1", "mid", "base"):
        path = fs(sn, key)
        sn.remove(key)
        assert not os.path.exists(os.path.dirname(path))
    assert list(sn.walk()) == []


def test_commit_records_usage_and_walk_filters(sn):
    sn.prepare("k", labels={"containerd.io/gc.root": "x"})
    d = fs(sn, "k")
    with open(os.path.join(d, "a"), "wb") as f:
        f.write(b"x" * 10000)
    os.link(os.path.join(d, "a"), os.path.join(d, "hard"))
    os.mkdir(os.path.join(d, "sub"))
    os.symlink("a", os.path.join(d, "sub", "ln"))
    live = sn.usage("k")
    assert live.inodes == 4  # root, a (=hard), sub, ln
    assert live.size >= 10000
    sn.commit("layer", "k", labels={"l": "1"})
    info = sn.stat("layer")
    assert (info.kind, info.labels) == (Kind.COMMITTED, {"l": "1"})
    assert sn.usage("layer") == live
    sn.view("v", "layer")
    assert [i.name for i in sn.walk(lambda i: i.kind is Kind.VIEW)] == ["v"]


def test_state_persists_across_instances(tmp_path):
    with OverlaySnapshotter(tmp_path / "s") as a:
        layer(a, "l1")
        a.prepare("c", "l1")
    with OverlaySnapshotter(tmp_path / "s") as b:
        assert {i.name: i.kind for i in b.walk()} == {"l1": Kind.COMMITTED, "c": Kind.ACTIVE}
        assert b.stat("c").parent == "l1"
    doc = json.loads((tmp_path / "s" / "metadata.json").read_text())
    assert doc["version"] == 1 and set(doc["snapshots"]) == {"l1", "c"}


def test_root_with_overlay_separators_refused(tmp_path):
    with pytest.raises(ValueError, match="overlayfs splits"):
        OverlaySnapshotter(tmp_path / "a:b")


def test_a_failed_metadata_write_rolls_the_directory_back(sn, monkeypatch):
    def boom(state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sn, "_save", boom)
    with pytest.raises(OSError):
        sn.prepare("k")
    assert os.listdir(os.path.join(sn.root, "snapshots")) == []


def _crash_in_child(fn):
    """Run fn in a forked child that dies by SIGKILL at the point fn chooses (a crash)."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return status


def test_interrupted_prepare_leaves_a_directory_cleanup_removes(tmp_path):
    """A process killed between creating the directory and writing metadata: garbage, collectable."""
    root = tmp_path / "s"
    with OverlaySnapshotter(root) as sn:
        layer(sn, "base")

    def crash():
        s = OverlaySnapshotter(root)
        s._save = lambda state: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign,assignment]
        s.prepare("doomed", "base")

    status = _crash_in_child(crash)
    assert os.WIFSIGNALED(status)
    with OverlaySnapshotter(root) as sn:
        assert [i.name for i in sn.walk()] == ["base"]  # the metadata never named it
        left = sorted(os.listdir(root / "snapshots"))
        assert len(left) == 2
        # the crashed id is reused: a prepare clears the leftover first
        sn.prepare("next", "base")
        (root / ".metadata.json.tmp-999-1").write_text("{")
        orphan = root / "snapshots" / "77"
        (orphan / "fs").mkdir(parents=True)
        assert sn.cleanup() == [str(orphan), str(root / ".metadata.json.tmp-999-1")]
        assert sorted(os.listdir(root / "snapshots")) == left
        assert sn.cleanup() == []


def test_interrupted_commit_leaves_the_active_snapshot(tmp_path):
    """Commit only renames a record: killed before the rename, the snapshot is still active."""
    root = tmp_path / "s"
    with OverlaySnapshotter(root) as sn:
        sn.prepare("k")

    def crash():
        s = OverlaySnapshotter(root)
        s._save = lambda state: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign,assignment]
        s.commit("name", "k")

    assert os.WIFSIGNALED(_crash_in_child(crash))
    with OverlaySnapshotter(root) as sn:
        assert sn.stat("k").kind is Kind.ACTIVE
        assert sn.cleanup() == []
        sn.commit("name", "k")


def test_two_processes_prepare_concurrently(tmp_path):
    """flock serialises separate processes: every snapshot gets its own id and record."""
    root = tmp_path / "s"
    OverlaySnapshotter(root).close()
    pids = []
    for p in range(3):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with OverlaySnapshotter(root) as s:
                    for i in range(40):
                        s.prepare(f"p{p}-{i}")
                        if i % 2:
                            s.commit(f"p{p}-c{i}", f"p{p}-{i}")
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    assert all(os.waitpid(pid, 0)[1] == 0 for pid in pids)
    with OverlaySnapshotter(root) as sn:
        infos = list(sn.walk())
        assert len(infos) == 120
        assert sum(i.kind is Kind.COMMITTED for i in infos) == 60
        paths = {sn.layer_path(i.name) for i in infos}
        assert len(paths) == 120 and all(os.path.isdir(p) for p in paths)
        assert sn.cleanup() == []
