"""What the kernel's own files and tools say, read independently of Pinnace's code.

Tests compare `pinnace check -o json` against these facts on the host and
in the VM, so the report cannot drift from the machine it describes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

UNSHARE_FLAGS = {
    "mnt": ["--mount"],
    "uts": ["--uts"],
    "ipc": ["--ipc"],
    "pid": ["--pid", "--fork"],
    "net": ["--net"],
    "cgroup": ["--cgroup"],
    "user": ["--user"],
    "time": ["--time"],
}


def kernel_version() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()))


def cgroup2_mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        if tail.split()[0] == "cgroup2":
            points.append(fields.split()[4])
    return points


def has_v1_hierarchies() -> bool:
    return any(
        line.partition(" - ")[2].split()[0] == "cgroup"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def unshare_works(ns: str) -> bool:
    """util-linux's unshare(1), a second opinion on each namespace."""
    res = subprocess.run(
        ["unshare", *UNSHARE_FLAGS[ns], "true"], capture_output=True, timeout=30, check=False
    )
    return res.returncode == 0


def run_check() -> tuple[int, dict]:
    res = subprocess.run(
        [sys.executable, "-m", "pinnace", "check", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.stderr == "", res.stderr
    return res.returncode, json.loads(res.stdout)


def assert_report_matches_kernel(report: dict) -> None:
    rows = {c["name"]: c for c in report["checks"]}
    assert report["kernel"] == platform.release()

    assert rows["root"]["ok"] == (os.geteuid() == 0)

    for ns in UNSHARE_FLAGS:
        assert rows[ns]["ok"] == unshare_works(ns), (ns, rows[ns])
        if rows[ns]["ok"]:
            assert Path(f"/proc/self/ns/{ns}").exists()

    points = cgroup2_mounts()
    assert rows["cgroup v2"]["ok"] == bool(points)
    if points:
        mp = "/sys/fs/cgroup" if "/sys/fs/cgroup" in points else points[0]
        assert report["cgroup"]["mount_point"] == mp
        assert report["cgroup"]["mode"] == ("hybrid" if has_v1_hierarchies() else "unified")
        controllers = Path(mp, "cgroup.controllers").read_text().split()
        assert report["cgroup"]["controllers"] == sorted(controllers)
        for ctl in ("cpu", "cpuset", "memory", "pids", "io", "hugetlb"):
            assert rows[f"{ctl} controller"]["ok"] == (ctl in controllers), ctl
        own = next(
            line[3:]
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            if line.startswith("0::")
        )
        assert report["cgroup"]["own_cgroup"] == own

    # The overlay probe loads the module if needed; afterwards the kernel lists it.
    assert rows["overlayfs"]["ok"] == ("overlay" in Path("/proc/filesystems").read_text())
    seccomp_line = any(
        line.startswith("Seccomp:") for line in Path("/proc/self/status").read_text().splitlines()
    )
    assert rows["seccomp"]["ok"] == seccomp_line
    assert rows["pidfd"]["ok"] == (kernel_version() >= (5, 3))
    assert rows["openat2"]["ok"] == (kernel_version() >= (5, 6))
    assert rows["cgroup.kill"]["ok"] == (kernel_version() >= (5, 14))
    assert rows["cgroup.freeze"]["ok"] == (kernel_version() >= (5, 2))
    if "ext4" in rows["idmapped mounts"]["detail"]:
        assert rows["idmapped mounts"]["ok"] == (kernel_version() >= (5, 12))
    assert report["ready"] == all(c["ok"] for c in report["checks"] if c["required"])
