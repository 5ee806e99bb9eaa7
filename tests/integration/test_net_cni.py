"""The CNI driver with Debian's real plugins (bridge + host-local, portmap) inside a node
network namespace the test makes: pods get addresses, reach each other, the gateway
and host ports, and teardown/reconcile leave no veth, IP allocation or rule behind."""

from __future__ import annotations

import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cri.network.cni import CNIDriver
from cri.network.driver import PodNetworkRequest, PortMapping
from namespaces.handles import unpin
from tests.fixtures.cni import write_bridge_conflist
from tests.fixtures.netns import in_netns

pytestmark = pytest.mark.usefixtures("require_root")

PLUGINS = "/usr/lib/cni"

SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(("hello from " + sys.argv[3] + " to " + peer[0]).encode())
    c.close()
"""

CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(c.recv(200).decode())
"""


@dataclass
class CNIEnv:
    driver: CNIDriver
    node: str
    bridge: str
    subnet_prefix: str  # "10.a.b."
    ipam_dir: Path
    netns_factory: Callable[[str], str]
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    reqs: list[PodNetworkRequest] = field(default_factory=list)

    def pod(self, name: str, **kw: object) -> PodNetworkRequest:
        req = PodNetworkRequest(
            sandbox_id=f"sb-{name}-{secrets.token_hex(4)}",
            netns=self.netns_factory(name),
            pod_name=name,
            pod_namespace="default",
            pod_uid=f"uid-{name}",
            **kw,  # type: ignore[arg-type]
        )
        self.reqs.append(req)
        return req

    def serve(self, netns: str, addr: str, port: int, who: str) -> None:
        p = subprocess.Popen(
            ["nsenter", f"--net={netns}", sys.executable, "-c", SERVER, addr, str(port), who],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.servers.append(p)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"

    def allocations(self) -> list[str]:
        """host-local's reservations: one file per allocated IP under dataDir/<network>."""
        d = self.ipam_dir / "podnet"
        return sorted(p.name for p in d.iterdir() if p.name.startswith("10.")) if d.is_dir() else []

    def veths(self) -> list[str]:
        out = in_netns(self.node, "ip", "-o", "link", "show", "type", "veth").stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def connect(netns: str, addr: str, port: int) -> subprocess.CompletedProcess[str]:
    return in_netns(netns, sys.executable, "-c", CLIENT, addr, str(port), timeout=30)


def write_conflist(conf_dir: Path, bridge: str, subnet: str, ipam_dir: Path) -> None:
    write_bridge_conflist(conf_dir / "10-podnet.conflist", "podnet", bridge, subnet, ipam_dir)


@pytest.fixture
def cni(tmp_path: Path, node_netns: str, netns_factory: Callable[[str], str]) -> Iterator[CNIEnv]:
    bridge = f"pcni{secrets.token_hex(4)}"
    a, b = secrets.randbelow(200) + 20, secrets.randbelow(250) + 1
    ipam_dir = tmp_path / "ipam"
    write_conflist(tmp_path / "net.d", bridge, f"10.{a}.{b}.0/24", ipam_dir)
    drv = CNIDriver(
        str(tmp_path / "state"),
        conf_dir=str(tmp_path / "net.d"),
        bin_dirs=(PLUGINS,),
        node_netns=node_netns,
    )
    env = CNIEnv(drv, node_netns, bridge, f"10.{a}.{b}.", ipam_dir, netns_factory)
    try:
        yield env
    finally:
        for p in env.servers:
            p.kill()
            p.wait()
        for r in env.reqs:
            try:
                drv.teardown(r)
            except Exception:
                pass  # the node netns goes next and takes bridge, veths and rules with it


def test_status_ready_with_real_plugins(cni: CNIEnv) -> None:
    ready, msg = cni.driver.status()
    assert ready, msg
    assert "podnet" in msg


def test_two_pods_get_distinct_ips_and_reach_each_other(cni: CNIEnv) -> None:
    a, b = cni.pod("a"), cni.pod("b")
    na, nb = cni.driver.setup(a), cni.driver.setup(b)
    assert len(na.ips) == 1 and len(nb.ips) == 1
    assert na.ips != nb.ips
    assert na.ips[0].startswith(cni.subnet_prefix) and nb.ips[0].startswith(cni.subnet_prefix)
    assert na.gateway == nb.gateway == cni.subnet_prefix + "1"
    cni.driver.check(a)  # the real plugins agree the attachment is as ADD left it

    cni.serve(b.netns, "0.0.0.0", 7000, "b")
    r = connect(a.netns, nb.ips[0], 7000)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"hello from b to {na.ips[0]}"


def test_pod_reaches_server_on_gateway_in_node_netns(cni: CNIEnv) -> None:
    a = cni.pod("a")
    na = cni.driver.setup(a)
    cni.serve(cni.node, na.gateway, 7001, "node")
    r = connect(a.netns, na.gateway, 7001)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"hello from node to {na.ips[0]}"


def test_host_port_forwards_into_pod(cni: CNIEnv) -> None:
    a = cni.pod("a", port_mappings=(PortMapping("tcp", 8080, 18080),))
    na = cni.driver.setup(a)
    cni.serve(a.netns, "0.0.0.0", 8080, "pod")
    r = connect(cni.node, na.gateway, 18080)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("hello from pod")
    rules = in_netns(cni.node, "iptables-save", "-t", "nat").stdout
    assert "--dport 18080" in rules

    cni.driver.teardown(a)
    rules = in_netns(cni.node, "iptables-save", "-t", "nat").stdout
    assert "--dport 18080" not in rules
    r = connect(cni.node, na.gateway, 18080)
    assert r.returncode != 0  # nothing forwards the port any more


def test_teardown_removes_veth_and_allocation_and_is_idempotent(cni: CNIEnv) -> None:
    a = cni.pod("a")
    na = cni.driver.setup(a)
    assert cni.allocations() == [na.ips[0]]
    assert len(cni.veths()) == 1
    cni.driver.teardown(a)
    assert cni.allocations() == []
    assert cni.veths() == []
    assert not (Path(cni.driver.state_dir) / "results" / "podnet").exists()
    cni.driver.teardown(a)  # StopPodSandbox then RemovePodSandbox
    assert cni.allocations() == []


def test_teardown_after_the_pod_netns_is_gone(cni: CNIEnv) -> None:
    a = cni.pod("a")
    cni.driver.setup(a)
    unpin(Path(a.netns))  # the netns dies, and with it both veth ends
    assert not Path(a.netns).exists()
    cni.driver.teardown(a)
    assert cni.allocations() == []
    # the kernel destroys an unreferenced netns (and the veth pair) from a workqueue,
    # a moment after the last reference goes
    deadline = time.monotonic() + 30
    while cni.veths() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cni.veths() == []


def test_twenty_pods_concurrently(cni: CNIEnv) -> None:
    reqs = [cni.pod(f"p{i}") for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        nets = list(pool.map(cni.driver.setup, reqs))
    ips = [n.ips[0] for n in nets]
    assert len(set(ips)) == 20
    assert cni.allocations() == sorted(ips)
    assert len(cni.veths()) == 20
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(cni.driver.teardown, reqs))
    assert cni.allocations() == []
    assert cni.veths() == []


def test_reconcile_releases_a_leftover_attachment(cni: CNIEnv, tmp_path: Path) -> None:
    kept, lost = cni.pod("kept"), cni.pod("lost")
    nk = cni.driver.setup(kept)
    cni.driver.setup(lost)
    # a restarted server: a new driver over the same state, with only `kept` still alive
    again = CNIDriver(
        cni.driver.state_dir,
        conf_dir=cni.driver.conf_dir,
        bin_dirs=(PLUGINS,),
        node_netns=cni.node,
    )
    done = again.reconcile({kept.sandbox_id: kept})
    assert done == [f"released CNI attachment podnet/{lost.sandbox_id}/eth0"]
    assert cni.allocations() == [nk.ips[0]]
    assert len(cni.veths()) == 1
    again.check(kept)
    assert again.reconcile({kept.sandbox_id: kept}) == []


def test_setup_teardown_cost(cni: CNIEnv, capsys: pytest.CaptureFixture[str]) -> None:
    """Median wall time of one pod's setup+teardown (bridge, host-local, portmap)."""
    times = []
    for i in range(10):
        req = cni.pod(f"t{i}", port_mappings=(PortMapping("tcp", 80, 20000 + i),))
        t0 = time.perf_counter()
        cni.driver.setup(req)
        cni.driver.teardown(req)
        times.append(time.perf_counter() - t0)
    assert cni.allocations() == [] and cni.veths() == []
    with capsys.disabled():
        print(f"\nCNI setup+teardown per pod: median {statistics.median(times) * 1000:.0f} ms")
