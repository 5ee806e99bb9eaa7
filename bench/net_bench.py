"""Benchmark: pod network setup + teardown, the built-in bridge driver against CNI plugins.

    sudo .venv/bin/python bench/net_bench.py [--pods 50] [--parallel 20] [--json]

Each driver is called as the sandbox manager calls it: `setup` on a pod network
namespace made like the manager makes one (cri.podns.setup: a pinned netns with lo
up), then `teardown`. Only the two driver calls are timed; making and removing the
pod's netns is not. The two drivers:

  bridge  cri.network.bridge.BridgeDriver (pyroute2 + one `nft` run per pod with ports)
  cni     cri.network.cni.CNIDriver with Debian's plugins from /usr/lib/cni: bridge
          (isGateway, ipMasq, hairpinMode) + host-local, and portmap in the rounds
          with a host port, the chain containerd's default config uses

Each has its node side (bridge, rules, CNI plugin runs) in a private network
namespace the bench creates, a fresh one per driver and round, so nothing touches
the host's network. Two rounds: pods without host ports, and pods with one TCP host
port each (a distinct port per pod). Per round: one untimed warm-up pod per driver,
then --pods pods one after the other (the drivers alternate pod by pod, so a slow
spell of the machine hits both), then --parallel pods at once from as many threads
(one driver after the other; each thread times its own pod's setup + teardown).
Run as root; every netns, pin and directory it makes is removed at the end, also
after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP))
sys.path.insert(0, str(TOP / "bench"))

from cri_bench import summary  # noqa: E402

from cri.network.bridge import BridgeDriver  # noqa: E402
from cri.network.cni import CNIDriver  # noqa: E402
from cri.network.driver import NetworkDriver, PodNetworkRequest, PortMapping  # noqa: E402
from cri.podns import PodNamespaces  # noqa: E402
from cri.podns import setup as setup_pod_namespaces  # noqa: E402
from namespaces.handles import unpin  # noqa: E402
from tests.fixtures.cni import write_bridge_conflist  # noqa: E402

CNI_BIN = "/usr/lib/cni"
CNI_PLUGINS = ("bridge", "host-local", "portmap")
ROUNDS = (("no host port", False), ("one host port", True))
BRIDGE_CIDR = "10.246.0.0/16"
CNI_CIDR = "10.247.0.0/16"
PORT_BASE = 30000


@dataclass
class Run:
    """One driver in one round: its samples (seconds) and the pod netns it made."""

    driver: str
    ports: bool
    impl: NetworkDriver
    base: Path
    seq: list[float] = field(default_factory=list)
    seq_setup: list[float] = field(default_factory=list)
    seq_teardown: list[float] = field(default_factory=list)
    par: list[float] = field(default_factory=list)
    par_wall: float = 0.0
    made: int = 0

    def new_pod(self) -> PodNetworkRequest:
        """A pinned pod netns (untimed) and the request for it."""
        self.made += 1
        pin_dir = self.base / "pods" / f"p{self.made}"
        pin_dir.mkdir(parents=True)
        netns = setup_pod_namespaces(PodNamespaces(kinds=["net"], pin_dir=str(pin_dir)))["net"]
        maps = (PortMapping("tcp", 80, PORT_BASE + self.made),) if self.ports else ()
        return PodNetworkRequest(
            sandbox_id=secrets.token_hex(32),
            netns=netns,
            pod_name=f"bench-{self.made}",
            pod_namespace="bench",
            pod_uid=secrets.token_hex(16),
            port_mappings=maps,
        )

    def one(self, req: PodNetworkRequest) -> tuple[float, float]:
        """Setup then teardown of one pod: the two durations."""
        t0 = time.perf_counter()
        self.impl.setup(req)
        t1 = time.perf_counter()
        self.impl.teardown(req)
        return t1 - t0, time.perf_counter() - t1


def drop_pod(req: PodNetworkRequest) -> None:
    with contextlib.suppress(OSError):
        unpin(Path(req.netns))


def make_node(base: Path) -> str:
    """A private "node" netns with lo up (where bridges, rules and plugins run)."""
    base.mkdir(parents=True)
    return setup_pod_namespaces(PodNamespaces(kinds=["net"], pin_dir=str(base)))["net"]


def write_conflist(conf_dir: Path, bridge: str, data_dir: Path, ports: bool) -> None:
    write_bridge_conflist(
        conf_dir / "10-benchnet.conflist", "benchnet", bridge, CNI_CIDR, data_dir, ports=ports
    )


def make_runs(base: Path, ports: bool, nodes: list[str]) -> list[Run]:
    tag = secrets.token_hex(3)
    bdir, cdir = base / "bridge", base / "cni"
    bnode, cnode = make_node(bdir / "node"), make_node(cdir / "node")
    nodes += [bnode, cnode]
    bridge = BridgeDriver(
        str(bdir / "state"),
        cidr=BRIDGE_CIDR,
        bridge=f"pnb{tag}",
        node_netns=bnode,
        nft_table=f"pinnace_bench_{tag}",
    )
    write_conflist(cdir / "conf", f"pnc{tag}", cdir / "host-local", ports)
    cni = CNIDriver(
        str(cdir / "state"), conf_dir=str(cdir / "conf"), bin_dirs=(CNI_BIN,), node_netns=cnode
    )
    return [Run("bridge", ports, bridge, bdir), Run("cni", ports, cni, cdir)]


def sequential(runs: list[Run], n: int) -> None:
    for _ in range(n):
        for r in runs:
            req = r.new_pod()
            try:
                s, t = r.one(req)
            finally:
                drop_pod(req)
            r.seq_setup.append(s)
            r.seq_teardown.append(t)
            r.seq.append(s + t)


def concurrent(r: Run, m: int) -> None:
    reqs = [r.new_pod() for _ in range(m)]  # made first: podns.setup forks, no threads yet
    lock = threading.Lock()
    start = threading.Barrier(m)

    def work(req: PodNetworkRequest) -> None:
        start.wait()
        s, t = r.one(req)
        with lock:
            r.par.append(s + t)

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(m) as pool:
            list(pool.map(work, reqs))
        r.par_wall = time.perf_counter() - t0
    finally:
        for req in reqs:
            with contextlib.suppress(Exception):
                r.impl.teardown(req)  # after a failure: nothing may stay behind
            drop_pod(req)


def figures(r: Run) -> dict[str, Any]:
    return {
        "driver": r.driver,
        "host_port": r.ports,
        "sequential": summary(r.seq),
        "sequential_setup": summary(r.seq_setup),
        "sequential_teardown": summary(r.seq_teardown),
        "concurrent": summary(r.par),
        "concurrent_wall_ms": r.par_wall * 1000,
    }


def ratios(rounds: list[list[Run]]) -> dict[str, dict[str, float]]:
    out = {}
    for b, c in rounds:
        key = "one host port" if b.ports else "no host port"
        out[key] = {
            "sequential_p50": statistics.median(b.seq) / statistics.median(c.seq),
            "sequential_mean": statistics.fmean(b.seq) / statistics.fmean(c.seq),
            "concurrent_p50": statistics.median(b.par) / statistics.median(c.par),
            "concurrent_wall": b.par_wall / c.par_wall,
        }
    return out


def report(rounds: list[list[Run]], args: argparse.Namespace) -> str:
    lines = [
        f"pod network setup + teardown, {args.pods} sequential pods, {args.parallel} at once "
        f"({os.cpu_count()} CPUs, Linux {platform.release()}); milliseconds",
        "",
        f"{'round':<15} {'driver':<7} {'seq p50':>8} {'p99':>7} {'mean':>7} "
        f"{'setup p50':>10} {'td p50':>7} {'conc p50':>9} {'p99':>7} {'wall':>7}",
    ]
    for rs in rounds:
        for r in rs:
            f = figures(r)
            sq, cc = f["sequential"], f["concurrent"]
            lines.append(
                f"{'one host port' if r.ports else 'no host port':<15} {r.driver:<7} "
                f"{sq['p50_ms']:8.1f} {sq['p99_ms']:7.1f} {sq['mean_ms']:7.1f} "
                f"{f['sequential_setup']['p50_ms']:10.1f} "
                f"{f['sequential_teardown']['p50_ms']:7.1f} "
                f"{cc['p50_ms']:9.1f} {cc['p99_ms']:7.1f} {f['concurrent_wall_ms']:7.0f}"
            )
    lines.append("")
    for key, rt in ratios(rounds).items():
        lines.append(
            f"bridge/cni, {key}: sequential p50 {rt['sequential_p50']:.2f}, "
            f"mean {rt['sequential_mean']:.2f}; concurrent p50 {rt['concurrent_p50']:.2f}, "
            f"wall {rt['concurrent_wall']:.2f}"
        )
    return "\n".join(lines)


def to_json(rounds: list[list[Run]], args: argparse.Namespace) -> str:
    out = {
        "pods": args.pods,
        "parallel": args.parallel,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "results": [figures(r) for rs in rounds for r in rs],
        "ratio_bridge_to_cni": ratios(rounds),
    }
    return json.dumps(out, indent=2)


def run(args: argparse.Namespace, base: Path, nodes: list[str]) -> str:
    rounds = []
    for i, (_, ports) in enumerate(ROUNDS):
        runs = make_runs(base / f"round{i}", ports, nodes)
        sequential(runs, 1)  # warm-up: bridge creation, nft table, plugin binaries cached
        for r in runs:
            r.seq.clear()
            r.seq_setup.clear()
            r.seq_teardown.clear()
        sequential(runs, args.pods)
        for r in runs:
            concurrent(r, args.parallel)
        rounds.append(runs)
    return to_json(rounds, args) if args.json else report(rounds, args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pods", type=int, default=50, help="sequential pods (default 50)")
    ap.add_argument("--parallel", type=int, default=20, help="pods at once (default 20)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if args.pods < 1 or args.parallel < 1:
        ap.error("--pods and --parallel must be at least 1")
    if os.geteuid() != 0:
        print("run as root: pods need network namespaces", file=sys.stderr)
        return 1
    missing = [p for p in CNI_PLUGINS if not os.access(os.path.join(CNI_BIN, p), os.X_OK)]
    if missing or shutil.which("nft") is None:
        print(
            f"needs nft and the CNI plugins {', '.join(CNI_PLUGINS)} in {CNI_BIN} "
            "(Debian: containernetworking-plugins)",
            file=sys.stderr,
        )
        return 1

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    base = Path(tempfile.mkdtemp(prefix="pinnace-bench-net-"))
    nodes: list[str] = []
    try:
        text = run(args, base, nodes)
    finally:
        # Ctrl-C during clean-up would leak: ignore it until everything is gone; the node
        # netns take their bridges, veths and rules with them
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for node in nodes:
            with contextlib.suppress(OSError):
                unpin(Path(node))
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
        signal.signal(signal.SIGINT, old)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
