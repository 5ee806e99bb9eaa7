"""Benchmark: prepare + mount + unmount + remove N overlay snapshots on a 3-layer parent chain.

    .venv/bin/python bench/overlay_bench.py [-n 200] [--method auto|fsconfig|mount2] [--no-sync]

Runs as root in a scratch root under /tmp (removed at the end), in the
host's mount namespace; each snapshot is mounted on its own target dir.
Prints the total and per-operation figures (mean, median, p95) in ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from overlayfs import mounts as m
from overlayfs.snapshotter import OverlaySnapshotter

OPS = ("prepare", "mount", "unmount", "remove")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="snapshots (default 200)")
    ap.add_argument("--method", default="auto", choices=["auto", "fsconfig", "mount2"])
    ap.add_argument("--no-sync", action="store_true", help="skip fsync of metadata")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: this benchmark mounts overlays", file=sys.stderr)
        return 1

    base = Path(tempfile.mkdtemp(prefix="pinnace-bench-overlay-"))
    times: dict[str, list[float]] = {op: [] for op in OPS}
    try:
        sn = OverlaySnapshotter(base / "snaps", sync=not args.no_sync)
        parent = ""
        for i in range(3):  # the image: three committed layers, one file each
            sn.prepare(f"extract-{i}", parent)
            Path(sn.layer_path(f"extract-{i}"), f"layer{i}").write_text(str(i))
            sn.commit(f"sha256:{i:064x}", f"extract-{i}")
            parent = f"sha256:{i:064x}"
        targets = base / "mnt"
        targets.mkdir()

        t_start = time.perf_counter()
        for i in range(args.n):
            key = f"ctr-{i}"
            target = targets / key
            target.mkdir()
            t0 = time.perf_counter()
            mounts = sn.prepare(key, parent)
            t1 = time.perf_counter()
            m.mount_all(mounts, target, method=args.method)
            t2 = time.perf_counter()
            try:
                assert (target / "layer0").exists()
            finally:
                t3 = time.perf_counter()
                m.unmount_all(target)
            t4 = time.perf_counter()
            sn.remove(key)
            t5 = time.perf_counter()
            target.rmdir()
            for op, dt in zip(OPS, (t1 - t0, t2 - t1, t4 - t3, t5 - t4), strict=True):
                times[op].append(dt)
        total = time.perf_counter() - t_start
        sn.close()
    finally:
        for d in sorted((base / "mnt").glob("*"), reverse=True) if (base / "mnt").exists() else []:
            m.unmount_all(d)
        shutil.rmtree(base, ignore_errors=True)

    n = args.n
    sync = "off" if args.no_sync else "on"
    print(f"overlay snapshots: {n} x (prepare + mount + unmount + remove), 3-layer parent chain")
    print(
        f"kernel {platform.release()}, method={args.method}, "
        f"lowerdir+={'yes' if m.lowerdir_plus_supported() else 'no'}, metadata fsync {sync}"
    )
    print(
        f"total {total:.3f} s, {total / n * 1000:.2f} ms per snapshot, {n / total:.1f} snapshots/s"
    )
    print(f"{'op':<10}{'total s':>10}{'mean ms':>10}{'median ms':>11}{'p95 ms':>9}")
    for op in OPS:
        xs = sorted(times[op])
        p95 = xs[min(len(xs) - 1, int(len(xs) * 0.95))]
        print(
            f"{op:<10}{sum(xs):>10.3f}{statistics.mean(xs) * 1000:>10.2f}"
            f"{statistics.median(xs) * 1000:>11.2f}{p95 * 1000:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
