"""Pod sandboxes: the pinned namespaces, files and record a pod's containers join.

There is no pause process. RunPodSandbox creates the pod's net, ipc and uts
namespaces, pins them to files under the sandbox's run dir, brings loopback up,
applies the pod's namespaced sysctls and writes its hosts, resolv.conf and
hostname files. A pod-shared pid namespace needs a live pid 1: a "pod init"
reaper that the caller (the zygote) provides.

Each sandbox has a durable record (state_dir/sandboxes/<id>/sandbox.json). It
is written as "creating" before any side effect, so a server killed mid-run is
rolled back by `recover()` on the next start; a failure while the server lives
is rolled back at once. Synchronous code: the servicer calls it from worker
threads; one lock guards names and record writes, the kernel work runs outside it.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import copy
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from cgroups.discovery import discover
from cri import podfiles
from cri.api import api_pb2
from cri.errors import (
    AlreadyExists,
    CRIError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from cri.network.driver import (
    NetworkDriver,
    NetworkError,
    NoNetwork,
    PodNetworkRequest,
    PortMapping,
)
from cri.podcontext import PodContext
from cri.podns import PodNamespaceError, PodNamespaces
from cri.podns import setup as setup_pod_namespaces
from cri.records import read_json, remove_stale_temps, write_json_atomic
from namespaces.handles import Kind, Namespace, NamespaceError, is_pinned, unpin
from runtime.state import ensure_gone, proc_start_time, signal_process

log = logging.getLogger("pinnace.cri")

CREATING, READY, NOTREADY = "creating", "ready", "notready"
RECORD = "sandbox.json"
# runtime handlers this server answers to: its own name, and runc's for configs
# written for containerd's default runtime class
KNOWN_HANDLERS = ("", "pinnace", "runc")
PIN_NAMES = ("net", "ipc", "uts")
POD_INIT_EXIT_TIMEOUT = 10.0  # seconds for a SIGKILLed pod init to vanish

PodInit = Callable[[str, str, str], tuple[int, int]]

_MODE_NAMES = {v: k for k, v in api_pb2.NamespaceMode.items()}
_SYSCTL_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SYSCTL_WORD = r"[A-Za-z0-9_.:,+/-]+"
_SYSCTL_VALUE_RE = re.compile(rf"^{_SYSCTL_WORD}(?:[ \t]{_SYSCTL_WORD})*$")
SYSCTL_VALUE_MAX = 256


# --- the record -----------------------------------------------------------------


@dataclass
class SandboxRecord:
    """Everything the server knows of a sandbox; the JSON of sandbox.json."""

    id: str
    name: str
    uid: str
    namespace: str
    attempt: int
    state: str  # CREATING | READY | NOTREADY
    created_at: int  # ns since the epoch
    labels: dict[str, str]
    annotations: dict[str, str]
    runtime_handler: str
    config: str  # base64 of PodSandboxConfig.SerializeToString()
    netns: str = ""  # pinned namespace files; "" is the host's namespace (NODE)
    ipcns: str = ""
    utsns: str = ""
    pidns_mode: str = "CONTAINER"  # a NamespaceMode name
    pod_init_pid: int = 0
    pod_init_start: int = 0
    hostname: str = ""
    cgroup_parent: str = ""
    dir: str = ""  # the run dir: pins, hosts, resolv.conf, hostname
    ips: list[str] = field(default_factory=list)  # the pod's addresses, primary first
    network: str = ""  # the driver that set the pod's network up ("" = none needed)

    @property
    def full_name(self) -> str:
        """kubelet's unique name of a sandbox (containerd's makeSandboxName)."""
        return sandbox_name(self.name, self.namespace, self.uid, self.attempt)

    @property
    def hosts_path(self) -> str:
        return os.path.join(self.dir, "hosts")

    @property
    def resolv_path(self) -> str:
        return os.path.join(self.dir, "resolv.conf")

    @property
    def hostname_path(self) -> str:
        return os.path.join(self.dir, "hostname")

    def config_proto(self) -> api_pb2.PodSandboxConfig:
        cfg = api_pb2.PodSandboxConfig()
        cfg.ParseFromString(base64.b64decode(self.config))
        return cfg

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SandboxRecord:
        """Raises KeyError/TypeError/ValueError on a record that is not one of ours."""
        names = {f.name for f in dataclasses.fields(cls)}
        rec = cls(**{k: v for k, v in obj.items() if k in names})
        if rec.state not in (CREATING, READY, NOTREADY):
            raise ValueError(f"unknown sandbox state {rec.state!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", rec.id):
            raise ValueError(f"bad sandbox id {rec.id!r}")
        return rec


def sandbox_name(name: str, namespace: str, uid: str, attempt: int) -> str:
    return "_".join((name, namespace, uid, str(attempt)))


# --- validation (pure) ---------------------------------------------------------


@dataclass(frozen=True)
class Sysctl:
    name: str  # as the config gives it ("net.ipv4.ip_forward" or "net/ipv4/ip_forward")
    path: str  # under /proc/sys
    value: str
    scope: str  # "net" or "ipc": the pod namespace it needs


@dataclass(frozen=True)
class SandboxPlan:
    """A validated config: what RunPodSandbox will create."""

    name: str
    network: str  # POD | NODE
    ipc: str  # POD | NODE
    pid: str  # POD | CONTAINER | NODE
    sysctls: tuple[Sysctl, ...] = field(default_factory=tuple)
    cgroup_parent: str = ""  # the config's; "" means the manager's default/<id>


def sysctl_path(name: str) -> str:
    """The /proc/sys path of a sysctl named with dots or (kubelet's alternative) slashes.

    In the slash form a component may contain dots (an interface "eth0.100").
    """
    parts = name.split("/") if "/" in name else name.split(".")
    for p in parts:
        if p in (".", "..") or not _SYSCTL_PART_RE.fullmatch(p):
            raise InvalidArgument(f"invalid sysctl name {name!r}", subject=name)
    return "/".join(parts)


def sysctl_scope(path: str) -> str | None:
    """Which pod namespace isolates the sysctl at `path`; None if none does."""
    parts = path.split("/")
    if parts[0] == "net" and len(parts) > 1:
        return "net"
    if parts[0] == "kernel" and len(parts) == 2:
        leaf = parts[1]
        if leaf.startswith(("shm", "msg")) or leaf == "sem":
            return "ipc"
    if parts[:2] == ["fs", "mqueue"] and len(parts) > 2:
        return "ipc"
    return None


def plan_sysctl(name: str, value: str, *, pod_net: bool, pod_ipc: bool) -> Sysctl:
    path = sysctl_path(name)
    scope = sysctl_scope(path)
    if scope is None:
        raise InvalidArgument(
            f"sysctl {name!r} is not namespaced: a pod may set only net.*, kernel.shm*, "
            "kernel.msg*, kernel.sem and fs.mqueue.*",
            subject=name,
        )
    if scope == "net" and not pod_net:
        raise InvalidArgument(
            f"sysctl {name!r} needs the pod's own network namespace (host network is set)",
            subject=name,
        )
    if scope == "ipc" and not pod_ipc:
        raise InvalidArgument(
            f"sysctl {name!r} needs the pod's own ipc namespace (host ipc is set)", subject=name
        )
    if len(value) > SYSCTL_VALUE_MAX or not _SYSCTL_VALUE_RE.fullmatch(value):
        raise InvalidArgument(
            f"sysctl {name!r} value {value!r} is not a simple value "
            "(words of letters, digits and '_.:,+/-' separated by single spaces)",
            subject=name,
        )
    return Sysctl(name, path, value, scope)


def _mode(value: int) -> str:
    return str(_MODE_NAMES.get(value, value))


def normalize_cgroup_parent(path: str) -> str:
    """A cgroup path relative to the unified hierarchy, with one leading '/'."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or any("\0" in p for p in parts):
        raise InvalidArgument(
            f"invalid cgroup parent {path!r}: a path below the hierarchy's root without '..'",
            subject="linux.cgroup_parent",
        )
    return "/" + "/".join(parts)


def plan_sandbox(
    config: api_pb2.PodSandboxConfig, runtime_handler: str, *, pod_init_available: bool
) -> SandboxPlan:
    """Check a RunPodSandbox request before anything is created."""
    meta = config.metadata
    for fld in ("name", "uid", "namespace"):
        if not getattr(meta, fld):
            raise InvalidArgument(f"metadata.{fld} is required", subject=f"metadata.{fld}")
    if runtime_handler not in KNOWN_HANDLERS:
        raise NotFound(
            f"no runtime for {runtime_handler!r} is configured "
            f"(known: {', '.join(repr(h) for h in KNOWN_HANDLERS)})",
            subject=runtime_handler,
        )
    opts = config.linux.security_context.namespace_options
    network, ipc, pid = _mode(opts.network), _mode(opts.ipc), _mode(opts.pid)
    for what, mode in (("network", network), ("ipc", ipc)):
        if mode not in ("POD", "NODE"):
            raise InvalidArgument(
                f"{what} namespace mode {mode} is not valid for a pod sandbox (POD or NODE)",
                subject=f"namespace_options.{what}",
            )
    if pid == "TARGET" or pid not in ("POD", "CONTAINER", "NODE"):
        raise InvalidArgument(
            f"pid namespace mode {pid} is not valid for a pod sandbox "
            "(TARGET is for containers; use POD, CONTAINER or NODE)",
            subject="namespace_options.pid",
        )
    if pid == "POD" and not pod_init_available:
        raise InvalidArgument(
            "a pod-shared pid namespace (pid mode POD) needs a pod init process, "
            "and this sandbox manager has no pod init provider",
            subject="namespace_options.pid",
        )
    if opts.HasField("userns_options"):
        userns = _mode(opts.userns_options.mode)
        if userns == "POD":
            raise InvalidArgument(
                "user namespaces are not supported yet (idmapped rootfs mounts are not "
                "implemented): use hostUsers: true",
                subject="namespace_options.userns_options",
            )
        if userns != "NODE":
            raise InvalidArgument(
                f"user namespace mode {userns} is not valid for a pod sandbox",
                subject="namespace_options.userns_options",
            )
    sysctls = tuple(
        plan_sysctl(k, v, pod_net=network == "POD", pod_ipc=ipc == "POD")
        for k, v in sorted(config.linux.sysctls.items())
    )
    parent = config.linux.cgroup_parent
    return SandboxPlan(
        name=sandbox_name(meta.name, meta.namespace, meta.uid, meta.attempt),
        network=network,
        ipc=ipc,
        pid=pid,
        sysctls=sysctls,
        cgroup_parent=normalize_cgroup_parent(parent) if parent else "",
    )


def filter_matches(rec: SandboxRecord, flt: api_pb2.PodSandboxFilter | None) -> bool:
    """ListPodSandbox's filter: id prefix, state, and every label of the selector."""
    if flt is None:
        return True
    if flt.id and not rec.id.startswith(flt.id):
        return False
    if flt.HasField("state") and _proto_state(rec) != flt.state.state:
        return False
    return all(rec.labels.get(k) == v for k, v in flt.label_selector.items())


def _proto_state(rec: SandboxRecord) -> api_pb2.PodSandboxState:
    return api_pb2.SANDBOX_READY if rec.state == READY else api_pb2.SANDBOX_NOTREADY


# --- the manager ------------------------------------------------------------------


class SandboxManager:
    """Creates, tracks and removes pod sandboxes; see the module docstring."""

    host_hosts = "/etc/hosts"
    host_resolv = "/etc/resolv.conf"

    def __init__(
        self,
        state_dir: str,
        run_dir: str,
        default_cgroup_parent: str = "/pinnace/pods",
        pod_init: PodInit | None = None,
        pod_namespaces: Callable[[PodNamespaces], dict[str, str]] = setup_pod_namespaces,
        network: NetworkDriver | None = None,
    ) -> None:
        self.records_dir = Path(state_dir) / "sandboxes"
        self.sandboxes_dir = Path(run_dir) / "sandboxes"
        self.default_cgroup_parent = normalize_cgroup_parent(default_cgroup_parent)
        self._pod_init = pod_init
        # forks: the server passes its zygote's, so its own threads never fork
        self._pod_namespaces = pod_namespaces
        self.network: NetworkDriver = network if network is not None else NoNetwork()
        self._lock = threading.Lock()  # names, the records dict, record writes
        self._records: dict[str, SandboxRecord] = {}
        self._names: dict[str, str] = {}  # full name -> id (reserved from "creating" on)
        self._op_locks: dict[str, threading.Lock] = {}  # one stop/remove at a time per id
        self.records_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sandboxes_dir.mkdir(parents=True, exist_ok=True, mode=0o711)

    # --- RunPodSandbox -----------------------------------------------------------

    def run(self, config: api_pb2.PodSandboxConfig, runtime_handler: str = "") -> SandboxRecord:
        """Create a ready sandbox, or nothing at all (the error says why)."""
        plan = plan_sandbox(config, runtime_handler, pod_init_available=self._pod_init is not None)
        files = podfiles.pod_files(
            config,
            node_hostname=os.uname().nodename,
            host_hosts=_read_text(self.host_hosts),
            host_resolv=_read_text(self.host_resolv),
        )
        rec = self._reserve(config, runtime_handler, plan, files.hostname)
        try:
            self._create(rec, plan, files)
            with self._lock:
                rec.state = READY
                self._write(rec)
                return copy.deepcopy(rec)
        except BaseException as exc:
            self._rollback(rec)
            if isinstance(exc, CRIError):
                raise
            if isinstance(exc, Exception):
                raise Internal(f"cannot create pod sandbox: {exc}", subject=rec.id) from exc
            raise

    def _reserve(
        self,
        config: api_pb2.PodSandboxConfig,
        runtime_handler: str,
        plan: SandboxPlan,
        hostname: str,
    ) -> SandboxRecord:
        """Claim the name and write the "creating" record: the first durable step."""
        meta = config.metadata
        with self._lock:
            existing = self._names.get(plan.name)
            if existing is not None:
                raise AlreadyExists(
                    f"pod sandbox name {plan.name!r} is reserved for sandbox {existing}",
                    subject=existing,
                )
            sid = secrets.token_hex(32)
            while sid in self._records:
                sid = secrets.token_hex(32)
            rec = SandboxRecord(
                id=sid,
                name=meta.name,
                uid=meta.uid,
                namespace=meta.namespace,
                attempt=meta.attempt,
                state=CREATING,
                created_at=time.time_ns(),
                labels=dict(config.labels),
                annotations=dict(config.annotations),
                runtime_handler=runtime_handler,
                config=base64.b64encode(config.SerializeToString()).decode(),
                pidns_mode=plan.pid,
                hostname=hostname,
                cgroup_parent=plan.cgroup_parent or f"{self.default_cgroup_parent}/{sid}",
                dir=str(self.sandboxes_dir / sid),
            )
            try:
                (self.records_dir / sid).mkdir(mode=0o700)
                self._write(rec)
            except OSError as exc:
                shutil.rmtree(self.records_dir / sid, ignore_errors=True)
                raise Internal(f"cannot write the sandbox record: {exc}", subject=sid) from exc
            self._records[sid] = rec
            self._names[plan.name] = sid
            return rec

    def _create(self, rec: SandboxRecord, plan: SandboxPlan, files: podfiles.PodFiles) -> None:
        d = Path(rec.dir)
        d.mkdir(mode=0o711)
        kinds = []
        if plan.network == "POD":  # a pod on the host network keeps the host's uts too
            kinds += [Kind.NET, Kind.UTS]
        if plan.ipc == "POD":
            kinds.append(Kind.IPC)
        if kinds or plan.sysctls:
            req = PodNamespaces(
                kinds=[k.proc_name for k in kinds],
                pin_dir=str(d),
                hostname=files.hostname if Kind.UTS in kinds else None,
                sysctls=[(x.name, x.path, x.value) for x in plan.sysctls],
            )
            try:
                pins = self._pod_namespaces(req)
            except PodNamespaceError as exc:
                cls = InvalidArgument if exc.kind == "invalid" else Internal
                raise cls(str(exc), subject=rec.id) from exc
            rec.netns = pins.get("net", "")
            rec.ipcns = pins.get("ipc", "")
            rec.utsns = pins.get("uts", "")
        if plan.network == "POD":
            rec.network = self.network.name
            with self._lock:  # on record before anything is made: a crash here is undone
                self._write(rec)
            try:
                net = self.network.setup(_network_request(rec))
            except NetworkError as exc:
                cls = InvalidArgument if exc.invalid else Internal
                raise cls(f"pod network: {exc}", subject=rec.id) from exc
            rec.ips = list(net.ips)
            if rec.ips:
                files = podfiles.pod_files(
                    rec.config_proto(),
                    node_hostname=os.uname().nodename,
                    host_hosts=_read_text(self.host_hosts),
                    host_resolv=_read_text(self.host_resolv),
                    pod_ips=tuple(rec.ips),
                )
        for path, text in (
            (rec.hosts_path, files.hosts),
            (rec.resolv_path, files.resolv_conf),
            (rec.hostname_path, files.hostname_file),
        ):
            _write_file(path, text)
        if plan.pid == "POD":
            assert self._pod_init is not None  # plan_sandbox checked
            pid, start = self._pod_init(rec.netns, rec.ipcns, rec.utsns)
            rec.pod_init_pid, rec.pod_init_start = pid, start
        with self._lock:  # the pins and pod init are on record before "ready"
            self._write(rec)

    def _rollback(self, rec: SandboxRecord) -> None:
        """Undo a failed run; the original error is what the caller gets.

        If the undo itself fails, the "creating" record stays on disk so that
        `recover()` retries it on the next start; the name is released now.
        """
        try:
            self._teardown(rec)
            undone = True
        except Exception:
            log.exception("rolling back pod sandbox %s failed; recover() will retry", rec.id)
            undone = False
        with self._lock:
            if undone:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self.records_dir / rec.id)
            self._forget(rec)

    # --- Stop / Remove -----------------------------------------------------------

    def stop(self, sandbox_id: str) -> None:
        """Mark the sandbox not ready and kill its pod init; namespaces stay pinned.

        Idempotent. The caller stops the sandbox's containers first.
        """
        rec = self._find(sandbox_id)
        with self._op_lock(rec.id):
            with self._lock:
                if rec.id not in self._records:  # removed meanwhile
                    return
                if rec.state != NOTREADY:
                    rec.state = NOTREADY
                    self._write(rec)
            self._kill_pod_init(rec)
            self._teardown_network(rec)

    def remove(self, sandbox_id: str) -> None:
        """Unpin, delete files, the empty cgroup parent and the record. Unknown ids: no error."""
        try:
            rec = self._find(sandbox_id)
        except NotFound:
            return
        with self._op_lock(rec.id):
            with self._lock:
                if rec.id not in self._records:
                    return
                if rec.state == READY:  # RemovePodSandbox implies stop
                    rec.state = NOTREADY
                    self._write(rec)
            try:
                self._teardown(rec)
            except OSError as exc:
                raise Internal(f"cannot remove pod sandbox: {exc}", subject=rec.id) from exc
            self._remove_cgroup_parent(rec)
            with self._lock:
                try:
                    shutil.rmtree(self.records_dir / rec.id)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise Internal(f"cannot remove record: {exc}", subject=rec.id) from exc
                self._forget(rec)
                self._op_locks.pop(rec.id, None)

    def _teardown(self, rec: SandboxRecord) -> None:
        """Kill the pod init, unpin every namespace and remove the run dir.

        A sandbox still "creating" may have a pod init that never made it into
        the record (the server died while the zygote answered): whatever runs in
        its pinned namespaces is then killed too; they are new and only the pod's.
        """
        self._kill_pod_init(rec)
        self._teardown_network(rec)
        d = Path(rec.dir)
        if rec.state == CREATING:
            _kill_namespace_members(rec.id, d)
        if d.is_dir():
            for entry in d.iterdir():
                if entry.name in PIN_NAMES or is_pinned(entry):
                    unpin(entry)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(d)

    def _teardown_network(self, rec: SandboxRecord) -> None:
        """Release the pod's network (IP, interfaces, port mappings); StopPodSandbox does it,
        as kubelet expects the IP back then, and remove repeats it (idempotent)."""
        if not rec.network:
            return
        try:
            self.network.teardown(_network_request(rec))
        except NetworkError as exc:
            raise Internal(f"pod network teardown: {exc}", subject=rec.id) from exc
        if rec.ips:
            with self._lock:
                rec.ips = []
                if rec.id in self._records:
                    self._write(rec)

    def _kill_pod_init(self, rec: SandboxRecord) -> None:
        pid, start = rec.pod_init_pid, rec.pod_init_start
        if pid <= 0:
            return
        try:
            signal_process(pid, start, signal.SIGKILL)
        except ProcessLookupError:
            return
        if not ensure_gone(pid, start, POD_INIT_EXIT_TIMEOUT):
            raise Internal(f"pod init {pid} did not exit after SIGKILL", subject=rec.id)

    def _remove_cgroup_parent(self, rec: SandboxRecord) -> None:
        """rmdir the pod's cgroup if it is ours (under the default parent) and empty."""
        if not rec.cgroup_parent.startswith(self.default_cgroup_parent + "/"):
            return
        try:
            point = discover().mount_point
        except OSError:
            return
        if point is None:
            return
        with contextlib.suppress(OSError):  # absent, or containers still in it: not ours to force
            os.rmdir(point / rec.cgroup_parent.lstrip("/"))

    # --- queries -------------------------------------------------------------------

    def get(self, id_or_prefix: str) -> SandboxRecord:
        """The sandbox whose id is or starts with `id_or_prefix` (a copy)."""
        return copy.deepcopy(self._find(id_or_prefix))

    def list(self, flt: api_pb2.PodSandboxFilter | None = None) -> list[SandboxRecord]:
        with self._lock:
            recs = [r for r in self._records.values() if r.state != CREATING]
            return [copy.deepcopy(r) for r in recs if filter_matches(r, flt)]

    def to_proto(self, rec: SandboxRecord) -> api_pb2.PodSandbox:
        return api_pb2.PodSandbox(
            id=rec.id,
            metadata=_metadata(rec),
            state=_proto_state(rec),
            created_at=rec.created_at,
            labels=rec.labels,
            annotations=rec.annotations,
            runtime_handler=rec.runtime_handler,
        )

    def status(self, sandbox_id: str, verbose: bool = False) -> api_pb2.PodSandboxStatusResponse:
        rec = self.get(sandbox_id)
        config = rec.config_proto()
        st = api_pb2.PodSandboxStatus(
            id=rec.id,
            metadata=_metadata(rec),
            state=_proto_state(rec),
            created_at=rec.created_at,
            network=api_pb2.PodSandboxNetworkStatus(
                ip=rec.ips[0] if rec.ips else "",
                additional_ips=[api_pb2.PodIP(ip=ip) for ip in rec.ips[1:]],
            ),
            labels=rec.labels,
            annotations=rec.annotations,
            runtime_handler=rec.runtime_handler,
        )
        st.linux.namespaces.options.CopyFrom(config.linux.security_context.namespace_options)
        resp = api_pb2.PodSandboxStatusResponse(status=st, timestamp=time.time_ns())
        if verbose:
            info = rec.to_json()
            info.pop("config")
            info["config"] = json_format.MessageToDict(config)
            info["pod_init_alive"] = self._pod_init_alive(rec) if rec.pod_init_pid else None
            resp.info["info"] = json.dumps(info, sort_keys=True)
        return resp

    def context(self, sandbox_id: str) -> PodContext:
        """What a new container of this sandbox joins; FailedPrecondition unless ready."""
        rec = self.get(sandbox_id)
        if rec.state != READY:
            raise FailedPrecondition("pod sandbox is not ready", subject=rec.id)
        pidns = ""
        if rec.pidns_mode == "POD":
            if not self._pod_init_alive(rec):
                raise FailedPrecondition(
                    f"the pod init {rec.pod_init_pid} holding the pod's pid namespace is gone",
                    subject=rec.id,
                )
            pidns = f"/proc/{rec.pod_init_pid}/ns/pid"
        return PodContext(
            sandbox_id=rec.id,
            netns=rec.netns,
            ipcns=rec.ipcns,
            utsns=rec.utsns,
            pidns=pidns,
            host_pid=rec.pidns_mode == "NODE",
            hostname=rec.hostname,
            hosts_path=rec.hosts_path,
            resolv_path=rec.resolv_path,
            hostname_path=rec.hostname_path,
            cgroup_parent=rec.cgroup_parent,
            sysctls=dict(rec.config_proto().linux.sysctls),
        )

    # --- restart -------------------------------------------------------------------

    def recover(self) -> builtins.list[str]:
        """Reload the records after a (re)start; roll back half-made sandboxes.

        A "ready" sandbox whose pins are gone (the host rebooted: /run is a tmpfs)
        or whose pod init died is marked "notready", as kubelet then recreates it.
        Returns one line per thing done.
        """
        done: builtins.list[str] = []
        with self._lock:
            self._records.clear()
            self._names.clear()
        for d in sorted(self.records_dir.iterdir()):
            if not d.is_dir():
                continue
            remove_stale_temps(str(d))
            try:
                rec = SandboxRecord.from_json(read_json(str(d / RECORD)))
                if rec.id != d.name:
                    raise ValueError(f"record id {rec.id} in directory {d.name}")
            except FileNotFoundError:
                shutil.rmtree(d, ignore_errors=True)  # killed between mkdir and first write
                done.append(f"removed empty record directory {d.name}")
                continue
            except (ValueError, KeyError, TypeError) as exc:
                done.append(f"ignored unreadable record {d.name}: {exc}")
                continue
            if rec.state == CREATING:
                try:
                    self._teardown(rec)
                except (OSError, CRIError) as exc:
                    done.append(f"cannot roll back sandbox {rec.id}: {exc}")
                    continue
                shutil.rmtree(d, ignore_errors=True)
                done.append(f"rolled back sandbox {rec.id} left in creating")
                continue
            if rec.state == READY:
                why = self._lost(rec)
                if why:
                    rec.state = NOTREADY
                    with contextlib.suppress(CRIError):
                        self._kill_pod_init(rec)
                    with self._lock:
                        self._write(rec)
                    done.append(f"marked sandbox {rec.id} notready: {why}")
            with self._lock:
                self._records[rec.id] = rec
                self._names[rec.full_name] = rec.id
        for d in sorted(self.sandboxes_dir.iterdir()):
            if d.is_dir() and d.name not in self._records:
                orphan = SandboxRecord(
                    id=d.name, name="", uid="", namespace="", attempt=0, state=CREATING,
                    created_at=0, labels={}, annotations={}, runtime_handler="", config="",
                    dir=str(d),
                )  # fmt: skip
                try:
                    self._teardown(orphan)
                    done.append(f"removed run directory {d.name} that had no record")
                except OSError as exc:
                    done.append(f"cannot remove run directory {d.name}: {exc}")
        # addresses, interfaces and rules of pods that are gone or not ready go back
        with self._lock:
            live = {
                r.id: _network_request(r)
                for r in self._records.values()
                if r.state == READY and r.network
            }
        try:
            done += [f"network: {line}" for line in self.network.reconcile(live)]
        except NetworkError as exc:
            done.append(f"network reconcile failed: {exc}")
        return done

    def _lost(self, rec: SandboxRecord) -> str:
        """Why a ready sandbox can no longer be used ("" if it can)."""
        for kind, path in ((Kind.NET, rec.netns), (Kind.IPC, rec.ipcns), (Kind.UTS, rec.utsns)):
            if not path:
                continue
            try:
                Namespace.open(kind, path).close()
            except NamespaceError:
                return f"{kind.proc_name} namespace pin {path} is gone"
        if rec.pidns_mode == "POD" and not self._pod_init_alive(rec):
            return f"pod init {rec.pod_init_pid} is gone"
        return ""

    # --- helpers -------------------------------------------------------------------

    @staticmethod
    def _pod_init_alive(rec: SandboxRecord) -> bool:
        return rec.pod_init_pid > 0 and proc_start_time(rec.pod_init_pid) == rec.pod_init_start

    def _find(self, id_or_prefix: str) -> SandboxRecord:
        """The live record (not a copy) for an id or unique prefix; NotFound otherwise."""
        if not id_or_prefix:
            raise NotFound("no pod sandbox id given", subject="pod_sandbox_id")
        with self._lock:
            rec = self._records.get(id_or_prefix)
            if rec is None:
                hits = [r for i, r in self._records.items() if i.startswith(id_or_prefix)]
                if len(hits) > 1:
                    raise NotFound(
                        f"pod sandbox id prefix matches {len(hits)} sandboxes", subject=id_or_prefix
                    )
                rec = hits[0] if hits else None
            if rec is None or rec.state == CREATING:
                raise NotFound("pod sandbox not found", subject=id_or_prefix)
            return rec

    @contextlib.contextmanager
    def _op_lock(self, sid: str) -> Iterator[None]:
        with self._lock:
            lock = self._op_locks.setdefault(sid, threading.Lock())
        with lock:
            yield

    def _write(self, rec: SandboxRecord) -> None:
        """Persist `rec`; the caller holds self._lock."""
        write_json_atomic(str(self.records_dir / rec.id / RECORD), rec.to_json())

    def _forget(self, rec: SandboxRecord) -> None:
        """Drop `rec` from memory; the caller holds self._lock."""
        self._records.pop(rec.id, None)
        if self._names.get(rec.full_name) == rec.id:
            del self._names[rec.full_name]


def _kill_namespace_members(sid: str, pin_dir: Path) -> None:
    """SIGKILL every process in a namespace pinned under `pin_dir` (never the host's)."""
    wanted: set[tuple[str, int, int]] = set()
    for kind in (Kind.NET, Kind.IPC, Kind.UTS):
        path = pin_dir / kind.proc_name
        if not is_pinned(path):
            continue
        try:
            with Namespace.open(kind, path) as ns:
                ident = ns.identity()
        except NamespaceError:
            continue
        wanted.add((kind.proc_name, ident.dev, ident.ino))
    if not wanted:
        return
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        for name, dev, ino in wanted:
            try:
                st = os.stat(f"/proc/{pid}/ns/{name}")
            except OSError:
                break  # gone, or a kernel thread
            if (st.st_dev, st.st_ino) != (dev, ino):
                continue
            start = proc_start_time(pid)
            if start is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal_process(pid, start, signal.SIGKILL)
                if not ensure_gone(pid, start, POD_INIT_EXIT_TIMEOUT):
                    raise Internal(
                        f"process {pid} in the pod's namespaces survived SIGKILL", subject=sid
                    )
            break


def _metadata(rec: SandboxRecord) -> api_pb2.PodSandboxMetadata:
    return api_pb2.PodSandboxMetadata(
        name=rec.name, uid=rec.uid, namespace=rec.namespace, attempt=rec.attempt
    )


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


_PROTOCOLS = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp", api_pb2.SCTP: "sctp"}


def _network_request(rec: SandboxRecord) -> PodNetworkRequest:
    """What a network driver is told of a pod, from its record (so teardown after a restart
    asks for exactly what setup was given)."""
    cfg = rec.config_proto()
    return PodNetworkRequest(
        sandbox_id=rec.id,
        netns=rec.netns,
        pod_name=rec.name,
        pod_namespace=rec.namespace,
        pod_uid=rec.uid,
        port_mappings=tuple(
            PortMapping(
                protocol=_PROTOCOLS.get(p.protocol, "tcp"),
                container_port=p.container_port,
                host_port=p.host_port,
                host_ip=p.host_ip,
            )
            for p in cfg.port_mappings
            if p.host_port > 0  # kubelet passes container-only ports too: nothing to map
        ),
        dns_servers=tuple(cfg.dns_config.servers),
        dns_searches=tuple(cfg.dns_config.searches),
        dns_options=tuple(cfg.dns_config.options),
    )
