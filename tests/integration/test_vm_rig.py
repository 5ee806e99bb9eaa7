"""The VM-tier rig (vagrant/), checked on the host without booting a guest.

The boot itself is exercised by the VM tier (bin/test runs vagrant/vm-tier);
these cover what would otherwise only break there, slowly: the dependency list,
the cache key, script syntax, and that a guest which never reports fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
VAGRANT = TOP / "vagrant"
PROVISION = VAGRANT / "provision.sh"
BUILD_IMAGE = VAGRANT / "vm" / "build-image"


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_requirements_come_from_pyproject() -> None:
    """Runtime deps + the dev extra without the host-only lint/type tools."""
    project = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]
    dev = project["optional-dependencies"]["dev"]
    host_only = ("ruff", "mypy", "types-")
    result = run(PROVISION, "--print-requirements", TOP / "pyproject.toml")
    assert result.returncode == 0, result.stderr
    requirements = result.stdout.splitlines()
    assert requirements[: len(project["dependencies"])] == project["dependencies"]
    assert any(r.startswith("pytest") for r in requirements)
    assert not [r for r in requirements if r.lower().startswith(host_only)]
    assert set(requirements) == set(project["dependencies"]) | {
        d for d in dev if not d.lower().startswith(host_only)
    }


def test_apt_packages_cover_the_venv() -> None:
    result = run(PROVISION, "--print-apt-packages")
    assert result.returncode == 0, result.stderr
    packages = result.stdout.split()
    # venv needs ensurepip; the fixture images are built from busybox-static.
    assert {"python3", "python3-venv", "busybox-static"} <= set(packages)
    assert len(packages) == len(set(packages))


@pytest.mark.parametrize(
    ("shell", "script"),
    [
        ("bash", "provision.sh"),
        ("bash", "vm-tier"),
        ("bash", "vm/build-image"),
        ("sh", "vm/guest-init"),  # the guest's /bin/sh is dash
    ],
)
def test_scripts_parse(shell: str, script: str) -> None:
    path = VAGRANT / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    result = run(shell, "-n", path)
    assert result.returncode == 0, result.stderr


def copy_rig(dest: Path) -> Path:
    shutil.copytree(VAGRANT, dest / "vagrant", ignore=shutil.ignore_patterns(".vagrant"))
    shutil.copy(TOP / "pyproject.toml", dest)
    return dest / "vagrant"


def key(vagrant_dir: Path) -> str:
    result = run(vagrant_dir / "vm" / "build-image", "--key")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_cache_key_follows_every_input(tmp_path: Path) -> None:
    rig = copy_rig(tmp_path)
    base = key(rig)
    assert len(base) == 16 and int(base, 16) >= 0
    assert key(rig) == base
    seen = {base}
    for path in ["vm/guest-init", "provision.sh", "vm/build-image", "../pyproject.toml"]:
        target = rig / path
        original = target.read_text()
        # A new runtime dependency, or a comment: both must give a new image.
        if target.name == "pyproject.toml":
            target.write_text(original.replace('"click>=8.1",', '"click>=8.1",\n    "attrs",'))
        else:
            target.write_text(original + "\n# changed\n")
        new = key(rig)
        assert new not in seen, f"changing {path} did not change the key"
        seen.add(new)
        target.write_text(original)
    assert key(rig) == base


def test_guest_that_never_reports_fails(tmp_path: Path) -> None:
    """A kernel qemu cannot boot must fail the tier (125), with the reason, not skip."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is not installed: run bin/setup test")
    cache = tmp_path / "cache"
    image = cache / key(VAGRANT)
    image.mkdir(parents=True)
    (image / "vmlinux").write_bytes(b"not a kernel" * 100)
    (image / "initrd.img").write_bytes(b"x")
    (image / "rootfs.img").write_bytes(b"\0" * 4096)
    runs = tmp_path / "runs"
    runs.mkdir()
    env = dict(os.environ, PINNACE_VM_CACHE=str(cache), TMPDIR=str(runs), PINNACE_VM_TIMEOUT="60")
    result = run(VAGRANT / "vm-tier", env=env)
    assert result.returncode == 125, result.stdout + result.stderr
    assert "FAIL: the guest left no exit status" in result.stderr
    assert "qemu stderr" in result.stderr
    assert list(runs.iterdir()) == [], "vm-tier left its run directory behind"
