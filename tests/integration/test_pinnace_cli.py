"""`pinnace image ...`, `pinnace run`, `ps`, `rm` as a user runs them: real subprocesses,
real mounts and containers on this host, a temp image store and runtime root.

Every test checks that `run --rm` leaves nothing: no mount under the bundle
directory, no active snapshot, no runtime state, no bundle, no cgroup.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest

from images.builder import FixtureImages
from images.store import ImageStore
from tests.fixtures.pinnace_cli import REPO, Cli, oci_archive
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.usefixtures("require_root")


@pytest.fixture
def imported(cli: Cli, fixture_images: FixtureImages, scratch_dir: Path) -> Cli:
    archive = oci_archive(Path(fixture_images.layout.root), scratch_dir / "images.tar")
    out = cli("image", "import", str(archive)).stdout
    assert "docker.io/library/busybox:latest sha256:" in out
    return cli


def test_import_ls_inspect_rm_prune(imported: Cli) -> None:
    cli = imported
    listed = json.loads(cli("image", "ls", "-o", "json").stdout)
    names = {i["name"] for i in listed}
    assert "docker.io/library/busybox:latest" in names
    ids = cli("image", "ls", "-q").stdout.split()
    assert len(ids) == len(set(ids)) and all(i.startswith("sha256:") for i in ids)

    info = json.loads(cli("image", "inspect", "busybox").stdout)
    assert info["name"] == "docker.io/library/busybox:latest"
    assert info["image_config"]["architecture"] == "amd64"

    missing = cli("image", "inspect", "no-such-image", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr

    for name in names:
        cli("image", "rm", name)
    assert json.loads(cli("image", "ls", "-o", "json").stdout) == []
    pruned = cli("image", "prune").stdout
    assert not pruned.startswith("removed 0 blobs")
    store = ImageStore(cli.store)
    try:
        assert list(store.content.walk()) == []
    finally:
        store.close()


def test_export_then_import_round_trip(imported: Cli, scratch_dir: Path) -> None:
    cli = imported
    for fmt in ("oci", "docker"):
        out = scratch_dir / f"busybox-{fmt}.tar"
        cli("image", "export", "busybox", "-o", str(out), "--format", fmt)
        cli("image", "rm", "busybox")
        cli("image", "import", str(out), "--name", "busybox")
        assert cli("run", "--rm", "busybox", "echo", fmt).stdout == f"{fmt}\n"


def test_run_rm_echo_hello_leaves_nothing(imported: Cli) -> None:
    proc = imported(
        "run", "--rm", "--name", f"pinnace-test-{os.getpid()}", "busybox", "echo", "hello"
    )
    assert proc.stdout == "hello\n"
    assert not Path(f"/sys/fs/cgroup/unified/pinnace/pinnace-test-{os.getpid()}").exists()
    imported.assert_nothing_left()


def test_exit_code_env_workdir_user(imported: Cli) -> None:
    cli = imported
    failed = cli("run", "--rm", "busybox", "sh", "-c", "exit 7", check=False)
    assert failed.returncode == 7
    out = cli(
        "run",
        "--rm",
        "-e",
        "GREETING=hi there",
        "-w",
        "/etc",
        "busybox",
        "sh",
        "-c",
        'echo "$GREETING"; pwd',
    ).stdout
    assert out == "hi there\n/etc\n"
    assert cli("run", "--rm", "busybox-user", "id", "-u").stdout == "1000\n"
    assert cli("run", "--rm", "-u", "app", "busybox", "id", "-u").stdout == "1000\n"
    missing = cli("run", "--rm", "busybox", "/no/such/binary", check=False)
    assert missing.returncode != 0
    cli.assert_nothing_left()


def test_volume_and_entrypoint(imported: Cli, scratch_dir: Path) -> None:
    vol = scratch_dir / "vol"
    vol.mkdir()
    (vol / "in.txt").write_text("from the host\n")
    out = imported(
        "run", "--rm", "-v", f"{vol}:/data:ro", "--entrypoint", "cat", "busybox", "/data/in.txt"
    ).stdout
    assert out == "from the host\n"
    imported.assert_nothing_left()


def test_kept_container_ps_and_rm(imported: Cli) -> None:
    cid = f"pinnace-test-kept-{os.getpid()}"
    assert imported("run", "--name", cid, "busybox", "true").returncode == 0
    rows = json.loads(imported("ps", "-a", "-o", "json").stdout)
    assert [(r["id"], r["status"]) for r in rows] == [(cid, "stopped")]
    assert imported("ps", "-q").stdout == ""
    imported("rm", cid)
    imported.assert_nothing_left()


def test_pull_from_registry_then_run(
    cli: Cli, registry: RegistryServer, pushed_images: dict[str, object]
) -> None:
    ref = f"{registry.host}/pinnace/busybox:latest"
    pulled = cli("image", "pull", ref)
    assert "total:" in pulled.stderr  # not a tty: plain lines
    assert pulled.stdout.startswith(f"{ref} sha256:")
    assert cli("run", "--rm", ref, "echo", "pulled").stdout == "pulled\n"
    cli("image", "rm", ref)
    # a registry reference not in the store is pulled by run
    other = f"{registry.host}/pinnace/busybox-extra:latest"
    assert cli("run", "--rm", other, "echo", "auto").stdout == "auto\n"
    cli.assert_nothing_left()


def test_stdin_only_with_i(imported: Cli) -> None:
    assert imported("run", "--rm", "-i", "busybox", "sh", stdin="echo typed\n").stdout == "typed\n"
    assert imported("run", "--rm", "busybox", "cat", stdin="not passed\n").stdout == ""
    imported.assert_nothing_left()


def test_tty(imported: Cli) -> None:
    """-it: the container's stdio is a pty of its own; our terminal is proxied to it."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            imported.argv("run", "--rm", "-it", "busybox", "sh", "-c", "test -t 0 && tty; exit 5"),
            cwd=REPO,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        output = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every holder of the slave has closed it
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=60) == 5
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert b"/dev/pts/" in output
    imported.assert_nothing_left()


def test_failed_run_leaves_nothing(imported: Cli) -> None:
    """A failure after the root is mounted (an unknown user) takes everything down."""
    proc = imported("run", "--rm", "-u", "nobody-here", "busybox", "true", check=False)
    assert proc.returncode == 1 and "nobody-here" in proc.stderr
    proc = imported("run", "-u", "nobody-here", "busybox", "true", check=False)
    assert proc.returncode == 1
    imported.assert_nothing_left()


def test_demo_builds_imports_and_runs_offline(cli: Cli) -> None:
    first = cli("demo")
    assert "Hello from a Pinnace container." in first.stdout
    assert "pid:      1 (a new pid namespace)" in first.stdout
    assert "built and imported docker.io/library/busybox:latest" in first.stderr
    again = cli("demo")  # the image is in the store now: nothing is rebuilt
    assert "built and imported" not in again.stderr
    assert cli("run", "--rm", "busybox", "echo", "hello").stdout == "hello\n"
    cli.assert_nothing_left()
