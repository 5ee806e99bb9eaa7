"""What the runtime's forked children share: the container's init (runtime/init.py) and
exec's joiner (runtime/exec.py).

Kept apart from init.py so that `exec`, which joins namespaces but builds no root
filesystem, does not import the rootfs modules (~1 ms of every exec).
"""

from __future__ import annotations

import os

from namespaces import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from runtime.sync import Channel

PR_SET_DUMPABLE = 4

# setns order: a user namespace first (it owns the others), the mount namespace last
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")
FLAGS = {
    "pid": sc.CLONE_NEWPID,
    "network": sc.CLONE_NEWNET,
    "mount": sc.CLONE_NEWNS,
    "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS,
    "user": sc.CLONE_NEWUSER,
    "cgroup": sc.CLONE_NEWCGROUP,
    "time": sc.CLONE_NEWTIME,
}


def report_failure(ch: Channel, exc: BaseException) -> NoReturn:
    """Tell the runtime why this child failed, then exit 1 (never raise past this)."""
    try:
        detail = str(exc) or type(exc).__name__
        if os.environ.get("PINNACE_OCI_DEBUG"):
            import traceback  # preloaded: this may run after pivot_root

            detail += "\n" + traceback.format_exc()
        ch.send("error", message=detail)
    finally:
        os._exit(1)


def console_size(config: dict[str, Any]) -> tuple[int, int] | None:
    size = (config.get("process") or {}).get("consoleSize")
    if not size:
        return None
    return int(size.get("height", 0)), int(size.get("width", 0))


def owner_uid(config: dict[str, Any]) -> int | None:
    """The pty belongs to the process's user when that is not root."""
    uid = int(((config.get("process") or {}).get("user") or {}).get("uid", 0))
    return uid or None
