"""Mount records (containerd's `mount.Mount`) and the one helper that mounts and unmounts them.

A snapshotter answers with a list of `Mount` records; whoever assembles a
container root mounts them in order on one target (later records stack on
earlier ones) and later unmounts everything there. Both directions leave
nothing mounted on failure.

Many lower layers. mount(2) copies its option string from one page (4096
bytes), so `lowerdir=/var/lib/pinnace/snapshots/snapshots/123/fs:...` runs out
after ~90 layers. Two ways past it, picked per mount:

* `fsconfig` (Linux >= 6.8): the new mount API, `fsopen("overlay")` and one
  `fsconfig(FSCONFIG_SET_STRING, "lowerdir+", layer)` per layer. No length
  limit (the kernel's own cap is 500 layers); each string is limited to 256
  bytes, so a longer layer path is handed over as `/proc/self/fd/N`.
* `mount2` (every kernel, including the VM tier's 6.1): plain mount(2); when the
  option string would not fit in a page, every layer path is replaced by
  `/proc/self/fd/N` of an O_PATH descriptor held open for the call. The kernel
  resolves those magic links in the calling process, so the option string
  shrinks to ~18 bytes a layer (~220 layers) without docker's `l/` symlink
  directory, without a chdir (process-wide, unsafe with threads) and without a
  forked helper. Before 6.5 overlay parses options only via mount(2) (a
  `lowerdir` string through fsconfig is capped at 256 bytes), so this is the
  path that works on 6.1 and up.

`method="auto"` uses plain mount(2) when the options fit in a page (the
common case, and the most readable mount table), fsconfig past that where
`lowerdir+` is probed to work, and the mount2 fd trick otherwise. Tests
force each one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from namespaces import syscalls as sc
from overlayfs.errors import MountError

Method = Literal["auto", "fsconfig", "mount2"]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
FSCONFIG_STRING_MAX = 255  # strndup_user(value, 256) in fs/fsopen.c, NUL included

# Options that are mount flags, not filesystem data: name -> (set, clear).
_FLAGS: dict[str, tuple[int, int]] = {
    "ro": (sc.MS_RDONLY, 0),
    "rw": (0, sc.MS_RDONLY),
    "nosuid": (sc.MS_NOSUID, 0),
    "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0),
    "dev": (0, sc.MS_NODEV),
    "noexec": (sc.MS_NOEXEC, 0),
    "exec": (0, sc.MS_NOEXEC),
    "bind": (sc.MS_BIND, 0),
    "rbind": (sc.MS_BIND | sc.MS_REC, 0),
}
_MS_TO_ATTR = {
    sc.MS_RDONLY: sc.MOUNT_ATTR_RDONLY,
    sc.MS_NOSUID: sc.MOUNT_ATTR_NOSUID,
    sc.MS_NODEV: sc.MOUNT_ATTR_NODEV,
    sc.MS_NOEXEC: sc.MOUNT_ATTR_NOEXEC,
}
_PER_MOUNT = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
_PATH_OPTIONS = ("upperdir", "workdir")


@dataclass(frozen=True)
class Mount:
    """One mount: containerd's {type, source, options}; options in mount(8) syntax."""

    type: str
    source: str
    options: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The OCI runtime-spec shape (`mounts[]` minus destination)."""
        return {"type": self.type, "source": self.source, "options": list(self.options)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Mount:
        return cls(str(d["type"]), str(d["source"]), tuple(str(o) for o in d.get("options", ())))

    @property
    def readonly(self) -> bool:
        return parse_options(self.options).flags & sc.MS_RDONLY != 0


@dataclass(frozen=True)
class ParsedOptions:
    """Options split into mount(2) flags and filesystem data (`key` or `key=value`)."""

    flags: int
    data: tuple[str, ...] = field(default_factory=tuple)


def parse_options(options: Sequence[str]) -> ParsedOptions:
    flags = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            on, off = _FLAGS[opt]
            flags = (flags | on) & ~off
        else:
            data.append(opt)
    return ParsedOptions(flags, tuple(data))


def split_lowerdir(value: str) -> list[str]:
    r"""The layers of a `lowerdir=` value: `:` separates, `\` escapes (overlayfs syntax)."""
    layers: list[str] = []
    cur: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            cur.append(next(chars, ""))
        elif ch == ":":
            layers.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    layers.append("".join(cur))
    return [layer for layer in layers if layer]


def escape_layer(path: str) -> str:
    r"""A path made safe inside `lowerdir=`/`upperdir=`: `\`, `:` and `,` escaped."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def writable_dir(mounts: Sequence[Mount]) -> str:
    """The directory writes land in: an overlay's upperdir, or a rw bind's source.

    An unpacker applies a layer there directly instead of through a mount.
    """
    for m in reversed(mounts):
        parsed = parse_options(m.options)
        if m.type == "overlay":
            for opt in parsed.data:
                key, _, val = opt.partition("=")
                if key == "upperdir":
                    return split_lowerdir(val)[0]
        elif m.type == "bind" and not parsed.flags & sc.MS_RDONLY:
            return m.source
    raise ValueError("these mounts have no writable layer (a view?)")


# --- probing -----------------------------------------------------------------

_probe_lock = threading.Lock()
_lowerdir_plus: bool | None = None


def lowerdir_plus_supported(sys: sc.Syscalls | None = None) -> bool:
    """Whether overlayfs takes `lowerdir+` through fsconfig (Linux >= 6.8); probed once.

    The probe builds (but never attaches) a two-layer overlay superblock on
    throw-away directories: a version check would miss backports, and on
    kernels before 6.5 fsconfig accepts any key and only fails at create.
    """
    global _lowerdir_plus
    with _probe_lock:
        if _lowerdir_plus is None:
            _lowerdir_plus = _probe_lowerdir_plus(sys or sc.libc())
        return _lowerdir_plus


def _probe_lowerdir_plus(sys: sc.Syscalls) -> bool:
    base = tempfile.mkdtemp(prefix="pinnace-ovlprobe-")
    try:
        for d in ("a", "b"):
            os.mkdir(os.path.join(base, d))
        try:
            fsfd = sys.fsopen("overlay", sc.FSOPEN_CLOEXEC)
        except OSError:
            return False
        try:
            for d in ("a", "b"):
                sys.fsconfig(fsfd, sc.FSCONFIG_SET_STRING, "lowerdir+", os.path.join(base, d))
            sys.fsconfig(fsfd, sc.FSCONFIG_CMD_CREATE)
            return True
        except OSError:
            return False
        finally:
            os.close(fsfd)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- mounting ----------------------------------------------------------------


def mount_all(
    mounts: Sequence[Mount],
    target: str | os.PathLike[str],
    *,
    sys: sc.Syscalls | None = None,
    method: Method = "auto",
) -> None:
    """Mount `mounts` in order on `target`; on any failure unmount what this call mounted."""
    s = sys or sc.libc()
    tgt = os.path.abspath(os.fspath(target))
    done = 0
    try:
        for m in mounts:
            _mount_one(s, m, tgt, method)
            done += 1
    except BaseException as exc:
        for _ in range(done):
            try:
                _unmount_once(s, tgt)
            except MountError as undo:  # keep the original error; say what could not be undone
                exc.add_note(f"rolling back: {undo}")
        raise


def unmount_all(target: str | os.PathLike[str], *, sys: sc.Syscalls | None = None) -> int:
    """Unmount every mount stacked on `target` (containerd's UnmountAll); how many.

    Stops when `target` is no longer a mount point (EINVAL) or is gone
    (ENOENT). A busy mount is retried briefly, then detached lazily, so it
    is out of the mount table either way. Never follows a symlink at target.
    """
    s = sys or sc.libc()
    tgt = os.path.abspath(os.fspath(target))
    for count in range(64):  # more stacked mounts than this is a bug elsewhere
        if not _unmount_once(s, tgt):
            return count
    raise MountError(errno.ELOOP, tgt, "any", "unmount", "more than 64 mounts stacked")


@contextlib.contextmanager
def mounted(
    mounts: Sequence[Mount],
    target: str | os.PathLike[str],
    *,
    sys: sc.Syscalls | None = None,
    method: Method = "auto",
) -> Iterator[str]:
    """`mount_all` for the duration of a with-block; unmounts even when the block raises."""
    tgt = os.path.abspath(os.fspath(target))
    mount_all(mounts, tgt, sys=sys, method=method)
    try:
        yield tgt
    finally:
        unmount_all(tgt, sys=sys)


def _unmount_once(s: sc.Syscalls, target: str) -> bool:
    """Unmount the top mount on `target`: True if one was removed, False if none was there."""
    for attempt in range(5):
        try:
            s.umount2(target, sc.UMOUNT_NOFOLLOW)
            return True
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return False
            if exc.errno != errno.EBUSY:
                raise MountError(exc.errno or errno.EIO, target, "any", "unmount") from exc
            time.sleep(0.01 * (attempt + 1))
    try:
        s.umount2(target, sc.UMOUNT_NOFOLLOW | sc.MNT_DETACH)
        return True
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return False
        raise MountError(exc.errno or errno.EIO, target, "any", "unmount") from exc


def _mount_one(s: sc.Syscalls, m: Mount, target: str, method: Method) -> None:
    parsed = parse_options(m.options)
    if m.type == "bind" or parsed.flags & sc.MS_BIND:
        _mount_bind(s, m, parsed, target)
    elif m.type == "overlay":
        use_fsconfig = method == "fsconfig" or (
            method == "auto" and _needs_fsconfig(m, parsed) and lowerdir_plus_supported(s)
        )
        if use_fsconfig:
            _mount_overlay_fsconfig(s, m, parsed, target)
        else:
            _mount_overlay_mount2(s, m, parsed, target)
    else:
        data = ",".join(parsed.data) or None
        try:
            s.mount(m.source, target, m.type, parsed.flags, data)
        except OSError as exc:
            raise MountError(exc.errno or errno.EIO, target, m.type, "mount") from exc


def _needs_fsconfig(m: Mount, parsed: ParsedOptions) -> bool:
    """Use the new API only where mount(2) would need the fd trick: plain paths read better."""
    return len(",".join(parsed.data).encode()) >= PAGE_SIZE


def _mount_bind(s: sc.Syscalls, m: Mount, parsed: ParsedOptions, target: str) -> None:
    """A bind mount; per-mount flags (ro, nosuid...) need a second, remount call."""
    bind = sc.MS_BIND | (parsed.flags & sc.MS_REC)
    try:
        s.mount(m.source, target, None, bind, None)
    except OSError as exc:
        raise MountError(exc.errno or errno.EIO, target, "bind", "mount") from exc
    extra = parsed.flags & _PER_MOUNT
    if not extra:
        return
    try:
        s.mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | extra, None)
    except BaseException as exc:
        _unmount_once(s, target)
        if isinstance(exc, OSError):
            raise MountError(exc.errno or errno.EIO, target, "bind", "remount") from exc
        raise


def _overlay_parts(parsed: ParsedOptions) -> tuple[list[str], list[tuple[str, str | None]]]:
    """(lower layers top first, the other options as (key, value-or-None)) with escapes undone."""
    lowers: list[str] = []
    rest: list[tuple[str, str | None]] = []
    for opt in parsed.data:
        key, sep, val = opt.partition("=")
        if key == "lowerdir":
            lowers.extend(split_lowerdir(val))
        elif key in _PATH_OPTIONS:
            rest.append((key, split_lowerdir(val)[0] if val else val))
        else:
            rest.append((key, val if sep else None))
    return lowers, rest


class _FdPaths:
    """O_PATH descriptors standing in for long paths as `/proc/self/fd/N`; closed on exit."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def path(self, p: str) -> str:
        fd = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.fds.append(fd)
        return f"/proc/self/fd/{fd}"

    def __enter__(self) -> _FdPaths:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)


def overlay_data(parsed: ParsedOptions, fds: _FdPaths | None = None) -> str:
    """The mount(2) option string; with `fds`, every layer path replaced by /proc/self/fd/N."""
    lowers, rest = _overlay_parts(parsed)
    out: list[str] = []
    for key, val in rest:
        if val is None:
            out.append(key)
        elif key in _PATH_OPTIONS:
            out.append(f"{key}={escape_layer(fds.path(val) if fds else val)}")
        else:
            out.append(f"{key}={val}")
    if lowers:
        joined = ":".join(escape_layer(fds.path(p) if fds else p) for p in lowers)
        out.append(f"lowerdir={joined}")
    return ",".join(out)


def _mount_overlay_mount2(s: sc.Syscalls, m: Mount, parsed: ParsedOptions, target: str) -> None:
    with _FdPaths() as fds:
        data = overlay_data(parsed)
        if len(data.encode()) >= PAGE_SIZE:
            data = overlay_data(parsed, fds)
            if len(data.encode()) >= PAGE_SIZE:
                lowers, _ = _overlay_parts(parsed)
                raise MountError(
                    errno.E2BIG,
                    target,
                    "overlay",
                    "mount",
                    f"{len(lowers)} layers do not fit in one page of mount options "
                    "even as /proc/self/fd paths; this needs Linux >= 6.8 (lowerdir+)",
                )
        try:
            s.mount(m.source or "overlay", target, "overlay", parsed.flags & ~sc.MS_BIND, data)
        except OSError as exc:
            raise MountError(exc.errno or errno.EIO, target, "overlay", "mount") from exc


def _fs_log(fsfd: int) -> str:
    """What the kernel logged on this fs_context ("e overlayfs: ..."), read until empty."""
    lines: list[str] = []
    for _ in range(16):
        try:
            raw = os.read(fsfd, 1024)
        except OSError:
            break
        if not raw:
            break
        lines.append(raw.decode(errors="replace").strip())
    return "; ".join(lines)


def _mount_overlay_fsconfig(s: sc.Syscalls, m: Mount, parsed: ParsedOptions, target: str) -> None:
    lowers, rest = _overlay_parts(parsed)
    attrs = 0
    for ms, attr in _MS_TO_ATTR.items():
        if parsed.flags & ms:
            attrs |= attr
    with _FdPaths() as fds:

        def arg(p: str) -> str:
            return fds.path(p) if len(p.encode()) > FSCONFIG_STRING_MAX else p

        fsfd = s.fsopen("overlay", sc.FSOPEN_CLOEXEC)
        try:
            try:
                s.fsconfig(fsfd, sc.FSCONFIG_SET_STRING, "source", m.source or "overlay")
                for key, val in rest:
                    if val is None:
                        s.fsconfig(fsfd, sc.FSCONFIG_SET_FLAG, key)
                    else:
                        v = arg(val) if key in _PATH_OPTIONS else val
                        s.fsconfig(fsfd, sc.FSCONFIG_SET_STRING, key, v)
                for layer in lowers:
                    s.fsconfig(fsfd, sc.FSCONFIG_SET_STRING, "lowerdir+", arg(layer))
                s.fsconfig(fsfd, sc.FSCONFIG_CMD_CREATE)
                mfd = s.fsmount(fsfd, sc.FSMOUNT_CLOEXEC, attrs)
            except OSError as exc:
                raise MountError(
                    exc.errno or errno.EIO, target, "overlay", "mount", _fs_log(fsfd)
                ) from exc
        finally:
            os.close(fsfd)
        try:
            s.move_mount(mfd, "", sc.AT_FDCWD, target, sc.MOVE_MOUNT_F_EMPTY_PATH)
        except OSError as exc:
            raise MountError(exc.errno or errno.EIO, target, "overlay", "move_mount") from exc
        finally:
            os.close(mfd)
