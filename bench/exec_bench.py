"""Benchmark: ExecSync and streaming Exec round-trip latency, Pinnace against containerd.

    sudo .venv/bin/python bench/exec_bench.py [-n 100] [--no-containerd] [--json]

One pod per runtime (host network, one busybox `sleep 1000` container, as bench/cri_bench.py
starts it), then -n calls of each kind, one after the other; the runtimes alternate call by
call, so a slow spell of the machine hits both:

  ExecSync true         the RPC, until its response (exit code 0)
  ExecSync echo hello   the same, with "hello\\n" on stdout
  Exec, SPDY            Exec RPC (stdout only) -> URL -> HTTP upgrade to SPDY/3.1 with
                        X-Stream-Protocol-Version v4.channel.k8s.io -> open the error and
                        stdout streams (kubectl's order) -> read "hello\\n" until stdout ends
                        and the Success status until the error stream ends -> GOAWAY, closed
  Exec, WebSocket       the same over WebSocket with v5.channel.k8s.io (v4 when the server
                        does not speak v5): messages until the server's close, then closed

Before the timed calls, each transport and channel protocol is tried once per runtime
(warm-up), and what a runtime refuses is reported. Pinnace runs as `python -m pinnace cri`
with its directories in a temp dir (bench/cri_bench.py's start_pinnace); containerd is
Debian's 1.6 with a private config, root, state and socket (bench/cri_containerd.py), and
its streaming server is the kubelet streaming library. If containerd cannot run here,
Pinnace is reported alone. Run as root; everything it makes (servers, containers, mounts,
cgroups, temp dirs) is removed at the end, also after a failure or Ctrl-C, and only
processes it started are ended, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TOP = Path(__file__).resolve().parent.parent
ECHO = ["echo", "hello"]
HELLO = b"hello\n"
CALL_TIMEOUT = 30.0  # one streaming exec, end to end: a hang fails the call, not the bench
WARM_UP = 3
MAX_FAILURES = 3
SPDY_PROTOCOLS = ["v4.channel.k8s.io"]
WS_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]  # preference order

SERIES = ("execsync_true", "execsync_echo", "exec_spdy", "exec_websocket")
LABELS = {
    "execsync_true": "ExecSync `true`",
    "execsync_echo": "ExecSync `echo hello`",
    "exec_spdy": "Exec round trip, SPDY/3.1",
    "exec_websocket": "Exec round trip, WebSocket",
}


class ExecFailed(Exception):
    """An exec answered, but not as expected; the message says what came back."""


@dataclass
class Runtime:
    """One CRI endpoint, its running container, and the samples (seconds) per series."""

    target: Any  # cri_bench.Target
    cid: str = ""
    sid: str = ""
    ws_protocol: str = ""  # the one the WebSocket series uses
    probes: dict[str, str] = field(default_factory=dict)  # transport/protocol -> "ok" or error
    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SERIES})
    failures: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SERIES})
    skipped: dict[str, str] = field(default_factory=dict)  # series -> why it is not measured
    spdy_calls: int = 0
    spdy_no_status: int = 0  # SPDY execs whose error stream ended without a Status read

    @property
    def name(self) -> str:
        return str(self.target.name)


def describe(exc: BaseException) -> str:
    detail = getattr(exc, "details", None)
    text = detail() if callable(detail) else str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the calls ---------------------------------------------------------------------------


def exec_sync(rt: Runtime, cmd: list[str], expect: bytes) -> float:
    from cri_bench import RPC_TIMEOUT

    from cri.api import api_pb2 as pb

    req = pb.ExecSyncRequest(container_id=rt.cid, cmd=cmd, timeout=10)
    t0 = time.perf_counter()
    resp = rt.target.rt.ExecSync(req, timeout=RPC_TIMEOUT)
    elapsed = time.perf_counter() - t0
    if resp.exit_code != 0 or resp.stdout != expect:
        raise ExecFailed(
            f"{cmd}: exit {resp.exit_code}, stdout {resp.stdout!r}, stderr {resp.stderr!r}"
        )
    return elapsed


def exec_url(rt: Runtime) -> str:
    from cri_bench import RPC_TIMEOUT

    from cri.api import api_pb2 as pb

    req = pb.ExecRequest(container_id=rt.cid, cmd=ECHO, stdout=True)
    return str(rt.target.rt.Exec(req, timeout=RPC_TIMEOUT).url)


def check_result(stdout: bytes, status: bytes, *, allow_empty: bool = False) -> None:
    """stdout is "hello\\n" and the error channel says Success; with allow_empty, an empty
    error stream passes too, as kubectl's v4 client reads it (no Status means success)."""
    if allow_empty and not status and stdout == HELLO:
        return
    try:
        parsed = json.loads(status)
    except ValueError:
        raise ExecFailed(f"stdout {stdout!r}, error channel not a Status: {status!r}") from None
    if stdout != HELLO or not isinstance(parsed, dict) or parsed.get("status") != "Success":
        raise ExecFailed(f"stdout {stdout!r}, status {status!r}")


async def spdy_round_trip(rt: Runtime) -> float:
    """Exec RPC to closed session over SPDY/3.1, as kubectl does it."""
    from cri.streaming.spdy import SpdySession, SpdyStream

    async def read_all(stream: SpdyStream) -> bytes:
        out = b""
        while chunk := await stream.read():
            out += chunk
        return out

    t0 = time.perf_counter()
    url = urlsplit(exec_url(rt))
    if url.hostname is None or url.port is None:
        raise ExecFailed(f"Exec returned {url.geturl()!r}")
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        request = (
            f"POST {url.path}{'?' + url.query if url.query else ''} HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\n"
            "Connection: Upgrade\r\n"
            "Upgrade: SPDY/3.1\r\n"
            f"X-Stream-Protocol-Version: {', '.join(SPDY_PROTOCOLS)}\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    except BaseException:
        writer.close()
        raise
    status_line = head.split("\r\n", 1)[0]
    if status_line.split(" ", 2)[1:2] != ["101"]:
        writer.close()
        raise ExecFailed(f"upgrade refused: {status_line!r}")
    session = SpdySession(reader, writer, client=True)
    session.start()
    try:
        err = await session.open_stream({"streamtype": "error"}, fin=True)
        out = await session.open_stream({"streamtype": "stdout"}, fin=True)
        stdout, status = await asyncio.gather(read_all(out), read_all(err))
    finally:
        await session.close()
    elapsed = time.perf_counter() - t0
    # the kubelet streaming library (containerd) resets every stream right after writing the
    # Status, and SpdyStream drops data it buffered before a RST_STREAM: count those
    check_result(stdout, status, allow_empty=True)
    rt.spdy_calls += 1
    rt.spdy_no_status += not status
    return elapsed


async def ws_round_trip(rt: Runtime, protocol: str) -> float:
    """Exec RPC to closed WebSocket, with one channel protocol offered."""
    from cri.streaming import websocket as wsmod

    t0 = time.perf_counter()
    url = urlsplit(exec_url(rt))
    if url.hostname is None or url.port is None:
        raise ExecFailed(f"Exec returned {url.geturl()!r}")
    path = url.path + (f"?{url.query}" if url.query else "")
    ws, chosen = await wsmod.connect(url.hostname, url.port, path, [protocol])
    stdout = status = b""
    try:
        if chosen != protocol:
            raise ExecFailed(f"server chose {chosen!r}, not {protocol!r}")
        while (msg := await ws.recv()) is not None:
            if not msg:
                continue
            channel, data = wsmod.parse_channel_message(msg)
            if channel == wsmod.STDOUT:
                stdout += data
            elif channel == wsmod.ERROR:
                status += data
    finally:
        await ws.close()
    elapsed = time.perf_counter() - t0
    check_result(stdout, status)
    return elapsed


def bounded(make: Callable[[], Any]) -> float:
    async def go() -> float:
        result: float = await asyncio.wait_for(make(), CALL_TIMEOUT)
        return result

    return asyncio.run(go())


def call(rt: Runtime, series: str) -> float:
    if series == "execsync_true":
        return exec_sync(rt, ["true"], b"")
    if series == "execsync_echo":
        return exec_sync(rt, ECHO, HELLO)
    if series == "exec_spdy":
        return bounded(lambda: spdy_round_trip(rt))
    return bounded(lambda: ws_round_trip(rt, rt.ws_protocol))


# --- the run -------------------------------------------------------------------------------


def prepare(rt: Runtime) -> None:
    """Start the pod and find its container; try every transport/protocol once."""
    from cri.api import api_pb2 as pb

    rt.sid, _ = rt.target.start_pod()
    flt = pb.ContainerFilter(pod_sandbox_id=rt.sid)
    containers = rt.target.rt.ListContainers(pb.ListContainersRequest(filter=flt)).containers
    if len(containers) != 1:
        raise RuntimeError(f"{rt.name}: pod {rt.sid} has {len(containers)} containers")
    rt.cid = containers[0].id

    def probe(key: str, fn: Callable[[], float]) -> bool:
        try:
            fn()
        except Exception as exc:
            rt.probes[key] = describe(exc)
            return False
        rt.probes[key] = "ok"
        return True

    probe("ExecSync", lambda: exec_sync(rt, ECHO, HELLO))
    if not probe(f"SPDY/3.1 {SPDY_PROTOCOLS[0]}", lambda: bounded(lambda: spdy_round_trip(rt))):
        rt.skipped["exec_spdy"] = rt.probes[f"SPDY/3.1 {SPDY_PROTOCOLS[0]}"]
    for protocol in WS_PROTOCOLS:
        ok = probe(
            f"WebSocket {protocol}",
            lambda p=protocol: bounded(lambda: ws_round_trip(rt, p)),  # type: ignore[misc]
        )
        if ok and not rt.ws_protocol:
            rt.ws_protocol = protocol
    if not rt.ws_protocol:
        rt.skipped["exec_websocket"] = "no WebSocket channel protocol worked"


def measure(runtimes: list[Runtime], n: int) -> None:
    """Series after series; within one, the runtimes alternate call by call."""
    for series in SERIES:
        live = [rt for rt in runtimes if series not in rt.skipped]
        for rt in live:  # untimed
            for _ in range(WARM_UP):
                with contextlib.suppress(Exception):
                    call(rt, series)
        for _ in range(n):
            for rt in live:
                if series in rt.skipped:
                    continue
                try:
                    rt.samples[series].append(call(rt, series))
                except Exception as exc:
                    rt.failures[series].append(describe(exc))
                    if len(rt.failures[series]) >= MAX_FAILURES:
                        rt.skipped[series] = f"gave up after {MAX_FAILURES} failed calls"


def report(
    runtimes: list[Runtime], errors: dict[str, str], versions: dict[str, str], n: int
) -> str:
    from cri_bench import ratio, summary

    lines = [
        f"host: Linux {platform.release()}, {os.cpu_count()} cpus, Python "
        f"{platform.python_version()}; one busybox `sleep 1000` container in a host-network "
        f"pod per runtime; {n} sequential calls per series (runtimes alternate)",
    ]
    for name, version in versions.items():
        lines.append(f"  {name}: {version}")
    names = [rt.name for rt in runtimes]
    both = len(runtimes) == 2
    head = f"{'':<44}" + "".join(f"{c:>22}" for c in names)
    lines += ["", head + (f"{'ratio':>20}" if both else "")]
    for series in SERIES:
        stats = [summary(rt.samples[series]) if series not in rt.skipped else {} for rt in runtimes]

        def cell(st: dict[str, float]) -> str:
            if not st:
                return "n/a"
            return f"{st['p50_ms']:.1f} / {st['p99_ms']:.1f} / {st['mean_ms']:.1f}"

        label = LABELS[series]
        row = f"{label + ', p50/p99/mean ms':<44}" + "".join(f"{cell(s):>22}" for s in stats)
        if both and stats[0] and stats[1]:
            row += f"{' / '.join(ratio(stats[0][k], stats[1][k]) for k in ('p50_ms', 'p99_ms', 'mean_ms')):>20}"
        lines.append(row)
    protos = ", ".join(f"{rt.name} {rt.ws_protocol}" for rt in runtimes if rt.ws_protocol)
    lines += [f"(WebSocket protocol measured: {protos})" if protos else "", ""]
    for rt in runtimes:
        probes = "; ".join(f"{k}: {v}" for k, v in rt.probes.items())
        lines.append(f"{rt.name} transports (one untimed try each): {probes}")
        if rt.spdy_no_status:
            lines.append(
                f"{rt.name}: {rt.spdy_no_status} of {rt.spdy_calls} SPDY execs: the error stream "
                "was reset (RST_STREAM) with no Status read; success as kubectl reads it"
            )
        for series, why in rt.skipped.items():
            lines.append(f"{rt.name}: {LABELS[series]} not measured: {why}")
        for series, fails in rt.failures.items():
            for failure in fails:
                lines.append(f"{rt.name}: {LABELS[series]}: FAILED call: {failure}")
    for name, error in errors.items():
        lines.append(f"{name}: n/a: {error}")
    return "\n".join(lines)


def to_json(
    runtimes: list[Runtime], errors: dict[str, str], versions: dict[str, str], n: int
) -> str:
    from cri_bench import summary

    out: dict[str, Any] = {
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "calls": n,
        "versions": versions,
        "errors": errors,
        "runtimes": {},
    }
    for rt in runtimes:
        out["runtimes"][rt.name] = {
            "websocket_protocol": rt.ws_protocol or None,
            "probes": rt.probes,
            "spdy_calls": rt.spdy_calls,
            "spdy_without_status": rt.spdy_no_status,
            "skipped": rt.skipped,
            "failures": rt.failures,
            **{s: summary(rt.samples[s]) for s in SERIES},
            "samples_s": rt.samples,
        }
    names = list(out["runtimes"])
    if len(names) == 2:
        a, b = (out["runtimes"][x] for x in names)
        out["ratios"] = {
            s: {k: a[s][k] / b[s][k] for k in ("p50_ms", "p99_ms", "mean_ms")}
            for s in SERIES
            if a[s] and b[s]
        }
    return json.dumps(out, indent=2)


def run(
    args: argparse.Namespace, base: Path, cleanups: list[Callable[[], None]]
) -> tuple[str, bool]:
    """Measure everything; the printed result, and whether Pinnace failed."""
    import cri_containerd as ctrd_mod
    from cri_bench import Target, build_layout, start_containerd, start_pinnace

    tag = uuid.uuid4().hex[:8]
    layout = build_layout(base / "layout")
    errors: dict[str, str] = {}
    versions: dict[str, str] = {}
    runtimes: list[Runtime] = []

    pin = Target("pinnace", f"/pinnace-bench-exec-{tag}/pods", base / "logs" / "pinnace")
    try:
        srv = start_pinnace(base / "pinnace", layout, pin, cleanups)
        versions["pinnace"] = f"python -m pinnace cri (server pid {srv.proc.pid})"
        runtimes.append(Runtime(pin))
    except Exception as exc:
        errors["pinnace"] = f"cannot start: {describe(exc)}"

    ctr = Target("containerd", f"/pinnace-bench-exec-{tag}-ctrd/pods", base / "logs" / "ctrd")
    if args.no_containerd:
        errors["containerd"] = "skipped (--no-containerd)"
    else:
        try:
            handle = start_containerd(base, layout, ctr, cleanups)
            versions["containerd"] = f"{handle.version()}, runc shim v2"
            runtimes.append(Runtime(ctr))
        except ctrd_mod.ContainerdUnavailable as exc:
            errors["containerd"] = str(exc)

    for rt in list(runtimes):
        try:
            prepare(rt)
        except Exception as exc:
            errors[rt.name] = f"cannot start the pod: {describe(exc)}"
            runtimes.remove(rt)

    measure(runtimes, args.n)
    show = to_json if args.json else report
    text = show(runtimes, errors, versions, args.n)
    pin_failed = "pinnace" in errors or any(
        rt.skipped or any(rt.failures.values()) for rt in runtimes if rt.name == "pinnace"
    )
    return text, pin_failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="calls per series (default 100)")
    ap.add_argument("--no-containerd", action="store_true", help="measure Pinnace only")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("-n must be at least 1")
    if os.geteuid() != 0:
        print("run as root: pods need namespaces, mounts and cgroups", file=sys.stderr)
        return 1
    sys.path.insert(0, str(TOP))  # tests/ is not an installed package
    sys.path.insert(0, str(TOP / "bench"))  # cri_bench, cri_containerd

    from cri_bench import guarded_run

    return guarded_run("pinnace-bench-exec-", lambda base, cleanups: run(args, base, cleanups))


if __name__ == "__main__":
    sys.exit(main())
