"""`pinnace run --memory` on a pure cgroup v2 guest: a memory hog is OOM-killed, exit 137."""

import pytest

from tests.fixtures.pinnace_cli import oci_archive

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("require_root")]


def test_run_with_a_memory_limit_oom_kills_the_hog(cli, fixture_images, scratch_dir):
    archive = oci_archive(fixture_images.layout.root, scratch_dir / "images.tar")
    cli("image", "import", str(archive))
    res = cli(
        "run",
        "--rm",
        "--memory",
        "20m",
        "busybox",
        "sh",
        "-c",
        "head -c 64m /dev/zero | tail -n 1 > /dev/null",
        check=False,
    )
    assert res.returncode == 137, res
    assert "OOM killer" in res.stderr
    cli.assert_nothing_left()
    # the same run without the limit finishes
    assert cli("run", "--rm", "busybox", "echo", "hello").stdout == "hello\n"
