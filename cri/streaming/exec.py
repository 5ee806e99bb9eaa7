"""Streaming exec: the command runs through the runtime's `exec`, its stdio wired to the client.

The server never forks Python code: `python -m runtime exec` is an asyncio
subprocess. Without a tty its stdin/stdout/stderr are pipes; with one the
runtime sends the pty master over a console socket (runc's protocol), and the
master carries both directions while the resize stream sets its window size.
The exit code goes back on the error stream (status.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import struct
import termios
from collections.abc import Awaitable, Callable
from typing import Any

from cri.monitor import listen_private
from cri.streaming import status
from cri.streaming.stdio import Size, Stdio
from cri.streaming.tokens import StreamRequest
from runtime import launcher

log = logging.getLogger("pinnace.cri.streaming")

READ_SIZE = 65536
DRAIN_SECONDS = 2.0  # output still copied after the process exited (children holding it)
PTY_TIMEOUT = 10.0
STDERR_TAIL = 4096
EOT = b"\x04"  # what a terminal sends for ^D: a tty's stdin has no other end-of-file


# --- non-blocking fds on the event loop -------------------------------------------------


async def _wait_fd(fd: int, *, write: bool = False) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def read_fd(fd: int) -> bytes:
    """The next chunk from a non-blocking fd; b"" at EOF (and at EIO: a pty without slaves)."""
    while True:
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            await _wait_fd(fd)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise


async def write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await _wait_fd(fd, write=True)
            continue
        view = view[n:]


def set_window_size(fd: int, size: Size) -> None:
    width, height = size
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


# --- exec --------------------------------------------------------------------------------


def process_spec(bundle: str, cmd: list[str], tty: bool) -> dict[str, Any]:
    """The container's own process (user, env, cwd, caps...) running `cmd` instead."""
    with open(os.path.join(bundle, "config.json")) as f:
        proc: dict[str, Any] = dict(json.load(f).get("process") or {})
    proc["args"] = list(cmd)
    proc["terminal"] = tty
    proc.pop("consoleSize", None)
    if tty:
        env = list(proc.get("env") or [])
        if not any(e.startswith("TERM=") for e in env):
            env.append("TERM=xterm")  # as CRI-O and containerd do for a tty exec
        proc["env"] = env
    return proc


class _Exec:
    """One exec session; `run` returns (exit code, None) or (None, why it could not run)."""

    def __init__(
        self, io: Stdio, cid: str, bundle: str, req: StreamRequest, runtime_root: str, work: str
    ) -> None:
        self.io = io
        self.cid = cid
        self.bundle = bundle
        self.req = req
        self.runtime_root = runtime_root
        name = secrets.token_hex(8)
        self.process_file = os.path.join(work, name + ".json")
        self.pid_file = os.path.join(work, name + ".pid")
        self.console_path = os.path.join(work, name + ".sock")
        self.work = work
        self.err_tail = b""
        self.tasks: list[asyncio.Future[Any]] = []

    async def run(self) -> tuple[int | None, str]:
        req = self.req
        os.makedirs(self.work, mode=0o700, exist_ok=True)
        listen: socket.socket | None = None
        master = -1
        try:
            spec = await asyncio.to_thread(process_spec, self.bundle, list(req.cmd), req.tty)
            with open(self.process_file, "w") as f:
                json.dump(spec, f)
            argv = [*launcher.command(), "--root", self.runtime_root, "exec"]
            argv += ["--process", self.process_file, "--pid-file", self.pid_file]
            if req.tty:
                listen = listen_private(self.console_path, 1)
                argv += ["--tty", "--console-socket", self.console_path]
            argv.append(self.cid)
            pipe_stdin = req.stdin and not req.tty
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if pipe_stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL if req.tty else asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            waiter = asyncio.ensure_future(proc.wait())
            assert proc.stderr is not None
            err_pump = self._spawn(self._pump_stderr(proc.stderr, forward=not req.tty))
            outputs = [err_pump]
            if listen is not None:
                master = await self._receive_master(listen, waiter)
                if master >= 0:
                    outputs.append(self._spawn(self._pump_pty(master)))
                    if req.stdin:
                        self._spawn(self._stdin_to_pty(master))
                    self._spawn(self._resize(master))
            else:
                assert proc.stdout is not None
                outputs.append(self._spawn(self._pump_stdout(proc.stdout)))
                if proc.stdin is not None:
                    self._spawn(self._stdin_to_pipe(proc.stdin))
            gone = asyncio.ensure_future(self.io.closed.wait())
            self.tasks.append(gone)
            try:
                await asyncio.wait([waiter, gone], return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:  # the server stops: leave no exec behind
                self._kill(proc)
                raise
            if not waiter.done():
                log.info("exec in %s: the client went away, killing the process", self.cid)
                self._kill(proc)
                await waiter
            code = waiter.result()
            await asyncio.wait(outputs, timeout=DRAIN_SECONDS)
        finally:
            for t in self.tasks:
                t.cancel()
            if master >= 0:
                os.close(master)
            if listen is not None:
                listen.close()
            for path in (self.process_file, self.pid_file, self.console_path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        if code < 0:
            code = 128 - code
        tail = self.err_tail.decode(errors="replace").strip()
        if code == 255 and tail.startswith("pinnace-oci"):
            return None, tail.splitlines()[-1]
        if req.tty and master < 0:
            return None, f"no terminal from the runtime: {tail or 'it exited'}"
        return code, ""

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        t = asyncio.ensure_future(coro)
        self.tasks.append(t)
        return t

    def _kill(self, proc: asyncio.subprocess.Process) -> None:
        """SIGKILL the command (the runtime then exits with its status), or the runtime
        itself while it has not started the command yet."""
        try:
            with open(self.pid_file) as f:
                os.kill(int(f.read().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def _receive_master(self, listen: socket.socket, waiter: asyncio.Future[int]) -> int:
        """The pty master the runtime sends; -1 if the runtime ended first."""
        from runtime.console import receive_pty_master

        readable: asyncio.Future[Any] = asyncio.ensure_future(_wait_fd(listen.fileno()))
        try:
            await asyncio.wait([readable, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            readable.cancel()
        if waiter.done() and not readable.done():
            return -1
        try:
            master, _name = await asyncio.to_thread(receive_pty_master, listen, timeout=PTY_TIMEOUT)
        except Exception as exc:
            log.warning("exec in %s: no pty master: %s", self.cid, exc)
            return -1
        os.set_blocking(master, False)
        return master

    async def _pump_stderr(self, pipe: asyncio.StreamReader, *, forward: bool) -> None:
        while data := await pipe.read(READ_SIZE):
            self.err_tail = (self.err_tail + data)[-STDERR_TAIL:]
            if forward and self.req.stderr:
                await self.io.write_stderr(data)

    async def _pump_stdout(self, pipe: asyncio.StreamReader) -> None:
        while data := await pipe.read(READ_SIZE):
            if self.req.stdout:
                await self.io.write_stdout(data)

    async def _pump_pty(self, master: int) -> None:
        while data := await read_fd(master):
            if self.req.stdout:
                await self.io.write_stdout(data)

    async def _stdin_to_pipe(self, pipe: asyncio.StreamWriter) -> None:
        try:
            while data := await self.io.read_stdin():
                pipe.write(data)
                await pipe.drain()
        except (ConnectionError, OSError):
            return  # the process closed its stdin
        finally:
            pipe.close()

    async def _stdin_to_pty(self, master: int) -> None:
        with contextlib.suppress(OSError):
            while data := await self.io.read_stdin():
                await write_fd(master, data)
            await write_fd(master, EOT)

    async def _resize(self, master: int) -> None:
        while (size := await self.io.resizes.get()) is not None:
            with contextlib.suppress(OSError):
                set_window_size(master, size)


async def serve_exec(
    io: Stdio,
    req: StreamRequest,
    lookup: Callable[[str], Any],
    runtime_root: str,
    work_dir: str,
) -> None:
    """Run req.cmd in the container and report its exit; `lookup` gives the container record."""
    from cri.errors import CRIError

    cmd = list(req.cmd)
    try:
        rec = await asyncio.to_thread(lookup, req.container_id)
        if rec.state != "running":
            raise CRIError(f"container is {rec.state}, not running", subject=rec.id)
        code, error = await _Exec(io, rec.id, rec.bundle, req, runtime_root, work_dir).run()
    except CRIError as exc:
        code, error = None, str(exc)
    except OSError as exc:
        log.warning("exec in %s failed: %s", req.container_id, exc)
        code, error = None, f"exec failed: {exc}"
    await io.finish(status.result(io.protocol, cmd, code, error))
