"""`exec`: run another process inside a running container.

A forked child joins the container's cgroup and namespaces (user first,
mount last), forks again so the process is inside the container's pid
namespace, and that grandchild takes on the process's identity and execs.
The joiner reports the grandchild's PID and exits; the runtime, a child
subreaper, inherits the grandchild and waits for it (unless --detach).
Like the init, both are non-dumpable until the execve.
"""

from __future__ import annotations

import gc
import os

from namespaces import signals
from namespaces import syscalls as sc
from namespaces.record import Record
from runtime import jsonio, process
from runtime.errors import InvalidState, RuntimeFailure, SpecError
from runtime.forked import (
    FLAGS,
    JOIN_ORDER,
    PR_SET_DUMPABLE,
    console_size,
    owner_uid,
    report_failure,
)
from runtime.state import CREATED, RUNNING, RuntimeRoot, container_cgroup_dir
from runtime.sync import Channel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

PR_SET_CHILD_SUBREAPER = 36
PROC_NS = {
    "user": "user",
    "ipc": "ipc",
    "uts": "uts",
    "network": "net",
    "pid": "pid",
    "cgroup": "cgroup",
    "time": "time",
    "mount": "mnt",
}


class ExecOptions(Record):
    __slots__ = (
        "additional_gids",
        "args",
        "caps",
        "console_socket",
        "cwd",
        "detach",
        "env",
        "no_new_privs",
        "pid_file",
        "preserve_fds",
        "process_file",
        "tty",
        "user",
    )

    def __init__(
        self,
        process_file: str | None = None,
        args: list[str] | None = None,
        tty: bool = False,
        detach: bool = False,
        pid_file: str | None = None,
        console_socket: str | None = None,
        env: list[str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        caps: list[str] | None = None,
        no_new_privs: bool = False,
        preserve_fds: int = 0,
        additional_gids: list[int] | None = None,
    ) -> None:
        self.process_file = process_file
        self.args = [] if args is None else args
        self.tty = tty
        self.detach = detach
        self.pid_file = pid_file
        self.console_socket = console_socket
        self.env = [] if env is None else env
        self.cwd = cwd
        self.user = user
        self.caps = [] if caps is None else caps
        self.no_new_privs = no_new_privs
        self.preserve_fds = preserve_fds
        self.additional_gids = [] if additional_gids is None else additional_gids


def exec_process_spec(config: dict[str, Any], opts: ExecOptions) -> dict[str, Any]:
    """The process to run: --process FILE, or the container's process with the flags applied."""
    if opts.process_file:
        try:
            with open(opts.process_file, "rb") as f:
                proc: dict[str, Any] = jsonio.loads(f.read())
        except (OSError, ValueError) as exc:
            raise SpecError("--process", f"cannot read {opts.process_file}: {exc}") from None
        return proc
    if not opts.args:
        raise RuntimeFailure("exec needs a command (arguments, or --process FILE)")
    base: dict[str, Any] = jsonio.loads(jsonio.dumps(config.get("process") or {}))
    base["args"] = list(opts.args)
    base["terminal"] = opts.tty
    env = list(base.get("env") or []) + list(opts.env)
    base["env"] = env
    if opts.cwd:
        base["cwd"] = opts.cwd
    if opts.user:
        uid, _, gid = opts.user.partition(":")
        try:
            base["user"] = {"uid": int(uid), "gid": int(gid or 0)}
        except ValueError:
            raise RuntimeFailure(f"--user wants UID[:GID], not {opts.user!r}") from None
    if opts.additional_gids:
        base.setdefault("user", {})["additionalGids"] = opts.additional_gids
    if opts.caps:
        caps = base.setdefault("capabilities", {})
        for kind in ("bounding", "effective", "permitted", "ambient"):
            caps[kind] = sorted(set(caps.get(kind) or []) | set(opts.caps))
    if opts.no_new_privs:
        base["noNewPrivileges"] = True
    return base


def exec_in(root: RuntimeRoot, cid: str, opts: ExecOptions) -> int:
    """Run the process; its exit status (128+N for signal N), or 0 with --detach."""
    cdir = root.get(cid)
    state = cdir.load()
    status = cdir.status(state)
    if status not in (RUNNING, CREATED):
        raise InvalidState(f"cannot exec in a {status} container", container=cid)
    with open(state.config_path, "rb") as f:
        config = jsonio.loads(f.read())
    proc = exec_process_spec(config, opts)
    if proc.get("terminal") and not opts.console_socket:
        raise RuntimeFailure(
            "--tty needs --console-socket to receive the pty master", container=cid
        )
    plan = process.plan_process(proc, config.get("linux") or {}, rootfs=state.rootfs)
    plan = process.with_compiled_seccomp(plan, root.seccomp_cache)
    s = sc.libc()
    s.prctl(PR_SET_CHILD_SUBREAPER, 1)
    from cgroups import procs  # not the manager: exec sets no limits (~1 ms of imports)

    cgroup = container_cgroup_dir(state)
    if not cgroup:
        raise RuntimeFailure("cannot find the container's cgroup", container=cid)
    console_fd = None
    if opts.console_socket:
        from runtime import console

        console_fd = console.connect_console_socket(opts.console_socket)
    ours, theirs = Channel.pair()
    forked = procs.fork_into(cgroup)  # the joiner born in the cgroup; None: fork + add_process
    child = os.fork() if forked is None else forked
    if child == 0:
        gc.disable()  # a forked child runs no finalizers of its parent's objects (gRPC's hang)
        ours.close()
        pty = None
        if console_fd is not None:
            pty = (console_fd, console_size({"process": proc}), owner_uid({"process": proc}))
        _joiner(theirs, state.pid, plan, opts, s, pty)
    theirs.close()
    if console_fd is not None:
        os.close(console_fd)  # the joiner has its copy
    try:
        if forked is None:
            procs.add_process(cgroup, child)
        ours.send("go")
        # the joiner's "pid" and its child's "ready" may arrive in either order
        got = {m["type"]: m for m in (ours.recv("pid", "ready"), ours.recv("pid", "ready"))}
        if set(got) != {"pid", "ready"}:
            raise RuntimeFailure("exec setup answered out of turn", container=cid)
        pid = int(got["pid"]["pid"])
    except BaseException:
        try:
            os.kill(child, signals.SIGKILL)
        except ProcessLookupError:
            pass
        raise
    finally:
        try:
            os.waitpid(child, 0)
        except ChildProcessError:
            pass
        ours.close()
    if opts.pid_file:
        from runtime.create import _write_pid_file

        _write_pid_file(opts.pid_file, pid)
    if opts.detach:
        return 0
    return wait_forwarding_signals(pid)


def _joiner(
    ch: Channel,
    init_pid: int,
    plan: Any,
    opts: ExecOptions,
    s: sc.Syscalls,
    pty: tuple[int, tuple[int, int] | None, int | None] | None,
) -> NoReturn:
    try:
        s.prctl(PR_SET_DUMPABLE, 0)
        process.preload(plan)
        if pty is not None:
            from runtime import console

            console.preload()
        ch.recv("go")  # we are in the container's cgroup now
        own = {t: os.stat(f"/proc/self/ns/{p}").st_ino for t, p in PROC_NS.items()}
        fds = {}
        for t, p in PROC_NS.items():
            path = f"/proc/{init_pid}/ns/{p}"
            try:
                if os.stat(path).st_ino != own[t]:
                    fds[t] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                pass
        for t in JOIN_ORDER:
            if t in fds:
                s.setns(fds[t], FLAGS[t])
                os.close(fds[t])
        pid = os.fork()
        if pid == 0:
            try:
                if pty is not None:
                    from runtime import console  # preloaded

                    console.setup_exec_console(pty[0], sys=s, size=pty[1], owner_uid=pty[2])
                process.apply_identity(plan, sys=s)
                ch.send("ready")
                ch.close()
            except BaseException as exc:
                report_failure(ch, exc)
            process.exec_process(plan, preserve_fds=opts.preserve_fds, sys=s)
        ch.send("pid", pid=pid)
        os._exit(0)
    except BaseException as exc:
        report_failure(ch, exc)


def wait_forwarding_signals(pid: int) -> int:
    """Wait for `pid` (our child, or an orphan we reap as subreaper), passing signals on.

    Returns its exit status, or 128+N when signal N killed it, as shells do.
    """
    forwarded = (
        signals.SIGINT,
        signals.SIGTERM,
        signals.SIGHUP,
        signals.SIGQUIT,
        signals.SIGUSR1,
        signals.SIGUSR2,
        signals.SIGWINCH,
    )

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    old = {sig: signals.set_handler(sig, forward) for sig in forwarded}
    try:
        while True:
            try:
                got, status = os.waitpid(pid, 0)
            except InterruptedError:
                continue
            if got == pid:
                break
    finally:
        for sig, handler in old.items():
            signals.set_handler(sig, handler)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
