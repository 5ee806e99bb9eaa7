"""Benchmark: Pinnace's CRI server against containerd's CRI plugin, and supervisor memory.

    .venv/bin/python bench/cri_bench.py [--pods 50] [--parallel 20] [--podman N] [--json]

Both runtimes are driven over their unix socket by the same gRPC client (the generated
runtime.v1 stubs in cri/api), with the same pod: host networking (NamespaceOption
network=NODE, so neither needs CNI; pid namespace per container, as kubelet's default),
one busybox container running `sleep 1000`, and a private cgroup parent.

  pod start   RunPodSandbox + CreateContainer + StartContainer, then ContainerStatus until
              RUNNING: --pods pods one after the other (the two runtimes alternate pod by
              pod, so a slow spell of the machine hits both), then --parallel pods at once
              from as many threads over one channel (one runtime after the other)
  teardown    StopPodSandbox + RemovePodSandbox of each sequential pod (alternating), and
              of the parallel burst at once (wall time)
  memory      with --pods containers running: the PSS (/proc/PID/smaps_rollup) of every
              per-container supervisor - Pinnace's monitors (pids in
              <state_dir>/containers/<id>/monitor.json) and the zygote they fork from,
              containerd's containerd-shim-runc-v2 (one per pod) and the daemons; then
              podman's conmon for --podman `podman run -d` containers (runc, private storage)

Pinnace runs as `python -m pinnace cri --config X` with every directory in a temp dir and
the busybox fixture images imported into its store, as tests/fixtures/cri.py does.
containerd (Debian's 1.6, if installed) runs with a private config, root, state and
socket (bench/cri_containerd.py); on a hybrid cgroup host it and runc use cgroup v1,
Pinnace the unified hierarchy. A runtime that cannot run here is reported with its error
and left out of the ratios. One untimed warm-up pod per runtime comes first. Run as root;
everything it makes (servers, containers, mounts, cgroups, temp dirs) is removed at the
end, also after a failure or Ctrl-C, and only processes it started are ended, by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parent.parent
BUSYBOX_IMAGE = "docker.io/library/busybox:latest"
COMMAND = ["sleep", "1000"]
RPC_TIMEOUT = 120.0
RUNC_ROOT = Path("/run/runc")
MAX_FAILURES = 3


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default), so p50 of an even count is the mean of the middle two."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100 or math.isnan(q):
        raise ValueError(f"percentile must be within 0..100, not {q}")
    s = sorted(samples)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(samples: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and max in milliseconds (samples are seconds)."""
    if not samples:
        return {}
    return {
        "p50_ms": percentile(samples, 50) * 1000,
        "p99_ms": percentile(samples, 99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
        "max_ms": max(samples) * 1000,
    }


def pss_kb(pid: int) -> int | None:
    """The Pss: line of /proc/PID/smaps_rollup in kB; None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


def children_of(ppid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == ppid:
            out.append(int(proc.name))
    return out


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path(f"/proc/{pid}/cmdline").read_bytes()).replace(b"\0", b" ").decode()
    return ""


# --- one CRI endpoint ----------------------------------------------------------------------


@dataclass
class Target:
    """One runtime behind a CRI socket, and what was measured on it."""

    name: str
    cgroup_parent: str
    log_dir: Path
    rt: Any = None  # RuntimeServiceStub
    error: str = ""  # set when it cannot run here, or after MAX_FAILURES failed steps
    failures: list[str] = field(default_factory=list)
    seq: list[float] = field(default_factory=list)
    par: list[float] = field(default_factory=list)
    par_wall: float = 0.0
    teardown: list[float] = field(default_factory=list)
    par_teardown_wall: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)
    live: dict[str, None] = field(default_factory=dict)  # sandbox ids not yet removed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start_pod(self) -> tuple[str, float]:
        """One pod with one running container; its id and the seconds it took."""
        from cri.api import api_pb2 as pb

        name = f"bench-{uuid.uuid4().hex[:10]}"
        ns = pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)
        pod = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(
                name=name, uid=uuid.uuid4().hex, namespace="default", attempt=0
            ),
            log_directory=str(self.log_dir / name),
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=self.cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns),
            ),
        )
        ctr = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="sleeper"),
            image=pb.ImageSpec(image=BUSYBOX_IMAGE),
            command=COMMAND,
            log_path="sleeper.log",
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(namespace_options=ns)
            ),
        )
        t0 = time.perf_counter()
        sid = self.rt.RunPodSandbox(
            pb.RunPodSandboxRequest(config=pod), timeout=RPC_TIMEOUT
        ).pod_sandbox_id
        with self.lock:
            self.live[sid] = None
        cid = self.rt.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=sid, config=ctr, sandbox_config=pod),
            timeout=RPC_TIMEOUT,
        ).container_id
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        deadline = time.monotonic() + RPC_TIMEOUT
        while True:
            st = self.rt.ContainerStatus(
                pb.ContainerStatusRequest(container_id=cid), timeout=RPC_TIMEOUT
            ).status
            if st.state == pb.CONTAINER_RUNNING:
                break
            if st.state == pb.CONTAINER_EXITED or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: container {cid} is {st.state}: {st.message}")
            time.sleep(0.001)
        return sid, time.perf_counter() - t0

    def remove_pod(self, sid: str) -> float:
        from cri.api import api_pb2 as pb

        t0 = time.perf_counter()
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=RPC_TIMEOUT)
        self.rt.RemovePodSandbox(
            pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=RPC_TIMEOUT
        )
        elapsed = time.perf_counter() - t0
        with self.lock:
            self.live.pop(sid, None)
        return elapsed

    def remove_all(self) -> None:
        """Best effort, for clean-up: every sandbox the runtime lists."""
        from cri.api import api_pb2 as pb

        if self.rt is None:
            return
        with contextlib.suppress(Exception):
            items = self.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
            for s in items:
                with contextlib.suppress(Exception):
                    self.remove_pod(s.id)


def guarded(target: Target, fn: Callable[..., object], *args: Any) -> None:
    """Run one step. A failed step is recorded (and its sample left out); after
    MAX_FAILURES the target is disabled (reported, left out of the ratios)."""
    if target.error:
        return
    try:
        fn(*args)
    except Exception as exc:  # a gRPC error or a runtime refusing the pod
        detail = getattr(exc, "details", None)
        target.failures.append(f"{type(exc).__name__}: {detail() if callable(detail) else exc}")
        if len(target.failures) >= MAX_FAILURES:
            target.error = f"gave up after {len(target.failures)} failed steps"


def warm_up(target: Target) -> None:
    target.remove_pod(target.start_pod()[0])


def start_one(target: Target, ids: list[str]) -> None:
    sid, secs = target.start_pod()
    ids.append(sid)
    target.seq.append(secs)


def remove_one(target: Target, sid: str) -> None:
    target.teardown.append(target.remove_pod(sid))


def burst(target: Target, n: int) -> None:
    """n pods started at once from n threads (one shared channel), then removed at once."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        t0 = time.perf_counter()
        started = list(pool.map(lambda _: target.start_pod(), range(n)))
        target.par_wall = time.perf_counter() - t0
        target.par = [t for _, t in started]
        t0 = time.perf_counter()
        list(pool.map(target.remove_pod, [sid for sid, _ in started]))
        target.par_teardown_wall = time.perf_counter() - t0


# --- memory ------------------------------------------------------------------------------


def pinnace_memory(server_pid: int, state_dir: Path) -> dict[str, Any]:
    monitors = []
    for path in sorted(state_dir.glob("containers/*/monitor.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(path.read_text())["pid"])
            pss = pss_kb(pid)
            if pss is not None:
                monitors.append(pss)
    zygotes = [p for p in children_of(server_pid) if "cri.zygote" in cmdline(p)]
    return {
        "supervisor": "monitor",
        "supervisors": len(monitors),
        "supervisor_pss_kb": monitors,
        "mean_supervisor_pss_kb": statistics.fmean(monitors) if monitors else None,
        "zygote_pss_kb": pss_kb(zygotes[0]) if zygotes else None,
        "daemon_pss_kb": pss_kb(server_pid),
    }


def containerd_memory(daemon_pid: int, shims: list[int]) -> dict[str, Any]:
    values = [v for v in (pss_kb(p) for p in shims) if v is not None]
    return {
        "supervisor": "containerd-shim-runc-v2",
        "supervisors": len(values),
        "supervisor_pss_kb": values,
        "mean_supervisor_pss_kb": statistics.fmean(values) if values else None,
        "daemon_pss_kb": pss_kb(daemon_pid),
    }


# --- podman / conmon -----------------------------------------------------------------------


@dataclass
class Podman:
    top: Path
    cgroup_parent: str
    image: str = ""
    ids: list[str] = field(default_factory=list)
    made_runc_root: bool = False  # runc's default --root, which podman's runc calls use

    def __call__(self, *args: str, check: bool = True) -> str:
        from tests.fixtures.podman import podman_argv, podman_env

        argv = podman_argv(self.top, "runc", *args)
        env = podman_env(self.top)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            # files, not pipes: conmon and the container would hold a pipe open
            proc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, timeout=120
            )
            out.seek(0)
            err.seek(0)
            if check and proc.returncode != 0:
                raise RuntimeError(
                    f"podman {args[0]} exited {proc.returncode}: "
                    + err.read().decode(errors="replace").strip()[-500:]
                )
            return out.read().decode(errors="replace")


def podman_setup(top: Path, layout: Path) -> Podman:
    """Private storage and config, as tests/integration/test_podman.py (why each setting)."""
    from tests.fixtures.podman import write_containers_conf

    for sub in ("tmp", "net"):
        (top / sub).mkdir(parents=True)
    write_containers_conf(top)
    p = Podman(top, f"/pinnace-bench-podman-{uuid.uuid4().hex[:8]}")
    p.made_runc_root = not RUNC_ROOT.exists()
    p.image = p("pull", "-q", f"oci:{layout}:busybox:latest").strip()
    return p


def podman_memory(p: Podman, n: int) -> dict[str, Any]:
    for _ in range(n):
        cid = p(
            "run", "-d", "--network", "none", "--cgroup-parent", p.cgroup_parent, p.image,
            *COMMAND,
        ).strip()  # fmt: skip
        p.ids.append(cid)
    pids = [int(x) for x in p("inspect", "--format", "{{.State.ConmonPid}}", *p.ids).split()]
    values = [v for v in (pss_kb(pid) for pid in pids) if v is not None]
    return {
        "supervisor": "conmon",
        "supervisors": len(values),
        "supervisor_pss_kb": values,
        "mean_supervisor_pss_kb": statistics.fmean(values) if values else None,
    }


def podman_cleanup(p: Podman) -> None:
    from cri_containerd import remove_cgroups, unmount_under

    if p.ids:
        p("rm", "--force", "--time", "0", *p.ids, check=False)
    p("system", "reset", "--force", check=False)
    remove_cgroups(p.cgroup_parent)  # kills by PID whatever podman left in our cgroups
    unmount_under(p.top)
    if p.made_runc_root:
        with contextlib.suppress(OSError):
            RUNC_ROOT.rmdir()  # only if empty: runc removed our containers' state


# --- the run -------------------------------------------------------------------------------


def build_layout(dest: Path) -> Path:
    """The busybox fixture images plus pause-bench (busybox, `sleep infinity` entrypoint)."""
    from cri_containerd import PAUSE_IMAGE

    from images.builder import (
        ContainerConfig,
        ImageBuilder,
        ImageRecipe,
        build_fixture_images,
        busybox_base_layer,
        load_busybox,
    )

    images = build_fixture_images(dest)
    pause = PAUSE_IMAGE.rsplit("/", 1)[1].split(":")[0]
    recipe = ImageRecipe(
        pause,
        ("latest",),
        (busybox_base_layer(load_busybox()),),
        ContainerConfig(entrypoint=("sleep", "infinity")),
    )
    ImageBuilder(images.layout).build(recipe)
    return dest


def start_pinnace(
    base: Path, layout: Path, target: Target, cleanups: list[Callable[[], None]]
) -> Any:
    """A private `pinnace cri` for `target`, with busybox in its store; its clean-up (every
    pod through the CRI, the server, what a failure left) is registered first."""
    import yaml

    from images.archive import import_layout
    from images.store import ImageStore
    from tests.fixtures.cri import CRIServer, _leftover_cleanup, server_settings

    srv: Any = None

    def stop() -> None:
        if srv is None:
            return
        target.remove_all()
        with contextlib.suppress(Exception):
            srv.stop()
        _leftover_cleanup(srv)
        subprocess.run(["umount", "-R", "-l", str(srv.base)], capture_output=True, check=False)

    cleanups.append(stop)
    base.mkdir(parents=True)
    settings = server_settings(base, target.cgroup_parent, log_level="info")
    (base / "cri.yaml").write_text(yaml.safe_dump(settings))
    store = ImageStore(base / "images")
    try:
        import_layout(store, layout, refs=["busybox:latest"], name=BUSYBOX_IMAGE)
    finally:
        store.close()
    srv = CRIServer(base, base / "cri.yaml", target.cgroup_parent, log_dir=base / "logs")
    srv.start()
    target.rt = srv.rt
    return srv


def start_containerd(
    base: Path, layout: Path, target: Target, cleanups: list[Callable[[], None]]
) -> Any:
    """A private containerd (bench/cri_containerd.py) for `target`, with busybox and the
    bench's sandbox image imported; its clean-up (every pod through the CRI, the daemon,
    its mounts and cgroups) is registered first. Raises ContainerdUnavailable."""
    import cri_containerd as ctrd_mod
    import grpc

    from cri.api import api_pb2_grpc

    handle: Any = None
    channel: Any = None

    def stop() -> None:
        if handle is None:
            return
        target.remove_all()
        if channel is not None:
            channel.close()
        ctrd_mod.stop(handle)
        ctrd_mod.unmount_under(handle.top)
        ctrd_mod.remove_cgroups(target.cgroup_parent.split("/")[1])

    cleanups.append(stop)
    archive = ctrd_mod.write_archive(
        layout,
        base / "images.tar",
        {"busybox:latest": BUSYBOX_IMAGE, "pause-bench:latest": ctrd_mod.PAUSE_IMAGE},
    )
    handle = ctrd_mod.start(base / "containerd")
    ctrd_mod.import_images(handle, archive)
    channel = grpc.insecure_channel(f"unix:{handle.socket}")
    stub: Any = api_pb2_grpc.RuntimeServiceStub  # generated, untyped
    target.rt = stub(channel)
    return handle


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def report(targets: list[Target], conmon: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"host: Linux {platform.release()}, {os.cpu_count()} cpus, Python "
        f"{platform.python_version()}; pods use the HOST network (NamespaceOption network=NODE) "
        "on both runtimes, one busybox `sleep 1000` container each",
        "pod start = RunPodSandbox + CreateContainer + StartContainer until ContainerStatus "
        "says RUNNING",
    ]
    for t in targets:
        lines.append(f"  {t.name}: {t.memory.get('version', '')}")
    ok = [t for t in targets if not t.error]
    cols = [t.name for t in targets]
    both = len(ok) == 2
    head = f"{'':<34}" + "".join(f"{c:>14}" for c in cols) + (f"{'ratio':>9}" if both else "")
    lines += ["", head]

    def row(label: str, get: Callable[[Target], float | None], fmt: str = "{:.1f}") -> None:
        vals = [None if t.error else get(t) for t in targets]
        cells = "".join(f"{fmt.format(v) if v is not None else 'n/a':>14}" for v in vals)
        rat = f"{ratio(vals[0], vals[1]):>9}" if both else ""
        lines.append(f"{label:<34}{cells}{rat}")

    def stat(series: str, key: str) -> Callable[[Target], float | None]:
        return lambda t: summary(getattr(t, series)).get(key)

    stats = (("p50", "p50_ms"), ("p99", "p99_ms"), ("mean", "mean_ms"))
    for label, key in stats:
        row(f"start, sequential x{args.pods}, {label} ms", stat("seq", key))
    for label, key in stats:
        row(f"start, parallel x{args.parallel}, {label} ms", stat("par", key))
    row(f"start, parallel x{args.parallel}, wall ms", lambda t: t.par_wall * 1000 or None)
    for label, key in stats:
        row(f"teardown, sequential, {label} ms", stat("teardown", key))
    row(
        f"teardown, parallel x{args.parallel}, wall ms",
        lambda t: t.par_teardown_wall * 1000 or None,
    )
    row(
        "supervisor PSS, mean per pod, kB",
        lambda t: t.memory.get("mean_supervisor_pss_kb"),
        "{:.0f}",
    )
    row("daemon PSS, kB", lambda t: t.memory.get("daemon_pss_kb"), "{:.0f}")
    lines.append(
        "(supervisor: "
        + "; ".join(
            f"{t.name} {t.memory.get('supervisor', '?')} x{t.memory.get('supervisors', 0)}"
            for t in targets
            if not t.error
        )
        + ")"
    )
    pin = next((t for t in targets if t.name == "pinnace" and not t.error), None)
    if pin is not None and pin.memory.get("zygote_pss_kb") is not None:
        lines.append(f"pinnace zygote PSS: {pin.memory['zygote_pss_kb']} kB (one per server)")
    if conmon.get("error"):
        lines.append(f"conmon (podman): n/a: {conmon['error']}")
    elif conmon:
        mean = conmon["mean_supervisor_pss_kb"]
        text = f"conmon PSS (podman {conmon['version']}, x{conmon['supervisors']}): {mean:.0f} kB"
        if pin is not None and pin.memory.get("mean_supervisor_pss_kb"):
            text += f"; pinnace monitor/conmon: {pin.memory['mean_supervisor_pss_kb'] / mean:.2f}"
        lines.append(text)
    for t in targets:
        if t.error:
            lines.append(f"{t.name}: n/a: {t.error}")
        for failure in t.failures:
            lines.append(f"{t.name}: FAILED step: {failure}")
    if any(t.name == "containerd" and not t.error for t in targets):
        lines.append(
            "containerd: cgroup v1 (hybrid host) via runc, restrict_oom_score_adj, and a pause "
            "container per pod; pinnace: cgroup v2 (unified), no pause process"
        )
    return "\n".join(lines)


def to_json(targets: list[Target], conmon: dict[str, Any], args: argparse.Namespace) -> str:
    out: dict[str, Any] = {
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "pods": args.pods,
        "parallel": args.parallel,
        "network": "host (NamespaceOption network=NODE) for every runtime",
        "runtimes": {},
        "conmon": conmon,
    }
    for t in targets:
        out["runtimes"][t.name] = {
            "error": t.error or None,
            "failures": t.failures,
            "start_sequential": summary(t.seq),
            "start_parallel": summary(t.par),
            "start_parallel_wall_ms": t.par_wall * 1000,
            "teardown_sequential": summary(t.teardown),
            "teardown_parallel_wall_ms": t.par_teardown_wall * 1000,
            "memory": t.memory,
            "samples_s": {"sequential": t.seq, "parallel": t.par, "teardown": t.teardown},
        }
    return json.dumps(out, indent=2)


def run(
    args: argparse.Namespace, base: Path, cleanups: list[Callable[[], None]]
) -> tuple[str, bool]:
    """Measure everything; the printed result, and whether Pinnace failed."""
    import cri_containerd as ctrd_mod

    tag = uuid.uuid4().hex[:8]
    layout = build_layout(base / "layout")
    targets: list[Target] = []

    pin = Target("pinnace", f"/pinnace-bench-{tag}/pods", base / "logs" / "pinnace")
    targets.append(pin)
    handle: Any = None
    try:
        srv = start_pinnace(base / "pinnace", layout, pin, cleanups)
        pin.memory["version"] = f"python -m pinnace cri (server pid {srv.proc.pid})"
    except Exception as exc:
        pin.error = f"cannot start: {exc}"

    ctr = Target("containerd", f"/pinnace-bench-{tag}-containerd/pods", base / "logs" / "ctrd")
    targets.append(ctr)
    if args.no_containerd:
        ctr.error = "skipped (--no-containerd)"
    else:
        try:
            handle = start_containerd(base, layout, ctr, cleanups)
            ctr.memory["version"] = (
                f"{handle.version()}, runc shim v2 "
                "(sandbox image: busybox `sleep infinity`, cgroupfs)"
            )
        except ctrd_mod.ContainerdUnavailable as exc:
            ctr.error = str(exc)

    live = [t for t in targets if not t.error]
    for t in live:  # warm-up: first use of the image, snapshotter, caches
        guarded(t, warm_up, t)

    sequential: dict[str, list[str]] = {t.name: [] for t in targets}
    for _ in range(args.pods):
        for t in targets:
            guarded(t, start_one, t, sequential[t.name])

    if not pin.error and srv is not None:
        pin.memory.update(pinnace_memory(srv.proc.pid, srv.base / "state"))
    if not ctr.error and handle is not None and handle.proc is not None:
        ctr.memory.update(containerd_memory(handle.proc.pid, handle.shim_pids()))

    for i in range(args.pods):
        for t in targets:
            if i < len(sequential[t.name]):
                guarded(t, remove_one, t, sequential[t.name][i])

    for t in targets:
        guarded(t, burst, t, args.parallel)

    conmon: dict[str, Any] = {}
    if args.podman > 0:
        if shutil.which("podman") is None or shutil.which("conmon") is None:
            conmon["error"] = "podman or conmon is not installed"
        else:
            pm: Podman | None = None

            def stop_podman() -> None:
                if pm is not None:
                    podman_cleanup(pm)

            cleanups.append(stop_podman)
            try:
                pm = podman_setup(base / "podman", layout)
                conmon = podman_memory(pm, args.podman)
                version = subprocess.run(["conmon", "--version"], capture_output=True, text=True)
                conmon["version"] = version.stdout.splitlines()[0] if version.stdout else "?"
            except Exception as exc:
                conmon = {"error": str(exc)}

    text = to_json(targets, conmon, args) if args.json else report(targets, conmon, args)
    return text, bool(pin.error)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pods", type=int, default=50, help="sequential pods (default 50)")
    ap.add_argument("--parallel", type=int, default=20, help="pods started at once (default 20)")
    ap.add_argument(
        "--podman",
        type=int,
        default=None,
        help="containers to run under podman for conmon's PSS (default: --pods; 0 skips)",
    )
    ap.add_argument("--no-containerd", action="store_true", help="measure Pinnace only")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if args.pods < 1 or args.parallel < 1:
        ap.error("--pods and --parallel must be at least 1")
    if args.podman is None:
        args.podman = args.pods
    if os.geteuid() != 0:
        print("run as root: pods need namespaces, mounts and cgroups", file=sys.stderr)
        return 1
    sys.path.insert(0, str(TOP))  # tests/ is not an installed package
    sys.path.insert(0, str(TOP / "bench"))  # cri_containerd, also when imported as a module

    return guarded_run("pinnace-bench-cri-", lambda base, cleanups: run(args, base, cleanups))


def guarded_run(
    prefix: str, body: Callable[[Path, list[Callable[[], None]]], tuple[str, bool]]
) -> int:
    """Run a bench `body(base, cleanups)` in a fresh temp dir, then every clean-up it
    registered (newest first) even on failure, Ctrl-C or SIGTERM; print its report."""

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    base = Path(tempfile.mkdtemp(prefix=prefix))
    cleanups: list[Callable[[], None]] = []
    try:
        text, failed = body(base, cleanups)
    finally:
        # Ctrl-C during clean-up would leak: ignore it until everything is gone
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for fn in reversed(cleanups):
            try:
                fn()
            except Exception as exc:
                print(f"clean-up: {type(exc).__name__}: {exc}", file=sys.stderr)
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
        signal.signal(signal.SIGINT, old)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
