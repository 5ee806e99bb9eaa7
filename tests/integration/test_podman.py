"""podman (Debian's 4.3, with conmon) drives `pinnace-oci` as its OCI runtime.

Issue 4's proof that an existing engine can use Pinnace in place of runc:
`run --rm`, exit codes, `exec` (plain and `-t`), `pause`/`unpause`,
`stop` (SIGTERM, then SIGKILL after the timeout), `rm`, `run -t` with a pty
sent over conmon's --console-socket, and a runtime error that reaches the
user through `--log-format json`.

How podman is configured, and why (each choice was found necessary on the
hybrid cgroup host the suite runs on, by running podman against it):

- Isolated storage per module: `--root/--runroot/--tmpdir` in a
  `pinnace-test-podman-*` temp dir, `--storage-driver vfs` (plain
  directories: no layer mounts to leak), `--network-config-dir` there too
  (podman would otherwise write /etc/cni/net.d/cni.lock), `--network none`
  (networking is another issue), `--events-backend file` (no journald here),
  `--cgroup-manager cgroupfs` (no systemd). CONTAINERS_CONF points at our
  own containers.conf, so the host's is not read; podman hands that variable
  on to conmon and to the exit command, so every podman process agrees.
- containers.conf sets `lock_type = "file"` (podman's default is one SHM
  segment, /dev/shm/libpod_lock, shared by every podman on the host) and
  `image_copy_tmp_dir` inside the temp dir.
- `pids_limit = 0`: on a hybrid host podman runs in cgroup v1 mode and asks
  for its default `pids.limit` (2048); pinnace-oci manages only the v2
  hierarchy, which has no pids controller here, and refuses the limit with a
  clear error rather than silently not enforcing it. `pids_limit = 0` in
  containers.conf makes podman leave the section out (`--pids-limit=-1`
  also works: podman 4.3 sends `pids.limit: 0`, which Pinnace reads as "no
  limit", as crun does). runc would put the limit in the v1 pids
  hierarchy; Pinnace does not manage v1 by design.
- `default_ulimits` for nofile and nproc, at or below the hard limits
  podman itself runs with: as root podman asks for RLIMIT_NOFILE and
  RLIMIT_NPROC of 1048576, which needs CAP_SYS_RESOURCE, and this host's
  root lacks it (runc and crun fail the same way: "error setting rlimit
  type 7", "setrlimit `RLIMIT_NOFILE`: Operation not permitted").
  podman pins its own RLIMIT_NPROC to 32768 at start-up, so conmon and the
  runtime inherit that.
- `runtime_supports_json = ["pinnace-oci"]`: podman then passes
  `--log-format=json --log FILE` on create and reads the runtime's error
  from that file (the path runc takes), which one test checks.
- The runtime keeps its default `--root` (/run/pinnace-oci): podman's exit
  command (`podman container cleanup`, run by conmon when a container exits)
  does not carry `--runtime-flag`, so a custom root would make its
  `delete --force` look in the default root, succeed on "not found", and
  leak the state directory and the cgroup. Container IDs are 64 random hex
  digits, and teardown checks that none of ours is left there.
- `--cgroup-parent /pinnace-test-podman-*`: podman creates the parent in
  every cgroup hierarchy (v1 ones included, for conmon) and never removes
  it; a parent of our own lets teardown find conmon and the exit command by
  cgroup, end them by PID, and remove exactly what this module made.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from images.builder import BUSYBOX, FixtureImages
from runtime.state import DEFAULT_ROOT
from tests.fixtures.cgroup_tree import cgroup_mounts, remove_tree
from tests.fixtures.oci import run_captured
from tests.fixtures.podman import podman_argv, podman_env, write_containers_conf

RUNTIME = Path(sys.executable).parent / "pinnace-oci"
CALL_TIMEOUT = 60.0
SETTLE_TIMEOUT = 15.0  # conmon and the exit command finish well within this
PTS = re.compile(r"^/dev/pts/\d+\r?$")


@dataclass
class Podman:
    """podman with private storage; every call runs pinnace-oci as the runtime."""

    top: Path
    cgroup_parent: str
    image: str = ""

    def argv(self, *args: str) -> list[str]:
        return podman_argv(self.top, str(RUNTIME), *args)

    def env(self) -> dict[str, str]:
        return podman_env(self.top)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run podman (output through files: conmon or a container may hold a pipe)."""
        return run_captured(
            self.argv(*args),
            label=f"podman {' '.join(args)}",
            check=check,
            timeout=CALL_TIMEOUT,
            env=self.env(),
            stdin=subprocess.DEVNULL,
        )

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`podman run` with the per-container options (no network, our cgroup parent)."""
        return self(
            "run", "--network", "none", "--cgroup-parent", self.cgroup_parent, *args, check=check
        )

    def start_detached(self, *command: str) -> str:
        cid = self.run("-d", self.image, *command).stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", cid), cid
        return cid

    def inspect(self, cid: str, fmt: str) -> str:
        return self("inspect", "--format", fmt, cid).stdout.strip()

    def all_ids(self) -> list[str]:
        return self("ps", "-a", "--no-trunc", "--format", "{{.ID}}").stdout.split()

    # -- teardown ---------------------------------------------------------------

    def cgroup_dirs(self) -> list[Path]:
        rel = self.cgroup_parent.lstrip("/")
        return [m / rel for m in cgroup_mounts() if (m / rel).is_dir()]

    def pids_in_our_cgroups(self) -> set[int]:
        """conmon, the exit command and container processes: podman puts them all
        under the cgroup parent we gave it (conmon in <parent>/conmon)."""
        pids: set[int] = set()
        for top in self.cgroup_dirs():
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids |= {int(p) for p in procs.read_text().split()}
        return pids

    def settle(self) -> list[int]:
        """Wait for what podman started to finish; SIGKILL stragglers by PID.
        Returns the PIDs that had to be killed."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while self.pids_in_our_cgroups() and time.monotonic() < deadline:
            time.sleep(0.05)
        stragglers = sorted(self.pids_in_our_cgroups())
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while self.pids_in_our_cgroups() and time.monotonic() < deadline:
            time.sleep(0.05)
        return stragglers

    def mounts_under_top(self) -> list[str]:
        out = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point == str(self.top) or point.startswith(f"{self.top}/"):
                out.append(point)
        return out

    def unmount_all(self) -> list[str]:
        from namespaces import syscalls as sc

        s = sc.libc()
        left = self.mounts_under_top()
        for point in sorted(left, key=len, reverse=True):
            with contextlib.suppress(sc.SyscallError):
                s.umount2(point, sc.MNT_DETACH)
        return left

    def remove_cgroups(self) -> list[str]:
        """rmdir our parent in every hierarchy, deepest first (never the host's)."""
        failed = []
        for top in self.cgroup_dirs():
            failed += remove_tree(top, tries=50)
        return failed

    def runtime_leftovers(self) -> list[str]:
        """Containers of ours still in pinnace-oci's default root (their bundle is
        under our storage): podman should have run `delete` for every one."""
        left = []
        for state in Path(DEFAULT_ROOT).glob("*/state.json"):
            with contextlib.suppress(OSError, ValueError):
                if json.loads(state.read_text())["bundle"].startswith(f"{self.top}/"):
                    left.append(state.parent.name)
        return left


@pytest.fixture(scope="module")
def podman(fixture_images: FixtureImages) -> Iterator[Podman]:
    """A private podman set-up with the busybox fixture image pulled from our OCI layout.

    Teardown removes everything (containers, storage, mounts, cgroups, stray
    processes by PID) and then fails if any of it had to be cleaned up by force
    or is still there.
    """
    if os.geteuid() != 0:
        pytest.fail("podman with a rootful runtime needs root (bin/test runs as root)")
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run `bin/setup test` (it installs Debian's podman)")
    if not RUNTIME.is_file():
        pytest.fail(f"{RUNTIME} is missing: the venv has no pinnace-oci (run bin/setup)")
    top = Path(tempfile.mkdtemp(prefix="pinnace-test-podman-"))
    p = Podman(top=top, cgroup_parent=f"/pinnace-test-podman-{uuid.uuid4().hex[:12]}")
    problems: list[str] = []
    try:
        for sub in ("tmp", "net"):
            (top / sub).mkdir()
        write_containers_conf(top, json_runtime="pinnace-oci")
        layout = fixture_images.layout.root
        # The oci: transport splits at the first colon; the rest must equal the
        # layout's org.opencontainers.image.ref.name, "busybox:latest".
        p.image = p("pull", "-q", f"oci:{layout}:{BUSYBOX}:latest").stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", p.image), p.image
        yield p
    finally:
        with contextlib.suppress(Exception):
            ids = p.all_ids()
            if ids:
                p("rm", "--force", "--time", "0", *ids, check=False)
        if stragglers := p.settle():
            problems.append(f"processes still running in our cgroups, killed: {stragglers}")
        p("system", "reset", "--force", check=False)
        if mounts := p.unmount_all():
            problems.append(f"mounts left under {top}: {mounts}")
        if leftovers := p.runtime_leftovers():
            problems.append(f"pinnace-oci state left in {DEFAULT_ROOT}: {leftovers}")
            for cid in leftovers:
                subprocess.run(
                    [str(RUNTIME), "delete", "--force", cid], check=False, capture_output=True
                )
        if failed := p.remove_cgroups():
            problems.append(f"cgroups that could not be removed: {failed}")
        shutil.rmtree(top, ignore_errors=True)
        if top.exists():
            problems.append(f"{top} could not be removed")
    assert not problems, "podman left things behind: " + "; ".join(problems)


def _cgroup_v2_path(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"process {pid} has no cgroup v2 path")


def _catches(pid: int, sig: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def test_run_rm_prints_output_and_passes_exit_codes(podman: Podman) -> None:
    res = podman.run("--rm", podman.image, "echo", "hello")
    assert res.stdout == "hello\n"
    assert podman.run("--rm", podman.image, "sh", "-c", "exit 3", check=False).returncode == 3
    missing = podman.run("--rm", podman.image, "/no/such/program", check=False)
    assert missing.returncode == 127, missing.stderr
    assert podman.all_ids() == []  # --rm removed them


def test_exec_pause_and_stop_escalating_to_sigkill(podman: Podman) -> None:
    cid = podman.start_detached("sleep", "1000")
    pid = int(podman.inspect(cid, "{{.State.Pid}}"))
    # the runtime put the init in the cgroup podman asked for (linux.cgroupsPath)
    assert _cgroup_v2_path(pid) == f"{podman.cgroup_parent}/libpod-{cid}"
    assert podman("exec", cid, "echo", "hi").stdout == "hi\n"
    assert podman("exec", cid, "sh", "-c", "exit 5", check=False).returncode == 5
    out = podman("exec", "-t", cid, "readlink", "/proc/self/fd/0").stdout
    assert PTS.match(out.splitlines()[0]), out
    podman("pause", cid)
    assert podman.inspect(cid, "{{.State.Status}}") == "paused"
    podman("unpause", cid)
    assert podman.inspect(cid, "{{.State.Status}}") == "running"
    # `sleep` as PID 1 has no SIGTERM handler, so the kernel drops SIGTERM:
    # podman must fall back to SIGKILL after the timeout (128 + 9).
    podman("stop", "--time", "1", cid)
    assert podman.inspect(cid, "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
    podman("rm", cid)
    assert cid not in podman.all_ids()
    assert not (Path(DEFAULT_ROOT) / cid).exists(), "pinnace-oci delete did not run"


def test_stop_delivers_sigterm_first(podman: Podman) -> None:
    cid = podman.start_detached("sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done")
    pid = int(podman.inspect(cid, "{{.State.Pid}}"))
    deadline = time.monotonic() + 10
    while not _catches(pid, signal.SIGTERM):  # the trap is installed
        assert time.monotonic() < deadline, "the container's shell never trapped SIGTERM"
        time.sleep(0.02)
    # A long timeout: only SIGTERM can end it with 7 before that.
    podman("stop", "--time", "60", cid)
    assert podman.inspect(cid, "{{.State.ExitCode}}") == "7"
    podman("rm", cid)


def test_run_tty_gets_a_pty_through_the_console_socket(podman: Podman) -> None:
    res = podman.run(
        "-t", "--rm", podman.image, "sh", "-c", "readlink /proc/self/fd/0; test -t 1 && echo tty"
    )
    lines = res.stdout.splitlines()
    assert PTS.match(lines[0]), res.stdout
    assert lines[1].rstrip("\r") == "tty"
    assert "\r\n" in res.stdout  # output went through a terminal's line discipline


def test_runtime_error_reaches_podman_through_the_json_log(podman: Podman) -> None:
    """The init cannot raise RLIMIT_NOFILE past the hard limit without
    CAP_SYS_RESOURCE (or past nr_open with it): pinnace-oci's create fails,
    writes the error as JSON to podman's --log file, and podman shows it."""
    huge = 1 << 32  # above the most fs.nr_open can ever be (INT_MAX rounded down)
    limit = f"nofile={huge}:{huge}"
    res = podman.run("--rm", "--ulimit", limit, podman.image, "true", check=False)
    assert res.returncode == 126, res
    assert "RLIMIT_NOFILE" in res.stderr, res.stderr
    assert "level=error" not in res.stderr, "podman did not read the JSON log: " + res.stderr
    assert podman.all_ids() == []
