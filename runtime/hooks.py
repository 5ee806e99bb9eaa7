"""Lifecycle hooks: OCI runtime spec 1.2, config.md "POSIX-platform Hooks".

A hook is a program the runtime runs at a point of the container's life,
with the container's state JSON on its stdin. It gets exactly the args and
env the config gives (never the runtime's environment or open files), and
is killed with its whole process group when it outlives its timeout.

Whether a failure stops the lifecycle depends on the kind: prestart,
createRuntime, createContainer and startContainer failures are errors;
poststart and poststop failures are only warnings (runtime.md, Lifecycle).

`subprocess` is imported lazily (it costs milliseconds on the create path of
a container without hooks); the container init calls `preload()` before
pivot_root, because the host's stdlib is out of reach after it.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.errors import HookError, SpecError

HOOK_KINDS: tuple[str, ...] = (
    "prestart",  # deprecated since spec 1.0.2 in favour of the three below
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)
WARN_ONLY_KINDS = frozenset({"poststart", "poststop"})
"""Kinds whose failure the spec says to log and ignore (the lifecycle goes on)."""

OCI_VERSION = "1.2.0"
TAIL_BYTES = 4096
"""How much of a failed hook's stderr (and stdout) the error carries."""


def preload() -> None:
    """Import what running a hook needs, for the container init before pivot_root."""
    import subprocess  # noqa: F401


@dataclass(frozen=True)
class Hook:
    """One validated hook entry."""

    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None

    @property
    def argv(self) -> list[str]:
        """args as given (args[0] is argv[0]); a hook without args gets its path as argv[0]."""
        return list(self.args) if self.args else [self.path]

    def environ(self) -> dict[str, str]:
        """Exactly the configured env (a later duplicate name wins, as with putenv)."""
        out: dict[str, str] = {}
        for entry in self.env:
            name, _, value = entry.partition("=")
            out[name] = value
        return out


def _strings(raw: object, field: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(field, "must be an array of strings")
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise SpecError(f"{field}[{i}]", "must be a string")
        if "\0" in item:
            raise SpecError(f"{field}[{i}]", "must not contain a NUL byte")
    return tuple(raw)


def parse_hook(raw: object, field: str) -> Hook:
    """A hook object -> Hook; `field` (e.g. hooks.createRuntime[1]) prefixes every error."""
    if not isinstance(raw, dict):
        raise SpecError(field, "must be an object")
    path = raw.get("path")
    if not isinstance(path, str) or not path:
        raise SpecError(f"{field}.path", "is required and must be a non-empty string")
    if not path.startswith("/"):
        raise SpecError(f"{field}.path", f"must be an absolute path, not {path!r}")
    if "\0" in path:
        raise SpecError(f"{field}.path", "must not contain a NUL byte")
    args = _strings(raw.get("args"), f"{field}.args")
    env = _strings(raw.get("env"), f"{field}.env")
    for i, entry in enumerate(env):
        name, eq, _ = entry.partition("=")
        if not eq or not name:
            raise SpecError(f"{field}.env[{i}]", f"must be NAME=value, not {entry!r}")
    timeout = raw.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int):
            raise SpecError(f"{field}.timeout", "must be an integer number of seconds")
        if timeout <= 0:
            raise SpecError(f"{field}.timeout", f"must be greater than zero, not {timeout}")
    return Hook(path=path, args=args, env=env, timeout=timeout)


def parse_hooks(hooks: object) -> dict[str, tuple[Hook, ...]]:
    """The config's `hooks` object -> hooks by kind (kinds absent from it map to ()).

    Unknown kinds are ignored, as the spec requires of unknown properties.
    """
    if hooks is None:
        return {kind: () for kind in HOOK_KINDS}
    if not isinstance(hooks, dict):
        raise SpecError("hooks", "must be an object")
    out: dict[str, tuple[Hook, ...]] = {}
    for kind in HOOK_KINDS:
        entries = hooks.get(kind)
        if entries is None:
            out[kind] = ()
            continue
        if not isinstance(entries, list):
            raise SpecError(f"hooks.{kind}", "must be an array of hook objects")
        out[kind] = tuple(parse_hook(e, f"hooks.{kind}[{i}]") for i, e in enumerate(entries))
    return out


def validate_hooks(hooks: dict[str, Any] | None) -> None:
    """Check the config's `hooks` section (pure; raises SpecError naming the field)."""
    parse_hooks(hooks)


def hook_state(
    container_id: str,
    status: str,
    *,
    bundle: str,
    pid: int | None = None,
    annotations: Mapping[str, str] | None = None,
    oci_version: str = OCI_VERSION,
) -> dict[str, Any]:
    """The state JSON a hook reads on stdin (runtime.md "State").

    pid is left out when there is no process (e.g. poststop after the init
    died), and annotations when there are none, as runc does.
    """
    state: dict[str, Any] = {
        "ociVersion": oci_version,
        "id": container_id,
        "status": status,
    }
    if pid is not None and pid > 0:
        state["pid"] = pid
    state["bundle"] = bundle
    if annotations:
        state["annotations"] = dict(annotations)
    return state


def _default_warn(message: str) -> None:
    """The runtime's log (stderr and --log, as runc), else a plain line on stderr."""
    try:
        from runtime.log import warn
    except ImportError:
        sys.stderr.write(f"pinnace-oci: warning: {message}\n")
        sys.stderr.flush()
    else:
        warn(message)


def run_hooks(
    kind: str,
    hooks: Sequence[dict[str, Any] | Hook] | None,
    state: Mapping[str, Any],
    *,
    cwd: str | None = None,
    raise_errors: bool | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[HookError]:
    """Run the hooks of one kind in order, each with `state` as JSON on its stdin.

    With `raise_errors` (default: True except for poststart and poststop) the
    first failure raises HookError and the later hooks do not run. Otherwise
    each failure goes to `warn` (default: runtime.log.warn), the remaining
    hooks still run, and the failures are returned.
    """
    if kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {kind!r}")
    if not hooks:
        return []
    if raise_errors is None:
        raise_errors = kind not in WARN_ONLY_KINDS
    parsed = [
        h if isinstance(h, Hook) else parse_hook(h, f"hooks.{kind}[{i}]")
        for i, h in enumerate(hooks)
    ]
    data = json.dumps(state, separators=(",", ":")).encode()
    container = state.get("id") if isinstance(state.get("id"), str) else None
    failures: list[HookError] = []
    for index, hook in enumerate(parsed):
        try:
            run_hook(hook, data, kind=kind, index=index, cwd=cwd, container=container)
        except HookError as exc:
            if raise_errors:
                raise
            (warn or _default_warn)(str(exc))
            failures.append(exc)
    return failures


def _tail(fd: int) -> str:
    """The last TAIL_BYTES written to a memfd, decoded leniently."""
    size = os.fstat(fd).st_size
    start = max(0, size - TAIL_BYTES)
    data = os.pread(fd, size - start, start)
    return data.decode(errors="replace").strip()


def _feed_and_wait(pidfd: int, wfd: int, data: bytes, deadline: float | None) -> bool:
    """Write `data` to the hook's stdin pipe while waiting for it to exit.

    True when the hook exited, False when the deadline passed first. A hook
    that never reads its stdin cannot block us: we poll its pidfd too. Closes
    `wfd` (the hook sees EOF once it has read everything).
    """
    pending = memoryview(data)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    wfd_open = True
    try:
        if pending:
            os.set_blocking(wfd, False)
            poller.register(wfd, select.POLLOUT)
        else:
            os.close(wfd)
            wfd_open = False
        while True:
            if deadline is None:
                timeout_ms = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                timeout_ms = math.ceil(remaining * 1000)
            for fd, _events in poller.poll(timeout_ms):
                if fd == pidfd:
                    return True
                if fd == wfd and wfd_open:
                    try:
                        written = os.write(wfd, pending[:65536])
                        pending = pending[written:]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]  # the hook closed its stdin: fine
                    if not pending:
                        poller.unregister(wfd)
                        os.close(wfd)
                        wfd_open = False
    finally:
        if wfd_open:
            os.close(wfd)


def _describe(kind: str, index: int, hook: Hook) -> str:
    return f"{kind} hook #{index} ({hook.path})"


def run_hook(
    hook: Hook,
    stdin_data: bytes,
    *,
    kind: str,
    index: int,
    cwd: str | None = None,
    container: str | None = None,
) -> None:
    """Run one hook to completion; HookError if it fails, times out or cannot start.

    stdout and stderr go to anonymous memory files rather than pipes, so a
    hook that leaves a daemon holding them does not make us wait for EOF.
    """
    import subprocess

    what = _describe(kind, index, hook)
    out_fd = os.memfd_create("pinnace-hook-stdout", os.MFD_CLOEXEC)
    err_fd = os.memfd_create("pinnace-hook-stderr", os.MFD_CLOEXEC)
    proc: subprocess.Popen[bytes] | None = None
    pidfd = -1
    try:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(
                hook.argv,
                executable=hook.path,
                stdin=r,
                stdout=out_fd,
                stderr=err_fd,
                env=hook.environ(),
                cwd=cwd,
                close_fds=True,
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as exc:
            os.close(w)
            raise HookError(
                f"{what} could not be run: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename else ""),
                kind=kind,
                index=index,
                path=hook.path,
                container=container,
            ) from exc
        finally:
            os.close(r)
        pidfd = os.pidfd_open(proc.pid)
        deadline = None if hook.timeout is None else time.monotonic() + hook.timeout
        exited = _feed_and_wait(pidfd, w, stdin_data, deadline)
        if not exited:
            # not reaped yet, so the pid (and group id) cannot have been reused
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise HookError(
                f"{what} timed out after {hook.timeout}s",
                kind=kind,
                index=index,
                path=hook.path,
                container=container,
                timed_out=True,
                stderr=_tail(err_fd),
            )
        status = proc.wait()
        if status == 0:
            return
        stderr, stdout = _tail(err_fd), _tail(out_fd)
        if status < 0:
            try:
                name = signal.Signals(-status).name
            except ValueError:
                name = f"signal {-status}"
            how = f"was killed by {name}"
        else:
            how = f"exited with status {status}"
        detail = stderr or (f"stdout: {stdout}" if stdout else "")
        raise HookError(
            f"{what} {how}" + (f": {detail}" if detail else ""),
            kind=kind,
            index=index,
            path=hook.path,
            container=container,
            exit_status=status if status >= 0 else None,
            signal=-status if status < 0 else None,
            stderr=stderr,
        )
    finally:
        if proc is not None and proc.returncode is None:
            # interrupted (e.g. KeyboardInterrupt): do not leave the hook running
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if pidfd >= 0:
            os.close(pidfd)
        os.close(out_fd)
        os.close(err_fd)
