"""Small durable files: JSON written to a temp name, fsynced and renamed, so a kill -9
at any instant leaves either the old record or the new one, never half of one."""

from __future__ import annotations

import json
import os
import threading
from typing import Any


def write_json_atomic(path: str, obj: Any, *, sync: bool = True) -> None:
    """Replace `path` with `obj` as JSON; the directory entry changes in one rename."""
    d = os.path.dirname(path) or "."
    # unique per process and thread: two server threads may write one record at once
    tmp = os.path.join(
        d, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_native_id()}.tmp"
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, sort_keys=True)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_json(path: str) -> Any:
    """The record at `path`; FileNotFoundError if there is none."""
    with open(path) as f:
        return json.load(f)


def remove_stale_temps(directory: str) -> list[str]:
    """Delete temp files a killed writer left in `directory`; returns their names."""
    gone = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for n in names:
        if n.startswith(".") and n.endswith(".tmp"):
            try:
                os.unlink(os.path.join(directory, n))
                gone.append(n)
            except FileNotFoundError:
                pass
    return gone
