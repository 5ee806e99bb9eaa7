"""The one interface every pod network driver implements, and the values it trades in.

The sandbox manager calls `setup` after the pod's network namespace is pinned
and before the sandbox is ready, `teardown` on StopPodSandbox (and again on
remove: it must be idempotent), and `reconcile` once at server start with the
sandboxes that still exist, so allocations and rules of pods that vanished in
a crash are released. Drivers do their own locking: calls for different pods
come from different threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PortMapping:
    protocol: str  # "tcp" | "udp" | "sctp"
    container_port: int
    host_port: int
    host_ip: str = ""  # "" = every address of the node


@dataclass(frozen=True)
class PodNetworkRequest:
    sandbox_id: str
    netns: str  # the pod's pinned network namespace file
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    port_mappings: tuple[PortMapping, ...] = ()
    dns_servers: tuple[str, ...] = ()
    dns_searches: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    ifname: str = "eth0"


@dataclass(frozen=True)
class PodNetwork:
    """What a pod got: its addresses (the first is the primary IP kubelet shows)."""

    ips: tuple[str, ...]
    gateway: str = ""
    interface: str = "eth0"
    # anything the driver needs to tear it down after a restart (kept in the sandbox record)
    extra: dict[str, str] = field(default_factory=dict)


class NetworkError(Exception):
    """A driver failure; `invalid` marks the caller's mistake (INVALID_ARGUMENT) as opposed
    to a fault of the node (INTERNAL)."""

    def __init__(self, message: str, *, sandbox_id: str = "", invalid: bool = False) -> None:
        super().__init__(message)
        self.sandbox_id = sandbox_id
        self.invalid = invalid

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{self.sandbox_id}: {msg}" if self.sandbox_id else msg


class NetworkDriver(Protocol):
    name: str

    def setup(self, req: PodNetworkRequest) -> PodNetwork:
        """Give the pod its interface, address, routes and port mappings; all or nothing."""
        ...

    def teardown(self, req: PodNetworkRequest) -> None:
        """Undo `setup`; fine when nothing (or part) of it exists, or the netns is gone."""
        ...

    def status(self) -> tuple[bool, str]:
        """(ready, message) for the NetworkReady condition."""
        ...

    def reconcile(self, live: dict[str, PodNetworkRequest]) -> list[str]:
        """Release what belongs to no live sandbox (after a crash); what it did."""
        ...


class NoNetwork:
    """Loopback only: what sandboxes get when no pod network is configured."""

    name = "none"

    def setup(self, req: PodNetworkRequest) -> PodNetwork:
        return PodNetwork(ips=())

    def teardown(self, req: PodNetworkRequest) -> None:
        return None

    def status(self) -> tuple[bool, str]:
        return False, "no pod network is configured: sandboxes get loopback only"

    def reconcile(self, live: dict[str, PodNetworkRequest]) -> list[str]:
        return []
