"""The files every container of a pod sees: /etc/hosts, /etc/resolv.conf, /etc/hostname.

Pure functions of a PodSandboxConfig and the node's own files, so the rules
(which hostname, when the host's resolv.conf is copied, what a DNSConfig
becomes) are unit-tested without a kernel. The sandbox manager writes the
results into the sandbox's run dir; containers bind-mount them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cri.api import api_pb2
from cri.errors import InvalidArgument

HOST_NAME_MAX = 64  # the kernel's limit for sethostname(2)
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
# a search domain or resolver option: one word, no whitespace or comment characters
_DNS_WORD_RE = re.compile(r"^[^\s#;]+$")

_LOCALHOST_LINES = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)
# Debian's convention for a host name with no routable address of its own
_NO_IP_ADDRESS = "127.0.1.1"


@dataclass(frozen=True)
class PodFiles:
    """What the pod's hostname is, and the text of its three files."""

    hostname: str
    hosts: str
    resolv_conf: str
    hostname_file: str


def uses_host_network(config: api_pb2.PodSandboxConfig) -> bool:
    opts = config.linux.security_context.namespace_options
    return opts.network == api_pb2.NODE


def pod_hostname(config: api_pb2.PodSandboxConfig, node_hostname: str) -> str:
    """The config's hostname, or the node's when it has none (as containerd does)."""
    name = config.hostname or node_hostname
    if len(name) > HOST_NAME_MAX or not _HOSTNAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid hostname {name!r}: letters, digits, '-' and '.', "
            f"at most {HOST_NAME_MAX} characters",
            subject="hostname",
        )
    return name


def hosts_file(hostname: str, pod_ips: Sequence[str] = ()) -> str:
    """A pod's /etc/hosts: localhost names, and the hostname on each pod IP.

    With no pod IP yet (loopback-only networking) the hostname resolves to
    127.0.1.1, so programs that look up their own name still work.
    """
    names = hostname
    short = hostname.split(".", 1)[0]
    if short != hostname:
        names = f"{hostname}\t{short}"
    lines = ["# Pinnace-managed hosts file.\n", _LOCALHOST_LINES]
    for ip in pod_ips or (_NO_IP_ADDRESS,):
        lines.append(f"{ip}\t{names}\n")
    return "".join(lines)


def resolv_conf(dns: api_pb2.DNSConfig | None, host_resolv: str) -> str:
    """resolv.conf from a DNSConfig; the host's own when the config names nothing.

    kubelet sends servers, searches and options for ClusterFirst and None
    policies; for Default it sends none, and the pod gets the node's file.
    """
    if dns is None or not (dns.servers or dns.searches or dns.options):
        return host_resolv
    for server in dns.servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(
                f"DNS server {server!r} is not an IP address", subject="dns_config.servers"
            ) from None
    for field_, what, words in (
        ("searches", "search domain", dns.searches),
        ("options", "option", dns.options),
    ):
        for word in words:
            if not _DNS_WORD_RE.fullmatch(word):
                raise InvalidArgument(
                    f"DNS {what} {word!r} must be one word without whitespace, '#' or ';'",
                    subject=f"dns_config.{field_}",
                )
    out = []
    if dns.searches:
        out.append("search " + " ".join(dns.searches) + "\n")
    out.extend(f"nameserver {s}\n" for s in dns.servers)
    if dns.options:
        out.append("options " + " ".join(dns.options) + "\n")
    return "".join(out)


def pod_files(
    config: api_pb2.PodSandboxConfig,
    *,
    node_hostname: str,
    host_hosts: str,
    host_resolv: str,
    pod_ips: Sequence[str] = (),
) -> PodFiles:
    """All three files of a pod; a pod on the host network keeps the host's /etc/hosts."""
    hostname = pod_hostname(config, node_hostname)
    dns = config.dns_config if config.HasField("dns_config") else None
    hosts = host_hosts if uses_host_network(config) else hosts_file(hostname, pod_ips)
    return PodFiles(
        hostname=hostname,
        hosts=hosts,
        resolv_conf=resolv_conf(dns, host_resolv),
        hostname_file=hostname + "\n",
    )
