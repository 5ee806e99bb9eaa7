"""The bridge driver against the real kernel: the node is a test netns, pods are pinned
netns like the sandbox manager makes, traffic is real TCP/UDP between them."""

from __future__ import annotations

import contextlib
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from socket import AF_INET

import pytest

from cri.network import netlink as nl
from cri.network.bridge import BridgeDriver, host_veth_name
from cri.network.driver import NetworkError, PodNetworkRequest, PortMapping
from namespaces.handles import unpin
from tests.fixtures.netns import in_netns

CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
NODE_OUT = "10.250.0.1"  # the node's address on the link to the "outside" netns
OUTSIDE = "10.250.0.2"

# one server process: answers `count` TCP connections or UDP datagrams, prints each peer
SERVER = r"""
import socket, sys
proto, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.settimeout(20)
if proto == "tcp":
    s.listen(8)
print("ready", flush=True)
for _ in range(count):
    if proto == "tcp":
        c, peer = s.accept()
        with c:
            c.sendall(b"pong:" + c.recv(100))
    else:
        data, peer = s.recvfrom(100)
        s.sendto(b"pong:" + data, peer)
    print(peer[0], flush=True)
"""

CLIENT = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.settimeout(3)
s.connect((host, port))
s.send(b"ping")
print(s.recv(100).decode())
"""


def _sid() -> str:
    return secrets.token_hex(32)


def talk(netns: str, proto: str, host: str, port: int) -> subprocess.CompletedProcess[str]:
    return in_netns(netns, sys.executable, "-c", CLIENT, proto, host, str(port), timeout=30)


@contextlib.contextmanager
def serve(netns: str, proto: str, host: str, port: int, count: int = 1) -> Iterator[list[str]]:
    """A server in `netns`; yields the list of peer addresses, filled when the block ends."""
    argv = ["nsenter", f"--net={netns}", sys.executable, "-c", SERVER, proto, host, str(port)]
    proc = subprocess.Popen(
        [*argv, str(count)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peers: list[str] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "ready", proc.stderr.read() if proc.stderr else ""
        yield peers
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        peers.extend(out.split())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def names() -> tuple[str, str]:
    """A bridge and an nft table name no other test uses."""
    tag = secrets.token_hex(3)
    return f"pnbr{tag}", f"pinnace_t{tag}"


@pytest.fixture
def make_driver(
    tmp_path: Path, node_netns: str, names: tuple[str, str]
) -> Callable[[], BridgeDriver]:
    bridge, table = names

    def make() -> BridgeDriver:
        return BridgeDriver(
            str(tmp_path / "net"), cidr=CIDR, bridge=bridge, node_netns=node_netns, nft_table=table
        )

    return make


@pytest.fixture
def driver(make_driver: Callable[[], BridgeDriver]) -> BridgeDriver:
    return make_driver()


def node_links(node: str) -> set[str]:
    with nl.netns_iproute(node) as ipr:
        return {str(m.get_attr("IFLA_IFNAME")) for m in ipr.link("dump")}


def pod_addrs(netns: str, ifname: str = "eth0") -> list[str]:
    with nl.netns_iproute(netns) as ipr:
        idx = nl.link_index(ipr, ifname)
        assert idx is not None, f"no {ifname} in {netns}"
        return [str(a.get_attr("IFA_ADDRESS")) for a in ipr.addr("dump", index=idx, family=AF_INET)]


def connect_outside(node: str, outside: str) -> None:
    """A veth from the node netns to an "outside" netns, 10.250.0.0/24, no routes beyond."""
    with nl.netns_iproute(node) as ipr:
        nl.create_veth_into(ipr, "vout", outside, "eth0")
        idx = nl.link_index(ipr, "vout")
        ipr.addr("add", index=idx, address=NODE_OUT, prefixlen=24)
    with nl.netns_iproute(outside) as ipr:
        idx = nl.link_index(ipr, "eth0")
        ipr.addr("add", index=idx, address=OUTSIDE, prefixlen=24)
        ipr.link("set", index=idx, state="up")


def assert_gone(d: BridgeDriver, node: str, sid: str) -> None:
    assert host_veth_name(sid) not in node_links(node)
    assert sid not in d.nft.list_pods()
    assert sid not in d.ipam.owned().values()


def test_two_pods_get_distinct_ips_and_reach_each_other(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    a, b = netns_factory("a"), netns_factory("b")
    ra, rb = PodNetworkRequest(_sid(), a), PodNetworkRequest(_sid(), b)
    na, nb = driver.setup(ra), driver.setup(rb)
    assert na.ips != nb.ips
    assert na.gateway == GATEWAY and na.interface == "eth0"
    assert pod_addrs(a) == [na.ips[0]] and pod_addrs(b) == [nb.ips[0]]
    assert in_netns(node_netns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    with serve(b, "tcp", "0.0.0.0", 5000) as peers:
        r = talk(a, "tcp", nb.ips[0], 5000)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "pong:ping"
    assert peers == [na.ips[0]]  # pod to pod: no NAT
    driver.teardown(ra)
    driver.teardown(rb)


def test_pod_reaches_the_node_on_the_gateway(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    pod = netns_factory("pod")
    req = PodNetworkRequest(_sid(), pod)
    net = driver.setup(req)
    with serve(node_netns, "tcp", GATEWAY, 5001) as peers:
        r = talk(pod, "tcp", GATEWAY, 5001)
        assert r.returncode == 0, r.stderr
    assert peers == [net.ips[0]]
    driver.teardown(req)


def test_egress_is_masqueraded_to_the_node_address(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    outside, pod = netns_factory("outside"), netns_factory("pod")
    connect_outside(node_netns, outside)
    req = PodNetworkRequest(_sid(), pod)
    driver.setup(req)
    with serve(outside, "tcp", OUTSIDE, 5002) as peers:
        r = talk(pod, "tcp", OUTSIDE, 5002)
        assert r.returncode == 0, r.stderr
    assert peers == [NODE_OUT]  # not the pod's IP: the outside has no route to the pod CIDR
    driver.teardown(req)


def test_host_ports_tcp_udp_and_host_ip(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    outside, pod = netns_factory("outside"), netns_factory("pod")
    connect_outside(node_netns, outside)
    req = PodNetworkRequest(
        _sid(),
        pod,
        port_mappings=(
            PortMapping("tcp", 7000, 18080),
            PortMapping("udp", 7001, 18081),
            PortMapping("tcp", 7002, 18082, host_ip=NODE_OUT),
        ),
    )
    net = driver.setup(req)
    assert len(driver.nft.list_pods()[req.sandbox_id]) == 3
    # locally generated (output chain) to both node addresses, and from outside (prerouting)
    with serve(pod, "tcp", "0.0.0.0", 7000, count=3) as peers:
        for netns, addr in ((node_netns, NODE_OUT), (node_netns, GATEWAY), (outside, NODE_OUT)):
            r = talk(netns, "tcp", addr, 18080)
            assert r.returncode == 0 and r.stdout.strip() == "pong:ping", (addr, r.stderr)
    assert peers[2] == OUTSIDE
    with serve(pod, "udp", "0.0.0.0", 7001, count=2):
        for addr in (NODE_OUT, GATEWAY):
            r = talk(node_netns, "udp", addr, 18081)
            assert r.returncode == 0 and r.stdout.strip() == "pong:ping", (addr, r.stderr)
    # host_ip: only the named address forwards
    with serve(pod, "tcp", "0.0.0.0", 7002, count=1):
        r = talk(node_netns, "tcp", GATEWAY, 18082)
        assert r.returncode != 0 and "refused" in r.stderr.lower(), r
        r = talk(node_netns, "tcp", NODE_OUT, 18082)
        assert r.returncode == 0, r.stderr
    assert net.ips[0] in driver.ipam.owned()
    driver.teardown(req)
    assert_gone(driver, node_netns, req.sandbox_id)


def test_teardown_removes_everything_and_is_idempotent(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    a, b = netns_factory("a"), netns_factory("b")
    ra = PodNetworkRequest(_sid(), a, port_mappings=(PortMapping("tcp", 80, 18090),))
    rb = PodNetworkRequest(_sid(), b, port_mappings=(PortMapping("udp", 53, 18091),))
    driver.setup(ra)
    driver.setup(rb)
    assert host_veth_name(ra.sandbox_id) in node_links(node_netns)
    driver.teardown(ra)
    assert_gone(driver, node_netns, ra.sandbox_id)
    driver.teardown(ra)
    # the pod's netns is gone before its teardown (a node reboot, a crash)
    unpin(Path(b))
    driver.teardown(rb)
    driver.teardown(rb)
    assert_gone(driver, node_netns, rb.sandbox_id)
    assert driver.ipam.owned() == {} and driver.nft.list_pods() == {}
    # a sandbox the driver never saw
    driver.teardown(PodNetworkRequest(_sid(), "/nonexistent"))


def test_failed_setup_leaves_nothing(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    pod = netns_factory("pod")
    first = PodNetworkRequest(_sid(), pod)
    driver.setup(first)
    # a second interface named eth0 in the same netns cannot be made
    clash = PodNetworkRequest(_sid(), pod)
    with pytest.raises(NetworkError, match="cannot create veth") as e:
        driver.setup(clash)
    assert e.value.sandbox_id == clash.sandbox_id
    assert_gone(driver, node_netns, clash.sandbox_id)
    assert list(driver.ipam.owned().values()) == [first.sandbox_id]
    with pytest.raises(NetworkError, match="does not exist"):
        driver.setup(PodNetworkRequest(_sid(), str(Path(pod).parent / "missing")))
    with pytest.raises(NetworkError, match="protocol") as e:
        driver.setup(PodNetworkRequest(_sid(), pod, port_mappings=(PortMapping("x", 1, 2),)))
    assert e.value.invalid
    driver.teardown(first)
    assert driver.ipam.owned() == {}


def test_veth_name_clash_never_touches_the_other_pod(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    a, b = netns_factory("a"), netns_factory("b")
    first = PodNetworkRequest("abcdef01" + "0" * 56, a)
    clash = PodNetworkRequest("abcdef01" + "1" * 56, b)
    net = driver.setup(first)
    with pytest.raises(NetworkError, match="already exists and belongs to " + first.sandbox_id):
        driver.setup(clash)
    driver.teardown(clash)
    assert host_veth_name(first.sandbox_id) in node_links(node_netns)
    assert list(driver.ipam.owned().items()) == [(net.ips[0], first.sandbox_id)]
    driver.teardown(first)
    assert_gone(driver, node_netns, first.sandbox_id)


def test_status_does_not_create_the_bridge(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str], tmp_path: Path
) -> None:
    ready, msg = driver.status()
    assert ready and "will be created" in msg
    assert driver.bridge not in node_links(node_netns)
    req = PodNetworkRequest(_sid(), netns_factory("pod"))
    driver.setup(req)
    ready, msg = driver.status()
    assert ready and "is up" in msg
    driver.teardown(req)
    wrong = BridgeDriver(str(tmp_path / "w"), cidr=CIDR, bridge="lo", node_netns=node_netns)
    ready, msg = wrong.status()
    assert not ready and "not a bridge" in msg


def test_reconcile_after_a_crash(
    make_driver: Callable[[], BridgeDriver], node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    first = make_driver()
    reqs = [
        PodNetworkRequest(
            _sid(), netns_factory(f"p{i}"), port_mappings=(PortMapping("tcp", 80, 18100 + i),)
        )
        for i in range(3)
    ]
    for r in reqs:
        first.setup(r)
    del first  # the server was killed: nothing was torn down
    second = make_driver()
    keep = reqs[0]
    done = second.reconcile({keep.sandbox_id: keep})
    assert len(done) == 6, done  # rules, veth and address of each of the two dead pods
    for r in reqs[1:]:
        assert_gone(second, node_netns, r.sandbox_id)
    assert list(second.ipam.owned().values()) == [keep.sandbox_id]
    assert host_veth_name(keep.sandbox_id) in node_links(node_netns)
    assert list(second.nft.list_pods()) == [keep.sandbox_id]
    assert second.reconcile({keep.sandbox_id: keep}) == []
    assert len(second.reconcile({})) == 3
    assert_gone(second, node_netns, keep.sandbox_id)


def test_hundred_pods_concurrently(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    reqs = [
        PodNetworkRequest(
            _sid(), netns_factory(f"p{i}"), port_mappings=(PortMapping("tcp", 80, 20000 + i),)
        )
        for i in range(100)
    ]
    times: dict[str, float] = {}
    lock = threading.Lock()

    def up(r: PodNetworkRequest) -> str:
        t0 = time.monotonic()
        ip = driver.setup(r).ips[0]
        with lock:
            times[r.sandbox_id] = time.monotonic() - t0
        return ip

    def down(r: PodNetworkRequest) -> None:
        t0 = time.monotonic()
        driver.teardown(r)
        with lock:
            times[r.sandbox_id] += time.monotonic() - t0

    with ThreadPoolExecutor(16) as pool:
        ips = list(pool.map(up, reqs))
    assert len(set(ips)) == 100
    owned = driver.ipam.owned()
    assert {owned[ip] for ip in ips} == {r.sandbox_id for r in reqs}
    assert len(driver.nft.list_pods()) == 100
    with nl.netns_iproute(node_netns) as ipr:
        idx = nl.link_index(ipr, driver.bridge)
        assert idx is not None
        assert len(nl.links_on_master(ipr, idx)) == 100
    for r, ip in zip(reqs[:3], ips[:3], strict=True):
        assert pod_addrs(r.netns) == [ip]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(down, reqs))
    assert driver.ipam.owned() == {}
    assert driver.nft.list_pods() == {}
    assert not [n for n in node_links(node_netns) if n.startswith("pn") and n != driver.bridge]
    med = statistics.median(times.values())
    print(f"\nbridge driver: median setup+teardown per pod, 16 threads: {med * 1000:.0f} ms")
