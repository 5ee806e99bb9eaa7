"""The premise of the VM tier: a cgroup v2 tree with the controllers Pinnace drives.

If this fails, every other `vm` test would fail for a reason that has nothing
to do with Pinnace, so it says so first.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

CONTROLLERS = ("cpu", "memory", "pids", "io")


def cgroup2_mount() -> Path:
    """Where cgroup2 is mounted, from /proc/self/mountinfo (not assumed to be /sys/fs/cgroup)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> <src> <opts>"
        fields, _, fs = line.partition(" - ")
        if fs.split()[0] == "cgroup2":
            mount_point = fields.split()[4]
            # mountinfo escapes space, tab, newline and backslash as octal (\040).
            return Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), mount_point))
    pytest.fail("no cgroup2 filesystem is mounted")


def controllers(path: Path) -> set[str]:
    return set(path.read_text().split())


def test_root_offers_the_controllers() -> None:
    root = cgroup2_mount()
    missing = set(CONTROLLERS) - controllers(root / "cgroup.controllers")
    assert not missing, f"{root}/cgroup.controllers lacks {sorted(missing)}"


def test_child_can_delegate_the_controllers() -> None:
    if os.geteuid() != 0:
        pytest.fail("the VM tier runs as root; creating cgroups needs it")
    root = cgroup2_mount()
    enable = " ".join(f"+{c}" for c in CONTROLLERS)
    # A child can only enable what its parent has enabled for its children.
    added_at_root = set(CONTROLLERS) - controllers(root / "cgroup.subtree_control")
    child = root / f"pinnace-premise-{uuid.uuid4().hex[:12]}"
    child.mkdir()
    try:
        (root / "cgroup.subtree_control").write_text(enable)
        (child / "cgroup.subtree_control").write_text(enable)
        assert controllers(child / "cgroup.subtree_control") >= set(CONTROLLERS)
        assert controllers(child / "cgroup.controllers") >= set(CONTROLLERS)
    finally:
        child.rmdir()
        # Leave the root as found; best effort, since another cgroup may now
        # be using a controller (then the kernel refuses with EBUSY).
        for c in added_at_root:
            try:
                (root / "cgroup.subtree_control").write_text(f"-{c}")
            except OSError:
                pass
