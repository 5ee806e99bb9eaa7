"""Import and export: OCI layouts, OCI archives, docker archives; hostile images.

The hostile images are built here, with images.layout.OCILayout and tarfile,
on top of the fixture busybox base layer, and imported through each source
that can carry them. Every one must fail with a typed error that names the
blob (or member, or entry) at fault and leave the store exactly as it was:
no record, no blob the store did not already have (the shared base layer
stays), no snapshot, no ingest, no lease. The store is pre-loaded with
busybox:latest so "exactly as it was" includes keeping what is shared.

podman (Debian's 4.3) is the independent implementation of the formats: it
loads what we export and writes archives we import.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest

import images.content
import images.store
from images.archive import (
    ANNOTATION_IMAGE_NAME,
    ArchiveFormatError,
    ImportNameError,
    export_docker_archive,
    export_layout,
    export_oci_archive,
    import_archive,
    import_layout,
)
from images.builder import (
    BUSYBOX,
    BUSYBOX_LAYERED,
    BUSYBOX_MULTIARCH,
    LAYERED_ADDED_FILE,
    LAYERED_DELETED_FILE,
    LINUX_AMD64,
    gzip_reproducibly,
)
from images.content import ContentDigestMismatchError, ContentError, ContentSizeError
from images.digest import sha256_digest
from images.layout import (
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    ImageManifest,
    OCILayout,
)
from images.store import (
    DiffIDMismatchError,
    ImageStore,
    ImageStoreError,
    MissingBlobError,
    UnpackError,
)
from overlayfs.errors import LayerError, UnsafeEntryError
from tests.childproc import run_children

pytestmark = pytest.mark.usefixtures("require_root")

PLAIN = f"{BUSYBOX}:latest"
LAYERED = f"{BUSYBOX_LAYERED}:latest"
MULTI = f"{BUSYBOX_MULTIARCH}:latest"


@pytest.fixture
def store(scratch_dir):
    s = ImageStore(scratch_dir / "store")
    yield s
    s.close()


def state(store):
    """Everything an import could leave behind."""
    return {
        "records": sorted(i.name for i in store.list()),
        "blobs": sorted(b.digest for b in store.content.walk()),
        "snapshots": sorted(s.name for s in store.snapshotter.walk()),
        "snapshot_dirs": sorted(os.listdir(Path(store.snapshotter.root) / "snapshots")),
        "ingest": sorted(os.listdir(store.content.ingest_dir)),
        "leases": sorted(os.listdir(store.leases_dir)),
        "images_dir": sorted(os.listdir(store.images_dir)),
    }


def tar_dir(src: Path, dest: Path, *, compress=False) -> Path:
    """An OCI archive of a layout directory, members named relative to it."""
    with open(dest, "wb") as raw:
        f = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else raw
        with tarfile.open(fileobj=f, mode="w") as t:
            for p in sorted(src.rglob("*")):
                t.add(p, arcname=str(p.relative_to(src)), recursive=False)
        if compress:
            f.close()
    return dest


def member(t: tarfile.TarFile, name: str) -> bytes:
    f = t.extractfile(name)
    assert f is not None, f"{name} is not a file in the archive"
    return f.read()


def tar_bytes(*members) -> bytes:
    """members: (name, data) files, or (name, tarfile type, linkname)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for m in members:
            info = tarfile.TarInfo(m[0])
            info.mtime = 946684800
            if len(m) == 2:
                info.size = len(m[1])
                info.mode = 0o644
                t.addfile(info, io.BytesIO(m[1]))
            else:
                info.type = m[1]
                info.linkname = m[2]
                info.mode = 0o777 if m[1] == tarfile.SYMTYPE else 0o755
                t.addfile(info)
    return buf.getvalue()


# -- round trips ---------------------------------------------------------------------


def test_import_a_layout_names_every_tagged_image(store, fixture_images):
    imported = import_layout(store, fixture_images.layout)
    assert sorted(i.name for i in imported) == sorted(fixture_images.ref_names())
    for name, built in fixture_images.images.items():
        img = store.get(f"{name}:latest")
        assert img.manifest == built.manifest.with_annotations({})
        assert img.diff_ids == built.diff_ids
        assert store.is_unpacked(img)
    multi = store.get(MULTI)
    assert multi.target.digest == fixture_images.multiarch.index.digest
    amd64 = next(i for i in fixture_images.multiarch.images if i.platform == LINUX_AMD64)
    assert multi.manifest.digest == amd64.manifest.digest
    arm = next(i for i in fixture_images.multiarch.images if i.platform != LINUX_AMD64)
    assert not store.content.has(arm.manifest.digest), "only this platform's blobs are copied"
    assert store.leases() == [] and os.listdir(store.content.ingest_dir) == []


def test_import_selection_and_naming(store, fixture_images, scratch_dir):
    [img] = import_layout(store, fixture_images.layout, refs=[PLAIN], name="mine:1")
    assert img.name == "mine:1"
    [img] = import_layout(
        store, fixture_images.layout, refs=[PLAIN], normalize=lambda n: f"example.com/{n}"
    )
    assert img.name == f"example.com/{PLAIN}"
    with pytest.raises(ImportNameError, match="no image named"):
        import_layout(store, fixture_images.layout, refs=["nope:1"])
    with pytest.raises(ImportNameError, match="single name"):
        import_layout(store, fixture_images.layout, name="x:1")
    # a bare tag, as skopeo writes it, needs a repository
    layout = OCILayout.create(scratch_dir / "bare")
    for digest in store.get("mine:1").blobs():
        layout.write_blob(store.content.read(digest, max_size=1 << 30), "x")
    layout.tag(store.get("mine:1").target, "v1")
    with pytest.raises(ImportNameError, match="pass a repository"):
        import_layout(store, layout)
    [img] = import_layout(store, layout, repository="example.com/bare")
    assert img.name == "example.com/bare:v1"


def test_oci_archive_round_trip(store, fixture_images, scratch_dir):
    import_layout(store, fixture_images.layout, refs=[LAYERED, PLAIN, MULTI])
    out = scratch_dir / "images.tar"
    export_oci_archive(store, [LAYERED, PLAIN, MULTI], out)
    again = scratch_dir / "again.tar"
    export_oci_archive(store, [LAYERED, PLAIN, MULTI], again)
    assert out.read_bytes() == again.read_bytes(), "exports are reproducible"
    with tarfile.open(out) as t:
        index = json.loads(member(t, "index.json"))
    names = {m["annotations"][ANNOTATION_IMAGE_NAME] for m in index["manifests"]}
    assert names == {LAYERED, PLAIN, MULTI}
    assert all(
        m["annotations"][ANNOTATION_REF_NAME] == m["annotations"][ANNOTATION_IMAGE_NAME]
        for m in index["manifests"]
    )
    with ImageStore(scratch_dir / "other") as other:
        imported = {i.name: i for i in import_archive(other, out)}
        for name in (LAYERED, PLAIN):
            assert imported[name].target == store.get(name).target
            assert other.is_unpacked(imported[name])
        # the index is not carried without its arm64 image: the amd64 manifest is, typed
        assert imported[MULTI].target.digest == store.get(MULTI).manifest.digest
        assert imported[MULTI].target.platform == LINUX_AMD64
        assert imported[MULTI].id == store.get(MULTI).id


def test_a_complete_index_is_exported_as_an_index(store, fixture_images, scratch_dir):
    """With every platform's blobs in the store, the archive carries the index itself."""
    for img in fixture_images.multiarch.images:
        import_layout(
            store, fixture_images.layout, refs=[MULTI], platform=img.platform, unpack=False,
            name=f"multi:{img.platform.architecture}",
        )  # fmt: skip
    store.tag("multi:amd64", MULTI)
    out = scratch_dir / "multi.tar"
    export_oci_archive(store, [MULTI], out)
    with ImageStore(scratch_dir / "other") as other:
        [img] = import_archive(other, out)
        assert img.target.digest == fixture_images.multiarch.index.digest


def test_compressed_oci_archive_and_layout_export(store, fixture_images, scratch_dir):
    import_layout(store, fixture_images.layout, refs=[LAYERED])
    layout = export_layout(store, [LAYERED], scratch_dir / "layout")
    assert layout.ref_names() == [LAYERED]
    archive = tar_dir(layout.root, scratch_dir / "layout.tar.gz", compress=True)
    with ImageStore(scratch_dir / "other") as other:
        [img] = import_archive(other, archive)
        assert img.target == store.get(LAYERED).target
        [img] = import_layout(other, layout.root, name="again:1")
        assert img.id == store.get(LAYERED).id


def test_docker_archive_round_trip(store, fixture_images, scratch_dir):
    import_layout(store, fixture_images.layout, refs=[LAYERED, PLAIN, f"{BUSYBOX}:1.0"])
    out = scratch_dir / "docker.tar"
    export_docker_archive(store, [LAYERED, PLAIN, f"{BUSYBOX}:1.0"], out)
    with tarfile.open(out) as t:
        manifest = json.loads(member(t, "manifest.json"))
        repositories = json.loads(member(t, "repositories"))
        layer = member(t, manifest[0]["Layers"][0])
    assert sorted(m["RepoTags"][0] for m in manifest) == sorted([LAYERED, PLAIN])
    assert sorted(next(m for m in manifest if PLAIN in m["RepoTags"])["RepoTags"]) == sorted(
        [PLAIN, f"{BUSYBOX}:1.0"]
    )
    assert set(repositories) == {BUSYBOX, BUSYBOX_LAYERED}
    assert sha256_digest(layer) in store.get(PLAIN).diff_ids, "layers are plain tars"
    snapshots = {s.name for s in store.snapshotter.walk()}
    imported = {i.name: i for i in import_archive(store, out)}
    for name in (LAYERED, PLAIN):
        assert imported[name].id == fixture_images.images[name.split(":")[0]].config.digest
        assert imported[name].chain_ids == store.get(name).chain_ids
        assert {x.media_type for x in imported[name].layers} == {MEDIA_TYPE_LAYER}
    assert {s.name for s in store.snapshotter.walk()} == snapshots, "same layers: no unpack"
    with ImageStore(scratch_dir / "other") as other:
        [img] = import_archive(other, out, refs=[LAYERED])
        assert other.is_unpacked(img)
        top = Path(other.snapshotter.layer_path(img.top_chain_id))
        assert (top / LAYERED_ADDED_FILE).exists()
        assert os.lstat(top / LAYERED_DELETED_FILE).st_rdev == 0


def _docker_style_archive(store, dest: Path, *, new_layout: bool) -> Path:
    """A docker save as docker 25+ writes it (blobs/sha256 with symlinked legacy names)
    or as older docker did (<id>/layer.tar, <hex>.json)."""
    img = store.get(PLAIN)
    config = store.content.read(img.config.digest)
    layer = gzip.decompress(store.content.read(img.layers[0].digest, max_size=1 << 30))
    cfg_hex, layer_hex = img.config.digest[7:], img.diff_ids[0][7:]
    members = []
    if new_layout:
        members += [
            (f"blobs/sha256/{cfg_hex}", config),
            (f"blobs/sha256/{layer_hex}", layer),
            (f"{layer_hex}/layer.tar", tarfile.SYMTYPE, f"../blobs/sha256/{layer_hex}"),
        ]
        config_name = f"blobs/sha256/{cfg_hex}"
    else:
        members += [(f"{cfg_hex}.json", config), (f"{layer_hex}/layer.tar", layer)]
        config_name = f"{cfg_hex}.json"
    manifest = [{"Config": config_name, "RepoTags": ["docker.io/library/busybox:latest"],
                 "Layers": [f"{layer_hex}/layer.tar"]}]  # fmt: skip
    members.append(("manifest.json", json.dumps(manifest).encode()))
    dest.write_bytes(tar_bytes(*members))
    return dest


@pytest.mark.parametrize("new_layout", [False, True], ids=["docker<25", "docker>=25"])
def test_docker_save_layouts_old_and_new(store, fixture_images, scratch_dir, new_layout):
    import_layout(store, fixture_images.layout, refs=[PLAIN], unpack=False)
    archive = _docker_style_archive(store, scratch_dir / "saved.tar", new_layout=new_layout)
    with ImageStore(scratch_dir / "other") as other:
        [img] = import_archive(other, archive)
        assert img.name == "docker.io/library/busybox:latest"
        assert img.id == store.get(PLAIN).id
        assert other.is_unpacked(img)


# -- two importers at once -------------------------------------------------------------


def test_two_processes_importing_the_same_archive_at_once(store, fixture_images, scratch_dir):
    """Both ingest and apply every layer before either commits one (a barrier at each
    layer); both imports succeed, each layer is committed once, nothing is left over."""
    import_layout(store, fixture_images.layout, refs=[LAYERED], unpack=False)
    archive = scratch_dir / "layered.tar"
    export_oci_archive(store, [LAYERED], archive)
    root = scratch_dir / "fresh"
    ImageStore(root).close()
    barrier = multiprocessing.get_context("fork").Barrier(2, timeout=60)

    def do_import():
        lost = []

        def hook(point):
            if point == "unpack.applied":
                barrier.wait()
            elif point == "unpack.lost_race":
                lost.append(point)

        images.store._checkpoint = hook
        images.content._checkpoint = hook
        with ImageStore(root) as s:
            [img] = import_archive(s, archive)
            return img.top_chain_id, len(lost)

    (top1, lost1), (top2, lost2) = run_children(do_import, do_import)
    assert top1 == top2 == store.get(LAYERED).top_chain_id
    assert lost1 + lost2 == 2
    with ImageStore(root) as s:
        after = state(s)
        assert after["records"] == [LAYERED]
        assert set(after["blobs"]) == set(s.get(LAYERED).blobs())
        assert after["snapshots"] == sorted(s.get(LAYERED).chain_ids)
        assert len(after["snapshot_dirs"]) == 2
        assert after["ingest"] == [] and after["leases"] == []


# -- hostile images ---------------------------------------------------------------------


@dataclasses.dataclass
class Hostile:
    """An image on the busybox base layer plus a top layer; `bad` is the digest the
    error must name (or the member / entry, for archive-level attacks)."""

    layout: OCILayout
    bad: str
    escape: Path | None = None  # where a traversal would have written on the host


def hostile_image(
    where: Path,
    fixture_images,
    top: bytes | None,
    *,
    diff_id: str | None = None,
    blob: bytes | None = None,
) -> tuple[OCILayout, str]:
    """A layout tagged hostile:latest. `top` is the top layer's tar; `blob` overrides its
    gzip blob (the descriptor then describes `blob`); `diff_id` overrides the config's."""
    layout = OCILayout.create(where)
    base = fixture_images.images[BUSYBOX]
    base_layer = base.layers[0]
    layout.write_blob(fixture_images.layout.read_blob(base_layer.digest), MEDIA_TYPE_LAYER_GZIP)
    layers = [base_layer]
    diff_ids = [base.diff_ids[0]]
    if top is not None:
        gz = blob if blob is not None else gzip_reproducibly(top)
        layers.append(layout.write_blob(gz, MEDIA_TYPE_LAYER_GZIP))
        diff_ids.append(diff_id or sha256_digest(top))
    config = layout.write_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        MEDIA_TYPE_CONFIG,
    )
    manifest = layout.write_json(
        ImageManifest(config=config, layers=tuple(layers)).to_json(), MEDIA_TYPE_MANIFEST
    )
    layout.tag(manifest, "hostile:latest")
    return layout, layers[-1].digest


def _blob_path(layout, digest):
    return layout.blob_path(digest)


def case_path_traversal(where, fixture_images):
    escape = Path(tempfile.gettempdir()) / f"pinnace-test-escape-{uuid.uuid4().hex}"
    top = tar_bytes(("etc/ok", b"fine\n"), ("../" * 12 + str(escape).lstrip("/"), b"owned\n"))
    layout, bad = hostile_image(where, fixture_images, top)
    return Hostile(layout, bad, escape), (UnpackError,), UnsafeEntryError


def case_symlink_escape(where, fixture_images):
    """A symlink out of the layer, then a hardlink through it to a host file."""
    top = tar_bytes(
        ("evil", tarfile.SYMTYPE, "../" * 12),
        ("stolen", tarfile.LNKTYPE, "evil/etc/passwd"),
    )
    layout, bad = hostile_image(where, fixture_images, top)
    return Hostile(layout, bad), (UnpackError,), LayerError


def case_digest_mismatch(where, fixture_images):
    top = tar_bytes(("etc/motd", b"hello\n"))
    layout, bad = hostile_image(where, fixture_images, top)
    path = _blob_path(layout, bad)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    return Hostile(layout, bad), (ContentDigestMismatchError,), None


def case_diff_id_mismatch(where, fixture_images):
    top = tar_bytes(("etc/motd", b"hello\n"))
    layout, bad = hostile_image(where, fixture_images, top, diff_id=sha256_digest(b"other"))
    return Hostile(layout, bad), (DiffIDMismatchError,), None


def case_truncated_blob(where, fixture_images):
    top = tar_bytes(("etc/motd", b"hello\n" * 1000))
    layout, bad = hostile_image(where, fixture_images, top)
    path = _blob_path(layout, bad)
    path.write_bytes(path.read_bytes()[:-40])
    # a layout gives the short file against the descriptor's size; an archive member
    # carries its own (short) size, so there the digest is what fails
    return Hostile(layout, bad), (ContentSizeError, ContentDigestMismatchError), None


def case_truncated_layer_stream(where, fixture_images):
    """A blob that matches its descriptor but is a gzip stream cut in half."""
    top = tar_bytes(("etc/motd", os.urandom(20000)))
    layout, bad = hostile_image(where, fixture_images, top, blob=gzip_reproducibly(top)[:9000])
    return Hostile(layout, bad), (UnpackError,), None


def case_missing_blob(where, fixture_images):
    top = tar_bytes(("etc/motd", b"hello\n"))
    layout, bad = hostile_image(where, fixture_images, top)
    _blob_path(layout, bad).unlink()
    return Hostile(layout, bad), (MissingBlobError,), None


CASES = {
    "path-traversal": case_path_traversal,
    "symlink-escape": case_symlink_escape,
    "digest-mismatch": case_digest_mismatch,
    "diff-id-mismatch": case_diff_id_mismatch,
    "truncated-blob": case_truncated_blob,
    "truncated-layer-stream": case_truncated_layer_stream,
    "missing-blob": case_missing_blob,
}


@pytest.mark.parametrize("source", ["layout", "oci-archive"])
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_image_is_rejected_and_leaves_nothing(
    store, fixture_images, scratch_dir, case, source
):
    import_layout(store, fixture_images.layout, refs=[PLAIN])
    hostile, errors, cause = CASES[case](scratch_dir / "hostile", fixture_images)
    before = state(store)
    with pytest.raises(errors) as exc:
        if source == "layout":
            import_layout(store, hostile.layout)
        else:
            import_archive(store, tar_dir(hostile.layout.root, scratch_dir / "hostile.tar"))
    assert exc.value.digest == hostile.bad, exc.value
    assert hostile.bad in str(exc.value)
    if cause is not None:
        assert isinstance(exc.value.__cause__, cause), repr(exc.value.__cause__)
        assert str(exc.value.__cause__) in str(exc.value), "the entry is named"
    assert state(store) == before
    assert store.get(PLAIN).layers[0].digest in before["blobs"], "the shared layer stays"
    if hostile.escape is not None:
        assert not hostile.escape.exists(), "the traversal reached the host"


def test_an_escaping_symlink_is_refused_and_leaves_nothing(store, fixture_images, scratch_dir):
    """A relative symlink that climbs above the image's root is refused (docker's rule),
    so nothing can be aimed at the host through it; the store is left as it was."""
    outside = scratch_dir / "outside"
    outside.mkdir()
    top = tar_bytes(
        ("evil", tarfile.SYMTYPE, "../" * 12 + str(outside).lstrip("/")),
        ("evil/owned", b"owned\n"),
    )
    layout, _ = hostile_image(scratch_dir / "hostile", fixture_images, top)
    before = state(store)
    with pytest.raises(UnpackError) as exc:
        import_layout(store, layout)
    assert isinstance(exc.value.__cause__, UnsafeEntryError)
    assert "points above the image's root" in str(exc.value)
    assert os.listdir(outside) == []
    assert state(store) == before


def _docker_archive(dest: Path, fixture_images, top: bytes, *, layer_name=None, extra=()):
    base = fixture_images.images[BUSYBOX]
    base_tar = gzip.decompress(fixture_images.layout.read_blob(base.layers[0].digest))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [base.diff_ids[0], sha256_digest(top)]},
        }
    ).encode()
    manifest = [{"Config": "config.json", "RepoTags": ["hostile:latest"],
                 "Layers": ["base/layer.tar", layer_name or "top/layer.tar"]}]  # fmt: skip
    dest.write_bytes(
        tar_bytes(
            ("config.json", config),
            ("base/layer.tar", base_tar),
            ("top/layer.tar", top),
            *extra,
            ("manifest.json", json.dumps(manifest).encode()),
        )
    )
    return dest


def test_hostile_docker_archives_are_rejected_and_leave_nothing(store, fixture_images, scratch_dir):
    import_layout(store, fixture_images.layout, refs=[PLAIN])
    before = state(store)
    escape = Path(tempfile.gettempdir()) / f"pinnace-test-escape-{uuid.uuid4().hex}"
    traversal = tar_bytes(("../" * 12 + str(escape).lstrip("/"), b"owned\n"))
    with pytest.raises(UnpackError) as exc:
        import_archive(store, _docker_archive(scratch_dir / "a.tar", fixture_images, traversal))
    assert exc.value.digest == sha256_digest(traversal)
    assert isinstance(exc.value.__cause__, UnsafeEntryError)
    assert not escape.exists()
    assert state(store) == before

    # a layer member that is not what the config's diff_ids say
    with pytest.raises(DiffIDMismatchError):
        import_archive(
            store,
            _docker_archive(
                scratch_dir / "b.tar",
                fixture_images,
                tar_bytes(("x", b"x")),
                layer_name="other/layer.tar",
                extra=[("other/layer.tar", tar_bytes(("y", b"y")))],
            ),
        )
    assert state(store) == before

    # manifest.json naming files outside the archive, or not in it
    for name, message in (("../../../etc/passwd", "climbs out"), ("nope/layer.tar", "not in")):
        with pytest.raises(ArchiveFormatError, match=message):
            import_archive(
                store,
                _docker_archive(scratch_dir / "c.tar", fixture_images, b"", layer_name=name),
            )
        assert state(store) == before


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("../escape", b"x")], "climbs out"),
        ([("oci-layout", b"{}"), ("oci-layout", b"{}")], "appears twice"),
        ([("top/layer.tar", tarfile.SYMTYPE, "/etc/passwd")], "absolute"),
        ([("top/layer.tar", tarfile.SYMTYPE, "../../etc/passwd")], "out of the archive"),
        ([("something", b"else")], "neither an OCI archive"),
    ],
)
def test_hostile_archive_structure_is_refused(store, scratch_dir, members, message):
    archive = scratch_dir / "bad.tar"
    archive.write_bytes(tar_bytes(*members))
    before = state(store)
    with pytest.raises(ArchiveFormatError, match=message) as exc:
        import_archive(store, archive)
    assert exc.value.source == str(archive)
    assert state(store) == before


def test_not_a_tar_at_all(store, scratch_dir):
    archive = scratch_dir / "junk.tar"
    archive.write_bytes(os.urandom(4096))
    with pytest.raises(ArchiveFormatError, match="not a readable tar"):
        import_archive(store, archive)
    assert list(store.content.walk()) == [] and os.listdir(store.content.ingest_dir) == []


def test_a_wrong_blob_in_an_archive_is_refused_by_its_name(store, fixture_images, scratch_dir):
    """An archive member blobs/sha256/<hex> whose bytes are not <hex>."""
    import_layout(store, fixture_images.layout, refs=[PLAIN], unpack=False)
    out = scratch_dir / "a.tar"
    export_oci_archive(store, [PLAIN], out)
    config = store.get(PLAIN).config.digest
    with tarfile.open(out) as t:
        members = [(m, member(t, m.name) if m.isfile() else None) for m in t.getmembers()]
    with tarfile.open(scratch_dir / "b.tar", "w") as t:
        for m, data in members:
            if data is not None and m.name.endswith(config[7:]):
                data = data.replace(b"amd64", b"arm64")
            t.addfile(m, io.BytesIO(data) if data is not None else None)
    with ImageStore(scratch_dir / "other") as other:
        with pytest.raises(ContentDigestMismatchError) as exc:
            import_archive(other, scratch_dir / "b.tar")
        assert exc.value.digest == config
        assert state(other)["blobs"] == [] and state(other)["ingest"] == []


def test_errors_are_image_store_errors(store, scratch_dir):
    """One base class for the CLI and CRI to catch."""
    for cls in (ArchiveFormatError, ImportNameError, UnpackError, MissingBlobError):
        assert issubclass(cls, ImageStoreError)
    assert issubclass(ContentDigestMismatchError, ContentError)


# -- podman as the other implementation -------------------------------------------------


@pytest.fixture
def podman(scratch_dir):
    """podman with private storage (vfs: no mounts), its locks and events in files."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    top = scratch_dir / "podman"
    for sub in ("tmp", "net"):
        (top / sub).mkdir(parents=True)
    (top / "containers.conf").write_text(
        f'[engine]\nlock_type = "file"\nevents_logger = "file"\nimage_copy_tmp_dir = "{top}/tmp"\n'
    )
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(top / "containers.conf"),
        "TMPDIR": str(top / "tmp"),
    }
    base = [
        "podman", "--root", str(top / "storage"), "--runroot", str(top / "run"),
        "--tmpdir", str(top / "tmp"), "--storage-driver", "vfs",
        "--cgroup-manager", "cgroupfs", "--events-backend", "file",
        "--network-config-dir", str(top / "net"),
    ]  # fmt: skip

    def run(*args):
        proc = subprocess.run(
            [*base, *args], env=env, capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    yield run
    subprocess.run(
        [*base, "system", "reset", "--force"], env=env, capture_output=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_loads_what_we_export_and_we_import_what_it_saves(
    store, fixture_images, scratch_dir, podman, fmt
):
    import_layout(store, fixture_images.layout, refs=[LAYERED], unpack=False)
    ours = scratch_dir / "ours.tar"
    export = export_docker_archive if fmt == "docker-archive" else export_oci_archive
    export(store, [LAYERED], ours)
    podman("load", "-q", "-i", str(ours))
    [info] = json.loads(podman("image", "inspect", f"localhost/{LAYERED}"))
    assert f"sha256:{info['Id']}" == store.get(LAYERED).id
    assert info["RootFS"]["Layers"] == list(store.get(LAYERED).diff_ids)

    theirs = scratch_dir / "theirs.tar"
    podman("save", "-q", "--format", fmt, "-o", str(theirs), f"localhost/{LAYERED}")
    with ImageStore(scratch_dir / "other") as other:
        [img] = import_archive(other, theirs)
        assert img.name == f"localhost/{LAYERED}"
        assert img.id == store.get(LAYERED).id
        assert other.is_unpacked(img)
        top = Path(other.snapshotter.layer_path(img.top_chain_id))
        assert (top / LAYERED_ADDED_FILE).read_text() == "added by the second layer\n"
        assert state(other)["ingest"] == [] and state(other)["leases"] == []
