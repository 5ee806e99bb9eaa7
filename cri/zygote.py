"""The zygote: a small single-threaded process that forks container monitors and pod inits.

The CRI server runs gRPC threads and must not fork Python code that lives
long; so it starts this fresh interpreter once (`python -m cri.zygote --fd N`),
which imports the container create path, freezes its heap (gc.freeze, so the
collector never writes to the shared pages) and forks one monitor per
container on request: the monitors share those pages copy-on-write.

Protocol, on a SOCK_SEQPACKET socketpair (one JSON object per message): the
zygote first sends {"op": "ready", "pid": N}; then each request gets exactly
one reply. The zygote exits at EOF (the server died), leaving the monitors
and pod inits it forked running: they are session leaders of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from cri.monitor import MonitorReply, MonitorRequest, run_monitor
from cri.podns import PodNamespaces, reply_pins, setup_reply
from runtime.state import proc_start_time

MAX_MESSAGE = 1 << 20
READY_TIMEOUT = 30.0
REPLY_TIMEOUT = 300.0
"""A bound on one create (image-sized rootfs work, hooks): the zygote gives up after it."""
PODINIT_TIMEOUT = 30.0
PODNS_TIMEOUT = 60.0


class ZygoteError(Exception):
    """The zygote is gone or broke the protocol; `pid` is its process id (0 if never started)."""

    def __init__(self, message: str, *, pid: int = 0) -> None:
        super().__init__(f"zygote {pid}: {message}" if pid else f"zygote: {message}")
        self.pid = pid


class PodInitError(Exception):
    """A pod init could not be made (e.g. a namespace path that cannot be joined)."""


# --- the client, in the server ----------------------------------------------------------


class Zygote:
    """The server's handle on a running zygote; every method may be called from any thread."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._proc = proc
        self._sock = sock
        self._lock = threading.Lock()
        self._dead = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return not self._dead and self._proc.poll() is None

    @classmethod
    def start(cls) -> Zygote:
        """Spawn a zygote with this interpreter and wait until it has imported everything."""
        ours, theirs = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cri.zygote", "--fd", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,  # a ^C to the server's terminal is not for it
            )
        except OSError as exc:
            ours.close()
            raise ZygoteError(f"cannot start {sys.executable} -m cri.zygote: {exc}") from exc
        finally:
            theirs.close()
        z = cls(proc, ours)
        try:
            ready = z._recv(READY_TIMEOUT)
            if ready.get("op") != "ready":
                raise ZygoteError(f"expected a ready message, got {ready!r}", pid=proc.pid)
        except BaseException:
            z.close()
            raise
        return z

    def spawn_monitor(self, req: MonitorRequest) -> MonitorReply:
        """Fork a monitor that creates the container; its reply once created (or not)."""
        reply = self._request({"op": "monitor", **req.to_json()}, REPLY_TIMEOUT + 10)
        try:
            return MonitorReply.from_json(reply)
        except ValueError as exc:
            raise ZygoteError(f"bad monitor reply: {exc}", pid=self.pid) from None

    def spawn_pod_init(self, net: str = "", ipc: str = "", uts: str = "") -> tuple[int, int]:
        """A pid-1 reaper in a new pid namespace (joined to the given pod namespaces)."""
        ns = {k: v for k, v in (("net", net), ("ipc", ipc), ("uts", uts)) if v}
        reply = self._request({"op": "podinit", "ns": ns}, PODINIT_TIMEOUT + 10)
        if not reply.get("ok"):
            raise PodInitError(str(reply.get("error") or "pod init failed"))
        pid, start = reply.get("pid"), reply.get("start")
        if not isinstance(pid, int) or not isinstance(start, int):
            raise ZygoteError(f"bad podinit reply: {reply!r}", pid=self.pid)
        return pid, start

    def setup_pod_namespaces(self, req: PodNamespaces) -> dict[str, str]:
        """cri.podns.setup, run by the zygote (it forks; the server must not)."""
        return reply_pins(self._request({"op": "podns", "req": req.to_json()}, PODNS_TIMEOUT))

    def close(self) -> None:
        """EOF to the zygote (it exits, its monitors stay), and reap it."""
        self._dead = True
        with contextlib.suppress(OSError):  # wakes a request blocked on its reply
            self._sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._sock.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _request(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self._lock:
            if self._dead:
                raise ZygoteError("closed or dead", pid=self.pid)
            try:
                self._sock.settimeout(timeout)
                self._sock.send(json.dumps(msg).encode())
            except OSError as exc:
                self._dead = True
                raise ZygoteError(f"cannot send: {exc}", pid=self.pid) from None
            return self._recv(timeout)

    def _recv(self, timeout: float) -> dict[str, Any]:
        try:
            self._sock.settimeout(timeout)
            data = self._sock.recv(MAX_MESSAGE)
        except OSError as exc:  # a timeout too: the reply may come late, out of step
            self._dead = True
            raise ZygoteError(f"no reply: {exc}", pid=self.pid) from None
        if not data:
            self._dead = True
            raise ZygoteError(f"exited ({self._proc.poll()})", pid=self.pid)
        try:
            reply = json.loads(data)
        except ValueError:
            self._dead = True
            raise ZygoteError(f"bad message {data[:200]!r}", pid=self.pid) from None
        if not isinstance(reply, dict):
            self._dead = True
            raise ZygoteError(f"bad message {reply!r}", pid=self.pid)
        return reply


# --- the zygote process -----------------------------------------------------------------


PRELOAD = (
    "selectors",
    "cgroups.devices",
    "cgroups.errors",
    "cgroups.event_wait",
    "cgroups.events",
    "cgroups.freezer",
    "cgroups.procs",
    "cgroups.manager",
    "cgroups.resources",
    "cgroups.stats",
    "cri.crilog",
    "cri.records",
    "namespaces.syscalls",
    "namespaces.userns",
    "runtime.console",
    "runtime.create",
    "runtime.delete",
    "runtime.forked",
    "runtime.hooks",
    "runtime.init",
    "runtime.process",
    "runtime.rootfs",
    "runtime.seccomp",
    "runtime.sync",
)
"""What a monitor and a container's create path import (some lazily), loaded before forking."""


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    with contextlib.suppress(ImportError):
        importlib.import_module("prctl")  # runtime.capabilities uses it when present
    from runtime import console

    console.preload()


def _reap_children(_sig: int = 0, _frame: object = None) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def serve(sock: socket.socket) -> None:
    """Answer requests until the server's end closes."""
    signal.signal(signal.SIGCHLD, _reap_children)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # not inherited by containers: monitors reset it
    sock.send(json.dumps({"op": "ready", "pid": os.getpid()}).encode())
    while True:
        try:
            data = sock.recv(MAX_MESSAGE)
        except ConnectionResetError:
            return
        if not data:
            return
        try:
            msg = json.loads(data)
            op = msg.get("op") if isinstance(msg, dict) else None
            if op == "monitor":
                reply = _spawn_monitor(sock, MonitorRequest.from_json(msg)).to_json()
            elif op == "podinit":
                reply = _spawn_pod_init(sock, msg.get("ns") or {})
            elif op == "podns":
                reply = _pod_namespaces(PodNamespaces.from_json(msg["req"]))
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}", "error_kind": "internal"}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "error_kind": "internal"}
        try:
            sock.send(json.dumps(reply).encode())
        except OSError:
            return


def _pod_namespaces(req: PodNamespaces) -> dict[str, Any]:
    """setup() waits for its own children: keep the SIGCHLD reaper from taking them."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        return setup_reply(req)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _child_start(sock: socket.socket) -> None:
    """First thing in any forked child: the zygote's handlers and socket are not its own."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sock.close()


def _fork_reporting(
    sock: socket.socket, child: Callable[[int], object], timeout: float
) -> tuple[int, bytes | None]:
    """Fork a child that runs `child(w)` and reports one line on pipe end `w`; returns its
    pid and that line (b"" if it exited first, None if it did not report in `timeout`)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _child_start(sock)
            child(w)
        finally:
            os._exit(1)
    os.close(w)
    try:
        return pid, _read_message(r, timeout)
    finally:
        os.close(r)


def _spawn_monitor(sock: socket.socket, req: MonitorRequest) -> MonitorReply:
    def monitor(w: int) -> None:
        def report(reply: MonitorReply) -> None:
            data = json.dumps(reply.to_json()).encode() + b"\n"
            while data:
                data = data[os.write(w, data) :]

        run_monitor(req, report, keep_fds=[w])

    pid, data = _fork_reporting(sock, monitor, REPLY_TIMEOUT)
    if data is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return MonitorReply(
            ok=False,
            error=f"the monitor did not report in {REPLY_TIMEOUT:.0f}s",
            error_kind="internal",
        )
    if not data:
        return MonitorReply(
            ok=False, error="the monitor exited without reporting", error_kind="internal"
        )
    return MonitorReply.from_json(json.loads(data))


def _read_message(fd: int, timeout: float) -> bytes | None:
    """One newline-ended message (b"" if EOF came first); None on timeout.

    Not until EOF: the container's init holds a copy of the pipe until it execs.
    """
    deadline = time.monotonic() + timeout
    out = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b""
        out += chunk
        if out.endswith(b"\n"):
            return out


NS_FLAGS = {"net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000}


def _spawn_pod_init(sock: socket.socket, ns: Any) -> dict[str, Any]:
    if not isinstance(ns, dict) or not set(ns) <= set(NS_FLAGS):
        return {
            "ok": False,
            "error": f"bad ns {ns!r}: keys net, ipc, uts",
            "error_kind": "internal",
        }
    if not all(isinstance(v, str) for v in ns.values()):
        return {"ok": False, "error": f"bad ns {ns!r}: paths", "error_kind": "internal"}
    pid, data = _fork_reporting(sock, lambda w: _pod_init_parent(ns, w), PODINIT_TIMEOUT)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if not data:
        return {"ok": False, "error": "the pod init did not start", "error_kind": "internal"}
    reply: dict[str, Any] = json.loads(data)
    return reply


def _pod_init_parent(ns: dict[str, str], w: int) -> NoReturn:
    """Join the pod's namespaces, open a pid namespace, fork its pid 1, say who it is."""
    from namespaces import syscalls as sc

    s = sc.libc()

    def say(obj: dict[str, Any]) -> NoReturn:
        with contextlib.suppress(OSError):
            os.write(w, json.dumps(obj).encode() + b"\n")
        os._exit(0)

    try:
        for kind, path in ns.items():
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                s.setns(fd, NS_FLAGS[kind])
            finally:
                os.close(fd)
        os.setsid()
        s.unshare(sc.CLONE_NEWPID)
    except OSError as exc:
        say({"ok": False, "error": f"pod init: {exc}", "error_kind": "runtime"})
    # its SIGTERM handler must be in place before anyone learns its pid: a pid 1 drops
    # signals it has no handler for, so an early SIGTERM would be lost
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    reaper = os.fork()
    if reaper == 0:
        os.close(ready_r)
        _pod_init(w, ready_w)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    say({"ok": True, "pid": reaper, "start": _start_time(reaper)})


def _start_time(pid: int) -> int:
    deadline = time.monotonic() + 5
    while (start := proc_start_time(pid)) is None and time.monotonic() < deadline:
        time.sleep(0.001)
    return start or 0


def _pod_init(w: int, ready: int) -> NoReturn:
    """Pid 1 of the pod's pid namespace: reap whatever is orphaned into it, until SIGTERM.

    A pid 1 gets only the signals it has handlers for (SIGKILL aside), so SIGTERM
    has one and the rest are ignored.
    """
    try:
        os.close(w)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, ready)
        os.closerange(ready + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir("/")
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda _s, _f: os._exit(0))
        signal.signal(signal.SIGCHLD, _reap_children)
        os.write(ready, b"1")
        os.close(ready)
        while True:
            _reap_children()
            signal.pause()
    finally:
        os._exit(0)


def main(argv: list[str]) -> int:
    fd = 3
    if len(argv) == 2 and argv[0] == "--fd" and argv[1].isdigit():
        fd = int(argv[1])
    elif argv:
        print("usage: python -m cri.zygote [--fd N]", file=sys.stderr)
        return 2
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        print(f"cri.zygote: fd {fd} is not the server's socket: {exc}", file=sys.stderr)
        return 2
    if sock.type != socket.SOCK_SEQPACKET:
        print(f"cri.zygote: fd {fd} is not a SOCK_SEQPACKET socket", file=sys.stderr)
        return 2
    _preload()
    import gc

    gc.collect()
    gc.freeze()  # the heap so far is shared with every monitor: the collector leaves it be
    serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
