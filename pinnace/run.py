"""`pinnace run`: an image's config -> an OCI bundle -> runtime/ in this process.

The bundle lives under /run/pinnace/containers/<id>: config.json, a `rootfs`
directory with the container's writable overlay snapshot mounted on it (in
the host mount namespace, so `pinnace rm` from another process can take it
down) and pinnace.json naming the snapshot and store, for that cleanup.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from images.store import Image, ImageNotFoundError, ImageStore
from overlayfs.errors import SnapshotNotFoundError
from overlayfs.mounts import mount_all, unmount_all
from runtime import passwd

if TYPE_CHECKING:
    from runtime.state import RuntimeRoot

DEFAULT_RUN_DIR = Path("/run/pinnace/containers")
DEFAULT_RUNTIME_ROOT = "/run/pinnace-oci"
META_FILE = "pinnace.json"
SNAPSHOT_PREFIX = "pinnace-run-"
CPU_PERIOD = 100_000  # microseconds, the kernel's default CFS period

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([bkmgt]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class RunError(Exception):
    """A `pinnace run` input or step failed; the message names what."""


@dataclass
class RunOptions:
    cmd: list[str] = field(default_factory=list)
    name: str | None = None
    rm: bool = False
    env: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    memory: str | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    workdir: str | None = None
    user: str | None = None
    entrypoint: str | None = None
    tty: bool = False


def parse_size(text: str) -> int:
    """`20m`, `1g`, `512k`, `1048576` -> bytes (docker's binary units)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise RunError(f"invalid size {text!r}: use a number with an optional b/k/m/g suffix")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def process_args(config: Mapping[str, Any], opts: RunOptions) -> list[str]:
    """Docker's rules: user args replace CMD; --entrypoint replaces ENTRYPOINT and clears CMD."""
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(config.get("Cmd") or [])
    if opts.entrypoint is not None:
        entrypoint = [opts.entrypoint] if opts.entrypoint else []
        cmd = []
    if opts.cmd:
        cmd = list(opts.cmd)
    args = entrypoint + cmd
    if not args:
        raise RunError("no command: the image has no Entrypoint or Cmd and none was given")
    return args


def merge_env(image_env: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """Image env, then -e K=V (replacing by key); a bare -e K takes the host's value."""
    env: dict[str, str] = {}
    for item in list(image_env) + list(overrides):
        key, sep, value = item.partition("=")
        if not key:
            raise RunError(f"invalid environment entry {item!r}")
        if not sep:
            if key not in os.environ:
                continue
            value = os.environ[key]
        env[key] = value
    return [f"{k}={v}" for k, v in env.items()]


def resolve_user(spec: str, rootfs: str) -> dict[str, int]:
    """`uid`, `uid:gid`, `name`, `name:group` -> the OCI user, names from the rootfs."""
    try:
        return passwd.resolve_user(spec, rootfs)
    except passwd.UserLookupError as exc:
        raise RunError(str(exc)) from None


def volume_mount(spec: str) -> dict[str, Any]:
    """-v SRC:DST[:ro|rw] -> a bind mount entry."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise RunError(f"invalid volume {spec!r}: use /host/path:/container/path[:ro]")
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise RunError(f"invalid volume mode {mode!r} in {spec!r}: ro or rw")
    src = os.path.abspath(parts[0])
    if not os.path.exists(src):
        raise RunError(f"volume source {src} does not exist")
    return {"destination": parts[1], "type": "bind", "source": src, "options": ["rbind", mode]}


def build_config(image_config: Mapping[str, Any], opts: RunOptions, rootfs: str) -> dict[str, Any]:
    """config.json for the container: runtime defaults, the image's config, the options."""
    from runtime.defaults import default_config

    cfg = dict(image_config.get("config") or {})
    config = default_config(process_args(cfg, opts), terminal=opts.tty)
    proc = config["process"]
    image_env = list(cfg.get("Env") or [])
    if not any(e.startswith("PATH=") for e in image_env):
        image_env.insert(0, proc["env"][0])
    proc["env"] = merge_env(image_env, opts.env)
    proc["cwd"] = opts.workdir or cfg.get("WorkingDir") or "/"
    if not proc["cwd"].startswith("/"):
        raise RunError(f"working directory {proc['cwd']!r} must be absolute")
    user = opts.user if opts.user is not None else cfg.get("User") or ""
    if user:
        proc["user"] = resolve_user(user, rootfs)
    config["root"] = {"path": "rootfs", "readonly": False}
    config["mounts"] += [volume_mount(v) for v in opts.volumes]
    resources = config["linux"].setdefault("resources", {})
    if opts.memory is not None:
        limit = parse_size(opts.memory)
        resources["memory"] = {"limit": limit, "swap": limit}
    if opts.cpus is not None:
        if opts.cpus <= 0:
            raise RunError(f"--cpus must be positive, not {opts.cpus}")
        resources["cpu"] = {"quota": int(opts.cpus * CPU_PERIOD), "period": CPU_PERIOD}
    if opts.pids_limit is not None:
        resources["pids"] = {"limit": opts.pids_limit}
    return config


@dataclass
class Paths:
    """Where containers' bundles and the runtime's state live."""

    run_dir: Path = DEFAULT_RUN_DIR
    runtime_root: str = DEFAULT_RUNTIME_ROOT


def run(store: ImageStore, image: Image, opts: RunOptions, paths: Paths) -> int:
    """Create and start a container from `image`, wait for it, return its exit code."""
    from runtime.create import CreateOptions, create
    from runtime.exec import wait_forwarding_signals
    from runtime.start import start
    from runtime.state import RuntimeRoot, validate_id

    cid = opts.name or uuid.uuid4().hex[:12]
    try:
        validate_id(cid)
    except Exception as exc:
        raise RunError(f"invalid container name {cid!r}: {exc}") from None
    rroot = RuntimeRoot(paths.runtime_root)
    if os.path.exists(os.path.join(paths.runtime_root, cid)):
        raise RunError(f"a container named {cid} exists")
    paths.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    bundle = paths.run_dir / cid
    try:
        bundle.mkdir(mode=0o700)
    except FileExistsError:
        raise RunError(f"a container named {cid} exists ({bundle})") from None
    key = SNAPSHOT_PREFIX + cid
    meta = {"id": cid, "image": image.name, "store": str(store.root), "snapshot": key}
    (bundle / META_FILE).write_text(json.dumps(meta))
    created = False
    try:
        mounts = store.rootfs_mounts(image, key, labels={"pinnace.io/container": cid})
        rootfs = bundle / "rootfs"
        rootfs.mkdir()
        mount_all(mounts, rootfs)
        image_config = json.loads(store.content.read(image.config.digest))
        config = build_config(image_config, opts, str(rootfs))
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        created = True
        if opts.tty:
            code = _run_with_tty(rroot, cid, bundle)
        else:
            state = create(rroot, cid, CreateOptions(str(bundle)))
            start(rroot, cid)
            code = wait_forwarding_signals(state.pid)
    except BaseException:
        remove(cid, paths, store=store, force=True, runtime=created)
        raise
    if code == 128 + 9 and _oom_kills(rroot, cid):
        print(
            "pinnace: the container was killed by the OOM killer (it hit its memory limit)",
            file=sys.stderr,
        )
    if opts.rm:
        remove(cid, paths, store=store, force=True)
    return code


def _oom_kills(rroot: RuntimeRoot, cid: str) -> int:
    """oom_kill from the container's memory.events (read before its cgroup goes), 0 if unknown."""
    from runtime.errors import RuntimeFailure

    try:
        cgroup_dir = rroot.get(cid).load().cgroup_dir
        with open(os.path.join(cgroup_dir, "memory.events")) as f:
            counts = dict(line.split() for line in f if line.strip())
    except (OSError, ValueError, RuntimeFailure):
        return 0
    return int(counts.get("oom_kill", 0))


def _run_with_tty(rroot: Any, cid: str, bundle: Path) -> int:
    """Create with a console socket, take the pty master, copy our stdio to and from it
    (our terminal raw meanwhile, its size passed on) until the container exits."""
    import fcntl
    import termios
    import threading
    import tty

    from runtime.console import ConsoleSocketServer
    from runtime.create import CreateOptions, create
    from runtime.exec import wait_forwarding_signals
    from runtime.start import start

    sock_path = str(bundle / "console.sock")
    with ConsoleSocketServer(sock_path) as server:
        state = create(rroot, cid, CreateOptions(str(bundle), console_socket=sock_path))
        master, _name = server.receive(timeout=30)
    saved = None
    try:
        if os.isatty(0):
            size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            saved = termios.tcgetattr(0)
            tty.setraw(0)
        start(rroot, cid)
        out = threading.Thread(target=_copy, args=(master, 1), daemon=True)
        out.start()
        threading.Thread(target=_copy, args=(0, master), daemon=True).start()
        code = wait_forwarding_signals(state.pid)
        out.join(timeout=5)  # the rest of the output, until the pty reports EIO
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)
    return code


def _copy(src: int, dst: int) -> None:
    while True:
        try:
            data = os.read(src, 65536)
        except OSError:  # EIO: the pty's other side is closed; EBADF: we closed it
            return
        if not data:
            return
        try:
            while data:
                data = data[os.write(dst, data) :]
        except OSError:
            return


def remove(
    cid: str,
    paths: Paths,
    *,
    store: ImageStore | None = None,
    force: bool = False,
    runtime: bool = True,
) -> None:
    """Delete the container from the runtime, unmount its root, drop its snapshot and bundle."""
    from runtime.delete import delete
    from runtime.state import RuntimeRoot

    if runtime:
        delete(RuntimeRoot(paths.runtime_root), cid, force=force)
    bundle = paths.run_dir / cid
    meta: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        meta = json.loads((bundle / META_FILE).read_text())
    if (bundle / "rootfs").exists():
        unmount_all(bundle / "rootfs")
    snapshot = meta.get("snapshot")
    if isinstance(snapshot, str):
        own = store
        if own is None and isinstance(meta.get("store"), str):
            own = ImageStore(meta["store"])
        if own is not None:
            with contextlib.suppress(SnapshotNotFoundError):
                own.snapshotter.remove(snapshot)
            if own is not store:
                own.close()
    shutil.rmtree(bundle, ignore_errors=True)


def containers(paths: Paths) -> list[dict[str, Any]]:
    """The runtime root's containers: id, status, pid, bundle, image (when ours)."""
    from runtime.state import RuntimeRoot

    out = []
    for cdir in RuntimeRoot(paths.runtime_root).all():
        try:
            state = cdir.load()
        except Exception:  # a container being deleted right now
            continue
        image = ""
        with contextlib.suppress(FileNotFoundError, ValueError, NotADirectoryError):
            image = str(json.loads((Path(state.bundle) / META_FILE).read_text()).get("image", ""))
        out.append(
            {
                "id": state.id,
                "status": cdir.status(state),
                "pid": state.pid,
                "image": image,
                "bundle": state.bundle,
                "created": state.created,
            }
        )
    return out


__all__ = [
    "ImageNotFoundError",
    "Paths",
    "RunError",
    "RunOptions",
    "build_config",
    "containers",
    "remove",
    "run",
]
