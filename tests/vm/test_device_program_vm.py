"""On a pure cgroup v2 host the device program is the only device check: it must deny."""

from __future__ import annotations

import errno

import pytest

from cgroups import devices as dv
from namespaces.syscalls import libc
from tests.integration.test_device_program import (
    ALLOW_ZERO_ONLY,
    make_scratch_cgroup,
    probe_in_cgroup,
    remove_scratch_cgroup,
)

pytestmark = pytest.mark.vm


def test_device_program_denies_in_vm(tmp_path):
    cgroup = make_scratch_cgroup()
    try:
        info = dv.apply_device_rules(libc(), cgroup, ALLOW_ZERO_ONLY)
        assert dv.attached_device_programs(libc(), cgroup).prog_ids == (info.id,)
        got = probe_in_cgroup(cgroup, tmp_path)
        assert got["null_rw"] == errno.EPERM
        assert got["zero_rw"] == 0
        assert got["mknod_null"] == errno.EPERM
        assert got["mknod_full"] == 0
    finally:
        remove_scratch_cgroup(cgroup)
