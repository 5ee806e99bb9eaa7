"""vagrant/Vagrantfile: valid for the Vagrant we ship with, three nodes, provisioned by provision.sh.

`vagrant up` cannot run here (no boxes, no usable KVM), but Vagrant itself can
parse and validate the file offline, so these tests ask Vagrant, not a regex.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"
MACHINES = {"pinnace-server", "pinnace-agent-1", "pinnace-agent-2"}


def vagrant(cwd: Path, scratch: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("vagrant")
    if exe is None:
        pytest.fail("vagrant is not installed: run bin/setup test")
    env = dict(
        os.environ,
        VAGRANT_CWD=str(cwd),
        # Vagrant writes .vagrant/ beside the Vagrantfile and state in ~/.vagrant.d:
        # keep both out of the checkout and the home directory.
        VAGRANT_DOTFILE_PATH=str(scratch / "dotfile"),
        VAGRANT_HOME=str(scratch / "home"),
        VAGRANT_CHECKPOINT_DISABLE="1",  # no version check over the network
    )
    return subprocess.run(
        [exe, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_vagrantfile_validates(tmp_path: Path) -> None:
    result = vagrant(VAGRANT_DIR, tmp_path, "validate")
    assert result.returncode == 0, (
        f"vagrant validate failed (a usable provider is needed: Debian's "
        f"vagrant-libvirt plugin):\n{result.stdout}{result.stderr}"
    )
    assert not (VAGRANT_DIR / ".vagrant").exists()


def test_declares_the_three_nodes(tmp_path: Path) -> None:
    result = vagrant(VAGRANT_DIR, tmp_path, "status", "--machine-readable")
    assert result.returncode == 0, result.stdout + result.stderr
    # Lines are "timestamp,target,type,data...": the targets are the machines.
    machines = {
        line.split(",")[1]
        for line in result.stdout.splitlines()
        if line.count(",") >= 3 and line.split(",")[2] == "state"
    }
    assert machines == MACHINES


def test_provisions_with_provision_sh(tmp_path: Path) -> None:
    # Vagrant resolves a shell provisioner's path at validation: without
    # provision.sh beside it, the Vagrantfile must be rejected, naming it.
    bare = tmp_path / "vagrant"
    bare.mkdir()
    shutil.copy(VAGRANT_DIR / "Vagrantfile", bare)
    result = vagrant(bare, tmp_path, "validate")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "shell provisioner" in output
    assert str(bare / "provision.sh") in output
