"""The create/start/state/kill/delete lifecycle through the CLI, one process per verb."""

import json
import time
from pathlib import Path


def test_create_start_state_kill_delete(oci, make_bundle, tmp_path):
    bundle = make_bundle(["sleep", "1000"])
    pid_file = tmp_path / "pid"
    oci("create", "--bundle", str(bundle), "--pid-file", str(pid_file), "c1")
    st = oci.state("c1")
    assert st["status"] == "created"
    assert st["ociVersion"] == "1.2.0"
    assert st["bundle"] == str(bundle)
    pid = st["pid"]
    assert int(pid_file.read_text()) == pid
    # created: the init waits, still Python (not yet sleep), unreachable from outside
    assert Path(f"/proc/{pid}/status").read_text().count("State:") == 1
    oci("start", "c1")
    assert oci.status("c1") == "running"
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"
    assert "c1" in oci.ids()
    oci("kill", "c1", "KILL")
    oci.wait_for_status("c1", "stopped")
    assert oci.state("c1")["pid"] == 0
    oci("delete", "c1")
    assert oci.ids() == []
    res = oci("state", "c1", check=False)
    assert res.returncode == 1 and "container does not exist" in res.stderr


def test_state_survives_the_creating_process(oci, make_bundle):
    """`create` has exited: every later verb finds the container from disk alone."""
    bundle = make_bundle(["sh", "-c", "exit 3"])
    oci("create", "--bundle", str(bundle), "c2")
    assert oci.status("c2") == "created"
    oci("start", "c2")
    oci.wait_for_status("c2", "stopped")
    oci("delete", "c2")


def test_run_returns_the_exit_status_and_deletes(oci, make_bundle):
    bundle = make_bundle(["sh", "-c", "echo out; echo err >&2; exit 7"])
    res = oci("run", "--bundle", str(bundle), "r1", check=False)
    assert res.returncode == 7, res.stderr
    assert res.stdout == "out\n"
    assert res.stderr == "err\n"
    assert oci.ids() == []


def test_container_sees_its_own_world(oci, make_bundle):
    script = "echo pid=$$; hostname; cat /proc/self/cgroup; ls /sys/class/net; id -u"
    bundle = make_bundle(["sh", "-c", script])
    res = oci("run", "--bundle", str(bundle), "w1")
    lines = res.stdout.splitlines()
    assert lines[0] == "pid=1"
    assert lines[1] == "pinnace-test"
    assert lines[-2] == "lo"  # a new network namespace: loopback only
    assert lines[-1] == "0"


def test_start_twice_and_kill_stopped_are_clear_errors(oci, make_bundle):
    bundle = make_bundle(["true"])
    oci("create", "--bundle", str(bundle), "e1")
    oci("start", "e1")
    oci.wait_for_status("e1", "stopped")
    res = oci("start", "e1", check=False)
    assert res.returncode == 1 and "cannot start a container that has stopped" in res.stderr
    res = oci("kill", "e1", "TERM", check=False)
    assert res.returncode == 1 and "container not running" in res.stderr
    oci("delete", "e1")


def test_delete_running_needs_force(oci, make_bundle):
    bundle = make_bundle(["sleep", "1000"])
    oci("run", "--detach", "--bundle", str(bundle), "d1")
    assert oci.status("d1") == "running"
    res = oci("delete", "d1", check=False)
    assert res.returncode == 1
    assert "cannot delete container d1 that is not stopped: running" in res.stderr
    pid = oci.state("d1")["pid"]
    oci("delete", "--force", "d1")
    assert (
        not Path(f"/proc/{pid}").exists()
        or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    )
    assert oci("delete", "--force", "d1").returncode == 0  # runc: force on nothing succeeds
    assert oci("delete", "d1", check=False).returncode == 1


def test_duplicate_id_and_bad_ids(oci, make_bundle):
    bundle = make_bundle(["sleep", "1000"])
    oci("create", "--bundle", str(bundle), "dup")
    res = oci("create", "--bundle", str(bundle), "dup", check=False)
    assert res.returncode == 1 and "container with id exists: dup" in res.stderr
    assert oci.status("dup") == "created"  # the failed create touched nothing of it
    for bad in ("../x", "a/b", ""):
        res = oci("create", "--bundle", str(bundle), bad, check=False)
        assert res.returncode != 0
    oci("delete", "dup")


def test_bad_config_leaves_nothing(oci, make_bundle, hierarchy_root):
    def bad(cfg):
        cfg["process"]["rlimits"] = [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]

    bundle = make_bundle(["true"], edit=bad)
    res = oci("create", "--bundle", str(bundle), "bad1", check=False)
    assert res.returncode == 1
    assert "process.rlimits[0]" in res.stderr
    assert oci.ids() == []
    assert not list(oci.root.glob("bad1*"))
    assert not (hierarchy_root / "pinnace" / "bad1").exists()


def test_exec_failure_in_the_container_is_reported(oci, make_bundle):
    bundle = make_bundle(["/no/such/binary"])
    res = oci("run", "--bundle", str(bundle), "x1", check=False)
    assert res.returncode == 127
    assert "/no/such/binary" in res.stderr


def test_pause_resume(oci, make_bundle):
    bundle = make_bundle(["sleep", "1000"])
    oci("run", "--detach", "--bundle", str(bundle), "p1")
    oci("pause", "p1")
    assert oci.status("p1") == "paused"
    assert oci("pause", "p1", check=False).returncode == 1
    oci("resume", "p1")
    assert oci.status("p1") == "running"
    assert "container not paused" in oci("resume", "p1", check=False).stderr
    oci("delete", "--force", "p1")


def test_kill_all_and_ps(oci, make_bundle):
    bundle = make_bundle(["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    oci("run", "--detach", "--bundle", str(bundle), "k1")
    deadline = time.monotonic() + 10
    while len(json.loads(oci("ps", "--format", "json", "k1").stdout)) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pids = json.loads(oci("ps", "--format", "json", "k1").stdout)
    table = oci("ps", "k1").stdout.splitlines()
    assert "PID" in table[0].split() and len(table) == 1 + len(pids)
    oci("kill", "--all", "k1", "KILL")
    oci.wait_for_status("k1", "stopped")
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}/cmdline").exists()
            or Path(f"/proc/{pid}/cmdline").read_bytes() == b""
        )
    oci("delete", "k1")


def test_exec_runs_inside(oci, make_bundle, tmp_path):
    bundle = make_bundle(["sleep", "1000"])
    oci("run", "--detach", "--bundle", str(bundle), "x2")
    res = oci("exec", "x2", "sh", "-c", "hostname; echo $$; exit 5", check=False)
    assert res.returncode == 5, res.stderr
    name, pid = res.stdout.split()
    assert name == "pinnace-test" and int(pid) > 1  # in the container's pid namespace
    proc = tmp_path / "process.json"
    proc.write_text(
        json.dumps(
            {
                "args": ["id", "-u"],
                "cwd": "/tmp",
                "user": {"uid": 1000, "gid": 1000},
                "env": ["PATH=/bin"],
            }
        )
    )
    res = oci("exec", "--process", str(proc), "x2")
    assert res.stdout.strip() == "1000"
    res = oci(
        "exec",
        "--user",
        "65534:65534",
        "--env",
        "X=42",
        "--cwd",
        "/tmp",
        "x2",
        "sh",
        "-c",
        "echo $X $(pwd) $(id -u)",
    )
    assert res.stdout.split() == ["42", "/tmp", "65534"]
    pid_file = tmp_path / "exec.pid"
    oci("exec", "--detach", "--pid-file", str(pid_file), "x2", "sleep", "1000")
    exec_pid = int(pid_file.read_text())
    assert exec_pid in json.loads(oci("ps", "--format", "json", "x2").stdout)
    oci("delete", "--force", "x2")


def test_spec_and_features(oci, tmp_path):
    oci("spec", "--bundle", str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["ociVersion"] == "1.2.0" and config["process"]["args"]
    res = oci("spec", "--bundle", str(tmp_path), check=False)
    assert res.returncode == 1 and "config.json exists" in res.stderr
    features = json.loads(oci("features").stdout)
    assert features["ociVersionMax"] == "1.2.0"
    assert "mount" in features["linux"]["namespaces"]


def test_version_and_usage(oci):
    res = oci("--version")
    assert res.stdout.startswith("pinnace-oci version ") and "spec: 1.2.0" in res.stdout
    assert oci("bogus-verb", check=False).returncode == 2
    res = oci("--systemd-cgroup", "create", "--bundle", "/nonexistent", "s1", check=False)
    assert res.returncode == 1 and "--systemd-cgroup is not supported" in res.stderr


def test_log_file_in_json(oci, tmp_path):
    log = tmp_path / "log.json"
    res = oci("--log", str(log), "--log-format", "json", "state", "nope", check=False)
    assert res.returncode == 1
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "container does not exist" in entry["msg"]


def test_signals_reach_the_init(oci, make_bundle):
    bundle = make_bundle(["sh", "-c", "trap 'exit 42' TERM; while true; do sleep 0.1; done"])
    oci("run", "--detach", "--bundle", str(bundle), "s2")
    time.sleep(0.3)
    oci("kill", "s2")  # SIGTERM by default
    oci.wait_for_status("s2", "stopped")
    oci("delete", "s2")


def test_list_table_and_quiet(oci, make_bundle):
    oci("create", "--bundle", str(make_bundle(["true"])), "l1")
    table = oci("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert table[1].split()[:3] == ["l1", str(oci.state("l1")["pid"]), "created"]
    assert oci("list", "-q").stdout == "l1\n"
    oci("delete", "l1")


def test_events_stream_until_the_container_stops(oci, make_bundle):
    bundle = make_bundle(["sh", "-c", "sleep 1"])
    oci("run", "--detach", "--bundle", str(bundle), "ev2")
    res = oci("events", "--interval", "200ms", "ev2", timeout=30)
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(events) >= 2  # at least two intervals in the second it ran
    assert all(e["type"] == "stats" and e["id"] == "ev2" for e in events)
    oci("delete", "ev2")


def test_no_pivot(oci, make_bundle):
    bundle = make_bundle(["sh", "-c", "ls /; cat /proc/self/mountinfo | wc -l"])
    res = oci("run", "--no-pivot", "--bundle", str(bundle), "np1")
    names = res.stdout.split()
    assert "bin" in names and "etc" in names


def test_a_create_killed_midway_leaves_a_stopped_container_that_delete_removes(
    oci, make_bundle, tmp_path
):
    """kill -9 of `create` while a createRuntime hook runs: the record says "creating",
    but with its creator gone the container is stopped, and a plain delete removes it
    and its cgroup (as after runc); nothing of it keeps running."""
    import os
    import signal
    import subprocess

    from cgroups.discovery import discover
    from tests.fixtures.oci import OCI

    hook_pid = tmp_path / "hook.pid"
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"echo $$ > {hook_pid}; exec sleep 60"]}
    bundle = make_bundle(["true"], edit=lambda c: c.update(hooks={"createRuntime": [hook]}))
    with open(tmp_path / "out", "wb") as out:  # files, not pipes: the init would hold a pipe
        create = subprocess.Popen(
            [*OCI, "--root", str(oci.root), "create", "--bundle", str(bundle), "k1"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while not (hook_pid.exists() and hook_pid.read_text().strip()):
            assert create.poll() is None, (tmp_path / "out").read_text()
            assert time.monotonic() < deadline, "the hook never ran"
            time.sleep(0.02)
        assert oci.status("k1") == "creating"  # its creator is alive: still being made
        cgroup_dir = json.loads((oci.root / "k1" / "state.json").read_text())["cgroup"]
        create.send_signal(signal.SIGKILL)
        create.wait(timeout=10)
        assert oci.status("k1") == "stopped"
        assert oci.state("k1")["pid"] == 0
        oci("delete", "k1")
        assert oci.ids() == []
        mount_point = discover().mount_point
        assert mount_point is not None
        assert not Path(mount_point, cgroup_dir.lstrip("/")).exists()
    finally:
        if create.poll() is None:
            create.kill()
            create.wait()
        if hook_pid.exists() and hook_pid.read_text().strip():
            try:  # the hook is its own process, orphaned by the kill: ours to end
                os.kill(int(hook_pid.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_cgroup_with_another_containers_processes_is_refused(oci, make_bundle, tmp_path):
    """Two containers named alike under two --root directories get the same default
    cgroup (/pinnace/ID), as two that name the same cgroupsPath do: the second create
    must fail and leave the first running, not take its cgroup and, on delete, kill it."""
    from tests.fixtures.oci import OCIRuntime

    bundle = make_bundle(["sleep", "1000"])
    oci("create", "--bundle", str(bundle), "same")
    pid = oci.state("same")["pid"]
    other = OCIRuntime(tmp_path / "other-root")
    try:
        res = other("create", "--bundle", str(bundle), "same", check=False)
        assert res.returncode == 1
        assert "cgroup is not empty" in res.stderr, res.stderr
        assert not (tmp_path / "other-root" / "same").exists()  # nothing half-created
        assert oci.status("same") == "created"
        assert Path(f"/proc/{pid}").exists()  # the failed create's undo did not kill it
    finally:
        other("delete", "--force", "same", check=False)  # if it was made after all
    oci("delete", "--force", "same")
