"""Device programs against the real kernel: a denied device cannot be opened.

BPF cgroup-device programs work on any v2 cgroup, also on a hybrid host
(the v1 devices controller is an extra, independent check), so this runs on
the host tier in a scratch cgroup of the unified hierarchy. The probe is a
separate Python process that moves itself into the cgroup (writes its pid to
cgroup.procs) before it tries anything, so the test process itself is never
restricted.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgroups import bpf_insn as bi
from cgroups import devices as dv
from cgroups.discovery import discover
from namespaces.syscalls import libc

pytestmark = pytest.mark.usefixtures("require_root")

# Runs in the probe process: join the cgroup, then report errno (0 = success)
# for each device operation. Only os/sys/json/stat: nothing that opens a device.
PROBE = r"""
import json, os, stat, sys
procs, workdir = sys.argv[1], sys.argv[2]
with open(procs, "w") as f:
    f.write("0")
cgroup = [l[3:] for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::")][0]
def attempt(fn):
    try:
        fn()
        return 0
    except OSError as exc:
        return exc.errno
def opener(path, flags):
    return lambda: os.close(os.open(path, flags))
def mknod(name, major, minor):
    return lambda: os.mknod(os.path.join(workdir, name), stat.S_IFCHR | 0o600, os.makedev(major, minor))
out = {"cgroup": cgroup}
out["null_r"] = attempt(opener("/dev/null", os.O_RDONLY))
out["null_w"] = attempt(opener("/dev/null", os.O_WRONLY))
out["null_rw"] = attempt(opener("/dev/null", os.O_RDWR))
out["zero_r"] = attempt(opener("/dev/zero", os.O_RDONLY))
out["zero_rw"] = attempt(opener("/dev/zero", os.O_RDWR))
out["mknod_null"] = attempt(mknod("null", 1, 3))
out["mknod_full"] = attempt(mknod("full", 1, 7))
if out["mknod_full"] == 0:
    out["open_made_full"] = attempt(opener(os.path.join(workdir, "full"), os.O_RDONLY))
print(json.dumps(out))
"""


def probe_in_cgroup(cgroup_dir: Path, workdir: Path) -> dict:
    """Run PROBE in a child that joins `cgroup_dir`; its results by operation."""
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(cgroup_dir / "cgroup.procs"), str(workdir)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    result: dict = json.loads(res.stdout)
    return result


def make_scratch_cgroup() -> Path:
    hier = discover()
    if hier.mount_point is None:
        pytest.skip("no cgroup v2 hierarchy on this host")
    path = hier.mount_point / f"pinnace-test-dev-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def remove_scratch_cgroup(path: Path) -> None:
    """Detach, kill whatever of ours is still inside, rmdir: even after a failure."""
    if not path.exists():
        return
    try:
        dv.detach_device_programs(libc(), path)
    finally:
        for line in (path / "cgroup.procs").read_text().split():
            try:
                os.kill(int(line), 9)  # only probes of this test can be in a fresh scratch cgroup
            except ProcessLookupError:
                pass
        path.rmdir()


@pytest.fixture
def cgroup() -> Iterator[Path]:
    path = make_scratch_cgroup()
    try:
        yield path
    finally:
        remove_scratch_cgroup(path)


ALLOW_ZERO_ONLY = [
    dv.DENY_ALL,
    dv.DeviceRule(True, "c", 1, 5, "rwm"),  # /dev/zero
    dv.DeviceRule(True, "c", 1, 7, "m"),  # /dev/full: may be created, not opened
]


def test_denied_device_cannot_be_opened_or_created(cgroup, tmp_path):
    info = dv.apply_device_rules(libc(), cgroup, ALLOW_ZERO_ONLY)
    assert info.type == dv.BPF_PROG_TYPE_CGROUP_DEVICE
    assert info.name == dv.PROGRAM_NAME
    attached = dv.attached_device_programs(libc(), cgroup)
    assert attached.prog_ids == (info.id,)
    assert attached.attach_flags & dv.BPF_F_ALLOW_MULTI

    got = probe_in_cgroup(cgroup, tmp_path)

    assert Path(got["cgroup"]).name == cgroup.name
    assert got["null_r"] == errno.EPERM
    assert got["null_w"] == errno.EPERM
    assert got["null_rw"] == errno.EPERM
    assert got["zero_r"] == 0
    assert got["zero_rw"] == 0
    assert got["mknod_null"] == errno.EPERM
    assert got["mknod_full"] == 0
    assert got["open_made_full"] == errno.EPERM  # created with "m", opening needs "r"
    assert not (tmp_path / "null").exists()


def test_unrestricted_cgroup_allows_everything(cgroup, tmp_path):
    """The control: the same probe without a program succeeds everywhere."""
    assert dv.attached_device_programs(libc(), cgroup).prog_ids == ()
    got = probe_in_cgroup(cgroup, tmp_path)
    assert {k: v for k, v in got.items() if k != "cgroup"} == dict.fromkeys(
        (
            "null_r",
            "null_w",
            "null_rw",
            "zero_r",
            "zero_rw",
            "mknod_null",
            "mknod_full",
            "open_made_full",
        ),
        0,
    )


def test_replacing_rules_attaches_new_and_detaches_old(cgroup, tmp_path):
    first = dv.apply_device_rules(libc(), cgroup, ALLOW_ZERO_ONLY)
    # Allow everything except reading/writing /dev/null: creating it is fine now.
    second = dv.apply_device_rules(
        libc(),
        cgroup,
        [dv.DeviceRule(True, "a", None, None, "rwm"), dv.DeviceRule(False, "c", 1, 3, "rw")],
    )
    assert second.id != first.id
    assert dv.attached_device_programs(libc(), cgroup).prog_ids == (second.id,)

    got = probe_in_cgroup(cgroup, tmp_path)
    assert got["null_r"] == errno.EPERM
    assert got["null_w"] == errno.EPERM
    assert got["zero_rw"] == 0
    assert got["mknod_null"] == 0
    assert got["open_made_full"] == 0


def test_detach_gives_access_back(cgroup, tmp_path):
    info = dv.apply_device_rules(libc(), cgroup, ALLOW_ZERO_ONLY)
    assert dv.detach_device_programs(libc(), cgroup) == [info.id]
    assert dv.attached_device_programs(libc(), cgroup).prog_ids == ()
    assert probe_in_cgroup(cgroup, tmp_path)["null_rw"] == 0


def test_default_allow_list_loads_and_permits_std_devices(cgroup, tmp_path):
    dv.apply_device_rules(libc(), cgroup, [dv.DENY_ALL, *dv.DEFAULT_ALLOWED])
    got = probe_in_cgroup(cgroup, tmp_path)
    assert got["null_rw"] == 0
    assert got["zero_rw"] == 0
    assert got["mknod_null"] == 0
    assert got["open_made_full"] == 0


def test_rejected_program_reports_the_verifier_log():
    with pytest.raises(dv.DeviceProgramError) as err:
        dv.load_program(libc(), [bi.exit_insn()])  # r0 never set
    assert err.value.errno == errno.EACCES
    assert "R0 !read_ok" in err.value.verifier_log
    assert "R0 !read_ok" in str(err.value)


def test_missing_cgroup_error_names_the_path(tmp_path):
    missing = tmp_path / "no-such-cgroup"
    with pytest.raises(dv.DeviceProgramError) as err:
        dv.apply_device_rules(libc(), missing, ALLOW_ZERO_ONLY)
    assert err.value.errno == errno.ENOENT
    assert err.value.filename == str(missing)


def test_attach_to_a_non_cgroup_directory_fails_with_the_path(tmp_path):
    with pytest.raises(dv.DeviceProgramError) as err:
        dv.apply_device_rules(libc(), tmp_path, ALLOW_ZERO_ONLY)
    assert err.value.filename == str(tmp_path)
    assert err.value.errno == errno.EBADF


def test_query_and_detach_many_programs(cgroup):
    """More programs than the first query buffer holds (16): the ENOSPC retry path."""
    program = dv.build_program([dv.DeviceRule(True, "a")])
    ids = []
    with dv.open_cgroup_dir(cgroup) as cgroup_fd:
        for _ in range(20):
            fd = dv.load_program(libc(), program)
            try:
                dv.attach_program(libc(), cgroup_fd, fd, path=str(cgroup))
                ids.append(dv.program_info(libc(), fd).id)
            finally:
                os.close(fd)
    assert dv.attached_device_programs(libc(), cgroup).prog_ids == tuple(ids)
    assert dv.detach_device_programs(libc(), cgroup) == ids
    assert dv.attached_device_programs(libc(), cgroup).prog_ids == ()
