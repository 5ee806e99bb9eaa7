"""Typed errors of the overlayfs package: each names the snapshot, mount target or layer entry.

Callers (images/, runtime/, cri/) turn these into CRI/gRPC statuses and log
lines, so the key or path that failed must travel with the exception
rather than live only in its message.
"""

from __future__ import annotations

import errno as errno_mod
import os

# --- snapshots ---------------------------------------------------------------


class SnapshotError(Exception):
    """Something is wrong with a snapshot; `key` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"snapshot {key!r}: {message}")
        self.key = key


class SnapshotNotFoundError(SnapshotError, KeyError):
    """No snapshot has this key (or committed name)."""

    def __init__(self, key: str) -> None:
        SnapshotError.__init__(self, key, "not found")

    def __str__(self) -> str:  # KeyError would quote the whole message again
        return str(self.args[0])


class SnapshotExistsError(SnapshotError):
    """The key or committed name is taken; for a chain ID it means the layer is already there."""

    def __init__(self, key: str) -> None:
        super().__init__(key, "already exists")


class SnapshotStateError(SnapshotError):
    """The operation does not fit the snapshot's kind (commit a view, parent not committed...)."""


class SnapshotInUseError(SnapshotError):
    """Removal refused: committed snapshots still name this one as their parent."""

    def __init__(self, key: str, children: list[str]) -> None:
        shown = ", ".join(repr(c) for c in children[:5])
        more = f" and {len(children) - 5} more" if len(children) > 5 else ""
        super().__init__(key, f"has {len(children)} child snapshot(s): {shown}{more}")
        self.children = children


class MountedError(SnapshotError):
    """Refused to delete a directory that has a mount on or below it (it would reach into it)."""

    def __init__(self, key: str, mount_point: str) -> None:
        super().__init__(key, f"a mount is still on {mount_point}")
        self.mount_point = mount_point


# --- mounts ------------------------------------------------------------------


class MountError(OSError):
    """Mounting or unmounting at `target` failed; errno from the kernel, message from overlayfs.

    `filename` is the target; `fstype` the mount type; `detail` what the
    kernel's fs_context log said, when it said anything.
    """

    def __init__(self, err: int, target: str, fstype: str, what: str, detail: str = "") -> None:
        msg = f"{what} {fstype} on {target}: {os.strerror(err)}"
        if detail:
            msg += f" ({detail})"
        super().__init__(err, msg, target)
        self.fstype = fstype
        self.detail = detail


# --- layers ------------------------------------------------------------------


class LayerError(Exception):
    """Applying a layer failed; `entry` is the tar entry's name as the archive gave it."""

    def __init__(self, entry: str, message: str) -> None:
        super().__init__(f"layer entry {entry!r}: {message}")
        self.entry = entry


class UnsafeEntryError(LayerError):
    """The entry would reach outside the snapshot (`..` above the root, hardlink escaping...)."""


class UnsupportedEntryError(LayerError):
    """The entry is of a type Pinnace does not apply (sparse, volume label, unknown typeflag)."""


class EntryApplyError(LayerError, OSError):
    """The kernel refused to create or update the entry; carries its errno."""

    def __init__(self, entry: str, exc: OSError) -> None:
        LayerError.__init__(self, entry, f"{exc.strerror or exc}")
        self.errno = exc.errno if exc.errno is not None else errno_mod.EIO
        self.strerror = exc.strerror
        self.filename = entry


class ArchiveError(LayerError):
    """The tar stream itself is malformed (bad checksum, truncated, oversized header)."""

    def __init__(self, offset: int, message: str, entry: str = "") -> None:
        super().__init__(entry or f"@{offset}", message)
        self.offset = offset
