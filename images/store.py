"""The image store: blobs, image records, and layers unpacked once into overlay snapshots.

On disk, under `root` (default /var/lib/pinnace):

    content/                 the content store (images/content.py): blobs by digest
    snapshots/               the overlay snapshotter: one committed snapshot per chain ID
    images/images.json       image records: name -> target, manifest, config, layers, chain IDs
    images/lock              flock(2)ed while records or leases change, and for all of GC
    images/leases/<id>.json  what an operation in progress (pull, import, unpack) holds

An image record names what a tag points at (a manifest, or an index plus the
manifest selected from it for this platform), its config and its layers;
every blob and chain ID it needs is listed in the record, so GC marks from
the records without parsing a single manifest.

Concurrency. Records and leases change only under `images/lock`, and GC
marks and sweeps under it too. Long work (downloads, unpacking) runs without
it, protected by a *lease*: a file naming the blobs and snapshots the
operation is about to write or use, written under the lock *before* it
checks whether they exist. So GC either finished before the lease named a
blob (and the operation sees the blob missing and fetches it) or sees the
lease and keeps the blob. A lease belongs to a process (pid plus its start
time, so a recycled pid is not mistaken for it) and dies with it.

Unpacking prepares an active snapshot keyed `extract-<pid>-<random>`, applies
the layer with overlayfs.unpack.apply_layer, checks its DiffID against the
config's rootfs.diff_ids and commits it under the chain ID. Two unpacks of
one layer at once both apply it; the second commit finds the chain ID taken
(SnapshotExistsError) and drops its copy.

Crash safety (kill -9 at any point). Blobs appear only complete and verified
(content.py); records and leases are replaced atomically; a snapshot is
committed only after its layer is applied and verified. What a killed
process can leave: an ingest (kept for resume, or removed by age), a lease
of a dead process, an `extract-*` snapshot of a dead process, an unnamed
snapshot directory, a committed snapshot or verified blob no record names
yet, temp files. `recover()`, run when a store user starts, removes all of
that except unreferenced blobs, which are valid content a retried pull
reuses; `gc()` removes those.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform as platform_mod
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from images.content import (
    ContentNotFoundError,
    ContentSizeError,
    ContentStore,
    ContentWriter,
)
from images.digest import (
    is_digest,
    sha256_digest,
    validate_digest,
)
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
)
from overlayfs.errors import (
    LayerError,
    MountedError,
    SnapshotExistsError,
    SnapshotInUseError,
    SnapshotNotFoundError,
)
from overlayfs.mounts import Mount
from overlayfs.snapshotter import Info, Kind, OverlaySnapshotter
from overlayfs.unpack import apply_layer

DEFAULT_ROOT = Path("/var/lib/pinnace")
DEFAULT_INGEST_MAX_AGE = 24 * 3600.0  # containerd's default lease expiry for ingests

EXTRACT_PREFIX = "extract-"
LABEL_EXTRACT_PID = "pinnace.io/extract.pid"
LABEL_EXTRACT_START = "pinnace.io/extract.start-time"
LABEL_DIFF_ID = "pinnace.io/diff-id"

_RECORDS_VERSION = 1
_MAX_JSON_BLOB = 16 << 20  # manifests and configs; registries cap manifests at 4 MiB
_NAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,1024}$")
_SHORT_ID_RE = re.compile(r"^[a-f0-9]{12,64}$")
_LEASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _checkpoint(point: str) -> None:
    """A named point in a store operation (crash tests replace this to SIGKILL there)."""


# -- errors -------------------------------------------------------------------


class ImageStoreError(Exception):
    """Base of the image store's errors."""


class ImageNotFoundError(ImageStoreError, KeyError):
    """No image record matches the reference (name, digest or ID)."""

    def __init__(self, ref: str) -> None:
        ImageStoreError.__init__(self, f"image {ref!r}: not found")
        self.ref = ref

    def __str__(self) -> str:
        return str(self.args[0])


class AmbiguousImageError(ImageStoreError):
    """A short ID that is the prefix of several images' IDs."""

    def __init__(self, ref: str, ids: Sequence[str]) -> None:
        super().__init__(f"image ID prefix {ref!r} matches {len(ids)} images: {', '.join(ids)}")
        self.ref = ref
        self.ids = list(ids)


class InvalidImageNameError(ImageStoreError, ValueError):
    def __init__(self, name: object) -> None:
        super().__init__(f"invalid image name {name!r}: want 1-1024 printable, non-blank chars")
        self.name = name


class ManifestError(ImageStoreError):
    """A manifest, index or config that is malformed or of an unsupported kind."""

    def __init__(self, digest: str, message: str) -> None:
        super().__init__(f"{digest}: {message}")
        self.digest = digest


class MissingBlobError(ImageStoreError):
    """A descriptor points at a blob that is not in the content store."""

    def __init__(self, digest: str, what: str) -> None:
        super().__init__(f"{what} {digest}: blob missing")
        self.digest = digest
        self.what = what


class PlatformNotFoundError(ImageStoreError):
    """An index with no manifest for the wanted platform."""

    def __init__(self, digest: str, wanted: Platform, available: Sequence[Platform]) -> None:
        shown = ", ".join(_platform_str(p) for p in available) or "none"
        super().__init__(
            f"index {digest}: no manifest for {_platform_str(wanted)} (it has: {shown})"
        )
        self.digest = digest
        self.wanted = wanted
        self.available = list(available)


class UnpackError(ImageStoreError):
    """A layer could not be unpacked; `digest` is the layer blob's. Nothing of it is kept."""

    def __init__(self, digest: str, message: str) -> None:
        super().__init__(f"layer {digest}: {message}")
        self.digest = digest


class DiffIDMismatchError(UnpackError):
    """The uncompressed layer is not the one the image config lists (rootfs.diff_ids)."""

    def __init__(self, digest: str, expected: str, actual: str) -> None:
        super().__init__(digest, f"DiffID is {actual}, the image config says {expected}")
        self.expected = expected
        self.actual = actual


class StoreCorruptError(ImageStoreError, OSError):
    """A store file that does not parse: refuse rather than guess and lose records."""

    def __init__(self, path: Path, message: str) -> None:
        OSError.__init__(self, errno.EIO, message, str(path))


# -- platforms ----------------------------------------------------------------

_MACHINES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", None),
    "i386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def default_platform() -> Platform:
    """This machine's platform, as OCI spells it (linux/amd64 on x86_64)."""
    arch, variant = _MACHINES.get(platform_mod.machine(), (platform_mod.machine(), None))
    return Platform(os="linux", architecture=arch, variant=variant)


def _platform_str(p: Platform | None) -> str:
    if p is None:
        return "unknown"
    return f"{p.os}/{p.architecture}" + (f"/{p.variant}" if p.variant else "")


def select_manifest(
    children: Sequence[Descriptor], wanted: Platform | None, index_digest: str
) -> Descriptor:
    """The manifest of an index for `wanted` (default: this machine's platform).

    A wanted variant must match; with none wanted any variant does. An
    index of one manifest without a platform is taken as it is.
    """
    want = wanted or default_platform()
    manifests = [d for d in children if d.media_type in MANIFEST_MEDIA_TYPES or not d.media_type]
    if len(manifests) == 1 and manifests[0].platform is None:
        return manifests[0]
    for d in manifests:
        p = d.platform
        if p is None or p.os != want.os or p.architecture != want.architecture:
            continue
        if want.variant and p.variant and p.variant != want.variant:
            continue
        return d
    raise PlatformNotFoundError(
        index_digest, want, [d.platform for d in manifests if d.platform is not None]
    )


# -- parsing ------------------------------------------------------------------


def _json_object(data: bytes, digest: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise ManifestError(digest, f"{what} is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ManifestError(digest, f"{what} is not a JSON object")
    return obj


def _descriptor(obj: Any, digest: str, what: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestError(digest, f"{what} is not a descriptor object")
    try:
        return Descriptor.from_json(obj)
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(digest, f"{what}: {e}") from None


def blob_kind(media_type: str, data: bytes, digest: str) -> str:
    """ "index" or "manifest": from the media type, or the document itself when untyped."""
    obj = _json_object(data, digest, "manifest")
    declared = obj.get("mediaType")
    if media_type and declared and media_type != declared:
        raise ManifestError(
            digest, f"descriptor says {media_type!r}, the document says {declared!r}"
        )
    mt = media_type or declared
    if mt in INDEX_MEDIA_TYPES:
        return "index"
    if mt in MANIFEST_MEDIA_TYPES:
        return "manifest"
    if mt:
        raise ManifestError(digest, f"unsupported manifest media type {mt!r}")
    if "manifests" in obj:
        return "index"
    if "config" in obj:
        return "manifest"
    raise ManifestError(digest, "neither an image manifest nor an index")


def parse_index(data: bytes, digest: str) -> list[Descriptor]:
    """The manifests of an OCI index or a Docker manifest list."""
    obj = _json_object(data, digest, "index")
    if obj.get("schemaVersion") != 2:
        raise ManifestError(digest, f"schemaVersion must be 2, got {obj.get('schemaVersion')!r}")
    items = obj.get("manifests")
    if not isinstance(items, list):
        raise ManifestError(digest, "index has no 'manifests' list")
    return [_descriptor(d, digest, f"manifests[{i}]") for i, d in enumerate(items)]


def parse_manifest(data: bytes, digest: str) -> tuple[Descriptor, tuple[Descriptor, ...]]:
    """(config, layers) of an OCI image manifest or a Docker schema 2 manifest."""
    obj = _json_object(data, digest, "manifest")
    if obj.get("schemaVersion") != 2:
        raise ManifestError(
            digest,
            f"schemaVersion must be 2, got {obj.get('schemaVersion')!r}"
            " (Docker schema 1 is not supported)",
        )
    declared = obj.get("mediaType")
    if declared is not None and declared not in MANIFEST_MEDIA_TYPES:
        raise ManifestError(digest, f"not an image manifest: mediaType {declared!r}")
    config = _descriptor(obj.get("config"), digest, "config")
    if config.media_type not in CONFIG_MEDIA_TYPES:
        raise ManifestError(
            digest, f"config media type {config.media_type!r} is not an image config"
        )
    raw_layers = obj.get("layers")
    if not isinstance(raw_layers, list):
        raise ManifestError(digest, "manifest has no 'layers' list")
    layers = tuple(_descriptor(d, digest, f"layers[{i}]") for i, d in enumerate(raw_layers))
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise ManifestError(
                digest, f"layers[{i}] {layer.digest}: unsupported media type {layer.media_type!r}"
            )
    return config, layers


def parse_config(data: bytes, digest: str) -> tuple[tuple[str, ...], Platform]:
    """(rootfs.diff_ids, platform) of an image config."""
    obj = _json_object(data, digest, "config")
    rootfs = obj.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ManifestError(digest, "config has no rootfs of type 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ManifestError(digest, "config rootfs.diff_ids is not a list of digests")
    for d in diff_ids:
        try:
            validate_digest(d)
        except ValueError as e:
            raise ManifestError(digest, f"config rootfs.diff_ids: {e}") from None
    os_name, arch, variant = obj.get("os"), obj.get("architecture"), obj.get("variant")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        raise ManifestError(digest, "config has no os/architecture")
    return tuple(diff_ids), Platform(
        os=os_name, architecture=arch, variant=variant if isinstance(variant, str) else None
    )


def chain_ids(diff_ids: Sequence[str]) -> tuple[str, ...]:
    """Chain IDs (image-spec "ChainID"): a layer's identity given every layer below it."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else sha256_digest(f"{out[-1]} {d}".encode()))
    return tuple(out)


# -- records ------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedImage:
    """What a target descriptor comes to on this platform, every blob checked present."""

    target: Descriptor  # what the name points at: a manifest, or an index
    manifest: Descriptor  # the manifest for this platform (== target for a manifest)
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]
    chain_ids: tuple[str, ...]
    platform: Platform

    def blobs(self) -> list[str]:
        """Every blob digest the image needs (GC keeps these)."""
        out = [self.target.digest, self.manifest.digest, self.config.digest]
        out += [layer.digest for layer in self.layers]
        return list(dict.fromkeys(out))

    @property
    def top_chain_id(self) -> str:
        """The snapshot a container's root is prepared on ("" for an image without layers)."""
        return self.chain_ids[-1] if self.chain_ids else ""


@dataclass(frozen=True)
class Image(ResolvedImage):
    """An image record: a name and what it resolved to when it was recorded."""

    name: str = ""
    created: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The image ID, as docker and CRI show it: the config digest."""
        return self.config.digest

    @property
    def size(self) -> int:
        """Bytes of the blobs as stored (compressed layers, config, manifests)."""
        sizes = {self.target.digest: self.target.size, self.manifest.digest: self.manifest.size}
        sizes[self.config.digest] = self.config.size
        for layer in self.layers:
            sizes[layer.digest] = layer.size
        return sum(sizes.values())

    @property
    def repository(self) -> str:
        return split_name(self.name)[0]

    @property
    def repo_digest(self) -> str:
        """`repository@digest` of what the name points at (CRI's repo_digests)."""
        return f"{self.repository}@{self.target.digest}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target.to_json(),
            "manifest": self.manifest.to_json(),
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
            "diff_ids": list(self.diff_ids),
            "chain_ids": list(self.chain_ids),
            "platform": self.platform.to_json(),
            "created": self.created,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Image:
        return cls(
            name=str(obj["name"]),
            target=Descriptor.from_json(obj["target"]),
            manifest=Descriptor.from_json(obj["manifest"]),
            config=Descriptor.from_json(obj["config"]),
            layers=tuple(Descriptor.from_json(d) for d in obj["layers"]),
            diff_ids=tuple(str(d) for d in obj["diff_ids"]),
            chain_ids=tuple(str(c) for c in obj["chain_ids"]),
            platform=Platform.from_json(obj["platform"]),
            created=float(obj.get("created", 0.0)),
            labels=dict(obj.get("labels") or {}),
        )

    @classmethod
    def of(cls, name: str, r: ResolvedImage, created: float, labels: Mapping[str, str]) -> Image:
        return cls(
            target=r.target,
            manifest=r.manifest,
            config=r.config,
            layers=r.layers,
            diff_ids=r.diff_ids,
            chain_ids=r.chain_ids,
            platform=r.platform,
            name=name,
            created=created,
            labels=dict(labels),
        )


def split_name(name: str) -> tuple[str, str | None]:
    """(repository, tag or None) of `repo[:tag][@digest]`; a registry port is not a tag."""
    base = name.split("@", 1)[0]
    slash = base.rfind("/")
    colon = base.rfind(":")
    if colon > slash:
        return base[:colon], base[colon + 1 :]
    return base, None


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidImageNameError(name)
    return name


# -- process identity (for leases and extract snapshots) -----------------------


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _owner_alive(pid: int, start: int | None) -> bool:
    """Whether the process that wrote (pid, start time) still runs (not a recycled pid)."""
    now = _start_time(pid)
    return now is not None and (start is None or now == start)


_SELF_START: dict[int, int | None] = {}


def _self_identity() -> tuple[int, int | None]:
    pid = os.getpid()
    if pid not in _SELF_START:  # per pid: a forked child is another owner
        _SELF_START[pid] = _start_time(pid)
    return pid, _SELF_START[pid]


# -- results ------------------------------------------------------------------


@dataclass
class GCResult:
    """What a collection removed."""

    blobs: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    bytes_freed: int = 0


@dataclass
class RecoveryReport:
    """What `recover` removed after a crash."""

    ingests: list[str] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    snapshot_dirs: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.ingests or self.leases or self.snapshots or self.snapshot_dirs or self.temp_files
        )


@dataclass(frozen=True)
class StoreUsage:
    """Disk use of the image filesystem: content (blobs, ingests) and committed layers."""

    content_bytes: int
    content_inodes: int
    snapshot_bytes: int
    snapshot_inodes: int

    @property
    def bytes(self) -> int:
        return self.content_bytes + self.snapshot_bytes

    @property
    def inodes(self) -> int:
        return self.content_inodes + self.snapshot_inodes


# -- leases -------------------------------------------------------------------


@dataclass
class _LeaseRecord:
    id: str
    pid: int
    start_time: int | None
    created: float
    expires: float | None
    digests: list[str]
    snapshots: list[str]

    def live(self, now: float) -> bool:
        if self.expires is not None and now >= self.expires:
            return False
        return _owner_alive(self.pid, self.start_time)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "start_time": self.start_time,
            "created": self.created,
            "expires": self.expires,
            "digests": self.digests,
            "snapshots": self.snapshots,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> _LeaseRecord:
        st = obj.get("start_time")
        exp = obj.get("expires")
        return cls(
            id=str(obj["id"]),
            pid=int(obj["pid"]),
            start_time=int(st) if st is not None else None,
            created=float(obj.get("created", 0.0)),
            expires=float(exp) if exp is not None else None,
            digests=[str(d) for d in obj.get("digests", [])],
            snapshots=[str(s) for s in obj.get("snapshots", [])],
        )


class Lease:
    """Protects the blobs and snapshots of an operation in progress from GC.

    Add a blob *before* checking whether the store has it (or before
    writing it): see the module doc. Released by `release()` or at the end
    of a with-block; dies with its process otherwise. With `collect`, the
    release deletes what it held that nothing else (a record, another
    lease, a snapshot on top) needs: a failed import leaves nothing behind.
    """

    def __init__(self, store: ImageStore, record: _LeaseRecord, *, collect: bool) -> None:
        self.store = store
        self._rec = record
        self.collect = collect
        self.released = False

    @property
    def id(self) -> str:
        return self._rec.id

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(self._rec.digests)

    @property
    def snapshots(self) -> frozenset[str]:
        return frozenset(self._rec.snapshots)

    def add(self, *digests: str) -> None:
        """Hold these blobs (the lease file is rewritten under the store lock)."""
        new = [validate_digest(d) for d in digests if d not in self._rec.digests]
        if new:
            self._update(digests=new)

    def add_snapshots(self, *names: str) -> None:
        new = [n for n in names if n and n not in self._rec.snapshots]
        if new:
            self._update(snapshots=new)

    def _update(self, *, digests: Sequence[str] = (), snapshots: Sequence[str] = ()) -> None:
        if self.released:
            raise ImageStoreError(f"lease {self.id}: already released")
        with self.store._locked():
            self._rec.digests.extend(dict.fromkeys(digests))
            self._rec.snapshots.extend(dict.fromkeys(snapshots))
            self.store._write_lease(self._rec)

    def has(self, digest: str) -> bool:
        """`content.has`, holding the blob first (the contract above). With `writer`,
        this makes a lease a content store for images/pull.py: `pull(..., store=lease)`."""
        self.add(digest)
        return self.store.content.has(digest)

    def writer(self, digest: str, size: int, **kw: Any) -> ContentWriter:
        """`content.writer` for a blob this lease holds (added first, as the contract says)."""
        self.add(digest)
        return self.store.content.writer(digest, size, **kw)

    def open(self, digest: str) -> BinaryIO:
        """Read a blob this lease holds (a pull checks a config before its layers)."""
        self.add(digest)
        return self.store.content.open(digest)

    def release(self, *, collect: bool | None = None) -> GCResult:
        """Drop the lease; with `collect`, delete what only it was holding."""
        if self.released:
            return GCResult()
        collect = self.collect if collect is None else collect
        with self.store._locked():
            self.store._remove_lease(self.id)
            self.released = True
            if not collect:
                return GCResult()
            return self.store._collect_locked(
                only_blobs=set(self._rec.digests), only_snapshots=set(self._rec.snapshots)
            )

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.release()
        except Exception as undo:
            if exc is None:
                raise
            exc.add_note(f"releasing lease {self.id}: {undo}")


# -- the store ----------------------------------------------------------------


class _HashingReader:
    """Hashes what passes through, so a layer blob is re-verified as it is unpacked."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        b: bytes = self._f.read(n)
        self._h.update(b)
        self.size += len(b)
        return b

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


class ImageStore:
    """Images on one machine: content, records and unpacked layers under `root`.

    Safe to share between processes (flock) and threads (a lock per instance).
    Call `recover()` when a long-running user (the CRI server, a CLI command
    that writes) starts.
    """

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT, *, sync: bool = True) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.sync = sync
        self.images_dir = self.root / "images"
        self.leases_dir = self.images_dir / "leases"
        self.leases_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.content = ContentStore(self.root / "content")
        self._records_path = self.images_dir / "images.json"
        self._open()

    def _open(self) -> None:
        self._pid = os.getpid()
        self._snapshotter = OverlaySnapshotter(self.root / "snapshots", sync=self.sync)
        self._lock_fd = os.open(
            self.images_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        self._tlock = threading.RLock()
        self._depth = 0

    def _check_fork(self) -> None:
        """A forked child opens its own lock files: flock(2) locks belong to the open file
        description, which a child shares with its parent, so they would not exclude
        each other (and the child might inherit a lock held mid-operation)."""
        if self._pid != os.getpid() and self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._snapshotter.close()
            self._open()

    @property
    def snapshotter(self) -> OverlaySnapshotter:
        self._check_fork()
        return self._snapshotter

    def close(self) -> None:
        self._snapshotter.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- locking and files ------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The store lock (reentrant within a thread: only the outermost level flocks)."""
        if self._lock_fd < 0:
            raise ImageStoreError("image store is closed")
        self._check_fork()
        with self._tlock:
            if self._depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _atomic_write(self, path: Path, doc: Any) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, separators=(",", ":"), sort_keys=True)
                f.flush()
                if self.sync:
                    os.fsync(f.fileno())
            _checkpoint(f"write.{path.name}.synced")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if self.sync:
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _load_records(self) -> dict[str, Image]:
        try:
            raw = json.loads(self._records_path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise StoreCorruptError(
                self._records_path, f"image records do not parse: {e}"
            ) from None
        if not isinstance(raw, dict) or raw.get("version") != _RECORDS_VERSION:
            raise StoreCorruptError(self._records_path, "unknown image records version")
        try:
            return {name: Image.from_json(obj) for name, obj in raw["images"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise StoreCorruptError(self._records_path, f"bad image record: {e}") from None

    def _save_records(self, records: Mapping[str, Image]) -> None:
        doc = {
            "version": _RECORDS_VERSION,
            "images": {name: img.to_json() for name, img in sorted(records.items())},
        }
        self._atomic_write(self._records_path, doc)

    def _lease_path(self, lease_id: str) -> Path:
        if not _LEASE_ID_RE.fullmatch(lease_id):
            raise ValueError(f"invalid lease id {lease_id!r}")
        return self.leases_dir / f"{lease_id}.json"

    def _write_lease(self, rec: _LeaseRecord) -> None:
        self._atomic_write(self._lease_path(rec.id), rec.to_json())

    def _remove_lease(self, lease_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lease_path(lease_id))

    def _leases(self) -> builtins.list[tuple[Path, _LeaseRecord | None]]:
        out: list[tuple[Path, _LeaseRecord | None]] = []
        for path in sorted(self.leases_dir.glob("*.json")):
            try:
                out.append((path, _LeaseRecord.from_json(json.loads(path.read_bytes()))))
            except FileNotFoundError:
                continue
            except (KeyError, TypeError, ValueError):
                out.append((path, None))  # unreadable: cannot protect anything, stale
        return out

    def _live_leases(self, *, prune: bool) -> builtins.list[_LeaseRecord]:
        """Leases whose process still runs; with `prune`, delete the others (under the lock)."""
        now = time.time()
        live = []
        for path, rec in self._leases():
            if rec is not None and rec.live(now):
                live.append(rec)
            elif prune:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return live

    # -- leases -----------------------------------------------------------------

    def lease(self, *, collect: bool = False, ttl: float | None = None) -> Lease:
        """A new lease of this process (see Lease); `ttl` seconds bounds it even if we live."""
        pid, start = _self_identity()
        now = time.time()
        rec = _LeaseRecord(
            id=f"{pid}-{uuid.uuid4().hex[:16]}",
            pid=pid,
            start_time=start,
            created=now,
            expires=now + ttl if ttl is not None else None,
            digests=[],
            snapshots=[],
        )
        with self._locked():
            self._write_lease(rec)
        return Lease(self, rec, collect=collect)

    def leases(self) -> builtins.list[str]:
        """Ids of the live leases."""
        with self._locked():
            return [rec.id for rec in self._live_leases(prune=False)]

    # -- resolving and recording --------------------------------------------------

    def _check_blob(self, desc: Descriptor, what: str) -> None:
        try:
            info = self.content.info(desc.digest)
        except ContentNotFoundError:
            raise MissingBlobError(desc.digest, what) from None
        if info.size != desc.size:
            raise ContentSizeError(
                desc.digest,
                desc.size,
                info.size,
                f"{what}: the descriptor says {desc.size} bytes, the blob has {info.size}",
            )

    def _read_json_blob(self, desc: Descriptor, what: str) -> bytes:
        self._check_blob(desc, what)
        return self.content.read(desc.digest, max_size=_MAX_JSON_BLOB)

    def descriptor_of(self, digest: str) -> Descriptor:
        """A descriptor for a manifest or index in the store, typed from its content."""
        data = self.content.read(validate_digest(digest), max_size=_MAX_JSON_BLOB)
        kind = blob_kind("", data, digest)
        declared = _json_object(data, digest, "manifest").get("mediaType")
        media_type = (
            declared
            if isinstance(declared, str) and declared
            else (MEDIA_TYPE_INDEX if kind == "index" else MEDIA_TYPE_MANIFEST)
        )
        return Descriptor(media_type, digest, len(data))

    def resolve(
        self,
        target: Descriptor | str,
        platform: Platform | None = None,
        *,
        fetch: Callable[[Descriptor, str], None] | None = None,
    ) -> ResolvedImage:
        """Follow `target` (index -> manifest for `platform` -> config, layers).

        `fetch(descriptor, what)` is called for each blob before it is
        needed (an importer copies it in there); every blob must then be
        in the content store with the descriptor's size, else
        MissingBlobError / ContentSizeError. Configs must list one DiffID per layer.
        """

        def need(desc: Descriptor, what: str) -> None:
            if fetch is not None:
                fetch(desc, what)
            self._check_blob(desc, what)

        if isinstance(target, str):
            if not self.content.has(validate_digest(target)):
                raise MissingBlobError(target, "manifest")
            target = self.descriptor_of(target)
        need(target, "manifest")
        data = self.content.read(target.digest, max_size=_MAX_JSON_BLOB)
        if blob_kind(target.media_type, data, target.digest) == "index":
            manifest = select_manifest(parse_index(data, target.digest), platform, target.digest)
            need(manifest, f"manifest of index {target.digest}:")
            data = self.content.read(manifest.digest, max_size=_MAX_JSON_BLOB)
            if blob_kind(manifest.media_type, data, manifest.digest) != "manifest":
                raise ManifestError(manifest.digest, "an index inside an index is not supported")
        else:
            manifest = target
        config, layers = parse_manifest(data, manifest.digest)
        need(config, f"config of manifest {manifest.digest}:")
        diff_ids, plat = parse_config(
            self.content.read(config.digest, max_size=_MAX_JSON_BLOB), config.digest
        )
        if len(diff_ids) != len(layers):
            raise ManifestError(
                manifest.digest,
                f"{len(layers)} layers but the config {config.digest} lists {len(diff_ids)} diff_ids",
            )
        for i, layer in enumerate(layers):
            need(layer, f"layer {i} of manifest {manifest.digest}:")
        return ResolvedImage(
            target=target,
            manifest=manifest,
            config=config,
            layers=layers,
            diff_ids=diff_ids,
            chain_ids=chain_ids(diff_ids),
            platform=plat,
        )

    def create(
        self,
        name: str,
        target: Descriptor | str,
        *,
        platform: Platform | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Image:
        """Record `name` -> `target` (a manifest or index digest/descriptor already in the
        content store, every blob it needs included), replacing what `name` pointed at."""
        return self.create_many([(name, target)], platform=platform, labels=labels)[0]

    def create_many(
        self,
        items: Iterable[tuple[str, Descriptor | str]],
        *,
        platform: Platform | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> builtins.list[Image]:
        """`create` for several names in one atomic write: all are recorded or none."""
        items = [(check_name(n), t) for n, t in items]
        out: builtins.list[Image] = []
        with self._locked():  # resolve under the lock: GC cannot take a blob in between
            records = self._load_records()
            now = time.time()
            for name, target in items:
                img = Image.of(name, self.resolve(target, platform), now, labels or {})
                records[name] = img
                out.append(img)
            _checkpoint("records.before_save")
            self._save_records(records)
            _checkpoint("records.saved")
        return out

    def tag(self, ref: str, name: str) -> Image:
        """Give the image `ref` resolves to another name (moving `name` if it existed)."""
        check_name(name)
        with self._locked():
            records = self._load_records()
            src = self._match(records, ref)[0]
            img = Image.of(name, src, time.time(), src.labels)
            records[name] = img
            self._save_records(records)
            return img

    def get(self, ref: str) -> Image:
        """The image named `ref`, or with `ref` as ID (config digest, or a unique hex
        prefix of at least 12), manifest/index digest, or `repository@digest`."""
        with self._locked():
            return self._match(self._load_records(), ref)[0]

    def list(self) -> builtins.list[Image]:
        with self._locked():
            return [img for _, img in sorted(self._load_records().items())]

    def remove(self, ref: str) -> builtins.list[Image]:
        """Remove the record `ref` names (every name of the image when `ref` is an ID or
        digest). Blobs and snapshots stay until `gc()`."""
        with self._locked():
            records = self._load_records()
            matched = self._match(records, ref)
            for img in matched:
                del records[img.name]
            self._save_records(records)
            return matched

    @staticmethod
    def _match(records: Mapping[str, Image], ref: str) -> builtins.list[Image]:
        if ref in records:
            return [records[ref]]
        found: builtins.list[Image] = []
        if is_digest(ref):
            found = [
                img
                for img in records.values()
                if ref in (img.config.digest, img.target.digest, img.manifest.digest)
            ]
        elif "@" in ref:
            repo, _, digest = ref.partition("@")
            found = [
                img
                for img in records.values()
                if img.repository == repo and digest in (img.target.digest, img.manifest.digest)
            ]
        elif _SHORT_ID_RE.fullmatch(ref):
            found = [img for img in records.values() if img.id[7:].startswith(ref)]
            ids = sorted({img.id for img in found})
            if len(ids) > 1:
                raise AmbiguousImageError(ref, ids)
        if not found:
            raise ImageNotFoundError(ref)
        return sorted(found, key=lambda img: img.name)

    # -- unpacking ----------------------------------------------------------------

    def is_unpacked(self, image: ResolvedImage) -> bool:
        return all(self._committed(c) for c in image.chain_ids)

    def _committed(self, name: str) -> bool:
        try:
            return self.snapshotter.stat(name).kind is Kind.COMMITTED
        except SnapshotNotFoundError:
            return False

    def unpack(self, image: ResolvedImage | str, *, lease: Lease | None = None) -> str:
        """Unpack every layer not unpacked yet; return the top chain ID.

        Each layer is applied once into a fresh snapshot, its DiffID checked
        against the config, then committed under its chain ID. On any error
        the layer's snapshot is removed (layers committed before it stay:
        they are valid, and GC removes them if no image needs them).
        """
        img = self.get(image) if isinstance(image, str) else image
        own = lease is None
        held = lease if lease is not None else self.lease()
        try:
            held.add_snapshots(*img.chain_ids)
            parent = ""
            for desc, diff_id, chain in zip(img.layers, img.diff_ids, img.chain_ids, strict=True):
                if not self._committed(chain):
                    self._apply_one(desc, diff_id, chain, parent)
                parent = chain
            return parent
        finally:
            if own:
                held.release()

    def _apply_one(self, desc: Descriptor, diff_id: str, chain: str, parent: str) -> None:
        pid, start = _self_identity()
        key = f"{EXTRACT_PREFIX}{pid}-{uuid.uuid4().hex[:16]}"
        labels = {LABEL_EXTRACT_PID: str(pid), LABEL_EXTRACT_START: str(start or "")}
        self.snapshotter.prepare(key, parent, labels)
        _checkpoint("unpack.prepared")
        try:
            path = self.snapshotter.layer_path(key)
            try:
                f = self.content.open(desc.digest)
            except ContentNotFoundError:
                raise MissingBlobError(desc.digest, "layer") from None
            with f:
                reader = _HashingReader(f)
                try:
                    result = apply_layer(reader, path)
                    reader.drain()
                except ImageStoreError:
                    raise
                except LayerError as e:
                    raise UnpackError(desc.digest, str(e)) from e
                except Exception as e:  # zlib/zstd errors, ENOSPC...: name the layer
                    raise UnpackError(desc.digest, f"{type(e).__name__}: {e}") from e
            if reader.digest != desc.digest or reader.size != desc.size:
                raise UnpackError(
                    desc.digest,
                    f"blob changed on disk: {reader.size} bytes with digest {reader.digest}",
                )
            if result.diff_id != diff_id:
                raise DiffIDMismatchError(desc.digest, diff_id, result.diff_id)
            _checkpoint("unpack.applied")
            try:
                self.snapshotter.commit(chain, key, labels={LABEL_DIFF_ID: diff_id})
            except SnapshotExistsError:  # another unpack got there first: same content
                _checkpoint("unpack.lost_race")
                self.snapshotter.remove(key)
            _checkpoint("unpack.committed")
        except BaseException as exc:
            try:
                self.snapshotter.remove(key)
            except SnapshotNotFoundError:
                pass
            except Exception as undo:
                exc.add_note(f"removing snapshot {key}: {undo}")
            raise

    def rootfs_mounts(
        self,
        image: ResolvedImage | str,
        key: str,
        *,
        readonly: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> builtins.list[Mount]:
        """A container root: an active snapshot (or a view) `key` on the image's top layer,
        unpacking it first if needed."""
        img = self.get(image) if isinstance(image, str) else image
        with self.lease() as lease:  # until the snapshot on top holds the layers itself
            top = self.unpack(img, lease=lease)
            if readonly:
                return self.snapshotter.view(key, top, labels)
            return self.snapshotter.prepare(key, top, labels)

    # -- GC, usage, recovery ----------------------------------------------------

    def gc(self) -> GCResult:
        """Delete every blob and snapshot that no record or live lease needs (mark and sweep,
        all under the store lock). Active snapshots other than dead unpacks are kept,
        with everything below them: they are containers' roots."""
        with self._locked():
            return self._collect_locked(only_blobs=None, only_snapshots=None)

    def _collect_locked(
        self,
        *,
        only_blobs: set[str] | None,
        only_snapshots: set[str] | None,
        blobs: bool = True,
    ) -> GCResult:
        records = self._load_records()
        leases = self._live_leases(prune=True)
        keep_blobs: set[str] = set()
        keep_snaps: set[str] = set()
        for img in records.values():
            keep_blobs.update(img.blobs())
            keep_snaps.update(img.chain_ids)
        for rec in leases:
            keep_blobs.update(rec.digests)
            keep_snaps.update(rec.snapshots)
        result = GCResult()
        self._sweep_snapshots(keep_snaps, only_snapshots, result)
        if blobs:
            for info in list(self.content.walk()):
                if info.digest in keep_blobs:
                    continue
                if only_blobs is not None and info.digest not in only_blobs:
                    continue
                try:
                    self.content.delete(info.digest)
                except ContentNotFoundError:
                    continue
                result.blobs.append(info.digest)
                result.bytes_freed += info.size
                _checkpoint("gc.blob_deleted")
        return result

    def _sweep_snapshots(self, keep: set[str], only: set[str] | None, result: GCResult) -> None:
        infos = {i.name: i for i in self.snapshotter.walk()}
        kept = {n for n in keep if n in infos}
        for name, info in infos.items():
            if info.kind is not Kind.COMMITTED and not _dead_extract(info):
                kept.add(name)  # a container's root, or an unpack in progress
        for name in list(kept):
            parent = infos[name].parent
            while parent and parent in infos and parent not in kept:
                kept.add(parent)
                parent = infos[parent].parent

        def depth(name: str) -> int:
            n, parent = 0, infos[name].parent
            while parent and parent in infos and n < len(infos):
                n, parent = n + 1, infos[parent].parent
            return n

        doomed = [
            n
            for n, info in infos.items()
            if n not in kept and (only is None or n in only or _dead_extract(info))
        ]
        for name in sorted(doomed, key=depth, reverse=True):  # children before parents
            try:
                usage = self.snapshotter.usage(name)
                self.snapshotter.remove(name)
            except (SnapshotNotFoundError, SnapshotInUseError, MountedError):
                continue
            result.snapshots.append(name)
            result.bytes_freed += usage.size
            _checkpoint("gc.snapshot_removed")

    def usage(self) -> StoreUsage:
        """Bytes and inodes of the content store plus every committed layer (ImageFsInfo)."""
        cb, ci = self.content.usage()
        sb = si = 0
        for info in self.snapshotter.walk(lambda i: i.kind is Kind.COMMITTED):
            with contextlib.suppress(SnapshotNotFoundError):
                u = self.snapshotter.usage(info.name)
                sb += u.size
                si += u.inodes
        return StoreUsage(cb, ci, sb, si)

    def recover(self, *, ingest_max_age: float = DEFAULT_INGEST_MAX_AGE) -> RecoveryReport:
        """Clean up after processes killed mid-operation (see the module doc).

        Safe while other processes use the store: what a live process
        holds (its leases, its ingest locks, its extract snapshots) is kept.
        """
        report = RecoveryReport()
        with self._locked():
            now = time.time()
            for path, rec in self._leases():
                if rec is None or not rec.live(now):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        report.leases.append(path.stem)
            for d in (self.images_dir, self.leases_dir):
                for p in d.glob(".*.tmp-*"):
                    pid_text = p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
                    if pid_text.isdigit() and _start_time(int(pid_text)) is not None:
                        continue  # a live writer's temp file
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                        report.temp_files.append(str(p))
            gc = self._collect_locked(only_blobs=None, only_snapshots=None, blobs=False)
            report.snapshots = gc.snapshots
            report.snapshot_dirs = self.snapshotter.cleanup()
        report.ingests = self.content.cleanup_ingests(ingest_max_age)
        return report


def _dead_extract(info: Info) -> bool:
    """An unpack's snapshot whose process is gone (killed mid-layer)."""
    if info.kind is not Kind.ACTIVE or not info.name.startswith(EXTRACT_PREFIX):
        return False
    pid_text = info.labels.get(LABEL_EXTRACT_PID, "")
    start_text = info.labels.get(LABEL_EXTRACT_START, "")
    if not pid_text.isdigit():
        return True
    start = int(start_text) if start_text.isdigit() else None
    return not _owner_alive(int(pid_text), start)


__all__ = [
    "DEFAULT_ROOT",
    "AmbiguousImageError",
    "DiffIDMismatchError",
    "GCResult",
    "Image",
    "ImageNotFoundError",
    "ImageStore",
    "ImageStoreError",
    "InvalidImageNameError",
    "Lease",
    "ManifestError",
    "MissingBlobError",
    "PlatformNotFoundError",
    "RecoveryReport",
    "ResolvedImage",
    "StoreUsage",
    "UnpackError",
    "chain_ids",
    "default_platform",
    "parse_config",
    "parse_index",
    "parse_manifest",
    "select_manifest",
    "split_name",
]
