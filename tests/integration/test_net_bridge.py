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
from socket import AF_INET, AF_INET6

import pytest

from cri.network import netlink as nl
from cri.network.bridge import BridgeDriver, host_veth_name
from cri.network.driver import NetworkError, PodNetworkRequest, PortMapping
from namespaces.handles import unpin
from tests.fixtures.netns import in_netns

CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
CIDR6 = "fd85::/64"  # ULA, only ever inside the test's own netns
GATEWAY6 = "fd85::1"
NODE_OUT = "10.250.0.1"  # the node's address on the link to the "outside" netns
OUTSIDE = "10.250.0.2"

# one server process: answers `count` TCP connections or UDP datagrams, prints each peer
SERVER = r"""
import socket, sys
proto, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
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
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
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


def pod_addrs(netns: str, ifname: str = "eth0", family: int = AF_INET) -> list[str]:
    """The interface's addresses of `family` (IPv6: global ones, not the link-local)."""
    with nl.netns_iproute(netns) as ipr:
        idx = nl.link_index(ipr, ifname)
        assert idx is not None, f"no {ifname} in {netns}"
        addrs = [str(a.get_attr("IFA_ADDRESS")) for a in ipr.addr("dump", index=idx, family=family)]
    return [a for a in addrs if not a.startswith("fe80:")]


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


@pytest.fixture
def dual_driver(tmp_path: Path, node_netns: str, names: tuple[str, str]) -> BridgeDriver:
    bridge, table = names
    return BridgeDriver(
        str(tmp_path / "net"),
        cidr=CIDR,
        cidr_v6=CIDR6,
        bridge=bridge,
        node_netns=node_netns,
        nft_table=table,
    )


def test_dual_stack_pods_reach_each_other_over_ipv6(
    dual_driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    d = dual_driver
    a, b = netns_factory("a"), netns_factory("b")
    ra = PodNetworkRequest(_sid(), a)
    rb = PodNetworkRequest(_sid(), b, port_mappings=(PortMapping("tcp", 7000, 18400),))
    na, nb = d.setup(ra), d.setup(rb)
    assert len(na.ips) == 2 and ":" not in na.ips[0] and na.ips[1].startswith("fd85::")
    assert na.ips[1] != nb.ips[1] and na.extra["gateway_v6"] == GATEWAY6
    assert pod_addrs(a, family=AF_INET6) == [na.ips[1]] and pod_addrs(a) == [na.ips[0]]
    fwd = in_netns(node_netns, "cat", "/proc/sys/net/ipv6/conf/all/forwarding")
    assert fwd.stdout.strip() == "1"
    with serve(b, "tcp", "::", 5000) as peers:
        r = talk(a, "tcp", nb.ips[1], 5000)
        assert r.returncode == 0 and r.stdout.strip() == "pong:ping", r.stderr
    assert peers == [na.ips[1]]  # pod to pod over IPv6: no NAT
    # the host port answers on the node's IPv6 address too (and still on IPv4)
    with serve(b, "tcp", "::", 7000, count=2):
        for addr in (GATEWAY6, GATEWAY):
            r = talk(node_netns, "tcp", addr, 18400)
            assert r.returncode == 0 and r.stdout.strip() == "pong:ping", (addr, r.stderr)
    assert len(d.nft.list_pods()[rb.sandbox_id]) == 2  # one rule per family
    assert d.ipam6 is not None
    d.teardown(ra)
    d.teardown(rb)
    for req in (ra, rb):
        assert_gone(d, node_netns, req.sandbox_id)
    assert d.ipam.owned() == {} and d.ipam6.owned() == {}


def test_dual_stack_ipv6_egress_is_masqueraded(
    dual_driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    outside, pod = netns_factory("outside"), netns_factory("pod")
    with nl.netns_iproute(node_netns) as ipr:
        nl.create_veth_into(ipr, "vout", outside, "eth0")
        idx = nl.link_index(ipr, "vout")
        assert idx is not None
        nl.configure_pod_side(ipr, "vout", [nl.PodAddr("fd86::1", 64, "fd86::2")])
    with nl.netns_iproute(outside) as ipr:
        nl.configure_pod_side(ipr, "eth0", [nl.PodAddr("fd86::2", 64, "fd86::1")])
    req = PodNetworkRequest(_sid(), pod)
    dual_driver.setup(req)
    with serve(outside, "tcp", "fd86::2", 5002) as peers:
        r = talk(pod, "tcp", "fd86::2", 5002)
        assert r.returncode == 0, r.stderr
    assert peers == ["fd86::1"]
    dual_driver.teardown(req)
    assert dual_driver.ipam6 is not None and dual_driver.ipam6.owned() == {}


def test_dual_stack_reconcile_releases_ipv6_too(
    dual_driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    req = PodNetworkRequest(_sid(), netns_factory("p"))
    net = dual_driver.setup(req)
    done = dual_driver.reconcile({})
    assert f"released address {net.ips[1]}" in done
    assert_gone(dual_driver, node_netns, req.sandbox_id)
    assert dual_driver.ipam6 is not None and dual_driver.ipam6.owned() == {}


def test_ipv6_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="is not IPv6") as e:
        BridgeDriver(str(tmp_path / "a"), cidr=CIDR, cidr_v6="10.9.0.0/16")
    assert e.value.invalid
    with pytest.raises(NetworkError, match="needs nft_family inet"):
        BridgeDriver(str(tmp_path / "b"), cidr=CIDR, cidr_v6=CIDR6, nft_family="ip")


def test_ipv6_host_ip_needs_a_dual_stack_pod(
    driver: BridgeDriver, netns_factory: Callable[[str], str]
) -> None:
    pod = netns_factory("pod")
    req = PodNetworkRequest(_sid(), pod, port_mappings=(PortMapping("tcp", 1, 2, "fd85::1"),))
    with pytest.raises(NetworkError, match="not IPv4") as e:
        driver.setup(req)
    assert e.value.invalid and driver.ipam.owned() == {}


def test_host_port_conflict_is_refused_and_leaves_nothing(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    a, b = netns_factory("a"), netns_factory("b")
    first = PodNetworkRequest(_sid(), a, port_mappings=(PortMapping("tcp", 80, 18200),))
    driver.setup(first)
    # "" (every address) overlaps any one address, and the other way round
    for hip in ("", "0.0.0.0", GATEWAY):
        clash = PodNetworkRequest(
            _sid(), b, port_mappings=(PortMapping("TCP", 81, 18200, host_ip=hip),)
        )
        with pytest.raises(NetworkError) as e:
            driver.setup(clash)
        assert e.value.invalid and e.value.sandbox_id == clash.sandbox_id
        assert "tcp port 18200" in str(e.value) and first.sandbox_id in str(e.value)
        assert_gone(driver, node_netns, clash.sandbox_id)
        with nl.netns_iproute(b) as ipr:
            assert nl.link_index(ipr, "eth0") is None
    assert list(driver.ipam.owned().values()) == [first.sandbox_id]
    # another protocol, or the same port on distinct addresses, is no clash
    udp = PodNetworkRequest(_sid(), b, port_mappings=(PortMapping("udp", 80, 18200),))
    driver.setup(udp)
    c, d = netns_factory("c"), netns_factory("d")
    on1 = PodNetworkRequest(_sid(), c, port_mappings=(PortMapping("tcp", 80, 18201, GATEWAY),))
    on2 = PodNetworkRequest(_sid(), d, port_mappings=(PortMapping("tcp", 80, 18201, NODE_OUT),))
    driver.setup(on1)
    driver.setup(on2)
    # once the owner is gone, the port is free again
    driver.teardown(first)
    again = PodNetworkRequest(_sid(), a, port_mappings=(PortMapping("tcp", 80, 18200),))
    driver.setup(again)
    for r in (udp, on1, on2, again):
        driver.teardown(r)
    assert driver.ipam.owned() == {} and driver.nft.list_pods() == {}


def test_host_port_conflict_survives_a_restart(
    make_driver: Callable[[], BridgeDriver], node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    first = PodNetworkRequest(
        _sid(), netns_factory("a"), port_mappings=(PortMapping("udp", 53, 18210, GATEWAY),)
    )
    make_driver().setup(first)
    second = make_driver()  # a restarted server: the claim is read back from the rules
    clash = PodNetworkRequest(
        _sid(), netns_factory("b"), port_mappings=(PortMapping("udp", 53, 18210),)
    )
    with pytest.raises(NetworkError, match=first.sandbox_id) as e:
        second.setup(clash)
    assert e.value.invalid
    assert_gone(second, node_netns, clash.sandbox_id)
    second.teardown(first)


def test_concurrent_setups_cannot_both_get_a_host_port(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    reqs = [
        PodNetworkRequest(
            _sid(), netns_factory(f"p{i}"), port_mappings=(PortMapping("tcp", 80, 18220),)
        )
        for i in range(8)
    ]

    def up(r: PodNetworkRequest) -> str:
        try:
            driver.setup(r)
        except NetworkError as exc:
            assert exc.invalid and "already mapped" in str(exc), exc
            return "refused"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(up, reqs))
    assert sorted(results) == ["ok"] + ["refused"] * 7
    (winner,) = [r for r, res in zip(reqs, results, strict=True) if res == "ok"]
    assert list(driver.nft.list_pods()) == [winner.sandbox_id]
    assert list(driver.ipam.owned().values()) == [winner.sandbox_id]
    for r in reqs:
        driver.teardown(r)
    assert_gone(driver, node_netns, winner.sandbox_id)


def test_hairpin_pod_reaches_itself_and_others_through_a_host_port(
    driver: BridgeDriver, node_netns: str, netns_factory: Callable[[str], str]
) -> None:
    a, b = netns_factory("a"), netns_factory("b")
    ra = PodNetworkRequest(_sid(), a, port_mappings=(PortMapping("tcp", 7000, 18300),))
    rb = PodNetworkRequest(_sid(), b)
    driver.setup(ra)
    driver.setup(rb)
    with nl.netns_iproute(node_netns) as ipr:
        idx = nl.link_index(ipr, host_veth_name(ra.sandbox_id))
        assert idx is not None
        (msg,) = ipr.brport("show", index=idx)
        assert msg.get_attr("IFLA_PROTINFO").get_attr("IFLA_BRPORT_MODE") == 1
    with serve(a, "tcp", "0.0.0.0", 7000, count=2) as peers:
        for pod in (a, b):  # itself, then another pod, via the node's bridge address
            r = talk(pod, "tcp", GATEWAY, 18300)
            assert r.returncode == 0 and r.stdout.strip() == "pong:ping", r.stderr
    assert peers == [GATEWAY, GATEWAY]  # masqueraded, so the answer goes back via the node
    driver.teardown(ra)
    driver.teardown(rb)
