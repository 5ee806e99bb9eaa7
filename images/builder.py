"""Build small, reproducible OCI images from Debian's statically linked busybox.

The tests need real images (something a container can exec, an httpd to reach
over the network, a USER to resolve, layers with whiteouts to apply) without a
network or a Dockerfile toolchain: one static busybox binary plus a handful of
text files is enough for all of that.

Images are reproducible: the same busybox binary and recipe give the same
layer, config and manifest digests on every run (fixed mtimes, uid/gid 0 with
no owner names, entries sorted, gzip header with mtime 0 and no file name,
canonical JSON). Tests can therefore pin digests within a run and registries
deduplicate shared layers. The compressed digests also depend on the zlib
version; the diff_ids (of the uncompressed tars) depend on the inputs alone.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import struct
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from images.digest import sha256_digest
from images.layout import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ImageIndex,
    ImageManifest,
    OCILayout,
    Platform,
)

DEFAULT_BUSYBOX = Path("/bin/busybox")

# 2000-01-01T00:00:00Z: a fixed time for every tar entry and history record.
# Not 0, which some tools print as "unset" or treat specially.
REPRODUCIBLE_EPOCH = 946684800
REPRODUCIBLE_CREATED = datetime.fromtimestamp(REPRODUCIBLE_EPOCH, UTC).strftime(
    "%Y-%m-%dT%H:%M:%SZ"
)

WHITEOUT_PREFIX = ".wh."

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

LINUX_AMD64 = Platform(os="linux", architecture="amd64")
LINUX_ARM64 = Platform(os="linux", architecture="arm64")

# Applets linked in /bin: a shell, the coreutils a test script reaches for,
# and the network tools (httpd, nc, wget) the networking tests use.
APPLETS: tuple[str, ...] = (
    "ash", "cat", "chmod", "cp", "cut", "date", "df", "echo", "env", "expr", "false",
    "find", "grep", "head", "hostname", "httpd", "id", "ifconfig", "ip", "kill", "ln",
    "ls", "mkdir", "mount", "mv", "nc", "nslookup", "ping", "printf", "ps", "pwd",
    "readlink", "rm", "sed", "seq", "sh", "sleep", "sort", "stat", "tail", "tee",
    "test", "timeout", "top", "touch", "tr", "true", "umount", "uname", "wc", "wget",
    "which", "whoami", "xargs",
)  # fmt: skip

APP_UID = 1000
APP_USER = "app"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    f"{APP_USER}:x:{APP_UID}:{APP_UID}:{APP_USER}:/home/{APP_USER}:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
).encode()
GROUP = (f"root:x:0:\n{APP_USER}:x:{APP_UID}:\nnobody:x:65534:\n").encode()
INDEX_HTML = b"<!doctype html>\n<title>pinnace</title>\n<p>hello from pinnace httpd</p>\n"
HTTPD_PORT = 8080

# Fixture image names; each is tagged with every tag in FIXTURE_TAGS.
BUSYBOX = "busybox"
BUSYBOX_UID = "busybox-uid"
BUSYBOX_USER = "busybox-user"
BUSYBOX_EXTRA = "busybox-extra"
BUSYBOX_LAYERED = "busybox-layered"
HTTPD = "httpd"
BUSYBOX_MULTIARCH = "busybox-multiarch"
FIXTURE_TAGS: tuple[str, ...] = ("latest", "1.0")

EXTRA_FILE = "etc/pinnace-variant"
LAYERED_ADDED_FILE = "etc/layer2.txt"
LAYERED_DELETED_FILE = "www/index.html"


class BusyboxError(Exception):
    """The busybox binary cannot go into an image (missing, not ELF, dynamically linked)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class LayerEntryError(ValueError):
    """A layer entry with an unusable path (absolute after normalising, '..', duplicate)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"layer entry {path!r}: {message}")
        self.path = path


# -- layer entries ------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    path: str
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class DirEntry:
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class SymlinkEntry:
    path: str
    target: str


@dataclass(frozen=True)
class WhiteoutEntry:
    """Deletes `path` from the layers below (written as `<dir>/.wh.<name>`)."""

    path: str


LayerEntry = FileEntry | DirEntry | SymlinkEntry | WhiteoutEntry


@dataclass(frozen=True)
class LayerSpec:
    """What goes into one layer, and the history line that says where it came from."""

    created_by: str
    entries: tuple[LayerEntry, ...]


@dataclass(frozen=True)
class BuiltLayer:
    """A layer as a tar (whose digest is the diff_id) and as the gzip blob that is shipped."""

    tar: bytes
    blob: bytes
    diff_id: str
    digest: str

    def descriptor(self) -> Descriptor:
        return Descriptor(MEDIA_TYPE_LAYER_GZIP, self.digest, len(self.blob))


def _normalise(path: str) -> str:
    """A relative, normalised tar name; '..' is refused outright, not resolved."""
    if ".." in path.split("/"):
        raise LayerEntryError(path, "contains '..'")
    norm = posixpath.normpath("/" + path).lstrip("/")
    if not norm:
        raise LayerEntryError(path, "names the root directory")
    return norm


def _tar_name(entry: LayerEntry) -> str:
    path = _normalise(entry.path)
    if isinstance(entry, WhiteoutEntry):
        parent, name = posixpath.split(path)
        if name.startswith(WHITEOUT_PREFIX):
            raise LayerEntryError(entry.path, "whiteout of a whiteout")
        return posixpath.join(parent, WHITEOUT_PREFIX + name)
    return path


def _tarinfo(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = REPRODUCIBLE_EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_layer_tar(entries: Iterable[LayerEntry]) -> bytes:
    """An uncompressed layer tar: parents implied, entries sorted, all metadata fixed."""
    by_name: dict[str, LayerEntry] = {}
    for entry in entries:
        name = _tar_name(entry)
        if name in by_name:
            raise LayerEntryError(entry.path, "listed twice")
        by_name[name] = entry
    for name in list(by_name):
        parent = posixpath.dirname(name)
        while parent:
            by_name.setdefault(parent, DirEntry(parent))
            parent = posixpath.dirname(parent)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(by_name, key=lambda n: n.split("/")):
            entry = by_name[name]
            if isinstance(entry, DirEntry):
                tar.addfile(_tarinfo(name, tarfile.DIRTYPE, entry.mode))
            elif isinstance(entry, SymlinkEntry):
                info = _tarinfo(name, tarfile.SYMTYPE, 0o777)
                info.linkname = entry.target
                tar.addfile(info)
            elif isinstance(entry, WhiteoutEntry):
                tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644), io.BytesIO(b""))
            else:
                info = _tarinfo(name, tarfile.REGTYPE, entry.mode)
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buf.getvalue()


def gzip_reproducibly(data: bytes) -> bytes:
    """gzip with mtime 0 and no file name in the header, so equal input gives equal output."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


def build_layer(entries: Iterable[LayerEntry]) -> BuiltLayer:
    tar = build_layer_tar(entries)
    blob = gzip_reproducibly(tar)
    return BuiltLayer(tar=tar, blob=blob, diff_id=sha256_digest(tar), digest=sha256_digest(blob))


# -- configs and recipes ------------------------------------------------------


@dataclass(frozen=True)
class ContainerConfig:
    """The execution defaults of an image (the config's "config" object)."""

    user: str = ""
    env: tuple[str, ...] = (DEFAULT_PATH_ENV,)
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.user:
            out["User"] = self.user
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.exposed_ports:
            out["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.labels:
            out["Labels"] = dict(self.labels)
        return out

    def history(self) -> list[str]:
        """Dockerfile-like lines for the settings, recorded as empty-layer history."""
        lines = []
        if self.env:
            lines.append("ENV " + " ".join(self.env))
        if self.user:
            lines.append(f"USER {self.user}")
        if self.working_dir:
            lines.append(f"WORKDIR {self.working_dir}")
        if self.exposed_ports:
            lines.append("EXPOSE " + " ".join(self.exposed_ports))
        if self.entrypoint:
            lines.append(f"ENTRYPOINT {_json_list(self.entrypoint)}")
        if self.cmd:
            lines.append(f"CMD {_json_list(self.cmd)}")
        return lines


def _json_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


@dataclass(frozen=True)
class ImageRecipe:
    name: str
    tags: tuple[str, ...]
    layers: tuple[LayerSpec, ...]
    config: ContainerConfig


def image_config_json(
    recipe: ImageRecipe, diff_ids: Sequence[str], platform: Platform
) -> dict[str, Any]:
    """The image config (application/vnd.oci.image.config.v1+json) for a recipe."""
    history: list[dict[str, Any]] = [
        {"created": REPRODUCIBLE_CREATED, "created_by": spec.created_by} for spec in recipe.layers
    ]
    history += [
        {"created": REPRODUCIBLE_CREATED, "created_by": line, "empty_layer": True}
        for line in recipe.config.history()
    ]
    config: dict[str, Any] = {
        "created": REPRODUCIBLE_CREATED,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": recipe.config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": history,
    }
    if platform.variant:
        config["variant"] = platform.variant
    return config


# -- the busybox source -------------------------------------------------------

_ELF_MACHINES = {0x3E: "amd64", 0xB7: "arm64"}
_PT_INTERP = 3


def load_busybox(path: Path = DEFAULT_BUSYBOX) -> bytes:
    """Read a busybox binary, refusing a dynamically linked one (it could not run in a
    rootfs that has no libc) and one for another architecture than amd64/arm64."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BusyboxError(path, "not found (install Debian's busybox-static)") from None
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BusyboxError(path, "not a 64-bit little-endian ELF executable")
    (machine,) = struct.unpack_from("<H", data, 0x12)
    if machine not in _ELF_MACHINES:
        raise BusyboxError(path, f"unsupported ELF machine {machine:#x}")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == _PT_INTERP:
            raise BusyboxError(path, "dynamically linked (install Debian's busybox-static)")
    return data


def busybox_architecture(busybox: bytes) -> str:
    """The OCI architecture of a binary accepted by `load_busybox`."""
    (machine,) = struct.unpack_from("<H", busybox, 0x12)
    return _ELF_MACHINES[machine]


def busybox_base_layer(busybox: bytes) -> LayerSpec:
    """A minimal root filesystem: busybox and its applet links, users, /tmp, /www."""
    entries: list[LayerEntry] = [
        FileEntry("bin/busybox", busybox, 0o755),
        *(SymlinkEntry(f"bin/{applet}", "busybox") for applet in APPLETS),
        SymlinkEntry("usr/bin/env", "../../bin/busybox"),
        DirEntry("dev"),
        DirEntry("proc"),
        DirEntry("sys"),
        DirEntry("root", 0o700),
        DirEntry(f"home/{APP_USER}"),
        DirEntry("tmp", 0o1777),
        FileEntry("etc/passwd", PASSWD),
        FileEntry("etc/group", GROUP),
        FileEntry("www/index.html", INDEX_HTML),
    ]
    return LayerSpec(
        created_by="pinnace builder: busybox-static root filesystem",
        entries=tuple(entries),
    )


def busybox_recipes(busybox: bytes, tags: tuple[str, ...] = FIXTURE_TAGS) -> dict[str, ImageRecipe]:
    """The fixture images, by name. They all share the same base layer."""
    base = busybox_base_layer(busybox)
    shell = ContainerConfig(cmd=("sh",))
    extra = LayerSpec(
        created_by="pinnace builder: busybox-static root filesystem, extra variant",
        entries=(*base.entries, FileEntry(EXTRA_FILE, b"extra\n")),
    )
    second = LayerSpec(
        created_by=f"pinnace builder: add /{LAYERED_ADDED_FILE}, delete /{LAYERED_DELETED_FILE}",
        entries=(
            FileEntry(LAYERED_ADDED_FILE, b"added by the second layer\n"),
            WhiteoutEntry(LAYERED_DELETED_FILE),
        ),
    )
    httpd = ContainerConfig(
        entrypoint=("busybox", "httpd", "-f", "-p", str(HTTPD_PORT), "-h", "/www"),
        exposed_ports=(f"{HTTPD_PORT}/tcp",),
    )
    recipes = [
        ImageRecipe(BUSYBOX, tags, (base,), shell),
        ImageRecipe(BUSYBOX_UID, tags, (base,), ContainerConfig(user=str(APP_UID), cmd=("id",))),
        ImageRecipe(BUSYBOX_USER, tags, (base,), ContainerConfig(user=APP_USER, cmd=("id",))),
        ImageRecipe(BUSYBOX_EXTRA, tags, (extra,), shell),
        ImageRecipe(BUSYBOX_LAYERED, tags, (base, second), shell),
        ImageRecipe(HTTPD, tags, (base,), httpd),
    ]
    return {r.name: r for r in recipes}


# -- building into a layout ---------------------------------------------------


def ref_name(name: str, tag: str) -> str:
    """The index.json ref name of an image tag: `name:tag` (one layout holds many images)."""
    return f"{name}:{tag}"


@dataclass(frozen=True)
class BuiltImage:
    name: str
    ref_names: tuple[str, ...]
    platform: Platform
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]


@dataclass(frozen=True)
class BuiltIndex:
    name: str
    ref_names: tuple[str, ...]
    index: Descriptor
    images: tuple[BuiltImage, ...]


class ImageBuilder:
    """Writes recipes into a layout; a layer shared by several recipes is compressed once."""

    def __init__(self, layout: OCILayout) -> None:
        self.layout = layout
        self._layers: dict[LayerSpec, BuiltLayer] = {}

    def layer(self, spec: LayerSpec) -> BuiltLayer:
        built = self._layers.get(spec)
        if built is None:
            built = self._layers[spec] = build_layer(spec.entries)
            self.layout.write_blob(built.blob, MEDIA_TYPE_LAYER_GZIP)
        return built

    def build(
        self, recipe: ImageRecipe, platform: Platform = LINUX_AMD64, *, tag: bool = True
    ) -> BuiltImage:
        """Write one image; with `tag`, tag it `name:tag` for each of the recipe's tags."""
        layers = [self.layer(spec) for spec in recipe.layers]
        diff_ids = tuple(layer.diff_id for layer in layers)
        config = self.layout.write_json(
            image_config_json(recipe, diff_ids, platform), MEDIA_TYPE_CONFIG
        )
        layer_descs = tuple(layer.descriptor() for layer in layers)
        manifest = self.layout.write_json(
            ImageManifest(config=config, layers=layer_descs).to_json(),
            MEDIA_TYPE_MANIFEST,
            platform=platform,
        )
        refs = tuple(ref_name(recipe.name, t) for t in recipe.tags) if tag else ()
        for ref in refs:
            self.layout.tag(manifest, ref)
        return BuiltImage(
            name=recipe.name,
            ref_names=refs,
            platform=platform,
            manifest=manifest,
            config=config,
            layers=layer_descs,
            diff_ids=diff_ids,
        )

    def build_index(
        self,
        recipe: ImageRecipe,
        platforms: Sequence[Platform] = (LINUX_AMD64, LINUX_ARM64),
        *,
        name: str | None = None,
    ) -> BuiltIndex:
        """A multi-platform image: one manifest per platform under one tagged index.

        The layers are the recipe's for every platform, so only the config (its
        architecture) and hence the manifest differ: enough to exercise
        platform selection, not to run the arm64 image on arm64.
        """
        name = name or recipe.name
        images = tuple(self.build(recipe, platform, tag=False) for platform in platforms)
        index = self.layout.write_json(
            ImageIndex(manifests=tuple(image.manifest for image in images)).to_json(),
            MEDIA_TYPE_INDEX,
        )
        refs = tuple(ref_name(name, t) for t in recipe.tags)
        for ref in refs:
            self.layout.tag(index, ref)
        return BuiltIndex(name=name, ref_names=refs, index=index, images=images)


@dataclass(frozen=True)
class FixtureImages:
    layout: OCILayout
    images: Mapping[str, BuiltImage]
    multiarch: BuiltIndex

    def ref_names(self) -> list[str]:
        refs = [ref for image in self.images.values() for ref in image.ref_names]
        return refs + list(self.multiarch.ref_names)


def build_fixture_images(root: Path, busybox_path: Path = DEFAULT_BUSYBOX) -> FixtureImages:
    """Create (or update) a layout at `root` holding every busybox recipe and a
    two-platform (linux/amd64, linux/arm64) index named busybox-multiarch."""
    busybox = load_busybox(busybox_path)
    if busybox_architecture(busybox) != LINUX_AMD64.architecture:
        raise BusyboxError(busybox_path, "fixture images are amd64: need an amd64 busybox")
    layout = OCILayout.create(root)
    builder = ImageBuilder(layout)
    recipes = busybox_recipes(busybox)
    images = {name: builder.build(recipe) for name, recipe in recipes.items()}
    multiarch = builder.build_index(recipes[BUSYBOX], name=BUSYBOX_MULTIARCH)
    return FixtureImages(layout=layout, images=images, multiarch=multiarch)
