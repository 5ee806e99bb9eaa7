"""Pulling images over real HTTP into the real content store.

Three kinds of registry, all on 127.0.0.1:
  * Debian's docker-registry (the `registry` fixture, and our own instances
    with htpasswd and with token auth, serving the same storage);
  * a cutting proxy in front of it, to break a layer download midway;
  * a small fake registry (http.server) for what a real one never does on its
    own: wrong bytes for a digest, truncated blobs, malformed manifests,
    missing blobs, 401/403/429.
Every test checks what the content store holds afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from images.builder import BUSYBOX, BUSYBOX_LAYERED, BUSYBOX_MULTIARCH, FixtureImages
from images.content import ContentStore
from images.digest import sha256_digest
from images.hosts import RegistryConfig, parse_registry_config
from images.layout import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, Descriptor, Platform
from images.mediatypes import (
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
)
from images.pull import PullProgress, PullResult, pull
from images.push import PushResult, RegistryPusher
from images.registry import (
    BlobInterruptedError,
    ContentDigestMismatchError,
    ContentSizeError,
    FetchedIndex,
    FetchedManifest,
    ForbiddenError,
    ManifestError,
    NotFoundError,
    PlatformNotFoundError,
    RegistryClient,
    RegistryUnavailableError,
    TooManyRequestsError,
    UnauthorizedError,
)
from tests.fixtures.registry import (
    DOCKER_REGISTRY,
    HOST,
    RegistryServer,
    free_port,
    http_request,
    push_fixture_images,
    start_registry,
    stop_registry,
)

LINUX_ARM64 = Platform("linux", "arm64")


class Sleeps(list[float]):
    """Stands in for time.sleep: records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(config: RegistryConfig | None = None, **kw) -> RegistryClient:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("timeout", 10.0)
    return RegistryClient(config, **kw)


@pytest.fixture
def store(scratch_dir: Path) -> ContentStore:
    return ContentStore(scratch_dir / "content")


def kept_bytes(store: ContentStore) -> dict[str, int]:
    """Partial downloads the store keeps for a resume (empty ingests left out)."""
    return {i.digest: i.offset for i in store.ingests() if i.offset > 0}


def blobs_of(store: ContentStore) -> set[str]:
    return {b.digest for b in store.walk()}


def assert_blob(store: ContentStore, desc: Descriptor, expected: bytes) -> None:
    path = store.path(desc.digest)
    data = path.read_bytes()
    assert len(data) == desc.size
    assert sha256_digest(data) == desc.digest
    assert data == expected


def layout_bytes(fixture_images: FixtureImages, digest: str) -> bytes:
    return fixture_images.layout.read_blob(digest)


# -- pulls from docker-registry --------------------------------------------------


def test_pull_by_tag(
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
    store: ContentStore,
) -> None:
    image = fixture_images.images[BUSYBOX_LAYERED]
    events: list[tuple[str, PullProgress]] = []
    lock = threading.Lock()

    def progress(event: PullProgress) -> None:
        with lock:
            events.append((threading.current_thread().name, event))

    ref = f"{registry.host}/{pushed_images[BUSYBOX_LAYERED].repository}:latest"
    result = pull(ref, store, client=make_client(), progress=progress)

    assert str(result.reference) == ref
    assert result.target == Descriptor(
        MEDIA_TYPE_MANIFEST, image.manifest.digest, image.manifest.size
    )
    assert result.manifest == result.target
    assert result.config.digest == image.config.digest
    assert result.layers == image.layers
    assert result.indexes == ()
    assert result.platform is None
    assert result.source == registry.url  # plain HTTP: allowed on loopback (after HTTPS fails)
    assert result.downloaded == (image.config.digest, *(d.digest for d in image.layers))
    assert result.present == ()

    for desc in (image.config, *image.layers, image.manifest):
        assert_blob(store, desc, layout_bytes(fixture_images, desc.digest))
    assert blobs_of(store) == {image.manifest.digest, image.config.digest} | {
        d.digest for d in image.layers
    }
    assert kept_bytes(store) == {}

    # progress: started, bytes, done per blob, from the download threads
    for desc in (image.config, *image.layers):
        mine = [e for _, e in events if e.digest == desc.digest]
        assert mine[0].status == "started" and mine[0].done == 0
        assert mine[-1].status == "done" and mine[-1].done == desc.size
        assert all(e.total == desc.size for e in mine)
        done = [e.done for e in mine]
        assert done == sorted(done)
        assert [e.kind for e in mine] == ["config" if desc == image.config else "layer"] * len(mine)
    assert {name.split("_")[0] for name, _ in events} == {"pinnace-pull"}

    # again: everything is there, nothing is downloaded
    again = pull(ref, store, client=make_client())
    assert again.downloaded == ()
    assert again.present == result.downloaded


def test_pull_by_digest(
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
    store: ContentStore,
) -> None:
    image = fixture_images.images[BUSYBOX]
    repo = pushed_images[BUSYBOX].repository
    result = pull(f"{registry.host}/{repo}@{image.manifest.digest}", store, client=make_client())
    assert result.reference.tag is None
    assert result.manifest.digest == image.manifest.digest
    assert store.has(image.manifest.digest) and store.has(image.layers[0].digest)

    # a digest the repository does not have
    missing = sha256_digest(b"no such manifest")
    with pytest.raises(NotFoundError) as err:
        pull(f"{registry.host}/{repo}@{missing}", store, client=make_client())
    assert str(err.value).startswith(
        f"{registry.host}/{repo}@{missing}: manifest {missing} not found"
    )
    assert "MANIFEST_UNKNOWN" in str(err.value)


def test_two_platform_index(
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
    store: ContentStore,
) -> None:
    multiarch = fixture_images.multiarch
    amd64, arm64 = multiarch.images
    ref = f"{registry.host}/{pushed_images[BUSYBOX_MULTIARCH].repository}:1.0"
    client = make_client()

    default = pull(ref, store, client=client)
    assert default.target == Descriptor(
        MEDIA_TYPE_INDEX, multiarch.index.digest, multiarch.index.size
    )
    assert default.indexes == (default.target,)
    assert default.platform == Platform("linux", "amd64")
    assert default.manifest.digest == amd64.manifest.digest
    assert default.config.digest == amd64.config.digest

    arm = pull(ref, store, client=client, platform=LINUX_ARM64)
    assert arm.platform == LINUX_ARM64
    assert arm.manifest.digest == arm64.manifest.digest
    assert arm.downloaded == (arm64.config.digest,)  # the layers are shared
    assert arm.present == (arm64.layers[0].digest,)
    config = json.loads(store.path(arm64.config.digest).read_bytes())
    assert config["architecture"] == "arm64"
    for desc in (multiarch.index, amd64.manifest, arm64.manifest, amd64.config, arm64.config):
        assert_blob(store, desc, layout_bytes(fixture_images, desc.digest))

    with pytest.raises(PlatformNotFoundError) as err:
        pull(ref, store, client=client, platform=Platform("linux", "s390x"))
    assert "no manifest for platform linux/s390x (has: linux/amd64, linux/arm64)" in str(err.value)
    assert str(err.value).startswith(ref)


def docker_manifest(fixture_images: FixtureImages, name: str, index: int | None = None) -> bytes:
    """The fixture image re-described with Docker's media types (same blobs)."""
    image = fixture_images.images[name] if index is None else fixture_images.multiarch.images[index]
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_DOCKER_CONFIG,
            "size": image.config.size,
            "digest": image.config.digest,
        },
        "layers": [
            {"mediaType": MEDIA_TYPE_DOCKER_LAYER_GZIP, "size": d.size, "digest": d.digest}
            for d in image.layers
        ],
    }
    return json.dumps(manifest, indent=3).encode()  # docker's own spacing


def push_blobs(pusher: RegistryPusher, repo: str, fixture_images: FixtureImages, descs) -> None:
    for desc in descs:
        if not pusher.blob_exists(repo, desc.digest):
            with fixture_images.layout.open_blob(desc.digest) as f:
                pusher.push_blob(repo, desc.digest, desc.size, f)


def test_docker_schema2_manifest_and_manifest_list(
    registry: RegistryServer, fixture_images: FixtureImages, store: ContentStore
) -> None:
    repo = "pinnace-docker/busybox"
    pusher = RegistryPusher(registry.url)
    amd64, arm64 = fixture_images.multiarch.images
    push_blobs(pusher, repo, fixture_images, (amd64.config, arm64.config, *amd64.layers))
    single = docker_manifest(fixture_images, BUSYBOX)
    image = fixture_images.images[BUSYBOX]
    push_blobs(pusher, repo, fixture_images, (image.config, *image.layers))
    single_digest = pusher.push_manifest(repo, "single", MEDIA_TYPE_DOCKER_MANIFEST, single)
    children = [docker_manifest(fixture_images, "", i) for i in (0, 1)]
    entries = []
    for data, built in zip(children, (amd64, arm64), strict=True):
        digest = pusher.push_manifest(repo, sha256_digest(data), MEDIA_TYPE_DOCKER_MANIFEST, data)
        entries.append(
            {
                "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
                "size": len(data),
                "digest": digest,
                "platform": built.platform.to_json(),
            }
        )
    listing = json.dumps(
        {"schemaVersion": 2, "mediaType": MEDIA_TYPE_DOCKER_LIST, "manifests": entries}, indent=3
    ).encode()
    list_digest = pusher.push_manifest(repo, "list", MEDIA_TYPE_DOCKER_LIST, listing)

    client = make_client()
    result = pull(f"{registry.host}/{repo}:single", store, client=client)
    assert result.manifest == Descriptor(MEDIA_TYPE_DOCKER_MANIFEST, single_digest, len(single))
    assert result.config == Descriptor(
        MEDIA_TYPE_DOCKER_CONFIG, image.config.digest, image.config.size
    )
    assert result.layers[0].media_type == MEDIA_TYPE_DOCKER_LAYER_GZIP
    assert store.path(single_digest).read_bytes() == single  # stored byte for byte

    arm = pull(f"{registry.host}/{repo}:list", store, client=client, platform=LINUX_ARM64)
    assert arm.target == Descriptor(MEDIA_TYPE_DOCKER_LIST, list_digest, len(listing))
    assert arm.manifest.digest == sha256_digest(children[1])
    assert arm.config.digest == arm64.config.digest
    assert store.path(list_digest).read_bytes() == listing

    # the client API one step at a time
    resolved = client.resolve(f"{registry.host}/{repo}:list")
    top = client.fetch_manifest(resolved)
    assert isinstance(top, FetchedIndex) and top.media_type == MEDIA_TYPE_DOCKER_LIST
    chosen, indexes = client.resolve_platform(resolved)
    assert isinstance(chosen, FetchedManifest) and chosen.raw == children[0]
    assert indexes == [top]


def test_not_found_and_unreachable(
    registry: RegistryServer, pushed_images: dict[str, PushResult], store: ContentStore
) -> None:
    client = make_client()
    repo = pushed_images[BUSYBOX].repository
    with pytest.raises(NotFoundError) as err:
        pull(f"{registry.host}/{repo}:no-such-tag", store, client=client)
    assert str(err.value) == (
        f"{registry.host}/{repo}:no-such-tag: manifest no-such-tag not found: manifest unknown "
        f"(HTTP 404 MANIFEST_UNKNOWN) [{registry.url}/v2/{repo}/manifests/no-such-tag]"
    )
    with pytest.raises(NotFoundError) as no_repo:
        pull(f"{registry.host}/pinnace/nothing-here", store, client=client)
    assert "pinnace/nothing-here:latest: manifest latest not found" in str(no_repo.value)
    assert "(HTTP 404 MANIFEST_UNKNOWN)" in str(no_repo.value)  # docker-registry says so for both

    port = free_port()
    with pytest.raises(RegistryUnavailableError) as unreachable:
        pull(f"{HOST}:{port}/a/b", store, client=client)
    text = str(unreachable.value)
    assert text.startswith(f"{HOST}:{port}/a/b:latest: cannot reach the registry: ")
    assert f"https://{HOST}:{port}/v2/: connection refused" in text
    assert f"http://{HOST}:{port}/v2/: connection refused" in text
    assert blobs_of(store) == set()


def test_mirrors_are_tried_in_order(
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
    store: ContentStore,
) -> None:
    repo = pushed_images[BUSYBOX].repository
    dead = f"http://{HOST}:{free_port()}"
    config = parse_registry_config(
        {"hosts": {"registry.k8s.io": {"mirrors": [dead, registry.url]}}}
    )
    result = pull(f"registry.k8s.io/{repo}:latest", store, client=make_client(config))
    assert result.source == registry.url
    assert result.manifest.digest == fixture_images.images[BUSYBOX].manifest.digest

    # a mirror without the image, then an unreachable registry: both are reported
    upstream = f"{HOST}:{free_port()}"
    config = parse_registry_config({"hosts": {upstream: {"mirrors": [registry.url]}}})
    with pytest.raises(RegistryUnavailableError) as err:
        pull(f"{upstream}/pinnace/not-mirrored", store, client=make_client(config))
    assert "cannot reach the registry" in str(err.value)
    notes = getattr(err.value, "__notes__", [])
    assert len(notes) == 1 and "also tried mirror" in notes[0] and "not found" in notes[0]


def test_concurrent_pulls_of_one_image_share_the_store(
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
    store: ContentStore,
) -> None:
    ref = f"{registry.host}/{pushed_images[BUSYBOX_LAYERED].repository}:latest"
    results: list[PullResult] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(pull(ref, store, client=make_client()))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len({r.manifest.digest for r in results}) == 1
    image = fixture_images.images[BUSYBOX_LAYERED]
    for desc in (image.config, *image.layers, image.manifest):
        assert_blob(store, desc, layout_bytes(fixture_images, desc.digest))
    assert kept_bytes(store) == {}


# -- an interrupted pull ------------------------------------------------------------


@dataclass
class Logged:
    method: str
    path: str
    headers: dict[str, str]


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # cut connections are the point
        pass


@contextlib.contextmanager
def serving(handler_cls: type[BaseHTTPRequestHandler], **attrs) -> Iterator[QuietServer]:
    """An http.server on 127.0.0.1 in a thread, shut down when the block ends."""
    server = QuietServer((HOST, 0), handler_cls)
    for k, v in attrs.items():
        setattr(server, k, v)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="pinnace-test-http", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def server_host(server: QuietServer) -> str:
    return f"{HOST}:{server.server_address[1]}"


class CuttingProxy(BaseHTTPRequestHandler):
    """Forwards to the upstream registry; the first `cuts` downloads of blob
    `victim` are cut off after `cut_after` body bytes."""

    server: QuietServer

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._forward()

    def do_GET(self) -> None:
        self._forward()

    def _forward(self) -> None:
        srv = self.server
        srv.log.append(Logged(self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        conn = http.client.HTTPConnection(srv.upstream, timeout=10)  # type: ignore[attr-defined]
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        conn.request(self.command, self.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "date", "server"):
                self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = self.path.endswith(srv.victim) and srv.cuts > 0  # type: ignore[attr-defined]
        if cut:
            srv.cuts -= 1  # type: ignore[attr-defined]
            self.wfile.write(body[: srv.cut_after])  # type: ignore[attr-defined]
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


def test_a_cut_download_resumes_with_a_range_request(
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
    store: ContentStore,
) -> None:
    image = fixture_images.images[BUSYBOX_LAYERED]
    victim = max(image.layers, key=lambda d: d.size)
    cut_after = victim.size // 3
    repo = pushed_images[BUSYBOX_LAYERED].repository
    with serving(
        CuttingProxy, upstream=registry.host, victim=victim.digest, cuts=1, cut_after=cut_after,
        log=[],
    ) as proxy:  # fmt: skip
        sleeps = Sleeps()
        result = pull(
            f"{server_host(proxy)}/{repo}:latest", store, client=make_client(sleep=sleeps)
        )
        blob_gets = [r for r in proxy.log if r.path.endswith(victim.digest)]  # type: ignore[attr-defined]
    assert [r.headers.get("Range") for r in blob_gets] == [None, f"bytes={cut_after}-"]
    assert len(sleeps) == 1  # one short back-off before the retry
    assert victim.digest in result.downloaded
    assert_blob(store, victim, layout_bytes(fixture_images, victim.digest))
    assert kept_bytes(store) == {}


def test_a_failed_pull_is_resumed_by_the_next_one(
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
    store: ContentStore,
) -> None:
    image = fixture_images.images[BUSYBOX]
    victim = image.layers[0]
    cut_after = victim.size // 2
    repo = pushed_images[BUSYBOX].repository
    with serving(
        CuttingProxy, upstream=registry.host, victim=victim.digest, cuts=1, cut_after=cut_after,
        log=[],
    ) as proxy:  # fmt: skip
        ref = f"{server_host(proxy)}/{repo}:latest"
        with pytest.raises(BlobInterruptedError) as err:
            pull(ref, store, client=make_client(blob_attempts=1))
        assert (
            f"blob {victim.digest}: connection closed at byte {cut_after} of {victim.size}"
            in str(err.value)
        )
        # nothing visible under the digest, the bytes kept for later, no manifest
        assert not store.has(victim.digest)
        assert kept_bytes(store) == {victim.digest: cut_after}
        assert not store.has(image.manifest.digest)

        result = pull(ref, store, client=make_client())
        blob_gets = [r for r in proxy.log if r.path.endswith(victim.digest)]  # type: ignore[attr-defined]
    assert [r.headers.get("Range") for r in blob_gets] == [None, f"bytes={cut_after}-"]
    assert victim.digest in result.downloaded
    assert_blob(store, victim, layout_bytes(fixture_images, victim.digest))
    assert kept_bytes(store) == {}


# -- a hostile registry ---------------------------------------------------------------


@dataclass
class Route:
    """What the fake registry answers for one path."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    honour_range: bool = True
    cut_at: int | None = None  # stop sending at this byte of the blob and cut the connection
    cuts: int = 1 << 30  # how many answers are cut
    length: int | None = None  # Content-Length to announce instead of the real one
    omit_length: bool = False  # no Content-Length: the body ends when the connection closes


class FakeRegistryHandler(BaseHTTPRequestHandler):
    server: QuietServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        fake: FakeRegistry = self.server.fake  # type: ignore[attr-defined]
        fake.log.append(Logged(self.command, self.path, dict(self.headers)))
        route = fake.route(urllib.parse.urlsplit(self.path).path)
        if callable(route):
            route(self)
            return
        if route is None:
            route = Route(
                json.dumps(
                    {"errors": [{"code": "NAME_UNKNOWN", "message": "nothing here"}]}
                ).encode(),
                404,
            )
        body, status, start = route.body, route.status, 0
        headers = dict(route.headers)
        wanted = self.headers.get("Range")
        if wanted and route.honour_range and status == 200:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            status = 206
        payload = body[start:]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if not route.omit_length:
            self.send_header(
                "Content-Length", str(route.length if route.length is not None else len(payload))
            )
        self.end_headers()
        if self.command == "HEAD":
            return
        if route.cut_at is not None and route.cuts > 0:
            route.cuts -= 1
            self.wfile.write(body[start : max(start, route.cut_at)])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(payload)


class FakeRegistry:
    def __init__(self, server: QuietServer) -> None:
        self.server = server
        self.routes: dict[str, Route | list[Route] | Callable[[BaseHTTPRequestHandler], None]] = {
            "/v2/": Route(b"{}", headers={"Docker-Distribution-Api-Version": "registry/2.0"})
        }
        self.log: list[Logged] = []
        self.lock = threading.Lock()

    @property
    def host(self) -> str:
        return server_host(self.server)

    def route(self, path: str):
        with self.lock:
            route = self.routes.get(path)
            if isinstance(route, list):
                return route.pop(0) if len(route) > 1 else route[0]
            return route

    def manifest(
        self, repo: str, ref: str, data: bytes, media_type: str = MEDIA_TYPE_MANIFEST, **kw
    ):
        headers = {"Content-Type": media_type, "Docker-Content-Digest": sha256_digest(data)}
        headers.update(kw.pop("headers", {}))
        self.routes[f"/v2/{repo}/manifests/{ref}"] = Route(data, headers=headers, **kw)

    def blob(self, repo: str, digest: str, data: bytes, **kw) -> None:
        self.routes[f"/v2/{repo}/blobs/{digest}"] = Route(data, **kw)

    def image(self, repo: str, fixture_images: FixtureImages, name: str = BUSYBOX) -> None:
        """Serve a fixture image faithfully, under :latest and its digest."""
        image = fixture_images.images[name]
        data = layout_bytes(fixture_images, image.manifest.digest)
        self.manifest(repo, "latest", data)
        self.manifest(repo, image.manifest.digest, data)
        for desc in (image.config, *image.layers):
            self.blob(repo, desc.digest, layout_bytes(fixture_images, desc.digest))

    def requests_for(self, suffix: str) -> list[Logged]:
        return [r for r in self.log if r.path.endswith(suffix)]


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    with serving(FakeRegistryHandler) as server:
        fake = FakeRegistry(server)
        server.fake = fake  # type: ignore[attr-defined]
        yield fake


def test_fake_registry_serves_a_good_image(
    fake: FakeRegistry, fixture_images: FixtureImages, store: ContentStore
) -> None:
    fake.image("good/app", fixture_images)
    result = pull(f"{fake.host}/good/app", store, client=make_client())
    assert result.manifest.digest == fixture_images.images[BUSYBOX].manifest.digest


def test_wrong_bytes_for_a_digest(
    fake: FakeRegistry, fixture_images: FixtureImages, store: ContentStore
) -> None:
    fake.image("evil/app", fixture_images)
    layer = fixture_images.images[BUSYBOX].layers[0]
    good = layout_bytes(fixture_images, layer.digest)
    fake.blob("evil/app", layer.digest, bytes(b ^ 0xFF for b in good[:64]) + good[64:])
    with pytest.raises(ContentDigestMismatchError) as err:
        pull(f"{fake.host}/evil/app", store, client=make_client())
    assert str(err.value).startswith(f"{fake.host}/evil/app:latest: blob {layer.digest}: ")
    assert (
        f"content has digest {sha256_digest(bytes(b ^ 0xFF for b in good[:64]) + good[64:])}"
        in str(err.value)
    )
    assert err.value.url == f"http://{fake.host}/v2/evil/app/blobs/{layer.digest}"
    assert not store.has(layer.digest)
    assert kept_bytes(store) == {}  # wrong bytes are not kept to resume from
    assert not store.has(fixture_images.images[BUSYBOX].manifest.digest)


def test_truncated_blob(fake: FakeRegistry, fixture_images: FixtureImages, store: ContentStore):
    fake.image("evil/app", fixture_images)
    layer = fixture_images.images[BUSYBOX].layers[0]
    data = layout_bytes(fixture_images, layer.digest)

    # announced whole, cut short every time: retried, then given up, bytes kept
    fake.blob("evil/app", layer.digest, data, cut_at=layer.size - 100)
    sleeps = Sleeps()
    with pytest.raises(BlobInterruptedError) as err:
        pull(f"{fake.host}/evil/app", store, client=make_client(sleep=sleeps))
    assert f"at byte {layer.size - 100} of {layer.size}, 3 attempts" in str(err.value)
    ranges = [r.headers.get("Range") for r in fake.requests_for(layer.digest)]
    assert ranges == [None, f"bytes={layer.size - 100}-", f"bytes={layer.size - 100}-"]
    assert len(sleeps) == 2
    assert not store.has(layer.digest)
    assert kept_bytes(store) == {layer.digest: layer.size - 100}

    # short and honest about it (Content-Length too small): refused at once, not kept
    fresh = ContentStore(store.root.parent / "content2")
    fake.blob("evil/app", layer.digest, data[:-100], honour_range=False)
    with pytest.raises(
        ContentSizeError, match=f"announces {layer.size - 100} bytes, expected {layer.size}"
    ):
        pull(f"{fake.host}/evil/app", fresh, client=make_client())
    assert not fresh.has(layer.digest) and kept_bytes(fresh) == {}

    # too long, with no Content-Length to warn: stopped at the descriptor's size
    fake.blob("evil/app", layer.digest, data + b"tail", omit_length=True)
    with pytest.raises(ContentSizeError, match=f"more than the {layer.size} bytes"):
        pull(f"{fake.host}/evil/app", fresh, client=make_client())
    assert not fresh.has(layer.digest) and kept_bytes(fresh) == {}


def test_a_registry_ignoring_range_restarts_cleanly(
    fake: FakeRegistry, fixture_images: FixtureImages, store: ContentStore
) -> None:
    fake.image("flaky/app", fixture_images)
    layer = fixture_images.images[BUSYBOX].layers[0]
    data = layout_bytes(fixture_images, layer.digest)
    fake.blob("flaky/app", layer.digest, data, cut_at=5000, cuts=1, honour_range=False)
    pull(f"{fake.host}/flaky/app", store, client=make_client())
    assert [r.headers.get("Range") for r in fake.requests_for(layer.digest)] == [
        None,
        "bytes=5000-",
    ]
    assert_blob(store, layer, data)


def test_wrong_bytes_kept_from_an_earlier_pull_are_thrown_away(
    fake: FakeRegistry, fixture_images: FixtureImages, store: ContentStore
) -> None:
    fake.image("good/app", fixture_images)
    layer = fixture_images.images[BUSYBOX].layers[0]
    with store.writer(layer.digest, layer.size) as w:  # a partial download gone bad
        w.write(b"\0" * 4096)
    assert kept_bytes(store) == {layer.digest: 4096}
    pull(f"{fake.host}/good/app", store, client=make_client())
    assert [r.headers.get("Range") for r in fake.requests_for(layer.digest)] == [
        "bytes=4096-",
        None,
    ]
    assert_blob(store, layer, layout_bytes(fixture_images, layer.digest))


def test_manifest_pointing_to_a_missing_blob(
    fake: FakeRegistry, fixture_images: FixtureImages, store: ContentStore
) -> None:
    fake.image("evil/app", fixture_images)
    image = fixture_images.images[BUSYBOX]
    layer = image.layers[0]
    del fake.routes[f"/v2/evil/app/blobs/{layer.digest}"]
    with pytest.raises(NotFoundError) as err:
        pull(f"{fake.host}/evil/app", store, client=make_client())
    assert str(err.value).startswith(
        f"{fake.host}/evil/app:latest: blob {layer.digest} not found: nothing here (HTTP 404 NAME_UNKNOWN)"
    )
    assert err.value.status == 404
    assert not store.has(layer.digest)
    assert not store.has(image.manifest.digest)
    # the config, downloaded at the same time, may be committed (verified, GC removes
    # it if no image needs it) or cut short by the failure and kept to resume
    assert set(kept_bytes(store)) <= {image.config.digest}
    assert blobs_of(store) <= {image.config.digest}


@pytest.mark.parametrize(
    ("body", "media_type", "message"),
    [
        (b'{"schemaVersion": 2, "config": ', MEDIA_TYPE_MANIFEST, "malformed JSON"),
        (b'{"schemaVersion": 2, "mediaType": "%s", "layers": []}' % MEDIA_TYPE_MANIFEST.encode(),
         MEDIA_TYPE_MANIFEST, "config: expected a descriptor"),
        (b'{"schemaVersion": 1, "name": "x", "fsLayers": []}',
         "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema 1"),
        (b'{"schemaVersion": 2, "mediaType": "%s", "manifests": []}' % MEDIA_TYPE_INDEX.encode(),
         MEDIA_TYPE_MANIFEST, "declares mediaType"),
    ],
)  # fmt: skip
def test_malformed_manifests(
    fake: FakeRegistry, store: ContentStore, body: bytes, media_type: str, message: str
) -> None:
    fake.manifest("evil/app", "latest", body, media_type)
    fake.manifest("evil/app", sha256_digest(body), body, media_type)
    with pytest.raises(ManifestError) as err:
        pull(f"{fake.host}/evil/app", store, client=make_client())
    assert message in str(err.value)
    assert str(err.value).startswith(f"{fake.host}/evil/app:latest: ")
    assert blobs_of(store) == set() and kept_bytes(store) == {}


def test_manifest_digest_mismatch(
    fake: FakeRegistry, fixture_images: FixtureImages, store: ContentStore
) -> None:
    image = fixture_images.images[BUSYBOX]
    good = layout_bytes(fixture_images, image.manifest.digest)
    other = layout_bytes(fixture_images, fixture_images.images[BUSYBOX_LAYERED].manifest.digest)
    # pulled by digest, served something else
    fake.manifest("evil/app", image.manifest.digest, other)
    with pytest.raises(ContentDigestMismatchError) as err:
        pull(f"{fake.host}/evil/app@{image.manifest.digest}", store, client=make_client())
    assert f"manifest {image.manifest.digest}: content has digest {sha256_digest(other)}" in str(
        err.value
    )
    # a tag whose HEAD announces one digest, and a GET by that digest that brings other bytes
    fake.manifest("evil/app", "latest", good)
    fake.manifest(
        "evil/app",
        image.manifest.digest,
        other,
        headers={"Docker-Content-Digest": image.manifest.digest},
    )
    with pytest.raises(ContentDigestMismatchError):
        pull(f"{fake.host}/evil/app:latest", store, client=make_client())
    # no usable HEAD: the GET by tag is hashed and checked against what it claims
    fake.routes["/v2/evil/app/manifests/latest"] = [
        Route(status=405),
        Route(
            other,
            headers={
                "Content-Type": MEDIA_TYPE_MANIFEST,
                "Docker-Content-Digest": image.manifest.digest,
            },
        ),
    ]
    with pytest.raises(ContentDigestMismatchError):
        pull(f"{fake.host}/evil/app:latest", store, client=make_client())
    assert blobs_of(store) == set()


def test_manifest_size_limit(fake: FakeRegistry, store: ContentStore) -> None:
    huge = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 << 20) + b'"}'
    fake.manifest("evil/app", "latest", huge)
    with pytest.raises(ManifestError, match="more than 4194304"):
        pull(f"{fake.host}/evil/app", store, client=make_client())


def registry_error(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


def test_http_errors_are_typed(fake: FakeRegistry, store: ContentStore) -> None:
    client = make_client()
    path = "/v2/locked/app/manifests/latest"
    fake.routes[path] = Route(
        registry_error("DENIED", "requested access to the resource is denied"), 403
    )
    with pytest.raises(ForbiddenError) as forbidden:
        pull(f"{fake.host}/locked/app", store, client=client)
    assert str(forbidden.value) == (
        f"{fake.host}/locked/app:latest: manifest latest: access denied: requested access to "
        f"the resource is denied (HTTP 403 DENIED) [http://{fake.host}{path}]"
    )
    assert [r.method for r in fake.requests_for(path)] == ["HEAD", "GET"]

    fake.routes[path] = Route(registry_error("UNAUTHORIZED", "who are you"), 401)  # no challenge
    with pytest.raises(UnauthorizedError, match="manifest latest: authentication failed"):
        pull(f"{fake.host}/locked/app", store, client=client)

    fake.routes[path] = Route(status=500)
    with pytest.raises(Exception, match=r"manifest latest: unexpected answer \(HTTP 500\)"):
        pull(f"{fake.host}/locked/app", store, client=client)


def test_429_honours_retry_after_a_bounded_number_of_times(
    fake: FakeRegistry, fixture_images: FixtureImages, store: ContentStore
) -> None:
    fake.image("busy/app", fixture_images)
    path = "/v2/busy/app/manifests/latest"
    good = fake.routes[path]
    slow_down = registry_error("TOOMANYREQUESTS", "slow down")
    fake.routes[path] = [
        Route(slow_down, 429, {"Retry-After": "2"}),
        Route(slow_down, 429, {"Retry-After": "1"}),
        good,  # type: ignore[list-item]
    ]
    sleeps = Sleeps()
    pull(f"{fake.host}/busy/app", store, client=make_client(sleep=sleeps))
    assert sleeps == [2.0, 1.0]

    fake.routes[path] = Route(slow_down, 429, {"Retry-After": "1"})
    sleeps = Sleeps()
    with pytest.raises(TooManyRequestsError) as err:
        pull(f"{fake.host}/busy/app", store, client=make_client(sleep=sleeps, max_retries=3))
    assert sleeps == [1.0, 1.0, 1.0]
    assert err.value.retry_after == 1.0
    assert "still refused after 3 retries" in str(err.value)

    fake.routes[path] = Route(slow_down, 429, {"Retry-After": "3600"})
    sleeps = Sleeps()
    with pytest.raises(TooManyRequestsError, match="asks to wait 3600s"):
        pull(f"{fake.host}/busy/app", store, client=make_client(sleep=sleeps))
    assert sleeps == []


# -- registries with authentication --------------------------------------------------


@pytest.fixture(scope="module")
def seeded_storage(fixture_images: FixtureImages) -> Iterator[Path]:
    """Registry storage holding busybox and the multi-platform index, written by an
    anonymous docker-registry (the push client cannot authenticate) that is then stopped."""
    with tempfile.TemporaryDirectory(prefix="pinnace-test-registry-") as tmp:
        server = start_registry(Path(tmp) / "seed")
        try:
            push_fixture_images(server, fixture_images, names=[BUSYBOX, BUSYBOX_MULTIARCH])
        finally:
            stop_registry(server)
        yield Path(tmp) / "seed" / "storage"


@contextlib.contextmanager
def auth_registry(storage: Path, auth: dict, attempts: int = 5) -> Iterator[RegistryServer]:
    """docker-registry with an `auth:` section, serving `storage`."""
    with tempfile.TemporaryDirectory(prefix="pinnace-test-registry-") as tmp:
        workdir = Path(tmp)
        log_path = workdir / "registry.log"
        server = None
        try:
            for _ in range(attempts):
                port = free_port()
                config = {
                    "version": 0.1,
                    "log": {"level": "info", "formatter": "text"},
                    "storage": {"filesystem": {"rootdirectory": str(storage)}},
                    "http": {"addr": f"{HOST}:{port}"},
                    "auth": auth,
                }
                (workdir / "config.yml").write_text(yaml.safe_dump(config))
                env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
                with open(log_path, "ab") as log:
                    process = subprocess.Popen(
                        [str(DOCKER_REGISTRY), "serve", str(workdir / "config.yml")],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    )  # fmt: skip
                server = RegistryServer(process, port, workdir, log_path)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and process.poll() is None:
                    with contextlib.suppress(OSError):
                        resp = http_request(f"{server.url}/v2/", timeout=1)
                        if resp.headers.get("docker-distribution-api-version") == "registry/2.0":
                            break
                    time.sleep(0.05)
                if process.poll() is None:
                    break
                if "address already in use" not in log_path.read_text():
                    raise RuntimeError(f"docker-registry failed:\n{log_path.read_text()}")
            else:
                raise RuntimeError("no free port for docker-registry")
            assert server is not None
            yield server
        finally:
            if server is not None:
                stop_registry(server)


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for docker-registry's htpasswd (it accepts bcrypt only), from
    libcrypt through the stdlib crypt module (deprecated, still in Python 3.11/3.12)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    # cost 4 (16 rounds): the minimum, the tests need no protection against brute force
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@pytest.fixture(scope="module")
def htpasswd_registry(seeded_storage: Path) -> Iterator[RegistryServer]:
    with tempfile.TemporaryDirectory(prefix="pinnace-test-htpasswd-") as tmp:
        htpasswd = Path(tmp) / "htpasswd"
        htpasswd.write_text(f"alice:{bcrypt_hash('wonderland')}\n")
        auth = {"htpasswd": {"realm": "pinnace-test", "path": str(htpasswd)}}
        with auth_registry(seeded_storage, auth) as server:
            yield server


def test_basic_auth_registry(
    htpasswd_registry: RegistryServer, fixture_images: FixtureImages, store: ContentStore
) -> None:
    host = htpasswd_registry.host
    ref = f"{host}/pinnace/busybox:latest"
    resp = http_request(f"{htpasswd_registry.url}/v2/")
    assert resp.status == 401 and resp.headers["www-authenticate"].startswith("Basic ")

    with pytest.raises(UnauthorizedError) as anonymous:
        pull(ref, store, client=make_client())
    assert "wants a username and password and none is configured" in str(anonymous.value)
    assert str(anonymous.value).startswith(f"{ref}: manifest latest: ")

    wrong = parse_registry_config(
        {"hosts": {host: {"auth": {"username": "alice", "password": "x"}}}}
    )
    with pytest.raises(UnauthorizedError, match="authentication failed"):
        pull(ref, store, client=make_client(wrong))

    right = parse_registry_config(
        {"hosts": {host: {"auth": {"username": "alice", "password": "wonderland"}}}}
    )
    result = pull(ref, store, client=make_client(right))
    assert result.manifest.digest == fixture_images.images[BUSYBOX].manifest.digest
    assert_blob(store, result.layers[0], layout_bytes(fixture_images, result.layers[0].digest))
    assert blobs_of(store) == {
        result.manifest.digest,
        result.config.digest,
        result.layers[0].digest,
    }


@dataclass
class TokenIssuer:
    """A token server in the docker token spec's shape, signing JWTs with RS256."""

    key: rsa.RSAPrivateKey
    cert_der: bytes
    service: str = "pinnace-test-registry"
    issuer: str = "pinnace-test-issuer"
    users: dict[str, tuple[str, bool]] = field(default_factory=dict)  # name -> (password, may pull)
    requests: list[dict[str, list[str]]] = field(default_factory=list)

    @classmethod
    def generate(cls) -> TokenIssuer:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinnace-test-token-issuer")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert_der=cert.public_bytes(serialization.Encoding.DER))

    def cert_pem(self) -> bytes:
        cert = x509.load_der_x509_certificate(self.cert_der)
        return cert.public_bytes(serialization.Encoding.PEM)

    def jwt(self, subject: str, access: list[dict]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300,
            "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access,
        }  # fmt: skip
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
        self.requests.append(query)
        user = None
        auth = handler.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if name in self.users and self.users[name][0] == password:
                user = name
        if user is None or query.get("service") != [self.service]:
            reply(handler, 401, {"details": "incorrect username or password"})
            return
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = ["pull"] if self.users[user][1] and "pull" in actions.split(",") else []
            access.append({"type": kind, "name": name, "actions": allowed})
        token = self.jwt(user, access)
        reply(handler, 200, {"token": token, "access_token": token, "expires_in": 300})


def reply(handler: BaseHTTPRequestHandler, status: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@dataclass
class TokenSetup:
    registry: RegistryServer
    issuer: TokenIssuer
    token_url: str


@pytest.fixture(scope="module")
def token_registry(seeded_storage: Path) -> Iterator[TokenSetup]:
    issuer = TokenIssuer.generate()
    issuer.users = {"alice": ("wonderland", True), "mallory": ("hunter2", False)}
    with (
        serving(FakeRegistryHandler) as token_server,
        tempfile.TemporaryDirectory(prefix="pinnace-test-token-") as tmp,
    ):
        fake = FakeRegistry(token_server)
        fake.routes = {"/token": issuer.handle}
        token_server.fake = fake  # type: ignore[attr-defined]
        bundle = Path(tmp) / "root.pem"
        bundle.write_bytes(issuer.cert_pem())
        token_url = f"http://{server_host(token_server)}/token"
        auth = {
            "token": {
                "realm": token_url,
                "service": issuer.service,
                "issuer": issuer.issuer,
                "rootcertbundle": str(bundle),
            }
        }
        with auth_registry(seeded_storage, auth) as server:
            yield TokenSetup(server, issuer, token_url)


def test_token_auth_registry(
    token_registry: TokenSetup, fixture_images: FixtureImages, store: ContentStore
) -> None:
    registry, issuer = token_registry.registry, token_registry.issuer
    host = registry.host
    challenge = http_request(f"{registry.url}/v2/").headers["www-authenticate"]
    assert challenge.startswith(f'Bearer realm="{token_registry.token_url}"')

    def creds(user: str, password: str) -> RegistryConfig:
        return parse_registry_config(
            {"hosts": {host: {"auth": {"username": user, "password": password}}}}
        )

    issuer.requests.clear()
    client = make_client(creds("alice", "wonderland"))
    busybox = pull(f"{host}/pinnace/busybox:latest", store, client=client)
    arm = pull(f"{host}/pinnace/busybox-multiarch:1.0", store, client=client, platform=LINUX_ARM64)
    assert busybox.manifest.digest == fixture_images.images[BUSYBOX].manifest.digest
    assert arm.manifest.digest == fixture_images.multiarch.images[1].manifest.digest
    # one token per repository, shared by the manifest and the concurrent blob requests
    assert [q["scope"] for q in issuer.requests] == [
        ["repository:pinnace/busybox:pull"],
        ["repository:pinnace/busybox-multiarch:pull"],
    ]
    assert all(q["account"] == ["alice"] for q in issuer.requests)

    ref = f"{host}/pinnace/busybox:latest"
    with pytest.raises(UnauthorizedError) as wrong:
        pull(ref, store, client=make_client(creds("alice", "nope")))
    assert (
        f"token server {token_registry.token_url} (HTTP 401) for {host}: refused user 'alice'"
        in str(wrong.value)
    )
    with pytest.raises(UnauthorizedError, match="refused an anonymous request"):
        pull(ref, store, client=make_client())
    with pytest.raises(UnauthorizedError) as no_access:
        pull(ref, store, client=make_client(creds("mallory", "hunter2")))
    assert "manifest latest: the credentials do not allow pulling it" in str(no_access.value)
    assert no_access.value.status == 401


def test_hashes_of_stored_blobs_match_their_names(
    registry: RegistryServer, pushed_images: dict[str, PushResult], store: ContentStore
) -> None:
    """Every committed blob, re-hashed from disk after a multi-image pull."""
    client = make_client()
    expected = set()
    for name in (BUSYBOX, BUSYBOX_LAYERED, BUSYBOX_MULTIARCH):
        r = pull(f"{registry.host}/{pushed_images[name].repository}:latest", store, client=client)
        expected |= {r.target.digest, r.manifest.digest, r.config.digest}
        expected |= {d.digest for d in r.layers}
    infos = list(store.walk())
    assert {i.digest for i in infos} == expected
    for info in infos:
        data = store.path(info.digest).read_bytes()
        assert f"sha256:{hashlib.sha256(data).hexdigest()}" == info.digest
        assert len(data) == info.size


def test_a_lone_manifest_for_another_platform_is_refused(registry, pushed_images, tmp_path):
    """A plain (non-index) amd64 image pulled for linux/arm64: containerd's answer, an error,
    and no layer fetched."""
    from images.content import ContentStore
    from images.layout import Platform
    from images.pull import pull
    from images.registry import PlatformNotFoundError

    store = ContentStore(tmp_path / "content")
    with pytest.raises(PlatformNotFoundError) as exc:
        pull(f"{registry.host}/pinnace/busybox:latest", store, platform=Platform("linux", "arm64"))
    assert "linux/arm64" in str(exc.value) and "linux/amd64" in str(exc.value)
    assert len(list(store.walk())) == 1  # the config only: it had to be read to know
    pull(f"{registry.host}/pinnace/busybox:latest", store)  # amd64, as the default
