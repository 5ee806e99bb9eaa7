"""The registry fixture and the push client against Debian's real docker-registry.

Everything goes over real HTTP to 127.0.0.1; pushed content is fetched back and
checked against the digests and sizes the layout recorded.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from images.builder import (
    BUSYBOX,
    BUSYBOX_EXTRA,
    BUSYBOX_LAYERED,
    BUSYBOX_MULTIARCH,
    BUSYBOX_UID,
    FIXTURE_TAGS,
    HTTPD,
    INDEX_HTML,
    FixtureImages,
)
from images.digest import sha256_digest
from images.layout import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, Descriptor
from images.push import PushError, PushResult, RegistryPusher
from tests.fixtures.registry import (
    HOST,
    RegistryServer,
    RegistryStartError,
    free_port,
    http_request,
    push_fixture_images,
    running_registry,
    start_registry,
    stop_registry,
)


def get_manifest(
    registry: RegistryServer, repository: str, reference: str, media_type: str
) -> tuple[bytes, str]:
    """Fetch a manifest; check status, Content-Type and Docker-Content-Digest."""
    resp = registry.request(f"/v2/{repository}/manifests/{reference}", accept=[media_type])
    assert resp.status == 200, resp.body
    assert resp.headers["content-type"] == media_type
    digest = sha256_digest(resp.body)
    assert resp.headers["docker-content-digest"] == digest
    return resp.body, digest


def get_blob(registry: RegistryServer, repository: str, desc: Descriptor) -> bytes:
    """Fetch a blob and check it is exactly what the descriptor promises."""
    resp = registry.request(f"/v2/{repository}/blobs/{desc.digest}")
    assert resp.status == 200, resp.body
    assert len(resp.body) == desc.size
    assert sha256_digest(resp.body) == desc.digest
    return resp.body


def pid_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- round trips --------------------------------------------------------------


def test_pushed_image_round_trips_by_tag_and_digest(
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
) -> None:
    image = fixture_images.images[BUSYBOX_LAYERED]
    pushed = pushed_images[BUSYBOX_LAYERED]
    repo = pushed.repository
    assert repo == "pinnace/busybox-layered"
    assert pushed.descriptor == fixture_images.layout.resolve(image.ref_names[0])
    assert pushed.tags == FIXTURE_TAGS

    local = fixture_images.layout.read_blob(image.manifest.digest)
    for reference in (*FIXTURE_TAGS, image.manifest.digest):
        body, digest = get_manifest(registry, repo, reference, MEDIA_TYPE_MANIFEST)
        assert body == local
        assert digest == image.manifest.digest
        assert len(body) == image.manifest.size

    manifest = json.loads(local)
    blobs = [Descriptor.from_json(manifest["config"])]
    blobs += [Descriptor.from_json(layer) for layer in manifest["layers"]]
    assert len(blobs) == 3  # config and two layers
    for desc in blobs:
        assert get_blob(registry, repo, desc) == fixture_images.layout.read_blob(desc.digest)
        head = registry.request(f"/v2/{repo}/blobs/{desc.digest}", method="HEAD")
        assert head.status == 200
        assert int(head.headers["content-length"]) == desc.size


def test_every_fixture_image_is_pushed(
    registry: RegistryServer, pushed_images: dict[str, PushResult], fixture_images: FixtureImages
) -> None:
    assert set(pushed_images) == {*fixture_images.images, BUSYBOX_MULTIARCH}
    for name, pushed in pushed_images.items():
        resp = registry.request(f"/v2/{pushed.repository}/tags/list")
        assert resp.status == 200
        assert sorted(json.loads(resp.body)["tags"]) == sorted(FIXTURE_TAGS), name


def test_platform_index_round_trips(
    registry: RegistryServer, pushed_images: dict[str, PushResult], fixture_images: FixtureImages
) -> None:
    multiarch = fixture_images.multiarch
    repo = pushed_images[BUSYBOX_MULTIARCH].repository
    for reference in (*FIXTURE_TAGS, multiarch.index.digest):
        body, digest = get_manifest(registry, repo, reference, MEDIA_TYPE_INDEX)
        assert digest == multiarch.index.digest
        assert body == fixture_images.layout.read_blob(digest)

    index = json.loads(body)
    platforms = [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]]
    assert platforms == [("linux", "amd64"), ("linux", "arm64")]
    for entry in index["manifests"]:
        child = Descriptor.from_json(entry)
        manifest_body, digest = get_manifest(registry, repo, child.digest, MEDIA_TYPE_MANIFEST)
        assert digest == child.digest and len(manifest_body) == child.size
        manifest = json.loads(manifest_body)
        config = json.loads(get_blob(registry, repo, Descriptor.from_json(manifest["config"])))
        assert config["architecture"] == entry["platform"]["architecture"]
        for layer in manifest["layers"]:
            get_blob(registry, repo, Descriptor.from_json(layer))


def test_unknown_tag_and_blob_are_404(
    registry: RegistryServer, pushed_images: dict[str, PushResult]
) -> None:
    repo = pushed_images[BUSYBOX].repository
    resp = registry.request(f"/v2/{repo}/manifests/no-such-tag", accept=[MEDIA_TYPE_MANIFEST])
    assert resp.status == 404
    assert json.loads(resp.body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"

    resp = registry.request(f"/v2/{repo}/blobs/{sha256_digest(b'never pushed')}")
    assert resp.status == 404
    assert json.loads(resp.body)["errors"][0]["code"] == "BLOB_UNKNOWN"

    resp = registry.request("/v2/pinnace/no-such-repo/manifests/latest")
    assert resp.status == 404


# -- the push client ----------------------------------------------------------


def test_chunked_upload_round_trips(
    registry: RegistryServer, fixture_images: FixtureImages
) -> None:
    image = fixture_images.images[BUSYBOX_EXTRA]
    repo = "pinnace-chunked/busybox-extra"
    pusher = RegistryPusher(registry.url, chunk_size=256 * 1024)
    result = pusher.push_from_layout(fixture_images.layout, image.ref_names[0], repo, ["chunked"])

    assert sorted(result.uploaded) == sorted(d.digest for d in (image.config, *image.layers))
    assert result.skipped == []
    patches = [
        line for line in registry.log().splitlines() if f'"PATCH /v2/{repo}/blobs/uploads/' in line
    ]
    # the ~1 MB layer goes up in 256 KiB pieces, the config in one
    assert len(patches) >= image.layers[0].size // (256 * 1024) + 1
    for desc in (image.config, *image.layers):
        get_blob(registry, repo, desc)
    _, digest = get_manifest(registry, repo, "chunked", MEDIA_TYPE_MANIFEST)
    assert digest == image.manifest.digest


def test_existing_blobs_are_not_uploaded_again(
    registry: RegistryServer, fixture_images: FixtureImages
) -> None:
    repo = "pinnace-dedup/busybox"
    layout = fixture_images.layout
    base, uid = fixture_images.images[BUSYBOX], fixture_images.images[BUSYBOX_UID]
    pusher = RegistryPusher(registry.url)

    first = pusher.push_from_layout(layout, base.ref_names[0], repo, ["base"])
    assert sorted(first.uploaded) == sorted([base.config.digest, base.layers[0].digest])

    # Same base layer, different config: only the config goes up.
    second = pusher.push_from_layout(layout, uid.ref_names[0], repo, ["uid"])
    assert second.uploaded == [uid.config.digest]
    assert second.skipped == [uid.layers[0].digest]

    again = pusher.push_from_layout(layout, base.ref_names[0], repo, ["base"])
    assert again.uploaded == []


def test_push_errors_carry_the_url_and_status(
    registry: RegistryServer, fixture_images: FixtureImages
) -> None:
    pusher = RegistryPusher(registry.url)
    missing = fixture_images.images[BUSYBOX].layers[0]
    with pytest.raises(PushError) as err:
        # A manifest whose layer the repository has never seen is refused.
        pusher.push_manifest(
            "pinnace-empty/x",
            "latest",
            MEDIA_TYPE_MANIFEST,
            fixture_images.layout.read_blob(fixture_images.images[BUSYBOX].manifest.digest),
        )
    assert err.value.status == 400
    assert err.value.url.endswith("/v2/pinnace-empty/x/manifests/latest")
    assert "BLOB_UNKNOWN" in str(err.value) or "MANIFEST_BLOB_UNKNOWN" in str(err.value)
    assert not pusher.blob_exists("pinnace-empty/x", missing.digest)

    with pytest.raises(PushError) as refused:
        RegistryPusher(f"http://{HOST}:{free_port()}").blob_exists("x/y", missing.digest)
    assert refused.value.status is None


# -- the fixture's process handling -------------------------------------------


def test_stop_registry_ends_the_process(scratch_dir: Path) -> None:
    server = start_registry(scratch_dir)
    try:
        pid, port = server.pid, server.port
        assert pid_running(pid)
        assert "docker-registry" in " ".join(psutil.Process(pid).cmdline())
        assert http_request(f"{server.url}/v2/").status == 200
    finally:
        stop_registry(server)
    assert not pid_running(pid)
    assert server.process.returncode is not None
    with pytest.raises(ConnectionRefusedError), socket.create_connection((HOST, port), timeout=2):
        pass
    stop_registry(server)  # idempotent


def test_running_registry_stops_and_cleans_up_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError, match="test body failed"), running_registry() as server:
        pid, workdir = server.pid, server.workdir
        assert pid_running(pid) and workdir.is_dir()
        raise RuntimeError("test body failed")
    assert not pid_running(pid)
    assert not workdir.exists()


def test_start_retries_on_a_port_in_use(scratch_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, free_port()])
        server = start_registry(scratch_dir, port_picker=lambda: next(ports))
        try:
            assert server.port != busy
            assert "address already in use" in server.log()
            assert http_request(f"{server.url}/v2/").status == 200
        finally:
            stop_registry(server)
    assert not pid_running(server.pid)


def test_start_failure_reports_the_log(scratch_dir: Path) -> None:
    with pytest.raises(RegistryStartError) as err:
        start_registry(scratch_dir, port_picker=lambda: 70000)  # not a valid port
    assert err.value.log_path == scratch_dir / "registry.log"
    assert "invalid port" in str(err.value)
    assert "exited with status" in str(err.value)


def test_push_fixture_images_to_a_fresh_registry(
    fresh_registry: RegistryServer, fixture_images: FixtureImages
) -> None:
    results = push_fixture_images(fresh_registry, fixture_images, names=[HTTPD], prefix="fresh")
    assert list(results) == [HTTPD]
    resp = fresh_registry.request("/v2/_catalog")
    assert json.loads(resp.body)["repositories"] == ["fresh/httpd"]


# -- the httpd image really serves --------------------------------------------


@contextlib.contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess stopped by PID at exit: SIGTERM, then SIGKILL."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.root
def test_httpd_image_serves_index_html(
    require_root: None,
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    scratch_dir: Path,
) -> None:
    """Pull the httpd image over HTTP, unpack it, and run its entrypoint in a chroot."""
    repo = pushed_images[HTTPD].repository
    body, _ = get_manifest(registry, repo, "latest", MEDIA_TYPE_MANIFEST)
    manifest = json.loads(body)
    config = json.loads(get_blob(registry, repo, Descriptor.from_json(manifest["config"])))
    rootfs = scratch_dir / "rootfs"
    rootfs.mkdir()
    for layer in manifest["layers"]:
        blob = get_blob(registry, repo, Descriptor.from_json(layer))
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as tar:
            tar.extractall(rootfs, filter="data")

    entrypoint = list(config["config"]["Entrypoint"])
    assert entrypoint[:2] == ["busybox", "httpd"]
    port = free_port()
    # httpd binds 0.0.0.0 by default: keep it on the loopback.
    entrypoint[entrypoint.index("-p") + 1] = f"{HOST}:{port}"
    with running(["chroot", str(rootfs), *entrypoint], scratch_dir / "httpd.log") as proc:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (scratch_dir / "httpd.log").read_text()
            try:
                resp = http_request(f"http://{HOST}:{port}/index.html", timeout=2)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "httpd did not start listening"
                time.sleep(0.05)
        assert resp.status == 200
        assert resp.body == INDEX_HTML
        pid = proc.pid
    assert not pid_running(pid)
