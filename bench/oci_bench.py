"""Benchmark: pinnace-oci against runc and crun on one busybox bundle (the youki method).

    .venv/bin/python bench/oci_bench.py [-n 50] [--runs 100] [--seccomp] [--runtime NAME=COMMAND ...]

One bundle (the fixture `busybox` image unpacked, a config.json running
`true` in new pid/mount/ipc/uts/net namespaces; with --seccomp also the
default seccomp profile, as docker, containerd and podman pass one) serves
every runtime:

  cycle  `create && start && delete --force` of one container, N times:
         median and p90 per cycle, and the median of each verb
  run    `run` of R sequential containers (each waits for `true` and deletes
         it): total time and per container

The runtimes' cycles are interleaved (pinnace, runc, crun, pinnace, ...) so
a slow spell of the machine hits them all alike; two untimed warm-up cycles
each come first. Every runtime gets its own --root. A runtime that cannot
run the bundle here (crun refuses hybrid cgroup hosts) is reported with its
error and left out of the ratios. Run as root; everything it makes (state
roots, bundle, containers) is removed at the end.
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
from dataclasses import dataclass, field
from pathlib import Path

VERBS = ("create", "start", "delete")
TOP = Path(__file__).resolve().parent.parent


@dataclass
class Runtime:
    name: str
    command: list[str]
    root: Path = Path()
    error: str = ""  # why this runtime cannot run the bundle here
    cycles: list[float] = field(default_factory=list)
    verbs: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VERBS})
    run_total: float = 0.0
    left: set[str] = field(default_factory=set)  # ids that may still exist


class Failed(Exception):
    pass


def default_runtimes(scratch: Path) -> list[Runtime]:
    """pinnace-oci as installed beside this Python (bin/setup makes it the compiled front
    end of runtime/launcher.py), or one put together in `scratch` where the project is not
    installed (the VM tier runs it from the checkout): the Python launcher, and beside it
    the front end PINNACE_OCI_FRONT_END names (built by the host for a guest without a
    compiler); Debian's runc and crun if present."""
    script = Path(sys.executable).parent / "pinnace-oci"
    if not script.exists():
        sys.path.insert(0, str(TOP))
        from runtime.launcher import PYTHON_LAUNCHER, install

        script = scratch / "pinnace-oci"
        prebuilt = os.environ.get("PINNACE_OCI_FRONT_END")
        if prebuilt:
            install(str(scratch / PYTHON_LAUNCHER))
            shutil.copyfile(prebuilt, script)
            script.chmod(0o755)
        else:
            install(str(script))
    found = [Runtime("pinnace-oci", [str(script)])]
    for name in ("runc", "crun"):
        path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if path:
            found.append(Runtime(name, [path]))
    return found


def make_bundle(dest: Path, *, seccomp: bool = False) -> Path:
    """The busybox fixture image unpacked into dest/rootfs, and a config.json running `true`;
    with `seccomp`, also the default profile `pinnace-oci spec` writes (docker's, as engines
    pass one for every container)."""
    import json

    sys.path.insert(0, str(TOP))  # tests/ is not an installed package
    from images.builder import build_fixture_images
    from tests.fixtures.bundles import minimal_config, unpack_image

    images = build_fixture_images(dest / "layout")
    unpack_image(images, "busybox", dest / "bundle" / "rootfs")
    shutil.rmtree(dest / "layout")
    config = minimal_config(["true"])
    config["ociVersion"] = "1.0.2"  # Debian's crun 1.8 refuses 1.2.0 ("unknown version specified")
    if seccomp:
        from runtime.defaults import default_config

        config["linux"]["seccomp"] = default_config()["linux"]["seccomp"]
    (dest / "bundle" / "config.json").write_text(json.dumps(config))
    return dest / "bundle"


def invoke(rt: Runtime, *args: str) -> float:
    """Run one verb; its wall time in seconds. Output goes to files, not pipes: a created
    container's init inherits them and would hold a pipe open."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [*rt.command, "--root", str(rt.root), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            check=False,
        )
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            last = (err.read().decode(errors="replace").strip().splitlines() or [""])[-1]
            raise Failed(f"`{rt.name} {args[0]}` exited {proc.returncode}: {last}")
    return elapsed


def cycle(rt: Runtime, bundle: Path, cid: str) -> dict[str, float]:
    rt.left.add(cid)
    times = {"create": invoke(rt, "create", "--bundle", str(bundle), cid)}
    times["start"] = invoke(rt, "start", cid)
    times["delete"] = invoke(rt, "delete", "--force", cid)
    rt.left.discard(cid)
    return times


def bench(runtimes: list[Runtime], bundle: Path, n: int, runs: int, warmup: int) -> None:
    tag = f"pinnace-bench-{os.getpid()}"
    for i in range(-warmup, n):
        for rt in runtimes:
            if rt.error:
                continue
            try:
                times = cycle(rt, bundle, f"{tag}-{rt.name}-c{i + warmup}")
            except Failed as exc:
                rt.error = str(exc)
                continue
            if i >= 0:
                rt.cycles.append(sum(times.values()))
                for verb, t in times.items():
                    rt.verbs[verb].append(t)
    for rt in runtimes:
        if rt.error or runs <= 0:
            continue
        t0 = time.perf_counter()
        try:
            for i in range(runs):
                cid = f"{tag}-{rt.name}-r{i}"
                rt.left.add(cid)
                invoke(rt, "run", "--bundle", str(bundle), cid)
                rt.left.discard(cid)
        except Failed as exc:
            rt.error = str(exc)
            continue
        rt.run_total = time.perf_counter() - t0


def p90(samples: list[float]) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]


def describe(rt: Runtime) -> str:
    """What runs: the binary, or for a script its interpreter line."""
    path = rt.command[0]
    try:
        with open(path, "rb") as f:
            head = f.readline(200)
    except OSError:
        return " ".join(rt.command)
    if head.startswith(b"#!"):
        return f"{' '.join(rt.command)} ({head[2:].decode(errors='replace').strip()})"
    return " ".join(rt.command)


def report(runtimes: list[Runtime], n: int, runs: int, *, seccomp: bool = False) -> str:
    ms = 1000.0
    profile = "with the default seccomp profile" if seccomp else "without a seccomp profile"
    lines = [
        f"host: {platform.release()}, {os.cpu_count()} cpus; "
        f"cycle = create + start + delete --force of a busybox `true` container, {profile}",
        *(f"  {rt.name}: {describe(rt)}" for rt in runtimes),
        "",
        f"{'runtime':<12} {'cycle median':>13} {'cycle p90':>10}   "
        + " ".join(f"{v:>7}" for v in VERBS)
        + f"   {f'run x{runs} total':>16} {'per run':>8}",
    ]
    for rt in runtimes:
        if rt.error:
            lines.append(f"{rt.name:<12} n/a: {rt.error}")
            continue
        verbs = " ".join(f"{statistics.median(rt.verbs[v]) * ms:7.1f}" for v in VERBS)
        run = f"{rt.run_total * 1000:13.0f} ms {rt.run_total / runs * ms:5.1f} ms" if runs else ""
        lines.append(
            f"{rt.name:<12} {statistics.median(rt.cycles) * ms:10.1f} ms {p90(rt.cycles) * ms:7.1f} ms"
            f"   {verbs}   {run}"
        )
    lines.append(f"(ms; {n} cycles, verb columns are medians)")
    ours = next((r for r in runtimes if r.name == "pinnace-oci" and not r.error), None)
    if ours is not None:
        for other in runtimes:
            if other is ours or other.error:
                continue
            cyc = statistics.median(ours.cycles) / statistics.median(other.cycles)
            text = f"pinnace-oci/{other.name}: cycle {cyc:.2f}"
            if runs:
                text += f", run {ours.run_total / other.run_total:.2f}"
            lines.append(text)
    return "\n".join(lines)


def cleanup(runtimes: list[Runtime]) -> None:
    for rt in runtimes:
        for cid in sorted(rt.left):
            subprocess.run(
                [*rt.command, "--root", str(rt.root), "delete", "--force", cid],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )


def parse_runtime(raw: str) -> Runtime:
    name, sep, command = raw.partition("=")
    if not sep or not command.split():
        raise argparse.ArgumentTypeError(f"want NAME=COMMAND, got {raw!r}")
    return Runtime(name, command.split())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-n", type=int, default=50, help="create/start/delete cycles (default 50)")
    ap.add_argument("--runs", type=int, default=100, help="sequential `run`s (default 100)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed cycles first (default 2)")
    ap.add_argument(
        "--runtime",
        type=parse_runtime,
        action="append",
        help="NAME=COMMAND (repeatable; default: pinnace-oci, runc, crun)",
    )
    ap.add_argument(
        "--seccomp",
        action="store_true",
        help="give the bundle the default seccomp profile (as engines do)",
    )
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("-n must be at least 1")
    if os.geteuid() != 0:
        print("run as root: containers need namespaces, mounts and cgroups", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="pinnace-bench-") as tmp:
        runtimes = args.runtime or default_runtimes(Path(tmp))
        bundle = make_bundle(Path(tmp), seccomp=args.seccomp)
        for rt in runtimes:
            rt.root = Path(tmp) / f"root-{rt.name}"
        try:
            bench(runtimes, bundle, args.n, args.runs, args.warmup)
        finally:
            cleanup(runtimes)
        print(
            report(runtimes, args.n, args.runs, seccomp=args.seccomp)
        )  # before `tmp` goes: it may hold the launcher
    return 1 if any(r.error for r in runtimes if r.name == "pinnace-oci") else 0


if __name__ == "__main__":
    sys.exit(main())
