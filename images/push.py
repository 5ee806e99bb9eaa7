"""Push images from an OCI layout to a registry (OCI distribution spec, "push").

Minimal on purpose: anonymous access only (no token auth), plain blob upload
sessions (monolithic, or chunked with PATCH when `chunk_size` is set), no
cross-repository mounts. Order matters and follows the spec: blobs first, then
the manifests that reference them, then the index that references those
manifests; a registry may refuse a manifest whose blobs it has not seen.
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from images.digest import sha256_digest, validate_digest
from images.layout import (
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    OCILayout,
)

USER_AGENT = "pinnace-push/0.1"

# distribution spec: <name> and <reference> grammar.
_REPOSITORY_RE = re.compile(
    r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$"
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class PushError(Exception):
    """The registry refused or failed a step of a push; carries the URL and status."""

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        where = f"{url}: HTTP {status}" if status is not None else url
        super().__init__(f"{where}: {message}")
        self.url = url
        self.status = status


@dataclass
class PushResult:
    """What a push did: the top descriptor, and which blobs went up or were already there."""

    descriptor: Descriptor
    repository: str
    tags: tuple[str, ...]
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class RegistryPusher:
    """Uploads blobs and manifests to one registry, e.g. `http://127.0.0.1:5000`."""

    def __init__(
        self, registry_url: str, *, chunk_size: int | None = None, timeout: float = 30.0
    ) -> None:
        parsed = urllib.parse.urlsplit(registry_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"registry URL must be http(s)://host[:port], got {registry_url!r}")
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.base_url = f"{parsed.scheme}://{parsed.netloc}"
        self.chunk_size = chunk_size
        self.timeout = timeout

    # -- blobs --------------------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        url = self._url(repository, f"blobs/{validate_digest(digest)}")
        resp = self._request("HEAD", url)
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise _error(url, resp)

    def push_blob(self, repository: str, digest: str, size: int, body: BinaryIO) -> None:
        """Upload `size` bytes from `body` as blob `digest` (the registry checks the digest)."""
        start = self._url(repository, "blobs/uploads/")
        resp = self._request("POST", start, headers={"Content-Length": "0"})
        if resp.status != 202:
            raise _error(start, resp)
        location = self._location(start, resp)
        if self.chunk_size is None:
            final = _with_query(location, digest=digest)
            resp = self._request(
                "PUT",
                final,
                body=body,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
        else:
            offset = 0
            while offset < size:
                chunk = body.read(min(self.chunk_size, size - offset))
                if not chunk:
                    raise PushError(location, f"blob {digest} ended at {offset} of {size} bytes")
                resp = self._request(
                    "PATCH",
                    location,
                    body=chunk,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(len(chunk)),
                        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    },
                )
                if resp.status != 202:
                    raise _error(location, resp)
                location = self._location(location, resp)
                offset += len(chunk)
            final = _with_query(location, digest=digest)
            resp = self._request("PUT", final, headers={"Content-Length": "0"})
        if resp.status != 201:
            raise _error(final, resp)
        _check_digest(final, resp, digest)

    # -- manifests ----------------------------------------------------------

    def push_manifest(self, repository: str, reference: str, media_type: str, data: bytes) -> str:
        """PUT a manifest or index under a tag or its digest; return its digest."""
        if not _TAG_RE.match(reference):
            validate_digest(reference)
        url = self._url(repository, f"manifests/{reference}")
        resp = self._request(
            "PUT",
            url,
            body=data,
            headers={"Content-Type": media_type, "Content-Length": str(len(data))},
        )
        if resp.status != 201:
            raise _error(url, resp)
        digest = sha256_digest(data)
        _check_digest(url, resp, digest)
        return digest

    def push_from_layout(
        self, layout: OCILayout, ref_name: str, repository: str, tags: Sequence[str]
    ) -> PushResult:
        """Push the image (manifest or index) tagged `ref_name` in `layout` as
        `repository:tag` for every tag; with no tags it is pushed by digest only."""
        descriptor = layout.resolve(ref_name)
        for tag in tags:
            if not _TAG_RE.match(tag):
                raise ValueError(f"invalid tag {tag!r}")
        result = PushResult(descriptor=descriptor, repository=repository, tags=tuple(tags))
        self._push_tree(layout, repository, descriptor, result)
        data = layout.read_blob(descriptor.digest)
        for tag in tags:
            self.push_manifest(repository, tag, descriptor.media_type, data)
        return result

    def _push_tree(
        self, layout: OCILayout, repository: str, descriptor: Descriptor, result: PushResult
    ) -> None:
        if descriptor.media_type == MEDIA_TYPE_INDEX:
            for child in layout.read_index(descriptor.digest).manifests:
                self._push_tree(layout, repository, child, result)
        elif descriptor.media_type == MEDIA_TYPE_MANIFEST:
            manifest = layout.read_manifest(descriptor.digest)
            for blob in (manifest.config, *manifest.layers):
                if blob.digest in result.uploaded or blob.digest in result.skipped:
                    continue
                if self.blob_exists(repository, blob.digest):
                    result.skipped.append(blob.digest)
                    continue
                with layout.open_blob(blob.digest) as f:
                    self.push_blob(repository, blob.digest, blob.size, f)
                result.uploaded.append(blob.digest)
        else:
            raise PushError(
                str(layout.blob_path(descriptor.digest)),
                f"cannot push media type {descriptor.media_type!r}",
            )
        data = layout.read_blob(descriptor.digest)
        self.push_manifest(repository, descriptor.digest, descriptor.media_type, data)

    # -- HTTP ---------------------------------------------------------------

    def _url(self, repository: str, tail: str) -> str:
        if not _REPOSITORY_RE.match(repository):
            raise ValueError(f"invalid repository name {repository!r}")
        return f"{self.base_url}/v2/{repository}/{tail}"

    def _location(self, request_url: str, resp: _Response) -> str:
        location = resp.headers.get("location")
        if not location:
            raise PushError(request_url, "upload response has no Location header", resp.status)
        return urllib.parse.urljoin(request_url, location)

    def _request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | BinaryIO | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Response:
        parts = urllib.parse.urlsplit(url)
        conn_cls = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_cls(parts.netloc, timeout=self.timeout)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(
                method, target, body=body, headers={"User-Agent": USER_AGENT, **(headers or {})}
            )
            resp = conn.getresponse()
            data = resp.read()
            return _Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        except OSError as e:
            raise PushError(url, f"{method} failed: {e}") from e
        finally:
            conn.close()


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query += list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _check_digest(url: str, resp: _Response, expected: str) -> None:
    got = resp.headers.get("docker-content-digest")
    if got is not None and got != expected:
        raise PushError(url, f"registry stored digest {got}, expected {expected}", resp.status)


def _error(url: str, resp: _Response) -> PushError:
    text = resp.body.decode(errors="replace").strip()[:500]
    if resp.status == 401:
        text = "authentication required (this client pushes anonymously only): " + text
    return PushError(url, text or "unexpected response", resp.status)
