"""Pull an image into a content store: resolve, choose the platform, fetch the
config and layers concurrently, then store the manifests.

Order gives the store its invariant: blobs first, then the platform manifest,
then the index(es) above it, so a manifest present in the store always has
its config and layers present too. Nothing is visible under a digest before
the store has verified it (ContentWriter.commit); a download cut off midway
stays in the store's ingest area and the next attempt continues from its
`offset` with an HTTP Range request.

The store is images/content.py's ContentStore, or anything with its shape:

    store.has(digest) -> bool
    store.writer(digest, size) -> context manager yielding a writer with
        .offset (bytes already there), .write(bytes), .reset() (start from 0),
        .commit() (verifies digest and size, renames atomically; a digest
        mismatch discards the bytes); leaving the block without commit keeps
        the bytes for the next writer to resume from
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Literal, Protocol

from images.digest import DigestMismatchError
from images.hosts import load_registry_config
from images.layout import Descriptor, Platform
from images.reference import Reference, parse_reference
from images.registry import (
    DEFAULT_PLATFORM,
    ContentDigestMismatchError,
    ContentSizeError,
    FetchedIndex,
    FetchedManifest,
    PlatformNotFoundError,
    PullCancelledError,
    RegistryClient,
    RegistryError,
    ResolvedImage,
    compatible_platforms,
    normalize_platform,
)

# docker's default max-concurrent-downloads.
DEFAULT_CONCURRENCY = 3


class ContentWriterLike(Protocol):
    @property
    def offset(self) -> int: ...

    def write(self, data: bytes, /) -> object: ...

    def commit(self) -> object: ...

    def reset(self) -> object: ...


class ContentWriterContext(Protocol):
    def __enter__(self) -> ContentWriterLike: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool | None: ...


class ContentStoreLike(Protocol):
    def has(self, digest: str) -> bool: ...

    def writer(self, digest: str, size: int) -> ContentWriterContext: ...

    def open(self, digest: str) -> BinaryIO: ...


ProgressStatus = Literal["exists", "started", "downloading", "done"]


@dataclass(frozen=True)
class PullProgress:
    """One update for one blob. `started` has done > 0 when resuming. Called from
    the download threads: a progress bar must lock what it shares."""

    digest: str
    kind: Literal["config", "layer"]
    done: int
    total: int
    status: ProgressStatus


ProgressCallback = Callable[[PullProgress], None]


@dataclass(frozen=True)
class PullResult:
    """What was pulled. `target` is what the reference resolved to (an index or a
    manifest): the digest an image record should name. `manifest` is the image
    for `platform` under it."""

    reference: Reference
    target: Descriptor
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    indexes: tuple[Descriptor, ...]
    platform: Platform | None
    source: str
    downloaded: tuple[str, ...]
    present: tuple[str, ...]


def pull(
    reference: Reference | str,
    store: ContentStoreLike,
    *,
    client: RegistryClient | None = None,
    platform: Platform = DEFAULT_PLATFORM,
    max_concurrent: int = DEFAULT_CONCURRENCY,
    progress: ProgressCallback | None = None,
) -> PullResult:
    """Pull `reference` for `platform` into `store`. With no client, one is made
    from the default registry configuration (/etc/pinnace/registries.yaml)."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if client is None:
        client = RegistryClient(load_registry_config())
    resolved = client.resolve(ref)
    manifest, indexes = client.resolve_platform(resolved, platform)

    blobs: list[tuple[Descriptor, Literal["config", "layer"]]] = [(manifest.config, "config")]
    seen = {manifest.config.digest}
    for layer in manifest.layers:
        if layer.digest not in seen:
            seen.add(layer.digest)
            blobs.append((layer, "layer"))
    workers = max(1, max_concurrent)
    if indexes:
        downloaded, present = _fetch_blobs(client, resolved, store, blobs, workers, progress)
    else:
        # a lone manifest names no platform: its config does. Check it before any layer.
        downloaded, present = _fetch_blobs(client, resolved, store, blobs[:1], workers, progress)
        _check_config_platform(store, manifest.config, platform, resolved)
        more = _fetch_blobs(client, resolved, store, blobs[1:], workers, progress)
        downloaded += more[0]
        present += more[1]

    _store_document(store, resolved, manifest)
    for index in reversed(indexes):
        _store_document(store, resolved, index)

    chosen = _chosen_platform(indexes, manifest)
    return PullResult(
        reference=ref,
        target=resolved.descriptor,
        manifest=manifest.descriptor,
        config=manifest.config,
        layers=manifest.layers,
        indexes=tuple(index.descriptor for index in indexes),
        platform=chosen,
        source=resolved.base_url,
        downloaded=tuple(downloaded),
        present=tuple(present),
    )


def _check_config_platform(
    store: ContentStoreLike, config: Descriptor, platform: Platform, resolved: ResolvedImage
) -> None:
    """Refuse an image built for another platform than the one asked for (as containerd)."""
    with store.open(config.digest) as f:
        doc = json.loads(f.read())
    have = normalize_platform(
        Platform(
            str(doc.get("os", "")), str(doc.get("architecture", "")), doc.get("variant") or None
        )
    )
    want = normalize_platform(platform)
    same = (have.os, have.architecture) == (want.os, want.architecture)
    if not same and have not in compatible_platforms(platform):
        raise PlatformNotFoundError(str(resolved.reference), want, [have], url=resolved.base_url)


def _chosen_platform(indexes: Sequence[FetchedIndex], manifest: FetchedManifest) -> Platform | None:
    if not indexes:
        return None
    for desc in indexes[-1].manifests:
        if desc.digest == manifest.descriptor.digest and desc.platform is not None:
            return normalize_platform(desc.platform)
    return None


def _fetch_blobs(
    client: RegistryClient,
    resolved: ResolvedImage,
    store: ContentStoreLike,
    blobs: Sequence[tuple[Descriptor, Literal["config", "layer"]]],
    workers: int,
    progress: ProgressCallback | None,
) -> tuple[list[str], list[str]]:
    """Download what the store lacks, `workers` at a time. The first failure
    stops the rest (queued ones never start, running ones stop at their next
    chunk, keeping what they have for a later resume) and is raised, with the
    other failures as notes."""
    cancel = threading.Event()
    downloaded: list[str] = []
    present: list[str] = []
    errors: list[BaseException] = []
    with ThreadPoolExecutor(
        max_workers=min(workers, len(blobs)), thread_name_prefix="pinnace-pull"
    ) as pool:
        futures: dict[Future[bool], Descriptor] = {
            pool.submit(_fetch_one, client, resolved, store, desc, kind, progress, cancel): desc
            for desc, kind in blobs
        }
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                error = future.exception()
                if error is not None:
                    errors.append(error)
                    cancel.set()
                    for pending in futures:
                        pending.cancel()
                elif future.result():
                    downloaded.append(futures[future].digest)
                else:
                    present.append(futures[future].digest)
        except BaseException:  # KeyboardInterrupt: stop the downloads, do not wait them out
            cancel.set()
            for pending in futures:
                pending.cancel()
            raise
    if errors:
        real = [e for e in errors if not isinstance(e, PullCancelledError)] or errors
        first = real[0]
        for later in real[1:]:
            first.add_note(f"also failed: {later}")
        raise first
    order = {desc.digest: i for i, (desc, _) in enumerate(blobs)}
    downloaded.sort(key=order.__getitem__)
    present.sort(key=order.__getitem__)
    return downloaded, present


def _fetch_one(
    client: RegistryClient,
    resolved: ResolvedImage,
    store: ContentStoreLike,
    desc: Descriptor,
    kind: Literal["config", "layer"],
    progress: ProgressCallback | None,
    cancel: threading.Event,
) -> bool:
    """Download one blob into the store; False if it was already there."""

    def report(done: int, status: ProgressStatus) -> None:
        if progress is not None:
            progress(PullProgress(desc.digest, kind, done, desc.size, status))

    if store.has(desc.digest):
        report(desc.size, "exists")
        return False
    what = f"blob {desc.digest}"
    # Two rounds at most: the second only when bytes kept from an earlier pull
    # turned out wrong (the store drops them when commit fails verification).
    for round_ in range(2):
        if cancel.is_set():
            raise PullCancelledError(resolved.image, f"{what}: cancelled", digest=desc.digest)
        start = 0
        try:
            with store.writer(desc.digest, desc.size) as writer:
                start = writer.offset
                report(start, "started")
                try:
                    client.fetch_blob(
                        resolved,
                        desc,
                        writer,
                        offset=start,
                        progress=lambda done: report(done, "downloading"),
                        cancel=cancel,
                    )
                except (ContentDigestMismatchError, ContentSizeError):
                    writer.reset()  # wrong bytes, not merely incomplete: nothing to resume
                    raise
                writer.commit()
        except RegistryError:
            raise
        except DigestMismatchError as e:
            if start > 0 and round_ == 0:
                continue
            raise ContentDigestMismatchError(
                resolved.image, what, desc.digest, e.actual, url=resolved.base_url
            ) from e
        report(desc.size, "done")
        return True
    raise AssertionError("unreachable")  # pragma: no cover


def _store_document(
    store: ContentStoreLike, resolved: ResolvedImage, doc: FetchedManifest | FetchedIndex
) -> None:
    """Store a manifest or index whose bytes are already verified."""
    desc = doc.descriptor
    for round_ in range(2):
        if store.has(desc.digest):
            return
        start = 0
        try:
            with store.writer(desc.digest, desc.size) as writer:
                start = writer.offset
                writer.write(doc.raw[start:])
                writer.commit()
            return
        except DigestMismatchError as e:  # a wrong partial write kept from an earlier pull
            if start > 0 and round_ == 0:
                continue
            raise ContentDigestMismatchError(
                resolved.image, f"manifest {desc.digest}", desc.digest, e.actual
            ) from e
