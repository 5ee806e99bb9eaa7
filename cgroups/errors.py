"""Typed errors of the cgroup manager: each names the cgroup, file or OCI field concerned.

Callers (runtime/, cri/) turn these into user-facing messages and CRI
statuses, so an error must say *what* failed and *why* without a traceback:
"memory limits are unavailable because the memory controller is bound to a
cgroup v1 hierarchy" rather than ENOENT on memory.max.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


class CgroupError(Exception):
    """Base of every cgroup manager failure; `path` is the cgroup dir or file concerned."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self._path = os.fspath(path) if path is not None else None
        super().__init__(f"{message} ({self._path})" if self._path is not None else message)

    @property
    def path(self) -> Path | None:
        """The cgroup dir or file concerned. A Path made when asked: importing pathlib
        costs ~10 ms, and the runtime verbs raise and catch CgroupNotFound in their
        normal flow (a cgroup that is not there yet, or any more)."""
        from pathlib import Path

        return Path(self._path) if self._path is not None else None


class CgroupPathError(CgroupError, ValueError):
    """A cgroup path that would leave the unified hierarchy or is otherwise malformed."""


class CgroupNotFound(CgroupError, FileNotFoundError):
    """The cgroup directory does not exist (never created, or already destroyed)."""


class ResourceError(CgroupError, ValueError):
    """An invalid resource setting, named by its OCI field (`linux.resources.memory.limit`)."""

    def __init__(
        self,
        field: str,
        reason: str,
        value: object = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.field = field
        self.reason = reason
        self.value = value
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{field}: {reason}{shown}", path)


class ControllerUnavailable(CgroupError):
    """A limit needs a controller this hierarchy cannot give the cgroup.

    Raised before anything is written, so a refused resource set leaves the
    cgroup exactly as it was.
    """

    def __init__(self, controller: str, path: str | os.PathLike[str], reason: str) -> None:
        self.controller = controller
        self.reason = reason
        super().__init__(f"cgroup controller {controller!r} is unavailable: {reason}", path)


class FeatureUnavailable(CgroupError):
    """The controller is enabled but this kernel lacks the interface file a field needs.

    For example memory.swap.max without swap accounting, io.weight without
    blk-iocost, or a huge page size the machine does not have.
    """

    def __init__(self, field: str, file: str, path: str | os.PathLike[str], reason: str) -> None:
        self.field = field
        self.file = file
        self.reason = reason
        super().__init__(f"{field} needs {file}: {reason}", path)


class CgroupWriteError(CgroupError):
    """The kernel refused a write to a cgroup file; carries errno and what was written.

    `written` lists the files already written by the same apply() when a
    later write failed (the kernel rejected a value validation could not
    foresee), so a caller knows how far the update got.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        value: str,
        errno: int,
        reason: str | None = None,
        written: tuple[str, ...] = (),
    ) -> None:
        self.value = value
        self.errno = errno
        self.reason = reason or os.strerror(errno)
        self.written = written
        super().__init__(f"cannot write {value!r}: {self.reason}", path)


class CgroupTimeout(CgroupError):
    """A wait on cgroup.events (frozen, populated) did not finish in time."""

    def __init__(self, what: str, path: str | os.PathLike[str], timeout: float) -> None:
        self.what = what
        self.timeout = timeout
        super().__init__(f"timed out after {timeout:g}s waiting for {what}", path)
