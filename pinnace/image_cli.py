"""`pinnace image ...`: pull, list, inspect, remove, import, export and prune images."""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from images.store import Image, ImageNotFoundError, ImageStore, ImageStoreError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    """The global options, shared by every command through click's context."""

    root: Path
    registry_config: Path | None
    runtime_root: str
    run_dir: Path

    def store(self) -> ImageStore:
        return ImageStore(self.root)


def settings() -> Settings:
    obj = click.get_current_context().find_object(Settings)
    if obj is None:  # pragma: no cover - main() always sets it
        raise click.UsageError("no settings")
    return obj


def friendly_errors(fn: F) -> F:
    """Expected failures (bad refs, missing images, registry errors) as one-line messages."""
    from cgroups.errors import CgroupError
    from images.archive import ImageArchiveError
    from images.hosts import RegistryConfigError
    from images.reference import InvalidReferenceError
    from images.registry import RegistryError
    from overlayfs.errors import LayerError, MountError, SnapshotError
    from pinnace.run import RunError
    from runtime.errors import RuntimeFailure

    expected = (
        CgroupError,
        LayerError,
        MountError,
        SnapshotError,
        RuntimeFailure,
        ImageStoreError,
        ImageArchiveError,
        RegistryConfigError,
        InvalidReferenceError,
        RegistryError,
        RunError,
    )

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except expected as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def normalize(name: str) -> str:
    """`busybox` -> docker.io/library/busybox:latest; names that are not references stay."""
    from images.reference import InvalidReferenceError, parse_reference

    try:
        return str(parse_reference(name))
    except InvalidReferenceError:
        return name


def find_image(store: ImageStore, ref: str) -> Image:
    """The image `ref` names as typed, else as normalised (IDs and digests match as typed)."""
    try:
        return store.get(ref)
    except ImageNotFoundError:
        full = normalize(ref)
        if full == ref:
            raise
        return store.get(full)


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n}"  # pragma: no cover


class Progress:
    """Pull progress on stderr: per-blob bytes and the total. On a terminal the block
    is redrawn in place; otherwise one plain line per blob event (no byte updates)."""

    def __init__(self, out: IO[str], tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.lock = threading.Lock()
        self.blobs: dict[str, tuple[str, int, int, str]] = {}
        self.drawn = 0
        self.last = 0.0

    def __call__(self, p: Any) -> None:
        with self.lock:
            self.blobs[p.digest] = (p.kind, p.done, p.total, p.status)
            if self.tty:
                now = time.monotonic()
                if p.status == "downloading" and now - self.last < 0.1:
                    return
                self.last = now
                self._draw()
            elif p.status != "downloading":
                self.out.write(f"{p.kind} {p.digest[7:19]}: {p.status} {p.done}/{p.total} bytes\n")
                self.out.flush()

    def _totals(self) -> tuple[int, int]:
        return sum(b[1] for b in self.blobs.values()), sum(b[2] for b in self.blobs.values())

    def _draw(self) -> None:
        lines = [
            f"{kind:6} {digest[7:19]}  {status:11} {human_size(done):>8} / {human_size(total)}"
            for digest, (kind, done, total, status) in self.blobs.items()
        ]
        done, total = self._totals()
        lines.append(f"total               {human_size(done):>8} / {human_size(total)}")
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}A")
        self.out.write("".join(f"\x1b[2K{line}\n" for line in lines))
        self.drawn = len(lines)
        self.out.flush()

    def finish(self) -> None:
        with self.lock:
            done, total = self._totals()
            if self.tty:
                self._draw()
            else:
                self.out.write(f"total: {done}/{total} bytes\n")
                self.out.flush()


def parse_platform(text: str | None) -> Any:
    from images.layout import Platform
    from images.store import default_platform

    if text is None:
        return default_platform()
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise click.BadParameter(f"{text!r}: use os/arch[/variant]", param_hint="--platform")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def pull_image(s: Settings, store: ImageStore, ref_text: str, platform: Any, quiet: bool) -> Image:
    """Pull `ref_text` into `store`, record it under its normalised name, unpack it."""
    from images.hosts import load_registry_config
    from images.pull import pull
    from images.reference import parse_reference
    from images.registry import RegistryClient

    ref = parse_reference(ref_text)
    client = RegistryClient(load_registry_config(s.registry_config))
    progress = None if quiet else Progress(sys.stderr, sys.stderr.isatty())
    with store.lease() as lease:
        result = pull(ref, lease, client=client, platform=platform, progress=progress)
        if progress is not None:
            progress.finish()
        img = store.create(str(ref), result.target, platform=platform)
        store.unpack(img, lease=lease)
    return img


@click.group("image")
def image() -> None:
    """Manage images in the local store (--root)."""


@image.command("pull")
@click.argument("ref")
@click.option("--platform", help="os/arch[/variant] to select from a multi-platform image.")
@click.option("-q", "--quiet", is_flag=True, help="No progress; print only the image ID.")
@friendly_errors
def pull_cmd(ref: str, platform: str | None, quiet: bool) -> None:
    """Pull an image from a registry (see --registry-config for mirrors and credentials)."""
    s = settings()
    store = s.store()
    try:
        img = pull_image(s, store, ref, parse_platform(platform), quiet)
    finally:
        store.close()
    click.echo(img.id if quiet else f"{img.name} {img.id}")


@image.command("ls")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.option("-q", "--quiet", is_flag=True, help="Image IDs only.")
@friendly_errors
def ls_cmd(output: str, quiet: bool) -> None:
    """List images."""
    store = settings().store()
    try:
        images = store.list()
    finally:
        store.close()
    if quiet:
        for iid in dict.fromkeys(img.id for img in images):
            click.echo(iid)
    elif output == "json":
        click.echo(json.dumps([_summary(img) for img in images], indent=2))
    else:
        rows = [("NAME", "IMAGE ID", "SIZE", "CREATED")]
        for img in images:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(img.created))
            rows.append((img.name, img.id[7:19], human_size(img.size), created))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _summary(img: Image) -> dict[str, Any]:
    return {"name": img.name, "id": img.id, "size": img.size, "digest": img.target.digest}


@image.command("inspect")
@click.argument("ref")
@friendly_errors
def inspect_cmd(ref: str) -> None:
    """Show an image's record and its config (JSON)."""
    store = settings().store()
    try:
        img = find_image(store, ref)
        config = json.loads(store.content.read(img.config.digest))
    finally:
        store.close()
    out = img.to_json() | {"id": img.id, "size": img.size, "image_config": config}
    click.echo(json.dumps(out, indent=2))


@image.command("rm")
@click.argument("refs", nargs=-1, required=True)
@friendly_errors
def rm_cmd(refs: tuple[str, ...]) -> None:
    """Remove image names (blobs and layers go with `image prune`)."""
    store = settings().store()
    try:
        for ref in refs:
            try:
                removed = store.remove(ref)
            except ImageNotFoundError:
                removed = store.remove(normalize(ref))
            for img in removed:
                click.echo(f"Untagged: {img.name}")
    finally:
        store.close()


@image.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="Import the one image under this name.")
@click.option("--platform", help="os/arch[/variant] to unpack from a multi-platform image.")
@friendly_errors
def import_cmd(path: Path, name: str | None, platform: str | None) -> None:
    """Import an OCI layout directory, an OCI archive or a docker archive (`docker save`)."""
    from images.archive import import_archive, import_layout

    store = settings().store()
    plat = parse_platform(platform)
    try:
        if path.is_dir():
            imported = import_layout(
                store,
                path,
                name=normalize(name) if name else None,
                normalize=normalize,
                platform=plat,
            )
        else:
            imported = import_archive(
                store,
                path,
                name=normalize(name) if name else None,
                normalize=normalize,
                platform=plat,
            )
    finally:
        store.close()
    for img in imported:
        click.echo(f"{img.name} {img.id}")


@image.command("export")
@click.argument("refs", nargs=-1, required=True)
@click.option("-o", "--output", "dest", required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["oci", "docker"]), default="oci")
@friendly_errors
def export_cmd(refs: tuple[str, ...], dest: Path, fmt: str) -> None:
    """Write images as an OCI archive or a docker archive (loadable by `docker load`)."""
    from images.archive import export_docker_archive, export_oci_archive

    store = settings().store()
    try:
        names = [find_image(store, ref).name for ref in refs]
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            if fmt == "oci":
                export_oci_archive(store, names, tmp)
            else:
                export_docker_archive(store, names, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        store.close()


@image.command("prune")
@friendly_errors
def prune_cmd() -> None:
    """Delete blobs and unpacked layers no image or container needs."""
    store = settings().store()
    try:
        store.recover()
        result = store.gc()
    finally:
        store.close()
    click.echo(
        f"removed {len(result.blobs)} blobs, {len(result.snapshots)} snapshots, "
        f"{human_size(result.bytes_freed)} freed"
    )
