"""OCI image layout (image-spec 1.1 "image-layout"): a directory of images on disk.

    ROOT/oci-layout            {"imageLayoutVersion": "1.0.0"}
    ROOT/index.json            an image index; tags are the entries'
                               org.opencontainers.image.ref.name annotations
    ROOT/blobs/sha256/<hex>    every manifest, config and layer, named by digest

It is what the builder writes, what `pinnace run` reads a locally built image
from, and what the push client uploads from; it is also the format skopeo,
umoci and buildah exchange, so a layout written here can be inspected with them.

Blobs are written atomically (temporary file in the same directory, fsync,
rename), so a crash never leaves a blob whose name lies about its content.
index.json is replaced the same way. A layout has one writer at a time: two
processes tagging concurrently may lose one of the tags.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from images.digest import (
    SHA256,
    DigestMismatchError,
    digest_hex,
    sha256_digest,
    validate_digest,
)

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"

# image-layout "ref.name" grammar:
#   ref       ::= component ("/" component)*
#   component ::= alphanum (separator alphanum)*
#   separator ::= [-._:@+] | "--"
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")


class LayoutError(Exception):
    """A layout directory that is missing, malformed or of an unknown version."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class BlobNotFoundError(LayoutError):
    """A digest the layout has no blob for."""

    def __init__(self, path: Path, digest: str) -> None:
        super().__init__(path, f"no blob {digest}")
        self.digest = digest


class ReferenceNotFoundError(LayoutError):
    """A ref name (tag) that no entry of index.json carries."""

    def __init__(self, path: Path, ref_name: str) -> None:
        super().__init__(path, f"no image tagged {ref_name!r} in {INDEX_FILE}")
        self.ref_name = ref_name


class InvalidRefNameError(ValueError):
    """A ref name outside the image-layout grammar (it would not survive other tools)."""

    def __init__(self, ref_name: str) -> None:
        super().__init__(f"invalid ref name {ref_name!r}")
        self.ref_name = ref_name


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no whitespace: equal documents get equal digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def validate_ref_name(ref_name: str) -> str:
    if not _REF_NAME_RE.fullmatch(ref_name):
        raise InvalidRefNameError(ref_name)
    return ref_name


@dataclass(frozen=True)
class Platform:
    """Where an image runs; selects one manifest out of a multi-platform index."""

    os: str
    architecture: str
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Platform:
        return cls(
            os=_str_field(obj, "os"),
            architecture=_str_field(obj, "architecture"),
            variant=obj.get("variant"),
        )


@dataclass(frozen=True)
class Descriptor:
    """A typed, sized, content-addressed pointer to a blob (image-spec "descriptor")."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None

    def __post_init__(self) -> None:
        validate_digest(self.digest)
        if self.size < 0:
            raise ValueError(f"descriptor {self.digest}: negative size {self.size}")

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(ANNOTATION_REF_NAME)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Descriptor:
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError(f"descriptor size must be an integer, got {size!r}")
        platform = obj.get("platform")
        return cls(
            media_type=_str_field(obj, "mediaType"),
            digest=_str_field(obj, "digest"),
            size=size,
            annotations=dict(obj.get("annotations") or {}),
            platform=Platform.from_json(platform) if platform is not None else None,
        )

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, annotations, self.platform)


@dataclass(frozen=True)
class ImageManifest:
    """One image for one platform: a config plus its ordered layers."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ImageManifest:
        _check_schema(obj, MEDIA_TYPE_MANIFEST)
        return cls(
            config=Descriptor.from_json(obj["config"]),
            layers=tuple(Descriptor.from_json(d) for d in obj.get("layers") or ()),
            annotations=dict(obj.get("annotations") or {}),
        )


@dataclass(frozen=True)
class ImageIndex:
    """A list of manifests: a multi-platform image, or a layout's index.json."""

    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [m.to_json() for m in self.manifests],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ImageIndex:
        _check_schema(obj, MEDIA_TYPE_INDEX)
        return cls(
            manifests=tuple(Descriptor.from_json(d) for d in obj.get("manifests") or ()),
            annotations=dict(obj.get("annotations") or {}),
        )


class OCILayout:
    """An image layout directory. Use `create` to make one, `open` to use an existing one."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def create(cls, root: Path) -> OCILayout:
        """Make `root` a layout (idempotent: an existing layout is opened, not emptied)."""
        root.mkdir(parents=True, exist_ok=True)
        (root / "blobs" / SHA256).mkdir(parents=True, exist_ok=True)
        layout = cls(root)
        if not (root / LAYOUT_FILE).exists():
            _atomic_write(
                root / LAYOUT_FILE, canonical_json({"imageLayoutVersion": LAYOUT_VERSION})
            )
        if not (root / INDEX_FILE).exists():
            layout._write_index(ImageIndex(manifests=()))
        return cls.open(root)

    @classmethod
    def open(cls, root: Path) -> OCILayout:
        """Open an existing layout, checking its version so a future format is not misread."""
        marker = root / LAYOUT_FILE
        try:
            obj = json.loads(marker.read_bytes())
        except FileNotFoundError:
            raise LayoutError(root, f"not an OCI image layout (no {LAYOUT_FILE})") from None
        except ValueError as e:
            raise LayoutError(marker, f"malformed: {e}") from None
        version = obj.get("imageLayoutVersion") if isinstance(obj, dict) else None
        if version != LAYOUT_VERSION:
            raise LayoutError(marker, f"unsupported imageLayoutVersion {version!r}")
        return cls(root)

    # -- blobs --------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / SHA256 / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        """The blob's bytes, verified against its digest (a corrupted file is an error)."""
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(self.root, digest) from None
        actual = sha256_digest(data)
        if actual != digest:
            raise DigestMismatchError(digest, actual, str(path))
        return data

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[BinaryIO]:
        """The blob as a file, for streaming large layers (not verified: callers hash)."""
        path = self.blob_path(digest)
        if not path.is_file():
            raise BlobNotFoundError(self.root, digest)
        with open(path, "rb") as f:
            yield f

    def write_blob(
        self, data: bytes, media_type: str, *, expected_digest: str | None = None
    ) -> Descriptor:
        """Store `data` under its digest and return a descriptor for it."""
        digest, size = self.write_blob_stream([data], expected_digest=expected_digest)
        return Descriptor(media_type=media_type, digest=digest, size=size)

    def write_blob_stream(
        self, chunks: Iterable[bytes], *, expected_digest: str | None = None
    ) -> tuple[str, int]:
        """Store a blob arriving in chunks; return (digest, size).

        With `expected_digest` (a pull) nothing is kept unless the content
        matches it. Writing a blob that already exists is a no-op rename of
        identical content.
        """
        if expected_digest is not None:
            validate_digest(expected_digest)
        blob_dir = self.root / "blobs" / SHA256
        blob_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=blob_dir, prefix=".tmp-")
        tmp = Path(tmp_name)
        try:
            hasher = _Sha256()
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = hasher.digest()
            if expected_digest is not None and digest != expected_digest:
                raise DigestMismatchError(expected_digest, digest, str(self.root))
            tmp.chmod(0o644)
            tmp.replace(blob_dir / digest_hex(digest))
            _fsync_dir(blob_dir)
            return digest, hasher.size
        finally:
            tmp.unlink(missing_ok=True)

    def write_json(
        self,
        obj: Mapping[str, Any],
        media_type: str,
        *,
        platform: Platform | None = None,
    ) -> Descriptor:
        """Store a manifest, index or config as canonical JSON."""
        desc = self.write_blob(canonical_json(obj), media_type)
        return Descriptor(desc.media_type, desc.digest, desc.size, platform=platform)

    def read_json(self, digest: str) -> Any:
        data = self.read_blob(digest)
        try:
            return json.loads(data)
        except ValueError as e:
            raise LayoutError(self.blob_path(digest), f"blob is not JSON: {e}") from None

    def read_manifest(self, digest: str) -> ImageManifest:
        try:
            return ImageManifest.from_json(self.read_json(digest))
        except (KeyError, TypeError, ValueError) as e:
            raise LayoutError(self.blob_path(digest), f"not an image manifest: {e}") from None

    def read_index(self, digest: str) -> ImageIndex:
        try:
            return ImageIndex.from_json(self.read_json(digest))
        except (KeyError, TypeError, ValueError) as e:
            raise LayoutError(self.blob_path(digest), f"not an image index: {e}") from None

    # -- index.json / tags --------------------------------------------------

    def index(self) -> ImageIndex:
        """The layout's index.json."""
        path = self.root / INDEX_FILE
        try:
            return ImageIndex.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            raise LayoutError(path, "missing") from None
        except (KeyError, TypeError, ValueError) as e:
            raise LayoutError(path, f"malformed: {e}") from None

    def ref_names(self) -> list[str]:
        return [d.ref_name for d in self.index().manifests if d.ref_name is not None]

    def resolve(self, ref_name: str) -> Descriptor:
        """The descriptor tagged `ref_name` (a manifest or an index)."""
        for desc in self.index().manifests:
            if desc.ref_name == ref_name:
                return desc
        raise ReferenceNotFoundError(self.root, ref_name)

    def tag(self, descriptor: Descriptor, ref_name: str) -> Descriptor:
        """Point `ref_name` at `descriptor` in index.json, moving it if it pointed elsewhere."""
        validate_ref_name(ref_name)
        if not self.has_blob(descriptor.digest):
            raise BlobNotFoundError(self.root, descriptor.digest)
        entry = descriptor.with_annotations(
            {**descriptor.annotations, ANNOTATION_REF_NAME: ref_name}
        )
        current = self.index()
        manifests = [d for d in current.manifests if d.ref_name != ref_name]
        replaced = len(manifests) != len(current.manifests)
        if replaced:
            # Keep the tag where it was so rebuilding a layout does not reorder index.json.
            pos = next(i for i, d in enumerate(current.manifests) if d.ref_name == ref_name)
            manifests.insert(pos, entry)
        else:
            manifests.append(entry)
        self._write_index(ImageIndex(tuple(manifests), current.annotations))
        return entry

    def untag(self, ref_name: str) -> None:
        current = self.index()
        manifests = tuple(d for d in current.manifests if d.ref_name != ref_name)
        if len(manifests) == len(current.manifests):
            raise ReferenceNotFoundError(self.root, ref_name)
        self._write_index(ImageIndex(manifests, current.annotations))

    def _write_index(self, index: ImageIndex) -> None:
        data = json.dumps(index.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        _atomic_write(self.root / INDEX_FILE, data)


class _Sha256:
    """sha256 plus a byte count, fed chunk by chunk."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)
        self.size += len(chunk)

    def digest(self) -> str:
        return f"{SHA256}:{self._h.hexdigest()}"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o644)
        tmp.replace(path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _str_field(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {value!r}")
    return value


def _check_schema(obj: Mapping[str, Any], media_type: str) -> None:
    if obj.get("schemaVersion") != 2:
        raise ValueError(f"schemaVersion must be 2, got {obj.get('schemaVersion')!r}")
    declared = obj.get("mediaType")
    if declared is not None and declared != media_type:
        raise ValueError(f"mediaType is {declared!r}, expected {media_type!r}")
