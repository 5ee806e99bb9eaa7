"""The built-in pod network: a Linux bridge on the node, a veth pair per pod, addresses
from a CIDR, egress masquerade and hostPorts through Pinnace's nftables table.

The node's side (bridge, host veth ends, rules, ip_forward) is all in `node_netns`
("" = the host's own). Nothing per pod is recorded besides the IPAM file: the
host veth name derives from the sandbox id (and carries the id as its alias, so a
name clash never deletes another pod's veth), the rules carry it as a comment, so
teardown and reconcile work from the sandbox id alone, after a crash too.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading

from cri.network import netlink as nl
from cri.network.driver import NetworkError, PodNetwork, PodNetworkRequest
from cri.network.ipam import IPAM
from cri.network.nft import NftTable, validate_mappings

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
        self.bridge = bridge
        self.node_netns = node_netns
        self.mtu = mtu
        self.gateway = str(self.ipam.gateway)
        self.nft = NftTable(nft_table, family=nft_family, node_netns=node_netns)
        self._node_lock = threading.Lock()
        self._node_ready = False

    # --- node-side shared state ----------------------------------------------------

    def _ensure_node(self) -> int:
        """Bridge up with the gateway address, forwarding on, table in place; the bridge's
        index. Serialized: these are shared by every pod."""
        with self._node_lock:
            with nl.netns_iproute(self.node_netns) as ipr:
                idx = nl.ensure_bridge(
                    ipr, self.bridge, self.gateway, self.ipam.prefixlen, self.mtu
                )
            if not self._node_ready:
                nl.write_sysctl(self.node_netns, "net/ipv4/ip_forward", "1")
                self.nft.ensure_table(self.cidr)
                self._node_ready = True
            return idx

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
        validate_mappings(sid, req.port_mappings)
        if not os.path.exists(req.netns):
            raise NetworkError(f"pod network namespace {req.netns} does not exist", sandbox_id=sid)
        bridge_idx = self._ensure_node()
        veth = host_veth_name(sid)
        ip = self.ipam.allocate(sid)
        try:
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
                    node, veth, req.netns, req.ifname, master=bridge_idx, mtu=self.mtu, alias=sid
                )
            with nl.netns_iproute(req.netns) as pod:
                nl.configure_pod_side(pod, req.ifname, ip, self.ipam.prefixlen, self.gateway)
            if req.port_mappings:
                self.nft.add_pod(sid, ip, req.port_mappings)
        except BaseException as exc:
            self._node_ready = False  # re-check forwarding and the table next time
            try:
                self._undo(sid)
            except Exception as undo_exc:  # report the first failure, log the second
                log.error("%s: undoing a failed network setup: %s", sid, undo_exc)
            if isinstance(exc, NetworkError) and not exc.sandbox_id:
                exc.sandbox_id = sid
            raise
        return PodNetwork(
            ips=(ip,),
            gateway=self.gateway,
            interface=req.ifname,
            extra={"bridge": self.bridge, "host_veth": veth},
        )

    def _undo(self, sid: str) -> None:
        self.nft.remove_pod(sid)
        with nl.netns_iproute(self.node_netns) as node:
            nl.delete_link(node, host_veth_name(sid), alias=sid)
        self.ipam.release(sid)

    def teardown(self, req: PodNetworkRequest) -> None:
        """Rules, host veth (its pod end goes with it), address - in that order, so an
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
        for addr in self.ipam.reconcile(live):
            done.append(f"released address {addr}")
        return done
