"""Containers of the CRI: records on disk, and the lifecycle verbs kubelet calls.

A container's truth is split the way conmon and CRI-O split it: the record
(state_dir/containers/<id>/container.json) holds what the CRI asked for and
what the server last saw; the runtime's state says whether the init lives;
the monitor's exit.json says how it ended. `refresh` folds the last two into
the first, so a server restarted after kill -9 reports exactly what the one
before it would have.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from cri import records
from cri.api import api_pb2
from cri.errors import (
    AlreadyExists,
    CRIError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from runtime import launcher

log = logging.getLogger("pinnace.cri")

CREATING, CREATED, RUNNING, EXITED = "creating", "created", "running", "exited"
SNAPSHOT_PREFIX = "cri-"
RECORD = "container.json"
STOP_GRACE_AFTER_KILL = 10.0  # seconds to wait for the exit record after SIGKILL
EXIT_UNKNOWN = 255  # exit code reported when the monitor died without recording one

_STATE_PROTO = {
    CREATING: api_pb2.CONTAINER_UNKNOWN,
    CREATED: api_pb2.CONTAINER_CREATED,
    RUNNING: api_pb2.CONTAINER_RUNNING,
    EXITED: api_pb2.CONTAINER_EXITED,
}


def now_ns() -> int:
    return time.time_ns()


@dataclass
class ContainerRecord:
    """What the server keeps of one container across restarts."""

    id: str
    sandbox_id: str
    name: str
    attempt: int
    state: str
    created_at: int
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    image: str = ""  # the image as the config named it
    image_ref: str = ""  # the image id (sha256:<config digest>)
    image_name: str = ""  # the name it was found under
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    config: str = ""  # ContainerConfig, serialized and base64'd
    snapshot: str = ""
    bundle: str = ""
    stop_signal: str = ""
    resources: dict[str, Any] = field(default_factory=dict)
    user: dict[str, Any] = field(default_factory=dict)
    pid: int = 0
    dir: str = ""  # the record's directory: container.json, exit.json, monitor files
    run_dir: str = ""  # bundle and rootfs mount live here

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ContainerRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in obj.items() if k in known})

    def config_proto(self) -> api_pb2.ContainerConfig:
        cfg = api_pb2.ContainerConfig()
        cfg.ParseFromString(base64.b64decode(self.config))
        return cfg

    @property
    def full_name(self) -> str:
        return f"{self.name}_{self.sandbox_id}_{self.attempt}"


@dataclass
class ContainerDeps:
    """What the manager drives; injected so the server wires real ones and tests may too."""

    runtime_root: str
    spawn_monitor: Callable[[Any], Any]  # cri.monitor.MonitorRequest -> MonitorReply
    sandbox_context: Callable[[str], Any]  # sandbox id -> (SandboxRecord, PodContext)
    store: Any  # images.store.ImageStore
    seccomp_root: str = "/var/lib/kubelet/seccomp"
    exec_output_limit: int = 16 << 20


class ContainerManager:
    def __init__(self, state_dir: str, run_dir: str, deps: ContainerDeps) -> None:
        self.dir = os.path.join(state_dir, "containers")
        self.run_dir = os.path.join(run_dir, "containers")
        self.deps = deps
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._names: dict[str, str] = {}  # full name -> id
        self.on_event: Callable[[str, str], None] = lambda cid, kind: None

    # -- records ------------------------------------------------------------------

    def _path(self, cid: str) -> str:
        return os.path.join(self.dir, cid, RECORD)

    def _save(self, rec: ContainerRecord) -> None:
        records.write_json_atomic(self._path(rec.id), rec.to_json())

    def _load(self, cid: str) -> ContainerRecord:
        try:
            return ContainerRecord.from_json(records.read_json(self._path(cid)))
        except FileNotFoundError:
            raise NotFound("container not found", subject=cid) from None

    def _ids(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.dir) if os.path.isfile(self._path(n)))
        except FileNotFoundError:
            return []

    @contextlib.contextmanager
    def _locked(self, cid: str) -> Iterator[None]:
        with self._lock:
            lk = self._locks.setdefault(cid, threading.Lock())
        with lk:
            yield

    def resolve(self, id_or_prefix: str) -> str:
        """A full id from an id or a unique prefix of one (crictl passes prefixes)."""
        if not id_or_prefix:
            raise InvalidArgument("container id is empty", subject="container_id")
        if os.sep in id_or_prefix or id_or_prefix.startswith("."):
            raise NotFound("container not found", subject=id_or_prefix)
        if os.path.isfile(self._path(id_or_prefix)):
            return id_or_prefix
        hits = [i for i in self._ids() if i.startswith(id_or_prefix)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise NotFound("container not found", subject=id_or_prefix)
        raise InvalidArgument(f"id prefix matches {len(hits)} containers", subject=id_or_prefix)

    def get(self, id_or_prefix: str) -> ContainerRecord:
        cid = self.resolve(id_or_prefix)
        with self._locked(cid):
            return self.refresh(self._load(cid))

    def all(self) -> list[ContainerRecord]:
        out = []
        for cid in self._ids():
            with contextlib.suppress(NotFound):
                out.append(self.refresh(self._load(cid)))
        return out

    def of_sandbox(self, sandbox_id: str) -> list[ContainerRecord]:
        return [r for r in self.all() if r.sandbox_id == sandbox_id]

    def image_in_use(self, image_id: str) -> bool:
        return any(r.image_ref == image_id for r in self.all())

    # -- what the runtime and monitor say -----------------------------------------

    def refresh(self, rec: ContainerRecord) -> ContainerRecord:
        """Fold the monitor's exit record and the runtime's view into the record."""
        if rec.state not in (CREATED, RUNNING):
            return rec
        from cri.monitor import monitor_alive, read_exit

        ex = read_exit(rec.dir)
        if ex is None and not monitor_alive(rec.dir):
            ex = read_exit(rec.dir)  # it may have written just before exiting
            if ex is None:
                rec.state = EXITED
                rec.exit_code = EXIT_UNKNOWN
                rec.finished_at = rec.finished_at or now_ns()
                rec.reason = "Unknown"
                rec.message = "the container's monitor is gone and recorded no exit status"
                self._save(rec)
                self.on_event(rec.id, "stopped")
                return rec
        if ex is None:
            return rec
        rec.state = EXITED
        rec.exit_code = ex.exit_code
        rec.finished_at = ex.finished_at
        if ex.oom_killed:
            rec.reason = "OOMKilled"
            rec.message = "the container hit its memory limit and was killed"
        else:
            rec.reason = "Completed" if ex.exit_code == 0 else "Error"
        self._save(rec)
        self.on_event(rec.id, "stopped")
        return rec

    def _wait_exit(self, rec: ContainerRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.refresh(rec)
            if rec.state == EXITED:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # -- CreateContainer ------------------------------------------------------------

    def create(
        self,
        sandbox_id: str,
        cfg: api_pb2.ContainerConfig,
        sandbox_config: api_pb2.PodSandboxConfig | None = None,
    ) -> str:
        from cri.container_spec import build_spec
        from cri.monitor import MonitorRequest

        if not cfg.HasField("metadata") or not cfg.metadata.name:
            raise InvalidArgument("metadata.name is required", subject="config.metadata")
        if not cfg.image.image:
            raise InvalidArgument("image.image is required", subject="config.image")
        if not sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required", subject="pod_sandbox_id")
        sandbox, pod = self.deps.sandbox_context(sandbox_id)
        if sandbox.state != "ready":
            raise FailedPrecondition(
                f"pod sandbox is {sandbox.state}, not ready", subject=sandbox.id
            )
        image = self._image(cfg.image.image)
        full = f"{cfg.metadata.name}_{sandbox.id}_{cfg.metadata.attempt}"
        cid = secrets.token_hex(32)
        with self._lock:
            self._reload_names()
            if full in self._names:
                raise AlreadyExists(
                    f"container name {cfg.metadata.name!r} attempt {cfg.metadata.attempt} "
                    f"is taken in the pod by {self._names[full]}",
                    subject=cfg.metadata.name,
                )
            self._names[full] = cid
        sb_cfg = sandbox_config if sandbox_config is not None else sandbox.config_proto()
        rec = ContainerRecord(
            id=cid,
            sandbox_id=sandbox.id,
            name=cfg.metadata.name,
            attempt=cfg.metadata.attempt,
            state=CREATING,
            created_at=now_ns(),
            image=cfg.image.image,
            image_ref=image.id,
            image_name=image.name,
            labels=dict(cfg.labels),
            annotations=dict(cfg.annotations),
            config=base64.b64encode(cfg.SerializeToString()).decode(),
            snapshot=SNAPSHOT_PREFIX + cid,
            dir=os.path.join(self.dir, cid),
            run_dir=os.path.join(self.run_dir, cid),
        )
        if cfg.log_path:
            if not sb_cfg.log_directory:
                raise InvalidArgument(
                    "log_path needs the sandbox's log_directory", subject="config.log_path"
                )
            rec.log_path = os.path.normpath(os.path.join(sb_cfg.log_directory, cfg.log_path))
        rec.bundle = os.path.join(rec.run_dir, "bundle")
        os.makedirs(rec.dir, mode=0o700)
        try:
            self._save(rec)
            rootfs = self._mount_rootfs(rec, image)
            image_config = json.loads(self.deps.store.content.read(image.config.digest))
            spec = build_spec(
                cfg,
                sb_cfg,
                pod,
                image_config,
                rootfs,
                container_id=cid,
                seccomp_root=self.deps.seccomp_root,
                target_pidns=lambda target: self._target_pidns(target, sandbox.id),
            )
            with open(os.path.join(rec.bundle, "config.json"), "w") as f:
                json.dump(spec, f)
            proc = spec.get("process") or {}
            rec.user = dict(proc.get("user") or {})
            rec.resources = dict((spec.get("linux") or {}).get("resources") or {})
            rec.stop_signal = str((image_config.get("config") or {}).get("StopSignal") or "")
            if rec.log_path:
                os.makedirs(os.path.dirname(rec.log_path), mode=0o755, exist_ok=True)
            reply = self.deps.spawn_monitor(
                MonitorRequest(
                    container_id=cid,
                    bundle=rec.bundle,
                    runtime_root=self.deps.runtime_root,
                    state_dir=rec.dir,
                    log_path=rec.log_path,
                    tty=cfg.tty,
                    stdin=cfg.stdin,
                    stdin_once=cfg.stdin_once,
                )
            )
            if not reply.ok:
                cls = InvalidArgument if reply.error_kind == "spec" else Internal
                raise cls(f"cannot create the container: {reply.error}", subject=cid)
            rec.pid = reply.init_pid
            rec.state = CREATED
            self._save(rec)
        except BaseException:
            self._teardown(rec)
            with self._lock:
                self._names.pop(full, None)
            raise
        self.on_event(cid, "created")
        return cid

    def _target_pidns(self, target: str, sandbox_id: str) -> str:
        """The pid namespace of a running container of the same pod, for NamespaceMode
        TARGET (kubectl debug's ephemeral containers share their target's processes)."""
        rec = self.get(target)
        if rec.sandbox_id != sandbox_id:
            raise InvalidArgument("the target container is in another pod", subject=target)
        if rec.state != RUNNING or not rec.pid:
            raise FailedPrecondition("the target container is not running", subject=target)
        return f"/proc/{rec.pid}/ns/pid"

    def _image(self, ref: str) -> Any:
        from images.store import ImageNotFoundError, ImageStoreError

        try:
            return self.deps.store.get(ref)
        except ImageNotFoundError:
            raise NotFound(f"image {ref!r} is not present: pull it first", subject=ref) from None
        except ImageStoreError as exc:
            raise InvalidArgument(str(exc), subject=ref) from None

    def _mount_rootfs(self, rec: ContainerRecord, image: Any) -> str:
        from overlayfs.mounts import mount_all

        rootfs = os.path.join(rec.bundle, "rootfs")
        os.makedirs(rootfs, mode=0o700)
        mounts = self.deps.store.rootfs_mounts(
            image, rec.snapshot, labels={"pinnace.io/cri-container": rec.id}
        )
        mount_all(mounts, rootfs)
        return rootfs

    def _teardown(self, rec: ContainerRecord) -> None:
        """Everything create made, in reverse; each step tolerates its part being gone."""
        from overlayfs.errors import SnapshotNotFoundError
        from overlayfs.mounts import unmount_all
        from runtime.delete import delete
        from runtime.errors import ContainerNotFound
        from runtime.state import RuntimeRoot

        with contextlib.suppress(ContainerNotFound):
            delete(RuntimeRoot(self.deps.runtime_root), rec.id, force=True)
        rootfs = os.path.join(rec.bundle, "rootfs") if rec.bundle else ""
        if rootfs and os.path.isdir(rootfs):
            unmount_all(rootfs)
        if rec.snapshot:
            with contextlib.suppress(SnapshotNotFoundError):
                self.deps.store.snapshotter.remove(rec.snapshot)
        if rec.run_dir:
            shutil.rmtree(rec.run_dir, ignore_errors=True)
        shutil.rmtree(rec.dir, ignore_errors=True)

    def _reload_names(self) -> None:
        """Names from disk: records created by an earlier server count too."""
        names = {}
        for cid in self._ids():
            with contextlib.suppress(NotFound, OSError, ValueError):
                r = self._load(cid)
                names[r.full_name] = r.id
        # reservations of creates in flight (no record yet) stay
        for full, cid in self._names.items():
            names.setdefault(full, cid)
        self._names = names

    # -- Start / Stop / Remove -----------------------------------------------------

    def start(self, id_or_prefix: str) -> None:
        from runtime.errors import RuntimeFailure
        from runtime.start import start
        from runtime.state import RuntimeRoot

        cid = self.resolve(id_or_prefix)
        with self._locked(cid):
            rec = self.refresh(self._load(cid))
            if rec.state != CREATED:
                raise FailedPrecondition(
                    f"cannot start a container that is {rec.state}", subject=cid
                )
            try:
                start(RuntimeRoot(self.deps.runtime_root), cid)
            except RuntimeFailure as exc:
                raise FailedPrecondition(f"cannot start: {exc}", subject=cid) from None
            rec.state = RUNNING
            rec.started_at = now_ns()
            self._save(rec)
        self.on_event(cid, "started")

    def stop(self, id_or_prefix: str, timeout: float) -> None:
        """The image's stop signal, `timeout` seconds, then SIGKILL to every process of the
        container; returns once the exit is recorded. Stopping a stopped container is fine."""
        cid = self.resolve(id_or_prefix)
        with self._locked(cid):
            rec = self.refresh(self._load(cid))
            self._stop(rec, timeout)

    def _stop(self, rec: ContainerRecord, timeout: float) -> None:
        from runtime.errors import RuntimeFailure
        from runtime.kill import kill, parse_signal
        from runtime.state import RuntimeRoot

        if rec.state in (EXITED, CREATING):
            return
        root = RuntimeRoot(self.deps.runtime_root)
        if rec.state == RUNNING and timeout > 0:
            try:
                sig = parse_signal(rec.stop_signal or "SIGTERM")
            except RuntimeFailure:
                sig = signal.SIGTERM
            with contextlib.suppress(RuntimeFailure):
                kill(root, rec.id, sig)
            if self._wait_exit(rec, timeout):
                return
        with contextlib.suppress(RuntimeFailure):
            kill(root, rec.id, signal.SIGKILL, all_processes=True)
        if not self._wait_exit(rec, STOP_GRACE_AFTER_KILL):
            raise Internal("the container did not exit after SIGKILL", subject=rec.id)

    def remove(self, id_or_prefix: str) -> None:
        """Force-remove (a running container is killed first); unknown ids are fine, as
        kubelet retries. The log file stays: kubelet owns and deletes it."""
        try:
            cid = self.resolve(id_or_prefix)
        except NotFound:
            return
        with self._locked(cid):
            try:
                rec = self.refresh(self._load(cid))
            except NotFound:
                return
            self._stop(rec, 0)
            self._teardown(rec)
            with self._lock:
                self._names.pop(rec.full_name, None)
        self.on_event(cid, "deleted")

    # -- what kubelet asks ---------------------------------------------------------

    def status(self, id_or_prefix: str, verbose: bool = False) -> api_pb2.ContainerStatusResponse:
        rec = self.get(id_or_prefix)
        resp = api_pb2.ContainerStatusResponse(status=self.to_status(rec))
        if verbose:
            record = rec.to_json()
            record.pop("config", None)
            info = {"record": record, "pid": rec.pid if rec.state == RUNNING else 0}
            resp.info["info"] = json.dumps(info)
        return resp

    def to_status(self, rec: ContainerRecord) -> api_pb2.ContainerStatus:
        cfg = rec.config_proto()
        st = api_pb2.ContainerStatus(
            id=rec.id,
            metadata=api_pb2.ContainerMetadata(name=rec.name, attempt=rec.attempt),
            state=_STATE_PROTO[rec.state],
            created_at=rec.created_at,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
            exit_code=rec.exit_code,
            image=api_pb2.ImageSpec(image=rec.image_name or rec.image),
            image_ref=rec.image_ref,
            image_id=rec.image_ref,
            reason=rec.reason,
            message=rec.message,
            labels=rec.labels,
            annotations=rec.annotations,
            mounts=list(cfg.mounts),
            log_path=rec.log_path,
        )
        st.resources.linux.CopyFrom(_resources_proto(rec.resources))
        if rec.user:
            st.user.linux.uid = int(rec.user.get("uid", 0))
            st.user.linux.gid = int(rec.user.get("gid", 0))
            st.user.linux.supplemental_groups.extend(
                int(g) for g in rec.user.get("additionalGids") or []
            )
        if rec.stop_signal:
            with contextlib.suppress(ValueError):
                name = rec.stop_signal.upper()
                st.stop_signal = api_pb2.Signal.Value(
                    name if name.startswith("SIG") else "SIG" + name
                )
        return st

    def to_proto(self, rec: ContainerRecord) -> api_pb2.Container:
        return api_pb2.Container(
            id=rec.id,
            pod_sandbox_id=rec.sandbox_id,
            metadata=api_pb2.ContainerMetadata(name=rec.name, attempt=rec.attempt),
            image=api_pb2.ImageSpec(image=rec.image_name or rec.image),
            image_ref=rec.image_ref,
            image_id=rec.image_ref,
            state=_STATE_PROTO[rec.state],
            created_at=rec.created_at,
            labels=rec.labels,
            annotations=rec.annotations,
        )

    def find(self, flt: api_pb2.ContainerFilter | None) -> list[api_pb2.Container]:
        return [self.to_proto(rec) for rec in self.listed(flt)]

    def listed(
        self, flt: api_pb2.ContainerFilter | api_pb2.ContainerStatsFilter | None
    ) -> list[ContainerRecord]:
        """What ListContainers and ListContainerStats show: every container but those still
        being created, matching the filter's id and pod prefixes, labels and state."""
        out = []
        for rec in self.all():
            if rec.state == CREATING:
                continue
            if flt is not None:
                if flt.id and not rec.id.startswith(flt.id):
                    continue
                if flt.pod_sandbox_id and not rec.sandbox_id.startswith(flt.pod_sandbox_id):
                    continue
                if (
                    isinstance(flt, api_pb2.ContainerFilter)
                    and flt.HasField("state")
                    and _STATE_PROTO[rec.state] != flt.state.state
                ):
                    continue
                if any(rec.labels.get(k) != v for k, v in flt.label_selector.items()):
                    continue
            out.append(rec)
        return out

    # -- UpdateContainerResources, ExecSync, ReopenContainerLog ---------------------

    def update_resources(self, id_or_prefix: str, linux: api_pb2.LinuxContainerResources) -> None:
        from cgroups.errors import CgroupError, ControllerUnavailable, FeatureUnavailable
        from cri.container_spec import resources_to_oci
        from runtime.errors import RuntimeFailure, SpecError
        from runtime.state import RuntimeRoot
        from runtime.update import update_resources

        cid = self.resolve(id_or_prefix)
        with self._locked(cid):
            rec = self.refresh(self._load(cid))
            if rec.state not in (CREATED, RUNNING):
                raise FailedPrecondition(
                    f"cannot update a container that is {rec.state}", subject=cid
                )
            new = dict(rec.resources)
            new.update(resources_to_oci(linux))
            try:
                update_resources(RuntimeRoot(self.deps.runtime_root), cid, new)
            except SpecError as exc:
                raise InvalidArgument(str(exc), subject=cid) from None
            except (RuntimeFailure, ControllerUnavailable, FeatureUnavailable) as exc:
                # e.g. a memory limit where the unified hierarchy has no memory controller
                raise FailedPrecondition(str(exc), subject=cid) from None
            except CgroupError as exc:
                raise Internal(f"cannot apply the resources: {exc}", subject=cid) from None
            rec.resources = new
            self._save(rec)

    def exec_sync(
        self, id_or_prefix: str, cmd: list[str], timeout: float
    ) -> tuple[bytes, bytes, int]:
        """Run `cmd` in the container through pinnace-oci exec; its output (each stream cut
        at the limit) and exit code. A timeout kills the process and is DEADLINE_EXCEEDED."""
        if not cmd:
            raise InvalidArgument("cmd is empty", subject="cmd")
        rec = self.get(id_or_prefix)
        if rec.state != RUNNING:
            raise FailedPrecondition(f"container is {rec.state}, not running", subject=rec.id)
        with open(os.path.join(rec.bundle, "config.json")) as f:
            proc = dict(json.load(f).get("process") or {})
        proc["args"] = list(cmd)
        proc["terminal"] = False
        work = os.path.join(rec.run_dir, f"exec-{secrets.token_hex(6)}")
        os.mkdir(work, 0o700)
        try:
            pfile = os.path.join(work, "process.json")
            pidfile = os.path.join(work, "pid")
            with open(pfile, "w") as f:
                json.dump(proc, f)
            argv = [*launcher.command(), "--root", self.deps.runtime_root]
            argv += ["exec", "--process", pfile, "--pid-file", pidfile, rec.id]
            return self._run_exec(argv, pidfile, timeout, rec.id)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run_exec(
        self, argv: list[str], pidfile: str, timeout: float, cid: str
    ) -> tuple[bytes, bytes, int]:
        limit = self.deps.exec_output_limit
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
        try:
            out, err = child.communicate(timeout=timeout if timeout > 0 else None)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError, ValueError), open(pidfile) as f:
                os.kill(int(f.read().strip()), signal.SIGKILL)
            child.kill()
            child.communicate()
            raise DeadlineExceeded(
                f"command timed out after {timeout:g}s and was killed", subject=cid
            ) from None
        code = child.returncode
        if code < 0:
            code = 128 - code
        if code == 255 and err.startswith(b"pinnace-oci"):
            raise FailedPrecondition(err.decode(errors="replace").strip(), subject=cid)
        return out[:limit], err[:limit], code

    def reopen_log(self, id_or_prefix: str) -> None:
        from cri.monitor import MonitorError, reopen_log

        rec = self.get(id_or_prefix)
        if rec.state != RUNNING:
            raise FailedPrecondition(f"container is {rec.state}, not running", subject=rec.id)
        try:
            reopen_log(rec.dir)
        except MonitorError as exc:
            raise Internal(str(exc), subject=rec.id) from None

    # -- after a restart -------------------------------------------------------------

    def recover(self) -> list[str]:
        """Roll back creates a crash interrupted; refresh the rest. Returns what it did."""
        done = []
        records.remove_stale_temps(self.dir)
        for cid in self._ids():
            try:
                rec = self._load(cid)
            except (NotFound, ValueError, OSError) as exc:
                done.append(f"{cid}: unreadable record left alone ({exc})")
                continue
            if rec.state == CREATING:
                self._teardown(rec)
                done.append(f"{cid}: interrupted create rolled back")
                continue
            try:
                self.refresh(rec)
            except CRIError as exc:
                done.append(f"{cid}: {exc}")
        with self._lock:
            self._names = {}
            self._reload_names()
        return done


def _resources_proto(res: dict[str, Any]) -> api_pb2.LinuxContainerResources:
    """linux.resources of the spec back into the CRI's terms, for ContainerStatus."""
    cpu = res.get("cpu") or {}
    mem = res.get("memory") or {}
    out = api_pb2.LinuxContainerResources(
        cpu_period=int(cpu.get("period") or 0),
        cpu_quota=int(cpu.get("quota") or 0),
        cpu_shares=int(cpu.get("shares") or 0),
        cpuset_cpus=str(cpu.get("cpus") or ""),
        cpuset_mems=str(cpu.get("mems") or ""),
        memory_limit_in_bytes=int(mem.get("limit") or 0),
        memory_swap_limit_in_bytes=int(mem.get("swap") or 0),
    )
    for k, v in (res.get("unified") or {}).items():
        out.unified[k] = str(v)
    for h in res.get("hugepageLimits") or []:
        out.hugepage_limits.add(page_size=str(h.get("pageSize", "")), limit=int(h.get("limit", 0)))
    return out
