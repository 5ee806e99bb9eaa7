"""Where containers live between runtime invocations, and what state they are in.

Every verb is a separate process, so the state is on disk: one directory per
container under --root, holding state.json (written atomically) and, between
create and start, the exec fifo the init is blocked on. The status is never
trusted from the file alone: it is derived from the kernel each time (is the
init PID alive, with the same start time, not a zombie; is the fifo still
there; is the cgroup frozen), so `state` is right even after a crash.

Every verb imports this module, so it keeps to cheap imports: plain
classes rather than dataclasses (importing dataclasses costs ~13 ms here),
os.path rather than pathlib (~10 ms), runtime.jsonio rather than json (~7 ms),
no re, contextlib, signal or shutil.

state.json is not fsynced: the rename makes each write atomic against a
crash of any process, and the state root lives on tmpfs (/run), as runc's
does, so there is nothing to keep across a power loss.
"""

from __future__ import annotations

import errno
import fcntl
import os

from runtime import jsonio
from runtime.errors import ContainerExists, ContainerNotFound, RuntimeFailure

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms)
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import Any

DEFAULT_ROOT = "/run/pinnace-oci"
OCI_VERSION = "1.2.0"
# runc's rule (Go's ASCII \w): letters, digits, _ + - .
ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")
FIFO = "exec.fifo"
STATE = "state.json"
# What the compiled front end (runtime/front_end.c) reads to start or delete a container
# without Python; create writes it only when those verbs need nothing more (front_end_record).
FRONT_END = "front-end"
FRONT_END_HEADER = "pinnace-oci front-end 1\n"

CREATING, CREATED, RUNNING, PAUSED, STOPPED = "creating", "created", "running", "paused", "stopped"
DEFAULT_CGROUP_PARENT = "pinnace"  # containers without linux.cgroupsPath go to /pinnace/<id>


def validate_id(cid: str) -> None:
    if not cid or not ID_CHARS.issuperset(cid) or cid in (".", ".."):
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


class ContainerState:
    """What the runtime records about a container (a superset of the spec's state).

    The keyword arguments are the keys of state.json.
    """

    def __init__(
        self,
        id: str,
        bundle: str,
        rootfs: str,
        pid: int = 0,
        pid_start: int = 0,
        created: str = "",
        owner: str = "",
        cgroup: str = "",  # path relative to the unified hierarchy's root
        cgroup_dir: str = "",  # the cgroup's directory on the host, as create made it
        annotations: dict[str, str] | None = None,
        hooks: dict[str, Any] | None = None,
        config_path: str = "",  # the config.json the container was created from
        status: str = CREATING,  # CREATING until create is done, then CREATED; see status()
        resources: dict[str, Any] | None = None,
        creator: int = 0,  # the PID of the process running `create`, while it does
        creator_start: int = 0,  # and its start time, so a reused PID is not taken for it
    ) -> None:
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.pid = pid
        self.pid_start = pid_start
        self.created = created
        self.owner = owner
        self.cgroup = cgroup
        self.cgroup_dir = cgroup_dir
        self.annotations = annotations or {}
        self.hooks = hooks or {}
        self.config_path = config_path
        self.status = status
        self.resources = resources or {}
        self.creator = creator
        self.creator_start = creator_start

    def to_json(self) -> dict[str, Any]:
        """state.json: every attribute, under the name __init__ takes it by."""
        return dict(vars(self))

    def __repr__(self) -> str:
        return f"ContainerState({self.to_json()!r})"

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


class _DirLock:
    """flock on the container's directory for the length of a `with` block."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class ContainerDir:
    """The on-disk record of one container; `lock()` serialises the verbs that change it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.id = os.path.basename(path)

    @property
    def fifo(self) -> str:
        return os.path.join(self.path, FIFO)

    def load(self) -> ContainerState:
        path = os.path.join(self.path, STATE)
        try:
            with open(path, "rb") as f:
                data = jsonio.loads(f.read())
            return ContainerState(**data)
        except FileNotFoundError:
            raise ContainerNotFound("container does not exist", container=self.id) from None
        except (OSError, ValueError, TypeError) as exc:
            raise RuntimeFailure(
                f"cannot read state: {exc}", container=self.id, path=path
            ) from None

    def save(self, state: ContainerState) -> None:
        """Write state.json atomically: a reader sees the old or the new, never half."""
        self._write_atomically(STATE, jsonio.dumps(state.to_json()).encode())

    def save_front_end_record(self, state: ContainerState) -> None:
        """Let the front end start and delete this container, if it can (front_end_record).
        Written last by create, so a create killed midway leaves Python in charge."""
        record = front_end_record(state)
        if record is not None:
            self._write_atomically(FRONT_END, record.encode())

    def _write_atomically(self, name: str, data: bytes) -> None:
        tmp = os.path.join(self.path, f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.path, name))

    def lock(self) -> AbstractContextManager[None]:
        return _DirLock(self.path)

    def status(self, state: ContainerState) -> str:
        """The status now, from the kernel: creating / created / running / paused / stopped.

        A container whose `create` was killed midway (kill -9, OOM) stays "creating"
        on disk; once that process is gone it is "stopped": nothing of it runs (its
        init dies with its creator) and `delete` removes what is left, as after runc.
        """
        if state.status == CREATING:
            if state.creator and proc_start_time(state.creator) != state.creator_start:
                return STOPPED
            return CREATING
        if not state.pid or proc_start_time(state.pid) != state.pid_start:
            return STOPPED
        if os.path.exists(self.fifo):
            return CREATED
        if state.cgroup and _frozen(state):
            return PAUSED
        return RUNNING

    def remove(self) -> None:
        """Remove the directory: it holds files only (state.json, exec.fifo, a temp file)."""
        try:
            for name in os.listdir(self.path):
                try:
                    os.unlink(os.path.join(self.path, name))
                except FileNotFoundError:
                    pass
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError:  # not what this runtime leaves there: remove whatever it is
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)


def front_end_record(state: ContainerState) -> str | None:
    """The front end's record of a created container: its init (PID and start time) and
    its cgroup's directory. None when `start` or `delete` need the Python runtime: hooks
    to run after start or stop, or no cgroup directory of its own on record."""
    if state.hooks.get("poststart") or state.hooks.get("poststop"):
        return None
    if not state.pid or not state.pid_start:
        return None
    path = state.cgroup_dir
    if not path.startswith("/") or "\n" in path or "\0" in path:
        return None
    return f"{FRONT_END_HEADER}{state.pid} {state.pid_start}\n{path}\n"


def container_cgroup_dir(state: ContainerState) -> str:
    """The container's cgroup directory: recorded by create, else found from the hierarchy
    (state written by an older version)."""
    if state.cgroup_dir:
        return state.cgroup_dir
    from cgroups.discovery import discover

    mount_point = discover().mount_point
    if mount_point is None:
        return ""
    return os.path.join(mount_point, state.cgroup.lstrip("/"))


def _frozen(state: ContainerState) -> bool:
    """Paused: cgroup.freeze asks for it and the kernel got there (not a stale `frozen 1`)."""
    from cgroups.freezer import is_frozen

    path = container_cgroup_dir(state)
    if not path:
        return False
    try:
        return is_frozen(path, path)
    except (FileNotFoundError, NotADirectoryError):
        return False


def remove_empty_parent(cgroup_path: str | os.PathLike[str]) -> None:
    """Remove Pinnace's default parent cgroup when its last container went."""
    parent = os.path.dirname(os.fspath(cgroup_path))
    if os.path.basename(parent) == DEFAULT_CGROUP_PARENT:
        try:
            os.rmdir(parent)
        except OSError:
            pass


class RuntimeRoot:
    """The --root directory: one ContainerDir per container id."""

    def __init__(self, path: str = DEFAULT_ROOT) -> None:
        self.path = path

    @property
    def seccomp_cache(self) -> str:
        """Where compiled seccomp filters are kept (runtime.seccomp.compiled); '@' is
        not allowed in an id, so no container can have this directory's name."""
        return os.path.join(self.path, "@seccomp")

    def get(self, cid: str) -> ContainerDir:
        validate_id(cid)
        d = ContainerDir(os.path.join(self.path, cid))
        if not os.path.isdir(d.path):
            raise ContainerNotFound("container does not exist", container=cid)
        return d

    def new(self, cid: str) -> ContainerDir:
        """Create the directory of a new container; ContainerExists if the id is taken."""
        validate_id(cid)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        path = os.path.join(self.path, cid)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            raise ContainerExists(f"container with id exists: {cid}", container=cid) from None
        return ContainerDir(path)

    def all(self) -> list[ContainerDir]:
        try:
            names = sorted(os.listdir(self.path))
        except FileNotFoundError:
            return []
        return [
            ContainerDir(os.path.join(self.path, n))
            for n in names
            if os.path.exists(os.path.join(self.path, n, STATE))
        ]


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
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return True


def signal_process(pid: int, start: int, sig: int) -> None:
    """Send `sig` to (pid, start) through a pidfd, so a recycled PID is never hit.

    The standard library's pidfd calls (Python >= 3.9), not namespaces.syscalls: `kill`
    runs for every container stop, and the ctypes layer costs it ~10 ms of imports.
    """
    from namespaces.signals import pidfd_send_signal

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ProcessLookupError(errno.ESRCH, "process already finished") from None
    try:
        if proc_start_time(pid) != start:  # the PID now names another process
            raise ProcessLookupError(errno.ESRCH, "process already finished")
        pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)
