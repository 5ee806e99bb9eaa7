"""cgroups/freezer.py: the freeze request decides, cgroup.events confirms.

Files in a temporary tree stand in for cgroupfs: the kernel's stale
`frozen 1` (cgroup.freeze 0 after a thaw) cannot be produced on demand, so
the decision is checked here and the kernel path in
tests/integration/test_cgroup_manager.py.
"""

from __future__ import annotations

import os

import pytest

from cgroups.freezer import events_say_frozen, freeze_requested, is_frozen


def make(d, freeze: str | None, frozen: int) -> str:
    os.makedirs(d, exist_ok=True)
    if freeze is not None:
        with open(os.path.join(d, "cgroup.freeze"), "w") as f:
            f.write(freeze + "\n")
    with open(os.path.join(d, "cgroup.events"), "w") as f:
        f.write(f"populated 1\nfrozen {frozen}\n")
    return str(d)


def test_asked_and_settled_is_frozen(tmp_path):
    top = make(tmp_path, None, 0)
    cg = make(tmp_path / "a", "1", 1)
    assert is_frozen(cg, top)


def test_stale_frozen_without_a_request_is_not_frozen(tmp_path):
    top = make(tmp_path, None, 0)
    cg = make(tmp_path / "a", "0", 1)  # what the kernel leaves after the racy thaw
    assert events_say_frozen(cg)
    assert not is_frozen(cg, top)


def test_asked_but_not_yet_settled_is_not_frozen(tmp_path):
    top = make(tmp_path, None, 0)
    cg = make(tmp_path / "a", "1", 0)
    assert freeze_requested(cg)
    assert not is_frozen(cg, top)


def test_an_ancestors_freeze_counts(tmp_path):
    top = make(tmp_path, None, 0)
    make(tmp_path / "a", "1", 1)
    child = make(tmp_path / "a" / "b", "0", 1)
    assert is_frozen(child, top)
    assert not is_frozen(child, child)  # runc's view: only the container's own request


def test_nothing_above_top_is_read(tmp_path):
    make(tmp_path, "1", 1)  # frozen above `top`: outside the hierarchy asked about
    top = make(tmp_path / "h", None, 0)
    cg = make(tmp_path / "h" / "a", "0", 1)
    assert not is_frozen(cg, top)


def test_frozen_0_and_frozen_10_are_not_frozen_1(tmp_path):
    cg = make(tmp_path / "a", "1", 10)
    assert not events_say_frozen(cg)


def test_a_missing_cgroup_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        is_frozen(str(tmp_path / "gone"), str(tmp_path))
    assert not freeze_requested(str(tmp_path / "gone"))
