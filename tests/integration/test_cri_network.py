"""Pod networking through the CRI, with each driver: the built-in bridge and CNI with
Debian's plugins. The node side (bridge, rules, servers) lives in a network namespace
the test makes, so every address any test traffic touches is in namespaces the test
or Pinnace made."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2
from images.builder import FixtureImages
from tests.fixtures.cni import write_bridge_conflist
from tests.fixtures.cri import CRIServer, read_log, running_cri_server
from tests.fixtures.netns import in_netns

pytestmark = pytest.mark.root

CNI_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def _cni_bin() -> str | None:
    for d in CNI_DIRS:
        if (Path(d) / "bridge").exists() and (Path(d) / "host-local").exists():
            return d
    return None


class NetServer:
    """A CRI server with a pod network, and what the test needs to inspect it."""

    def __init__(
        self, srv: CRIServer, driver: str, node: str, bridge: str, cidr: str, ipam_dir: Path
    ):
        self.srv = srv
        self.driver = driver
        self.node = node
        self.bridge = bridge
        self.cidr = ipaddress.ip_network(cidr)
        self.ipam_dir = ipam_dir

    @property
    def gateway(self) -> str:
        return str(next(self.cidr.hosts()))

    def links(self) -> list[str]:
        out = in_netns(self.node, "ip", "-j", "link", "show")
        return [link["ifname"] for link in json.loads(out.stdout or "[]")]

    def allocations(self) -> list[str]:
        """IP allocation files left (both our IPAM and host-local name them by address)."""
        if not self.ipam_dir.exists():
            return []
        return [p.name for p in self.ipam_dir.rglob("*") if p.is_file() and _IPV4.match(p.name)]

    def ruleset(self) -> str:
        nft = in_netns(self.node, "nft", "list", "ruleset").stdout
        ipt = in_netns(self.node, "iptables-save").stdout if self.driver == "cni" else ""
        return nft + ipt

    def pod_ip(self, sid: str) -> str:
        st = self.srv.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid))
        return str(st.status.network.ip)


def _cni_conflist(tmp: Path, bridge: str, cidr: str, cni_bin: str) -> tuple[Path, Path]:
    conf_dir = tmp / "net.d"
    conf_dir.mkdir()
    data_dir = tmp / "host-local"
    write_bridge_conflist(
        conf_dir / "10-test.conflist",
        f"pinnace-test-{bridge}",
        bridge,
        cidr,
        data_dir,
        hairpin=False,
        snat=False,
    )
    return conf_dir, data_dir


@pytest.fixture(params=["bridge", "cni"])
def net_server(
    request: pytest.FixtureRequest,
    node_netns: str,
    fixture_images: FixtureImages,
    tmp_path: Path,
) -> Iterator[NetServer]:
    tag = uuid.uuid4().hex[:6]
    bridge = f"pt{tag}"
    octet = int(tag[:2], 16) % 200 + 20
    cidr = f"10.{85 if request.param == 'bridge' else 86}.{octet}.0/24"
    settings: dict = {"node_netns": node_netns}
    if request.param == "bridge":
        settings |= {
            "network": "bridge",
            "bridge": bridge,
            "pod_cidr": cidr,
            "nft_table": f"pinnace_{tag}",
        }
        ipam_dir_of = lambda srv: srv.base / "state" / "network"  # noqa: E731
    else:
        cni_bin = _cni_bin()
        if cni_bin is None:
            pytest.skip("containernetworking-plugins are not installed")
        conf_dir, data_dir = _cni_conflist(tmp_path, bridge, cidr, cni_bin)
        settings |= {"network": "cni", "cni_conf_dir": str(conf_dir), "cni_bin_dirs": [cni_bin]}
        ipam_dir_of = lambda srv: data_dir  # noqa: E731
    with running_cri_server(fixture_images, settings) as srv:
        yield NetServer(srv, request.param, node_netns, bridge, cidr, ipam_dir_of(srv))
    # the node netns goes with its fixture; its bridge and rules with it


def _pod(
    net: NetServer, name: str | None = None, ports: list[api_pb2.PortMapping] | None = None
) -> tuple[str, api_pb2.PodSandboxConfig]:
    sid, cfg = net.srv.run_pod(name, port_mappings=ports or [])
    return sid, cfg


def _run(net: NetServer, sid, pod, name: str, cmd: list[str]) -> str:
    cid = net.srv.create(sid, pod, net.srv.container_config(name, cmd))
    net.srv.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    return cid


def _output(net: NetServer, cid: str) -> str:
    st = net.srv.wait_exited(cid, timeout=60)
    return "\n".join(t for s, _, t in read_log(st.log_path) if s == "stdout")


def _retry_nc(target: str, port: int) -> list[str]:
    return [
        "sh",
        "-c",
        f"for i in $(seq 100); do nc {target} {port} && exit 0; sleep 0.1; done; exit 1",
    ]


def test_status_reports_network_ready(net_server: NetServer):
    st = net_server.srv.rt.Status(api_pb2.StatusRequest())
    cond = {c.type: c for c in st.status.conditions}
    assert cond["NetworkReady"].status is True, cond["NetworkReady"].message


def test_two_pods_reach_each_other_and_the_node(net_server: NetServer):
    net = net_server
    sid_a, pod_a = _pod(net)
    sid_b, pod_b = _pod(net)
    ip_a, ip_b = net.pod_ip(sid_a), net.pod_ip(sid_b)
    assert ip_a != ip_b
    assert ipaddress.ip_address(ip_a) in net.cidr and ipaddress.ip_address(ip_b) in net.cidr
    _run(net, sid_a, pod_a, "srv", ["nc", "-l", "-p", "8080", "-e", "echo", "hello-from-a"])
    cid = _run(net, sid_b, pod_b, "cli", _retry_nc(ip_a, 8080))
    assert "hello-from-a" in _output(net, cid)
    # a server on the node's bridge address, inside the node's netns
    node_srv = subprocess.Popen(
        [
            "nsenter",
            f"--net={net.node}",
            "busybox",
            "nc",
            "-l",
            "-p",
            "9090",
            "-e",
            "echo",
            "hello-from-node",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cid = _run(net, sid_b, pod_b, "to-node", _retry_nc(net.gateway, 9090))
        assert "hello-from-node" in _output(net, cid)
    finally:
        node_srv.kill()
        node_srv.wait()
    # the pod's /etc/hosts names its own address
    cid = _run(net, sid_a, pod_a, "hosts", ["cat", "/etc/hosts"])
    assert ip_a in _output(net, cid)


def test_host_port_forwards_into_the_pod(net_server: NetServer):
    net = net_server
    port = 30000 + int(uuid.uuid4().hex[:3], 16) % 2000
    sid, pod = _pod(
        net, ports=[api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=8080, host_port=port)]
    )
    _run(net, sid, pod, "srv", ["sh", "-c", "while :; do nc -l -p 8080 -e echo via-hostport; done"])
    deadline = time.monotonic() + 30
    got = ""
    while time.monotonic() < deadline and "via-hostport" not in got:
        got = in_netns(net.node, "busybox", "nc", "-w", "2", net.gateway, str(port)).stdout
        time.sleep(0.2)
    assert "via-hostport" in got
    assert sid in net.ruleset() or net.driver == "cni"
    net.srv.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid))
    assert sid not in net.ruleset()
    assert f":{port}" not in net.ruleset() and f" {port} " not in net.ruleset()


def _leftovers(net: NetServer) -> dict[str, list[str]]:
    return {
        "veths": [n for n in net.links() if n not in ("lo", net.bridge)],
        "allocations": net.allocations(),
    }


def test_concurrent_churn_leaves_nothing(net_server: NetServer):
    net = net_server
    n = 100

    def one(i: int) -> str:
        sid, _ = _pod(net, f"churn-{i}")
        return sid

    with ThreadPoolExecutor(16) as pool:
        sids = list(pool.map(one, range(n)))
    ips = [net.pod_ip(s) for s in sids]
    assert len(set(ips)) == n and all(ips)
    assert len(net.allocations()) == n

    def gone(sid: str) -> None:
        net.srv.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid))
        net.srv.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(gone, sids))
    assert _leftovers(net) == {"veths": [], "allocations": []}
    rules = net.ruleset()
    assert not [s for s in sids if s in rules]


def test_kill9_during_churn_then_restart_leaks_nothing(net_server: NetServer):
    net = net_server
    stop = threading.Event()
    made: list[str] = []

    def churn(i: int) -> None:
        while not stop.is_set():
            try:
                sid, _ = _pod(net, f"k9-{i}-{uuid.uuid4().hex[:6]}")
                made.append(sid)
            except grpc.RpcError:
                return  # the server is gone

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    net.srv.kill9()
    stop.set()
    for t in threads:
        t.join()
    net.srv.start()  # reconciles: half-made pods are rolled back, their IPs released
    net.srv.remove_everything()
    assert _leftovers(net) == {"veths": [], "allocations": []}
    assert made, "no pod was made before the kill"


def test_dual_stack_pod_ips_in_status(node_netns: str, fixture_images: FixtureImages):
    tag = uuid.uuid4().hex[:6]
    settings = {
        "network": "bridge",
        "node_netns": node_netns,
        "bridge": f"pt{tag}",
        "nft_table": f"pinnace_{tag}",
        "pod_cidr": f"10.85.{int(tag[:2], 16) % 200 + 20}.0/24",
        "pod_cidr_v6": f"fd85:{tag[:4]}::/64",
    }
    with running_cri_server(fixture_images, settings) as srv:
        sid_a, pod_a = srv.run_pod()
        sid_b, pod_b = srv.run_pod()
        st = srv.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid_a)).status
        v4, v6 = st.network.ip, [p.ip for p in st.network.additional_ips]
        assert ipaddress.ip_address(v4).version == 4
        assert len(v6) == 1 and ipaddress.ip_address(v6[0]) in ipaddress.ip_network(
            settings["pod_cidr_v6"]
        )
        cid = srv.create(
            sid_a,
            pod_a,
            srv.container_config("srv6", ["nc", "-l", "-p", "8080", "-e", "echo", "over-v6"]),
        )
        srv.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        cmd = [
            "sh",
            "-c",
            f"for i in $(seq 100); do nc {v6[0]} 8080 && exit 0; sleep 0.1; done; exit 1",
        ]
        cid = srv.create(sid_b, pod_b, srv.container_config("cli6", cmd))
        srv.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        st_c = srv.wait_exited(cid, timeout=60)
        assert "over-v6" in [t for _, _, t in read_log(st_c.log_path)]
