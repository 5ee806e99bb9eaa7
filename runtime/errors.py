"""Errors of the OCI runtime: what went wrong, and which field, container or path it concerns."""

from __future__ import annotations

import errno as errno_mod
import os


class SpecError(ValueError):
    """config.json says something invalid; `field` is its JSON path (e.g. process.rlimits[2].type)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RuntimeFailure(Exception):
    """The runtime could not do what it was asked; carries the container id or path concerned."""

    def __init__(
        self, message: str, *, container: str | None = None, path: str | None = None
    ) -> None:
        super().__init__(message)
        self.container = container
        self.path = path


class ContainerNotFound(RuntimeFailure):
    """No container of that id under --root (runc: `container does not exist`)."""


class ContainerExists(RuntimeFailure):
    """A container of that id exists already."""


class InvalidState(RuntimeFailure):
    """The verb does not apply in the container's current state (e.g. start of a running one)."""


class HookError(RuntimeFailure):
    """A lifecycle hook failed: which kind, which one (index, path), and how.

    `exit_status` is the hook's exit code, or None when it did not exit by itself
    (killed by `signal`, `timed_out`, or could not be started at all);
    `stderr` is the tail of what the hook wrote on its stderr.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        index: int,
        path: str,
        exit_status: int | None = None,
        signal: int | None = None,
        timed_out: bool = False,
        stderr: str = "",
        container: str | None = None,
    ) -> None:
        super().__init__(message, container=container, path=path)
        self.kind = kind
        self.index = index
        self.exit_status = exit_status
        self.signal = signal
        self.timed_out = timed_out
        self.stderr = stderr


class ConsoleError(RuntimeFailure):
    """The container's terminal could not be set up (pty, console socket, /dev/console)."""


class RootfsError(RuntimeFailure):
    """The root filesystem could not be set up.

    `where` names the config entry (`mounts[3] (/sys)`, `linux.maskedPaths[0]
    (/proc/kcore)`, `default device /dev/null`...), `step` what was being
    done, `errno` the kernel's answer (None for a refusal of our own).
    """

    def __init__(
        self, where: str, step: str, err: int | None = None, *, path: str | None = None
    ) -> None:
        message = f"{where}: {step}"
        if err:
            message += f": {errno_mod.errorcode.get(err, str(err))} ({os.strerror(err)})"
        super().__init__(message, path=path)
        self.where = where
        self.step = step
        self.errno = err


class ProcessSetupError(RuntimeFailure):
    """The container's process could not be given what config.json asks for.

    Identity, limits, capabilities, sysctls or the seccomp filter, applied in
    the init after the config was validated: the kernel said no. `field`
    names the config field (e.g. `process.rlimits[0]`) when one is to blame.
    """

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message, path=path)
        self.field = field


class ExecLookupError(RuntimeFailure):
    """args[0] cannot be found or run in the container; `exit_code` is 127 or 126, as a shell's."""

    def __init__(self, message: str, *, exit_code: int, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.exit_code = exit_code
