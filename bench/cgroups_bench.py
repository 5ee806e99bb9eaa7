"""Benchmark: create + destroy N cgroups with CgroupV2Manager, against plain mkdir/rmdir.

    .venv/bin/python bench/cgroups_bench.py [-n 1000] [--populated 100]

Runs as root on the host's unified hierarchy (found by discover()), under a
scratch parent `pinnace-bench-<pid>` that is removed at the end. Both loops
run in the same process, one after the other, on the same parent:

  baseline   os.mkdir + os.rmdir of an empty cgroup directory
  manager    CgroupV2Manager.create() + destroy() of an empty cgroup
  populated  create + add_process(a sleeping child) + destroy(), which kills
             through cgroup.kill and waits for `populated 0` with inotify
             (the child is started before the clock runs)

Prints the total and per-operation figures (mean, median, p95) in microseconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cgroups.discovery import discover
from cgroups.manager import CgroupV2Manager


def summary(name: str, samples: list[float]) -> str:
    us = sorted(s * 1e6 for s in samples)
    p95 = us[min(len(us) - 1, int(len(us) * 0.95))]
    return (
        f"  {name:<22} total {sum(us) / 1000:9.1f} ms   per op: mean {statistics.fmean(us):8.1f}"
        f"  median {statistics.median(us):8.1f}  p95 {p95:8.1f} us"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="empty cgroups per loop (default 1000)")
    ap.add_argument(
        "--populated", type=int, default=100, help="cgroups with a process (default 100; 0: skip)"
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: this benchmark creates cgroups", file=sys.stderr)
        return 1
    hierarchy = discover()
    if hierarchy.mount_point is None:
        print("no cgroup v2 hierarchy is mounted", file=sys.stderr)
        return 1

    parent_name = f"pinnace-bench-{os.getpid()}"
    parent = CgroupV2Manager(parent_name, hierarchy)
    parent.create()
    base: Path = parent.path
    t: dict[str, list[float]] = {
        k: [] for k in ("mkdir", "rmdir", "create", "destroy", "create+add", "destroy (populated)")
    }
    clock = time.perf_counter
    try:
        for i in range(args.n):
            d = base / f"b{i}"
            t0 = clock()
            os.mkdir(d)
            t1 = clock()
            os.rmdir(d)
            t2 = clock()
            t["mkdir"].append(t1 - t0)
            t["rmdir"].append(t2 - t1)

        for i in range(args.n):
            m = CgroupV2Manager(f"{parent_name}/m{i}", hierarchy)
            t0 = clock()
            m.create()
            t1 = clock()
            m.destroy()
            t2 = clock()
            t["create"].append(t1 - t0)
            t["destroy"].append(t2 - t1)

        for i in range(args.populated):
            child = subprocess.Popen(["sleep", "600"])
            try:
                m = CgroupV2Manager(f"{parent_name}/p{i}", hierarchy)
                t0 = clock()
                m.create()
                m.add_process(child.pid)
                t1 = clock()
                m.destroy()
                t2 = clock()
                t["create+add"].append(t1 - t0)
                t["destroy (populated)"].append(t2 - t1)
            finally:
                if child.poll() is None:
                    os.kill(child.pid, 9)
                child.wait()
    finally:
        parent.destroy()

    mkdir_rmdir = [a + b for a, b in zip(t["mkdir"], t["rmdir"], strict=True)]
    manager = [a + b for a, b in zip(t["create"], t["destroy"], strict=True)]
    print(
        f"cgroup create+destroy x{args.n} under {base} "
        f"(kernel {platform.release()}, Python {platform.python_version()})"
    )
    print("baseline: os.mkdir + os.rmdir")
    print(summary("mkdir", t["mkdir"]))
    print(summary("rmdir", t["rmdir"]))
    print(summary("mkdir+rmdir", mkdir_rmdir))
    print("CgroupV2Manager")
    print(summary("create", t["create"]))
    print(summary("destroy", t["destroy"]))
    print(summary("create+destroy", manager))
    print(f"  manager / baseline: {sum(manager) / sum(mkdir_rmdir):.2f}x")
    if args.populated:
        print(f"with one sleeping process each, x{args.populated}")
        print(summary("create+add_process", t["create+add"]))
        print(summary("destroy (kill+wait+rm)", t["destroy (populated)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
