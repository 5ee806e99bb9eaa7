"""linux.resources through pinnace-oci on a pure cgroup v2 guest: limits enforced, updated live."""

import json

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("require_root")]


def test_limits_from_the_spec_and_update(oci, make_bundle, hierarchy_root):
    def limits(cfg):
        cfg["linux"]["resources"] = {
            "memory": {"limit": 32 << 20, "swap": 32 << 20},
            "pids": {"limit": 16},
            "cpu": {"quota": 50000, "period": 100000, "shares": 512},
        }

    oci("run", "--detach", "--bundle", str(make_bundle(["sleep", "1000"], edit=limits)), "lim")
    cg = hierarchy_root / "pinnace" / "lim"
    assert (cg / "memory.max").read_text() == f"{32 << 20}\n"
    assert (cg / "pids.max").read_text() == "16\n"
    assert (cg / "cpu.max").read_text() == "50000 100000\n"
    # a memory hog inside the container is OOM-killed by the kernel
    hog = oci(
        "exec", "lim", "sh", "-c", "head -c 64m /dev/zero | tail -n 1 > /dev/null", check=False
    )
    assert hog.returncode == 128 + 9, hog  # tail, SIGKILLed by the OOM killer
    assert (
        int(dict(ln.split() for ln in (cg / "memory.events").read_text().splitlines())["oom_kill"])
        >= 1
    )
    # update applies live; a second update by file
    res = oci("update", "--memory", "64m", "lim", check=False)  # swap 32m < memory: refused
    assert res.returncode == 1 and "memory+swap must be >= the memory limit" in res.stderr
    oci("update", "--memory", "64m", "--memory-swap", "64m", "--pids-limit", "32", "lim")
    assert (cg / "memory.max").read_text() == f"{64 << 20}\n"
    assert (cg / "pids.max").read_text() == "32\n"
    event = json.loads(oci("events", "--stats", "lim").stdout)
    assert event["data"]["pids"]["limit"] == 32
    oci("delete", "--force", "lim")
    assert not cg.exists()
