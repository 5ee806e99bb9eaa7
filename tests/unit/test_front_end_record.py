"""The record create leaves for the compiled front end: written only when start and
delete need nothing the front end does not do (runtime/front_end.c reads it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import runtime
from runtime.state import (
    DEFAULT_CGROUP_PARENT,
    DEFAULT_ROOT,
    FIFO,
    FRONT_END,
    FRONT_END_HEADER,
    STATE,
    ContainerDir,
    ContainerState,
    front_end_record,
)


def _state(**changes: Any) -> ContainerState:
    fields: dict[str, Any] = {
        "id": "c1",
        "bundle": "/b",
        "rootfs": "/b/rootfs",
        "pid": 4242,
        "pid_start": 987654,
        "cgroup": "/pinnace/c1",
        "cgroup_dir": "/sys/fs/cgroup/pinnace/c1",
    }
    fields.update(changes)
    return ContainerState(**fields)


def test_a_plain_container_gets_pid_start_time_and_cgroup():
    assert front_end_record(_state()) == (
        "pinnace-oci front-end 1\n4242 987654\n/sys/fs/cgroup/pinnace/c1\n"
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"hooks": {"poststart": [{"path": "/bin/true"}]}},
        {"hooks": {"poststop": [{"path": "/bin/true"}]}},
        {"pid": 0},
        {"pid_start": 0},
        {"cgroup_dir": ""},
        {"cgroup_dir": "relative/c1"},
        {"cgroup_dir": "/sys/fs/cgroup/a\nb"},
    ],
)
def test_what_the_front_end_cannot_do_gets_no_record(changes):
    assert front_end_record(_state(**changes)) is None


def test_other_hooks_do_not_matter_after_create():
    hooks = {"prestart": [{"path": "/x"}], "createRuntime": [{"path": "/x"}]}
    assert front_end_record(_state(hooks=hooks)) is not None


def test_saved_atomically_beside_the_state(tmp_path):
    cdir = ContainerDir(str(tmp_path))
    cdir.save_front_end_record(_state())
    assert (tmp_path / FRONT_END).read_text().startswith("pinnace-oci front-end 1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [FRONT_END]


def test_the_c_side_names_the_same_file_and_format():
    source = (Path(runtime.__file__).parent / "front_end.c").read_text()
    defines = dict(re.findall(r'^#define (\w+) "(.*)"$', source, re.M))
    assert defines["RECORD"] == FRONT_END
    assert defines["RECORD_HEADER"].replace("\\n", "\n") == FRONT_END_HEADER
    assert defines["FIFO"] == FIFO and defines["STATE"] == STATE
    assert defines["DEFAULT_ROOT"] == DEFAULT_ROOT
    assert defines["DEFAULT_CGROUP_PARENT"] == DEFAULT_CGROUP_PARENT
