"""`pinnace check`: what this host supports for containers, each with yes/no and why.

Like `lxc-checkconfig` or `k3s check-config`, but by probing the running kernel
rather than reading its build config (which most hosts do not ship): every
namespace is really unshared, overlayfs and idmapped mounts are really
mounted, in a throw-away child process whose private mount namespace takes
every probe mount with it when it exits. Nothing is left on the host.
"""

from __future__ import annotations

import ctypes.util
import errno
import gc
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cgroups.discovery import (
    CgroupDiscoveryError,
    CgroupHierarchy,
    CgroupMode,
    discover,
    parse_mountinfo,
)
from namespaces import syscalls as sc
from namespaces.userns import IDMap, new_userns_fd

STATE_DIR = Path("/var/lib/pinnace")
SHIFT = [IDMap(0, 100000, 65536)]  # the idmap probe: container 0-65535 -> host 100000+

# (name in /proc/self/ns, clone flag, needed to run a container at all)
NAMESPACES: tuple[tuple[str, int, bool], ...] = (
    ("mnt", sc.CLONE_NEWNS, True),
    ("uts", sc.CLONE_NEWUTS, True),
    ("ipc", sc.CLONE_NEWIPC, True),
    ("pid", sc.CLONE_NEWPID, True),
    ("net", sc.CLONE_NEWNET, True),
    ("cgroup", sc.CLONE_NEWCGROUP, False),
    ("user", sc.CLONE_NEWUSER, False),
    ("time", sc.CLONE_NEWTIME, False),
)

# Controllers whose v2 limits Pinnace applies (cgroups/ manager).
CONTROLLERS = ("cpu", "cpuset", "memory", "pids", "io", "hugetlb")


@dataclass(frozen=True)
class CheckResult:
    """One line of the report."""

    group: str
    name: str
    ok: bool
    required: bool
    detail: str


@dataclass(frozen=True)
class Report:
    kernel: str
    machine: str
    cgroup: dict[str, object]
    checks: list[CheckResult]

    @property
    def ready(self) -> bool:
        """Every required feature is there: containers can run."""
        return all(c.ok for c in self.checks if c.required)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kernel": self.kernel,
                "machine": self.machine,
                "ready": self.ready,
                "cgroup": self.cgroup,
                "checks": [asdict(c) for c in self.checks],
            },
            indent=2,
        )


def _in_child(probe: Callable[[], str]) -> tuple[bool, str]:
    """Run `probe` in a forked child, so namespaces it enters die with it.

    The probe returns a detail string for "yes" or raises for "no"; the
    outcome travels back over a pipe.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        gc.disable()  # a forked child runs no finalizers of its parent's objects (gRPC's hang)
        os.close(rfd)
        try:
            outcome = {"ok": True, "detail": probe()}
        except BaseException as exc:
            outcome = {"ok": False, "detail": _explain(exc)}
        try:
            os.write(wfd, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    os.waitpid(pid, 0)
    if not data:
        return False, "probe process died without an answer"
    got = json.loads(data)
    return bool(got["ok"]), str(got["detail"])


def _explain(exc: BaseException) -> str:
    if isinstance(exc, sc.SyscallError):
        return f"{exc.call} failed: {errno.errorcode.get(exc.errno or 0, '?')} ({exc.strerror})"
    if isinstance(exc, OSError):
        where = f" on {exc.filename}" if exc.filename else ""
        return f"{errno.errorcode.get(exc.errno or 0, '?')} ({exc.strerror}){where}"
    return str(exc)


def _probe_dir() -> Path:
    """Probe where Pinnace will keep its layers: the state dir or its nearest parent."""
    for cand in (STATE_DIR, STATE_DIR.parent, Path(tempfile.gettempdir())):
        if cand.is_dir():
            return cand
    return Path("/")


def _fs_type(path: Path) -> str:
    """The filesystem type of the mount that holds `path` (longest mount-point prefix)."""
    best, fstype = "", "?"
    target = str(path.resolve())
    for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text()):
        mp = m.mount_point
        inside = target == mp or target.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= len(best):
            best, fstype = mp, m.fstype
    return fstype


# --- namespaces -------------------------------------------------------------


def check_namespaces(sys: sc.Syscalls) -> list[CheckResult]:
    results = []
    for name, flag, required in NAMESPACES:
        if not Path(f"/proc/self/ns/{name}").exists():
            results.append(
                CheckResult(
                    "namespaces", name, False, required, f"kernel has no /proc/self/ns/{name}"
                )
            )
            continue

        def probe(flag: int = flag, name: str = name) -> str:
            sys.unshare(flag)
            return f"unshare({_flag_name(name)}) works"

        ok, detail = _in_child(probe)
        if name == "user":
            detail += _userns_limits()
        results.append(CheckResult("namespaces", name, ok, required, detail))
    return results


def _flag_name(ns: str) -> str:
    return "CLONE_NEWNS" if ns == "mnt" else f"CLONE_NEW{ns.upper()}"


def _userns_limits() -> str:
    notes = []
    max_ns = Path("/proc/sys/user/max_user_namespaces")
    if max_ns.exists():
        notes.append(f"user.max_user_namespaces={max_ns.read_text().strip()}")
    unpriv = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if unpriv.exists():
        notes.append(f"kernel.unprivileged_userns_clone={unpriv.read_text().strip()}")
    return f"; {', '.join(notes)}" if notes else ""


# --- cgroups ----------------------------------------------------------------


def check_cgroups(hier: CgroupHierarchy | None, why: str = "") -> list[CheckResult]:
    if hier is None:
        return [CheckResult("cgroups", "cgroup v2", False, True, why)]
    results = []
    if hier.mount_point is None:
        results.append(
            CheckResult(
                "cgroups",
                "cgroup v2",
                False,
                True,
                f"no cgroup2 filesystem is mounted (mode {hier.mode.value})",
            )
        )
        return results
    where = {
        CgroupMode.UNIFIED: f"unified hierarchy at {hier.mount_point} (pure v2)",
        CgroupMode.HYBRID: (
            f"hybrid: unified hierarchy at {hier.mount_point}, "
            f"v1 hierarchies hold {', '.join(sorted(hier.v1_controllers)) or 'nothing'}"
        ),
    }[hier.mode]
    results.append(CheckResult("cgroups", "cgroup v2", True, True, where))
    for ctl in CONTROLLERS:
        if ctl in hier.controllers:
            detail = f"in {hier.mount_point}/cgroup.controllers: v2 limits available"
            results.append(CheckResult("cgroups", f"{ctl} controller", True, False, detail))
        else:
            v1_name = "blkio" if ctl == "io" else ctl
            if v1_name in hier.v1_controllers:
                why = (
                    f"bound to a cgroup v1 hierarchy ({v1_name}), so it is not in "
                    f"{hier.mount_point}/cgroup.controllers: {ctl} limits are unavailable"
                )
            else:
                why = f"not in {hier.mount_point}/cgroup.controllers: {ctl} limits are unavailable"
            results.append(CheckResult("cgroups", f"{ctl} controller", False, False, why))
    results.extend(_check_cgroup_files(hier))
    return results


def _check_cgroup_files(hier: CgroupHierarchy) -> list[CheckResult]:
    """freeze and kill exist only in non-root cgroups: look at a scratch child."""
    assert hier.mount_point is not None
    parent = hier.own_path or hier.mount_point
    scratch = parent / f"pinnace-check-{os.getpid()}"
    try:
        scratch.mkdir()
    except OSError as exc:
        why = f"cannot create a cgroup under {parent}: {_explain(exc)}"
        return [
            CheckResult("cgroups", "cgroup.freeze", False, False, why),
            CheckResult("cgroups", "cgroup.kill", False, False, why),
        ]
    try:
        out = []
        for name, what, since in (
            ("cgroup.freeze", "freeze/thaw (pause, resume)", "5.2"),
            ("cgroup.kill", "kill every process at once", "5.14"),
        ):
            present = (scratch / name).exists()
            detail = (
                f"{name} is in a child cgroup: {what}"
                if present
                else f"no {name} in a child cgroup (needs Linux >= {since})"
            )
            out.append(CheckResult("cgroups", name, present, False, detail))
        return out
    finally:
        scratch.rmdir()


# --- filesystems and mounts -------------------------------------------------


def check_overlayfs(sys: sc.Syscalls) -> CheckResult:
    where = _probe_dir()
    fstype = _fs_type(where)
    base = Path(tempfile.mkdtemp(prefix=".pinnace-check-", dir=where))
    try:
        for d in ("lower", "upper", "work", "merged"):
            (base / d).mkdir()
        (base / "lower" / "probe").write_text("lower\n")

        def probe() -> str:
            sys.unshare(sc.CLONE_NEWNS)
            sys.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)
            opts = f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work"
            sys.mount("overlay", str(base / "merged"), "overlay", 0, opts)
            if (base / "merged" / "probe").read_text() != "lower\n":
                raise RuntimeError("overlay mounted but the lower layer is not visible")
            (base / "merged" / "written").write_text("upper\n")
            return f"mounted an overlay with its upper layer on {fstype} ({where})"

        ok, detail = _in_child(probe)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if not ok and "overlay" not in Path("/proc/filesystems").read_text():
        detail = f"overlay is not in /proc/filesystems (modprobe overlay?); {detail}"
    return CheckResult("filesystems", "overlayfs", ok, True, detail)


def check_idmapped_mounts(sys: sc.Syscalls) -> CheckResult:
    where = _probe_dir()
    fstype = _fs_type(where)
    target = Path(tempfile.mkdtemp(prefix=".pinnace-check-", dir=where))
    try:

        def probe() -> str:
            userns_fd = new_userns_fd(SHIFT, SHIFT, sys)
            tree = sys.open_tree(
                -100, str(target), sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC
            )  # AT_FDCWD
            sys.mount_setattr(
                tree,
                "",
                sc.AT_EMPTY_PATH,
                sc.MountAttr(attr_set=sc.MOUNT_ATTR_IDMAP, userns_fd=userns_fd),
            )
            return f"mount_setattr(MOUNT_ATTR_IDMAP) works on {fstype} ({where})"

        ok, detail = _in_child(probe)
    finally:
        target.rmdir()
    return CheckResult("mounts", "idmapped mounts", ok, False, detail)


# --- process and security features ----------------------------------------


def check_seccomp(sys: sc.Syscalls) -> CheckResult:
    """PR_SET_SECCOMP with a NULL filter fails EFAULT when filters are supported."""
    try:
        sys.prctl(sc.PR_GET_SECCOMP)
    except sc.SyscallError as exc:
        return CheckResult(
            "security", "seccomp", False, False, f"kernel built without seccomp: {_explain(exc)}"
        )
    try:
        sys.prctl(sc.PR_SET_SECCOMP, sc.SECCOMP_MODE_FILTER, 0)
    except sc.SyscallError as exc:
        if exc.errno == errno.EFAULT:
            lib = ctypes.util.find_library("seccomp")
            extra = f"; libseccomp: {lib}" if lib else "; libseccomp not found"
            return CheckResult(
                "security", "seccomp", True, False, f"filter mode (BPF) supported{extra}"
            )
        return CheckResult("security", "seccomp", False, False, f"no filter mode: {_explain(exc)}")
    return CheckResult(
        "security", "seccomp", False, False, "unexpected: a NULL filter was accepted"
    )


def check_openat2(sys: sc.Syscalls) -> CheckResult:
    try:
        fd = sys.openat2(
            -100, "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0, sc.RESOLVE_IN_ROOT
        )
    except sc.SyscallError as exc:
        why = "kernel has no openat2 (needs Linux >= 5.6)" if sc.is_enosys(exc) else _explain(exc)
        return CheckResult("security", "openat2", False, False, why)
    os.close(fd)
    return CheckResult(
        "security", "openat2", True, False, "RESOLVE_IN_ROOT resolves paths inside a root safely"
    )


def check_pidfd(sys: sc.Syscalls) -> CheckResult:
    try:
        fd = sys.pidfd_open(os.getpid())
    except sc.SyscallError as exc:
        why = (
            "kernel has no pidfd_open (needs Linux >= 5.3)" if sc.is_enosys(exc) else _explain(exc)
        )
        return CheckResult("process", "pidfd", False, False, why)
    try:
        sys.pidfd_send_signal(fd, 0)
    except sc.SyscallError as exc:
        return CheckResult("process", "pidfd", False, False, _explain(exc))
    finally:
        os.close(fd)
    return CheckResult(
        "process", "pidfd", True, False, "pidfd_open and pidfd_send_signal work (race-free signals)"
    )


def check_root() -> CheckResult:
    if os.geteuid() == 0:
        return CheckResult("process", "root", True, True, "running as root (euid 0)")
    return CheckResult(
        "process",
        "root",
        False,
        True,
        f"running as uid {os.geteuid()}: Pinnace's runtime needs root (rootless is not supported)",
    )


def run(sys: sc.Syscalls | None = None) -> Report:
    """Probe everything and return the report."""
    s = sys or sc.libc()
    checks: list[CheckResult] = [check_root(), check_pidfd(s)]
    checks += check_namespaces(s)
    try:
        hier: CgroupHierarchy | None = discover()
        why = ""
    except CgroupDiscoveryError as exc:
        hier, why = None, str(exc)
    checks += check_cgroups(hier, why)
    checks.append(check_overlayfs(s))
    checks.append(check_idmapped_mounts(s))
    checks += [check_seccomp(s), check_openat2(s)]
    cgroup_info: dict[str, object] = {}
    if hier is not None:
        cgroup_info = {
            "mode": hier.mode.value,
            "mount_point": str(hier.mount_point) if hier.mount_point else None,
            "controllers": sorted(hier.controllers),
            "v1_controllers": sorted(hier.v1_controllers),
            "own_cgroup": hier.own_cgroup,
        }
    return Report(platform.release(), platform.machine(), cgroup_info, checks)


def render_text(report: Report, color: bool = False) -> str:
    """The human report: grouped, aligned, yes/no first, why after."""

    def paint(word: str, ok: bool, required: bool) -> str:
        if not color:
            return word
        code = "32" if ok else ("31" if required else "33")
        return f"\x1b[{code}m{word}\x1b[0m"

    lines = [f"Pinnace host check: Linux {report.kernel} ({report.machine})", ""]
    width = max(len(c.name) for c in report.checks) + 2
    group = None
    for c in report.checks:
        if c.group != group:
            if group is not None:
                lines.append("")
            lines.append(c.group.capitalize())
            group = c.group
        word = "yes" if c.ok else ("NO " if c.required else "no ")
        lines.append(f"  {c.name.ljust(width, '.')} {paint(word, c.ok, c.required)}  {c.detail}")
    lines.append("")
    missing_req = [c.name for c in report.checks if c.required and not c.ok]
    missing_opt = [c.name for c in report.checks if not c.required and not c.ok]
    if missing_req:
        lines.append(f"Result: NOT ready for containers; missing: {', '.join(missing_req)}")
    else:
        lines.append("Result: ready for containers")
    if missing_opt:
        lines.append(f"Unavailable (optional): {', '.join(missing_opt)}")
    return "\n".join(lines) + "\n"
