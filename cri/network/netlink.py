"""Netlink sockets bound to a chosen network namespace, and the few link operations the
bridge driver needs, through pyroute2 (never the `ip` command).

pyroute2's own netns= support forks a helper process, and forking the threaded
gRPC server is unsafe, so a socket is bound to a namespace another way: a
short-lived thread joins the namespace with setns (which moves only that
thread), opens the netlink socket there (a socket belongs to the namespace it
was created in, for life) and exits; the caller wraps the socket in an
IPRoute. No thread of the server ever changes namespace for longer than that.

pyroute2 0.9 keeps its socket and event loop per thread, so an IPRoute from
`netns_iproute` must be used by the thread that entered the context.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cri.network.driver import NetworkError
from namespaces import syscalls as sc

T = TypeVar("T")

NETLINK_ROUTE = 0


@dataclass(frozen=True)
class PodAddr:
    """One address of a pod's interface and the gateway of its default route."""

    address: str
    prefixlen: int
    gateway: str


def in_netns_thread(netns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a new thread that has joined `netns` ("" = this process's own netns).

    The thread's namespace dies with the thread, so nothing leaks into the caller
    even if switching back were impossible.
    """
    if not netns:
        return fn()
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetworkError(f"cannot open network namespace {netns}: {exc.strerror}") from exc
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.libc().setns(target, sc.CLONE_NEWNET)
                try:
                    result.append(fn())
                finally:
                    # the thread ends anyway, but leave it where it started
                    sc.libc().setns(own, sc.CLONE_NEWNET)
            finally:
                os.close(own)
        except BaseException as exc:
            failure.append(exc)

    try:
        t = threading.Thread(target=run, name="pinnace-netns", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(target)
    if failure:
        err = failure[0]
        if isinstance(err, OSError) and not isinstance(err, NetworkError) and err.strerror:
            raise NetworkError(f"in network namespace {netns}: {err}") from err
        raise err
    return result[0]


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)


@contextlib.contextmanager
def netns_iproute(netns: str) -> Iterator[IPRoute]:
    """An IPRoute whose socket lives in `netns` ("" = this process's own netns)."""
    sock = in_netns_thread(netns, _netlink_socket)
    fd = sock.detach()
    try:
        ipr = IPRoute(fileno=fd, groups=0)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield ipr
    finally:
        ipr.close()


def write_sysctl(netns: str, path: str, value: str) -> None:
    """Write /proc/sys/`path` of `netns`: net sysctls resolve against the opener's netns."""

    def write() -> None:
        fd = os.open(f"/proc/sys/{path}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    in_netns_thread(netns, write)


def link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


IFA_F_NODAD = 0x02
BRPORT_HAIRPIN = 1  # IFLA_BRPORT_MODE: send frames back out the port they came in on

Addr = tuple[str, int]  # (address, prefix length)


def _add_address(ipr: IPRoute, idx: int, name: str, address: str, prefixlen: int) -> None:
    """Add an address; IPv6 ones skip duplicate address detection (the CIDR is ours alone),
    so they are usable at once instead of "tentative" for a second or more."""
    v6 = ":" in address
    spec: dict[str, Any] = {"index": idx, "address": address, "prefixlen": prefixlen}
    if v6:
        spec.update(family=socket.AF_INET6, flags=IFA_F_NODAD)
    try:
        ipr.addr("add", **spec)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise NetworkError(f"cannot add {address}/{prefixlen} to {name}: {exc}") from exc


def ensure_bridge(ipr: IPRoute, name: str, addresses: Sequence[Addr], mtu: int) -> int:
    """The bridge `name`, up, with every one of `addresses`; made if missing. Its index."""
    idx = link_index(ipr, name)
    if idx is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # another process made it meanwhile
                raise NetworkError(f"cannot create bridge {name}: {exc}") from exc
        idx = link_index(ipr, name)
        if idx is None:
            raise NetworkError(f"bridge {name} vanished right after it was created")
    else:
        kind = link_kind(ipr, idx)
        if kind != "bridge":
            raise NetworkError(f"{name} exists and is a {kind or 'plain'} link, not a bridge")
    ipr.link("set", index=idx, state="up")
    have = {(a.get("address"), a["prefixlen"]) for a in ipr.addr("dump", index=idx)}
    for address, prefixlen in addresses:
        if (address, prefixlen) not in have:
            _add_address(ipr, idx, name, address, prefixlen)
    return idx


def link_kind(ipr: IPRoute, idx: int) -> str:
    (msg,) = ipr.link("get", index=idx)
    info = msg.get_attr("IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND")) if info is not None else ""


def links_on_master(ipr: IPRoute, master: int) -> list[str]:
    """Names of the links enslaved to the link with index `master`."""
    return [
        str(m.get_attr("IFLA_IFNAME"))
        for m in ipr.link("dump")
        if m.get_attr("IFLA_MASTER") == master
    ]


def create_veth_into(
    node_ipr: IPRoute,
    host_name: str,
    pod_netns: str,
    pod_ifname: str,
    *,
    master: int | None = None,
    mtu: int = 1500,
    alias: str = "",
    hairpin: bool = False,
) -> int:
    """A veth pair made in the node netns with its pod end created directly in `pod_netns`
    (by fd), so a pod's "eth0" never meets the node's names. The host end, attached to
    `master` when given (in hairpin mode if asked, so a pod's packets DNATed back to it
    on the bridge can return through its own port), up, its alias `alias` (whose veth it
    is); returns its index."""
    try:
        nsfd = os.open(pod_netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetworkError(
            f"cannot open pod network namespace {pod_netns}: {exc.strerror}"
        ) from exc
    try:
        node_ipr.link(
            "add",
            ifname=host_name,
            kind="veth",
            mtu=mtu,
            peer={"ifname": pod_ifname, "net_ns_fd": nsfd, "mtu": mtu},
        )
    except NetlinkError as exc:
        raise NetworkError(
            f"cannot create veth {host_name} <-> {pod_ifname} in {pod_netns}: {exc}"
        ) from exc
    finally:
        os.close(nsfd)
    idx = link_index(node_ipr, host_name)
    if idx is None:
        raise NetworkError(f"veth {host_name} vanished right after it was created")
    spec: dict[str, Any] = {"state": "up"}
    if master is not None:
        spec["master"] = master
    if alias:
        spec["ifalias"] = alias
    try:
        node_ipr.link("set", index=idx, **spec)
        if master is not None and hairpin:
            node_ipr.brport("set", index=idx, mode=BRPORT_HAIRPIN)
    except NetlinkError as exc:
        with contextlib.suppress(NetlinkError):
            node_ipr.link("del", index=idx)
        raise NetworkError(f"cannot attach veth {host_name}: {exc}") from exc
    return idx


def link_alias(ipr: IPRoute, name: str) -> str | None:
    """The alias of link `name` ("" if none); None when there is no such link."""
    idx = link_index(ipr, name)
    if idx is None:
        return None
    (msg,) = ipr.link("get", index=idx)
    return str(msg.get_attr("IFLA_IFALIAS") or "")


def configure_pod_side(pod_ipr: IPRoute, ifname: str, addresses: Sequence[PodAddr]) -> None:
    """The pod's interface: its addresses, up, a default route via each family's gateway."""
    idx = link_index(pod_ipr, ifname)
    if idx is None:
        raise NetworkError(f"interface {ifname} is missing in the pod's network namespace")
    for a in addresses:
        _add_address(pod_ipr, idx, ifname, a.address, a.prefixlen)
    try:
        pod_ipr.link("set", index=idx, state="up")
    except NetlinkError as exc:
        raise NetworkError(f"cannot bring {ifname} up: {exc}") from exc
    for a in addresses:
        v6 = ":" in a.address
        try:
            pod_ipr.route(
                "add",
                dst="::/0" if v6 else "0.0.0.0/0",
                gateway=a.gateway,
                oif=idx,
                family=socket.AF_INET6 if v6 else socket.AF_INET,
            )
        except NetlinkError as exc:
            raise NetworkError(f"cannot add a default route via {a.gateway}: {exc}") from exc


def delete_link(ipr: IPRoute, name: str, *, alias: str = "") -> bool:
    """Delete link `name`; False when it was not there, or `alias` is given and the link
    carries another one (it belongs to someone else)."""
    idx = link_index(ipr, name)
    if idx is None:
        return False
    if alias and link_alias(ipr, name) not in ("", alias):
        return False
    try:
        ipr.link("del", index=idx)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):  # gone meanwhile (its peer's netns died)
            return False
        raise NetworkError(f"cannot delete link {name}: {exc}") from exc
    return True
