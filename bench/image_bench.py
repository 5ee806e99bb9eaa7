"""Benchmark: pull and unpack a 5-layer ~50 MB image from a loopback registry,
Pinnace against `skopeo copy` + `umoci unpack` in the same run.

    .venv/bin/python bench/image_bench.py [-n 3] [--layer-mb 10]

Runs as root (umoci unpack and the image store write root-owned files). The
image is built with images/builder.py: a busybox base plus one file of
incompressible random bytes in each of 5 gzip layers, so transfer, gunzip and
digest work dominate rather than tar metadata. It is pushed to Debian's
docker-registry on 127.0.0.1 (stopped by PID at the end). Each repetition uses
a fresh destination: a new ImageStore for Pinnace (pull, then unpack into
overlay snapshots), a new OCI directory and bundle for skopeo/umoci. The two
tools alternate within a repetition so neither always runs on a warmer cache.
Prints per-phase medians in ms and the ratios pinnace/skopeo, pinnace/umoci.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))  # tests/ is not an installed package

from images.builder import (  # noqa: E402
    ContainerConfig,
    FileEntry,
    ImageBuilder,
    ImageRecipe,
    LayerSpec,
    busybox_base_layer,
    load_busybox,
    ref_name,
)
from images.hosts import RegistryConfig  # noqa: E402
from images.layout import OCILayout  # noqa: E402
from images.pull import pull  # noqa: E402
from images.push import RegistryPusher  # noqa: E402
from images.reference import parse_reference  # noqa: E402
from images.registry import RegistryClient  # noqa: E402
from images.store import ImageStore  # noqa: E402
from tests.fixtures.registry import start_registry, stop_registry  # noqa: E402

LAYERS = 5
REPOSITORY = "pinnace-bench/random"
TAG = "latest"
PHASES = ("pinnace pull", "pinnace unpack", "skopeo copy", "umoci unpack")


def build_image(root: Path, layer_mb: int) -> tuple[OCILayout, str, int]:
    """A 5-layer image of random files; returns the layout, its ref name and blob bytes."""
    layout = OCILayout.create(root)
    base = busybox_base_layer(load_busybox())
    specs = []
    for i in range(LAYERS):
        blob = FileEntry(f"data/random-{i}.bin", os.urandom(layer_mb << 20))
        if i == 0:  # the base layer carries busybox too, so the image stays 5 layers
            specs.append(LayerSpec(base.created_by + " + random data", (*base.entries, blob)))
        else:
            specs.append(LayerSpec(f"pinnace bench: {layer_mb} MiB random, layer {i}", (blob,)))
    recipe = ImageRecipe(
        name="random", tags=(TAG,), layers=tuple(specs), config=ContainerConfig(cmd=("sh",))
    )
    built = ImageBuilder(layout).build(recipe)
    size = sum(d.size for d in built.layers)
    return layout, ref_name("random", TAG), size


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {proc.stderr.strip()}")


def pinnace_once(scratch: Path, ref: str) -> tuple[float, float]:
    """Pull (blobs + image record) into a fresh store, then unpack it: seconds for each."""
    client = RegistryClient(RegistryConfig())  # defaults: plain HTTP allowed to loopback
    store = ImageStore(scratch / "store")
    try:
        with store.lease() as lease:
            t0 = time.perf_counter()
            result = pull(ref, lease, client=client)
            img = store.create(ref, result.target)
            t1 = time.perf_counter()
            store.unpack(img, lease=lease)
            t2 = time.perf_counter()
        for i in range(LAYERS):
            if not any(store.root.glob(f"snapshots/**/data/random-{i}.bin")):
                raise RuntimeError(f"random-{i}.bin missing after pinnace unpack")
    finally:
        store.close()
    return t1 - t0, t2 - t1


def skopeo_once(scratch: Path, ref: str) -> tuple[float, float]:
    """skopeo copy into a fresh OCI dir, then umoci unpack into a fresh bundle."""
    oci, bundle = scratch / "oci", scratch / "bundle"
    skopeo = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"]
    copy = timed(lambda: run([*skopeo, f"docker://{ref}", f"oci:{oci}:{TAG}"]))
    unpack = timed(lambda: run(["umoci", "unpack", "--image", f"{oci}:{TAG}", str(bundle)]))
    for i in range(LAYERS):
        if not (bundle / "rootfs" / "data" / f"random-{i}.bin").is_file():
            raise RuntimeError(f"random-{i}.bin missing after umoci unpack")
    return copy, unpack


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--layer-mb", type=int, default=10, help="MiB of random data per layer")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: umoci unpack and the image store need it", file=sys.stderr)
        return 1
    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install {tool} (bin/setup test)", file=sys.stderr)
            return 1

    base = Path(tempfile.mkdtemp(prefix="pinnace-bench-image-"))
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    server = None
    try:
        layout, name, size = build_image(base / "layout", args.layer_mb)
        server = start_registry(base / "registry")
        RegistryPusher(server.url).push_from_layout(layout, name, REPOSITORY, [TAG])
        ref = f"{server.host}/{REPOSITORY}:{TAG}"
        parse_reference(ref)  # fail early on a malformed reference
        for rep in range(args.n):
            order = ("pinnace", "skopeo") if rep % 2 == 0 else ("skopeo", "pinnace")
            for tool in order:
                scratch = base / f"{tool}-{rep}"
                scratch.mkdir()
                try:
                    if tool == "pinnace":
                        a, b = pinnace_once(scratch, ref)
                        times["pinnace pull"].append(a)
                        times["pinnace unpack"].append(b)
                    else:
                        a, b = skopeo_once(scratch, ref)
                        times["skopeo copy"].append(a)
                        times["umoci unpack"].append(b)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
    finally:
        if server is not None:
            stop_registry(server)
        shutil.rmtree(base, ignore_errors=True)

    med = {p: statistics.median(v) * 1000 for p, v in times.items()}
    versions = {
        tool: subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()
        for tool in ("skopeo", "umoci")
    }
    print(
        f"image: {LAYERS} gzip layers, {size / 1e6:.1f} MB of blobs; n={args.n}; "
        f"Linux {platform.release()}, Python {platform.python_version()}; "
        f"{versions['skopeo']}; {versions['umoci']}"
    )
    print(f"{'phase':<16} {'median ms':>10}   runs (ms)")
    for p in PHASES:
        runs = ", ".join(f"{t * 1000:.0f}" for t in times[p])
        print(f"{p:<16} {med[p]:>10.0f}   {runs}")
    pull_ratio = med["pinnace pull"] / med["skopeo copy"]
    unpack_ratio = med["pinnace unpack"] / med["umoci unpack"]
    total_ratio = (med["pinnace pull"] + med["pinnace unpack"]) / (
        med["skopeo copy"] + med["umoci unpack"]
    )
    print(
        f"pinnace/skopeo (pull): {pull_ratio:.2f}; pinnace/umoci (unpack): {unpack_ratio:.2f}; "
        f"total: {total_ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
