"""The nftables JSON Pinnace generates for its table: pure, no nft run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cri.network.driver import NetworkError, PortMapping
from cri.network.nft import (
    HOSTPORTS,
    TableRef,
    delete_commands,
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
    assert len(masq) == 1
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
