"""Regression tests for the runc CVEs: each attacks a real container and must fail."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

from tests.fixtures.oci import OCI


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_cve_2019_5736_host_binary_is_unreachable(oci, make_bundle):
    """While created, the init still runs the host's Python: the container must not
    reach it through /proc/1/exe (or its fds/memory) to read or overwrite it."""
    host_python = os.path.realpath(f"/proc/{os.getpid()}/exe")
    before = _sha(host_python)
    bundle = make_bundle(["sleep", "1000"])
    oci("create", "--bundle", str(bundle), "cve1")
    init_pid = oci.state("cve1")["pid"]
    assert os.path.realpath(f"/proc/{init_pid}/exe") == host_python  # the premise
    attack = (
        "readlink /proc/1/exe; echo readlink=$?; "
        "cat /proc/1/exe > /dev/null; echo read=$?; "
        "echo pwned >> /proc/1/exe; echo write=$?; "
        "readlink /proc/1/fd/0; echo fds=$?; cat /proc/1/fd/0 > /dev/null; echo fdread=$?; "
        "cat /proc/1/maps > /dev/null; echo maps=$?"
    )
    res = oci("exec", "cve1", "sh", "-c", attack, check=False)
    results = dict(line.split("=") for line in res.stdout.splitlines() if "=" in line)
    assert results == {
        "readlink": "1",
        "read": "1",
        "write": "1",
        "fds": "1",
        "fdread": "1",
        "maps": "1",
    }, res
    assert "Permission denied" in res.stderr
    assert _sha(host_python) == before
    oci("start", "cve1")
    # after exec the init is the container's program: nothing of the host's is left in it
    res = oci("exec", "cve1", "readlink", "/proc/1/exe")
    assert res.stdout.strip() == "/bin/busybox"
    oci("delete", "--force", "cve1")


def _ls_fds(oci, make_bundle, name, *, preserve=0, pass_fds=(), edit=None):
    bundle = make_bundle(["sh", "-c", "exec ls /proc/self/fd"], edit=edit)
    args = ["run", "--bundle", str(bundle)]
    if preserve:
        args += ["--preserve-fds", str(preserve)]
    return oci(*args, name, pass_fds=pass_fds, check=False)


def test_cve_2024_21626_no_host_fd_reaches_the_container(oci, make_bundle):
    leaked = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)  # inheritable: a careless caller
    os.set_inheritable(leaked, True)
    try:
        res = _ls_fds(oci, make_bundle, "fd1", pass_fds=(leaked,))
    finally:
        os.close(leaked)
    assert res.returncode == 0, res.stderr
    # 0-2 and ls's own handle on /proc/self/fd; the leaked fd is not there
    assert sorted(int(x) for x in res.stdout.split()) == [0, 1, 2, 3]


def test_preserve_fds_passes_exactly_those(oci, make_bundle, tmp_path):
    data = tmp_path / "data"
    data.write_text("preserved\n")
    bundle = make_bundle(["sh", "-c", "cat <&3; ls /proc/self/fd"])
    cmd = " ".join(
        [
            *OCI,
            "--root",
            str(oci.root),
            "run",
            "--preserve-fds",
            "1",
            "--bundle",
            str(bundle),
            "fd2",
        ]
    )
    res = subprocess.run(
        ["sh", "-c", f"exec 3<{data}; exec {cmd}"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split()
    assert lines[0] == "preserved"
    assert "3" in lines[1:]  # fd 3 made it


def test_cve_2024_21626_cwd_through_a_leaked_fd_is_refused(oci, make_bundle, tmp_path):
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    leaked = os.open(host_dir, os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(leaked, True)

    def cwd_via_fd(cfg):
        cfg["process"]["cwd"] = f"/proc/self/fd/{leaked}"
        cfg["process"]["args"] = ["sh", "-c", "pwd; touch escaped"]

    try:
        bundle = make_bundle(["true"], edit=cwd_via_fd)
        res = oci("run", "--bundle", str(bundle), "cwd1", pass_fds=(leaked,), check=False)
    finally:
        os.close(leaked)
    assert res.returncode != 0
    assert "cwd" in res.stderr
    assert not (host_dir / "escaped").exists()
    assert oci.ids() == []


def test_cve_2021_30465_mount_target_symlink_stays_inside(oci, make_bundle, tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_text("host\n")

    def evil(cfg):
        cfg["mounts"].append(
            {"destination": "/evil", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}
        )

    bundle = make_bundle(["sh", "-c", "touch /evil/from-container; ls /evil"], edit=evil)
    (bundle / "rootfs" / "evil").symlink_to(sentinel)
    mounts_before = Path("/proc/self/mountinfo").read_text()
    res = oci("run", "--bundle", str(bundle), "mnt1")
    assert res.stdout.split() == ["from-container"]  # a fresh tmpfs, inside the container
    assert sorted(os.listdir(sentinel)) == ["keep"]
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    assert (bundle / "rootfs" / str(sentinel).lstrip("/")).is_dir()  # the link resolved in-root


def test_cve_2025_31133_masked_file_is_the_real_dev_null(oci, make_bundle):
    def mask(cfg):
        cfg["linux"]["maskedPaths"] = ["/proc/keys", "/proc/fs"]

    bundle = make_bundle(
        ["sh", "-c", "stat -c '%F %t:%T' /proc/keys; cat /proc/keys | wc -c; ls /proc/fs | wc -l"],
        edit=mask,
    )
    res = oci("run", "--bundle", str(bundle), "mask1")
    lines = res.stdout.splitlines()
    assert lines[0] == "character special file 1:3"
    assert lines[1].strip() == "0"
    assert lines[2].strip() == "0"


def test_spec_defaults_are_locked_down(oci, tmp_path, busybox_rootfs):
    """The config `spec` writes: docker's 14 capabilities, seccomp, no_new_privs, masks."""
    import shutil

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    oci("spec", "--bundle", str(bundle))
    shutil.copytree(busybox_rootfs, bundle / "rootfs", symlinks=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = [
        "sh",
        "-c",
        "grep -E '^(CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status; "
        "mkdir /tmp/m && mount -t tmpfs none /tmp/m; echo mount=$?; "
        "unshare -U true 2>/dev/null; echo unshare=$?",
    ]
    (bundle / "config.json").write_text(json.dumps(cfg))
    res = oci("run", "--bundle", str(bundle), "def1", check=False)
    assert res.returncode == 0, res.stderr
    status = dict(line.split(":\t") for line in res.stdout.splitlines() if ":\t" in line)
    eff = int(status["CapEff"], 16)
    assert bin(eff).count("1") == 14
    assert not eff & (1 << 21)  # CAP_SYS_ADMIN
    assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"
    assert "mount=0" not in res.stdout and "unshare=0" not in res.stdout
