"""The nftables JSON Pinnace generates for its table: pure, no nft run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cri.network.driver import NetworkError, PortMapping
from cri.network.nft import (
    HOSTPORTS,
    HostPort,
    TableRef,
    delete_commands,
    parse_pod_ports,
    parse_pod_rules,
    pod_rule_commands,
    script,
    table_commands,
    validate_mappings,
)

SID = "0123456789abcdef" * 4
T = TableRef("inet", "pinnace_t")


def _rule(cmd: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = cmd["add"]["rule"]
    return rule


def test_tcp_mapping_on_every_address() -> None:
    (cmd,) = pod_rule_commands(T, SID, "10.85.0.7", [PortMapping("tcp", 80, 8080)])
    rule = _rule(cmd)
    assert rule["family"] == "inet" and rule["table"] == "pinnace_t"
    assert rule["chain"] == HOSTPORTS and rule["comment"] == SID
    assert rule["expr"] == [
        {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                "right": 8080,
            }
        },
        {"dnat": {"family": "ip", "addr": "10.85.0.7", "port": 80}},
    ]


def test_udp_mapping_with_host_ip_in_an_ip_table() -> None:
    t = TableRef("ip", "p")
    (cmd,) = pod_rule_commands(t, SID, "10.85.0.7", [PortMapping("UDP", 53, 5353, "10.0.0.9")])
    assert _rule(cmd)["expr"] == [
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                "right": "10.0.0.9",
            }
        },
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "udp", "field": "dport"}},
                "right": 5353,
            }
        },
        {"dnat": {"addr": "10.85.0.7", "port": 53}},  # no family in an ip table
    ]


def test_unspecified_host_ip_means_every_address_and_port_zero_means_none() -> None:
    cmds = pod_rule_commands(
        T,
        SID,
        "10.85.0.7",
        [PortMapping("tcp", 80, 8080, "0.0.0.0"), PortMapping("tcp", 81, 0)],
    )
    assert len(cmds) == 1
    assert "daddr" not in json.dumps(cmds)


@pytest.mark.parametrize(
    ("m", "msg"),
    [
        (PortMapping("icmp", 80, 8080), "protocol 'icmp'"),
        (PortMapping("tcp", 80, 70000), "host port 70000 is out of range"),
        (PortMapping("tcp", 0, 8080), "container port 0 is out of range"),
        (PortMapping("tcp", 80, 8080, "nope"), "invalid host IP"),
        (PortMapping("tcp", 80, 8080, "::1"), "not IPv4"),
    ],
)
def test_bad_mappings_are_the_callers_error(m: PortMapping, msg: str) -> None:
    with pytest.raises(NetworkError, match=msg) as e:
        validate_mappings(SID, [m])
    assert e.value.invalid and e.value.sandbox_id == SID


def test_table_commands_static_rules() -> None:
    cmds = table_commands(T, "10.85.0.0/16")
    text = script(cmds)
    assert json.loads(text) == {"nftables": cmds}
    chains = {
        c["add"]["chain"]["name"]: c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})
    }
    assert chains["prerouting"]["hook"] == "prerouting" and chains["prerouting"]["type"] == "nat"
    assert chains["output"]["hook"] == "output"
    assert chains["postrouting"]["prio"] == 100
    assert "hook" not in chains[HOSTPORTS]
    # the per-pod chain is never flushed, the static ones always are (re-running is safe)
    flushed = {c["flush"]["chain"]["name"] for c in cmds if "flush" in c}
    assert flushed == {"prerouting", "output", "postrouting"}
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    masq = [r for r in rules if r["chain"] == "postrouting"]
    assert len(masq) == 2  # egress, hairpin
    assert masq[0]["expr"] == [
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": {"prefix": {"addr": "10.85.0.0", "len": 16}},
            }
        },
        {
            "match": {
                "op": "!=",
                "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                "right": {"prefix": {"addr": "10.85.0.0", "len": 16}},
            }
        },
        {"masquerade": None},
    ]
    # hairpin: a pod reaching a pod through a host port is masqueraded too
    assert masq[1]["expr"] == [
        {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": {"prefix": {"addr": "10.85.0.0", "len": 16}},
            }
        },
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                "right": {"prefix": {"addr": "10.85.0.0", "len": 16}},
            }
        },
        {"masquerade": None},
    ]
    for chain in ("prerouting", "output"):
        (r,) = [r for r in rules if r["chain"] == chain]
        assert r["expr"][0]["match"]["left"] == {"fib": {"result": "type", "flags": ["daddr"]}}
        assert r["expr"][1] == {"jump": {"target": HOSTPORTS}}


def test_bad_table() -> None:
    with pytest.raises(NetworkError, match="family"):
        TableRef("bridge", "x")
    with pytest.raises(NetworkError, match="table name"):
        TableRef("inet", "a b")
    with pytest.raises(NetworkError, match="not IPv4"):
        table_commands(T, "fd00::/64")
    with pytest.raises(NetworkError, match="not IPv6"):
        table_commands(T, "10.85.0.0/16", "10.86.0.0/16")
    with pytest.raises(NetworkError, match="needs an inet table"):
        table_commands(TableRef("ip", "p"), "10.85.0.0/16", "fd85::/64")


def test_parse_and_delete_by_handle() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "inet", "table": "t", "name": HOSTPORTS, "handle": 2}},
            {"rule": {"chain": HOSTPORTS, "handle": 6, "comment": "aaa", "expr": []}},
            {"rule": {"chain": HOSTPORTS, "handle": 7, "comment": "bbb", "expr": []}},
            {"rule": {"chain": HOSTPORTS, "handle": 9, "comment": "aaa", "expr": []}},
            {"rule": {"chain": HOSTPORTS, "handle": 10, "expr": []}},  # not ours to parse
        ]
    }
    assert parse_pod_rules(listing) == {"aaa": [6, 9], "bbb": [7]}
    assert delete_commands(T, [6, 9]) == [
        {
            "delete": {
                "rule": {"family": "inet", "table": "pinnace_t", "chain": HOSTPORTS, "handle": h}
            }
        }
        for h in (6, 9)
    ]


def test_dual_stack_table_masquerades_both_families() -> None:
    cmds = table_commands(T, "10.85.0.0/16", "fd85::/64")
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    masq = [r for r in rules if r["chain"] == "postrouting"]
    assert len(masq) == 4
    v6 = [r for r in masq if "fd85::" in json.dumps(r)]
    assert len(v6) == 2
    assert v6[0]["expr"][0] == {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
            "right": {"prefix": {"addr": "fd85::", "len": 64}},
        }
    }
    assert v6[1]["expr"][0]["match"]["left"] == {"ct": {"key": "status"}}
    assert all(r["expr"][-1] == {"masquerade": None} for r in masq)


def test_dual_stack_mappings() -> None:
    ip4, ip6 = "10.85.0.7", "fd85::7"
    # every address: one rule per family
    cmds = pod_rule_commands(T, SID, ip4, [PortMapping("tcp", 80, 8080)], ip6)
    assert [_rule(c)["expr"][0]["match"]["right"] for c in cmds] == ["ipv4", "ipv6"]
    assert [_rule(c)["expr"][-1]["dnat"] for c in cmds] == [
        {"family": "ip", "addr": ip4, "port": 80},
        {"family": "ip6", "addr": ip6, "port": 80},
    ]
    # an IPv6 host IP: only the IPv6 rule, matching that address; "::" is every address
    (cmd,) = pod_rule_commands(T, SID, ip4, [PortMapping("udp", 53, 5353, "fd00::9")], ip6)
    assert _rule(cmd)["expr"][0] == {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
            "right": "fd00::9",
        }
    }
    assert _rule(cmd)["expr"][-1]["dnat"] == {"family": "ip6", "addr": ip6, "port": 53}
    assert len(pod_rule_commands(T, SID, ip4, [PortMapping("tcp", 1, 2, "::")], ip6)) == 2
    # an IPv4 host IP: only the IPv4 rule
    (cmd,) = pod_rule_commands(T, SID, ip4, [PortMapping("tcp", 1, 2, "10.0.0.1")], ip6)
    assert _rule(cmd)["expr"][-1]["dnat"]["family"] == "ip"
    # an IPv6 host IP for a pod without an IPv6 address
    with pytest.raises(NetworkError, match="not IPv4"):
        pod_rule_commands(T, SID, ip4, [PortMapping("tcp", 1, 2, "fd00::9")])


def test_host_port_overlaps() -> None:
    any_ = HostPort("tcp", "", 80)
    assert any_.overlaps(HostPort("tcp", "10.0.0.1", 80))
    assert HostPort("tcp", "fd00::1", 80).overlaps(any_)
    assert HostPort("tcp", "10.0.0.1", 80).overlaps(HostPort("tcp", "10.0.0.1", 80))
    assert not HostPort("tcp", "10.0.0.1", 80).overlaps(HostPort("tcp", "10.0.0.2", 80))
    assert not any_.overlaps(HostPort("udp", "", 80))
    assert not any_.overlaps(HostPort("tcp", "", 81))
    assert str(any_) == "tcp port 80 on every address"


def test_one_pod_cannot_claim_a_host_port_twice() -> None:
    with pytest.raises(NetworkError, match="two port mappings claim host tcp port 80") as e:
        validate_mappings(SID, [PortMapping("tcp", 1, 80), PortMapping("TCP", 2, 80, "10.0.0.1")])
    assert e.value.invalid
    ok = validate_mappings(SID, [PortMapping("tcp", 1, 80), PortMapping("udp", 1, 80)])
    assert len(ok) == 2


def test_parse_ports_from_generated_rules() -> None:
    """What nft lists back has the expressions we gave it, plus handles."""
    maps = [
        PortMapping("tcp", 80, 8080),
        PortMapping("udp", 53, 5353, "10.0.0.9"),
        PortMapping("tcp", 81, 8081, "fd00::9"),
    ]
    rules = [
        {**_rule(c), "handle": h}
        for h, c in enumerate(pod_rule_commands(T, SID, "10.85.0.7", maps, "fd85::7"))
    ]
    other = {"chain": HOSTPORTS, "handle": 99, "comment": "bbb", "expr": rules[0]["expr"]}
    listing = {"nftables": [{"metainfo": {}}, *({"rule": r} for r in rules), {"rule": other}]}
    assert parse_pod_ports(listing) == {
        SID: {
            HostPort("tcp", "", 8080),
            HostPort("udp", "10.0.0.9", 5353),
            HostPort("tcp", "fd00::9", 8081),
        },
        "bbb": {HostPort("tcp", "", 8080)},
    }
