"""Suite-wide fixtures and the end-of-run check that nothing was left behind."""

from __future__ import annotations

import os
import tempfile

import pytest

pytest_plugins = [
    "tests.fixtures.images",
    "tests.fixtures.bundles",
    "tests.fixtures.cri",
    "tests.fixtures.netns",
    "tests.fixtures.oci",
    "tests.fixtures.pinnace_cli",
    "tests.fixtures.processes",
    "tests.fixtures.registry",
]

IN_VM = os.environ.get("PINNACE_IN_VM") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `vm` need real cgroup v2 controllers: they run only inside the test VM.

    bin/test runs the host tier with `-m "not vm"` and the VM tier with `-m vm`
    inside the guest; this guard makes a stray `pytest` on the host say why
    a vm test did not run instead of failing on missing controllers.
    """
    if IN_VM:
        return
    skip = pytest.mark.skip(reason="needs cgroup v2 controllers: runs in the VM tier (bin/test)")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def hierarchy_root():
    """The unified cgroup hierarchy's mount point, wherever this machine has it."""
    from cgroups.discovery import discover

    point = discover().mount_point
    assert point is not None, "no cgroup2 hierarchy is mounted"
    return point


@pytest.fixture
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test drives the kernel and must run as root (bin/test does)")


# --- nothing left behind ----------------------------------------------------------

_LEAK_NAMES = ("pinnace",)


def _footprint() -> dict[str, set[str]]:
    """What tests could leak: mounts, cgroups, named netns, links, state dirs."""
    from pathlib import Path

    mounts = {
        line.split(" - ")[0].split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    }
    cgroups: set[str] = set()
    for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        root = Path(base)
        if (root / "cgroup.controllers").exists():
            cgroups |= {str(p) for p in root.rglob("*") if p.is_dir() and "pinnace" in p.name}
    netns = {p.name for p in Path("/run/netns").glob("*")} if Path("/run/netns").is_dir() else set()
    links = {p.name for p in Path("/sys/class/net").iterdir()}
    scratch = {str(p) for p in Path("/var/lib").glob(".pinnace-*")}
    # temp dirs from tempfile.mkdtemp() (tmp*) or named for the project
    tmp = Path(tempfile.gettempdir())
    scratch |= {str(p) for p in tmp.iterdir() if p.name.startswith("tmp") or "pinnace" in p.name}
    return {
        "mounts": mounts,
        "cgroups": cgroups,
        "netns": netns,
        "links": links,
        "scratch": scratch,
    }


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_before_key] = _footprint()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if the suite left mounts, cgroups, netns, links or scratch dirs."""
    before = session.config.stash.get(_before_key, None)
    if before is None or session.config.option.collectonly:
        return
    after = _footprint()
    leaks = {kind: sorted(after[kind] - before[kind]) for kind in after}
    leaks = {k: v for k, v in leaks.items() if v}
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = "the test suite left these behind: " + "; ".join(
            f"{k}: {', '.join(v)}" for k, v in leaks.items()
        )
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"LEAK CHECK FAILED: {msg}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_before_key = pytest.StashKey[dict[str, set[str]]]()
