"""The project's own nftables table: egress masquerade for the pod CIDR and hostPort DNAT.

Everything lives in one table Pinnace owns (never the host's other rules), changed
through `nft -j -f -` (the JSON interface) run in the node's netns. Layout:

- chain prerouting (nat, dstnat) and chain output (nat, -100): packets addressed to
  a local address (`fib daddr type local`) jump to chain hostports; output sees only
  locally generated connections, prerouting the ones arriving from outside or pods.
- chain hostports: one DNAT rule per port mapping, its comment the sandbox id, so a
  pod's rules are found (and deleted by handle) with no record of our own.
- chain postrouting (nat, srcnat): static rules per pod CIDR (IPv4, and IPv6 for a
  dual-stack driver): masquerade from the CIDR to anywhere outside it (egress), and
  from the CIDR back into it after a host port's DNAT (hairpin).

Building the JSON is pure (unit-tested); `NftTable` applies it.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cri.network.driver import NetworkError, PortMapping

HOSTPORTS = "hostports"
PROTOCOLS = ("tcp", "udp", "sctp")
Command = dict[str, Any]


@dataclass(frozen=True)
class TableRef:
    family: str  # "inet" | "ip"
    name: str

    def __post_init__(self) -> None:
        if self.family not in ("inet", "ip"):
            raise NetworkError(
                f"nftables family must be inet or ip, not {self.family!r}", invalid=True
            )
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise NetworkError(f"invalid nftables table name {self.name!r}", invalid=True)

    def obj(self, **kw: Any) -> dict[str, Any]:
        return {"family": self.family, "table": self.name, **kw}


def _eq(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> dict[str, Any]:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _masquerade_rules(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[list[Any]]:
    """Egress (from the CIDR to anywhere outside it) and hairpin (from the CIDR, DNATed
    back into it by a host port: without it the target pod would answer the client pod
    directly, from an address the client never dialed)."""
    proto = "ip" if net.version == 4 else "ip6"
    src = _eq(_payload(proto, "saddr"), _prefix(net))
    return [
        [src, _eq(_payload(proto, "daddr"), _prefix(net), "!="), {"masquerade": None}],
        [
            _eq({"ct": {"key": "status"}}, "dnat", "in"),
            src,
            _eq(_payload(proto, "daddr"), _prefix(net)),
            {"masquerade": None},
        ],
    ]


def table_commands(t: TableRef, pod_cidr: str, pod_cidr_v6: str = "") -> list[Command]:
    """Create the table and its chains (idempotent: `add` of what exists is a no-op) and
    rewrite the static rules; the per-pod chain is left as it is. `pod_cidr_v6` (dual
    stack) needs an inet table, which sees both families."""
    net = ipaddress.ip_network(pod_cidr)
    if not isinstance(net, ipaddress.IPv4Network):
        raise NetworkError(f"pod CIDR {pod_cidr} is not IPv4", invalid=True)
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [net]
    if pod_cidr_v6:
        net6 = ipaddress.ip_network(pod_cidr_v6)
        if not isinstance(net6, ipaddress.IPv6Network):
            raise NetworkError(f"pod CIDR {pod_cidr_v6} is not IPv6", invalid=True)
        if t.family != "inet":
            raise NetworkError(
                f"an IPv6 pod CIDR needs an inet table, not {t.family!r}", invalid=True
            )
        nets.append(net6)
    local = _eq({"fib": {"result": "type", "flags": ["daddr"]}}, "local")

    def base(name: str, hook: str, prio: int) -> Command:
        return {
            "add": {"chain": t.obj(name=name, type="nat", hook=hook, prio=prio, policy="accept")}
        }

    def rule(chain: str, *expr: dict[str, Any]) -> Command:
        return {"add": {"rule": t.obj(chain=chain, expr=list(expr))}}

    return [
        {"add": {"table": {"family": t.family, "name": t.name}}},
        {"add": {"chain": t.obj(name=HOSTPORTS)}},
        base("prerouting", "prerouting", -100),
        base("output", "output", -100),
        base("postrouting", "postrouting", 100),
        *({"flush": {"chain": t.obj(name=c)}} for c in ("prerouting", "output", "postrouting")),
        rule("prerouting", local, {"jump": {"target": HOSTPORTS}}),
        rule("output", local, {"jump": {"target": HOSTPORTS}}),
        *(rule("postrouting", *expr) for n in nets for expr in _masquerade_rules(n)),
    ]


@dataclass(frozen=True)
class HostPort:
    """What a host port mapping claims on the node; host_ip "" is every address."""

    protocol: str
    host_ip: str
    host_port: int

    def overlaps(self, other: HostPort) -> bool:
        return (
            self.protocol == other.protocol
            and self.host_port == other.host_port
            and (not self.host_ip or not other.host_ip or self.host_ip == other.host_ip)
        )

    def __str__(self) -> str:
        return f"{self.protocol} port {self.host_port} on {self.host_ip or 'every address'}"


def host_port(m: PortMapping) -> HostPort:
    """The claim of a mapping that `validate_mappings` returned."""
    return HostPort(m.protocol, m.host_ip, m.host_port)


def validate_mappings(
    sandbox_id: str, mappings: Iterable[PortMapping], *, ipv6: bool = False
) -> list[PortMapping]:
    """The mappings that ask for a host port (host_port 0 means none, as in kubelet),
    normalized (protocol lower case, an unspecified host IP as ""); a bad protocol, port
    or host IP, or two mappings claiming the same host port, is the caller's error.
    IPv6 host IPs are allowed when the pod has an IPv6 address (`ipv6`)."""
    out: list[PortMapping] = []
    for m in mappings:
        if m.host_port == 0:
            continue
        proto = m.protocol.lower()
        if proto not in PROTOCOLS:
            raise NetworkError(
                f"port mapping protocol {m.protocol!r} is not one of {', '.join(PROTOCOLS)}",
                sandbox_id=sandbox_id,
                invalid=True,
            )
        for what, port in (("host", m.host_port), ("container", m.container_port)):
            if not 1 <= port <= 65535:
                raise NetworkError(
                    f"{what} port {port} is out of range 1-65535",
                    sandbox_id=sandbox_id,
                    invalid=True,
                )
        hip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(0)
        if m.host_ip:
            try:
                hip = ipaddress.ip_address(m.host_ip)
            except ValueError as exc:
                raise NetworkError(
                    f"invalid host IP {m.host_ip!r}", sandbox_id=sandbox_id, invalid=True
                ) from exc
            if hip.version != 4 and not ipv6:
                raise NetworkError(
                    f"host IP {m.host_ip} is not IPv4 (pods have IPv4 addresses only)",
                    sandbox_id=sandbox_id,
                    invalid=True,
                )
        host_ip = "" if not m.host_ip or hip.is_unspecified else str(hip)
        new = PortMapping(proto, m.container_port, m.host_port, host_ip)
        for old in out:
            if host_port(old).overlaps(host_port(new)):
                raise NetworkError(
                    f"two port mappings claim host {host_port(new)}",
                    sandbox_id=sandbox_id,
                    invalid=True,
                )
        out.append(new)
    return out


def pod_rule_commands(
    t: TableRef,
    sandbox_id: str,
    pod_ip: str,
    mappings: Sequence[PortMapping],
    pod_ip6: str = "",
) -> list[Command]:
    """DNAT rules tagged with the sandbox id: per mapping, one for IPv4 and, when the pod
    has an IPv6 address too, one for IPv6 - both if the host IP is unspecified, else the
    one of its family."""
    cmds: list[Command] = []
    for m in validate_mappings(sandbox_id, mappings, ipv6=bool(pod_ip6)):
        v6_host = ":" in m.host_ip
        targets = []
        if not v6_host:
            targets.append(("ip", "ipv4", pod_ip))
        if pod_ip6 and (v6_host or not m.host_ip):
            targets.append(("ip6", "ipv6", pod_ip6))
        for proto, nfproto, addr in targets:
            expr: list[dict[str, Any]] = []
            if m.host_ip:
                expr.append(_eq(_payload(proto, "daddr"), m.host_ip))
            elif t.family == "inet":
                expr.append(_eq({"meta": {"key": "nfproto"}}, nfproto))
            expr.append(_eq(_payload(m.protocol, "dport"), m.host_port))
            dnat: dict[str, Any] = {"addr": addr, "port": m.container_port}
            if t.family == "inet":
                dnat = {"family": proto, **dnat}
            expr.append({"dnat": dnat})
            cmds.append({"add": {"rule": t.obj(chain=HOSTPORTS, comment=sandbox_id, expr=expr)}})
    return cmds


def delete_commands(t: TableRef, handles: Iterable[int]) -> list[Command]:
    return [{"delete": {"rule": t.obj(chain=HOSTPORTS, handle=h)}} for h in handles]


def _pod_rules(listing: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for item in listing.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not rule or rule.get("chain") != HOSTPORTS or not rule.get("comment"):
            continue
        yield str(rule["comment"]), rule


def parse_pod_rules(listing: dict[str, Any]) -> dict[str, list[int]]:
    """sandbox id -> rule handles, from `nft -j list chain ... hostports`."""
    out: dict[str, list[int]] = {}
    for sid, rule in _pod_rules(listing):
        out.setdefault(sid, []).append(int(rule["handle"]))
    return out


def parse_pod_ports(listing: dict[str, Any]) -> dict[str, set[HostPort]]:
    """sandbox id -> the host ports its rules claim, read back from the rules themselves
    (so the claims of pods set up before a restart count too)."""
    out: dict[str, set[HostPort]] = {}
    for sid, rule in _pod_rules(listing):
        proto, host_ip, port = "", "", 0
        for e in rule.get("expr", []):
            match = e.get("match") if isinstance(e, dict) else None
            left = match.get("left") if isinstance(match, dict) else None
            payload = left.get("payload") if isinstance(left, dict) else None
            if not isinstance(payload, dict) or match is None or match.get("op") != "==":
                continue
            if payload.get("field") == "dport":
                proto, port = str(payload.get("protocol")), int(match["right"])
            elif payload.get("field") == "daddr" and isinstance(match["right"], str):
                host_ip = match["right"]
        if proto:
            out.setdefault(sid, set()).add(HostPort(proto, host_ip, port))
    return out


def script(cmds: list[Command]) -> str:
    return json.dumps({"nftables": cmds})


class NftTable:
    """The table in the node's netns ("" = the host's own), changed by running nft."""

    def __init__(
        self, name: str = "pinnace", *, family: str = "inet", node_netns: str = ""
    ) -> None:
        self.ref = TableRef(family, name)
        self.node_netns = node_netns

    def _argv(self, *args: str) -> list[str]:
        pre = ["nsenter", f"--net={self.node_netns}"] if self.node_netns else []
        return [*pre, "nft", *args]

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                self._argv(*args), input=stdin, capture_output=True, text=True, check=False
            )
        except FileNotFoundError as exc:
            raise NetworkError(f"cannot run nft: {exc}") from exc

    def apply(self, cmds: list[Command], *, sandbox_id: str = "") -> None:
        if not cmds:
            return
        r = self._run(["-j", "-f", "-"], script(cmds))
        if r.returncode != 0:
            raise NetworkError(
                f"nft rejected the rules for table {self.ref.family} {self.ref.name}: "
                f"{r.stderr.strip() or f'exit status {r.returncode}'}",
                sandbox_id=sandbox_id,
            )

    def ensure_table(self, pod_cidr: str, pod_cidr_v6: str = "") -> None:
        self.apply(table_commands(self.ref, pod_cidr, pod_cidr_v6))

    def _listing(self) -> dict[str, Any]:
        """The hostports chain as nft's JSON; empty when the table does not exist."""
        r = self._run(["-j", "list", "chain", self.ref.family, self.ref.name, HOSTPORTS])
        if r.returncode != 0:
            if "No such file or directory" in r.stderr:
                return {}
            raise NetworkError(f"nft cannot list table {self.ref.name}: {r.stderr.strip()}")
        listing: dict[str, Any] = json.loads(r.stdout)
        return listing

    def list_pods(self) -> dict[str, list[int]]:
        """sandbox id -> rule handles; empty when the table does not exist."""
        return parse_pod_rules(self._listing())

    def list_ports(self) -> dict[str, set[HostPort]]:
        """sandbox id -> host ports its rules claim."""
        return parse_pod_ports(self._listing())

    def add_pod(
        self,
        sandbox_id: str,
        pod_ip: str,
        mappings: Sequence[PortMapping],
        pod_ip6: str = "",
    ) -> None:
        self.apply(
            pod_rule_commands(self.ref, sandbox_id, pod_ip, mappings, pod_ip6),
            sandbox_id=sandbox_id,
        )

    def remove_pod(self, sandbox_id: str) -> int:
        """Delete the pod's rules (none is fine); how many were deleted."""
        for attempt in range(3):
            handles = self.list_pods().get(sandbox_id, [])
            try:
                self.apply(delete_commands(self.ref, handles), sandbox_id=sandbox_id)
                return len(handles)
            except NetworkError:
                # a concurrent teardown of the same pod deleted a handle first: look again
                if attempt == 2:
                    raise
        return 0

    def remove_all(self) -> None:
        """Delete the whole table (nothing if it is not there)."""
        r = self._run(["delete", "table", self.ref.family, self.ref.name])
        if r.returncode != 0 and "No such file or directory" not in r.stderr:
            raise NetworkError(f"nft cannot delete table {self.ref.name}: {r.stderr.strip()}")
