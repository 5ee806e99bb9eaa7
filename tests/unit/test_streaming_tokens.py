"""The streaming server's token table and HTTP head parser: pure logic, a fake clock."""

from __future__ import annotations

import json

import pytest

from cri.streaming import status
from cri.streaming.server import HttpError, negotiate, parse_head
from cri.streaming.tokens import EXEC, PORTFORWARD, StreamRequest, TokenTable, TokenTableFull


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_single_use():
    table = TokenTable()
    req = StreamRequest(EXEC, container_id="c1", cmd=("ls",), stdout=True)
    token = table.put(req)
    assert len(token) >= 32
    assert table.take(token) == req
    assert table.take(token) is None
    assert table.take("never-issued") is None


def test_tokens_are_distinct():
    table = TokenTable()
    tokens = {table.put(StreamRequest(EXEC, container_id="c")) for _ in range(100)}
    assert len(tokens) == 100


def test_a_token_expires_after_the_ttl():
    clock = Clock()
    table = TokenTable(ttl=60, clock=clock)
    early = table.put(StreamRequest(EXEC, container_id="a"))
    clock.now += 30
    late = table.put(StreamRequest(EXEC, container_id="b"))
    clock.now += 30  # `early` is 60 s old now
    assert table.take(early) is None
    assert table.take(late) == StreamRequest(EXEC, container_id="b")


def test_the_table_is_bounded_and_expiry_makes_room():
    clock = Clock()
    table = TokenTable(ttl=60, capacity=3, clock=clock)
    for _ in range(3):
        table.put(StreamRequest(PORTFORWARD, sandbox_id="s"))
    with pytest.raises(TokenTableFull) as err:
        table.put(StreamRequest(PORTFORWARD, sandbox_id="s"))
    assert err.value.capacity == 3
    clock.now += 61
    assert len(table) == 0
    table.put(StreamRequest(PORTFORWARD, sandbox_id="s"))


def test_taking_a_token_makes_room():
    table = TokenTable(capacity=1)
    token = table.put(StreamRequest(EXEC, container_id="a"))
    with pytest.raises(TokenTableFull):
        table.put(StreamRequest(EXEC, container_id="b"))
    table.take(token)
    table.put(StreamRequest(EXEC, container_id="b"))


def test_bad_settings_and_kinds_are_refused():
    with pytest.raises(ValueError):
        TokenTable(ttl=0)
    with pytest.raises(ValueError):
        TokenTable().put(StreamRequest("shell"))


def test_parse_head():
    req = parse_head(
        b"POST /exec/abc?command=ls&stdout=1 HTTP/1.1\r\n"
        b"Host: x\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
        b"X-Stream-Protocol-Version: v3.channel.k8s.io\r\nUpgrade: SPDY/3.1"
    )
    assert req.method == "POST" and req.path == "/exec/abc"
    assert req.query == {"command": ["ls"], "stdout": ["1"]}
    assert req.headers["x-stream-protocol-version"] == "v4.channel.k8s.io, v3.channel.k8s.io"
    assert req.headers["upgrade"] == "SPDY/3.1"


@pytest.mark.parametrize(
    "head",
    [
        b"garbage",
        b"GET /x",
        b"GET /x HTTP/9.9",
        b"G(T /x HTTP/1.1",
        b"GET http://host/x HTTP/1.1",
        b"GET /x HTTP/1.1\r\nno colon here",
        b"GET /x HTTP/1.1\r\n bad name: v",
    ],
)
def test_parse_head_refuses_garbage(head: bytes):
    with pytest.raises(HttpError) as err:
        parse_head(head)
    assert err.value.status == 400


def test_parse_head_limits_the_header_count():
    head = b"GET /x HTTP/1.1" + b"".join(b"\r\nh%d: v" % i for i in range(101))
    with pytest.raises(HttpError) as err:
        parse_head(head)
    assert err.value.status == 431


def test_negotiate_takes_the_clients_first_supported_protocol():
    sup = ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
    assert negotiate("v5.channel.k8s.io, v3.channel.k8s.io, v4.channel.k8s.io", sup) == (
        "v3.channel.k8s.io"
    )
    assert negotiate("", sup) == ""
    assert negotiate("v9.channel.k8s.io", sup) is None


def test_status_json_as_clients_parse_it():
    ok = json.loads(status.result("v4.channel.k8s.io", ["true"], 0))
    assert ok == {"metadata": {}, "status": "Success"}
    bad = json.loads(status.result("v5.channel.k8s.io", ["sh", "-c", "exit 3"], 3))
    assert bad["status"] == "Failure" and bad["reason"] == "NonZeroExitCode"
    assert bad["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert bad["message"].endswith("error executing command [sh -c exit 3], exit code 3")
    err = json.loads(status.result("v4.channel.k8s.io", [], None, "boom"))
    assert err["status"] == "Failure" and err["message"] == "boom"
    # before v4: text errors, nothing for success
    assert status.result("v3.channel.k8s.io", ["x"], 0) == b""
    assert b"exit code 2" in status.result("channel.k8s.io", ["x"], 2)
