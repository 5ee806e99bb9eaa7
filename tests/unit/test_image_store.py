"""Image store logic: manifest parsing, platform selection, chain IDs, records, leases, GC.

The store here holds small synthetic images written straight into the
content store; nothing is unpacked (tests/integration/test_image_store.py
unpacks real images into real overlay snapshots).
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from images.content import ContentSizeError
from images.digest import sha256_digest
from images.layout import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    Platform,
    canonical_json,
)
from images.mediatypes import (
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
)
from images.store import (
    AmbiguousImageError,
    Image,
    ImageNotFoundError,
    ImageStore,
    InvalidImageNameError,
    ManifestError,
    MissingBlobError,
    PlatformNotFoundError,
    StoreCorruptError,
    chain_ids,
    default_platform,
    parse_config,
    parse_index,
    parse_manifest,
    select_manifest,
    split_name,
)

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")


def d(n: int) -> str:
    return f"sha256:{n:064x}"


# -- parsing ------------------------------------------------------------------


def manifest_doc(media_type=MEDIA_TYPE_MANIFEST, config_type=MEDIA_TYPE_CONFIG, layers=1):
    doc = {
        "schemaVersion": 2,
        "config": {"mediaType": config_type, "digest": d(1), "size": 10},
        "layers": [
            {"mediaType": MEDIA_TYPE_LAYER, "digest": d(2 + i), "size": 5} for i in range(layers)
        ],
    }
    if media_type:
        doc["mediaType"] = media_type
    return json.dumps(doc).encode()


@pytest.mark.parametrize("media_type", [MEDIA_TYPE_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST, None])
def test_oci_and_docker_manifests_parse(media_type):
    ctype = (
        MEDIA_TYPE_DOCKER_CONFIG if media_type == MEDIA_TYPE_DOCKER_MANIFEST else MEDIA_TYPE_CONFIG
    )
    config, layers = parse_manifest(manifest_doc(media_type, ctype, layers=2), d(99))
    assert config.digest == d(1)
    assert [x.digest for x in layers] == [d(2), d(3)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"schemaVersion": 1, "fsLayers": []}', "schema 1"),
        (manifest_doc(media_type=MEDIA_TYPE_INDEX), "not an image manifest"),
        (manifest_doc(config_type="application/vnd.example.artifact"), "is not an image config"),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": d(1), "size": 1},
                    "layers": [{"mediaType": "text/plain", "digest": d(2), "size": 1}],
                }
            ).encode(),
            "unsupported media type 'text/plain'",
        ),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": "sha256:../x", "size": 1},
                    "layers": [],
                }
            ).encode(),
            "invalid digest",
        ),
        (b'{"schemaVersion": 2, "config": {}}', "config"),
    ],
)
def test_malformed_manifests_name_the_digest_and_the_problem(data, message):
    with pytest.raises(ManifestError) as exc:
        parse_manifest(data, d(99))
    assert exc.value.digest == d(99)
    assert message in str(exc.value)


def test_config_diff_ids_and_platform():
    cfg = {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
        "rootfs": {"type": "layers", "diff_ids": [d(5), d(6)]},
    }
    assert parse_config(json.dumps(cfg).encode(), d(1)) == ((d(5), d(6)), ARM64)
    for bad in (
        {**cfg, "rootfs": {"type": "zip"}},
        {**cfg, "rootfs": {"type": "layers", "diff_ids": ["x"]}},
        {"rootfs": cfg["rootfs"]},
    ):
        with pytest.raises(ManifestError):
            parse_config(json.dumps(bad).encode(), d(1))


def index_of(*platforms):
    return [
        Descriptor(MEDIA_TYPE_MANIFEST, d(10 + i), 1, platform=p) for i, p in enumerate(platforms)
    ]


def test_platform_selection():
    children = index_of(ARM64, AMD64, Platform("windows", "amd64"))
    assert select_manifest(children, AMD64, d(1)).digest == d(11)
    assert select_manifest(children, Platform("linux", "arm64"), d(1)).digest == d(10)
    assert select_manifest(children, ARM64, d(1)).digest == d(10)
    with pytest.raises(PlatformNotFoundError) as exc:
        select_manifest(children, Platform("linux", "arm64", "v7"), d(1))
    assert "linux/arm64/v7" in str(exc.value) and "linux/amd64" in str(exc.value)
    with pytest.raises(PlatformNotFoundError):
        select_manifest(children, Platform("linux", "s390x"), d(1))
    single = [Descriptor(MEDIA_TYPE_MANIFEST, d(3), 1)]
    assert select_manifest(single, Platform("linux", "s390x"), d(1)).digest == d(3)
    assert default_platform().os == "linux"


def test_index_parsing_accepts_docker_manifest_lists():
    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_DOCKER_LIST,
        "manifests": [
            {
                "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
                "digest": d(4),
                "size": 3,
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
    [child] = parse_index(json.dumps(doc).encode(), d(1))
    assert child.platform == AMD64
    with pytest.raises(ManifestError):
        parse_index(b'{"schemaVersion": 2}', d(1))


def test_chain_ids_follow_the_image_spec():
    a, b, c = d(1), d(2), d(3)
    ab = sha256_digest(f"{a} {b}".encode())
    assert chain_ids([]) == ()
    assert chain_ids([a]) == (a,)
    assert chain_ids([a, b, c]) == (a, ab, sha256_digest(f"{ab} {c}".encode()))


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("docker.io/library/busybox:latest", ("docker.io/library/busybox", "latest")),
        ("127.0.0.1:5000/pinnace/busybox", ("127.0.0.1:5000/pinnace/busybox", None)),
        ("127.0.0.1:5000/pinnace/busybox:1.0", ("127.0.0.1:5000/pinnace/busybox", "1.0")),
        (f"busybox@{d(1)}", ("busybox", None)),
        (f"busybox:1@{d(1)}", ("busybox", "1")),
    ],
)
def test_split_name(name, split):
    assert split_name(name) == split


# -- a store of synthetic images ------------------------------------------------


def layer_tar(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo(name)
        info.size = len(name)
        t.addfile(info, io.BytesIO(name.encode()))
    return buf.getvalue()


def put(store: ImageStore, data: bytes, media_type: str) -> Descriptor:
    digest, size = store.content.add([data])
    return Descriptor(media_type, digest, size)


def make_image(store: ImageStore, *files: str, arch="amd64") -> Descriptor:
    layers = [put(store, layer_tar(f), MEDIA_TYPE_LAYER) for f in files]
    cfg = {
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [x.digest for x in layers]},
    }
    config = put(store, canonical_json(cfg), MEDIA_TYPE_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config.to_json(),
        "layers": [x.to_json() for x in layers],
    }
    return put(store, canonical_json(manifest), MEDIA_TYPE_MANIFEST)


@pytest.fixture
def store(scratch_dir):
    s = ImageStore(scratch_dir / "store", sync=False)
    yield s
    s.close()


def blobs(store):
    return {b.digest for b in store.content.walk()}


def test_records_round_trip_and_resolve_every_blob(store):
    m = make_image(store, "a", "b")
    img = store.create("example.com/app:1", m)
    assert img.name == "example.com/app:1"
    assert img.target == img.manifest == m
    assert len(img.layers) == 2 and img.chain_ids == chain_ids(img.diff_ids)
    assert img.platform == AMD64
    assert img.top_chain_id == img.chain_ids[-1]
    assert img.repo_digest == f"example.com/app@{m.digest}"
    assert set(img.blobs()) == blobs(store)
    assert img.size == sum(store.content.info(b).size for b in img.blobs())
    again = ImageStore(store.root)
    try:
        assert again.get("example.com/app:1") == img
    finally:
        again.close()
    assert Image.from_json(json.loads(json.dumps(img.to_json()))) == img


def test_a_digest_string_is_typed_from_the_document(store):
    m = make_image(store, "a")
    img = store.create("app:1", m.digest)
    assert img.target.media_type == MEDIA_TYPE_MANIFEST
    assert img.target.size == m.size


def test_lookup_by_name_id_short_id_digest_and_repo_digest(store):
    m = make_image(store, "a")
    img = store.create("app:1", m)
    store.tag("app:1", "app:2")
    assert store.get(img.id).name == "app:1"
    assert store.get(img.id[7:19]).name == "app:1"
    assert store.get(m.digest).name == "app:1"
    assert store.get(f"app@{m.digest}").name == "app:1"
    assert [i.name for i in store.list()] == ["app:1", "app:2"]
    with pytest.raises(ImageNotFoundError) as exc:
        store.get("app:3")
    assert exc.value.ref == "app:3" and "app:3" in str(exc.value)
    with pytest.raises(ImageNotFoundError):
        store.get(f"other@{m.digest}")


def fake_image(name: str, config_digest: str) -> Image:
    m = Descriptor(MEDIA_TYPE_MANIFEST, d(1), 1)
    return Image(
        target=m,
        manifest=m,
        config=Descriptor(MEDIA_TYPE_CONFIG, config_digest, 1),
        layers=(),
        diff_ids=(),
        chain_ids=(),
        platform=AMD64,
        name=name,
    )


def test_an_ambiguous_short_id_is_an_error():
    a = fake_image("a:1", "sha256:" + "ab" * 6 + "1" * 52)
    b = fake_image("b:1", "sha256:" + "ab" * 6 + "2" * 52)
    records = {"a:1": a, "b:1": b}
    with pytest.raises(AmbiguousImageError) as exc:
        ImageStore._match(records, "ab" * 6)
    assert exc.value.ids == [a.id, b.id]
    assert ImageStore._match(records, "ab" * 6 + "1")[0] is a
    with pytest.raises(ImageNotFoundError):
        ImageStore._match(records, "ab" * 5)  # shorter than 12: not taken as an ID


def test_remove_by_name_or_by_id(store):
    m = make_image(store, "a")
    store.create("app:1", m)
    store.create("app:2", m)
    store.create("other:1", make_image(store, "b"))
    assert [i.name for i in store.remove("app:1")] == ["app:1"]
    assert [i.name for i in store.list()] == ["app:2", "other:1"]
    img = store.get("app:2")
    store.create("app:3", m)
    assert [i.name for i in store.remove(img.id)] == ["app:2", "app:3"]
    assert [i.name for i in store.list()] == ["other:1"]
    with pytest.raises(ImageNotFoundError):
        store.remove("app:1")


def test_recording_refuses_missing_or_wrongly_sized_blobs(store):
    m = make_image(store, "a", "b")
    img = store.create("app:1", m)
    store.remove("app:1")
    store.content.delete(img.layers[1].digest)
    with pytest.raises(MissingBlobError) as exc:
        store.create("app:1", m)
    assert exc.value.digest == img.layers[1].digest
    assert "layer 1" in str(exc.value)
    lying = Descriptor(MEDIA_TYPE_MANIFEST, m.digest, m.size + 1)
    with pytest.raises(ContentSizeError):
        store.create("app:1", lying)
    with pytest.raises(MissingBlobError):
        store.create("app:1", d(7))
    assert store.list() == []


def test_invalid_names_are_refused(store):
    m = make_image(store, "a")
    for bad in ("", "has space", "tab\there", "nl\n", 7):
        with pytest.raises(InvalidImageNameError):
            store.create(bad, m)


def test_an_index_resolves_to_this_platforms_manifest(store):
    amd = make_image(store, "amd", arch="amd64")
    arm = make_image(store, "arm", arch="arm64")
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [
            Descriptor(arm.media_type, arm.digest, arm.size, platform=ARM64).to_json(),
            Descriptor(amd.media_type, amd.digest, amd.size, platform=AMD64).to_json(),
        ],
    }
    idx = put(store, canonical_json(index), MEDIA_TYPE_INDEX)
    img = store.create("multi:1", idx, platform=AMD64)
    assert (img.target, img.manifest.digest) == (idx, amd.digest)
    assert store.create("multi:arm", idx, platform=ARM64).manifest.digest == arm.digest
    with pytest.raises(PlatformNotFoundError):
        store.create("multi:s390x", idx, platform=Platform("linux", "s390x"))
    # only the selected platform's blobs are needed
    store.remove("multi:arm")
    store.gc()
    assert store.get("multi:1").manifest.digest == amd.digest
    assert not store.content.has(arm.digest)


def test_create_many_is_all_or_nothing(store):
    good = make_image(store, "a")
    with pytest.raises(MissingBlobError):
        store.create_many([("app:1", good), ("app:2", d(9))])
    assert store.list() == []


def test_corrupt_records_are_refused_not_overwritten(store):
    store.create("app:1", make_image(store, "a"))
    path = store.images_dir / "images.json"
    path.write_text("{broken")
    with pytest.raises(StoreCorruptError) as exc:
        store.list()
    assert exc.value.filename == str(path)
    with pytest.raises(StoreCorruptError):
        store.create("app:2", make_image(store, "b"))
    assert path.read_text() == "{broken"


# -- GC and leases --------------------------------------------------------------


def test_gc_removes_only_what_no_record_needs(store):
    keep = make_image(store, "shared", "keep")
    drop = make_image(store, "shared", "drop")
    kept = store.create("keep:1", keep)
    dropped = store.create("drop:1", drop)
    assert store.gc().blobs == []
    store.remove("drop:1")
    result = store.gc()
    gone = set(dropped.blobs()) - set(kept.blobs())
    assert set(result.blobs) == gone
    assert result.bytes_freed == sum(
        x.size for x in (dropped.manifest, dropped.config, *dropped.layers) if x.digest in gone
    )
    assert blobs(store) == set(kept.blobs())
    assert store.gc().blobs == []


def test_a_lease_protects_blobs_until_released(store):
    m = make_image(store, "a")
    everything = blobs(store)
    with store.lease() as lease:
        lease.add(*everything)
        assert store.leases() == [lease.id]
        assert store.gc().blobs == []
        assert blobs(store) == everything
    assert store.leases() == []
    assert set(store.gc().blobs) == everything
    assert not store.content.has(m.digest)


def test_a_collecting_lease_removes_only_what_nothing_else_needs(store):
    shared = make_image(store, "shared")
    store.create("keep:1", shared)
    with store.lease(collect=True) as other:
        other_blob = put(store, b"held by another lease", MEDIA_TYPE_LAYER)
        other.add(other_blob.digest)
        lease = store.lease(collect=True)
        mine = put(store, b"only mine", MEDIA_TYPE_LAYER)
        lease.add(mine.digest, other_blob.digest, *store.get("keep:1").blobs())
        unrelated = put(store, b"nobody's, but not mine to collect", MEDIA_TYPE_LAYER)
        result = lease.release()
        assert result.blobs == [mine.digest]
        assert store.content.has(other_blob.digest) and store.content.has(unrelated.digest)
    assert not store.content.has(other_blob.digest)
    assert store.content.has(unrelated.digest)
    assert set(store.get("keep:1").blobs()) <= blobs(store)


def test_leases_of_dead_processes_protect_nothing(store):
    m = make_image(store, "a")
    pid = os.fork()
    if pid == 0:
        try:
            child = ImageStore(store.root, sync=False)
            lease = child.lease()
            lease.add(*blobs(child))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert len(list(store.leases_dir.glob("*.json"))) == 1
    assert store.leases() == []
    report = store.recover()
    assert len(report.leases) == 1 and report.leases[0].startswith(f"{pid}-")
    assert not list(store.leases_dir.iterdir())
    assert store.content.has(m.digest), "recover keeps complete blobs: a retried pull reuses them"
    assert m.digest in store.gc().blobs


def test_an_expired_lease_protects_nothing(store):
    make_image(store, "a")
    lease = store.lease(ttl=-1)
    lease.add(*blobs(store))
    assert store.leases() == []
    assert len(store.gc().blobs) == 3


def test_a_released_lease_cannot_be_added_to(store):
    lease = store.lease()
    lease.release()
    with pytest.raises(Exception, match="already released"):
        lease.add(d(1))


def test_gc_of_an_empty_store_and_usage(store):
    assert store.gc().blobs == []
    before = store.usage()
    make_image(store, "a")
    after = store.usage()
    assert after.content_bytes > before.content_bytes
    assert after.bytes == after.content_bytes + after.snapshot_bytes
    assert after.inodes == after.content_inodes + after.snapshot_inodes


def test_recover_removes_temp_record_files_of_dead_writers(store):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    dead = store.images_dir / f".images.json.tmp-{pid}-abcd"
    dead.write_text("{}")
    live = store.images_dir / f".images.json.tmp-{os.getpid()}-abcd"
    live.write_text("{}")
    report = store.recover()
    assert report.temp_files == [str(dead)]
    assert live.exists()
    live.unlink()
    assert store.recover().empty()


def test_layer_media_types_of_docker_images_are_accepted(store):
    layer = put(store, layer_tar("x"), MEDIA_TYPE_DOCKER_LAYER_GZIP)
    cfg = put(
        store,
        canonical_json(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            }
        ),
        MEDIA_TYPE_DOCKER_CONFIG,
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
        "config": cfg.to_json(),
        "layers": [layer.to_json()],
    }
    m = put(store, canonical_json(manifest), MEDIA_TYPE_DOCKER_MANIFEST)
    img = store.create("docker.io/library/x:latest", m.digest)
    assert img.target.media_type == MEDIA_TYPE_DOCKER_MANIFEST
    assert img.layers[0].media_type == MEDIA_TYPE_DOCKER_LAYER_GZIP


def test_a_forked_child_takes_the_store_lock_for_itself(store):
    """flock(2) belongs to the open file description a child shares with its parent:
    a store used across fork must reopen it, or parent and child would not exclude."""
    import fcntl

    from tests.childproc import in_child

    def child():
        store._check_fork()
        try:
            fcntl.flock(store._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "excluded"
        return "not excluded"

    with store._locked():
        assert in_child(child) == "excluded"
    assert in_child(lambda: store.list()) == []


def test_a_lease_is_a_content_store_that_holds_what_it_is_asked_about(store):
    data = b"a blob a pull is about to need"
    digest = sha256_digest(data)
    with store.lease() as lease:
        assert lease.has(digest) is False
        with lease.writer(digest, len(data)) as w:
            w.write(data)
            w.commit()
        assert lease.has(digest) and lease.digests == {digest}
        assert store.gc().blobs == []
    assert store.gc().blobs == [digest]
