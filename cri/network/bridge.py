"""The built-in pod network: a Linux bridge on the node, a veth pair per pod, addresses
from a CIDR (and from an IPv6 one too for dual stack), egress masquerade and hostPorts
through Pinnace's nftables table.

The node's side (bridge, host veth ends, rules, ip_forward) is all in `node_netns`
("" = the host's own). Nothing per pod is recorded besides the IPAM file: the
host veth name derives from the sandbox id (and carries the id as its alias, so a
name clash never deletes another pod's veth), the rules carry it as a comment, so
teardown and reconcile work from the sandbox id alone, after a crash too. The host
ports a pod claims are read back from its rules, so a second pod asking for one of
them is refused, after a restart too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator

from cri.network import netlink as nl
from cri.network.driver import NetworkError, PodNetwork, PodNetworkRequest, PortMapping
from cri.network.ipam import IPAM
from cri.network.nft import HostPort, NftTable, host_port, validate_mappings

log = logging.getLogger(__name__)

VETH_PREFIX = "pn"
IFNAMSIZ = 15


def host_veth_name(sandbox_id: str) -> str:
    """The node-side veth of a pod: "pn" + the first 8 hex digits of its id."""
    return VETH_PREFIX + sandbox_id[:8]


class BridgeDriver:
    name = "bridge"

    def __init__(
        self,
        state_dir: str,
        *,
        cidr: str = "10.85.0.0/16",
        cidr_v6: str = "",
        bridge: str = "pinnace0",
        node_netns: str = "",
        nft_table: str = "pinnace",
        nft_family: str = "inet",
        mtu: int = 1500,
    ) -> None:
        if not bridge or len(bridge) > IFNAMSIZ or "/" in bridge or bridge.strip() != bridge:
            raise NetworkError(f"invalid bridge name {bridge!r}", invalid=True)
        if not 576 <= mtu <= 65535:
            raise NetworkError(f"MTU {mtu} is out of range 576-65535", invalid=True)
        self.ipam = IPAM(os.path.join(state_dir, "ipam"), cidr)
        if self.ipam.network.version != 4:
            raise NetworkError(f"pod CIDR {cidr} is not IPv4", invalid=True)
        self.cidr = cidr
        self.cidr_v6 = cidr_v6
        self.ipam6: IPAM | None = None
        self.gateway_v6 = ""
        if cidr_v6:
            if nft_family != "inet":
                raise NetworkError(
                    f"an IPv6 pod CIDR needs nft_family inet, not {nft_family!r}", invalid=True
                )
            self.ipam6 = IPAM(os.path.join(state_dir, "ipam6"), cidr_v6)
            if self.ipam6.network.version != 6:
                raise NetworkError(f"pod CIDR {cidr_v6} is not IPv6", invalid=True)
            self.gateway_v6 = str(self.ipam6.gateway)
        self.bridge = bridge
        self.node_netns = node_netns
        self.mtu = mtu
        self.gateway = str(self.ipam.gateway)
        self.nft = NftTable(nft_table, family=nft_family, node_netns=node_netns)
        self._node_lock = threading.Lock()
        self._node_ready = False
        # host ports of pods between their check and their rules (the rules are the record)
        self._ports_lock = threading.Lock()
        self._pending_ports: dict[str, set[HostPort]] = {}

    # --- node-side shared state ----------------------------------------------------

    def _ensure_node(self) -> int:
        """Bridge up with the gateway address, forwarding on, table in place; the bridge's
        index. Serialized: these are shared by every pod."""
        with self._node_lock:
            addrs = [(self.gateway, self.ipam.prefixlen)]
            if self.ipam6 is not None:
                addrs.append((self.gateway_v6, self.ipam6.prefixlen))
            with nl.netns_iproute(self.node_netns) as ipr:
                idx = nl.ensure_bridge(ipr, self.bridge, addrs, self.mtu)
            if not self._node_ready:
                nl.write_sysctl(self.node_netns, "net/ipv4/ip_forward", "1")
                if self.ipam6 is not None:
                    nl.write_sysctl(self.node_netns, "net/ipv6/conf/all/forwarding", "1")
                self.nft.ensure_table(self.cidr, self.cidr_v6)
                self._node_ready = True
            return idx

    @contextlib.contextmanager
    def _claimed_ports(self, sid: str, want: set[HostPort]) -> Iterator[None]:
        """Hold `want` for the pod while its setup runs: refused (the caller's error) if a
        live pod of this driver, or one being set up, already maps an overlapping one."""
        if not want:
            yield
            return
        with self._ports_lock:
            claims = [*self.nft.list_ports().items(), *self._pending_ports.items()]
            for other, ports in claims:
                if other == sid:
                    continue
                for w in sorted(want, key=str):
                    clash = next((p for p in ports if w.overlaps(p)), None)
                    if clash is not None:
                        raise NetworkError(
                            f"host {w} is already mapped by sandbox {other} ({clash})",
                            sandbox_id=sid,
                            invalid=True,
                        )
            self._pending_ports[sid] = want
        try:
            yield
        finally:
            with self._ports_lock:
                self._pending_ports.pop(sid, None)

    # --- NetworkDriver ---------------------------------------------------------------

    def setup(self, req: PodNetworkRequest) -> PodNetwork:
        sid = req.sandbox_id
        if len(sid) < 8 or not all(c in "0123456789abcdef" for c in sid[:8]):
            raise NetworkError(
                "sandbox id must start with 8 hex digits", sandbox_id=sid, invalid=True
            )
        if not req.ifname or len(req.ifname) > IFNAMSIZ or "/" in req.ifname:
            raise NetworkError(
                f"invalid interface name {req.ifname!r}", sandbox_id=sid, invalid=True
            )
        mappings = validate_mappings(sid, req.port_mappings, ipv6=self.ipam6 is not None)
        if not os.path.exists(req.netns):
            raise NetworkError(f"pod network namespace {req.netns} does not exist", sandbox_id=sid)
        with self._claimed_ports(sid, {host_port(m) for m in mappings}):
            return self._setup(req, mappings)

    def _setup(self, req: PodNetworkRequest, mappings: list[PortMapping]) -> PodNetwork:
        sid = req.sandbox_id
        bridge_idx = self._ensure_node()
        veth = host_veth_name(sid)
        ip6 = ""
        try:
            ip = self.ipam.allocate(sid)
            addrs = [nl.PodAddr(ip, self.ipam.prefixlen, self.gateway)]
            if self.ipam6 is not None:
                ip6 = self.ipam6.allocate(sid)
                addrs.append(nl.PodAddr(ip6, self.ipam6.prefixlen, self.gateway_v6))
            with nl.netns_iproute(self.node_netns) as node:
                owner = nl.link_alias(node, veth)
                if owner not in (None, sid):
                    raise NetworkError(
                        f"host interface {veth} already exists and belongs to "
                        f"{owner or 'something else'}: sandbox ids must differ in "
                        "their first 8 hex digits"
                    )
                nl.delete_link(node, veth, alias=sid)  # left by an interrupted attempt
                nl.create_veth_into(
                    node,
                    veth,
                    req.netns,
                    req.ifname,
                    master=bridge_idx,
                    mtu=self.mtu,
                    alias=sid,
                    hairpin=True,
                )
            with nl.netns_iproute(req.netns) as pod:
                nl.configure_pod_side(pod, req.ifname, addrs)
            if mappings:
                self.nft.add_pod(sid, ip, mappings, ip6)
        except BaseException as exc:
            self._node_ready = False  # re-check forwarding and the table next time
            try:
                self._undo(sid)
            except Exception as undo_exc:  # report the first failure, log the second
                log.error("%s: undoing a failed network setup: %s", sid, undo_exc)
            if isinstance(exc, NetworkError) and not exc.sandbox_id:
                exc.sandbox_id = sid
            raise
        extra = {"bridge": self.bridge, "host_veth": veth}
        if ip6:
            extra["gateway_v6"] = self.gateway_v6
        return PodNetwork(
            ips=(ip, ip6) if ip6 else (ip,),
            gateway=self.gateway,
            interface=req.ifname,
            extra=extra,
        )

    def _undo(self, sid: str) -> None:
        self.nft.remove_pod(sid)
        with nl.netns_iproute(self.node_netns) as node:
            nl.delete_link(node, host_veth_name(sid), alias=sid)
        self.ipam.release(sid)
        if self.ipam6 is not None:
            self.ipam6.release(sid)

    def teardown(self, req: PodNetworkRequest) -> None:
        """Rules, host veth (its pod end goes with it), addresses - in that order, so an
        address is free only once nothing routes to it. The pod's netns is not needed."""
        try:
            self._undo(req.sandbox_id)
        except NetworkError as exc:
            if not exc.sandbox_id:
                exc.sandbox_id = req.sandbox_id
            raise

    def status(self) -> tuple[bool, str]:
        if shutil.which("nft") is None:
            return False, "bridge network: the nft command is not installed"
        try:
            with nl.netns_iproute(self.node_netns) as ipr:
                idx = nl.link_index(ipr, self.bridge)
                kind = nl.link_kind(ipr, idx) if idx is not None else ""
        except (NetworkError, OSError) as exc:
            return False, f"bridge network: node network namespace unusable: {exc}"
        if idx is None:
            return True, f"bridge {self.bridge} will be created for pod CIDR {self.cidr}"
        if kind != "bridge":
            return False, f"{self.bridge} exists and is a {kind or 'plain'} link, not a bridge"
        return True, f"bridge {self.bridge} is up for pod CIDR {self.cidr}"

    def reconcile(self, live: dict[str, PodNetworkRequest]) -> list[str]:
        done: list[str] = []
        for sid in sorted(self.nft.list_pods()):
            if sid not in live:
                n = self.nft.remove_pod(sid)
                done.append(f"removed {n} nftables rule(s) of sandbox {sid}")
        keep = {host_veth_name(s) for s in live}
        with nl.netns_iproute(self.node_netns) as node:
            idx = nl.link_index(node, self.bridge)
            if idx is not None:
                for name in nl.links_on_master(node, idx):
                    gone = name.startswith(VETH_PREFIX) and name not in keep
                    if gone and nl.delete_link(node, name):
                        done.append(f"deleted veth {name}")
        for ipam in (self.ipam, self.ipam6):
            for addr in ipam.reconcile(live) if ipam is not None else []:
                done.append(f"released address {addr}")
        return done
