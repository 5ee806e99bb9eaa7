"""The container monitor, forked from the zygote, against the real kernel and runtime.

Containers run from busybox bundles with their cgroup under a per-test
/pinnace-test-... parent; every container, monitor, pod init and cgroup is
removed at the end (by id / pid), even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cri.crilog import parse_log, parse_record
from cri.monitor import (
    ExitStatus,
    MonitorError,
    MonitorReply,
    MonitorRequest,
    monitor_alive,
    read_exit,
    reopen_log,
)
from cri.zygote import PodInitError, Zygote
from runtime.delete import delete
from runtime.start import start
from runtime.state import RuntimeRoot, ensure_gone, proc_start_time

GUARD = 30.0  # a hang guard, never a timing assertion


def wait_for(cond, what, timeout=GUARD):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_pinned(pid: int, start_time: int) -> None:
    """SIGKILL (pid, start) if it still names that process, and wait until it is gone."""
    if pid and proc_start_time(pid) == start_time:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            if proc_start_time(pid) == start_time:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            os.close(fd)
        assert ensure_gone(pid, start_time, timeout=GUARD), f"pid {pid} survived SIGKILL"


class Env:
    """Bundles, requests and the cleanup of everything they lead to."""

    def __init__(self, tmp_path: Path, make_bundle, hierarchy_root) -> None:
        self.tmp = tmp_path
        self.make_bundle = make_bundle
        self.root = RuntimeRoot(str(tmp_path / "rt"))
        self.cgroup_base = f"pinnace-test-mon-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.hierarchy = Path(hierarchy_root)
        self.cids: list[str] = []
        self.pids: list[tuple[int, int]] = []  # monitors and pod inits

    def bundle(self, cid: str, args: list[str], *, terminal: bool = False) -> Path:
        def edit(config):
            config["linux"]["cgroupsPath"] = f"/{self.cgroup_base}/{cid}"

        return Path(self.make_bundle(args, terminal=terminal, edit=edit))

    def request(self, cid: str, bundle: Path, **kw) -> MonitorRequest:
        state_dir = self.tmp / "state" / cid
        state_dir.mkdir(parents=True)
        (self.tmp / "logs").mkdir(exist_ok=True)
        self.cids.append(cid)
        return MonitorRequest(
            container_id=cid,
            bundle=str(bundle),
            runtime_root=self.root.path,
            state_dir=str(state_dir),
            log_path=str(self.tmp / "logs" / f"{cid}.log"),
            **kw,
        )

    def spawn(self, zygote: Zygote, req: MonitorRequest) -> MonitorReply:
        reply = zygote.spawn_monitor(req)
        if reply.monitor_pid:
            self.pids.append((reply.monitor_pid, reply.monitor_start))
        return reply

    def cgroup_dir(self, cid: str) -> Path:
        return self.hierarchy / self.cgroup_base / cid

    def cleanup(self) -> None:
        for cid in self.cids:
            delete(self.root, cid, force=True)
        for pid, start_time in self.pids:
            kill_pinned(pid, start_time)
        base = self.hierarchy / self.cgroup_base
        if base.exists():
            base.rmdir()


@pytest.fixture
def env(require_root, tmp_path, make_bundle, hierarchy_root):
    e = Env(tmp_path, make_bundle, hierarchy_root)
    try:
        yield e
    finally:
        e.cleanup()


@pytest.fixture
def zygote(require_root):
    z = Zygote.start()
    try:
        yield z
    finally:
        z.close()


def _log(req: MonitorRequest, name: str | None = None) -> bytes:
    path = Path(req.log_path if name is None else name)
    return path.read_bytes() if path.exists() else b""


def test_monitor_logs_output_and_records_the_exit(env, zygote):
    # `read` sees EOF: without stdin the container's fd 0 is /dev/null
    script = "echo one; read x || echo two; echo err >&2; exit 3"
    req = env.request("m1", env.bundle("m1", ["sh", "-c", script]))
    reply = env.spawn(zygote, req)
    assert reply.ok, reply
    assert reply.init_pid > 0 and proc_start_time(reply.init_pid) == reply.init_start
    assert proc_start_time(reply.monitor_pid) == reply.monitor_start
    assert monitor_alive(req.state_dir)
    assert os.stat(Path(req.state_dir) / "monitor.sock").st_mode & 0o777 == 0o600
    assert read_exit(req.state_dir) is None
    start(env.root, "m1")
    status = wait_for(lambda: read_exit(req.state_dir), "exit.json")
    assert (status.exit_code, status.signal, status.oom_killed) == (3, 0, False)
    assert abs(status.finished_at - time.time_ns()) < 3600 * 10**9
    data = _log(req)
    for line in data.split(b"\n")[:-1]:
        parse_record(line)  # every line is a CRI record
    assert parse_log(data) == {"stdout": [b"one", b"two"], "stderr": [b"err"]}
    wait_for(lambda: not monitor_alive(req.state_dir), "the monitor to exit")
    assert not (Path(req.state_dir) / "monitor.sock").exists()
    with pytest.raises(MonitorError, match="m1"):
        reopen_log(req.state_dir)


def test_tty_output_reaches_the_log(env, zygote):
    req = env.request("t1", env.bundle("t1", ["sh", "-c", "tty; echo hello-tty"], terminal=True))
    req.tty = True
    reply = env.spawn(zygote, req)
    assert reply.ok, reply
    start(env.root, "t1")
    assert wait_for(lambda: read_exit(req.state_dir), "exit.json").exit_code == 0
    lines = parse_log(_log(req))
    assert lines["stdout"] == [b"/dev/pts/0\r", b"hello-tty\r"]
    assert lines["stderr"] == []


def test_reopen_log_after_rename(env, zygote):
    script = "echo first; while [ ! -e /go ]; do sleep 0.05; done; echo second"
    bundle = env.bundle("r1", ["sh", "-c", script])
    req = env.request("r1", bundle)
    assert env.spawn(zygote, req).ok
    start(env.root, "r1")
    wait_for(lambda: b"first" in _log(req), "the first line")
    rotated = req.log_path + ".1"
    os.rename(req.log_path, rotated)
    reopen_log(req.state_dir)
    (bundle / "rootfs" / "go").touch()
    wait_for(lambda: read_exit(req.state_dir), "exit.json")
    assert parse_log(_log(req, rotated))["stdout"] == [b"first"]
    assert parse_log(_log(req))["stdout"] == [b"second"]


SERVER = """
import json, sys, time
from cri.monitor import MonitorRequest
from cri.zygote import Zygote
z = Zygote.start()
reply = z.spawn_monitor(MonitorRequest.from_json(json.loads(sys.argv[1])))
print(json.dumps({"zygote": z.pid, "reply": reply.to_json()}), flush=True)
time.sleep(1000)
"""


def test_monitor_outlives_a_killed_server_and_zygote(env, spawn):
    script = "i=0; while [ ! -e /stop ]; do echo tick $i; i=$((i+1)); sleep 0.05; done; exit 5"
    bundle = env.bundle("k1", ["sh", "-c", script])
    req = env.request("k1", bundle)
    server = spawn(sys.executable, "-c", SERVER, json.dumps(req.to_json()), stdout=subprocess.PIPE)
    out = json.loads(server.stdout.readline())
    zygote_pid, zygote_start = out["zygote"], proc_start_time(out["zygote"])
    reply = MonitorReply.from_json(out["reply"])
    assert reply.ok, reply
    env.pids += [(reply.monitor_pid, reply.monitor_start), (zygote_pid, zygote_start)]
    start(env.root, "k1")
    wait_for(lambda: b"tick 1" in _log(req), "ticks")
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=GUARD)
    assert zygote_start is not None
    kill_pinned(zygote_pid, zygote_start)
    assert monitor_alive(req.state_dir)
    assert RuntimeRoot(env.root.path).get("k1").status(env.root.get("k1").load()) == "running"
    before = len(_log(req).splitlines())
    wait_for(lambda: len(_log(req).splitlines()) > before + 2, "more ticks after the kill")
    reopen_log(req.state_dir)  # the control socket still answers
    (bundle / "rootfs" / "stop").touch()
    assert wait_for(lambda: read_exit(req.state_dir), "exit.json").exit_code == 5
    wait_for(lambda: not monitor_alive(req.state_dir), "the monitor to exit")


def test_a_container_deleted_before_start_still_gets_an_exit(env, zygote):
    req = env.request("d1", env.bundle("d1", ["true"]))
    assert env.spawn(zygote, req).ok
    delete(env.root, "d1", force=True)
    status = wait_for(lambda: read_exit(req.state_dir), "exit.json")
    assert (status.exit_code, status.signal) == (128 + signal.SIGKILL, signal.SIGKILL)
    wait_for(lambda: not monitor_alive(req.state_dir), "the monitor to exit")
    assert not env.cgroup_dir("d1").exists()


def _bad_version(config):
    config["ociVersion"] = "9.0.0"


@pytest.mark.parametrize("kind", ["bad-version", "no-config"])
def test_a_bad_bundle_is_a_spec_error_and_leaves_nothing(env, zygote, kind):
    cid = "b1"
    bundle = env.bundle(cid, ["true"])
    if kind == "no-config":
        (bundle / "config.json").unlink()
    else:
        config = json.loads((bundle / "config.json").read_text())
        _bad_version(config)
        (bundle / "config.json").write_text(json.dumps(config))
    req = env.request(cid, bundle)
    reply = env.spawn(zygote, req)
    assert not reply.ok
    assert reply.error_kind == "spec"
    assert ("ociVersion" if kind == "bad-version" else "config.json") in reply.error
    assert reply.monitor_pid == 0 and reply.init_pid == 0
    assert not os.path.exists(os.path.join(env.root.path, cid))
    assert not env.cgroup_dir(cid).exists()
    assert sorted(os.listdir(req.state_dir)) == []
    assert not os.path.exists(req.log_path)
    assert zygote.alive  # and it still serves
    ok = env.request("b2", env.bundle("b2", ["true"]))
    assert env.spawn(zygote, ok).ok


def test_a_missing_state_dir_is_reported(env, zygote):
    req = env.request("s1", env.bundle("s1", ["true"]))
    os.rmdir(req.state_dir)
    reply = env.spawn(zygote, req)
    assert not reply.ok and reply.error_kind == "internal"
    assert req.state_dir in reply.error
    assert not os.path.exists(os.path.join(env.root.path, "s1"))


def _nspid(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return line.split()[1:]
    raise AssertionError(f"no NSpid in /proc/{pid}/status")


def test_pod_init_is_pid_1_of_a_new_pid_namespace(env, zygote, tmp_path):
    from namespaces.handles import Kind, create_pinned, unpin

    (tmp_path / "ns").mkdir()
    pins = create_pinned([Kind.UTS, Kind.IPC], tmp_path / "ns", hostname="pod-x")
    try:
        pid, start_time = zygote.spawn_pod_init(uts=str(pins[Kind.UTS]), ipc=str(pins[Kind.IPC]))
        env.pids.append((pid, start_time))
        assert proc_start_time(pid) == start_time
        assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        assert _nspid(pid) == [str(pid), "1"]
        assert os.stat(f"/proc/{pid}/ns/uts").st_ino == os.stat(pins[Kind.UTS]).st_ino
        assert os.stat(f"/proc/{pid}/ns/ipc").st_ino == os.stat(pins[Kind.IPC]).st_ino
        assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
        os.kill(pid, signal.SIGINT)  # ignored by the pod's pid 1
        os.kill(pid, signal.SIGTERM)
        assert ensure_gone(pid, start_time, timeout=GUARD)
    finally:
        for p in pins.values():
            unpin(p)


def test_pod_init_with_a_bad_namespace_path(env, zygote, tmp_path):
    with pytest.raises(PodInitError, match="nowhere"):
        zygote.spawn_pod_init(net=str(tmp_path / "nowhere"))
    assert zygote.alive


def test_a_dead_zygote_is_an_error_and_can_be_restarted(env):
    from cri.zygote import ZygoteError

    z = Zygote.start()
    try:
        os.kill(z.pid, signal.SIGKILL)
        with pytest.raises(ZygoteError, match=str(z.pid)):
            z.spawn_pod_init()
        assert not z.alive
    finally:
        z.close()
    z2 = Zygote.start()
    try:
        pid, start_time = z2.spawn_pod_init()
        env.pids.append((pid, start_time))
    finally:
        z2.close()


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Pss in /proc/{pid}/smaps_rollup")


def test_measure_monitor_pss(env, zygote):
    """Not an assertion on size: prints what one monitor costs (see the issue's target)."""
    reqs = []
    for i in range(3):
        cid = f"p{i}"
        req = env.request(cid, env.bundle(cid, ["sleep", "1000"]))
        reply = env.spawn(zygote, req)
        assert reply.ok, reply
        start(env.root, cid)
        reqs.append(reply)
    pss = [_pss_kib(r.monitor_pid) for r in reqs]
    assert all(p > 0 for p in pss)
    print(f"\nmonitor PSS (KiB) with 3 running: {pss}; zygote: {_pss_kib(zygote.pid)}")


@pytest.mark.parametrize("stdin", [True, False])
def test_stdin_is_a_pipe_only_when_asked(env, zygote, stdin):
    cid = "i1" if stdin else "i2"
    req = env.request(cid, env.bundle(cid, ["readlink", "/proc/self/fd/0"]), stdin=stdin)
    assert env.spawn(zygote, req).ok
    start(env.root, cid)
    assert wait_for(lambda: read_exit(req.state_dir), "exit.json").exit_code == 0
    [target] = parse_log(_log(req))["stdout"]
    assert target.startswith(b"pipe:") if stdin else target == b"/dev/null"


def test_messages_round_trip_and_refuse_wrong_types():
    req = MonitorRequest("c", "/b", "/rt", "/st", "/l.log", tty=True)
    assert MonitorRequest.from_json(json.loads(json.dumps(req.to_json()))) == req
    status = ExitStatus(137, 9, 1, False)
    assert ExitStatus.from_json(status.to_json()) == status
    assert MonitorReply.from_json({"ok": False, "error": "x"}).error_kind == ""
    with pytest.raises(ValueError, match=r"MonitorRequest\.tty"):
        MonitorRequest.from_json({**req.to_json(), "tty": "yes"})
    with pytest.raises(ValueError, match="MonitorRequest"):
        MonitorRequest.from_json({"container_id": "c"})
    with pytest.raises(ValueError, match="JSON object"):
        ExitStatus.from_json([1])
