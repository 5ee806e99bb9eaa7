"""What runs inside the container before its process: the bootstrap and the init.

Both are forked from the runtime process (no new interpreter, so no Python
start-up cost per container). The bootstrap enters and creates the
namespaces and forks the init, which becomes PID 1 of a new pid namespace;
the init builds the root filesystem, pivots into it, takes on the process's
identity and waits on the exec fifo until `start`. When every namespace is
new and none needs a step between its creation and the init's birth
(`direct_flags`), the runtime clones the init straight into them and there
is no bootstrap. See docs/RUNTIME-DESIGN.md.

Both are non-dumpable from their first step: while they still run the
host's Python, no process in the container may open /proc/PID/exe or
their memory (CVE-2019-5736). execve of the container's program resets it.
"""

from __future__ import annotations

import os

from namespaces import syscalls as sc
from namespaces.record import Record
from runtime import process, rootfs
from runtime.forked import (
    FLAGS,
    JOIN_ORDER,
    PR_SET_DUMPABLE,
    console_size,
    owner_uid,
    report_failure,
)
from runtime.spec import NamespaceSpec
from runtime.sync import Channel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


class InitContext(Record):
    """Everything the bootstrap and init need, decided by the runtime before it forks."""

    __slots__ = (
        "bundle",
        "cgroup_dir",
        "config",
        "console_fd",
        "fifo_fd",
        "idmap_trees",
        "namespaces",
        "no_pivot",
        "plan",
        "preserve_fds",
        "rootfs",
    )

    def __init__(
        self,
        config: dict[str, Any],
        bundle: str,
        rootfs: str,
        namespaces: list[NamespaceSpec],
        plan: Any,  # runtime.process.ProcessPlan
        fifo_fd: int,  # O_PATH on exec.fifo, opened by the runtime: the init may not reach --root
        no_pivot: bool,
        console_fd: int | None,  # connected to --console-socket (host paths die at pivot)
        preserve_fds: int,
        cgroup_dir: str | None,  # the container's cgroup directory on the host
        # mount index -> detached idmapped tree, made by the runtime for a container with
        # its own user namespace (the init has no rights over the host's filesystems then)
        idmap_trees: dict[int, int] | None = None,
    ) -> None:
        self.config = config
        self.bundle = bundle
        self.rootfs = rootfs
        self.namespaces = namespaces
        self.plan = plan
        self.fifo_fd = fifo_fd
        self.no_pivot = no_pivot
        self.console_fd = console_fd
        self.preserve_fds = preserve_fds
        self.cgroup_dir = cgroup_dir
        self.idmap_trees = dict() if idmap_trees is None else idmap_trees


def direct_flags(namespaces: list[NamespaceSpec]) -> int | None:
    """The CLONE_NEW* flags to clone the init straight into its namespaces, or None when
    the bootstrap must make them: to join one by path (setns before the fork), for a user
    namespace (its maps are written between unshare and the rest), a time namespace
    (offsets are written before the first child) or a cgroup namespace (its root must be
    the container's cgroup, which unshare inside that cgroup gives). Otherwise one clone
    makes the init, and the bootstrap's fork, exit and reaping are saved (~2 ms)."""
    flags = 0
    for n in namespaces:
        if n.path is not None or n.type in ("user", "time", "cgroup"):
            return None
        flags |= FLAGS[n.type]
    return flags


def bootstrap(ch: Channel, ctx: InitContext, sys: sc.Syscalls) -> NoReturn:
    """Enter/create namespaces, fork the init, report its PID, exit."""
    try:
        sys.prctl(PR_SET_DUMPABLE, 0)
        ch.recv("go")  # the runtime has put us in the container's cgroup
        joined = {n.type: n.path for n in ctx.namespaces if n.path}
        fds = {t: os.open(p, os.O_RDONLY | os.O_CLOEXEC) for t, p in joined.items()}
        for t in JOIN_ORDER:
            if t in fds:
                try:
                    sys.setns(fds[t], FLAGS[t])
                except sc.SyscallError as exc:
                    raise OSError(
                        exc.errno, f"cannot join {t} namespace: {exc.strerror}", joined[t]
                    ) from None
                os.close(fds[t])
        new = {n.type for n in ctx.namespaces if n.path is None}
        if "user" in new:
            sys.unshare(sc.CLONE_NEWUSER)
            ch.send("userns")
            maps_msg, tree_fds = ch.recv_fds("maps")
            ctx.idmap_trees = dict(zip(maps_msg.get("idmap_indexes", []), tree_fds, strict=True))
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        flags = 0
        for t in new - {"user"}:
            flags |= FLAGS[t]
        if flags:
            sys.unshare(flags)
        if "time" in new:
            _write_time_offsets(ctx.config)
        # The init must not speak on the channel before our "init" is sent: under load
        # the child can run first, and the runtime reads the messages in order.
        said_r, said_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(said_w)
            os.read(said_r, 1)  # EOF once the bootstrap has spoken (or died)
            os.close(said_r)
            init(ch, ctx, sys)
        os.close(said_r)
        ch.send("init", pid=pid)
        os.close(said_w)
        os._exit(0)
    except BaseException as exc:
        report_failure(ch, exc)


def _write_time_offsets(config: dict[str, Any]) -> None:
    offsets = (config.get("linux") or {}).get("timeOffsets") or {}
    lines = []
    for clock in ("monotonic", "boottime"):
        if clock in offsets:
            o = offsets[clock]
            lines.append(f"{clock} {int(o.get('secs', 0))} {int(o.get('nanosecs', 0))}\n")
    if lines:
        with open("/proc/self/timens_offsets", "w") as f:
            f.write("".join(lines))


def _preload(ctx: InitContext) -> None:
    """Import now what the init may need after pivot_root (lazy imports would fail then),
    and only that: each module costs the create path its import time."""
    process.preload(ctx.plan)
    rootfs.preload()
    if _container_hooks(ctx.config, "createContainer", "startContainer"):
        from runtime import hooks

        hooks.preload()
    if ctx.console_fd is not None:
        from runtime import console

        console.preload()
    if os.environ.get("PINNACE_OCI_DEBUG"):
        import traceback  # noqa: F401  (report_failure)


def _container_hooks(config: dict[str, Any], *kinds: str) -> list[dict[str, Any]]:
    """The config's hooks of these kinds, in order."""
    found = config.get("hooks") or {}  # validated by create
    return [h for kind in kinds for h in found.get(kind) or []]


def init(ch: Channel, ctx: InitContext, sys: sc.Syscalls) -> NoReturn:
    """The container's PID 1 until it execs the container's process."""
    try:
        sys.prctl(PR_SET_DUMPABLE, 0)
        # Nothing is imported after pivot_root: the host's site-packages are gone then.
        _preload(ctx)
        in_userns = any(n.type == "user" for n in ctx.namespaces)
        fifo_fd = ctx.fifo_fd
        rootfs.prepare_rootfs(
            ctx.config,
            ctx.bundle,
            sys=sys,
            in_userns=in_userns,
            cgroup_path=ctx.cgroup_dir,
            idmap_trees=ctx.idmap_trees,
        )
        for fd in ctx.idmap_trees.values():
            os.close(fd)
        if ctx.config.get("hostname"):
            sys.sethostname(ctx.config["hostname"])
        if ctx.config.get("domainname"):
            sys.setdomainname(ctx.config["domainname"])
        ch.send("prepivot")
        state = ch.recv("continue")["state"]
        container_hooks = _container_hooks(ctx.config, "createContainer")
        if container_hooks:
            from runtime import hooks  # preloaded

            hooks.run_hooks("createContainer", container_hooks, state, cwd=ctx.bundle)
        rootfs.pivot_into(ctx.rootfs, no_pivot=ctx.no_pivot, sys=sys)
        if ctx.console_fd is not None:
            from runtime import console  # preloaded

            console.setup_console(
                ctx.console_fd,
                sys=sys,
                size=console_size(ctx.config),
                owner_uid=owner_uid(ctx.config),
            )
        process.apply_sysctls(ctx.plan)
        rootfs.finish_rootfs(ctx.config, sys=sys)
        process.apply_identity(ctx.plan, sys=sys)
        ch.send("ready")
        ch.close()
    except BaseException as exc:
        report_failure(ch, exc)
    # Created. Block until `start` opens the fifo for reading.
    try:
        fd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, b"0")
        os.close(fd)
        os.close(fifo_fd)
        start_hooks = _container_hooks(ctx.config, "startContainer")
        if start_hooks:
            from runtime import hooks  # preloaded

            hooks.run_hooks("startContainer", start_hooks, state, cwd="/")
    except BaseException as exc:
        os.write(2, f"pinnace-oci init: {exc}\n".encode(errors="replace"))
        os._exit(1)
    process.exec_process(ctx.plan, preserve_fds=ctx.preserve_fds, sys=sys)
