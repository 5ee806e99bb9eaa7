"""Pure logic of `pinnace check`, against a recording fake of the syscall layer."""

import errno
from pathlib import Path

from cgroups.discovery import CgroupHierarchy, CgroupMode
from namespaces import syscalls as sc
from pinnace import hostcheck
from tests.fakes import RecordingSyscalls as FakeSyscalls


def test_seccomp_filter_supported_when_null_filter_is_efault():
    fake = FakeSyscalls(prctl={sc.PR_SET_SECCOMP: (errno.EFAULT,)})
    r = hostcheck.check_seccomp(fake)
    assert r.ok and "filter mode" in r.detail
    assert [c[1][0] for c in fake.calls] == [
        sc.PR_GET_SECCOMP,
        sc.PR_SET_SECCOMP,
    ]


def test_seccomp_missing():
    r = hostcheck.check_seccomp(FakeSyscalls(prctl=(errno.EINVAL,)))
    assert not r.ok and "without seccomp" in r.detail
    r = hostcheck.check_seccomp(FakeSyscalls(prctl={sc.PR_SET_SECCOMP: (errno.EINVAL,)}))
    assert not r.ok and "no filter mode" in r.detail


def test_openat2_enosys_names_the_kernel_version():
    r = hostcheck.check_openat2(FakeSyscalls(openat2=(errno.ENOSYS,)))
    assert not r.ok and "5.6" in r.detail


def test_pidfd_enosys_names_the_kernel_version():
    r = hostcheck.check_pidfd(FakeSyscalls(pidfd_open=(errno.ENOSYS,)))
    assert not r.ok and "5.3" in r.detail


def _hier(mode, controllers, v1=()):
    return CgroupHierarchy(
        mode, Path("/nonexistent/cg"), "/", frozenset(controllers), None, frozenset(v1)
    )


def test_cgroups_hybrid_explains_v1_binding():
    rows = hostcheck.check_cgroups(_hier(CgroupMode.HYBRID, {"hugetlb"}, {"memory", "blkio"}))
    by = {r.name: r for r in rows}
    assert by["cgroup v2"].ok and "hybrid" in by["cgroup v2"].detail
    assert (
        not by["memory controller"].ok and "v1 hierarchy (memory)" in by["memory controller"].detail
    )
    assert "v1 hierarchy (blkio)" in by["io controller"].detail
    assert by["hugetlb controller"].ok
    assert not by["cgroup.kill"].ok  # cannot create a scratch cgroup under a fake path


def test_no_cgroup2_is_not_ready():
    rows = hostcheck.check_cgroups(CgroupHierarchy(CgroupMode.LEGACY, None, "/", frozenset(), None))
    assert rows[0].required and not rows[0].ok


def test_report_ready_and_text():
    rows = [
        hostcheck.CheckResult("namespaces", "mnt", True, True, "fine"),
        hostcheck.CheckResult("cgroups", "memory controller", False, False, "bound to v1"),
    ]
    report = hostcheck.Report("6.1", "x86_64", {}, rows)
    assert report.ready
    text = hostcheck.render_text(report)
    assert "Result: ready for containers" in text
    assert "Unavailable (optional): memory controller" in text
    broken = hostcheck.Report(
        "6.1", "x86_64", {}, [*rows, hostcheck.CheckResult("x", "net", False, True, "no")]
    )
    assert not broken.ready
    assert "NOT ready" in hostcheck.render_text(broken)
