"""The compiled front end (runtime/front_end.c): `start` and `delete` of plain containers
without Python, and every other invocation handed to the Python runtime unchanged.

Two builds of the front end, on real containers:
- `front`: it hands over to the real Python launcher, as installed: what engines run.
- `strict`: it hands over to a recorder that writes down its argv and exits 42, so a
  test knows whether the front end did the verb itself or handed it over.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime import launcher
from runtime.state import FRONT_END
from tests.fixtures.oci import OCIRuntime, run_captured

HANDED_OVER = 42


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """real/pinnace-oci beside the real launcher; strict/pinnace-oci beside a recorder."""
    if shutil.which("cc") is None:
        pytest.fail("the front end needs a C compiler (bin/setup installs gcc)")
    top = tmp_path_factory.mktemp("front-end")
    (top / "real").mkdir()
    (top / "strict").mkdir()
    launcher.install(str(top / "real" / launcher.PYTHON_LAUNCHER))
    recorder = top / "strict" / launcher.PYTHON_LAUNCHER
    recorder.write_text(
        f"#!{sys.executable}\nimport sys, json\n"
        f"open({str(top / 'handed-over')!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"sys.exit({HANDED_OVER})\n"
    )
    recorder.chmod(0o755)
    for build in ("real", "strict"):
        assert launcher.build_front_end(str(top / build / "pinnace-oci")) is None
    return top


class FrontEnd(OCIRuntime):
    """An OCIRuntime whose start and delete go through one build of the front end;
    create and the checks go through `python -m runtime` as in the other tests."""

    def __init__(self, root: Path, binary: Path, record: Path) -> None:
        super().__init__(root)
        self.binary = binary
        self.record = record

    def front(self, *args: str, check: bool = True, **kw):
        return run_captured(
            [str(self.binary), "--root", str(self.root), *args],
            label=f"front end {' '.join(args)}",
            check=check,
            **kw,
        )

    def handed_over(self) -> list[list[str]]:
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        self.record.unlink()
        return [json.loads(line) for line in lines]


@pytest.fixture
def strict(oci, builds):
    rt = FrontEnd(oci.root, builds / "strict" / "pinnace-oci", builds / "handed-over")
    rt.handed_over()
    yield rt
    leftover = rt.handed_over()
    assert leftover == [], f"handed over unexpectedly: {leftover}"


@pytest.fixture
def front(oci, builds):
    return FrontEnd(oci.root, builds / "real" / "pinnace-oci", builds / "handed-over")


def _cgroup_dir(rt, cid) -> Path:
    return Path(json.loads((rt.root / cid / "state.json").read_text())["cgroup_dir"])


def test_start_and_delete_of_a_stopped_container_need_no_python(strict, make_bundle):
    bundle = make_bundle(["sh", "-c", "echo ran > /ran"])
    strict("create", "--bundle", str(bundle), "front-a")
    assert (strict.root / "front-a" / FRONT_END).exists()
    cgroup = _cgroup_dir(strict, "front-a")
    strict.front("start", "front-a")
    assert not (strict.root / "front-a" / "exec.fifo").exists()
    strict.wait_for_status("front-a", "stopped")
    assert (bundle / "rootfs" / "ran").read_text() == "ran\n"
    strict.front("delete", "front-a")
    assert not (strict.root / "front-a").exists()
    assert not cgroup.exists()
    assert strict.ids() == []


def test_a_started_container_runs_and_state_says_so(strict, make_bundle):
    strict("create", "--bundle", str(make_bundle(["sleep", "1000"])), "front-b")
    pid = strict.state("front-b")["pid"]
    strict.front("start", "front-b")
    assert strict.status("front-b") == "running"
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"
    strict.front("delete", "--force", "front-b")
    assert strict.ids() == []
    assert not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"
    return stat[stat.rindex(")") + 2]


def test_delete_of_a_created_container_kills_its_init(strict, make_bundle):
    strict("create", "--bundle", str(make_bundle(["sleep", "1000"])), "front-c")
    pid = strict.state("front-c")["pid"]
    cgroup = _cgroup_dir(strict, "front-c")
    strict.front("delete", "front-c")
    assert not (strict.root / "front-c").exists()
    assert not cgroup.exists()
    assert _proc_state(pid) in ("gone", "Z")


def test_delete_force_of_a_paused_container(strict, make_bundle):
    strict("create", "--bundle", str(make_bundle(["sleep", "1000"])), "front-d")
    strict.front("start", "front-d")
    strict("pause", "front-d")
    assert strict.status("front-d") == "paused"
    strict.front("delete", "-f", "front-d")
    assert strict.ids() == []


def test_global_options_in_every_form(strict, make_bundle, tmp_path):
    strict("create", "--bundle", str(make_bundle(["true"])), "front-e")
    log = tmp_path / "log.json"
    run_captured(
        [
            str(strict.binary),
            f"--root={strict.root}",
            "--log",
            str(log),
            "--log-format=json",
            "--systemd-cgroup",
            "start",
            "front-e",
        ],
        label="start",
    )
    strict.wait_for_status("front-e", "stopped")
    run_captured(
        [
            str(strict.binary),
            "--log-format",
            "text",
            "--root",
            str(strict.root),
            "delete",
            "front-e",
            "--force",
        ],
        label="delete",
    )
    assert strict.ids() == []
    assert not log.exists()  # nothing to report


@pytest.mark.parametrize(
    "argv",
    [
        ["state", "front-x"],
        ["start"],
        ["start", "a", "b"],
        ["start", "--bogus", "front-x"],
        ["delete", "--force=1", "front-x"],
        ["--debug", "start", "front-x"],
        ["--log-format", "xml", "start", "front-x"],
        ["--root"],
        ["start", "bad/id"],
        ["start", ".."],
        ["delete", "front-missing"],
        ["--version"],
        [],
    ],
)
def test_what_it_does_not_do_is_handed_over_unchanged(strict, argv):
    res = run_captured([str(strict.binary), *argv], label="front end", check=False)
    assert res.returncode == HANDED_OVER
    assert strict.handed_over() == [argv]


def test_states_that_need_python_are_handed_over_before_any_change(strict, make_bundle):
    strict("create", "--bundle", str(make_bundle(["sleep", "1000"])), "front-f")
    strict.front("start", "front-f")
    # start of a running container: Python words the refusal
    assert strict.front("start", "front-f", check=False).returncode == HANDED_OVER
    assert strict.handed_over() == [["--root", str(strict.root), "start", "front-f"]]
    # delete of a running container without --force: refused by Python, nothing killed
    assert strict.front("delete", "front-f", check=False).returncode == HANDED_OVER
    assert strict.handed_over() == [["--root", str(strict.root), "delete", "front-f"]]
    assert strict.status("front-f") == "running"
    strict("kill", "front-f", "KILL")
    strict.wait_for_status("front-f", "stopped")
    # start of a stopped one
    assert strict.front("start", "front-f", check=False).returncode == HANDED_OVER
    assert strict.handed_over() == [["--root", str(strict.root), "start", "front-f"]]
    strict.front("delete", "front-f")


def test_a_container_with_poststart_or_poststop_hooks_is_left_to_python(
    strict, make_bundle, tmp_path
):
    marker = tmp_path / "hook-ran"

    def hooks(config):
        config["hooks"] = {"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", f": > {marker}"]}]}

    strict("create", "--bundle", str(make_bundle(["true"], edit=hooks)), "front-g")
    assert not (strict.root / "front-g" / FRONT_END).exists()
    assert strict.front("start", "front-g", check=False).returncode == HANDED_OVER
    assert strict.front("delete", "front-g", check=False).returncode == HANDED_OVER
    assert len(strict.handed_over()) == 2
    strict("delete", "--force", "front-g")
    assert marker.exists()


def test_with_the_real_runtime_behind_it_errors_read_as_pythons(front, oci, make_bundle):
    front("create", "--bundle", str(make_bundle(["sleep", "1000"])), "front-h")
    front.front("start", "front-h")
    res = front.front("start", "front-h", check=False)
    assert res.returncode == 1
    assert "cannot start an already running container" in res.stderr
    res = front.front("delete", "front-h", check=False)
    assert res.returncode == 1
    assert "that is not stopped: running" in res.stderr
    res = front.front("start", "no-such", check=False)
    assert res.returncode == 1 and "container does not exist" in res.stderr
    res = front.front("--version")
    assert "pinnace-oci version" in res.stdout
    front.front("delete", "--force", "front-h")
    assert front.ids() == []


def test_a_created_container_under_the_front_end_is_the_same_for_python(front, make_bundle):
    """The record the front end reads changes nothing for the Python verbs."""
    front("create", "--bundle", str(make_bundle(["sleep", "1000"])), "front-i")
    front("start", "front-i")
    assert front.status("front-i") == "running"
    front("delete", "--force", "front-i")
    assert front.ids() == []


# --- the start handshake, on a container directory made by hand -------------------------


@pytest.fixture
def fake_container(tmp_path, hierarchy_root):
    """A container directory whose "init" is a sleep of this test and whose cgroup is
    a fresh one: enough for the front end's start, with nothing Python would read."""
    root = tmp_path / "root"
    cdir = root / "front-fake"
    cdir.mkdir(parents=True)
    os.mkfifo(cdir / "exec.fifo", 0o600)
    (cdir / "state.json").write_text("{}")
    sleeper = subprocess.Popen(["sleep", "1000"])
    from runtime.state import proc_start_time

    start = proc_start_time(sleeper.pid)
    (cdir / FRONT_END).write_text(
        f"pinnace-oci front-end 1\n{sleeper.pid} {start}\n{hierarchy_root}/front-fake-none\n"
    )
    try:
        yield root, sleeper
    finally:
        sleeper.kill()
        sleeper.wait()


def _start_in_background(builds, root, *extra):
    return subprocess.Popen(
        [
            str(builds / "strict" / "pinnace-oci"),
            "--root",
            str(root),
            *extra,
            "start",
            "front-fake",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until_it_holds_the_fifo(proc, fifo: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
            try:
                if os.readlink(fd) == str(fifo):
                    return
            except FileNotFoundError:
                continue
        time.sleep(0.005)
    raise AssertionError("the front end never opened the fifo")


def test_start_reads_the_inits_byte_and_removes_the_fifo(builds, fake_container):
    root, _ = fake_container
    fifo = root / "front-fake" / "exec.fifo"
    proc = _start_in_background(builds, root)
    fd = os.open(fifo, os.O_WRONLY)  # blocks until the front end opened the read end
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert not fifo.exists()
    assert not (builds / "handed-over").exists()


def test_an_init_that_dies_before_its_byte_fails_start_in_both_log_formats(
    builds, fake_container, tmp_path
):
    root, sleeper = fake_container
    log = tmp_path / "log.json"
    proc = _start_in_background(builds, root, "--log", str(log), "--log-format", "json")
    _wait_until_it_holds_the_fifo(proc, root / "front-fake" / "exec.fifo")
    sleeper.send_signal(signal.SIGKILL)
    sleeper.wait()
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    msg = "the container's init exited before it could start"
    assert f'level=error msg="{msg}"' in err
    entry = json.loads(log.read_text())
    assert entry["level"] == "error" and entry["msg"] == msg and entry["time"].endswith("Z")
    assert (root / "front-fake" / "exec.fifo").exists()  # still not started
    assert not (builds / "handed-over").exists()


@pytest.mark.parametrize(
    "record",
    [
        "pinnace-oci front-end 2\n{pid} {start}\n/sys/fs/cgroup/x\n",  # a newer format
        "pinnace-oci front-end 1\n{pid}\n/sys/fs/cgroup/x\n",
        "pinnace-oci front-end 1\n{pid} {start}\nrelative\n",
        "pinnace-oci front-end 1\n{pid} {start}\n/x\ntrailing\n",
        "",
    ],
)
def test_a_record_it_does_not_understand_is_handed_over(builds, fake_container, record):
    root, sleeper = fake_container
    from runtime.state import proc_start_time

    path = root / "front-fake" / FRONT_END
    path.write_text(record.format(pid=sleeper.pid, start=proc_start_time(sleeper.pid)))
    proc = _start_in_background(builds, root)
    proc.communicate(timeout=10)
    assert proc.returncode == HANDED_OVER
    assert (root / "front-fake" / "exec.fifo").exists()
    (builds / "handed-over").unlink()
