"""`create`: set a container up completely and leave its init waiting for `start`.

All or nothing: every check of config.json runs before anything is made,
and a failure after that kills what was started and removes the cgroup and
the state directory, so a failed create leaves nothing behind.
"""

from __future__ import annotations

import gc
import os
import time

from namespaces import syscalls as sc
from namespaces.record import Record
from namespaces.signals import SIGKILL
from runtime import process, rootfs, spec
from runtime.errors import RuntimeFailure, SpecError
from runtime.init import InitContext, bootstrap, direct_flags, init
from runtime.state import (
    CREATED,
    CREATING,
    DEFAULT_CGROUP_PARENT,
    ContainerState,
    RuntimeRoot,
    proc_start_time,
    remove_empty_parent,
)
from runtime.sync import Channel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PR_SET_CHILD_SUBREAPER = 36


class CreateOptions(Record):
    __slots__ = ("bundle", "console_socket", "no_pivot", "pid_file", "preserve_fds")

    def __init__(
        self,
        bundle: str,
        pid_file: str | None = None,
        console_socket: str | None = None,
        no_pivot: bool = False,
        preserve_fds: int = 0,
    ) -> None:
        self.bundle = bundle
        self.pid_file = pid_file
        self.console_socket = console_socket
        self.no_pivot = no_pivot
        self.preserve_fds = preserve_fds


class Prepared(Record):
    """config.json, checked: what the runtime and the init need to make the container."""

    __slots__ = (
        "cgroup",
        "config",
        "device_rules",
        "gid_maps",
        "namespaces",
        "plan",
        "resources",
        "rootfs",
        "uid_maps",
    )

    def __init__(
        self,
        config: dict[str, Any],
        rootfs: str,
        namespaces: list[spec.NamespaceSpec],
        uid_maps: list[tuple[int, int, int]],
        gid_maps: list[tuple[int, int, int]],
        plan: Any,
        resources: Any,
        device_rules: list[Any],
        cgroup: str,
    ) -> None:
        self.config = config
        self.rootfs = rootfs
        self.namespaces = namespaces
        self.uid_maps = uid_maps
        self.gid_maps = gid_maps
        self.plan = plan
        self.resources = resources
        self.device_rules = device_rules
        self.cgroup = cgroup


def prepare(cid: str, opts: CreateOptions) -> Prepared:
    """Every check that can fail on the input, before anything exists."""
    from cgroups.devices import DeviceRuleError, parse_rules
    from cgroups.errors import ResourceError
    from cgroups.resources import Resources

    bundle = opts.bundle
    config = spec.load_config(bundle)
    rootfs_path = spec.check_top(config, bundle)
    nss = spec.namespaces(config)
    if not spec.new_namespace(nss, "mount"):
        raise SpecError("linux.namespaces", "a new mount namespace is required")
    uid_maps, gid_maps = spec.id_maps(config, "uidMappings"), spec.id_maps(config, "gidMappings")
    if spec.new_namespace(nss, "user") and not (uid_maps and gid_maps):
        raise SpecError("linux.uidMappings", "a new user namespace needs uid and gid mappings")
    linux = config.get("linux") or {}
    plan = process.plan_process(config["process"], linux, rootfs=rootfs_path)
    rootfs.validate_rootfs(config, bundle)
    if config.get("hooks") is not None:
        from runtime import hooks

        hooks.validate_hooks(config["hooks"])
    terminal = bool(config["process"].get("terminal"))
    if terminal and not opts.console_socket:
        raise RuntimeFailure(
            "process.terminal is true: pass --console-socket to receive the pty master",
            container=cid,
        )
    if opts.console_socket and not terminal:
        raise RuntimeFailure("--console-socket given but process.terminal is false", container=cid)
    raw = linux.get("resources") or {}
    try:
        resources = Resources.from_oci(raw)
    except ResourceError as exc:
        raise SpecError("linux.resources", str(exc)) from None
    try:
        rules = parse_rules(raw.get("devices"))
    except DeviceRuleError as exc:
        raise SpecError("linux.resources.devices", str(exc)) from None
    cgroup = linux.get("cgroupsPath") or f"/{DEFAULT_CGROUP_PARENT}/{cid}"
    if ":" in cgroup:
        raise SpecError(
            "linux.cgroupsPath",
            f"{cgroup!r} is in systemd's slice:prefix:name form; Pinnace manages cgroupfs paths",
        )
    return Prepared(config, rootfs_path, nss, uid_maps, gid_maps, plan, resources, rules, cgroup)


def device_policy(rules: list[Any]) -> list[Any]:
    """Deny all, then the spec's rules, then the defaults every container needs (/dev/null,
    zero, full, random, urandom, tty, ptmx, pts). As with runc, a device that
    linux.devices creates is not allowed by that alone: linux.resources.devices must
    allow it (engines add both), so a device asked for read-only stays read-only."""
    from cgroups.devices import DEFAULT_ALLOWED, DENY_ALL

    return [DENY_ALL, *rules, *DEFAULT_ALLOWED]


def create(root: RuntimeRoot, cid: str, opts: CreateOptions) -> ContainerState:
    opts.bundle = os.path.abspath(opts.bundle)
    p = prepare(cid, opts)
    p.plan = process.with_compiled_seccomp(p.plan, root.seccomp_cache)
    from cgroups.manager import CgroupV2Manager

    cdir = root.new(cid)
    state = ContainerState(
        id=cid,
        bundle=opts.bundle,
        rootfs=p.rootfs,
        created=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        + f".{time.time_ns() % 10**9:09d}Z",
        owner="root" if os.geteuid() == 0 else str(os.geteuid()),
        cgroup=p.cgroup,
        annotations=dict(p.config.get("annotations") or {}),
        hooks=dict(p.config.get("hooks") or {}),
        config_path=os.path.join(opts.bundle, "config.json"),
        status=CREATING,
        resources=dict((p.config.get("linux") or {}).get("resources") or {}),
        creator=os.getpid(),
        creator_start=proc_start_time(os.getpid()) or 0,
    )
    cdir.save(state)
    manager = None
    child = 0
    console_fd: int | None = None
    fifo_fd = -1
    try:
        if opts.console_socket:
            from runtime import console

            console_fd = console.connect_console_socket(opts.console_socket)
        fifo = cdir.fifo
        os.mkfifo(fifo, 0o622)
        os.chmod(fifo, 0o622)  # any container uid may open it to signal readiness
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
        cgroup = CgroupV2Manager(p.cgroup)
        # before `manager` is set, so that _undo never destroys another container's cgroup
        _refuse_a_cgroup_in_use(cgroup.dir, cid)
        manager = cgroup
        manager.create(p.resources)
        state.cgroup_dir = manager.dir
        manager.apply(p.resources)  # limits in place before any process joins
        ctx = InitContext(
            config=p.config,
            bundle=opts.bundle,
            rootfs=p.rootfs,
            namespaces=p.namespaces,
            plan=p.plan,
            fifo_fd=fifo_fd,
            no_pivot=opts.no_pivot,
            console_fd=console_fd,
            preserve_fds=opts.preserve_fds,
            cgroup_dir=manager.dir,
        )
        s = sc.libc()
        # Orphans of the bootstrap (the init) come back to us, so `run` can wait for them.
        s.prctl(PR_SET_CHILD_SUBREAPER, 1)
        ours, theirs = Channel.pair()
        flags = direct_flags(p.namespaces)
        # The child born in the cgroup (and, with `flags`, in its new namespaces: then it is
        # the init itself); None: fork + add_process, and the bootstrap.
        forked = manager.fork_into(flags or 0)
        direct = forked is not None and flags is not None
        child = os.fork() if forked is None else forked
        if child == 0:
            gc.disable()  # a forked child runs no finalizers of its parent's objects (gRPC's hang)
            ours.close()
            if direct:
                init(theirs, ctx, s)  # never returns
            bootstrap(theirs, ctx, s)  # never returns
        theirs.close()
        os.close(fifo_fd)  # the init has its copy
        fifo_fd = -1
        if console_fd is not None:
            os.close(console_fd)  # the init has its copy
            console_fd = None
        if not direct:
            if forked is None:
                manager.add_process(child)
            ours.send("go")
        # The device program is loaded while the init imports and mounts (two cores: ~1.5 ms
        # off every create). It is in place before the init may go past "prepivot", which
        # is where runc applies a cgroup's limits too: after the rootfs is made. Nothing the
        # init does before that opens a device, and the defaults allow every mknod.
        from cgroups.devices import apply_device_rules

        apply_device_rules(s, manager.dir, device_policy(p.device_rules))
        if direct:
            msg: dict[str, Any] = {"type": "init", "pid": child}
        else:
            msg = ours.recv("userns", "init")
        if msg["type"] == "userns":
            from namespaces.userns import IDMap, write_maps

            write_maps(child, [IDMap(*m) for m in p.uid_maps], [IDMap(*m) for m in p.gid_maps])
            trees = _idmapped_trees(p.config, opts.bundle, child, s)
            try:
                ours.send_fds("maps", list(trees.values()), idmap_indexes=list(trees))
            finally:
                for fd in trees.values():
                    os.close(fd)
            msg = ours.recv("init")
        if not direct:  # the bootstrap has exited; the init is its orphan, now ours
            os.waitpid(child, 0)
            child = 0
        state.pid = int(msg["pid"])
        state.pid_start = proc_start_time(state.pid) or 0
        oom = p.config["process"].get("oomScoreAdj")
        if oom is not None:
            process.apply_oom_score_adj(state.pid, int(oom))
        ours.recv("prepivot")
        hook_state = state.oci(CREATING)
        for kind in ("prestart", "createRuntime"):
            if state.hooks.get(kind):
                from runtime import hooks

                hooks.run_hooks(kind, state.hooks[kind], hook_state, cwd=opts.bundle)
        ours.send("continue", state=hook_state)
        ours.recv("ready")
        ours.close()
        state.status = CREATED
        cdir.save(state)
        cdir.save_front_end_record(state)
        if opts.pid_file:
            _write_pid_file(opts.pid_file, state.pid)
        return state
    except BaseException:
        if console_fd is not None:
            os.close(console_fd)
        if fifo_fd >= 0:
            os.close(fifo_fd)
        _undo(state, child, manager)
        cdir.remove()
        raise


def _idmapped_trees(
    config: dict[str, Any], bundle: str, child: int, s: sc.Syscalls
) -> dict[int, int]:
    """Idmapped clones of the idmap/ridmap mounts' sources, for a container with a user
    namespace: made here, where the host's filesystems can still be idmapped, through
    the container's user namespace (the bootstrap's, its maps already written)."""
    wants = any(
        {"idmap", "ridmap"} & set(m.get("options") or []) for m in config.get("mounts") or []
    )
    if not wants:
        return {}
    userns = os.open(f"/proc/{child}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return rootfs.open_idmapped_trees(config, bundle, sys=s, userns_fd=userns)
    finally:
        os.close(userns)


def _refuse_a_cgroup_in_use(cgroup_dir: str, cid: str) -> None:
    """Refuse a cgroup that already has processes (in it or below), as runc does: its
    processes are another container's, and deleting this one would kill them. Two
    containers get the same cgroup when they share an id across --root directories
    (the default path is /pinnace/ID) or name the same linux.cgroupsPath."""
    from cgroups.errors import CgroupNotFound
    from cgroups.event_wait import read_event

    try:
        populated = read_event(cgroup_dir, "populated")
    except CgroupNotFound:  # the usual case: a new cgroup
        return
    if populated:
        raise RuntimeFailure(
            f"the container's cgroup is not empty: {cgroup_dir} has processes "
            "(another container's?); give this one its own linux.cgroupsPath",
            container=cid,
        )


def _undo(state: ContainerState, child: int, manager: Any) -> None:
    """Kill what a failed create started and remove its cgroup."""
    for pid in (child, state.pid):
        if pid:
            try:
                os.kill(pid, SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    if manager is not None:
        try:
            manager.destroy()
        except Exception:  # best effort: the create's own error is what the user sees
            pass
        remove_empty_parent(manager.dir)


def _write_pid_file(path: str, pid: int) -> None:
    """Atomically, as runc does: engines poll for the file and must never read it half-written."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)
