"""The container's process: what config.json's `process` asks, checked, then made real.

`plan_process` is pure validation (the runtime calls it before forking,
so a bad config fails early and creates nothing); the container's init
then calls `apply_sysctls`, `apply_identity` and `exec_process`, in that
order (docs/RUNTIME-DESIGN.md). The runtime itself calls
`apply_oom_score_adj` on the init's PID.

OCI runtime spec 1.2: config.md "Process" and "User"; config-linux.md
"Sysctl", "Seccomp" and "Personality".
"""

from __future__ import annotations

import errno
import os
import resource
import stat

from namespaces import rootpath, signals
from namespaces.record import FrozenRecord
from namespaces.syscalls import SyscallError, Syscalls
from runtime import capabilities as caps
from runtime.capabilities import CapabilityPlan
from runtime.errors import ExecLookupError, ProcessSetupError, SpecError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~9 ms)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, NoReturn, TypeGuard

    from runtime.seccomp import SeccompProgram  # imported only when a config has a filter

PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38

MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to setresuid: not an id
RLIM_INFINITY_OCI = 2**64 - 1
RLIMITS: dict[str, int] = {
    "RLIMIT_CPU": resource.RLIMIT_CPU,
    "RLIMIT_FSIZE": resource.RLIMIT_FSIZE,
    "RLIMIT_DATA": resource.RLIMIT_DATA,
    "RLIMIT_STACK": resource.RLIMIT_STACK,
    "RLIMIT_CORE": resource.RLIMIT_CORE,
    "RLIMIT_RSS": resource.RLIMIT_RSS,
    "RLIMIT_NPROC": resource.RLIMIT_NPROC,
    "RLIMIT_NOFILE": resource.RLIMIT_NOFILE,
    "RLIMIT_MEMLOCK": resource.RLIMIT_MEMLOCK,
    "RLIMIT_AS": resource.RLIMIT_AS,
    "RLIMIT_LOCKS": 10,  # asm-generic/resource.h; Python's resource module lacks it
    "RLIMIT_SIGPENDING": resource.RLIMIT_SIGPENDING,
    "RLIMIT_MSGQUEUE": resource.RLIMIT_MSGQUEUE,
    "RLIMIT_NICE": resource.RLIMIT_NICE,
    "RLIMIT_RTPRIO": resource.RLIMIT_RTPRIO,
    "RLIMIT_RTTIME": resource.RLIMIT_RTTIME,
}

PERSONALITY_DOMAINS = {"LINUX": 0x0000, "LINUX32": 0x0008}

# Sysctls that live in a namespace the container can have its own of (runc's list).
IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
SYSCTL_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-/")
MAX_SYSCTL_KEY = 255
MAX_SYSCTL_VALUE = 4095  # proc_dostring takes at most a page, newline included

OOM_SCORE_ADJ_RANGE = (-1000, 1000)
MAX_FD = 2**32 - 1  # close_range's "to the end" (~0U)
NOT_FOUND_IN_PATH = "executable file not found in $PATH"


class User(FrozenRecord):
    __slots__ = ("additional_gids", "gid", "uid", "umask")

    def __init__(
        self,
        uid: int = 0,
        gid: int = 0,
        umask: int | None = None,  # None: keep the runtime's (the spec says unchanged)
        additional_gids: tuple[int, ...] = (),
    ) -> None:
        self.uid = uid
        self.gid = gid
        self.umask = umask
        self.additional_gids = additional_gids


class Rlimit(FrozenRecord):
    __slots__ = ("field", "hard", "resource", "soft", "type")

    def __init__(self, type: str, resource: int, soft: int, hard: int, field: str) -> None:
        self.type = type  # RLIMIT_NOFILE
        self.resource = resource  # resource.RLIMIT_NOFILE
        self.soft = soft  # RLIM_INFINITY_OCI for unlimited
        self.hard = hard
        self.field = field  # process.rlimits[i]


class Sysctl(FrozenRecord):
    __slots__ = ("field", "key", "path", "value")

    def __init__(self, key: str, value: str, path: str, field: str) -> None:
        self.key = key  # as written in config.json
        self.value = value
        self.path = path  # relative to /proc/sys
        self.field = field


class ProcessPlan(FrozenRecord):
    """Everything the init needs to become the container's process, already checked."""

    __slots__ = (
        "args",
        "capabilities",
        "cwd",
        "env",
        "no_new_privileges",
        "notes",
        "oom_score_adj",
        "personality",
        "rlimits",
        "seccomp",
        "sysctls",
        "user",
    )

    def __init__(
        self,
        args: tuple[str, ...],
        env: tuple[str, ...],
        cwd: str,
        user: User,
        rlimits: tuple[Rlimit, ...] = (),
        capabilities: CapabilityPlan | None = None,
        no_new_privileges: bool = False,
        personality: int | None = None,
        seccomp: SeccompProgram | None = None,
        sysctls: tuple[Sysctl, ...] = (),
        oom_score_adj: int | None = None,
        notes: tuple[str, ...] = (),  # what was ignored or adjusted, for the runtime's log
    ) -> None:
        self.args = args
        self.env = env
        self.cwd = cwd
        self.user = user
        self.rlimits = rlimits
        self.capabilities = CapabilityPlan() if capabilities is None else capabilities
        self.no_new_privileges = no_new_privileges
        self.personality = personality
        self.seccomp = seccomp
        self.sysctls = sysctls
        self.oom_score_adj = oom_score_adj
        self.notes = notes


# --- plan: validation ----------------------------------------------------------------------


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _id(v: Any, where: str) -> int:
    if not _is_int(v) or not 0 <= v <= MAX_ID:
        raise SpecError(where, f"must be an id between 0 and {MAX_ID}, not {v!r}")
    return int(v)


def _string_list(raw: Any, where: str, *, required: bool) -> list[str]:
    if raw is None and not required:
        return []
    if not isinstance(raw, list):
        raise SpecError(where, "must be an array of strings")
    for i, s in enumerate(raw):
        if not isinstance(s, str):
            raise SpecError(f"{where}[{i}]", f"must be a string, not {s!r}")
        if "\0" in s:
            raise SpecError(f"{where}[{i}]", "contains a NUL byte")
    return raw


def _args(raw: Any) -> tuple[str, ...]:
    if raw is None:
        raise SpecError("process.args", "missing: the process needs a program to run")
    args = _string_list(raw, "process.args", required=True)
    if not args:
        raise SpecError("process.args", "must not be empty")
    if not args[0]:
        raise SpecError("process.args[0]", "must name a program")
    return tuple(args)


def _env(raw: Any) -> tuple[str, ...]:
    env = _string_list(raw, "process.env", required=False)
    for i, entry in enumerate(env):
        name, eq, _ = entry.partition("=")
        if not eq:
            raise SpecError(f"process.env[{i}]", f"{entry!r} is not in KEY=VALUE form")
        if not name:
            raise SpecError(f"process.env[{i}]", f"{entry!r} has an empty name")
    return tuple(env)


def _cwd(raw: Any) -> str:
    if raw is None:
        raise SpecError("process.cwd", "missing")
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise SpecError("process.cwd", f"must be an absolute path, not {raw!r}")
    if "\0" in raw:
        raise SpecError("process.cwd", "contains a NUL byte")
    return raw


def _user(raw: Any, notes: list[str]) -> User:
    if raw is None:
        return User()  # the Go spec types make a missing user uid 0, gid 0
    if not isinstance(raw, dict):
        raise SpecError("process.user", "must be an object")
    uid = _id(raw.get("uid", 0), "process.user.uid")
    gid = _id(raw.get("gid", 0), "process.user.gid")
    umask = raw.get("umask")
    if umask is not None and (not _is_int(umask) or not 0 <= umask <= 0o777):
        raise SpecError("process.user.umask", f"must be between 0 and 0o777, not {umask!r}")
    gids_raw = raw.get("additionalGids") or []
    if not isinstance(gids_raw, list):
        raise SpecError("process.user.additionalGids", "must be an array of gids")
    gids = tuple(_id(g, f"process.user.additionalGids[{i}]") for i, g in enumerate(gids_raw))
    if raw.get("username"):
        notes.append("process.user.username: only meaningful on Windows: ignored")
    return User(uid, gid, umask, gids)


def _rlimits(raw: Any) -> tuple[Rlimit, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError("process.rlimits", "must be an array")
    out: list[Rlimit] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(raw):
        where = f"process.rlimits[{i}]"
        if not isinstance(r, dict):
            raise SpecError(where, "must be an object with type, soft and hard")
        kind = r.get("type")
        if not isinstance(kind, str) or kind not in RLIMITS:
            raise SpecError(f"{where}.type", f"unknown resource limit {kind!r}")
        if kind in seen:
            raise SpecError(f"{where}.type", f"{kind} already set by process.rlimits[{seen[kind]}]")
        seen[kind] = i
        values = []
        for key in ("soft", "hard"):
            v = r.get(key)
            if not _is_int(v) or not 0 <= v <= RLIM_INFINITY_OCI:
                raise SpecError(f"{where}.{key}", f"must be an unsigned 64-bit integer, not {v!r}")
            if 2**63 <= v < RLIM_INFINITY_OCI:
                raise SpecError(
                    f"{where}.{key}", f"{v} is out of range (use {RLIM_INFINITY_OCI} for unlimited)"
                )
            values.append(int(v))
        soft, hard = values
        if soft > hard:
            raise SpecError(where, f"soft limit {soft} is above the hard limit {hard}")
        out.append(Rlimit(kind, RLIMITS[kind], soft, hard, where))
    return tuple(out)


def _personality(raw: Any, notes: list[str]) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("linux.personality", "must be an object")
    domain = raw.get("domain")
    if domain not in PERSONALITY_DOMAINS:
        raise SpecError(
            "linux.personality.domain",
            f"unknown execution domain {domain!r} (LINUX or LINUX32)",
        )
    flags = raw.get("flags") or []
    if not isinstance(flags, list):
        raise SpecError("linux.personality.flags", "must be an array")
    if flags:
        notes.append("linux.personality.flags: no flag is defined by the spec yet: ignored")
    return PERSONALITY_DOMAINS[str(domain)]


def _lsm(process: dict[str, Any]) -> None:
    """An asked-for LSM confinement Pinnace cannot give is an error, never a silent downgrade."""
    profile = process.get("apparmorProfile")
    if profile:
        enabled = _read_text("/sys/module/apparmor/parameters/enabled").strip() == "Y"
        raise SpecError(
            "process.apparmorProfile",
            f"cannot apply AppArmor profile {profile!r}: Pinnace does not support AppArmor"
            + ("" if enabled else ", and AppArmor is not enabled on this host"),
        )
    label = process.get("selinuxLabel")
    if label:
        raise SpecError(
            "process.selinuxLabel",
            f"cannot apply SELinux label {label!r}: Pinnace does not support SELinux",
        )


def _not_supported(process: dict[str, Any]) -> None:
    for key in ("ioPriority", "scheduler", "execCPUAffinity"):
        if process.get(key):
            raise SpecError(f"process.{key}", "not supported yet by Pinnace")


def _oom(raw: Any) -> int | None:
    if raw is None:
        return None
    lo, hi = OOM_SCORE_ADJ_RANGE
    if not _is_int(raw) or not lo <= raw <= hi:
        raise SpecError("process.oomScoreAdj", f"must be between {lo} and {hi}, not {raw!r}")
    return int(raw)


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _namespace_is_hosts(path: str, kind: str) -> bool:
    """True when `path` is the runtime's own namespace of `kind` (proc name: net, ipc)."""
    a = os.stat(path)
    b = os.stat(f"/proc/self/ns/{kind}")
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def sysctl_namespace(key: str) -> str | None:
    """Which namespace a sysctl belongs to ("ipc", "net"), or None for the host-wide ones."""
    dotted = key.replace("/", ".")
    if dotted in IPC_SYSCTLS or dotted.startswith("fs.mqueue."):
        return "ipc"
    if dotted.startswith("net."):
        return "net"
    return None


def _sysctls(raw: Any, namespaces: Any) -> tuple[Sysctl, ...]:
    """`linux.sysctl`: only namespaced keys, and only when the container has that namespace.

    As runc: the ipc keys need an ipc namespace and the net keys a network
    namespace, new or joined, but never the runtime's own (a joined one is
    compared with /proc/self/ns by inode). kernel.hostname and
    kernel.domainname have their own fields. Every other key would change
    the host for everyone.
    """
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise SpecError("linux.sysctl", "must be an object of key: value strings")
    ns_paths: dict[str, str | None] = {}
    for ns in namespaces if isinstance(namespaces, list) else []:
        if isinstance(ns, dict) and isinstance(ns.get("type"), str):
            ns_paths[ns["type"]] = ns.get("path") or None
    out: list[Sysctl] = []
    for key, value in raw.items():
        where = f'linux.sysctl["{key}"]'
        if not key or len(key) > MAX_SYSCTL_KEY or not set(key) <= SYSCTL_KEY_CHARS:
            raise SpecError(
                where, "a sysctl name is 1-255 characters of a-z, 0-9, '_', '.', '-' and '/'"
            )
        parts = key.replace("/", ".").split(".")
        if any(p in ("", "..") for p in parts):
            raise SpecError(where, "empty or '..' component in the sysctl name")
        if not isinstance(value, str):
            raise SpecError(where, f"the value must be a string, not {value!r}")
        if "\n" in value or "\0" in value:
            raise SpecError(where, "the value must not contain a newline or NUL byte")
        if len(value.encode()) > MAX_SYSCTL_VALUE:
            raise SpecError(where, f"the value is longer than {MAX_SYSCTL_VALUE} bytes")
        dotted = ".".join(parts)
        if dotted == "kernel.hostname":
            raise SpecError(where, "set the hostname with the `hostname` field")
        if dotted == "kernel.domainname":
            raise SpecError(where, "set the domain name with the `domainname` field")
        kind = sysctl_namespace(dotted)
        if kind is None:
            raise SpecError(
                where,
                "not a namespaced sysctl, it would change the host: only the ipc ones "
                "(kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*) and net.* may be set",
            )
        ns_type, proc_name = ("ipc", "ipc") if kind == "ipc" else ("network", "net")
        if ns_type not in ns_paths:
            raise SpecError(where, f"needs a {ns_type} namespace of the container's own")
        path = ns_paths[ns_type]
        if path is not None:
            try:
                hosts = _namespace_is_hosts(path, proc_name)
            except OSError as exc:
                raise SpecError(
                    where, f"cannot check the {ns_type} namespace {path}: {exc.strerror}"
                ) from None
            if hosts:
                raise SpecError(
                    where, f"the {ns_type} namespace {path} is the host's: refusing to change it"
                )
        out.append(Sysctl(key, value, "/".join(parts), where))
    return tuple(out)


def plan_process(process: Any, linux: Any, *, rootfs: str | None) -> ProcessPlan:
    """Check config.json's `process` (and the parts of `linux` that shape it).

    Pure apart from reading /proc (cap_last_cap, namespace inodes) and
    loading libseccomp to resolve syscall names; raises SpecError naming the
    JSON path. With `rootfs`, a program that cannot be found there is noted
    (not refused: a mount may still provide it).
    """
    if not isinstance(process, dict):
        raise SpecError("process", "must be an object")
    if linux is None:
        linux = {}
    if not isinstance(linux, dict):
        raise SpecError("linux", "must be an object")
    notes: list[str] = []
    args = _args(process.get("args"))
    env = _env(process.get("env"))
    cwd = _cwd(process.get("cwd"))
    user = _user(process.get("user"), notes)
    rlimits = _rlimits(process.get("rlimits"))
    capabilities = caps.plan_capabilities(process.get("capabilities"))
    notes.extend(capabilities.notes)
    nnp = process.get("noNewPrivileges", False)
    if not isinstance(nnp, bool):
        raise SpecError("process.noNewPrivileges", f"must be true or false, not {nnp!r}")
    oom = _oom(process.get("oomScoreAdj"))
    _lsm(process)
    _not_supported(process)
    if process.get("commandLine"):
        notes.append("process.commandLine: only meaningful on Windows: ignored")
    personality = _personality(linux.get("personality"), notes)
    program = None
    if linux.get("seccomp") is not None:
        from runtime import seccomp

        program = seccomp.plan_seccomp(linux["seccomp"])
        notes.extend(program.notes)
    sysctls = _sysctls(linux.get("sysctl"), linux.get("namespaces"))
    if rootfs is not None:
        try:
            lookup_executable(args[0], _env_value(env, "PATH"), root=rootfs, cwd=cwd)
        except ExecLookupError as exc:
            notes.append(f"process.args[0]: {exc} (in the rootfs, before mounts)")
        except OSError:
            pass
    return ProcessPlan(
        args=args,
        env=env,
        cwd=cwd,
        user=user,
        rlimits=rlimits,
        capabilities=capabilities,
        no_new_privileges=nnp,
        personality=personality,
        seccomp=program,
        sysctls=sysctls,
        oom_score_adj=oom,
        notes=tuple(notes),
    )


def with_compiled_seccomp(plan: ProcessPlan, cache_dir: str) -> ProcessPlan:
    """`plan` with its seccomp filter compiled (or found in `cache_dir`): create and exec
    call it before they fork, so the init never loads libseccomp."""
    if plan.seccomp is None:
        return plan
    from runtime import seccomp

    return plan.replace(seccomp=seccomp.compiled(plan.seccomp, cache_dir))


def preload(plan: ProcessPlan | None = None) -> None:
    """Import and load now what the init needs after pivot_root (libseccomp).

    With a plan, libseccomp is loaded only when the plan has a filter that is not
    compiled yet (runtime.seccomp.compiled).
    """
    if plan is None or (plan.seccomp is not None and plan.seccomp.bpf is None):
        from runtime import seccomp

        seccomp.preload()


# --- in the init -----------------------------------------------------------------------------


def apply_sysctls(plan: ProcessPlan, *, sys: Syscalls | None = None) -> None:
    """Write each sysctl to /proc/sys (the init is inside the container, /proc mounted).

    Each file is opened beneath /proc/sys by the in-root rules (no symlink
    or magic link may lead elsewhere), and never created.
    """
    if not plan.sysctls:
        return
    with rootpath.RootFS("/proc/sys", sys) as root:
        for s in plan.sysctls:
            full = f"/proc/sys/{s.path}"
            try:
                fd = root.open(s.path, os.O_WRONLY | os.O_NOFOLLOW)
            except OSError as exc:
                raise ProcessSetupError(
                    f"cannot open {full}: {exc.strerror}", field=s.field, path=full
                ) from None
            try:
                os.write(fd, s.value.encode())
            except OSError as exc:
                raise ProcessSetupError(
                    f"cannot set {s.key} to {s.value!r}: {exc.strerror}", field=s.field, path=full
                ) from None
            finally:
                os.close(fd)


def _limit_str(v: int) -> str:
    return "unlimited" if v in (RLIM_INFINITY_OCI, resource.RLIM_INFINITY) else str(v)


def _to_rlim(v: int) -> int:
    return resource.RLIM_INFINITY if v == RLIM_INFINITY_OCI else v


def _above(new: int, current: int) -> bool:
    """new > current, where RLIM_INFINITY (-1 in Python) is the largest value."""
    inf = resource.RLIM_INFINITY
    if new == current:
        return False
    if current == inf:
        return False
    return new == inf or new > current


def apply_rlimits(limits: Iterable[Rlimit]) -> None:
    for r in limits:
        new = (_to_rlim(r.soft), _to_rlim(r.hard))
        try:
            resource.prlimit(0, r.resource, new)
        except (OSError, ValueError) as exc:
            _, cur_hard = resource.getrlimit(r.resource)
            why = getattr(exc, "strerror", None) or str(exc)
            if _above(new[1], cur_hard):
                why = (
                    f"raising the hard limit above the current {_limit_str(cur_hard)} needs "
                    "CAP_SYS_RESOURCE, which the runtime does not have"
                )
                if r.type == "RLIMIT_NOFILE":
                    nr_open = _read_text("/proc/sys/fs/nr_open").strip()
                    if nr_open and new[1] != resource.RLIM_INFINITY and new[1] > int(nr_open):
                        why = f"the hard limit is above fs.nr_open ({nr_open})"
            raise ProcessSetupError(
                f"cannot set {r.type} to soft {_limit_str(r.soft)}, hard {_limit_str(r.hard)}: {why}",
                field=r.field,
            ) from None


def _setgroups_allowed() -> bool:
    """False in a user namespace whose setgroups file says deny (setgroups(2) gets EPERM)."""
    return _read_text("/proc/self/setgroups").strip() != "deny"


def _chdir(cwd: str) -> bool:
    """chdir to the cwd; False when only the container user may get there (retry after)."""
    try:
        os.chdir(cwd)
    except PermissionError:
        return False
    except OSError as exc:
        raise ProcessSetupError(
            f"cannot change to {cwd}: {exc.strerror}", field="process.cwd", path=cwd
        ) from None
    return True


def _check_cwd_inside(cwd: str) -> None:
    """Refuse a cwd that resolved outside the container's root (CVE-2024-21626).

    A leaked directory fd of the host reached through /proc/self/fd/N makes
    chdir succeed while the directory is not below our root; the kernel then
    reports the cwd as "(unreachable)/...", which glibc's getcwd turns into
    ENOENT.
    """
    try:
        where = os.getcwd()
    except FileNotFoundError:
        where = "(unreachable)"
    if not where.startswith("/"):
        raise ProcessSetupError(
            f"the working directory {cwd!r} is outside of the container's root "
            "(possible breakout through a leaked file descriptor): refused",
            field="process.cwd",
            path=cwd,
        )


def apply_identity(plan: ProcessPlan, *, sys: Syscalls) -> None:
    """Make the calling process (the init, inside the container) what `process` says.

    The order is forced by what each step needs:

    1. rlimits: raising a hard limit needs CAP_SYS_RESOURCE, so while we
       still hold every capability we have.
    2. personality.
    3. seccomp, early, only when noNewPrivileges is false: without
       no_new_privs the kernel lets only CAP_SYS_ADMIN install a filter, and
       that is dropped below. Everything after runs under the filter (as in
       runc): a profile must allow setgroups, setresgid, setresuid, capset,
       prctl, chdir, getcwd, umask, close_range and execve. With
       noNewPrivileges, the filter comes last, in `exec_process`.
    4. chdir to cwd as root, because root may reach directories the
       container's user cannot (retried after the user change on EACCES).
    5. drop the bounding set: needs CAP_SETPCAP, so before the uid change.
    6. PR_SET_KEEPCAPS 1: the permitted set survives leaving uid 0.
    7. setgroups, setresgid, setresuid: groups and gid first, while
       CAP_SETGID is still effective.
    8. the chdir retry, then the check that the cwd is inside the root
       (CVE-2024-21626).
    9. PR_SET_KEEPCAPS 0, then capset (effective, permitted, inheritable),
       then the ambient set (a cap must be permitted and inheritable to
       become ambient).
    10. umask, then no_new_privs.
    """
    apply_rlimits(plan.rlimits)
    if plan.personality is not None:
        try:
            sys.personality(plan.personality)
        except SyscallError as exc:
            raise ProcessSetupError(
                f"personality: {exc.strerror}", field="linux.personality.domain"
            ) from None
    if plan.seccomp is not None and not plan.no_new_privileges:
        from runtime import seccomp  # imported by plan_process already

        seccomp.load(plan.seccomp, sys=sys)
    in_cwd = _chdir(plan.cwd)
    caps.drop_bounding(plan.capabilities, sys=sys)
    _set_user(plan.user, sys=sys)
    if not in_cwd:
        try:
            os.chdir(plan.cwd)
        except OSError as exc:
            raise ProcessSetupError(
                f"cannot change to {plan.cwd} as uid {plan.user.uid}: {exc.strerror}",
                field="process.cwd",
                path=plan.cwd,
            ) from None
    _check_cwd_inside(plan.cwd)
    sys.prctl(PR_SET_KEEPCAPS, 0)
    caps.set_capabilities(plan.capabilities, sys=sys)
    caps.raise_ambient(plan.capabilities, sys=sys)
    if plan.user.umask is not None:
        os.umask(plan.user.umask)
    if plan.no_new_privileges:
        sys.prctl(PR_SET_NO_NEW_PRIVS, 1)


def _set_user(user: User, *, sys: Syscalls) -> None:
    sys.prctl(PR_SET_KEEPCAPS, 1)
    if _setgroups_allowed():
        try:
            os.setgroups(list(user.additional_gids))
        except OSError as exc:
            raise ProcessSetupError(
                f"setgroups {list(user.additional_gids)}: {exc.strerror}",
                field="process.user.additionalGids",
            ) from None
    elif user.additional_gids:
        raise ProcessSetupError(
            "cannot set additional groups: setgroups is denied in this user namespace",
            field="process.user.additionalGids",
        )
    for what, fn, value in (
        ("gid", os.setresgid, user.gid),
        ("uid", os.setresuid, user.uid),
    ):
        try:
            fn(value, value, value)
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EINVAL:
                hint = " (not mapped in the container's user namespace)"
            raise ProcessSetupError(
                f"cannot switch to {what} {value}: {exc.strerror}{hint}",
                field=f"process.user.{what}",
            ) from None


def apply_oom_score_adj(pid: int, value: int) -> int:
    """Write the init's oom_score_adj from the runtime; returns the value written.

    Lowering it below the minimum the process inherited needs
    CAP_SYS_RESOURCE. Without it (this host), a lower value is clamped to
    the runtime's own current score, as containerd's restrict_oom_score_adj
    does: a container never gets more OOM protection than its runtime.
    """
    lo, hi = OOM_SCORE_ADJ_RANGE
    if not lo <= value <= hi:
        raise SpecError("process.oomScoreAdj", f"must be between {lo} and {hi}, not {value}")
    path = f"/proc/{pid}/oom_score_adj"

    def write(v: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(v).encode())
        finally:
            os.close(fd)

    try:
        write(value)
        return value
    except PermissionError as exc:
        own = int(_read_text("/proc/self/oom_score_adj").strip() or "0")
        if value >= own:
            raise ProcessSetupError(
                f"cannot set oom_score_adj to {value}: {exc.strerror}",
                field="process.oomScoreAdj",
                path=path,
            ) from None
    except OSError as exc:
        raise ProcessSetupError(
            f"cannot set oom_score_adj to {value}: {exc.strerror}",
            field="process.oomScoreAdj",
            path=path,
        ) from None
    try:
        write(own)
    except OSError as exc:
        raise ProcessSetupError(
            f"cannot set oom_score_adj to {own} (clamped from {value}): {exc.strerror}",
            field="process.oomScoreAdj",
            path=path,
        ) from None
    return own


# --- exec ---------------------------------------------------------------------------------


def _env_value(env: Iterable[str], name: str) -> str | None:
    found = None
    prefix = name + "="
    for entry in env:
        if entry.startswith(prefix):
            found = entry[len(prefix) :]  # the last one wins, as in a shell
    return found


def _is_executable(root: rootpath.RootFS, path: str, shown: str) -> str | None:
    """None if `path` (in the root) is a file we may execute, else why not (for the message)."""
    try:
        fd = root.open(path, os.O_PATH)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        return f"stat {shown}: {why.lower()}"
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if stat.S_ISDIR(st.st_mode) or not st.st_mode & 0o111:
        return "permission denied"
    return None


def _default_signal_dispositions() -> None:
    """Python starts with SIGPIPE and SIGXFSZ ignored, and an ignored signal stays
    ignored across execve: undo that, so `yes | head` in a container ends as it would
    under runc (whose Go init leaves every signal at its default)."""
    for sig in (signals.SIGPIPE, signals.SIGXFSZ):
        signals.set_handler(sig, signals.SIG_DFL)
    signals.pthread_sigmask(signals.SIG_SETMASK, set())


def lookup_executable(name: str, path_env: str | None, *, root: str = "/", cwd: str = "/") -> str:
    """Find args[0] the way runc does (Go's exec.LookPath), inside `root`.

    A name with a slash is used as is; otherwise each $PATH entry is tried
    (an empty entry is the cwd). The container's PATH counts, never the
    runtime's. Paths resolve in-root without magic links, so a
    /proc/self/fd/N name cannot reach a leaked host file. Raises
    ExecLookupError with runc's wording and a shell's exit code (127 not
    found, 126 not executable).
    """
    with rootpath.RootFS(root) as r:
        if "/" in name:
            why = _is_executable(r, os.path.join(cwd, name), name)
            if why is None:
                return name
            code = 127 if "no such file" in why else 126
            raise ExecLookupError(f'exec: "{name}": {why}', exit_code=code, path=name)
        for d in (path_env or "").split(":") if path_env else []:
            candidate = os.path.join(d or ".", name)
            if _is_executable(r, os.path.join(cwd, candidate), candidate) is None:
                return candidate
    raise ExecLookupError(f'exec: "{name}": {NOT_FOUND_IN_PATH}', exit_code=127, path=name)


def _home_of(uid: int) -> str:
    """The uid's home directory from the container's /etc/passwd, else "/" (runc's default)."""
    try:
        with rootpath.RootFS("/") as r:
            fd = r.open("etc/passwd", os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        return "/"
    for line in data.decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[2] == str(uid) and fields[5]:
            return fields[5]
    return "/"


def exec_environment(plan: ProcessPlan) -> dict[str, str]:
    """The process's environment: config's env (last duplicate wins) plus HOME if missing."""
    env: dict[str, str] = {}
    for entry in plan.env:
        k, _, v = entry.partition("=")
        env[k] = v
    if "HOME" not in env:
        env["HOME"] = _home_of(plan.user.uid)
    return env


def close_fds(preserve_fds: int, *, sys: Syscalls, keep_fds: Iterable[int] = ()) -> None:
    """Close every fd from 3 + preserve_fds up, except `keep_fds` (made close-on-exec).

    Fds 3 .. 2 + preserve_fds are passed on to the container (LISTEN_FDS
    style), so they are made inheritable.
    """
    first = 3 + preserve_fds
    for fd in range(3, first):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass  # not open: nothing to pass
    keep = sorted({k for k in keep_fds if k >= first})
    for k in keep:
        os.set_inheritable(k, False)
    start = first
    for k in [*keep, MAX_FD + 1]:
        if start <= k - 1:
            _close_range(start, k - 1, sys)
        start = k + 1


def _close_range(first: int, last: int, sys: Syscalls) -> None:
    try:
        sys.close_range(first, last, 0)
    except SyscallError as exc:
        if exc.errno != errno.ENOSYS:
            raise
        for name in os.listdir("/proc/self/fd"):  # Linux < 5.9
            fd = int(name)
            if first <= fd <= last:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _die(message: str, code: int) -> NoReturn:
    try:
        os.write(2, (message + "\n").encode(errors="replace"))
    finally:
        os._exit(code)


def exec_process(
    plan: ProcessPlan, *, preserve_fds: int, sys: Syscalls, keep_fds: Iterable[int] = ()
) -> NoReturn:
    """Become the container's program: never returns, never raises.

    Looks args[0] up with the container's PATH, closes every fd above
    2 + preserve_fds (but `keep_fds`, which the caller needs until execve
    and which are made close-on-exec), loads the seccomp filter when
    noNewPrivileges is set (as late as possible, so that it constrains the
    program and not our setup), then execve. Any failure is written to
    stderr and ends the process: 127 when the program is not found, 126
    when it cannot be executed, 1 for anything else (as in a forked child,
    an exception must not unwind into the runtime's code).
    """
    try:
        env = exec_environment(plan)
        path = lookup_executable(plan.args[0], env.get("PATH"), cwd=plan.cwd)
        _default_signal_dispositions()  # before seccomp, which might deny rt_sigaction
        close_fds(preserve_fds, sys=sys, keep_fds=keep_fds)
        if plan.seccomp is not None and plan.no_new_privileges:
            from runtime import seccomp  # imported by plan_process already

            seccomp.load(plan.seccomp, sys=sys)
    except ExecLookupError as exc:
        _die(str(exc), exc.exit_code)
    except BaseException as exc:
        _die(f"pinnace-oci: cannot start the container process: {exc}", 1)
    try:
        os.execve(path, list(plan.args), env)
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        _die(f'exec: "{plan.args[0]}": {(exc.strerror or str(exc)).lower()}', code)
    except BaseException as exc:
        _die(f"pinnace-oci: exec {plan.args[0]!r}: {exc}", 1)
