"""A pod's namespaces: created, pinned, loopback up, sysctls written - in one call that
forks, so it must run in a single-threaded process.

Forking the threaded gRPC server is unsafe (a child can inherit a lock another
thread held, and did crash here with SIGSEGV), so the server asks its zygote to
run `setup` (op "podns"); tests without a server call it directly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from namespaces.handles import Kind, Namespace, NamespaceError, create_pinned, unpin

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: name, then ifr_flags in the union (40 bytes)


@dataclass
class PodNamespaces:
    """What to make: namespace kinds by proc name ("net", "ipc", "uts"), where to pin
    them, the hostname of a new uts namespace, and (name, /proc/sys path, value) sysctls."""

    kinds: list[str]
    pin_dir: str
    hostname: str | None = None
    sysctls: list[tuple[str, str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kinds": list(self.kinds),
            "pin_dir": self.pin_dir,
            "hostname": self.hostname,
            "sysctls": [list(s) for s in self.sysctls],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> PodNamespaces:
        return cls(
            kinds=[str(k) for k in obj["kinds"]],
            pin_dir=str(obj["pin_dir"]),
            hostname=None if obj.get("hostname") is None else str(obj["hostname"]),
            sysctls=[(str(a), str(b), str(c)) for a, b, c in obj.get("sysctls") or []],
        )


class PodNamespaceError(Exception):
    """`kind` is "invalid" (the caller's sysctl) or "internal"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def setup(req: PodNamespaces) -> dict[str, str]:
    """Pins by kind name; all or nothing (a failure unpins what was made)."""
    pins: dict[str, str] = {}
    if req.kinds:
        try:
            made = create_pinned(
                [Kind.from_name(k) for k in req.kinds], Path(req.pin_dir), hostname=req.hostname
            )
        except NamespaceError as exc:
            raise PodNamespaceError("internal", f"cannot create pod namespaces: {exc}") from exc
        pins = {k.proc_name: str(p) for k, p in made.items()}
    try:
        _configure(pins.get("net", ""), pins.get("ipc", ""), req.sysctls)
    except BaseException:
        for p in pins.values():
            with contextlib.suppress(OSError):
                unpin(Path(p))
        raise
    return pins


def setup_reply(req: PodNamespaces) -> dict[str, Any]:
    """`setup` as a JSON-able reply, for the zygote's protocol."""
    try:
        return {"ok": True, "pins": setup(req)}
    except PodNamespaceError as exc:
        return {"ok": False, "error_kind": exc.kind, "error": str(exc)}


def reply_pins(reply: dict[str, Any]) -> dict[str, str]:
    """The pins of a reply from `setup_reply`, or its error raised again."""
    if not reply.get("ok"):
        raise PodNamespaceError(str(reply.get("error_kind", "internal")), str(reply.get("error")))
    return {str(k): str(v) for k, v in (reply.get("pins") or {}).items()}


def _configure(netns: str, ipcns: str, sysctls: list[tuple[str, str, str]]) -> None:
    """Bring lo up and write the sysctls from a child that joined the pod's namespaces."""
    if not netns and not sysctls:
        return
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(Namespace.open(Kind.NET, netns)) if netns else None
        ipc = stack.enter_context(Namespace.open(Kind.IPC, ipcns)) if ipcns else None
        todo = json.dumps([list(s) for s in sysctls])
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: only system calls, then _exit
            gc.disable()  # a forked child runs no finalizers of its parent's objects (gRPC's hang)
            try:
                os.close(r)
                os.write(w, _configure_in_child(net, ipc, todo).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            answer = f.read().decode()
        _, status = os.waitpid(pid, 0)
    if answer:
        err = json.loads(answer)
        raise PodNamespaceError(err["kind"], err["message"])
    if status != 0:
        raise PodNamespaceError(
            "internal", f"namespace setup child failed (wait status {status:#x})"
        )


def _loopback_up() -> None:
    """Set IFF_UP on "lo" of the calling process's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
        flags = struct.unpack(_IFREQ, got)[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP))


def _configure_in_child(netns: Namespace | None, ipcns: Namespace | None, sysctls: str) -> str:
    """Join the pod's namespaces, set lo up, write sysctls: "" or a JSON error.

    /proc/sys/net and the ipc sysctls resolve against the writer's namespaces, so
    no remount of /proc is needed.
    """
    step = "setns"
    try:
        for ns in (netns, ipcns):
            if ns is not None:
                ns.enter()
        if netns is not None:
            step = "loopback"
            _loopback_up()
        for name, path, value in json.loads(sysctls):
            step = name
            try:
                fd = os.open(f"/proc/sys/{path}", os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return json.dumps({"kind": "invalid", "message": f"sysctl {name!r} does not exist"})
            except PermissionError:
                msg = f"sysctl {name!r} is read-only in the pod's namespace"
                return json.dumps({"kind": "invalid", "message": msg})
            try:
                os.write(fd, value.encode())
            except OSError as exc:
                kind = "invalid" if exc.errno in (errno.EINVAL, errno.ERANGE) else "internal"
                return json.dumps(
                    {
                        "kind": kind,
                        "message": f"sysctl {name}={value!r}: the kernel refused it "
                        f"({os.strerror(exc.errno or errno.EIO)})",
                    }
                )
            finally:
                os.close(fd)
        return ""
    except BaseException as exc:
        return json.dumps({"kind": "internal", "message": f"{step}: {exc}"})
