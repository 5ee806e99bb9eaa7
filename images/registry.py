"""A pull client for the OCI distribution API (and Docker's registry v2 API).

    GET  /v2/                              ping: is it a registry, does it want auth
    HEAD /v2/<name>/manifests/<tag|digest> resolve a reference to a descriptor
    GET  /v2/<name>/manifests/<digest>     an index, manifest list or manifest
    GET  /v2/<name>/blobs/<digest>         a config or a layer (Range to resume)

Nothing fetched is trusted: manifests are capped in size, their digest is always
computed (and must equal the one asked for when pulling by digest, or the one
the registry announced when resolving a tag), their structure is checked
before anything is derived from them, and blobs are hashed and counted while
they stream. Every error names the image, what was being fetched and the URL.

Endpoints come from hosts.py (mirrors first, then the registry itself), auth
from auth.py. HTTP is plain http.client, one connection per request, never
through an environment proxy. The client is safe to share between threads
(the pull downloads layers concurrently).
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from images.auth import Authorizer, Reply, TokenError, UnsupportedChallengeError, repository_scope
from images.digest import SHA256, DigestMismatchError, is_digest
from images.hosts import Credentials, Endpoint, RegistryConfig
from images.layout import (
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    Platform,
)
from images.mediatypes import (
    CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    LAYER_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_DOCKER_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
)
from images.reference import Reference, parse_reference

USER_AGENT = "pinnace/0.1"

_SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)

# Preference order for content negotiation: an index first, so a multi-platform
# image is seen as one and the platform is chosen here, not by the registry.
ACCEPT_MANIFESTS = ", ".join(
    (MEDIA_TYPE_INDEX, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)
)

# containerd's limit too: a manifest is metadata, a bigger one is an attack or a mistake.
MAX_MANIFEST_SIZE = 4 << 20
MAX_ERROR_BODY = 64 << 10
CHUNK_SIZE = 1 << 20
MAX_REDIRECTS = 5
MAX_INDEX_DEPTH = 4
DEFAULT_PLATFORM = Platform(os="linux", architecture="amd64")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


# -- errors -----------------------------------------------------------------------


class RegistryError(Exception):
    """Something failed while pulling `image`; the message says what and where."""

    def __init__(
        self,
        image: str,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        code: str | None = None,
        digest: str | None = None,
    ) -> None:
        text = f"{image}: {message}"
        if status is not None:
            text += f" (HTTP {status}{' ' + code if code else ''})"
        if url is not None:
            text += f" [{url}]"
        # Not super(): a subclass also derives from DigestMismatchError, whose
        # __init__ takes other arguments.
        Exception.__init__(self, text)
        self.image = image
        self.url = url
        self.status = status
        self.code = code
        self.digest = digest


class RegistryUnavailableError(RegistryError):
    """No answer: connection refused, TLS failure, timeout, connection cut."""


class UnauthorizedError(RegistryError):
    """401: no credentials, wrong credentials, or a token without the needed scope."""


class ForbiddenError(RegistryError):
    """403: authenticated, but not allowed to pull this repository."""


class NotFoundError(RegistryError):
    """404: no such repository, tag, manifest or blob."""


class TooManyRequestsError(RegistryError):
    """429 that did not clear within the bounded retries (or asked to wait too long)."""

    def __init__(self, image: str, message: str, *, retry_after: float | None, **kw: Any) -> None:
        super().__init__(image, message, **kw)
        self.retry_after = retry_after


class RegistryHTTPError(RegistryError):
    """Any other unexpected HTTP status."""


class ManifestError(RegistryError):
    """A manifest or index that is malformed, too large, of an unsupported media
    type, or not a container image."""


class PlatformNotFoundError(RegistryError):
    """An index with no manifest for the requested platform."""

    def __init__(
        self, image: str, platform: Platform, available: Sequence[Platform], **kw: Any
    ) -> None:
        listed = ", ".join(format_platform(p) for p in available) or "none"
        super().__init__(
            image, f"no manifest for platform {format_platform(platform)} (has: {listed})", **kw
        )
        self.platform = platform
        self.available = tuple(available)


class ContentSizeError(RegistryError):
    """Content whose length is not the one its descriptor promised."""


class BlobInterruptedError(RegistryUnavailableError):
    """A blob download that kept being cut off; what arrived can be resumed."""


class PullCancelledError(RegistryError):
    """A download stopped because another part of the same pull failed."""


class ContentDigestMismatchError(RegistryError, DigestMismatchError):
    """Content whose sha256 is not its digest. Also a DigestMismatchError, so code
    that handles the layout's or the content store's mismatches handles it too."""

    def __init__(
        self, image: str, what: str, expected: str, actual: str, *, url: str | None = None
    ) -> None:
        message = f"{what}: content has digest {actual}, expected {expected}"
        super().__init__(image, message, url=url, digest=expected)
        self.expected = expected
        self.actual = actual
        self.where = url or image


# -- platforms --------------------------------------------------------------------

_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "x86": ("386", None),
}


def parse_platform(text: str) -> Platform:
    """`os/arch[/variant]` as docker --platform takes it: linux/arm64, linux/arm/v7."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant]")
    variant = parts[2] if len(parts) == 3 else None
    return normalize_platform(Platform(os=parts[0], architecture=parts[1], variant=variant))


def normalize_platform(platform: Platform) -> Platform:
    """Spell a platform one way: aarch64 -> arm64, arm64/v8 -> arm64, arm -> arm/v7,
    amd64/v1 -> amd64 (the defaults are dropped or added as containerd does)."""
    os_name = platform.os.lower()
    arch = platform.architecture.lower()
    variant = platform.variant.lower() if platform.variant else None
    alias = _ARCH_ALIASES.get(arch)
    if alias is not None:
        arch, variant = alias[0], variant or alias[1]
    if variant is not None and variant.isdigit():
        variant = f"v{variant}"
    if arch == "arm64" and variant == "v8":
        variant = None
    elif arch == "arm" and variant is None:
        variant = "v7"
    elif arch == "amd64" and variant == "v1":
        variant = None
    return Platform(os=os_name, architecture=arch, variant=variant)


def format_platform(platform: Platform) -> str:
    out = f"{platform.os}/{platform.architecture}"
    return out + (f"/{platform.variant}" if platform.variant else "")


def compatible_platforms(platform: Platform) -> list[Platform]:
    """What can run where `platform` runs, best first: arm/v7 also runs v6 and v5
    images, amd64/v3 also runs v2 and baseline amd64."""
    want = normalize_platform(platform)
    out = [want]
    m = re.fullmatch(r"v(\d+)", want.variant or "")
    if want.architecture == "arm" and m:
        out += [Platform(want.os, "arm", f"v{n}") for n in range(int(m.group(1)) - 1, 4, -1)]
    elif want.architecture == "amd64" and m:
        out += [Platform(want.os, "amd64", f"v{n}") for n in range(int(m.group(1)) - 1, 1, -1)]
        out.append(Platform(want.os, "amd64", None))
    return out


def select_manifest(
    manifests: Sequence[Descriptor], platform: Platform, *, image: str, url: str | None = None
) -> Descriptor:
    """The entry of an index to pull for `platform` (the first exact match, else
    the best compatible variant). Entries without a platform (attestations,
    artifacts) are never chosen."""
    candidates = [
        (normalize_platform(d.platform), d)
        for d in manifests
        if d.platform is not None
        and (d.media_type in MANIFEST_MEDIA_TYPES or d.media_type in INDEX_MEDIA_TYPES)
    ]
    for want in compatible_platforms(platform):
        for have, desc in candidates:
            if have == want:
                return desc
    raise PlatformNotFoundError(
        image, normalize_platform(platform), [p for p, _ in candidates], url=url
    )


# -- manifests --------------------------------------------------------------------


@dataclass(frozen=True)
class FetchedManifest:
    """An image manifest (OCI or Docker schema2), verified against `descriptor`."""

    descriptor: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type


@dataclass(frozen=True)
class FetchedIndex:
    """An OCI index or Docker manifest list, verified against `descriptor`."""

    descriptor: Descriptor
    manifests: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type


def parse_manifest(
    data: bytes, media_type: str | None, *, image: str, url: str | None = None
) -> FetchedManifest | FetchedIndex:
    """Parse and check a manifest or index whose bytes are already verified.

    `media_type` is what the bytes were announced as (Content-Type, or the
    descriptor that pointed at them); the document's own mediaType must agree,
    so a manifest cannot be read as an index or the other way round.
    """
    digest = f"{SHA256}:{hashlib.sha256(data).hexdigest()}"

    def bad(message: str) -> ManifestError:
        return ManifestError(image, f"manifest {digest}: {message}", url=url, digest=digest)

    try:
        obj = json.loads(data)
    except ValueError as e:
        raise bad(f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("schemaVersion")
    if version == 1 or media_type in _SCHEMA1_TYPES:
        raise bad("Docker schema 1 manifests are not supported; push the image with a newer tool")
    if version != 2 or isinstance(version, bool):
        raise bad(f"schemaVersion must be 2, got {version!r}")
    declared = obj.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise bad(f"mediaType must be a string, got {declared!r}")
    announced = media_type if media_type in (INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES) else None
    if declared is not None and announced is not None and declared != announced:
        raise bad(f"declares mediaType {declared} but was served as {announced}")
    kind = declared or announced
    if kind is None:  # an OCI document may omit mediaType: go by its shape
        if "manifests" in obj and "config" not in obj:
            kind = MEDIA_TYPE_INDEX
        elif "config" in obj and "manifests" not in obj:
            kind = MEDIA_TYPE_MANIFEST
        else:
            raise bad("neither an image manifest nor an index (no mediaType, ambiguous fields)")
    descriptor = Descriptor(media_type=kind, digest=digest, size=len(data))

    if kind in INDEX_MEDIA_TYPES:
        if "config" in obj or "layers" in obj:
            raise bad("an index must not have config or layers")
        raw_list = obj.get("manifests")
        if not isinstance(raw_list, list):
            raise bad("manifests must be a list")
        entries = tuple(
            _descriptor(bad, item, f"manifests[{i}]") for i, item in enumerate(raw_list)
        )
        return FetchedIndex(descriptor=descriptor, manifests=entries, raw=data)
    if kind in MANIFEST_MEDIA_TYPES:
        if "manifests" in obj:
            raise bad("an image manifest must not have manifests")
        config = _descriptor(bad, obj.get("config"), "config")
        if config.media_type not in CONFIG_MEDIA_TYPES:
            raise bad(
                f"config has media type {config.media_type}: not a container image "
                f"(expected one of {', '.join(sorted(CONFIG_MEDIA_TYPES))})"
            )
        raw_layers = obj.get("layers")
        if not isinstance(raw_layers, list):
            raise bad("layers must be a list")
        layers = tuple(_descriptor(bad, item, f"layers[{i}]") for i, item in enumerate(raw_layers))
        for i, layer in enumerate(layers):
            if layer.media_type not in LAYER_MEDIA_TYPES:
                raise bad(f"layers[{i}]: unsupported layer media type {layer.media_type}")
        return FetchedManifest(descriptor=descriptor, config=config, layers=layers, raw=data)
    raise bad(f"unsupported media type {kind}")


def _descriptor(bad: Callable[[str], ManifestError], obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise bad(f"{where}: expected a descriptor object")
    try:
        desc = Descriptor.from_json(obj)
    except (ValueError, TypeError, AttributeError) as e:
        raise bad(f"{where}: {e}") from None
    if desc.size > (1 << 40):
        raise bad(f"{where}: implausible size {desc.size}")
    return desc


# -- HTTP ---------------------------------------------------------------------------


class TransportError(Exception):
    """No HTTP answer from `url`: refused, reset, TLS, timeout, bad redirect."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class _Response:
    """An open response; the body is read by the caller, then close() frees the socket."""

    def __init__(
        self, url: str, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection
    ) -> None:
        self.url = url
        self.status = resp.status
        headers: dict[str, str] = {}
        for name in {k.lower() for k in resp.headers}:
            headers[name] = ", ".join(resp.headers.get_all(name) or ())
        self.headers: Mapping[str, str] = headers
        self._resp = resp
        self._conn = conn

    def read(self, amount: int) -> bytes:
        return self._resp.read(amount)

    def read_body(self, limit: int) -> bytes:
        return self._resp.read(limit)

    def close(self) -> None:
        self._resp.close()
        self._conn.close()


def _describe(e: BaseException, timeout: float) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS failed: {e.reason or e}"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(e, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host name: {e.strerror}"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    return str(e) or type(e).__name__


class _Transport:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._ssl = ssl.create_default_context()

    def open(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
    ) -> _Response:
        """Send one request, following redirects for GET and HEAD. Authorization is
        dropped when a redirect leaves the host (blob storage often lives elsewhere)
        and a redirect from HTTPS to HTTP is refused."""
        hdrs = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(
                    parts.netloc, timeout=self.timeout, context=self._ssl
                )
            elif parts.scheme == "http":
                conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
            else:
                raise TransportError(url, f"unsupported URL scheme {parts.scheme!r}")
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            try:
                conn.request(method, target, body=body, headers=hdrs)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise TransportError(url, _describe(e, self.timeout)) from e
            if resp.status in _REDIRECTS and method in ("GET", "HEAD"):
                location = resp.getheader("location")
                resp.close()
                conn.close()
                if not location:
                    raise TransportError(url, f"HTTP {resp.status} redirect without a Location")
                target_url = urllib.parse.urljoin(url, location)
                new = urllib.parse.urlsplit(target_url)
                if parts.scheme == "https" and new.scheme != "https":
                    raise TransportError(url, f"refusing a redirect from HTTPS to {target_url}")
                if new.netloc.lower() != parts.netloc.lower():
                    hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
                url = target_url
                continue
            return _Response(url, resp, conn)
        raise TransportError(url, f"more than {MAX_REDIRECTS} redirects")


# -- the client ---------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedImage:
    """A reference pinned to a descriptor, and the endpoint that answered for it
    (manifests and blobs then come from the same place)."""

    reference: Reference
    descriptor: Descriptor
    endpoint: Endpoint
    base_url: str
    prefetched: bytes | None = field(default=None, repr=False)

    @property
    def image(self) -> str:
        return str(self.reference)


@dataclass(frozen=True)
class BlobFetch:
    """What a blob download did. `verified` is true when every byte passed through
    this client and matched the digest; after resuming from bytes someone else
    kept (offset > 0) only the size was checked here and the store must hash."""

    size: int
    offset: int
    verified: bool
    restarts: int
    url: str


class BlobSink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class RegistryClient:
    """Pulls manifests and blobs. Share one per process: it caches pings and tokens."""

    def __init__(
        self,
        config: RegistryConfig | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_after: float = 60.0,
        blob_attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.config = config if config is not None else RegistryConfig()
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self.blob_attempts = max(1, blob_attempts)
        self.user_agent = user_agent
        self._sleep = sleep
        self._transport = _Transport(timeout)
        self._lock = threading.Lock()
        self._bases: dict[str, str] = {}
        self._credentials: dict[str, Credentials | None] = {}
        self._plain_http_hosts: set[str] = set()
        self._auth = Authorizer(
            self._credentials_for,
            self._auth_fetch,
            plain_http_allowed=self._plain_http_allowed,
        )

    # -- resolve ------------------------------------------------------------------

    def resolve(self, reference: Reference | str) -> ResolvedImage:
        """Find the manifest (or index) `reference` names, trying the mirrors
        configured for its registry first. The last error is raised if all
        endpoints fail, with the mirrors' errors attached as notes."""
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        errors: list[RegistryError] = []
        for endpoint in self.config.endpoints(ref.domain):
            try:
                base = self.ping(endpoint, image=str(ref))
                return self._resolve_at(ref, endpoint, base)
            except RegistryError as e:
                errors.append(e)
        last = errors[-1]
        for earlier in errors[:-1]:
            last.add_note(f"also tried mirror: {earlier}")
        raise last

    def ping(self, endpoint: Endpoint, *, image: str = "") -> str:
        """GET /v2/ on the endpoint's URLs in order; return the base URL that
        answered like a registry (200, or 401 whose challenge is remembered)."""
        with self._lock:
            self._credentials[endpoint.host] = endpoint.credentials
            cached = self._bases.get(endpoint.host)
        if cached is not None:
            return cached
        failures = []
        for base in endpoint.urls:
            url = f"{base}/v2/"
            try:
                resp = self._transport.open("GET", url, {"User-Agent": self.user_agent})
            except TransportError as e:
                failures.append(f"{url}: {e.reason}")
                continue
            try:
                if resp.status == 401:
                    challenge = resp.headers.get("www-authenticate")
                    if challenge:
                        self._auth.remember(endpoint.host, challenge)
                elif resp.status != 200:
                    raise self._status_error(resp, image or endpoint.host, "registry ping")
            finally:
                resp.close()
            with self._lock:
                self._bases[endpoint.host] = base
                if base.startswith("http://"):
                    self._plain_http_hosts.add(endpoint.host)
            return base
        raise RegistryUnavailableError(
            image or endpoint.host, "cannot reach the registry: " + "; ".join(failures)
        )

    def _resolve_at(self, ref: Reference, endpoint: Endpoint, base: str) -> ResolvedImage:
        image = str(ref)
        name = ref.manifest_reference
        url = f"{base}/v2/{ref.path}/manifests/{name}"
        what = f"manifest {name}"
        try:
            resp = self._request("HEAD", url, ref, endpoint, {"Accept": ACCEPT_MANIFESTS}, what)
        except (RegistryHTTPError, NotFoundError, ForbiddenError):
            # Some registries refuse HEAD (405); and a HEAD error has no body to say
            # why (MANIFEST_UNKNOWN or NAME_UNKNOWN...): the GET below raises with it.
            resp = None
        if resp is not None:
            resp.close()
            media_type = _media_type(resp.headers.get("content-type"))
            digest = resp.headers.get("docker-content-digest")
            length = resp.headers.get("content-length")
            if ref.digest is not None:
                digest = ref.digest
            if media_type in _SCHEMA1_TYPES:
                raise ManifestError(
                    image, f"{what}: Docker schema 1 manifests are not supported", url=url
                )
            if (
                digest is not None
                and is_digest(digest)
                and length is not None
                and length.isdigit()
                and (media_type in INDEX_MEDIA_TYPES or media_type in MANIFEST_MEDIA_TYPES)
            ):
                if int(length) > MAX_MANIFEST_SIZE:
                    raise ManifestError(
                        image, f"{what} is {length} bytes, more than {MAX_MANIFEST_SIZE}", url=url
                    )
                desc = Descriptor(media_type=media_type, digest=digest, size=int(length))
                return ResolvedImage(ref, desc, endpoint, base)
        # No usable HEAD answer: GET the manifest and compute its digest ourselves.
        data, content_type, announced = self._get_manifest(ref, endpoint, url, what)
        actual = f"{SHA256}:{hashlib.sha256(data).hexdigest()}"
        expected = ref.digest or (announced if announced and is_digest(announced) else None)
        if expected is not None and actual != expected:
            raise ContentDigestMismatchError(image, what, expected, actual, url=url)
        parsed = parse_manifest(data, content_type, image=image, url=url)
        return ResolvedImage(ref, parsed.descriptor, endpoint, base, prefetched=data)

    # -- manifests ----------------------------------------------------------------

    def fetch_manifest(
        self, resolved: ResolvedImage, descriptor: Descriptor | None = None
    ) -> FetchedManifest | FetchedIndex:
        """Fetch the manifest or index `descriptor` points at (default: the resolved
        one) by digest, and verify its digest and size before parsing it."""
        desc = descriptor if descriptor is not None else resolved.descriptor
        image = resolved.image
        url = f"{resolved.base_url}/v2/{resolved.reference.path}/manifests/{desc.digest}"
        what = f"manifest {desc.digest}"
        if resolved.prefetched is not None and desc.digest == resolved.descriptor.digest:
            data = resolved.prefetched
        else:
            data, _, _ = self._get_manifest(resolved.reference, resolved.endpoint, url, what)
        actual = f"{SHA256}:{hashlib.sha256(data).hexdigest()}"
        if actual != desc.digest:
            raise ContentDigestMismatchError(image, what, desc.digest, actual, url=url)
        if len(data) != desc.size:
            raise ContentSizeError(
                image, f"{what} is {len(data)} bytes, its descriptor says {desc.size}", url=url
            )
        parsed = parse_manifest(data, desc.media_type, image=image, url=url)
        if parsed.descriptor.media_type != desc.media_type and (
            desc.media_type in INDEX_MEDIA_TYPES or desc.media_type in MANIFEST_MEDIA_TYPES
        ):
            raise ManifestError(
                image,
                f"{what} is a {parsed.descriptor.media_type}, its descriptor says {desc.media_type}",
                url=url,
            )
        return parsed

    def resolve_platform(
        self,
        resolved: ResolvedImage,
        platform: Platform = DEFAULT_PLATFORM,
    ) -> tuple[FetchedManifest, list[FetchedIndex]]:
        """The image manifest for `platform`, walking down indexes (an index may
        point to another index); also returns the indexes passed through."""
        indexes: list[FetchedIndex] = []
        doc = self.fetch_manifest(resolved)
        while isinstance(doc, FetchedIndex):
            indexes.append(doc)
            if len(indexes) > MAX_INDEX_DEPTH:
                raise ManifestError(
                    resolved.image, f"indexes nested more than {MAX_INDEX_DEPTH} deep"
                )
            chosen = select_manifest(
                doc.manifests, platform, image=resolved.image, url=resolved.base_url
            )
            doc = self.fetch_manifest(resolved, chosen)
        return doc, indexes

    def _get_manifest(
        self, ref: Reference, endpoint: Endpoint, url: str, what: str
    ) -> tuple[bytes, str | None, str | None]:
        image = str(ref)
        resp = self._request("GET", url, ref, endpoint, {"Accept": ACCEPT_MANIFESTS}, what)
        try:
            length = resp.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > MAX_MANIFEST_SIZE:
                raise ManifestError(
                    image, f"{what} is {length} bytes, more than {MAX_MANIFEST_SIZE}", url=url
                )
            try:
                data = resp.read_body(MAX_MANIFEST_SIZE + 1)
            except (OSError, http.client.HTTPException) as e:
                raise RegistryUnavailableError(
                    image, f"{what}: {_describe(e, self._transport.timeout)}", url=url
                ) from e
            if len(data) > MAX_MANIFEST_SIZE:
                raise ManifestError(
                    image, f"{what} is more than {MAX_MANIFEST_SIZE} bytes", url=url
                )
            if length is not None and length.isdigit() and len(data) != int(length):
                raise RegistryUnavailableError(
                    image, f"{what}: connection closed after {len(data)} of {length} bytes", url=url
                )
            return (
                data,
                _media_type(resp.headers.get("content-type")),
                resp.headers.get("docker-content-digest"),
            )
        finally:
            resp.close()

    # -- blobs --------------------------------------------------------------------

    def fetch_blob(
        self,
        resolved: ResolvedImage,
        descriptor: Descriptor,
        sink: BlobSink,
        *,
        offset: int = 0,
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> BlobFetch:
        """Stream a blob into `sink`, starting at `offset` (bytes the sink already
        holds, fetched with an HTTP Range request).

        Size is always checked: a longer body is cut off with an error before the
        extra bytes reach the sink. A cut connection is retried from where it
        stopped, up to `blob_attempts` times. The digest is checked here when the
        whole blob came through this call (offset 0); `progress` gets the byte
        count so far (including `offset`).
        """
        image = resolved.image
        digest, size = descriptor.digest, descriptor.size
        url = f"{resolved.base_url}/v2/{resolved.reference.path}/blobs/{digest}"
        what = f"blob {digest}"
        if offset < 0 or offset > size:
            raise ContentSizeError(
                image, f"{what}: cannot resume at byte {offset} of {size}", url=url, digest=digest
            )
        hasher = hashlib.sha256() if offset == 0 else None
        pos = offset
        failures = 0
        while pos < size:
            if cancel is not None and cancel.is_set():
                raise PullCancelledError(image, f"{what}: cancelled", url=url, digest=digest)
            headers = {"Range": f"bytes={pos}-"} if pos > 0 else {}
            try:
                resp = self._request(
                    "GET", url, resolved.reference, resolved.endpoint, headers, what
                )
            except RegistryUnavailableError:
                failures += 1
                if failures >= self.blob_attempts:
                    raise
                self._sleep(min(0.25 * 2**failures, 5.0))
                continue
            cut: str | None = None
            try:
                skip = self._check_blob_response(resp, image, what, digest, pos, size)
                while True:
                    if cancel is not None and cancel.is_set():
                        raise PullCancelledError(
                            image, f"{what}: cancelled", url=url, digest=digest
                        )
                    try:
                        chunk = resp.read(CHUNK_SIZE)
                    except (OSError, http.client.HTTPException) as e:
                        cut = f"{_describe(e, self._transport.timeout)} at byte {pos}"
                        break
                    if not chunk:
                        if pos < size:
                            cut = f"connection closed at byte {pos}"
                        break
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                        if not chunk:
                            continue
                    if pos + len(chunk) > size:
                        raise ContentSizeError(
                            image,
                            f"{what}: the registry sent more than the {size} bytes its "
                            "descriptor says",
                            url=resp.url,
                            digest=digest,
                        )
                    sink.write(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    pos += len(chunk)
                    if progress is not None:
                        progress(pos)
            finally:
                resp.close()
            if cut is not None:
                failures += 1
                if failures >= self.blob_attempts:
                    raise BlobInterruptedError(
                        image,
                        f"{what}: {cut} of {size}, {failures} attempts; the bytes received "
                        "can be resumed",
                        url=url,
                        digest=digest,
                    )
                self._sleep(min(0.25 * 2**failures, 5.0))
        if hasher is not None:
            actual = f"{SHA256}:{hasher.hexdigest()}"
            if actual != digest:
                raise ContentDigestMismatchError(image, what, digest, actual, url=url)
        return BlobFetch(
            size=size, offset=offset, verified=hasher is not None, restarts=failures, url=url
        )

    def _check_blob_response(
        self, resp: _Response, image: str, what: str, digest: str, pos: int, size: int
    ) -> int:
        """How many leading bytes of this response to drop (a server that ignored
        our Range sends the whole blob again); raise if the response cannot be right."""
        length = resp.headers.get("content-length")
        if resp.status == 206:
            if pos == 0:
                raise RegistryHTTPError(
                    image, f"{what}: partial content to a full request", url=resp.url, status=206
                )
            m = _CONTENT_RANGE_RE.match(resp.headers.get("content-range", ""))
            if m is None or int(m.group(1)) != pos:
                raise RegistryHTTPError(
                    image,
                    f"{what}: asked for bytes from {pos}, got Content-Range "
                    f"{resp.headers.get('content-range')!r}",
                    url=resp.url,
                    status=206,
                )
            if m.group(3) != "*" and int(m.group(3)) != size:
                raise ContentSizeError(
                    image,
                    f"{what} is {m.group(3)} bytes on the registry, its descriptor says {size}",
                    url=resp.url,
                    digest=digest,
                )
            skip, expected = 0, size - pos
        elif resp.status == 200:
            skip, expected = pos, size
        else:
            raise RegistryHTTPError(
                image, f"{what}: unexpected answer", url=resp.url, status=resp.status
            )
        if length is not None and length.isdigit() and int(length) != expected:
            raise ContentSizeError(
                image,
                f"{what}: the registry announces {length} bytes, expected {expected} "
                f"(descriptor size {size})",
                url=resp.url,
                digest=digest,
            )
        return skip

    # -- requests -----------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        ref: Reference,
        endpoint: Endpoint,
        headers: Mapping[str, str],
        what: str,
    ) -> _Response:
        """One registry request with auth (one retry after a challenge) and 429
        handling (Retry-After honoured, bounded); any error status raises."""
        image = str(ref)
        scopes = [repository_scope(ref.path)]
        rate_limited = 0
        answered_challenge = False
        while True:
            hdrs = {"User-Agent": self.user_agent, **headers}
            try:
                authorization = self._auth.authorization(endpoint.host, scopes)
                if authorization is not None:
                    hdrs["Authorization"] = authorization
                resp = self._transport.open(method, url, hdrs)
            except (TokenError, UnsupportedChallengeError) as e:
                raise UnauthorizedError(image, f"{what}: {e}", url=url, status=401) from e
            except TransportError as e:
                raise RegistryUnavailableError(image, f"{what}: {e.reason}", url=e.url) from e
            if resp.status == 401 and not answered_challenge:
                challenge = resp.headers.get("www-authenticate")
                if challenge:
                    resp.close()
                    answered_challenge = True
                    try:
                        self._auth.challenged(endpoint.host, challenge, scopes)
                    except (TokenError, UnsupportedChallengeError) as e:
                        raise UnauthorizedError(image, f"{what}: {e}", url=url, status=401) from e
                    except TransportError as e:
                        raise RegistryUnavailableError(
                            image, f"{what}: token server: {e.reason}", url=e.url
                        ) from e
                    continue
            if resp.status == 429 and rate_limited < self.max_retries:
                delay = _retry_after(resp.headers.get("retry-after"), default=2.0**rate_limited)
                if delay <= self.max_retry_after:
                    resp.close()
                    self._sleep(delay)
                    rate_limited += 1
                    continue
            if resp.status >= 300:
                raise self._status_error(resp, image, what, retries=rate_limited)
            return resp

    def _status_error(
        self, resp: _Response, image: str, what: str, *, retries: int = 0
    ) -> RegistryError:
        try:
            body = resp.read_body(MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            body = b""
        finally:
            resp.close()
        code, detail = _registry_error(body)
        status, url = resp.status, resp.url
        suffix = f": {detail}" if detail else ""
        kw: dict[str, Any] = {"url": url, "status": status, "code": code}
        if status == 401:
            challenge = resp.headers.get("www-authenticate", "")
            hint = (
                "the credentials do not allow pulling it"
                if "insufficient_scope" in challenge
                else "authentication failed"
            )
            return UnauthorizedError(image, f"{what}: {hint}{suffix}", **kw)
        if status == 403:
            return ForbiddenError(image, f"{what}: access denied{suffix}", **kw)
        if status == 404:
            return NotFoundError(image, f"{what} not found{suffix}", **kw)
        if status == 429:
            retry_after = _retry_after(resp.headers.get("retry-after"), default=-1.0)
            return TooManyRequestsError(
                image,
                f"{what}: too many requests, still refused after {retries} retries"
                + (f" (asks to wait {retry_after:g}s)" if retry_after >= 0 else "")
                + suffix,
                retry_after=retry_after if retry_after >= 0 else None,
                **kw,
            )
        return RegistryHTTPError(image, f"{what}: unexpected answer{suffix}", **kw)

    def _plain_http_allowed(self, host: str) -> bool:
        """For a token realm: allowed where the config allows it, and on a host we
        already talk plain HTTP to (an insecure mirror's own token server)."""
        with self._lock:
            if host.lower() in self._plain_http_hosts:
                return True
        return self.config.plain_http_allowed(host)

    def _credentials_for(self, host: str) -> Credentials | None:
        with self._lock:
            if host in self._credentials:
                return self._credentials[host]
        return self.config.credentials_for(host)

    def _auth_fetch(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> Reply:
        resp = self._transport.open(method, url, {"User-Agent": self.user_agent, **headers}, body)
        try:
            data = resp.read_body(1 << 20)
        except (OSError, http.client.HTTPException) as e:
            raise TransportError(url, _describe(e, self._transport.timeout)) from e
        finally:
            resp.close()
        return Reply(resp.status, resp.headers, data)


def _media_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def _retry_after(value: str | None, *, default: float) -> float:
    """Retry-After is seconds or an HTTP date."""
    if value is None:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _registry_error(body: bytes) -> tuple[str | None, str]:
    """The distribution spec's error body: {"errors": [{"code", "message", "detail"}]}."""
    text = body.decode(errors="replace").strip()
    try:
        obj = json.loads(text) if text else None
    except ValueError:
        return None, text[:200]
    if isinstance(obj, dict) and isinstance(obj.get("errors"), list) and obj["errors"]:
        first = obj["errors"][0]
        if isinstance(first, dict):
            code = first.get("code")
            message = first.get("message") or ""
            return (str(code) if code else None), str(message)[:200]
    return None, text[:200]
