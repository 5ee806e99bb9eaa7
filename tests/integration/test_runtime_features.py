"""Spec sections end to end through pinnace-oci: user namespaces, joined namespaces,
the device policy, events and update."""

import json
import os
from pathlib import Path

from namespaces.handles import Kind, Namespace, create_pinned, unpin


def test_user_namespace_with_id_mappings(oci, make_bundle):
    def userns(cfg):
        cfg["linux"]["namespaces"].append({"type": "user"})
        cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
        # sysfs cannot be mounted by a user namespace's root without its own netns; keep it
        cfg["process"]["args"] = ["sh", "-c", "id -u; cat /proc/self/uid_map; sleep 1000"]

    bundle = make_bundle(["true"], edit=userns)
    # the init is host uid 200000 now: it must be able to search down to the rootfs
    res = oci("create", "--bundle", str(bundle), "u0", check=False)
    assert res.returncode == 1
    assert "cannot be reached by host uid 200000" in res.stderr, res.stderr
    for d in (bundle.parent, bundle):
        d.chmod(0o711)
    oci("create", "--bundle", str(bundle), "u1")
    pid = oci.state("u1")["pid"]
    # seen from the host, the container's root is uid 200000
    assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", "200000", "65536"]
    oci("start", "u1")
    res = oci("exec", "u1", "sh", "-c", "id -u; cat /proc/self/uid_map")
    lines = res.stdout.split()
    assert lines[0] == "0"
    assert lines[1:] == ["0", "200000", "65536"]
    assert os.stat(f"/proc/{pid}").st_uid == 200000
    oci("delete", "--force", "u1")


def test_user_namespace_needs_mappings(oci, make_bundle):
    def bad(cfg):
        cfg["linux"]["namespaces"].append({"type": "user"})

    res = oci("create", "--bundle", str(make_bundle(["true"], edit=bad)), "u2", check=False)
    assert res.returncode == 1 and "linux.uidMappings" in res.stderr


def test_joining_pinned_namespaces_like_a_pod(oci, make_bundle, tmp_path):
    """A pod sandbox pins net/ipc/uts with no pause process; its containers join by path."""
    pins = create_pinned([Kind.NET, Kind.IPC, Kind.UTS], tmp_path, hostname="pod-1")
    try:

        def join(cfg):
            cfg["hostname"] = ""
            keep = [
                n for n in cfg["linux"]["namespaces"] if n["type"] not in ("network", "ipc", "uts")
            ]
            cfg["linux"]["namespaces"] = [
                *keep,
                {"type": "network", "path": str(pins[Kind.NET])},
                {"type": "ipc", "path": str(pins[Kind.IPC])},
                {"type": "uts", "path": str(pins[Kind.UTS])},
            ]

        bundle = make_bundle(["sleep", "1000"], edit=join)
        oci("run", "--detach", "--bundle", str(bundle), "j1")
        oci("run", "--detach", "--bundle", str(make_bundle(["sleep", "1000"], edit=join)), "j2")
        for cid in ("j1", "j2"):
            pid = oci.state(cid)["pid"]
            with (
                Namespace.of_process(Kind.NET, pid) as ns,
                Namespace.open(Kind.NET, pins[Kind.NET]) as pin,
            ):
                assert ns.same_as(pin)
            assert oci("exec", cid, "hostname").stdout.strip() == "pod-1"
        oci("delete", "--force", "j1")
        oci("delete", "--force", "j2")
    finally:
        for p in pins.values():
            unpin(p)


def test_device_policy_denies_what_is_not_allowed(oci, make_bundle):
    """Deny all, the spec's rules, then runc's defaults (which a spec cannot take away)."""

    def rules(cfg):
        for kind in ("bounding", "effective", "permitted"):
            cfg["process"]["capabilities"][kind].append("CAP_MKNOD")
        cfg["linux"]["resources"] = {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"},
            ]
        }

    script = (
        "echo > /dev/null; echo null=$?; "
        "mknod /tmp/a b 7 0; mknod /tmp/b b 7 1; echo mknod=$?; "
        "head -c1 /tmp/a > /dev/null 2>/tmp/a.err; grep -c 'not permitted' /tmp/a.err; "
        "head -c1 /tmp/b > /dev/null 2>/tmp/b.err; grep -c 'not permitted' /tmp/b.err"
    )
    res = oci(
        "run", "--bundle", str(make_bundle(["sh", "-c", script], edit=rules)), "dev1", check=False
    )
    out = res.stdout.split()
    assert out[:2] == ["null=0", "mknod=0"], res
    # 7:0 is allowed by the spec (opening may still fail: no loop device bound),
    # 7:1 is not: the eBPF program refuses it
    assert out[2:] == ["0", "1"], res


def test_a_created_device_needs_a_rule_to_be_used(oci, make_bundle):
    """linux.devices makes the node; only linux.resources.devices grants access (runc)."""

    def edit(cfg):
        cfg["linux"]["devices"] = [
            {"path": "/dev/lo0", "type": "b", "major": 7, "minor": 0, "fileMode": 0o666},
            {"path": "/dev/lo1", "type": "b", "major": 7, "minor": 1, "fileMode": 0o666},
        ]
        cfg["linux"]["resources"] = {
            "devices": [{"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"}]
        }

    def denied(test: str, name: str) -> str:
        return f"{{ {test}; }} 2>/tmp/{name}; grep -c 'not permitted' /tmp/{name}; "

    script = (
        denied("head -c1 /dev/lo1 >/dev/null", "r1")  # made, no rule: denied
        + denied("head -c1 /dev/lo0 >/dev/null", "r0")  # "r" allowed (may fail: no loop bound)
        + denied("echo x >/dev/lo0", "w0")  # but not "w"
    )
    res = oci(
        "run", "--bundle", str(make_bundle(["sh", "-c", script], edit=edit)), "dev2", check=False
    )
    assert res.stdout.split() == ["1", "0", "1"], res


def test_events_stats_reads_the_cgroup(oci, make_bundle):
    oci("run", "--detach", "--bundle", str(make_bundle(["sh", "-c", "while :; do :; done"])), "ev1")
    event = json.loads(oci("events", "--stats", "ev1").stdout)
    assert event["type"] == "stats" and event["id"] == "ev1"
    assert event["data"]["cpu"]["usage_usec"] > 0
    oci("delete", "--force", "ev1")


def test_update_names_an_unavailable_controller(oci, make_bundle, hierarchy_root):
    controllers = (hierarchy_root / "cgroup.controllers").read_text().split()
    oci("run", "--detach", "--bundle", str(make_bundle(["sleep", "1000"])), "up1")
    res = oci("update", "--memory", "64m", "up1", check=False)
    if "memory" in controllers:
        assert res.returncode == 0
    else:
        assert res.returncode == 1
        assert "memory" in res.stderr and "cgroup.controllers" in res.stderr
    res = oci("update", "--memory", "lots", "up1", check=False)
    assert res.returncode == 1 and "invalid size" in res.stderr
    oci("delete", "--force", "up1")


def test_limits_on_a_host_without_the_controller_fail_cleanly(oci, make_bundle, hierarchy_root):
    if "pids" in (hierarchy_root / "cgroup.controllers").read_text().split():
        return  # covered by the VM tier where the controller exists

    def limit(cfg):
        cfg["linux"]["resources"] = {"pids": {"limit": 10}}

    res = oci("create", "--bundle", str(make_bundle(["true"], edit=limit)), "lim1", check=False)
    assert res.returncode == 1 and "pids" in res.stderr
    assert oci.ids() == []
    assert not (hierarchy_root / "pinnace" / "lim1").exists()


def test_idmapped_volume_in_a_user_namespace(oci, make_bundle, scratch_dir):
    """A host dir owned by host root: through an idmapped bind it belongs to the
    container's root; through a plain bind it is nobody's (unmapped)."""
    vol = scratch_dir / "vol"
    vol.mkdir()
    (vol / "file").write_text("x")
    for d in (scratch_dir, vol):
        d.chmod(0o755)

    def userns(cfg):
        cfg["linux"]["namespaces"].append({"type": "user"})
        cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 300000, "size": 65536}]
        cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 300000, "size": 65536}]
        cfg["mounts"] += [
            {
                "destination": "/mapped",
                "type": "bind",
                "source": str(vol),
                "options": ["bind", "idmap"],
            },
            {"destination": "/plain", "type": "bind", "source": str(vol), "options": ["bind"]},
        ]
        cfg["mounts"] = [m for m in cfg["mounts"] if m["type"] != "sysfs"]

    bundle = make_bundle(["sh", "-c", "stat -c %u /mapped/file /plain/file"], edit=userns)
    # a userns root cannot create in a rootfs the (unmapped) host root owns
    (bundle / "rootfs" / "mapped").mkdir()
    (bundle / "rootfs" / "plain").mkdir()
    for d in (bundle.parent, bundle):
        d.chmod(0o711)
    res = oci("run", "--bundle", str(bundle), "idm1")
    assert res.stdout.split() == ["0", "65534"], res
