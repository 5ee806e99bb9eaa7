"""The CRI ImageService over real gRPC (a grpc.aio server on a unix socket), pulling
from a real docker-registry on 127.0.0.1 into a real image store under tmp_path."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml

from cri.api import api_pb2, api_pb2_grpc
from cri.image_service import ImageService
from images.builder import (
    BUSYBOX,
    BUSYBOX_LAYERED,
    BUSYBOX_MULTIARCH,
    BUSYBOX_UID,
    BUSYBOX_USER,
    BuiltImage,
    FixtureImages,
)
from images.push import PushResult
from images.store import ImageStore, default_platform
from tests.fixtures.registry import (
    RegistryServer,
    free_port,
    push_fixture_images,
    start_registry,
    stop_registry,
)
from tests.integration.test_registry_pull import auth_registry, bcrypt_hash

pytestmark = pytest.mark.usefixtures("require_root")  # unpacking keeps owners and devices


# -- a grpc.aio server on its own event loop thread ------------------------------------


@contextlib.contextmanager
def aio_server(register: Callable[[grpc.aio.Server], None], socket_path: Path) -> Iterator[str]:
    """Serve with grpc.aio on `unix:<socket_path>` from an event loop in a thread of its
    own (tests stay synchronous); yield the target. Stopped and joined on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cri-test-loop", daemon=True)
    thread.start()
    server: grpc.aio.Server | None = None

    async def start() -> grpc.aio.Server:
        srv = grpc.aio.server()
        register(srv)
        srv.add_insecure_port(f"unix:{socket_path}")
        await srv.start()
        return srv

    try:
        server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        yield f"unix:{socket_path}"
    finally:
        if server is not None:
            asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@dataclass
class CRI:
    stub: api_pb2_grpc.ImageServiceStub
    store: ImageStore
    config_dir: Path
    used: set[str] = field(default_factory=set)

    def pull(self, ref: str, **auth: str) -> str:
        req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
        if auth:
            req.auth.CopyFrom(api_pb2.AuthConfig(**auth))
        return str(self.stub.PullImage(req, timeout=120).image_ref)

    def status(self, ref: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
        req = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref), verbose=verbose)
        resp: api_pb2.ImageStatusResponse = self.stub.ImageStatus(req, timeout=30)
        return resp

    def list(self, ref: str | None = None) -> list[api_pb2.Image]:
        req = api_pb2.ListImagesRequest()
        if ref is not None:
            req.filter.image.image = ref
        return list(self.stub.ListImages(req, timeout=30).images)

    def remove(self, ref: str) -> None:
        self.stub.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=30
        )

    def fs_info(self) -> api_pb2.FilesystemUsage:
        resp: api_pb2.ImageFsInfoResponse = self.stub.ImageFsInfo(
            api_pb2.ImageFsInfoRequest(), timeout=30
        )
        assert len(resp.image_filesystems) == 1
        usage: api_pb2.FilesystemUsage = resp.image_filesystems[0]
        return usage

    def write_config(self, hosts: dict) -> None:
        (self.config_dir / "registries.yaml").write_text(yaml.safe_dump({"hosts": hosts}))


@pytest.fixture
def cri(tmp_path: Path) -> Iterator[CRI]:
    store = ImageStore(tmp_path / "root")
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    used: set[str] = set()
    service = ImageService(store, registry_config_dir=str(config_dir), in_use=used.__contains__)
    try:
        with (
            aio_server(
                lambda s: api_pb2_grpc.add_ImageServiceServicer_to_server(service, s),
                tmp_path / "cri.sock",
            ) as target,
            grpc.insecure_channel(target) as channel,
        ):
            yield CRI(api_pb2_grpc.ImageServiceStub(channel), store, config_dir, used)
    finally:
        store.close()


def rpc_error(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value


def ref_of(registry: RegistryServer, pushed: dict[str, PushResult], name: str, tag: str) -> str:
    return f"{registry.host}/{pushed[name].repository}:{tag}"


def blob_size(image: BuiltImage) -> int:
    return image.manifest.size + image.config.size + sum(layer.size for layer in image.layers)


# -- pull, list, status --------------------------------------------------------------


def test_pull_list_and_status(
    cri: CRI,
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
) -> None:
    built = fixture_images.images[BUSYBOX_LAYERED]
    ref = ref_of(registry, pushed_images, BUSYBOX_LAYERED, "latest")
    repo = f"{registry.host}/{pushed_images[BUSYBOX_LAYERED].repository}"

    image_id = cri.pull(ref)
    assert image_id == built.config.digest

    [listed] = cri.list()
    assert listed.id == image_id
    assert list(listed.repo_tags) == [ref]
    assert list(listed.repo_digests) == [f"{repo}@{built.manifest.digest}"]
    assert listed.size == blob_size(built)
    assert listed.spec.image == image_id
    assert not listed.HasField("uid") and listed.username == ""  # the image has no User
    assert listed.pinned is False

    hex_id = image_id.removeprefix("sha256:")
    for name in (
        ref,
        image_id,
        hex_id,
        hex_id[:12],
        f"sha256:{hex_id[:12]}",
        f"{repo}@{built.manifest.digest}",
        built.manifest.digest,
        f"{registry.host}/{pushed_images[BUSYBOX_LAYERED].repository}",  # :latest added
    ):
        resp = cri.status(name)
        assert resp.image == listed, name
        assert dict(resp.info) == {}

    # the layers were unpacked by the pull: CreateContainer has nothing left to do
    img = cri.store.get(ref)
    assert cri.store.is_unpacked(img)
    info = json.loads(cri.status(ref, verbose=True).info["info"])
    assert info["id"] == image_id
    assert info["manifestDigest"] == built.manifest.digest
    assert info["diffIDs"] == list(built.diff_ids)
    assert info["chainID"] == img.top_chain_id and len(info["chainIDs"]) == 2
    assert info["unpacked"] is True
    assert info["imageSpec"]["rootfs"]["diff_ids"] == list(built.diff_ids)
    assert info["platform"]["architecture"] == default_platform().architecture


def test_a_multiplatform_image_is_known_by_its_index_digest(
    cri: CRI,
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
) -> None:
    ref = ref_of(registry, pushed_images, BUSYBOX_MULTIARCH, "1.0")
    repo = ref.rsplit(":", 1)[0]
    index = pushed_images[BUSYBOX_MULTIARCH].descriptor
    image_id = cri.pull(ref)
    mine = [
        i for i in fixture_images.multiarch.images if i.platform.architecture == "amd64"
    ]  # the host tier runs on x86_64
    assert image_id == mine[0].config.digest
    status = cri.status(f"{repo}@{index.digest}").image
    assert list(status.repo_digests) == [f"{repo}@{index.digest}"]
    assert cri.status(mine[0].manifest.digest).image.id == image_id


def test_user_of_the_image(
    cri: CRI, registry: RegistryServer, pushed_images: dict[str, PushResult]
) -> None:
    by_uid = cri.status(cri.pull(ref_of(registry, pushed_images, BUSYBOX_UID, "latest"))).image
    assert by_uid.HasField("uid") and by_uid.uid.value == 1000 and by_uid.username == ""
    by_name = cri.status(cri.pull(ref_of(registry, pushed_images, BUSYBOX_USER, "latest"))).image
    assert not by_name.HasField("uid") and by_name.username == "app"


def test_unknown_images_and_bad_references(cri: CRI) -> None:
    for ref in (
        "busybox",
        "127.0.0.1:1/nothing:here",
        "sha256:" + "0" * 64,
        "0123456789ab",
        "sha256:0123456789ab",
    ):
        resp = cri.status(ref)
        assert not resp.HasField("image"), ref  # kubelet pulls when this is unset
        assert cri.list(ref) == []
    for bad in ("Busy_Box", "busybox:bad tag", ""):
        with pytest.raises(grpc.RpcError) as caught:
            cri.status(bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    err = rpc_error(lambda: cri.status("Busy_Box"))
    assert "Busy_Box" in str(err.details()) and "lowercase" in str(err.details())


def test_list_filter(
    cri: CRI, registry: RegistryServer, pushed_images: dict[str, PushResult]
) -> None:
    one = cri.pull(ref_of(registry, pushed_images, BUSYBOX, "latest"))
    two = cri.pull(ref_of(registry, pushed_images, BUSYBOX_UID, "latest"))
    assert sorted(i.id for i in cri.list()) == sorted([one, two])
    assert [i.id for i in cri.list(ref_of(registry, pushed_images, BUSYBOX_UID, "latest"))] == [two]
    assert [i.id for i in cri.list(one)] == [one]
    assert cri.list(ref_of(registry, pushed_images, BUSYBOX, "nope")) == []


def test_names_are_normalised_like_docker(
    cri: CRI,
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
) -> None:
    # docker.io mirrored to the local registry, from the config dir the service was given
    cri.write_config({"docker.io": {"mirrors": [registry.url]}})
    repo = pushed_images[BUSYBOX].repository  # pinnace/busybox
    image_id = cri.pull(repo)
    assert image_id == fixture_images.images[BUSYBOX].config.digest
    image = cri.status(repo).image
    assert list(image.repo_tags) == [f"docker.io/{repo}:latest"]
    assert cri.status(f"docker.io/{repo}:latest").image == image
    assert cri.status(f"index.docker.io/{repo}").image == image


# -- errors -----------------------------------------------------------------------------


def test_pull_errors(
    cri: CRI, registry: RegistryServer, pushed_images: dict[str, PushResult]
) -> None:
    err = rpc_error(lambda: cri.pull("Not A Reference"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Not A Reference" in str(err.details())

    missing = ref_of(registry, pushed_images, BUSYBOX, "no-such-tag")
    err = rpc_error(lambda: cri.pull(missing))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert missing in str(err.details()) and "not found" in str(err.details())

    unreachable = f"127.0.0.1:{free_port()}/a/b:latest"
    err = rpc_error(lambda: cri.pull(unreachable))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert unreachable in str(err.details()) and "cannot reach" in str(err.details())

    cri.write_config({"docker.io": {"mirrors": ["http://example.com"]}})  # plain http, not loopback
    err = rpc_error(lambda: cri.pull("busybox"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "registries.yaml" in str(err.details())

    assert cri.list() == []
    assert list(cri.store.content.walk()) == []


# -- remove ---------------------------------------------------------------------------


def test_remove_by_tag_then_by_id(
    cri: CRI, registry: RegistryServer, pushed_images: dict[str, PushResult]
) -> None:
    latest = ref_of(registry, pushed_images, BUSYBOX, "latest")
    one_oh = ref_of(registry, pushed_images, BUSYBOX, "1.0")
    image_id = cri.pull(latest)
    assert cri.pull(one_oh) == image_id
    [image] = cri.list()
    assert list(image.repo_tags) == sorted([latest, one_oh])

    cri.remove(latest)  # a name: that name only
    assert not cri.status(latest).HasField("image")
    assert list(cri.status(one_oh).image.repo_tags) == [one_oh]
    assert list(cri.store.content.walk()) != []

    cri.remove(image_id)  # the ID: every name, and the blobs and layers with them
    assert cri.list() == []
    assert not cri.status(image_id).HasField("image")
    assert list(cri.store.content.walk()) == []
    assert list(cri.store.snapshotter.walk()) == []

    cri.remove(image_id)  # idempotent, as containerd
    cri.remove("busybox:never-pulled")


def test_remove_an_image_in_use(
    cri: CRI, registry: RegistryServer, pushed_images: dict[str, PushResult]
) -> None:
    latest = ref_of(registry, pushed_images, BUSYBOX, "latest")
    one_oh = ref_of(registry, pushed_images, BUSYBOX, "1.0")
    image_id = cri.pull(latest)
    cri.pull(one_oh)
    cri.used.add(image_id)

    err = rpc_error(lambda: cri.remove(image_id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert image_id in str(err.details()) and "in use" in str(err.details())
    cri.remove(latest)  # another name stays: untagging is fine
    err = rpc_error(lambda: cri.remove(one_oh))  # the last name is not
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert cri.status(image_id).image.repo_tags == [one_oh]

    cri.used.clear()
    cri.remove(one_oh)
    assert cri.list() == []


# -- credentials ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def htpasswd_registry(fixture_images: FixtureImages) -> Iterator[RegistryServer]:
    """docker-registry with basic auth (alice / wonderland) serving pinnace/busybox."""
    with tempfile.TemporaryDirectory(prefix="pinnace-test-cri-auth-") as tmp:
        seed = start_registry(Path(tmp) / "seed")
        try:
            push_fixture_images(seed, fixture_images, names=[BUSYBOX])
        finally:
            stop_registry(seed)
        htpasswd = Path(tmp) / "htpasswd"
        htpasswd.write_text(f"alice:{bcrypt_hash('wonderland')}\n")
        auth = {"htpasswd": {"realm": "pinnace-test", "path": str(htpasswd)}}
        with auth_registry(Path(tmp) / "seed" / "storage", auth) as server:
            yield server


def test_pull_with_credentials(
    cri: CRI, htpasswd_registry: RegistryServer, fixture_images: FixtureImages
) -> None:
    host = htpasswd_registry.host
    ref = f"{host}/pinnace/busybox:latest"
    want = fixture_images.images[BUSYBOX].config.digest

    err = rpc_error(lambda: cri.pull(ref))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ref in str(err.details())
    err = rpc_error(lambda: cri.pull(ref, username="alice", password="nope"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authentication failed" in str(err.details())
    # credentials for another registry are not sent to this one
    err = rpc_error(
        lambda: cri.pull(ref, username="alice", password="wonderland", server_address="x.io")
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = rpc_error(lambda: cri.pull(ref, auth="not base64!"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert cri.list() == []

    assert cri.pull(ref, username="alice", password="wonderland", server_address=host) == want
    cri.remove(want)
    assert cri.pull(ref, auth=base64.b64encode(b"alice:wonderland").decode()) == want
    cri.remove(want)

    # the request's credentials win over the configured ones, both ways
    cri.write_config({host: {"auth": {"username": "alice", "password": "wonderland"}}})
    err = rpc_error(lambda: cri.pull(ref, username="alice", password="nope"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert cri.pull(ref) == want
    cri.remove(want)
    cri.write_config({host: {"auth": {"username": "alice", "password": "nope"}}})
    err = rpc_error(lambda: cri.pull(ref))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert cri.pull(ref, username="alice", password="wonderland") == want


# -- concurrency and disk use -------------------------------------------------------------


def test_concurrent_pulls_of_one_image(
    cri: CRI, registry: RegistryServer, pushed_images: dict[str, PushResult]
) -> None:
    ref = ref_of(registry, pushed_images, BUSYBOX_LAYERED, "latest")
    req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
    futures = [cri.stub.PullImage.future(req, timeout=120) for _ in range(3)]
    ids = {f.result().image_ref for f in futures}
    assert len(ids) == 1
    [image] = cri.list()
    assert image.id in ids and list(image.repo_tags) == [ref]
    assert cri.store.is_unpacked(cri.store.get(ref))
    # every pull let go of what it held; no half-unpacked layer is left
    assert list(cri.store.leases_dir.iterdir()) == []
    names = {s.name for s in cri.store.snapshotter.walk()}
    assert names == set(cri.store.get(ref).chain_ids)


def test_image_fs_info_grows_with_a_pull(
    cri: CRI,
    registry: RegistryServer,
    pushed_images: dict[str, PushResult],
    fixture_images: FixtureImages,
) -> None:
    before = cri.fs_info()
    assert before.fs_id.mountpoint == str(cri.store.root / "snapshots")
    assert before.timestamp > 0
    image_id = cri.pull(ref_of(registry, pushed_images, BUSYBOX, "latest"))
    after = cri.fs_info()
    built = fixture_images.images[BUSYBOX]
    # the compressed blobs plus at least the busybox binary unpacked
    assert after.used_bytes.value >= before.used_bytes.value + blob_size(built) + 500_000
    assert after.inodes_used.value > before.inodes_used.value + len(built.layers)
    assert after.timestamp >= before.timestamp
    cri.remove(image_id)
    assert cri.fs_info().used_bytes.value < after.used_bytes.value - blob_size(built)
