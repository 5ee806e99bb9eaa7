"""Where containers live between runtime invocations, and what state they are in.

Every verb is a separate process, so the state is on disk: one directory per
container under --root, holding state.json (written atomically) and, between
create and start, the exec fifo the init is blocked on. The status is never
trusted from the file alone: it is derived from the kernel each time (is the
init PID alive, with the same start time, not a zombie; is the fifo still
there; is the cgroup frozen), so `state` is right even after a crash.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ContainerExists, ContainerNotFound, RuntimeFailure

DEFAULT_ROOT = "/run/pinnace-oci"
OCI_VERSION = "1.2.0"
ID_RE = re.compile(r"^[\w+.-]+$")  # runc's rule: letters, digits, _ + - .
FIFO = "exec.fifo"
STATE = "state.json"

CREATING, CREATED, RUNNING, PAUSED, STOPPED = "creating", "created", "running", "paused", "stopped"


def validate_id(cid: str) -> None:
    if not cid or not ID_RE.match(cid) or cid in (".", ".."):
        raise RuntimeFailure(f"invalid container id format: {cid!r}", container=cid)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None if gone or a zombie.

    The pair (pid, start time) names a process without the PID-reuse race.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = raw[raw.rindex(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


@dataclass
class ContainerState:
    """What the runtime records about a container (a superset of the spec's state)."""

    id: str
    bundle: str
    rootfs: str
    pid: int = 0
    pid_start: int = 0
    created: str = ""
    owner: str = ""
    cgroup: str = ""  # path relative to the unified hierarchy's root
    annotations: dict[str, str] = field(default_factory=dict)
    hooks: dict[str, Any] = field(default_factory=dict)
    config_path: str = ""  # the config.json the container was created from
    status: str = CREATING  # the last recorded status; see ContainerDir.status()
    resources: dict[str, Any] = field(default_factory=dict)

    def oci(self, status: str) -> dict[str, Any]:
        """The state JSON of the runtime spec (runc adds rootfs, created and owner)."""
        out: dict[str, Any] = {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": self.pid if status in (CREATING, CREATED, RUNNING, PAUSED) else 0,
            "status": status,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
        }
        if self.annotations:
            out["annotations"] = self.annotations
        return out


class ContainerDir:
    """The on-disk record of one container; `lock()` serialises the verbs that change it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.name

    @property
    def fifo(self) -> Path:
        return self.path / FIFO

    def load(self) -> ContainerState:
        try:
            data = json.loads((self.path / STATE).read_text())
        except FileNotFoundError:
            raise ContainerNotFound("container does not exist", container=self.id) from None
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(
                f"cannot read state: {exc}", container=self.id, path=str(self.path / STATE)
            ) from None
        return ContainerState(**data)

    def save(self, state: ContainerState) -> None:
        """Write state.json atomically: a reader sees the old or the new, never half."""
        tmp = self.path / f".{STATE}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(asdict(state)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path / STATE)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def status(self, state: ContainerState) -> str:
        """The status now, from the kernel: created / running / paused / stopped."""
        if state.status == CREATING:
            return CREATING
        if not state.pid or proc_start_time(state.pid) != state.pid_start:
            return STOPPED
        if self.fifo.exists():
            return CREATED
        if state.cgroup and _frozen(state.cgroup):
            return PAUSED
        return RUNNING

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _frozen(cgroup: str) -> bool:
    from cgroups.discovery import discover  # only `state` of a live container needs it

    hier = discover()
    if hier.mount_point is None:
        return False
    try:
        with open(hier.mount_point / cgroup.lstrip("/") / "cgroup.events") as f:
            return any(line.strip() == "frozen 1" for line in f)
    except FileNotFoundError:
        return False


class RuntimeRoot:
    """The --root directory: one ContainerDir per container id."""

    def __init__(self, path: str = DEFAULT_ROOT) -> None:
        self.path = Path(path)

    def get(self, cid: str) -> ContainerDir:
        validate_id(cid)
        d = ContainerDir(self.path / cid)
        if not d.path.is_dir():
            raise ContainerNotFound("container does not exist", container=cid)
        return d

    def new(self, cid: str) -> ContainerDir:
        """Create the directory of a new container; ContainerExists if the id is taken."""
        validate_id(cid)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path / cid
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            raise ContainerExists(f"container with id exists: {cid}", container=cid) from None
        return ContainerDir(path)

    def all(self) -> list[ContainerDir]:
        try:
            names = sorted(os.listdir(self.path))
        except FileNotFoundError:
            return []
        return [ContainerDir(self.path / n) for n in names if (self.path / n / STATE).exists()]


def ensure_gone(pid: int, start: int, timeout: float = 10.0) -> bool:
    """Wait until (pid, start) no longer names a live process; True if it went."""
    import time

    deadline = time.monotonic() + timeout
    delay = 0.001
    while proc_start_time(pid) == start:
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    return True


def signal_process(pid: int, start: int, sig: int) -> None:
    """Send `sig` to (pid, start) through a pidfd, so a recycled PID is never hit."""
    from namespaces.syscalls import SyscallError, libc

    s = libc()
    try:
        fd = s.pidfd_open(pid)
    except SyscallError as exc:
        if exc.errno == errno.ESRCH:
            raise ProcessLookupError(errno.ESRCH, "process already finished") from None
        raise
    try:
        if proc_start_time(pid) != start:  # the PID now names another process
            raise ProcessLookupError(errno.ESRCH, "process already finished")
        s.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)
