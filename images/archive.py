"""Import and export images without a registry: OCI layouts, OCI archives, docker archives.

Formats:

* OCI image layout: a directory (images/layout.py); names come from each
  index.json entry's `io.containerd.image.name` annotation, else its
  `org.opencontainers.image.ref.name` (a bare tag such as `latest` needs a
  `repository` to make a name of).
* OCI archive: a tar (optionally compressed) of an OCI layout.
* docker-archive: what `docker save` writes, a tar of `manifest.json`
  (`[{"Config": "<hex>.json", "RepoTags": [...], "Layers": ["<id>/layer.tar", ...]}]`),
  `repositories`, the config JSON and one uncompressed tar per layer. Docker
  >= 25 writes the layers under blobs/sha256/ with symlinks from the old
  names; both are read. On import each image gets an OCI manifest written
  for it (config typed as an OCI config, layers typed by their compression),
  so the store holds only OCI and Docker schema 2 documents.

Archives are untrusted. They are read in one forward pass with the hardened
tar reader of overlayfs/tarstream.py, never extracted: a member's name is
only ever a key in a dictionary (names climbing out with `..`, absolute
symlinks and members listed twice are refused), and each member's bytes go
straight into the content store, verified against the digest its name
claims (blobs/sha256/<hex>) or named by the digest computed while writing it.
Every descriptor is then checked against what is stored (presence, size),
layers are unpacked and their DiffIDs checked, and only then are the image
records written. All of it runs under one lease that collects on release:
an import that fails for any reason leaves no record, no snapshot and no
blob that another image does not share.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from images.builder import REPRODUCIBLE_EPOCH
from images.content import ContentStore
from images.digest import SHA256, digest_hex
from images.layout import (
    ANNOTATION_REF_NAME,
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ImageIndex,
    ImageManifest,
    OCILayout,
    Platform,
    canonical_json,
)
from images.mediatypes import (
    MEDIA_TYPE_LAYER_ZSTD,
)
from images.store import (
    Image,
    ImageStore,
    ImageStoreError,
    Lease,
    ManifestError,
    MissingBlobError,
    ResolvedImage,
    UnpackError,
    blob_kind,
    parse_config,
    parse_index,
    parse_manifest,
    split_name,
)
from namespaces.rootpath import RootFS
from overlayfs.errors import LayerError
from overlayfs.tarstream import EntryType, TarReader
from overlayfs.unpack import decompressed, detect_compression

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
DOCKER_MANIFEST_FILE = "manifest.json"
DOCKER_REPOSITORIES_FILE = "repositories"
_NAMING_ANNOTATIONS = frozenset({ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME})
_META_FILES = frozenset({LAYOUT_FILE, INDEX_FILE, DOCKER_MANIFEST_FILE, DOCKER_REPOSITORIES_FILE})
_MAX_META = 16 << 20
_MAX_LINK_DEPTH = 16
_BLOB_NAME_RE = re.compile(r"^blobs/sha256/([a-f0-9]{64})$")
_BARE_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CHUNK = 1 << 20


class ImageArchiveError(ImageStoreError):
    """An archive or layout that cannot be imported (or an image that cannot be exported)."""

    def __init__(self, source: str | os.PathLike[str], message: str) -> None:
        super().__init__(f"{os.fspath(source)}: {message}")
        self.source = os.fspath(source)


class ArchiveFormatError(ImageArchiveError):
    """Malformed or hostile archive structure: bad tar, `..` in a name, a missing member."""


class ImportNameError(ImageArchiveError):
    """An image in the source with no usable name (a bare tag without a repository...)."""


# -- naming -------------------------------------------------------------------


@dataclass
class _Target:
    names: list[str]
    descriptor: Descriptor
    refs: set[str] = field(default_factory=set)  # what `refs=` may select it by


def _select_targets(
    source: str | os.PathLike[str],
    targets: list[_Target],
    *,
    refs: Sequence[str] | None,
    name: str | None,
    normalize: Callable[[str], str] | None,
) -> list[tuple[str, Descriptor]]:
    """(store name, descriptor) pairs to import, after `refs` selection and naming."""
    chosen = targets
    if refs is not None:
        wanted = set(refs)
        chosen = [t for t in targets if t.refs & wanted]
        missing = wanted - set().union(*(t.refs for t in targets)) if targets else wanted
        if missing:
            raise ImportNameError(source, f"no image named {sorted(missing)!r} in it")
    if name is not None:
        if len({t.descriptor.digest for t in chosen}) != 1:
            raise ImportNameError(
                source, f"holds {len(chosen)} images: a single name fits exactly one (select refs)"
            )
        return [(normalize(name) if normalize else name, chosen[0].descriptor)]
    out: dict[str, Descriptor] = {}
    for t in chosen:
        if not t.names:
            raise ImportNameError(
                source, f"image {t.descriptor.digest} has no name: pass one to import it"
            )
        for n in t.names:
            final = normalize(n) if normalize else n
            prev = out.get(final)
            if prev is not None and prev.digest != t.descriptor.digest:
                raise ImportNameError(source, f"two different images are both named {final!r}")
            out[final] = t.descriptor
    if not out:
        raise ImportNameError(source, "holds no named image")
    return list(out.items())


def _oci_targets(
    source: str | os.PathLike[str], entries: Sequence[Descriptor], repository: str | None
) -> list[_Target]:
    out = []
    for d in entries:
        full = d.annotations.get(ANNOTATION_IMAGE_NAME)
        ref = d.ref_name
        names: list[str] = []
        if full:
            names.append(full)
        elif ref:
            if _BARE_TAG_RE.fullmatch(ref):
                if repository is None:
                    raise ImportNameError(
                        source,
                        f"entry {d.digest} is tagged {ref!r} only: pass a repository to name it",
                    )
                names.append(f"{repository}:{ref}")
            else:
                names.append(ref)
        # the naming annotations belong to the source's index, not to the image
        plain = d.with_annotations(
            {k: v for k, v in d.annotations.items() if k not in _NAMING_ANNOTATIONS}
        )
        out.append(_Target(names, plain, {x for x in (full, ref, d.digest) if x}))
    return out


# -- import: sources ------------------------------------------------------------


def _copy_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


class _LayoutSource:
    """Blobs from a layout directory, each opened inside the layout (never through a
    symlink out of it) and verified as it is copied in."""

    def __init__(self, store: ImageStore, lease: Lease, root: Path) -> None:
        self.store = store
        self.lease = lease
        self.root = root
        self.rootfs = RootFS(root)

    def fetch(self, desc: Descriptor, what: str) -> None:
        self.lease.add(desc.digest)
        if self.store.content.has(desc.digest):
            return
        try:
            fd = self.rootfs.open(f"blobs/{SHA256}/{digest_hex(desc.digest)}", os.O_RDONLY)
        except FileNotFoundError:
            raise MissingBlobError(desc.digest, what) from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ArchiveFormatError(self.root, f"blob {desc.digest} is not a regular file")
            self.store.content.write(_copy_chunks(f), desc.digest, desc.size)

    def close(self) -> None:
        self.rootfs.close()


class _StoredSource:
    """Blobs an archive pass already put into the store (under the lease)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    def fetch(self, desc: Descriptor, what: str) -> None:
        self.lease.add(desc.digest)  # a blob that was in the store before: hold it too


def _import_targets(
    store: ImageStore,
    lease: Lease,
    fetch: Callable[[Descriptor, str], None],
    targets: Sequence[tuple[str, Descriptor]],
    platform: Platform | None,
    unpack: bool,
) -> list[Image]:
    resolved: dict[str, ResolvedImage] = {}
    for _, desc in targets:
        if desc.digest not in resolved:
            resolved[desc.digest] = store.resolve(desc, platform, fetch=fetch)
    if unpack:
        for r in resolved.values():
            store.unpack(r, lease=lease)
    return store.create_many(targets, platform=platform)


# -- import: layouts ----------------------------------------------------------------


def import_layout(
    store: ImageStore,
    source: OCILayout | str | os.PathLike[str],
    *,
    refs: Sequence[str] | None = None,
    name: str | None = None,
    repository: str | None = None,
    normalize: Callable[[str], str] | None = None,
    platform: Platform | None = None,
    unpack: bool = True,
) -> list[Image]:
    """Import the named images of an OCI layout directory (or those `refs` selects).

    `name` imports the one selected image under that name; `repository`
    turns bare tags into names; `normalize` maps every name (e.g. to
    docker.io/library/...). Blobs are copied and verified, layers unpacked
    unless `unpack=False`, then the records are written, all or nothing.
    """
    layout = source if isinstance(source, OCILayout) else OCILayout.open(Path(source))
    root = layout.root
    index_path = root / INDEX_FILE
    try:
        with RootFS(root) as rfs:
            fd = rfs.open(INDEX_FILE, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            data = f.read(_MAX_META + 1)
    except FileNotFoundError:
        raise ArchiveFormatError(index_path, "missing") from None
    if len(data) > _MAX_META:
        raise ArchiveFormatError(index_path, f"larger than {_MAX_META} bytes")
    entries = _index_entries(index_path, data)
    chosen = _select_targets(
        root,
        _oci_targets(root, entries, repository),
        refs=refs,
        name=name,
        normalize=normalize,
    )
    with store.lease(collect=True) as lease:
        src = _LayoutSource(store, lease, root)
        try:
            return _import_targets(store, lease, src.fetch, chosen, platform, unpack)
        finally:
            src.close()


def _index_entries(where: str | os.PathLike[str], data: bytes) -> list[Descriptor]:
    try:
        return parse_index(data, INDEX_FILE)
    except ManifestError as e:
        raise ArchiveFormatError(where, str(e)) from None


# -- import: archives --------------------------------------------------------------


def _member_name(source: Path, raw: str) -> str:
    """A member name as a key: `.`/empty components dropped, a leading / ignored,
    `..` refused outright (no well-formed image archive has one)."""
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveFormatError(source, f"member {raw!r} climbs out of the archive with '..'")
    return "/".join(parts)


def _symlink_target(source: Path, name: str, link: str) -> str:
    if link.startswith("/"):
        raise ArchiveFormatError(source, f"member {name!r} is a symlink to absolute path {link!r}")
    parts = name.split("/")[:-1]
    for p in link.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                raise ArchiveFormatError(
                    source, f"member {name!r} is a symlink out of the archive ({link!r})"
                )
            parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)


@dataclass
class _ArchiveContents:
    path: Path
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (digest, size)
    links: dict[str, str] = field(default_factory=dict)  # name -> member it stands for
    meta: dict[str, bytes] = field(default_factory=dict)

    def lookup(self, raw: str, what: str) -> tuple[str, int]:
        name = _member_name(self.path, raw)
        for _ in range(_MAX_LINK_DEPTH):
            if name in self.files:
                return self.files[name]
            if name not in self.links:
                break
            name = self.links[name]
        else:
            raise ArchiveFormatError(self.path, f"{what} {raw!r}: too many links")
        raise ArchiveFormatError(self.path, f"{what} {raw!r} is not in the archive")


def _read_archive(store: ImageStore, lease: Lease, path: Path) -> _ArchiveContents:
    """One pass over the archive: metadata files into memory, every other file into the
    content store (leased before it becomes visible)."""
    out = _ArchiveContents(path)
    seen: set[str] = set()
    with open(path, "rb") as f:
        try:
            stream, _ = decompressed(f)
            reader = TarReader(stream)
            for entry in reader:
                name = _member_name(path, entry.name)
                if not name:
                    continue
                if name in seen:
                    raise ArchiveFormatError(path, f"member {name!r} appears twice")
                seen.add(name)
                if entry.type is EntryType.SYMLINK:
                    out.links[name] = _symlink_target(path, name, entry.linkname)
                elif entry.type is EntryType.HARDLINK:
                    out.links[name] = _member_name(path, entry.linkname)
                elif entry.type is EntryType.FILE:
                    _read_member(store, lease, out, name, entry.size, reader.read_chunks())
        except LayerError as e:  # the tar reader's errors: a corrupt or hostile tar
            raise ArchiveFormatError(path, f"not a readable tar archive: {e}") from e
    return out


def _read_member(
    store: ImageStore,
    lease: Lease,
    out: _ArchiveContents,
    name: str,
    size: int,
    chunks: Iterable[bytes],
) -> None:
    if name in _META_FILES:
        if size > _MAX_META:
            raise ArchiveFormatError(out.path, f"{name} is larger than {_MAX_META} bytes")
        out.meta[name] = b"".join(chunks)
        return
    m = _BLOB_NAME_RE.fullmatch(name)
    if m:
        digest = f"{SHA256}:{m.group(1)}"
        lease.add(digest)
        store.content.write(chunks, digest, size)  # verified against the name's digest
        out.files[name] = (digest, size)
    else:  # docker-archive layers and configs, named by path: digest computed on the way in
        out.files[name] = store.content.add(chunks, before_commit=lease.add)


def import_archive(
    store: ImageStore,
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    refs: Sequence[str] | None = None,
    name: str | None = None,
    repository: str | None = None,
    normalize: Callable[[str], str] | None = None,
    platform: Platform | None = None,
    unpack: bool = True,
) -> list[Image]:
    """Import an OCI archive or a docker-archive tar (plain or compressed).

    `format` is "oci", "docker" or "auto" (docker when the archive has a
    manifest.json, as docker's own saves do even when they also carry an
    OCI index). Other arguments as for `import_layout`; `refs` selects
    docker images by RepoTag.
    """
    p = Path(path)
    if format not in ("auto", "oci", "docker"):
        raise ValueError(f"unknown archive format {format!r}")
    with store.lease(collect=True) as lease:
        contents = _read_archive(store, lease, p)
        if format == "auto":
            format = "docker" if DOCKER_MANIFEST_FILE in contents.meta else "oci"
        if format == "docker":
            targets = _docker_targets(store, lease, contents)
        else:
            targets = _oci_archive_targets(contents, repository)
        chosen = _select_targets(p, targets, refs=refs, name=name, normalize=normalize)
        return _import_targets(store, lease, _StoredSource(lease).fetch, chosen, platform, unpack)


def _oci_archive_targets(contents: _ArchiveContents, repository: str | None) -> list[_Target]:
    marker = contents.meta.get(LAYOUT_FILE)
    if marker is None or INDEX_FILE not in contents.meta:
        raise ArchiveFormatError(
            contents.path,
            f"neither an OCI archive ({LAYOUT_FILE}, {INDEX_FILE}) nor a docker archive",
        )
    try:
        version = json.loads(marker).get("imageLayoutVersion")
    except (ValueError, AttributeError):
        version = None
    if version != LAYOUT_VERSION:
        raise ArchiveFormatError(contents.path, f"unsupported imageLayoutVersion {version!r}")
    entries = _index_entries(contents.path, contents.meta[INDEX_FILE])
    return _oci_targets(contents.path, entries, repository)


def _layer_media_type(content: ContentStore, digest: str) -> str:
    with content.open(digest) as f:
        kind = detect_compression(f.read(4))
    return {"gzip": MEDIA_TYPE_LAYER_GZIP, "zstd": MEDIA_TYPE_LAYER_ZSTD}.get(
        kind, MEDIA_TYPE_LAYER
    )


def _docker_targets(store: ImageStore, lease: Lease, contents: _ArchiveContents) -> list[_Target]:
    """An OCI manifest for each image of manifest.json, written to the store (leased)."""
    where = contents.path
    try:
        items = json.loads(contents.meta[DOCKER_MANIFEST_FILE])
    except ValueError as e:
        raise ArchiveFormatError(where, f"{DOCKER_MANIFEST_FILE} is not JSON: {e}") from None
    if not isinstance(items, list):
        raise ArchiveFormatError(where, f"{DOCKER_MANIFEST_FILE} is not a list")
    out = []
    for i, item in enumerate(items):
        what = f"{DOCKER_MANIFEST_FILE}[{i}]"
        if not isinstance(item, dict):
            raise ArchiveFormatError(where, f"{what} is not an object")
        config_name, layer_names = item.get("Config"), item.get("Layers")
        tags = item.get("RepoTags") or []
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise ArchiveFormatError(where, f"{what} needs a Config and a Layers list")
        if not all(isinstance(x, str) for x in [*layer_names, *tags]):
            raise ArchiveFormatError(where, f"{what}: Layers and RepoTags must be strings")
        cdigest, csize = contents.lookup(config_name, f"{what} Config")
        try:
            diff_ids, _ = parse_config(store.content.read(cdigest), cdigest)
        except ManifestError as e:
            raise ArchiveFormatError(where, f"{what} Config {config_name!r}: {e}") from None
        if len(diff_ids) != len(layer_names):
            raise ArchiveFormatError(
                where,
                f"{what}: {len(layer_names)} layers but the config lists {len(diff_ids)} diff_ids",
            )
        layers = []
        for lname in layer_names:
            digest, size = contents.lookup(lname, f"{what} layer")
            layers.append(Descriptor(_layer_media_type(store.content, digest), digest, size))
        manifest = ImageManifest(
            config=Descriptor(MEDIA_TYPE_CONFIG, cdigest, csize), layers=tuple(layers)
        )
        data = canonical_json(manifest.to_json())
        mdigest, msize = store.content.add([data], before_commit=lease.add)
        desc = Descriptor(MEDIA_TYPE_MANIFEST, mdigest, msize)
        out.append(_Target(list(tags), desc, {*tags, mdigest}))
    return out


# -- export ---------------------------------------------------------------------


def _images(store: ImageStore, refs: Sequence[str]) -> list[Image]:
    seen: dict[str, Image] = {}
    for ref in refs:
        for img in [store.get(ref)]:
            seen.setdefault(img.name, img)
    if not seen:
        raise ImageStoreError("nothing to export: no image given")
    return list(seen.values())


def _export_top(store: ImageStore, img: Image) -> tuple[Descriptor, list[str]]:
    """What an export names for an image, and every blob that it needs.

    The index, when every platform's manifest, config and layers are in the
    store (a complete multi-platform image); the selected manifest otherwise,
    so the archive never points at a blob it does not carry.
    """
    base = [img.manifest.digest, img.config.digest, *(layer.digest for layer in img.layers)]
    if img.target.digest == img.manifest.digest:
        return img.target, base
    blobs = [img.target.digest]
    try:
        for child in parse_index(store.content.read(img.target.digest), img.target.digest):
            if blob_kind(child.media_type, store.content.read(child.digest), child.digest) != (
                "manifest"
            ):
                raise MissingBlobError(child.digest, "nested index")
            config, layers = parse_manifest(store.content.read(child.digest), child.digest)
            needed = [child.digest, config.digest, *(layer.digest for layer in layers)]
            if not all(store.content.has(d) for d in needed):
                raise MissingBlobError(child.digest, "platform manifest")
            blobs += needed
    except (ImageStoreError, OSError):
        platform = img.manifest.platform or img.platform
        return Descriptor(
            img.manifest.media_type, img.manifest.digest, img.manifest.size, platform=platform
        ), base
    return img.target, list(dict.fromkeys(blobs))


class _TarOut:
    """A tar writer with fixed metadata (equal images give equal archives)."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.dirs: set[str] = set()

    def _info(self, name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.size = size
        info.mtime = REPRODUCIBLE_EPOCH
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def dir(self, name: str) -> None:
        if name not in self.dirs:
            self.dirs.add(name)
            self.tar.addfile(self._info(name, tarfile.DIRTYPE, 0o755))

    def file(self, name: str, f: BinaryIO, size: int) -> None:
        self.tar.addfile(self._info(name, tarfile.REGTYPE, 0o644, size), f)

    def bytes(self, name: str, data: bytes) -> None:
        self.file(name, io.BytesIO(data), len(data))


@contextlib.contextmanager
def _tar_out(f: BinaryIO) -> Iterator[_TarOut]:
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        yield _TarOut(tar)


@contextlib.contextmanager
def _output(dest: str | os.PathLike[str] | BinaryIO) -> Iterator[BinaryIO]:
    """A file to write the archive to: `dest` itself, or a temp file renamed over the path
    only once complete (an interrupted export never leaves a half archive there)."""
    if not isinstance(dest, (str, os.PathLike)):
        yield dest
        return
    path = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _leased_blobs(store: ImageStore, lease: Lease, blobs: Iterable[str]) -> list[str]:
    out = list(dict.fromkeys(blobs))
    lease.add(*out)
    for d in out:
        if not store.content.has(d):
            raise MissingBlobError(d, "blob to export")
    return out


def export_oci_archive(
    store: ImageStore, refs: Sequence[str], dest: str | os.PathLike[str] | BinaryIO
) -> None:
    """Write the images `refs` name as an OCI archive (a tar of an OCI layout).

    Each index.json entry carries the image's name both as
    org.opencontainers.image.ref.name and io.containerd.image.name.
    """
    images = _images(store, refs)
    with store.lease() as lease:
        entries: list[Descriptor] = []
        blobs: list[str] = []
        for img in images:
            top, needed = _export_top(store, img)
            blobs += needed
            entries.append(
                top.with_annotations(
                    {ANNOTATION_REF_NAME: img.name, ANNOTATION_IMAGE_NAME: img.name}
                )
            )
        blobs = _leased_blobs(store, lease, blobs)
        with _output(dest) as f, _tar_out(f) as out:
            out.bytes(LAYOUT_FILE, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
            out.dir("blobs")
            out.dir(f"blobs/{SHA256}")
            for d in blobs:
                with store.content.open(d) as bf:
                    out.file(f"blobs/{SHA256}/{digest_hex(d)}", bf, os.fstat(bf.fileno()).st_size)
            index = ImageIndex(manifests=tuple(entries))
            out.bytes(INDEX_FILE, json.dumps(index.to_json(), indent=2, sort_keys=True).encode())


def export_layout(
    store: ImageStore, refs: Sequence[str], dest: str | os.PathLike[str]
) -> OCILayout:
    """Write the images `refs` name into an OCI layout directory (created if missing)."""
    images = _images(store, refs)
    layout = OCILayout.create(Path(dest))
    with store.lease() as lease:
        plan = [(img, *_export_top(store, img)) for img in images]
        _leased_blobs(store, lease, [d for _, _, needed in plan for d in needed])
        for img, top, needed in plan:
            for d in needed:
                if not layout.has_blob(d):
                    with store.content.open(d) as bf:
                        layout.write_blob_stream(_copy_chunks(bf), expected_digest=d)
            layout.tag(top.with_annotations({ANNOTATION_IMAGE_NAME: img.name}), img.name)
    return layout


def _decompress_into(store: ImageStore, layer: Descriptor, diff_id: str, spool: BinaryIO) -> int:
    """Write the layer as a plain tar into `spool`, checked against its DiffID; its size."""
    h = hashlib.sha256()
    size = 0
    with store.content.open(layer.digest) as f:
        try:
            stream, _ = decompressed(f)
            while chunk := stream.read(_CHUNK):
                h.update(chunk)
                spool.write(chunk)
                size += len(chunk)
        except (LayerError, OSError, EOFError, ValueError) as e:
            raise UnpackError(layer.digest, f"cannot decompress: {e}") from e
    actual = f"{SHA256}:{h.hexdigest()}"
    if actual != diff_id:
        raise UnpackError(layer.digest, f"DiffID is {actual}, the image config says {diff_id}")
    spool.seek(0)
    return size


def export_docker_archive(
    store: ImageStore, refs: Sequence[str], dest: str | os.PathLike[str] | BinaryIO
) -> None:
    """Write the images `refs` name as `docker save` does (loadable by `docker load`,
    `podman load`): uncompressed layers as `<id>/layer.tar`, where <id> is the hex of
    the layer's chain ID, the config as `<hex>.json`, manifest.json and repositories."""
    images = _images(store, refs)
    groups: dict[str, list[Image]] = {}
    for img in images:
        groups.setdefault(img.manifest.digest, []).append(img)
    with store.lease() as lease:
        _leased_blobs(
            store,
            lease,
            [d for img in images for d in (img.config.digest, *(x.digest for x in img.layers))],
        )
        manifest: list[dict[str, object]] = []
        repositories: dict[str, dict[str, str]] = {}
        written: set[str] = set()
        with _output(dest) as f, _tar_out(f) as out:
            for imgs in groups.values():
                img = imgs[0]
                config_name = f"{digest_hex(img.config.digest)}.json"
                if config_name not in written:
                    written.add(config_name)
                    with store.content.open(img.config.digest) as cf:
                        out.file(config_name, cf, img.config.size)
                layer_names = []
                parent = ""
                for layer, diff_id, chain in zip(
                    img.layers, img.diff_ids, img.chain_ids, strict=True
                ):
                    layer_id = digest_hex(chain)
                    name = f"{layer_id}/layer.tar"
                    layer_names.append(name)
                    if name not in written:
                        written.add(name)
                        out.dir(layer_id)
                        out.bytes(f"{layer_id}/VERSION", b"1.0")
                        legacy = {"id": layer_id, **({"parent": parent} if parent else {})}
                        out.bytes(f"{layer_id}/json", canonical_json(legacy))
                        # an anonymous file next to the store: a layer may not fit in /tmp
                        with tempfile.TemporaryFile(dir=store.content.ingest_dir) as spool:
                            size = _decompress_into(store, layer, diff_id, spool)
                            out.file(name, spool, size)
                    parent = layer_id
                tags = []
                for each in imgs:
                    repo, tag = split_name(each.name)
                    if tag is not None:
                        tags.append(each.name)
                        repositories.setdefault(repo, {})[tag] = parent
                manifest.append({"Config": config_name, "RepoTags": tags, "Layers": layer_names})
            out.bytes(DOCKER_MANIFEST_FILE, json.dumps(manifest, separators=(",", ":")).encode())
            out.bytes(
                DOCKER_REPOSITORIES_FILE,
                json.dumps(repositories, separators=(",", ":"), sort_keys=True).encode(),
            )


__all__ = [
    "ANNOTATION_IMAGE_NAME",
    "ArchiveFormatError",
    "ImageArchiveError",
    "ImportNameError",
    "export_docker_archive",
    "export_layout",
    "export_oci_archive",
    "import_archive",
    "import_layout",
]
