"""The CNI driver's logic against fake plugins: shell scripts that record their
environment and stdin and print canned JSON, so every byte the driver hands a
plugin and every way a plugin can answer is checked without root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cri.network.cni import (
    CNIConfigError,
    CNIDriver,
    CNIPluginError,
    build_plugin_config,
    find_config,
    parse_config,
    parse_result,
)
from cri.network.driver import NetworkError, PodNetworkRequest, PortMapping

SCRIPT = """#!/bin/sh
D={log}
echo "{name} $CNI_COMMAND" >> {calls}
cat > "$D/stdin.$CNI_COMMAND"
env > "$D/env.$CNI_COMMAND"
if [ -f "$D/out.$CNI_COMMAND" ]; then cat "$D/out.$CNI_COMMAND"; fi
if [ -f "$D/rc.$CNI_COMMAND" ]; then exit $(cat "$D/rc.$CNI_COMMAND"); fi
exit 0
"""

VERSION_OUT = {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


class FakePlugin:
    def __init__(self, root: Path, bindir: Path, name: str) -> None:
        self.name = name
        self.log = root / "log" / name
        self.log.mkdir(parents=True)
        self.calls_file = root / "calls"
        script = bindir / name
        script.write_text(SCRIPT.format(log=self.log, name=name, calls=self.calls_file))
        script.chmod(0o755)
        self.on("VERSION", VERSION_OUT)

    def on(self, command: str, out: object, rc: int = 0) -> None:
        text = out if isinstance(out, str) else json.dumps(out)
        (self.log / f"out.{command}").write_text(text)
        (self.log / f"rc.{command}").write_text(str(rc))

    def stdin(self, command: str) -> dict:
        obj: dict = json.loads((self.log / f"stdin.{command}").read_text())
        return obj

    def env(self, command: str) -> dict[str, str]:
        lines = (self.log / f"env.{command}").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)


def calls(tmp_path: Path) -> list[str]:
    f = tmp_path / "calls"
    return f.read_text().splitlines() if f.exists() else []


def result(addr: str, gw: str, *, ifname: str = "eth0") -> dict:
    return {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "veth1", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": ifname, "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/ns"},
        ],
        "ips": [{"address": addr, "gateway": gw, "interface": 1}],
    }


@pytest.fixture
def env(tmp_path: Path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    conf = tmp_path / "net.d"
    conf.mkdir()
    plugins = {n: FakePlugin(tmp_path, bindir, n) for n in ("first", "second", "third")}
    drv = CNIDriver(str(tmp_path / "state"), conf_dir=str(conf), bin_dirs=(str(bindir),))
    return drv, conf, plugins


def write_list(
    conf: Path,
    plugins: list[dict],
    *,
    name: str = "podnet",
    version: str = "1.0.0",
    file: str = "10-pod.conflist",
    **extra,
) -> Path:
    p = conf / file
    p.write_text(json.dumps({"cniVersion": version, "name": name, "plugins": plugins, **extra}))
    return p


REQ = PodNetworkRequest(
    sandbox_id="sb1",
    netns="/run/pinnace/sb1/net",
    pod_name="web",
    pod_namespace="default",
    pod_uid="uid-1",
    port_mappings=(PortMapping("TCP", 80, 8080), PortMapping("udp", 53, 5353, "127.0.0.1")),
    dns_servers=("10.0.0.10",),
    dns_searches=("svc.local",),
    dns_options=("ndots:5",),
)

THREE = [
    {"type": "first", "bridge": "br-x", "ipam": {"type": "second"}},
    {"type": "second", "capabilities": {"portMappings": True}},
    {"type": "third", "capabilities": {"dns": True, "portMappings": False}},
]


# ---- configuration ------------------------------------------------------------------


def test_first_file_lexically_wins_and_conf_is_converted(tmp_path: Path) -> None:
    (tmp_path / "20-b.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "bridge"}]})
    )
    (tmp_path / "10-a.conf").write_text(
        json.dumps({"cniVersion": "0.4.0", "name": "a", "type": "bridge", "bridge": "x"})
    )
    (tmp_path / "README").write_text("not a config")
    net = find_config(str(tmp_path))
    assert net.name == "a"
    assert net.cni_version == "0.4.0"
    assert net.plugins == ({"cniVersion": "0.4.0", "name": "a", "type": "bridge", "bridge": "x"},)
    assert net.source == str(tmp_path / "10-a.conf")


def test_json_file_is_a_single_plugin_config(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"cniVersion": "1.0.0", "name": "j", "type": "t"}))
    assert find_config(str(tmp_path)).plugins[0]["type"] == "t"


def test_bad_json_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "00-bad.conflist"
    bad.write_text("{not json")
    (tmp_path / "10-good.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "g", "plugins": [{"type": "t"}]})
    )
    with pytest.raises(CNIConfigError, match="invalid JSON") as ei:
        find_config(str(tmp_path))
    assert ei.value.path == str(bad)
    assert str(bad) in str(ei.value)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"cniVersion": "1.0.0", "plugins": [{"type": "t"}]}, "network name"),
        ({"cniVersion": "1.0.0", "name": "-x", "plugins": [{"type": "t"}]}, "network name"),
        ({"name": "n", "plugins": [{"type": "t"}]}, "missing cniVersion"),
        ({"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "t"}]}, "unsupported"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "no plugins"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "x"}]}, "plugin 0"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../sh"}]}, "invalid"),
        (
            {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "t", "ipam": {}}]},
            "ipam needs a type",
        ),
        ([1, 2], "not a JSON object"),
    ],
)
def test_invalid_configs_are_rejected(obj: object, match: str) -> None:
    with pytest.raises(CNIConfigError, match=match):
        parse_config(json.dumps(obj), "/etc/cni/net.d/x.conflist")


def test_cni_versions_negotiates_the_highest_known() -> None:
    net = parse_config(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "cniVersions": ["1.0.0", "1.1.0", "9.9.9"],
                "name": "n",
                "plugins": [{"type": "t"}],
            }
        ),
        "x.conflist",
    )
    assert net.cni_version == "1.1.0"


def test_empty_dir_is_not_ready(tmp_path: Path) -> None:
    drv = CNIDriver(str(tmp_path / "s"), conf_dir=str(tmp_path / "none"), bin_dirs=())
    ready, msg = drv.status()
    assert not ready
    assert "no CNI network config" in msg and str(tmp_path / "none") in msg


def test_config_reloads_when_the_dir_changes(env) -> None:
    drv, conf, _ = env
    write_list(conf, [{"type": "first"}], name="one", file="20.conflist")
    assert drv.config().name == "one"
    write_list(conf, [{"type": "first"}], name="two", file="10.conflist")
    assert drv.config().name == "two"
    (conf / "10.conflist").write_text("garbage")
    with pytest.raises(CNIConfigError, match=r"10\.conflist"):
        drv.config()
    ready, msg = drv.status()
    assert not ready and "10.conflist" in msg


def test_status_names_a_missing_plugin(env) -> None:
    drv, conf, _ = env
    write_list(conf, [{"type": "first", "ipam": {"type": "nosuch"}}])
    ready, msg = drv.status()
    assert not ready
    assert "'nosuch' not found" in msg


def test_status_ready_and_version_mismatch(env) -> None:
    drv, conf, _ = env
    write_list(conf, THREE)
    assert drv.status() == (True, f"CNI network podnet ({conf / '10-pod.conflist'}) is ready")
    write_list(conf, THREE, version="0.3.1")
    ready, msg = drv.status()
    assert not ready and "does not support cniVersion 0.3.1" in msg


def test_status_runs_status_verb_for_1_1(env, tmp_path: Path) -> None:
    drv, conf, plugins = env
    write_list(conf, [{"type": "first"}, {"type": "second"}], version="1.1.0")
    assert drv.status()[0]
    assert "first STATUS" in calls(tmp_path) and "second STATUS" in calls(tmp_path)
    assert plugins["first"].stdin("STATUS")["name"] == "podnet"
    plugins["second"].on("STATUS", {"code": 50, "msg": "no IPs left"}, rc=1)
    ready, msg = drv.status()
    assert not ready
    assert "second STATUS failed (code 50): no IPs left" in msg


# ---- ADD ----------------------------------------------------------------------------


def test_setup_env_stdin_chaining_and_capabilities(env, tmp_path: Path) -> None:
    drv, conf, plugins = env
    write_list(conf, THREE)
    r1 = result("10.9.0.5/24", "10.9.0.1")
    r2 = {**r1, "ips": [{"address": "fd00::5/64", "interface": 1}, *r1["ips"]]}
    r3 = {**r2, "dns": {"nameservers": ["10.0.0.10"]}}
    plugins["first"].on("ADD", r1)
    plugins["second"].on("ADD", r2)
    plugins["third"].on("ADD", r3)

    pod = drv.setup(REQ)

    assert calls(tmp_path) == ["first ADD", "second ADD", "third ADD"]
    assert pod.ips == ("10.9.0.5", "fd00::5")  # IPv4 first, prefixes dropped
    assert pod.gateway == "10.9.0.1"
    assert pod.extra["cni_network"] == "podnet"

    e = plugins["first"].env("ADD")
    assert e["CNI_COMMAND"] == "ADD"
    assert e["CNI_CONTAINERID"] == "sb1"
    assert e["CNI_NETNS"] == "/run/pinnace/sb1/net"
    assert e["CNI_IFNAME"] == "eth0"
    assert e["CNI_PATH"] == str(tmp_path / "bin")
    assert e["CNI_ARGS"] == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
        "K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=uid-1"
    )

    s1 = plugins["first"].stdin("ADD")
    assert s1 == {
        "cniVersion": "1.0.0",
        "name": "podnet",
        "type": "first",
        "bridge": "br-x",
        "ipam": {"type": "second"},
    }
    s2 = plugins["second"].stdin("ADD")
    assert s2["prevResult"] == r1
    assert s2["runtimeConfig"] == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ]
    }
    s3 = plugins["third"].stdin("ADD")
    assert s3["prevResult"] == r2
    assert s3["runtimeConfig"] == {
        "dns": {"servers": ["10.0.0.10"], "searches": ["svc.local"], "options": ["ndots:5"]}
    }

    with pytest.raises(NetworkError, match="already attached") as ei:
        drv.setup(REQ)
    assert ei.value.invalid

    cache = json.loads(
        (tmp_path / "state" / "results" / "podnet" / "sb1" / "eth0.json").read_text()
    )
    assert cache["result"] == r3
    assert cache["state"] == "ready"
    assert [p["type"] for p in cache["config"]["plugins"]] == ["first", "second", "third"]
    assert not [
        n
        for n in os.listdir(tmp_path / "state" / "results" / "podnet" / "sb1")
        if n.endswith(".tmp")
    ]


def test_build_plugin_config_without_capabilities_has_no_runtime_config() -> None:
    net = parse_config(
        json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "t"}]}), "x.conflist"
    )
    conf = build_plugin_config(
        net, net.plugins[0], prev_result=None, capability_args={"portMappings": []}
    )
    assert conf == {"cniVersion": "1.0.0", "name": "n", "type": "t"}


def test_failure_in_plugin_n_deletes_n_to_1_and_carries_the_message(env, tmp_path) -> None:
    drv, conf, plugins = env
    write_list(conf, THREE)
    r1 = result("10.9.0.5/24", "10.9.0.1")
    plugins["first"].on("ADD", r1)
    plugins["second"].on(
        "ADD", {"cniVersion": "1.0.0", "code": 7, "msg": "bad config", "details": "no x"}, rc=1
    )
    with pytest.raises(CNIPluginError) as ei:
        drv.setup(REQ)
    err = ei.value
    assert (err.plugin, err.command, err.code, err.msg, err.details) == (
        "second",
        "ADD",
        7,
        "bad config",
        "no x",
    )
    assert err.sandbox_id == "sb1" and not err.invalid
    assert "second ADD failed (code 7): bad config: no x" in str(err)
    assert calls(tmp_path) == ["first ADD", "second ADD", "second DEL", "first DEL"]
    assert plugins["first"].stdin("DEL")["prevResult"] == r1
    assert not (tmp_path / "state" / "results" / "podnet").exists()


def test_failed_rollback_keeps_the_record_for_teardown(env, tmp_path) -> None:
    drv, conf, plugins = env
    write_list(conf, THREE)
    plugins["first"].on("ADD", result("10.9.0.5/24", "10.9.0.1"))
    plugins["second"].on("ADD", {"code": 11, "msg": "try later"}, rc=1)
    plugins["first"].on("DEL", {"code": 5, "msg": "io"}, rc=1)
    with pytest.raises(CNIPluginError, match="try later"):
        drv.setup(REQ)
    rec = tmp_path / "state" / "results" / "podnet" / "sb1" / "eth0.json"
    assert json.loads(rec.read_text())["state"] == "adding"
    with pytest.raises(NetworkError, match="first DEL failed"):
        drv.teardown(REQ)
    plugins["first"].on("DEL", "")
    drv.teardown(REQ)
    assert not rec.exists()


def test_garbage_output_names_the_plugin(env) -> None:
    drv, conf, plugins = env
    write_list(conf, [{"type": "first"}])
    plugins["first"].on("ADD", "hello, I am not JSON")
    with pytest.raises(CNIPluginError, match="CNI plugin first ADD failed: printed invalid JSON"):
        drv.setup(REQ)
    plugins["first"].on("ADD", "segfault", rc=2)
    with pytest.raises(CNIPluginError, match="first ADD failed: exit status 2: segfault"):
        drv.setup(REQ)
    plugins["first"].on("ADD", "")
    with pytest.raises(CNIPluginError, match="first ADD failed: printed no result"):
        drv.setup(REQ)


def test_bad_requests_are_invalid(env) -> None:
    drv, conf, _ = env
    write_list(conf, [{"type": "first"}])
    for req in (
        PodNetworkRequest(sandbox_id="../x", netns="/n"),
        PodNetworkRequest(sandbox_id="s", netns="/n", ifname="a/b"),
        PodNetworkRequest(sandbox_id="s", netns="/n", ifname="x" * 16),
        PodNetworkRequest(sandbox_id="s", netns="/n", pod_name="a;b"),
    ):
        with pytest.raises(NetworkError) as ei:
            drv.setup(req)
        assert ei.value.invalid


def test_parse_result_skips_host_interfaces() -> None:
    res = {
        "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/ns"}],
        "ips": [
            {"address": "10.0.0.1/24", "interface": 0},
            {"address": "10.0.0.7/24", "gateway": "10.0.0.1", "interface": 1},
        ],
    }
    pod = parse_result(res, "eth0")
    assert pod.ips == ("10.0.0.7",) and pod.gateway == "10.0.0.1"
    with pytest.raises(NetworkError, match="bad address"):
        parse_result({"ips": [{"address": "nope"}]}, "eth0")


# ---- DEL, CHECK, reconcile, GC ----------------------------------------------------------


def test_teardown_uses_cached_config_and_result_in_reverse(env, tmp_path) -> None:
    drv, conf, plugins = env
    write_list(conf, THREE)
    r = result("10.9.0.5/24", "10.9.0.1")
    for p in plugins.values():
        p.on("ADD", r)
    drv.setup(REQ)
    # the admin replaces the config: DEL must still use what ADD used
    write_list(conf, [{"type": "first"}], name="other")
    (tmp_path / "calls").unlink()
    drv.teardown(REQ)
    assert calls(tmp_path) == ["third DEL", "second DEL", "first DEL"]
    s = plugins["second"].stdin("DEL")
    assert s["name"] == "podnet" and s["prevResult"] == r
    assert s["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080
    assert plugins["third"].env("DEL")["CNI_NETNS"] == REQ.netns
    assert not (tmp_path / "state" / "results" / "podnet").exists()

    # no record but a config: DEL with the current config and no prevResult (libcni)
    (tmp_path / "calls").unlink()
    drv.teardown(REQ)
    assert calls(tmp_path) == ["first DEL"]
    assert "prevResult" not in plugins["first"].stdin("DEL")
    # no record and no config: nothing to do
    (conf / "10-pod.conflist").unlink()
    (tmp_path / "calls").unlink()
    drv.teardown(REQ)
    assert calls(tmp_path) == []


def test_check_runs_in_order_with_the_cached_result(env, tmp_path) -> None:
    drv, conf, plugins = env
    write_list(conf, THREE[:2])
    r = result("10.9.0.5/24", "10.9.0.1")
    plugins["first"].on("ADD", r)
    plugins["second"].on("ADD", r)
    with pytest.raises(NetworkError, match="no CNI attachment"):
        drv.check(REQ)
    drv.setup(REQ)
    drv.check(REQ)
    assert calls(tmp_path)[-2:] == ["first CHECK", "second CHECK"]
    assert plugins["second"].stdin("CHECK")["prevResult"] == r
    plugins["second"].on("CHECK", {"code": 100, "msg": "veth gone"}, rc=1)
    with pytest.raises(CNIPluginError, match="veth gone"):
        drv.check(REQ)


def test_check_skipped_when_disabled(env, tmp_path) -> None:
    drv, conf, plugins = env
    write_list(conf, [{"type": "first"}], disableCheck=True)
    plugins["first"].on("ADD", result("10.9.0.5/24", "10.9.0.1"))
    drv.setup(REQ)
    drv.check(REQ)
    assert "first CHECK" not in calls(tmp_path)


def test_reconcile_releases_only_dead_sandboxes(env, tmp_path) -> None:
    drv, conf, plugins = env
    write_list(conf, [{"type": "first"}])
    plugins["first"].on("ADD", result("10.9.0.5/24", "10.9.0.1"))
    live = PodNetworkRequest(sandbox_id="alive", netns="/n/alive")
    dead = PodNetworkRequest(sandbox_id="dead", netns="/n/dead")
    drv.setup(live)
    drv.setup(dead)
    (tmp_path / "calls").unlink()
    done = drv.reconcile({"alive": live})
    assert done == ["released CNI attachment podnet/dead/eth0"]
    assert calls(tmp_path) == ["first DEL"]
    e = plugins["first"].env("DEL")
    assert (e["CNI_CONTAINERID"], e["CNI_NETNS"]) == ("dead", "/n/dead")
    assert drv.reconcile({"alive": live}) == []


def test_reconcile_runs_gc_for_1_1(env, tmp_path) -> None:
    drv, conf, plugins = env
    write_list(conf, [{"type": "first"}], version="1.1.0")
    live = PodNetworkRequest(sandbox_id="alive", netns="/n/alive")
    done = drv.reconcile({"alive": live})
    assert done == ["GC podnet/first: 1 valid attachments"]
    stdin = plugins["first"].stdin("GC")
    assert stdin["cni.dev/valid-attachments"] == [{"containerID": "alive", "ifname": "eth0"}]
    assert plugins["first"].env("GC")["CNI_COMMAND"] == "GC"
