"""The pod's hosts, resolv.conf and hostname files, from configs alone."""

import pytest

from cri.api import api_pb2
from cri.errors import InvalidArgument
from cri.podfiles import hosts_file, pod_files, pod_hostname, resolv_conf

HOST_RESOLV = "nameserver 192.0.2.53\n"
HOST_HOSTS = "127.0.0.1 localhost\n192.0.2.7 node-1\n"


def config(hostname="web-0", network=api_pb2.POD, dns=None):
    cfg = api_pb2.PodSandboxConfig(hostname=hostname)
    cfg.linux.security_context.namespace_options.network = network
    if dns is not None:
        cfg.dns_config.CopyFrom(dns)
    return cfg


def files(cfg, **kw):
    return pod_files(
        cfg, node_hostname="node-1", host_hosts=HOST_HOSTS, host_resolv=HOST_RESOLV, **kw
    )


def test_cluster_dns_config_becomes_resolv_conf():
    dns = api_pb2.DNSConfig(
        servers=["10.96.0.10", "fd00::a"],
        searches=["ns.svc.cluster.local", "svc.cluster.local"],
        options=["ndots:5", "edns0"],
    )
    assert files(config(dns=dns)).resolv_conf == (
        "search ns.svc.cluster.local svc.cluster.local\n"
        "nameserver 10.96.0.10\n"
        "nameserver fd00::a\n"
        "options ndots:5 edns0\n"
    )


def test_resolv_conf_is_the_hosts_without_a_dns_config_or_with_an_empty_one():
    assert files(config()).resolv_conf == HOST_RESOLV
    assert files(config(dns=api_pb2.DNSConfig())).resolv_conf == HOST_RESOLV
    assert resolv_conf(None, "") == ""


def test_partial_dns_config():
    assert resolv_conf(api_pb2.DNSConfig(servers=["1.1.1.1"]), HOST_RESOLV) == (
        "nameserver 1.1.1.1\n"
    )
    assert resolv_conf(api_pb2.DNSConfig(options=["ndots:2"]), HOST_RESOLV) == ("options ndots:2\n")


@pytest.mark.parametrize(
    ("dns", "subject"),
    [
        (api_pb2.DNSConfig(servers=["dns.example"]), "dns_config.servers"),
        (api_pb2.DNSConfig(servers=["10.0.0.1\nnameserver 6.6.6.6"]), "dns_config.servers"),
        (api_pb2.DNSConfig(searches=["a b"]), "dns_config.searches"),
        (api_pb2.DNSConfig(options=["ndots:5\n"]), "dns_config.options"),
        (api_pb2.DNSConfig(searches=["x\noptions debug"]), "dns_config.searches"),
        (api_pb2.DNSConfig(options=["ndots:5 # x"]), "dns_config.options"),
    ],
)
def test_bad_dns_configs_are_invalid(dns, subject):
    with pytest.raises(InvalidArgument) as exc:
        resolv_conf(dns, HOST_RESOLV)
    assert exc.value.subject == subject


def test_pod_hosts_file_names_the_hostname():
    text = hosts_file("web-0")
    assert text.splitlines()[1:3] == [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    assert text.endswith("127.0.1.1\tweb-0\n")
    assert hosts_file("web-0", ["10.1.0.5", "fd00::5"]).endswith(
        "10.1.0.5\tweb-0\nfd00::5\tweb-0\n"
    )
    assert "127.0.1.1" not in hosts_file("web-0", ["10.1.0.5"])
    assert hosts_file("web-0.sub.ns").endswith("127.0.1.1\tweb-0.sub.ns\tweb-0\n")


def test_files_of_a_pod_network_pod():
    f = files(config())
    assert f.hostname == "web-0"
    assert f.hostname_file == "web-0\n"
    assert f.hosts == hosts_file("web-0")


def test_a_host_network_pod_keeps_the_nodes_hosts_file():
    f = files(config(hostname="", network=api_pb2.NODE))
    assert f.hosts == HOST_HOSTS
    assert f.hostname == "node-1"  # no hostname: the node's, as containerd does


def test_hostname_fallback_and_validation():
    assert pod_hostname(config(hostname=""), "node-1") == "node-1"
    assert pod_hostname(config(hostname="a" * 64), "n") == "a" * 64
    for bad in ("a" * 65, "-web", "web-", "we b", "web\n", "web_0", "wéb"):
        with pytest.raises(InvalidArgument, match="invalid hostname") as exc:
            pod_hostname(config(hostname=bad), "node-1")
        assert exc.value.subject == "hostname"
