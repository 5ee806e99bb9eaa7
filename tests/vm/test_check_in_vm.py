"""`pinnace check` inside the VM: a pure cgroup v2 host with every controller."""

import pytest

from tests.hostfacts import assert_report_matches_kernel, run_check

pytestmark = pytest.mark.vm


def test_report_matches_kernel_in_vm():
    code, report = run_check()
    assert code == 0, report
    assert_report_matches_kernel(report)
    assert report["cgroup"]["mode"] == "unified"
    rows = {c["name"]: c for c in report["checks"]}
    for ctl in ("cpu", "memory", "pids", "io"):
        assert rows[f"{ctl} controller"]["ok"], rows[f"{ctl} controller"]
