"""The CRI ImageService over Pinnace's image store: what kubelet and crictl use to pull,
list, inspect and remove images and to learn how full the image filesystem is.

Semantics follow containerd's CRI plugin where kubelet depends on them:

- An image is its ID, the config digest ("sha256:..."); every record (name) with that
  config is one CRI image: its tagged names are repo_tags, `repository@target digest`
  its repo_digests.
- A reference is looked up as typed (a name, an ID, a 12+ hex ID prefix, a digest,
  `repository@digest`), then normalised the way docker does (busybox ->
  docker.io/library/busybox:latest). An unknown image is an empty ImageStatus answer,
  not an error: kubelet pulls when `image` is unset.
- PullImage records the image under its normalised name only after every layer is
  unpacked, so an image kubelet sees is ready for CreateContainer.
- RemoveImage by name drops that name (docker's untag) and by ID every name; unknown
  images succeed (idempotent). Removing the last name of an image a container uses is
  FAILED_PRECONDITION. When the last name goes, the store's GC frees its blobs and
  layers, which is what kubelet's image GC expects of a removal.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

from cri.api import api_pb2, api_pb2_grpc
from cri.errors import (
    CRIError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cri.rpc import blocking, rpc, rpc_stream
from images.digest import is_digest
from images.hosts import (
    DEFAULT_CONFIG_PATH,
    Credentials,
    HostConfig,
    RegistryConfig,
    RegistryConfigError,
    load_registry_config,
)
from images.pull import pull
from images.reference import (
    DEFAULT_DOMAIN,
    LEGACY_DEFAULT_DOMAIN,
    InvalidReferenceError,
    Reference,
    parse_reference,
)
from images.registry import (
    ForbiddenError,
    NotFoundError,
    PlatformNotFoundError,
    RegistryClient,
    RegistryError,
    RegistryHTTPError,
    RegistryUnavailableError,
    TooManyRequestsError,
    UnauthorizedError,
)
from images.store import (
    AmbiguousImageError,
    Image,
    ImageNotFoundError,
    ImageStore,
    ImageStoreError,
    default_platform,
    split_name,
)
from images.store import PlatformNotFoundError as StorePlatformNotFoundError

log = logging.getLogger("pinnace.cri.images")

REGISTRY_CONFIG_NAME = "registries.yaml"
# docker's short image ID: the store accepts unique ID prefixes this long or longer
_ID_PREFIX_RE = re.compile(r"^sha256:([a-f0-9]{12,63})$")
_HEX_ID_RE = re.compile(r"^[a-f0-9]{64}$")
# Docker Hub's other names, as they appear in kubelet's AuthConfig.server_address
_DOCKER_HUB_ALIASES = frozenset({DEFAULT_DOMAIN, LEGACY_DEFAULT_DOMAIN, "registry-1.docker.io"})


class Unauthenticated(CRIError):
    """The registry refused the credentials (or wants some and got none)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CRIError):
    """The registry knows who we are and does not let us pull the image."""

    code = grpc.StatusCode.PERMISSION_DENIED


InUse = Callable[[str], bool]


class ImageService(api_pb2_grpc.ImageServiceServicer):
    """CRI ImageService. `in_use(image_id)` says whether a container uses an image (the
    runtime service supplies it; it is called on the event loop and must not block)."""

    def __init__(
        self,
        store: ImageStore,
        *,
        registry_config_dir: str | None = None,
        in_use: InUse | None = None,
    ) -> None:
        self.store = store
        self.registry_config_path = (
            Path(registry_config_dir) / REGISTRY_CONFIG_NAME
            if registry_config_dir is not None
            else DEFAULT_CONFIG_PATH
        )
        self.in_use: InUse = in_use if in_use is not None else (lambda _id: False)
        self._client_lock = threading.Lock()
        self._client_key: tuple[int, int, int] | None = None
        self._client: RegistryClient | None = None
        self._users: dict[str, tuple[int | None, str]] = {}  # config digest -> (uid, username)

    # -- RPCs ---------------------------------------------------------------------

    @rpc
    async def ListImages(
        self, request: api_pb2.ListImagesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        images = await blocking(self._list, wanted)
        return api_pb2.ListImagesResponse(images=images)

    @rpc_stream
    async def StreamImages(
        self, request: api_pb2.StreamImagesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.StreamImagesResponse]:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        images = await blocking(self._list, wanted)
        yield api_pb2.StreamImagesResponse(images=images)

    @rpc
    async def ImageStatus(
        self, request: api_pb2.ImageStatusRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ImageStatusResponse:
        ref = request.image.image
        found = await blocking(self._status, ref, request.verbose)
        if found is None:
            return api_pb2.ImageStatusResponse()
        image, info = found
        return api_pb2.ImageStatusResponse(image=image, info=info)

    @rpc
    async def PullImage(
        self, request: api_pb2.PullImageRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PullImageResponse:
        text = request.image.image
        ref = _parse(text)
        credentials = _credentials(request.auth) if request.HasField("auth") else None
        server = request.auth.server_address if request.HasField("auth") else ""
        image_id = await blocking(self._pull, text, ref, credentials, server)
        return api_pb2.PullImageResponse(image_ref=image_id)

    @rpc
    async def RemoveImage(
        self, request: api_pb2.RemoveImageRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RemoveImageResponse:
        ref = request.image.image
        plan = await blocking(self._plan_removal, ref)
        if plan is None:
            return api_pb2.RemoveImageResponse()  # already gone: containerd succeeds too
        image_id, doomed, last = plan
        if last and await blocking(self.in_use, image_id):
            raise FailedPrecondition(
                f"image {image_id} is in use by a container; remove the container first",
                subject=ref,
            )
        await blocking(self._remove, doomed, image_id if last else None)
        return api_pb2.RemoveImageResponse()

    @rpc
    async def ImageFsInfo(
        self, request: api_pb2.ImageFsInfoRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ImageFsInfoResponse:
        usage = await blocking(self.store.usage)
        fs = api_pb2.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=api_pb2.FilesystemIdentifier(mountpoint=self.store.snapshotter.root),
            used_bytes=api_pb2.UInt64Value(value=usage.bytes),
            inodes_used=api_pb2.UInt64Value(value=usage.inodes),
        )
        return api_pb2.ImageFsInfoResponse(image_filesystems=[fs])

    # -- lookups (worker threads) -------------------------------------------------

    def _find(self, ref: str) -> tuple[Image, str] | None:
        """The image `ref` names and the store key that matched it, or None."""
        for key in _candidates(ref):
            try:
                return self.store.get(key), key
            except ImageNotFoundError:
                continue
            except AmbiguousImageError as exc:
                raise InvalidArgument(str(exc), subject=ref) from exc
        return None

    def _same_image(self, image_id: str) -> list[Image]:
        return [img for img in self.store.list() if img.id == image_id]

    def _status(self, ref: str, verbose: bool) -> tuple[api_pb2.Image, dict[str, str]] | None:
        found = self._find(ref)
        if found is None:
            return None
        records = self._same_image(found[0].id) or [found[0]]
        info = {"info": json.dumps(self._verbose_info(records))} if verbose else {}
        return self._cri_image(records), info

    def _list(self, wanted: str) -> list[api_pb2.Image]:
        records = self.store.list()
        if wanted:
            found = self._find(wanted)
            if found is None:
                return []
            records = [img for img in records if img.id == found[0].id]
        by_id: dict[str, list[Image]] = {}
        for img in records:
            by_id.setdefault(img.id, []).append(img)
        return [self._cri_image(group) for group in by_id.values()]

    def _cri_image(self, records: Sequence[Image]) -> api_pb2.Image:
        first = records[0]
        tags = sorted({img.name for img in records if _is_tag(img.name)})
        digests = sorted({img.repo_digest for img in records})
        uid, username = self._user(first)
        out = api_pb2.Image(
            id=first.id,
            repo_tags=tags,
            repo_digests=digests,
            size=first.size,
            username=username,
            spec=api_pb2.ImageSpec(image=first.id),
            pinned=False,
        )
        if uid is not None:
            out.uid.value = uid
        return out

    def _config(self, img: Image) -> dict[str, Any]:
        obj = json.loads(self.store.content.read(img.config.digest))
        return obj if isinstance(obj, dict) else {}

    def _user(self, img: Image) -> tuple[int | None, str]:
        """(uid, username) from the config's User, as containerd reads it: the part
        before ':', numeric -> uid, else a name; the config is immutable, so cached."""
        cached = self._users.get(img.id)
        if cached is not None:
            return cached
        container = self._config(img).get("config")
        user = container.get("User") if isinstance(container, dict) else None
        result: tuple[int | None, str] = (None, "")
        if isinstance(user, str) and user:
            name = user.split(":", 1)[0]
            if name.isdigit():
                result = (int(name), "")
            elif name:
                result = (None, name)
        self._users[img.id] = result
        return result

    def _verbose_info(self, records: Sequence[Image]) -> dict[str, Any]:
        img = records[0]
        return {
            "id": img.id,
            "names": sorted(r.name for r in records),
            "target": img.target.to_json(),
            "manifestDigest": img.manifest.digest,
            "configDigest": img.config.digest,
            "layers": [layer.to_json() for layer in img.layers],
            "diffIDs": list(img.diff_ids),
            "chainIDs": list(img.chain_ids),
            "chainID": img.top_chain_id,
            "platform": img.platform.to_json(),
            "size": img.size,
            "unpacked": self.store.is_unpacked(img),
            "imageSpec": self._config(img),
        }

    # -- pull (worker thread) -----------------------------------------------------

    def _pull(
        self, text: str, ref: Reference, credentials: Credentials | None, server_address: str
    ) -> str:
        try:
            client = self._client_for(ref, credentials, server_address)
            platform = default_platform()
            with self.store.lease() as lease:
                result = pull(ref, lease, client=client, platform=platform)
                # unpack before recording: an image kubelet can see is ready to run
                self.store.unpack(self.store.resolve(result.target, platform), lease=lease)
                image = self.store.create(_record_name(ref), result.target, platform=platform)
        except CRIError:
            raise
        except Exception as exc:
            raise _pull_error(text, exc) from exc
        log.info("pulled %s as %s", text, image.id)
        return image.id

    def _client_for(
        self, ref: Reference, credentials: Credentials | None, server_address: str
    ) -> RegistryClient:
        """The shared client (re-made when the registry config changes), or one of this
        pull's own when the request brings credentials (tokens must not be shared)."""
        config, shared = self._shared_client()
        if credentials is None:
            return shared
        hosts = _auth_hosts(config, ref.domain)
        if server_address and _server_host(server_address) not in hosts:
            # containerd: credentials for another registry are not sent to this one
            return shared
        return RegistryClient(_with_credentials(config, hosts, credentials))

    def _shared_client(self) -> tuple[RegistryConfig, RegistryClient]:
        path = self.registry_config_path
        try:
            st = path.stat()
            key: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        with self._client_lock:
            if self._client is None or key != self._client_key:
                config = (
                    load_registry_config(path)
                    if key is not None
                    else RegistryConfig(source=f"{path} (absent)")
                )
                self._client = RegistryClient(config)
                self._client_key = key
            return self._client.config, self._client

    # -- remove (worker thread) ---------------------------------------------------

    def _plan_removal(self, ref: str) -> tuple[str, list[str], bool] | None:
        """(image id, names to remove, whether they are all its names) or None."""
        found = self._find(ref)
        if found is None:
            return None
        image, key = found
        names = sorted(img.name for img in self._same_image(image.id))
        if key == image.name:  # by name: that name only (docker's untag)
            doomed = [image.name]
        elif "@" in key and not is_digest(key):  # repository@digest: that repository's names
            repo = key.partition("@")[0]
            doomed = [n for n in names if split_name(n)[0] == repo]
        else:  # by ID or digest: every name
            doomed = names
        return image.id, doomed, set(doomed) >= set(names)

    def _remove(self, names: Iterable[str], collect_id: str | None) -> None:
        for name in names:
            try:
                self.store.remove(name)
            except ImageNotFoundError:
                continue  # removed meanwhile
        if collect_id is not None and not self._same_image(collect_id):
            result = self.store.gc()
            self._users.pop(collect_id, None)
            log.info(
                "removed image %s: %d blobs, %d snapshots, %d bytes freed",
                collect_id,
                len(result.blobs),
                len(result.snapshots),
                result.bytes_freed,
            )


# -- references ---------------------------------------------------------------------


def _parse(text: str) -> Reference:
    if not text:
        raise InvalidArgument("no image reference given", subject="image")
    try:
        return parse_reference(text)
    except InvalidReferenceError as exc:
        raise InvalidArgument(str(exc), subject=text) from exc


def _record_name(ref: Reference) -> str:
    """The name a pulled image is recorded under, as containerd: a digest reference
    keeps the digest and drops any tag next to it."""
    if ref.digest is not None:
        return f"{ref.name}@{ref.digest}"
    return f"{ref.name}:{ref.tag}"


def _candidates(ref: str) -> list[str]:
    """Store keys to try for `ref`, in order: as typed, an ID prefix written with
    its algorithm, the docker-normalised name. A string that is no reference and
    no ID is INVALID_ARGUMENT."""
    if not ref:
        raise InvalidArgument("no image given", subject="image")
    out = [ref]
    prefix = _ID_PREFIX_RE.fullmatch(ref)
    if prefix:
        out.append(prefix.group(1))
    if is_digest(ref) or prefix:
        return out  # an ID (or its prefix): nothing to normalise
    try:
        parsed = parse_reference(ref)
    except InvalidReferenceError as exc:
        if _HEX_ID_RE.fullmatch(ref):
            return out  # a full hex ID: docker refuses it as a name
        raise InvalidArgument(str(exc), subject=ref) from exc
    normalised = _record_name(parsed)
    if normalised != ref:
        out.append(normalised)
    return out


def _is_tag(name: str) -> bool:
    return "@" not in name and split_name(name)[1] is not None


# -- credentials ----------------------------------------------------------------------


def _credentials(auth: api_pb2.AuthConfig) -> Credentials | None:
    """Credentials from kubelet's AuthConfig, in containerd's order of preference.
    registry_token is not supported (containerd ignores it too): the pull goes on
    with the configured credentials, and a 401 says so."""
    if auth.username:
        return Credentials(username=auth.username, password=auth.password)
    if auth.identity_token:
        return Credentials(identity_token=auth.identity_token)
    if auth.auth:
        try:
            decoded = base64.b64decode(auth.auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise InvalidArgument("not base64 of user:password", subject="auth.auth")
        return Credentials(username=user, password=password)
    if auth.registry_token:
        log.warning("PullImage: auth.registry_token is not supported; ignored")
    return None


def _server_host(address: str) -> str:
    """kubelet's server_address (a host, or a URL such as https://index.docker.io/v1/)
    as a host key of the registry config."""
    url = address if "://" in address else f"https://{address}"
    host = urllib.parse.urlsplit(url).netloc.lower()
    return DEFAULT_DOMAIN if host in _DOCKER_HUB_ALIASES else host


def _auth_hosts(config: RegistryConfig, domain: str) -> set[str]:
    """The hosts a request's credentials go to: the registry named in the reference
    and the server it is configured at (not its mirrors: they have their own)."""
    hosts = {domain.lower()}
    entry = config.host(domain)
    if entry is not None and entry.server:
        hosts.add(_server_host(entry.server))
    return hosts


def _with_credentials(
    config: RegistryConfig, hosts: Iterable[str], credentials: Credentials
) -> RegistryConfig:
    entries = dict(config.hosts)
    for host in hosts:
        entry = entries.get(host) or HostConfig(host=host)
        entries[host] = dataclasses.replace(entry, credentials=credentials)
    return RegistryConfig(hosts=entries, source=f"{config.source} + PullImage auth")


# -- errors -----------------------------------------------------------------------------


def _pull_error(text: str, exc: Exception) -> CRIError:
    """A lower layer's pull failure as the status kubelet should see; the message
    names the image (RegistryError's text starts with the reference)."""
    message = str(exc)
    for note in getattr(exc, "__notes__", ()):
        message += f"; {note}"
    if isinstance(exc, (NotFoundError, PlatformNotFoundError, StorePlatformNotFoundError)):
        return NotFound(message, subject=text)
    if isinstance(exc, UnauthorizedError):
        return Unauthenticated(message, subject=text)
    if isinstance(exc, ForbiddenError):
        return PermissionDenied(message, subject=text)
    if isinstance(exc, (RegistryUnavailableError, TooManyRequestsError)):
        return Unavailable(message, subject=text)
    if isinstance(exc, RegistryHTTPError) and (exc.status or 0) >= 500:
        return Unavailable(message, subject=text)
    if isinstance(exc, InvalidReferenceError):
        return InvalidArgument(message, subject=text)
    if isinstance(exc, RegistryConfigError):
        return FailedPrecondition(message, subject=text)
    if isinstance(exc, (RegistryError, ImageStoreError, OSError)):
        return Internal(message, subject=text)
    return Internal(f"{message} ({type(exc).__name__})", subject=text)


__all__ = ["ImageService", "PermissionDenied", "Unauthenticated"]
