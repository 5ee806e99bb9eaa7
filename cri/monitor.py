"""The per-container monitor: the job of conmon or containerd's shim, in one small process.

Forked from the zygote (cri/zygote.py), it creates the container in-process
so the init inherits its pipes, then outlives the CRI server: it is a session
leader and the init's subreaper, copies the container's output into the CRI
log file, answers ReopenContainerLog on its control socket, and when the init
exits records how (exit.json) for whichever server is running by then.

One thread, one selectors loop over the output pipes (or the pty master), the
control socket and a self-pipe woken by SIGCHLD: nothing else runs in it, so
its memory stays close to what it shares with the zygote.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NoReturn, TypeVar

from cri.crilog import STDERR, STDOUT, CRILogWriter
from cri.records import read_json, write_json_atomic
from runtime.state import proc_start_time

MONITOR_FILE = "monitor.json"
EXIT_FILE = "exit.json"
CONTROL_SOCKET = "monitor.sock"
CONSOLE_SOCKET = "console.sock"
DRAIN_SECONDS = 2.0
"""How long output is still copied after the init exited, for processes holding the pipes."""
PTY_TIMEOUT = 10.0
READ_SIZE = 65536
MAX_REQUEST = 65536
PR_SET_CHILD_SUBREAPER = 36
SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL

ERROR_SPEC, ERROR_RUNTIME, ERROR_INTERNAL = "spec", "runtime", "internal"

# attach: after the JSON reply line the connection carries frames
# [1 byte kind][4 bytes big-endian length][payload] both ways
FRAME_STDIN, FRAME_STDOUT, FRAME_STDERR, FRAME_ERROR, FRAME_RESIZE = 0, 1, 2, 3, 4
FRAME_HEADER = struct.Struct(">BI")
MAX_FRAME = 1 << 20
ATTACH_BUFFER = 1 << 20
"""Output queued for one attacher; beyond it the attacher is dropped, the log never waits."""
STDIN_BUFFER = 1 << 20
"""Input queued for a container not reading its stdin; beyond it the sender is dropped."""


class MonitorError(Exception):
    """A monitor could not be reached or refused a request; `state_dir` names the container."""

    def __init__(self, message: str, *, state_dir: str) -> None:
        super().__init__(f"container {os.path.basename(state_dir)} ({state_dir}): {message}")
        self.state_dir = state_dir


_T = TypeVar("_T")
_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool}


def _from_json(cls: type[_T], data: Any) -> _T:
    """A dataclass from a JSON object: every field of the right type, unknown keys ignored."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        want = _TYPES[str(f.type)]
        value = data[f.name]
        if type(value) is not want:
            raise ValueError(f"{cls.__name__}.{f.name}: expected {want.__name__}, got {value!r}")
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{cls.__name__}: {exc}") from None


@dataclass
class MonitorRequest:
    """What the server asks a monitor to run: one container, its bundle and its log."""

    container_id: str
    bundle: str
    runtime_root: str
    state_dir: str  # exit.json, monitor.json and monitor.sock go here
    log_path: str = ""  # "" discards the output
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> MonitorRequest:
        return _from_json(cls, data)


@dataclass
class MonitorReply:
    """How the create went: the monitor's and the init's (pid, start time), or why not."""

    ok: bool
    monitor_pid: int = 0
    monitor_start: int = 0
    init_pid: int = 0
    init_start: int = 0
    error: str = ""
    error_kind: str = ""  # "spec" | "runtime" | "internal"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> MonitorReply:
        return _from_json(cls, data)


@dataclass
class ExitStatus:
    """How the init ended: exit_code is 128+signal when a signal killed it (runc, conmon)."""

    exit_code: int
    signal: int = 0
    finished_at: int = 0  # ns since the epoch
    oom_killed: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ExitStatus:
        return _from_json(cls, data)

    @classmethod
    def from_wait_status(cls, status: int, *, oom_killed: bool = False) -> ExitStatus:
        now = time.time_ns()
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            return cls(128 + sig, sig, now, oom_killed)
        return cls(os.WEXITSTATUS(status), 0, now, oom_killed)


# --- what the server uses ---------------------------------------------------------------


def read_exit(state_dir: str) -> ExitStatus | None:
    """The recorded exit of the container, None while it has not exited."""
    path = os.path.join(state_dir, EXIT_FILE)
    try:
        return ExitStatus.from_json(read_json(path))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise MonitorError(f"unreadable {path}: {exc}", state_dir=state_dir) from None


def monitor_alive(state_dir: str) -> bool:
    """Whether the monitor named by state_dir/monitor.json still runs (pid and start time)."""
    try:
        rec = read_json(os.path.join(state_dir, MONITOR_FILE))
        pid, start = int(rec["pid"]), int(rec["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return proc_start_time(pid) == start


def reopen_log(state_dir: str, timeout: float = 5.0) -> None:
    """Make the monitor reopen the log path (after kubelet renamed the file to rotate it)."""
    control(state_dir, {"op": "reopen"}, timeout=timeout)


def control(state_dir: str, request: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """One request line to the monitor's control socket, one reply line back."""
    if not monitor_alive(state_dir):
        raise MonitorError("the container's monitor is not running", state_dir=state_dir)
    path = os.path.join(state_dir, CONTROL_SOCKET)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        with _short_path(path) as where:
            sock.connect(where)
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while b"\n" not in buf and len(buf) < MAX_REQUEST:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    except OSError as exc:
        raise MonitorError(
            f"cannot talk to the monitor at {path}: {exc}", state_dir=state_dir
        ) from None
    finally:
        sock.close()
    try:
        reply = json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        raise MonitorError(
            f"bad reply from the monitor: {buf[:200]!r}", state_dir=state_dir
        ) from None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        err = reply.get("error") if isinstance(reply, dict) else reply
        raise MonitorError(f"the monitor refused {request.get('op')}: {err}", state_dir=state_dir)
    return reply


def frame(kind: int, payload: bytes) -> bytes:
    """One attach frame."""
    return FRAME_HEADER.pack(kind, len(payload)) + payload


def open_attach(
    state_dir: str,
    *,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    timeout: float = 5.0,
) -> socket.socket:
    """A connection to the monitor in attach mode (blocking; frames follow); MonitorError
    when the monitor is gone or refuses."""
    if not monitor_alive(state_dir):
        raise MonitorError("the container's monitor is not running", state_dir=state_dir)
    path = os.path.join(state_dir, CONTROL_SOCKET)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    request = {"op": "attach", "stdin": stdin, "stdout": stdout, "stderr": stderr, "tty": tty}
    try:
        sock.settimeout(timeout)
        with _short_path(path) as where:
            sock.connect(where)
        sock.sendall(json.dumps(request).encode() + b"\n")
        line = b""
        while not line.endswith(b"\n") and len(line) < MAX_REQUEST:
            chunk = sock.recv(1)  # byte by byte: frames may follow the line at once
            if not chunk:
                break
            line += chunk
        reply = json.loads(line)
    except (OSError, ValueError) as exc:
        sock.close()
        raise MonitorError(f"cannot attach through {path}: {exc}", state_dir=state_dir) from None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        sock.close()
        err = reply.get("error") if isinstance(reply, dict) else reply
        raise MonitorError(f"the monitor refused attach: {err}", state_dir=state_dir)
    sock.settimeout(None)
    return sock


@contextlib.contextmanager
def _short_path(path: str) -> Iterator[str]:
    """`path`, or the same file through /proc/self/fd when it is too long for sun_path."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield path
        return
    dfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dfd}/{os.path.basename(path)}"
    finally:
        os.close(dfd)


def listen_private(path: str, backlog: int) -> socket.socket:
    """A non-blocking unix listener at `path` (replacing a stale one), mode 0600 from the
    start: only root's CRI server may connect, and there is no window with a wider mode."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        old = os.umask(0o177)
        try:
            with _short_path(path) as where:
                sock.bind(where)
        finally:
            os.umask(old)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# --- the monitor process ----------------------------------------------------------------


def run_monitor(
    req: MonitorRequest, report: Callable[[MonitorReply], None], *, keep_fds: Collection[int] = ()
) -> NoReturn:
    """The body of a freshly forked monitor: create, report once, monitor, exit.

    `keep_fds` are the fds `report` writes to; every other fd above 2 is closed.
    """
    code = 1
    mon = _Monitor(req, report)
    try:
        code = mon.run(keep_fds)
    except BaseException as exc:
        if not mon.reported:
            with contextlib.suppress(BaseException):
                mon.fail(ERROR_INTERNAL, f"{type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


class _Monitor:
    def __init__(self, req: MonitorRequest, report: Callable[[MonitorReply], None]) -> None:
        self.req = req
        self._report = report
        self.reported = False
        self.new_log = ""  # a log file this monitor made, removed if the create fails
        self.writer: CRILogWriter | None = None
        self.init_pid = 0
        self.init_start = 0
        self.cgroup_dir = ""
        self.streams: dict[int, str] = {}  # output fd -> stream name
        self.stdin_w = -1  # kept for attach: the container's stdin stays open
        self.pty_master = -1
        self.stdin_fd = -1  # where attached stdin goes: stdin_w, or a dup of the pty master
        self.stdin_buf = bytearray()
        self.stdin_close = False  # close stdin once stdin_buf is written (stdin_once)
        self.stdin_waiting = False  # registered for EVENT_WRITE
        self.attachments: list[_Attachment] = []
        self.status: ExitStatus | None = None

    def fail(self, kind: str, error: str) -> None:
        # a failed create leaves nothing, not even an empty log - gone before we answer
        if self.new_log:
            with contextlib.suppress(OSError):
                os.unlink(self.new_log)
        self.reported = True
        self._report(MonitorReply(ok=False, error=error, error_kind=kind))

    def run(self, keep_fds: Collection[int]) -> int:
        req = self.req
        with contextlib.suppress(PermissionError):  # already a session leader
            os.setsid()
        from namespaces import syscalls as sc

        sc.libc().prctl(PR_SET_CHILD_SUBREAPER, 1)
        os.chdir("/")
        _close_fds_except(keep_fds)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if not os.path.isdir(req.state_dir):
            self.fail(ERROR_INTERNAL, f"state directory {req.state_dir} does not exist")
            return 1
        log_existed = not req.log_path or os.path.exists(req.log_path)
        try:
            self.writer = CRILogWriter(req.log_path)
        except OSError as exc:
            self.fail(ERROR_RUNTIME, str(exc))
            return 1
        self.new_log = "" if log_existed else req.log_path
        self._stdio()
        if not self._create():
            return 1
        try:
            ctl = self._listen()
            write_json_atomic(
                os.path.join(req.state_dir, MONITOR_FILE),
                {"pid": os.getpid(), "start": proc_start_time(os.getpid()) or 0},
            )
        except Exception as exc:
            self._undo_create()
            self.fail(ERROR_INTERNAL, f"monitor setup: {exc}")
            return 1
        self.reported = True
        self._report(
            MonitorReply(
                ok=True,
                monitor_pid=os.getpid(),
                monitor_start=proc_start_time(os.getpid()) or 0,
                init_pid=self.init_pid,
                init_start=self.init_start,
            )
        )
        for fd in keep_fds:  # the report channel: not needed any more
            with contextlib.suppress(OSError):
                os.close(fd)
        self._loop(ctl)
        return 0

    def _stdio(self) -> None:
        """fds 0-2 as the init will inherit them: pipes, or /dev/null when a pty replaces them."""
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        if self.req.tty:
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            return
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if self.req.stdin:
            in_r, self.stdin_w = os.pipe()
        else:
            in_r = null
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for fd in {in_r, out_w, err_w, null}:
            os.close(fd)
        self.streams = {out_r: STDOUT, err_r: STDERR}

    def _create(self) -> bool:
        """Create the container; False (reported) when that failed.

        runtime.create runs in a short-lived child: it touches (and so copies) much of
        the heap shared with the zygote, and those pages die with the child instead of
        staying private to this long-lived monitor. The init still comes back to us:
        we are the subreaper above the child.
        """
        from runtime.console import ConsoleSocketServer
        from runtime.errors import RuntimeFailure

        req = self.req
        console: ConsoleSocketServer | None = None
        console_path = os.path.join(req.state_dir, CONSOLE_SOCKET)
        with contextlib.ExitStack() as stack:
            if req.tty:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(console_path)
                console_path = stack.enter_context(_short_path(console_path))
                try:
                    console = stack.enter_context(ConsoleSocketServer(console_path))
                except RuntimeFailure as exc:
                    self.fail(ERROR_RUNTIME, str(exc))
                    return False
            outcome = _create_in_child(req, console_path if req.tty else None)
            # our copies of the init's stdio: without them the pipes reach EOF at its exit
            null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            if not outcome.get("ok"):
                self.fail(str(outcome.get("kind")), str(outcome.get("error")))
                return False
            self.init_pid, self.init_start = int(outcome["pid"]), int(outcome["start"])
            self.cgroup_dir = str(outcome["cgroup_dir"])
            if console is not None:
                try:
                    master, _name = console.receive(timeout=PTY_TIMEOUT)
                except RuntimeFailure as exc:
                    self._undo_create()
                    self.fail(ERROR_RUNTIME, f"no pty from the container: {exc}")
                    return False
                self.streams = {master: STDOUT}
                self.pty_master = master
                if req.stdin:
                    self.stdin_fd = os.dup(master)
        if self.stdin_w >= 0:
            self.stdin_fd = self.stdin_w
            os.set_blocking(self.stdin_fd, False)
        return True

    def _undo_create(self) -> None:
        from runtime.delete import delete
        from runtime.state import RuntimeRoot

        with contextlib.suppress(Exception):
            delete(RuntimeRoot(self.req.runtime_root), self.req.container_id, force=True)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass

    def _listen(self) -> socket.socket:
        return listen_private(os.path.join(self.req.state_dir, CONTROL_SOCKET), 8)

    # --- the loop ---------------------------------------------------------------------

    def _loop(self, ctl: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # a handler, so the wakeup fd fires
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        sel.register(ctl, selectors.EVENT_READ, "ctl")
        for fd in self.streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, "out")
        deadline: float | None = None
        while True:
            if self.status is None:
                self._reap()
            timeout: float | None = None
            if self.status is not None:
                if not self.streams:
                    break
                if deadline is None:
                    deadline = time.monotonic() + DRAIN_SECONDS
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            for key, mask in sel.select(timeout):
                if isinstance(key.data, _Attachment):
                    self._attachment_event(sel, key.data, mask)
                elif key.data == "stdin":
                    self._flush_stdin(sel)
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                elif key.data == "out":
                    self._copy(sel, int(key.fd))
                elif key.data == "ctl":
                    self._accept(sel, ctl)
                else:
                    self._serve(sel, key)
        self._finish(ctl)

    def _reap(self) -> None:
        """Collect exited children; the init's exit becomes the container's status."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                # not our child (should not happen): notice its end all the same
                if self.status is None and proc_start_time(self.init_pid) != self.init_start:
                    self.status = ExitStatus(255, 0, time.time_ns(), self._oom_killed())
                return
            if pid == 0:
                return
            if pid == self.init_pid:
                self.status = ExitStatus.from_wait_status(status, oom_killed=self._oom_killed())

    def _oom_killed(self) -> bool:
        if not self.cgroup_dir:
            return False
        try:
            with open(os.path.join(self.cgroup_dir, "memory.events")) as f:
                counts = dict(line.split() for line in f if line.strip())
            return int(counts.get("oom_kill", 0)) > 0
        except (OSError, ValueError):
            return False

    def _copy(self, sel: selectors.BaseSelector, fd: int) -> None:
        stream = self.streams[fd]
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # EIO: the pty's last slave fd closed
            data = b""
        assert self.writer is not None
        if data:
            with contextlib.suppress(OSError):  # a full disk must not stop the monitor
                self.writer.write(stream, data)
            self._fan_out(sel, stream, data)
            return
        with contextlib.suppress(OSError):
            self.writer.end_stream(stream)
        sel.unregister(fd)
        os.close(fd)
        del self.streams[fd]
        if fd == self.pty_master:
            self.pty_master = -1

    def _accept(self, sel: selectors.BaseSelector, ctl: socket.socket) -> None:
        try:
            conn, _ = ctl.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ, bytearray())

    def _serve(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        conn: socket.socket = key.fileobj  # type: ignore[assignment]
        buf: bytearray = key.data
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf += chunk
        if chunk and b"\n" not in buf and len(buf) < MAX_REQUEST:
            return
        sel.unregister(conn)
        try:
            if b"\n" in buf:
                line, rest = bytes(buf).split(b"\n", 1)
                reply, att = self._handle(line)
                conn.setblocking(True)
                conn.settimeout(1.0)
                conn.sendall(json.dumps(reply).encode() + b"\n")
                if att is not None:
                    conn.setblocking(False)
                    att.conn = conn
                    self.attachments.append(att)
                    sel.register(conn, selectors.EVENT_READ, att)
                    if rest:
                        att.inbuf += rest
                        self._attach_input(sel, att)
                    return
        except OSError:
            pass
        conn.close()

    def _handle(self, line: bytes) -> tuple[dict[str, Any], _Attachment | None]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}, None
        op = request.get("op") if isinstance(request, dict) else None
        if op == "attach":
            return self._attach_request(request)
        return self._handle_op(op), None

    def _handle_op(self, op: Any) -> dict[str, Any]:
        if op == "reopen":
            assert self.writer is not None
            try:
                self.writer.reopen()
            except OSError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    # --- attach -------------------------------------------------------------------------

    def _attach_request(self, request: dict[str, Any]) -> tuple[dict[str, Any], _Attachment | None]:
        flags = {}
        for name in ("stdin", "stdout", "stderr", "tty"):
            value = request.get(name, False)
            if type(value) is not bool:
                return {"ok": False, "error": f"attach: {name} must be a boolean"}, None
            flags[name] = value
        if self.status is not None:
            return {"ok": False, "error": "the container has exited"}, None
        if flags["stdin"] and self.stdin_fd < 0:
            return {"ok": False, "error": "the container was not created with stdin"}, None
        att = _Attachment(stdin=flags["stdin"], stdout=flags["stdout"], stderr=flags["stderr"])
        return {"ok": True}, att

    def _fan_out(self, sel: selectors.BaseSelector, stream: str, data: bytes) -> None:
        kind = FRAME_STDOUT if stream == STDOUT else FRAME_STDERR
        for att in list(self.attachments):
            if (att.stdout if kind == FRAME_STDOUT else att.stderr) and not att.dropping:
                att.out += frame(kind, data)
                if len(att.out) > ATTACH_BUFFER:
                    self._drop(att, "attach: the client reads too slowly; output dropped")
                self._flush_attachment(sel, att)

    def _drop(self, att: _Attachment, why: str) -> None:
        """Queue a last error frame and take no more output; closed once it is sent."""
        att.dropping = True
        att.out += frame(FRAME_ERROR, why.encode())

    def _attachment_event(self, sel: selectors.BaseSelector, att: _Attachment, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush_attachment(sel, att)
        if mask & selectors.EVENT_READ and att in self.attachments:
            try:
                chunk = att.conn.recv(READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._detach(sel, att)
                return
            att.inbuf += chunk
            self._attach_input(sel, att)

    def _flush_attachment(self, sel: selectors.BaseSelector, att: _Attachment) -> None:
        if att not in self.attachments:
            return
        try:
            while att.out:
                n = att.conn.send(att.out)
                del att.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._detach(sel, att)
            return
        if not att.out and att.dropping:
            self._detach(sel, att)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if att.out else 0)
        if want != att.events:
            att.events = want
            sel.modify(att.conn, want, att)

    def _attach_input(self, sel: selectors.BaseSelector, att: _Attachment) -> None:
        while len(att.inbuf) >= FRAME_HEADER.size and att in self.attachments:
            kind, n = FRAME_HEADER.unpack_from(att.inbuf)
            if n > MAX_FRAME:
                self._drop(att, f"attach: frame of {n} bytes is too large")
                self._flush_attachment(sel, att)
                return
            if len(att.inbuf) < FRAME_HEADER.size + n:
                return
            payload = bytes(att.inbuf[FRAME_HEADER.size : FRAME_HEADER.size + n])
            del att.inbuf[: FRAME_HEADER.size + n]
            if kind == FRAME_STDIN and att.stdin and self.stdin_fd >= 0:
                if payload:
                    self.stdin_buf += payload
                    if len(self.stdin_buf) > STDIN_BUFFER:
                        self.stdin_buf.clear()
                        self._drop(att, "attach: the container does not read its stdin")
                        self._flush_attachment(sel, att)
                        return
                elif self.req.stdin_once and self.pty_master < 0:
                    self.stdin_close = True
                self._flush_stdin(sel)
            elif kind == FRAME_RESIZE and self.pty_master >= 0:
                self._resize(payload)

    def _resize(self, payload: bytes) -> None:
        import fcntl
        import termios

        try:
            size = json.loads(payload)
            w, h = int(size["Width"]), int(size["Height"])
            fcntl.ioctl(self.pty_master, termios.TIOCSWINSZ, struct.pack("HHHH", h, w, 0, 0))
        except (ValueError, KeyError, TypeError, OSError, struct.error):
            pass  # a bad size from one client is not worth more than ignoring it

    def _flush_stdin(self, sel: selectors.BaseSelector) -> None:
        if self.stdin_fd < 0:
            self.stdin_buf.clear()
            return
        try:
            while self.stdin_buf:
                n = os.write(self.stdin_fd, self.stdin_buf)
                del self.stdin_buf[:n]
        except BlockingIOError:
            if not self.stdin_waiting:
                sel.register(self.stdin_fd, selectors.EVENT_WRITE, "stdin")
                self.stdin_waiting = True
            return
        except OSError:  # EPIPE: nobody reads the container's stdin any more
            self.stdin_buf.clear()
            self.stdin_close = True
        if self.stdin_waiting:
            sel.unregister(self.stdin_fd)
            self.stdin_waiting = False
        if self.stdin_close:
            os.close(self.stdin_fd)
            self.stdin_fd = self.stdin_w = -1

    def _detach(self, sel: selectors.BaseSelector, att: _Attachment) -> None:
        if att in self.attachments:
            self.attachments.remove(att)
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(att.conn)
        att.conn.close()

    def _finish(self, ctl: socket.socket) -> None:
        """Close what is left, record the exit, and go."""
        assert self.writer is not None and self.status is not None
        for att in self.attachments:
            with contextlib.suppress(OSError):
                att.conn.setblocking(True)
                att.conn.settimeout(0.5)  # what is queued, if the client takes it at once
                att.conn.sendall(att.out)
            att.conn.close()
        self.attachments.clear()
        if self.stdin_fd >= 0:
            os.close(self.stdin_fd)
            self.stdin_fd = -1
        for fd, stream in list(self.streams.items()):
            with contextlib.suppress(OSError):
                self.writer.end_stream(stream)
            os.close(fd)
        self.streams.clear()
        self.writer.close()
        ctl.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.req.state_dir, CONTROL_SOCKET))
        # the server may have removed the container's state meanwhile: nothing to record to
        with contextlib.suppress(OSError):
            write_json_atomic(os.path.join(self.req.state_dir, EXIT_FILE), self.status.to_json())


@dataclass(eq=False)
class _Attachment:
    """One attached client: what it wants, and the bytes queued each way."""

    stdin: bool
    stdout: bool
    stderr: bool
    conn: socket.socket = None  # type: ignore[assignment]  # set when registered
    out: bytearray = field(default_factory=bytearray)
    inbuf: bytearray = field(default_factory=bytearray)
    events: int = selectors.EVENT_READ
    dropping: bool = False


def _create_in_child(req: MonitorRequest, console_path: str | None) -> dict[str, Any]:
    """runtime.create in a forked child; its outcome as a dict (ok, pid, start, cgroup_dir;
    or kind, error)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            out = _create_here(req, console_path)
            os.write(w, json.dumps(out).encode() + b"\n")
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    try:
        while not data.endswith(b"\n"):  # not EOF: the init holds the pipe until it execs
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    try:
        outcome: dict[str, Any] = json.loads(data)
    except ValueError:
        return {"ok": False, "kind": ERROR_INTERNAL, "error": "the create process died"}
    return outcome


def _create_here(req: MonitorRequest, console_path: str | None) -> dict[str, Any]:
    from runtime.create import CreateOptions, create
    from runtime.errors import RuntimeFailure, SpecError
    from runtime.state import RuntimeRoot

    # Python ignores SIGPIPE; an ignored signal stays ignored across exec, and the
    # container must get the default (`yes | head` ends by SIGPIPE).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        state = create(
            RuntimeRoot(req.runtime_root),
            req.container_id,
            CreateOptions(req.bundle, console_socket=console_path),
        )
    except SpecError as exc:
        return {"ok": False, "kind": ERROR_SPEC, "error": str(exc)}
    except RuntimeFailure as exc:
        return {"ok": False, "kind": ERROR_RUNTIME, "error": str(exc)}
    except Exception as exc:
        return {"ok": False, "kind": ERROR_INTERNAL, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "pid": state.pid, "start": state.pid_start, "cgroup_dir": state.cgroup_dir}


def _close_fds_except(keep: Collection[int]) -> None:
    """Close every fd above 2 but `keep`: nothing of the zygote's or server's stays open."""
    first = 3
    for fd in sorted(k for k in keep if k >= 3):
        if fd > first:
            os.closerange(first, fd)
        first = fd + 1
    os.closerange(first, os.sysconf("SC_OPEN_MAX"))
