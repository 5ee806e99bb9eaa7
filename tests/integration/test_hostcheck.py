"""`pinnace check` on this host, compared with the kernel's own files."""

import subprocess
import sys
from pathlib import Path

from tests.hostfacts import assert_report_matches_kernel, run_check


def _leftovers() -> set[str]:
    found = {p.name for p in Path("/var/lib").glob(".pinnace-check-*")}
    for point in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        found |= {str(p) for p in Path(point).glob("**/pinnace-check-*") if p.is_dir()}
    return found


def test_json_report_matches_kernel(require_root):
    mounts_before = Path("/proc/self/mountinfo").read_text()
    code, report = run_check()
    assert code == (0 if report["ready"] else 1)
    assert report["ready"], report  # this machine can run containers
    assert_report_matches_kernel(report)
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    assert _leftovers() == set()


def test_text_report_is_readable(require_root):
    res = subprocess.run(
        [sys.executable, "-m", "pinnace", "check"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for heading in ("Namespaces", "Cgroups", "Filesystems", "Security"):
        assert f"\n{heading}\n" in out
    for name in (
        "user",
        "cgroup v2",
        "overlayfs",
        "seccomp",
        "openat2",
        "pidfd",
        "idmapped mounts",
    ):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name + "."))
        assert " yes " in line or " no " in line or " NO " in line
    assert "Result: ready for containers" in out
    assert "\x1b[" not in out  # no colour codes when not on a terminal


def test_cli_help_reads_well():
    res = subprocess.run(
        [sys.executable, "-m", "pinnace", "--help"], capture_output=True, text=True, check=True
    )
    assert "check" in res.stdout and "Report what this host supports" in res.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "pinnace", "check", "-o", "yaml"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Invalid value for '-o'" in bad.stderr


def test_oci_entry_point_answers():
    res = subprocess.run(
        [sys.executable, "-c", "from runtime.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0
    for verb in ("create", "start", "state", "kill", "delete", "exec", "features"):
        assert verb in res.stdout
