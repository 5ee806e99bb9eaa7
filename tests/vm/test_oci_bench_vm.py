"""bench/oci_bench.py in the VM tier: pinnace-oci against runc and crun on pure cgroup v2.

crun refuses the host's hybrid cgroups ("cgroups in hybrid mode not supported"),
so the three-way comparison runs here (vagrant/provision.sh puts runc and crun in
the guest). Under qemu TCG every process is ~10-35x slower than on the host:
read the ratios, not the milliseconds. The table goes to the terminal; the test
only checks that every runtime ran. Kept small (a few cycles) for TCG. It runs
twice: the plain bundle, and with the default seccomp profile engines pass.
"""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

TOP = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("profile", [[], ["--seccomp"]], ids=["plain", "seccomp"])
def test_bench_runs_pinnace_runc_and_crun(require_root, capsys, profile):
    res = subprocess.run(
        [sys.executable, str(TOP / "bench" / "oci_bench.py"), "-n", "5", "--runs", "5", *profile],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    with capsys.disabled():
        print(f"\n{res.stdout}{res.stderr}")
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}
    for name in ("pinnace-oci", "runc", "crun"):
        assert name in rows, f"{name} missing from the bench output"
        assert "n/a" not in rows[name], rows[name]
