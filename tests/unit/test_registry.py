"""The registry client's pure parts: manifest checks and platform selection.

The HTTP side runs against real and hostile registries in
tests/integration/test_registry_pull.py.
"""

from __future__ import annotations

import json

import pytest

from images.digest import sha256_digest
from images.layout import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    Platform,
)
from images.mediatypes import (
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
)
from images.registry import (
    FetchedIndex,
    FetchedManifest,
    ManifestError,
    PlatformNotFoundError,
    _retry_after,
    compatible_platforms,
    normalize_platform,
    parse_manifest,
    parse_platform,
    select_manifest,
)

IMAGE = "example.com/app:1"
CONFIG = {"mediaType": MEDIA_TYPE_CONFIG, "digest": sha256_digest(b"c"), "size": 1}
LAYER = {"mediaType": MEDIA_TYPE_LAYER_GZIP, "digest": sha256_digest(b"l"), "size": 1}


def doc(**fields) -> bytes:
    return json.dumps({"schemaVersion": 2, **fields}).encode()


def entry(arch: str, variant: str | None = None, os: str = "linux", mt=MEDIA_TYPE_MANIFEST):
    digest = sha256_digest(f"{os}/{arch}/{variant}".encode())
    return Descriptor(mt, digest, 100, platform=Platform(os, arch, variant))


# -- manifests ----------------------------------------------------------------


def test_oci_manifest() -> None:
    data = doc(mediaType=MEDIA_TYPE_MANIFEST, config=CONFIG, layers=[LAYER, LAYER])
    m = parse_manifest(data, MEDIA_TYPE_MANIFEST, image=IMAGE)
    assert isinstance(m, FetchedManifest)
    assert m.descriptor == Descriptor(MEDIA_TYPE_MANIFEST, sha256_digest(data), len(data))
    assert m.config == Descriptor.from_json(CONFIG)
    assert len(m.layers) == 2 and m.raw == data


def test_docker_schema2_manifest_and_list() -> None:
    config = {**CONFIG, "mediaType": MEDIA_TYPE_DOCKER_CONFIG}
    layer = {**LAYER, "mediaType": MEDIA_TYPE_DOCKER_LAYER_GZIP}
    data = doc(mediaType=MEDIA_TYPE_DOCKER_MANIFEST, config=config, layers=[layer])
    m = parse_manifest(data, "application/json", image=IMAGE)
    assert isinstance(m, FetchedManifest) and m.media_type == MEDIA_TYPE_DOCKER_MANIFEST

    lst = doc(mediaType=MEDIA_TYPE_DOCKER_LIST, manifests=[entry("amd64").to_json()])
    i = parse_manifest(lst, MEDIA_TYPE_DOCKER_LIST, image=IMAGE)
    assert isinstance(i, FetchedIndex) and i.manifests == (entry("amd64"),)


def test_oci_documents_without_media_type_go_by_shape() -> None:
    m = parse_manifest(doc(config=CONFIG, layers=[]), None, image=IMAGE)
    assert m.descriptor.media_type == MEDIA_TYPE_MANIFEST
    i = parse_manifest(doc(manifests=[]), MEDIA_TYPE_INDEX, image=IMAGE)
    assert i.descriptor.media_type == MEDIA_TYPE_INDEX


@pytest.mark.parametrize(
    ("data", "media_type", "message"),
    [
        (b"{not json", MEDIA_TYPE_MANIFEST, "malformed JSON"),
        (b"[]", MEDIA_TYPE_MANIFEST, "expected a JSON object"),
        (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), None, "schema 1"),
        (doc(), "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema 1"),
        (json.dumps({"schemaVersion": "2"}).encode(), None, "schemaVersion must be 2"),
        (doc(mediaType=MEDIA_TYPE_INDEX, manifests=[]), MEDIA_TYPE_MANIFEST,
         "declares mediaType application/vnd.oci.image.index.v1+json but was served as"),
        (doc(config=CONFIG, layers=[], manifests=[]), None, "ambiguous"),
        (doc(mediaType=MEDIA_TYPE_INDEX, manifests=[], config=CONFIG), None,
         "must not have config"),
        (doc(mediaType=MEDIA_TYPE_MANIFEST, config=CONFIG, layers=[], manifests=[]), None,
         "must not have manifests"),
        (doc(mediaType=MEDIA_TYPE_INDEX, manifests={}), None, "manifests must be a list"),
        (doc(mediaType=MEDIA_TYPE_MANIFEST, config=CONFIG), None, "layers must be a list"),
        (doc(mediaType=MEDIA_TYPE_MANIFEST, layers=[]), None, "config: expected a descriptor"),
        (doc(mediaType=MEDIA_TYPE_MANIFEST, config={**CONFIG, "digest": "sha256:xyz"}, layers=[]),
         None, "config: invalid digest"),
        (doc(mediaType=MEDIA_TYPE_MANIFEST, config={**CONFIG, "size": "1"}, layers=[]), None,
         "config: descriptor size must be an integer"),
        (doc(mediaType=MEDIA_TYPE_MANIFEST, config=CONFIG, layers=[{**LAYER, "size": -1}]), None,
         "layers[0]: descriptor"),
        (doc(mediaType=MEDIA_TYPE_MANIFEST, config=CONFIG, layers=[LAYER, {"digest": 1}]), None,
         "layers[1]"),
        (doc(mediaType=MEDIA_TYPE_MANIFEST,
             config={**CONFIG, "mediaType": "application/vnd.cncf.helm.config.v1+json"},
             layers=[]), None, "not a container image"),
        (doc(mediaType=MEDIA_TYPE_MANIFEST, config=CONFIG,
             layers=[{**LAYER, "mediaType": "text/plain"}]), None,
         "layers[0]: unsupported layer media type text/plain"),
        (doc(mediaType="application/vnd.example+json"), None, "unsupported media type"),
        (doc(mediaType=MEDIA_TYPE_INDEX, manifests=[{**LAYER, "size": 1 << 41}]), None,
         "implausible size"),
    ],
)  # fmt: skip
def test_malformed_manifests_are_named(data: bytes, media_type, message: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(data, media_type, image=IMAGE, url="http://r/v2/app/manifests/1")
    text = str(err.value)
    assert message in text
    assert text.startswith(f"{IMAGE}: manifest {sha256_digest(data)}: ")
    assert text.endswith("[http://r/v2/app/manifests/1]")
    assert err.value.digest == sha256_digest(data)


# -- platforms ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "platform"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/arm64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("Linux/ARM64", Platform("linux", "arm64")),
        ("linux/i386", Platform("linux", "386")),
    ],
)
def test_parse_platform(text: str, platform: Platform) -> None:
    assert parse_platform(text) == platform


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_parse_platform_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="os/arch"):
        parse_platform(text)


def test_compatible_platforms() -> None:
    assert compatible_platforms(Platform("linux", "arm", "v7")) == [
        Platform("linux", "arm", "v7"),
        Platform("linux", "arm", "v6"),
        Platform("linux", "arm", "v5"),
    ]
    assert compatible_platforms(Platform("linux", "amd64", "v3")) == [
        Platform("linux", "amd64", "v3"),
        Platform("linux", "amd64", "v2"),
        Platform("linux", "amd64"),
    ]
    assert compatible_platforms(Platform("linux", "arm64", "v8")) == [Platform("linux", "arm64")]


INDEX = [
    Descriptor("application/vnd.in-toto+json", sha256_digest(b"att"), 10),  # no platform
    entry("unknown", os="unknown"),
    entry("amd64"),
    entry("arm64", "v8"),
    entry("arm", "v6"),
    entry("arm", "v7"),
    entry("s390x"),
    entry("amd64", os="windows"),
]


@pytest.mark.parametrize(
    ("want", "chosen"),
    [
        (Platform("linux", "amd64"), INDEX[2]),
        (Platform("linux", "arm64"), INDEX[3]),  # v8 in the index, none asked
        (Platform("linux", "aarch64", "v8"), INDEX[3]),
        (Platform("linux", "arm", "v7"), INDEX[5]),  # exact beats the earlier v6
        (Platform("linux", "arm"), INDEX[5]),  # arm means arm/v7
        (Platform("linux", "arm", "v8"), INDEX[5]),  # best compatible: v7
        (Platform("linux", "arm", "v6"), INDEX[4]),
        (Platform("linux", "amd64", "v2"), INDEX[2]),  # baseline amd64 runs on v2
        (Platform("windows", "amd64"), INDEX[7]),
    ],
)
def test_select_manifest(want: Platform, chosen: Descriptor) -> None:
    assert select_manifest(INDEX, want, image=IMAGE) == chosen


def test_select_manifest_lists_what_there_is() -> None:
    with pytest.raises(PlatformNotFoundError) as err:
        select_manifest(INDEX[:4], Platform("linux", "riscv64"), image=IMAGE)
    assert str(err.value) == (
        f"{IMAGE}: no manifest for platform linux/riscv64 "
        "(has: unknown/unknown, linux/amd64, linux/arm64)"
    )
    assert err.value.platform == Platform("linux", "riscv64")
    with pytest.raises(PlatformNotFoundError, match="linux/arm/v5"):
        select_manifest(INDEX, Platform("linux", "arm", "v5"), image=IMAGE)
    # an index entry of a layer media type is never chosen
    odd = Descriptor(
        MEDIA_TYPE_LAYER_GZIP, sha256_digest(b"x"), 1, platform=Platform("linux", "mips")
    )
    with pytest.raises(PlatformNotFoundError):
        select_manifest([odd], Platform("linux", "mips"), image=IMAGE)
    assert normalize_platform(Platform("LINUX", "X86_64", "V1")) == Platform("linux", "amd64")


def test_retry_after() -> None:
    assert _retry_after(None, default=2.0) == 2.0
    assert _retry_after("7", default=2.0) == 7.0
    assert _retry_after("soon", default=2.0) == 2.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT", default=2.0) == 0.0  # in the past
