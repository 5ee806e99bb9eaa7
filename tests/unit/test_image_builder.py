"""The busybox image builder and the OCI layout it writes (images/builder.py, layout.py)."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from images.builder import (
    APP_UID,
    APPLETS,
    BUSYBOX,
    BUSYBOX_EXTRA,
    BUSYBOX_LAYERED,
    BUSYBOX_MULTIARCH,
    BUSYBOX_UID,
    BUSYBOX_USER,
    DEFAULT_BUSYBOX,
    DEFAULT_PATH_ENV,
    EXTRA_FILE,
    FIXTURE_TAGS,
    HTTPD,
    INDEX_HTML,
    LAYERED_ADDED_FILE,
    LAYERED_DELETED_FILE,
    REPRODUCIBLE_EPOCH,
    BusyboxError,
    DirEntry,
    FileEntry,
    FixtureImages,
    LayerEntry,
    LayerEntryError,
    SymlinkEntry,
    WhiteoutEntry,
    build_fixture_images,
    build_layer,
    build_layer_tar,
    load_busybox,
)
from images.digest import (
    DigestMismatchError,
    InvalidDigestError,
    is_digest,
    sha256_digest,
    validate_digest,
)
from images.layout import (
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    BlobNotFoundError,
    Descriptor,
    InvalidRefNameError,
    LayoutError,
    OCILayout,
    ReferenceNotFoundError,
)

ALL_IMAGES = (BUSYBOX, BUSYBOX_UID, BUSYBOX_USER, BUSYBOX_EXTRA, BUSYBOX_LAYERED, HTTPD)


def layer_members(layout: OCILayout, digest: str) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """name -> (header, content) of a gzip layer blob, in archive order."""
    data = gzip.decompress(layout.read_blob(digest))
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info) if info.isfile() else None
            out[info.name] = (info, f.read() if f else b"")
    return out


def config_of(images: FixtureImages, name: str) -> dict[str, Any]:
    config: dict[str, Any] = images.layout.read_json(images.images[name].config.digest)
    return config


# -- reproducibility ----------------------------------------------------------


def test_two_builds_give_identical_digests_and_bytes(scratch_dir: Path) -> None:
    first = build_fixture_images(scratch_dir / "a")
    second = build_fixture_images(scratch_dir / "b")

    for name in ALL_IMAGES:
        assert first.images[name] == second.images[name]
    assert first.multiarch == second.multiarch
    assert (scratch_dir / "a/index.json").read_bytes() == (
        scratch_dir / "b/index.json"
    ).read_bytes()
    blobs_a = sorted(p.name for p in (scratch_dir / "a/blobs/sha256").iterdir())
    blobs_b = sorted(p.name for p in (scratch_dir / "b/blobs/sha256").iterdir())
    assert blobs_a == blobs_b
    assert not [b for b in blobs_a if b.startswith(".")], "temporary files left in blobs/"


def test_rebuilding_into_the_same_layout_changes_nothing(scratch_dir: Path) -> None:
    build_fixture_images(scratch_dir)
    index_before = (scratch_dir / "index.json").read_bytes()
    blobs_before = sorted((scratch_dir / "blobs/sha256").iterdir())
    build_fixture_images(scratch_dir)
    assert (scratch_dir / "index.json").read_bytes() == index_before
    assert sorted((scratch_dir / "blobs/sha256").iterdir()) == blobs_before


def test_gzip_header_has_no_mtime_and_no_file_name(fixture_images: FixtureImages) -> None:
    blob = fixture_images.layout.read_blob(fixture_images.images[BUSYBOX].layers[0].digest)
    assert blob[:3] == b"\x1f\x8b\x08"
    flags = blob[3]
    assert not flags & 0x08, "FNAME set: a file name is in the gzip header"
    assert blob[4:8] == b"\0\0\0\0", "gzip mtime is not 0"


# -- layer content ------------------------------------------------------------


def test_base_layer_entries_and_modes(fixture_images: FixtureImages) -> None:
    members = layer_members(fixture_images.layout, fixture_images.images[BUSYBOX].layers[0].digest)
    names = list(members)

    assert names == sorted(names, key=lambda n: n.split("/")), "entries not sorted"
    for name in names:  # every parent precedes its children
        parent = name.rsplit("/", 1)[0] if "/" in name else None
        if parent:
            assert names.index(parent) < names.index(name)
    for info, _ in members.values():
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        assert info.mtime == REPRODUCIBLE_EPOCH

    info, data = members["bin/busybox"]
    assert info.isfile() and info.mode == 0o755
    assert data == DEFAULT_BUSYBOX.read_bytes()
    for applet in APPLETS:
        link, _ = members[f"bin/{applet}"]
        assert link.issym() and link.linkname == "busybox", applet
    for required in ("sh", "ls", "cat", "echo", "id", "sleep", "true", "false", "env", "httpd",
                     "nc", "wget", "mkdir", "ps", "hostname"):  # fmt: skip
        assert required in APPLETS
    assert members["usr/bin/env"][0].linkname == "../../bin/busybox"

    assert members["tmp"][0].isdir() and members["tmp"][0].mode == 0o1777
    assert members["root"][0].mode == 0o700
    for d in ("dev", "proc", "sys", "etc", "www", "home/app"):
        assert members[d][0].isdir(), d

    passwd = members["etc/passwd"][1].decode().splitlines()
    assert "root:x:0:0:root:/root:/bin/sh" in passwd
    assert f"app:x:{APP_UID}:{APP_UID}:app:/home/app:/bin/sh" in passwd
    assert any(line.startswith("nobody:x:65534:65534:") for line in passwd)
    group = members["etc/group"][1].decode().splitlines()
    assert {"root:x:0:", f"app:x:{APP_UID}:", "nobody:x:65534:"} <= set(group)
    assert members["www/index.html"][1] == INDEX_HTML
    assert members["etc/passwd"][0].mode == 0o644


def test_applets_are_compiled_into_the_busybox_binary() -> None:
    listed = subprocess.run(
        [str(DEFAULT_BUSYBOX), "--list"], capture_output=True, check=True, text=True
    ).stdout.split()
    assert set(APPLETS) <= set(listed), set(APPLETS) - set(listed)


def test_layer_descriptors_match_blobs_and_diff_ids(fixture_images: FixtureImages) -> None:
    layout = fixture_images.layout
    for name in ALL_IMAGES:
        image = fixture_images.images[name]
        config = config_of(fixture_images, name)
        assert len(image.layers) == len(image.diff_ids) == len(config["rootfs"]["diff_ids"])
        for desc, diff_id, cfg_diff_id in zip(
            image.layers, image.diff_ids, config["rootfs"]["diff_ids"], strict=True
        ):
            blob = layout.read_blob(desc.digest)
            assert desc.media_type == MEDIA_TYPE_LAYER_GZIP
            assert desc.size == len(blob)
            assert sha256_digest(blob) == desc.digest
            assert sha256_digest(gzip.decompress(blob)) == diff_id == cfg_diff_id


def test_variants_share_the_base_layer_except_extra(fixture_images: FixtureImages) -> None:
    base = fixture_images.images[BUSYBOX].layers[0]
    for name in (BUSYBOX_UID, BUSYBOX_USER, HTTPD, BUSYBOX_LAYERED):
        assert fixture_images.images[name].layers[0] == base, name

    extra = fixture_images.images[BUSYBOX_EXTRA].layers[0]
    assert extra.digest != base.digest
    members = layer_members(fixture_images.layout, extra.digest)
    assert members[EXTRA_FILE][1] == b"extra\n"


def test_multi_layer_variant_adds_a_file_and_whites_one_out(fixture_images: FixtureImages) -> None:
    image = fixture_images.images[BUSYBOX_LAYERED]
    assert len(image.layers) == 2
    base = layer_members(fixture_images.layout, image.layers[0].digest)
    assert LAYERED_DELETED_FILE in base

    top = layer_members(fixture_images.layout, image.layers[1].digest)
    whiteout = "www/.wh.index.html"
    assert LAYERED_DELETED_FILE == "www/index.html"
    assert set(top) == {"etc", LAYERED_ADDED_FILE, "www", whiteout}
    info, data = top[whiteout]
    assert info.isfile() and info.size == 0 and data == b""
    assert top[LAYERED_ADDED_FILE][1] == b"added by the second layer\n"


def test_layer_tar_rejects_bad_paths() -> None:
    with pytest.raises(LayerEntryError) as err:
        build_layer_tar([FileEntry("a/../../etc/passwd", b"")])
    assert err.value.path == "a/../../etc/passwd"
    with pytest.raises(LayerEntryError):
        build_layer_tar([FileEntry("etc/x", b"1"), FileEntry("/etc/x", b"2")])
    with pytest.raises(LayerEntryError):
        build_layer_tar([DirEntry("/")])
    with pytest.raises(LayerEntryError):
        build_layer_tar([WhiteoutEntry("www/.wh.x")])


def test_layer_tar_implies_parents_and_ignores_input_order() -> None:
    entries: list[LayerEntry] = [
        SymlinkEntry("a/b/link", "target"),
        FileEntry("a/file", b"x"),
        DirEntry("z", 0o700),
    ]
    tar = build_layer_tar(entries)
    assert tar == build_layer_tar(reversed(entries))
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        assert t.getnames() == ["a", "a/b", "a/b/link", "a/file", "z"]
    layer = build_layer(entries)
    assert layer.diff_id == sha256_digest(tar)
    assert layer.digest == sha256_digest(layer.blob)


def test_load_busybox_refuses_dynamic_and_non_elf_binaries(scratch_dir: Path) -> None:
    dynamic = Path("/bin/ls")  # coreutils: dynamically linked on Debian
    with pytest.raises(BusyboxError, match="dynamically linked") as err:
        load_busybox(dynamic)
    assert err.value.path == dynamic
    script = scratch_dir / "busybox"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(BusyboxError, match="not a 64-bit"):
        load_busybox(script)
    with pytest.raises(BusyboxError, match="not found"):
        load_busybox(scratch_dir / "missing")


# -- configs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (BUSYBOX, {"Cmd": ["sh"]}),
        (BUSYBOX_UID, {"User": "1000", "Cmd": ["id"]}),
        (BUSYBOX_USER, {"User": "app", "Cmd": ["id"]}),
        (BUSYBOX_EXTRA, {"Cmd": ["sh"]}),
        (BUSYBOX_LAYERED, {"Cmd": ["sh"]}),
        (
            HTTPD,
            {
                "Entrypoint": ["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
                "ExposedPorts": {"8080/tcp": {}},
            },
        ),
    ],
)
def test_config_fields(fixture_images: FixtureImages, name: str, expected: dict[str, Any]) -> None:
    image = fixture_images.images[name]
    assert image.config.media_type == MEDIA_TYPE_CONFIG
    config = config_of(fixture_images, name)

    assert config["architecture"] == "amd64"
    assert config["os"] == "linux"
    assert config["created"] == "2000-01-01T00:00:00Z"
    assert config["config"] == {"Env": [DEFAULT_PATH_ENV], **expected}
    assert config["rootfs"] == {"type": "layers", "diff_ids": list(image.diff_ids)}
    history = config["history"]
    assert len([h for h in history if not h.get("empty_layer")]) == len(image.layers)
    assert all(h["created"] == config["created"] and h["created_by"] for h in history)


def test_manifest_points_at_config_and_layers(fixture_images: FixtureImages) -> None:
    layout = fixture_images.layout
    for name in ALL_IMAGES:
        image = fixture_images.images[name]
        assert image.manifest.media_type == MEDIA_TYPE_MANIFEST
        raw = layout.read_json(image.manifest.digest)
        assert raw["schemaVersion"] == 2
        assert raw["mediaType"] == MEDIA_TYPE_MANIFEST
        manifest = layout.read_manifest(image.manifest.digest)
        assert manifest.config == image.config
        assert manifest.layers == image.layers


def test_distinct_images_have_distinct_manifests(fixture_images: FixtureImages) -> None:
    digests = {fixture_images.images[name].manifest.digest for name in ALL_IMAGES}
    assert len(digests) == len(ALL_IMAGES)


# -- index.json and the platform index ----------------------------------------


def test_index_json_tags_every_image(fixture_images: FixtureImages) -> None:
    layout = fixture_images.layout
    assert json.loads((layout.root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout.root / "index.json").read_bytes())
    assert index["schemaVersion"] == 2 and index["mediaType"] == MEDIA_TYPE_INDEX

    expected = {f"{n}:{t}" for n in (*ALL_IMAGES, BUSYBOX_MULTIARCH) for t in FIXTURE_TAGS}
    refs = [m["annotations"][ANNOTATION_REF_NAME] for m in index["manifests"]]
    assert sorted(refs) == sorted(expected)
    assert set(fixture_images.ref_names()) == expected

    for name in ALL_IMAGES:
        image = fixture_images.images[name]
        for tag in FIXTURE_TAGS:
            resolved = layout.resolve(f"{name}:{tag}")
            assert resolved.digest == image.manifest.digest
            assert resolved.media_type == MEDIA_TYPE_MANIFEST
            assert resolved.size == image.manifest.size


def test_platform_index_has_amd64_and_arm64(fixture_images: FixtureImages) -> None:
    layout = fixture_images.layout
    multiarch = fixture_images.multiarch
    for tag in FIXTURE_TAGS:
        resolved = layout.resolve(f"{BUSYBOX_MULTIARCH}:{tag}")
        assert resolved.digest == multiarch.index.digest
        assert resolved.media_type == MEDIA_TYPE_INDEX

    index = layout.read_index(multiarch.index.digest)
    assert [(m.platform.os, m.platform.architecture) for m in index.manifests if m.platform] == [
        ("linux", "amd64"),
        ("linux", "arm64"),
    ]
    amd64, arm64 = index.manifests
    assert amd64.digest != arm64.digest
    assert amd64.digest == fixture_images.images[BUSYBOX].manifest.digest
    for desc, arch in ((amd64, "amd64"), (arm64, "arm64")):
        assert desc.media_type == MEDIA_TYPE_MANIFEST
        manifest = layout.read_manifest(desc.digest)
        config = layout.read_json(manifest.config.digest)
        assert (config["os"], config["architecture"]) == ("linux", arch)
        assert manifest.layers == fixture_images.images[BUSYBOX].layers


# -- the layout itself --------------------------------------------------------


def test_layout_blob_writes_are_verified_and_atomic(scratch_dir: Path) -> None:
    layout = OCILayout.create(scratch_dir)
    desc = layout.write_blob(b"hello", "text/plain")
    assert desc.digest == sha256_digest(b"hello") and desc.size == 5
    assert layout.read_blob(desc.digest) == b"hello"
    assert (scratch_dir / "blobs/sha256" / desc.digest.split(":")[1]).read_bytes() == b"hello"

    wrong = sha256_digest(b"other")
    with pytest.raises(DigestMismatchError) as err:
        layout.write_blob(b"hello again", "text/plain", expected_digest=wrong)
    assert err.value.expected == wrong
    assert not layout.has_blob(wrong)
    assert sorted(p.name for p in (scratch_dir / "blobs/sha256").iterdir()) == [
        desc.digest.split(":")[1]
    ]

    layout.blob_path(desc.digest).write_bytes(b"corrupt")
    with pytest.raises(DigestMismatchError):
        layout.read_blob(desc.digest)
    missing = sha256_digest(b"missing")
    with pytest.raises(BlobNotFoundError) as not_found:
        layout.read_blob(missing)
    assert not_found.value.digest == missing and not_found.value.path == scratch_dir


def test_layout_tags_move_and_unknown_refs_fail(scratch_dir: Path) -> None:
    layout = OCILayout.create(scratch_dir)
    one = layout.write_json({"n": 1}, MEDIA_TYPE_CONFIG)
    two = layout.write_json({"n": 2}, MEDIA_TYPE_CONFIG)
    layout.tag(one, "img:a")
    layout.tag(one, "img:b")
    layout.tag(two, "img:a")
    assert layout.ref_names() == ["img:a", "img:b"]
    assert layout.resolve("img:a").digest == two.digest
    assert layout.resolve("img:b").digest == one.digest

    layout.untag("img:b")
    with pytest.raises(ReferenceNotFoundError) as err:
        layout.resolve("img:b")
    assert err.value.ref_name == "img:b" and err.value.path == scratch_dir
    with pytest.raises(InvalidRefNameError):
        layout.tag(one, "no spaces")
    with pytest.raises(BlobNotFoundError):
        layout.tag(Descriptor(MEDIA_TYPE_CONFIG, sha256_digest(b"x"), 1), "img:x")
    # Reopening sees the same tags.
    assert OCILayout.open(scratch_dir).ref_names() == ["img:a"]


def test_layout_open_refuses_non_layouts(scratch_dir: Path) -> None:
    with pytest.raises(LayoutError) as err:
        OCILayout.open(scratch_dir)
    assert err.value.path == scratch_dir
    (scratch_dir / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(LayoutError, match="unsupported"):
        OCILayout.open(scratch_dir)


def test_digest_validation() -> None:
    good = sha256_digest(b"")
    assert validate_digest(good) == good and is_digest(good)
    assert not is_digest("latest")
    for bad in ("sha256:abc", "sha512:" + "0" * 128, good.upper(), "sha256:../../etc"):
        with pytest.raises(InvalidDigestError) as err:
            validate_digest(bad)
        assert err.value.digest == bad


def test_digest_with_a_trailing_newline_is_refused():
    import pytest

    from images.digest import InvalidDigestError, is_digest, validate_digest

    good = "sha256:" + "a" * 64
    assert validate_digest(good) == good
    assert not is_digest(good + "\n")
    with pytest.raises(InvalidDigestError):
        validate_digest(good + "\n")
