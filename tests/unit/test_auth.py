"""Registry auth: WWW-Authenticate parsing, token fetching and caching, basic auth.

HTTP is a recording fake here; tests/integration/test_registry_pull.py runs the
same code against docker-registry with htpasswd and with token auth.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse

import pytest

from images.auth import (
    Authorizer,
    Challenge,
    Reply,
    TokenError,
    UnsupportedChallengeError,
    parse_challenges,
    repository_scope,
)
from images.hosts import Credentials

REALM = "https://auth.example.com/token"
BEARER = f'Bearer realm="{REALM}",service="registry.example.com"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/busybox:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/busybox:pull",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        ("basic realm=simple", [Challenge("basic", {"realm": "simple"})]),
        (
            'Bearer realm="r", error="insufficient_scope", scope="a:b:pull push"',
            [
                Challenge(
                    "bearer",
                    {"realm": "r", "error": "insufficient_scope", "scope": "a:b:pull push"},
                )
            ],
        ),
        (
            'Basic realm="a, b", Bearer realm="x",service="y"',
            [Challenge("basic", {"realm": "a, b"}), Challenge("bearer", {"realm": "x", "service": "y"})],
        ),
        (r'Bearer realm="quo\"ted"', [Challenge("bearer", {"realm": 'quo"ted'})]),
        ("Negotiate", [Challenge("negotiate", {})]),
        ("", []),
    ],
)  # fmt: skip
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


def test_challenge_properties() -> None:
    [c] = parse_challenges('Bearer realm="r",service="s",scope="a b",error="invalid_token"')
    assert (c.realm, c.service, c.scopes, c.error) == ("r", "s", ("a", "b"), "invalid_token")
    assert repository_scope("library/busybox") == "repository:library/busybox:pull"


class FakeTokenServer:
    """Records token requests and answers them with numbered tokens."""

    def __init__(self, status: int = 200, body: dict | bytes | None = None) -> None:
        self.calls: list[tuple[str, str, dict, bytes | None]] = []
        self.status = status
        self.body = body
        self.lock = threading.Lock()

    def __call__(self, method, url, headers, body):
        with self.lock:
            self.calls.append((method, url, dict(headers), body))
            n = len(self.calls)
        if isinstance(self.body, bytes):
            return Reply(self.status, {}, self.body)
        payload = self.body if self.body is not None else {"token": f"t{n}", "expires_in": 300}
        return Reply(
            self.status, {"content-type": "application/json"}, json.dumps(payload).encode()
        )

    def query(self, i: int = -1) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.calls[i][1]).query)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def authorizer(fetch, creds: Credentials | None = None, clock=None) -> Authorizer:
    return Authorizer(lambda host: creds, fetch, clock=clock or Clock())


def test_anonymous_before_any_challenge() -> None:
    server = FakeTokenServer()
    auth = authorizer(server)
    assert auth.authorization("registry.example.com", ["repository:a:pull"]) is None
    assert server.calls == []


def test_anonymous_bearer_token() -> None:
    server = FakeTokenServer()
    auth = authorizer(server)
    scope = repository_scope("library/busybox")
    header = auth.challenged("registry.example.com", BEARER, [scope])
    assert header == "Bearer t1"
    [(method, url, headers, body)] = server.calls
    assert method == "GET" and body is None
    assert url.startswith(REALM + "?")
    assert server.query() == {"service": ["registry.example.com"], "scope": [scope]}
    assert "Authorization" not in headers


def test_token_with_basic_credentials_and_access_token_field() -> None:
    server = FakeTokenServer(body={"access_token": "at-1", "expires_in": 120})
    auth = authorizer(server, Credentials("alice", "pw"))
    assert auth.challenged("h", BEARER, ["repository:a:pull"]) == "Bearer at-1"
    _, _, headers, _ = server.calls[0]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"alice:pw").decode()
    assert server.query()["account"] == ["alice"]


def test_tokens_are_cached_per_scope_and_refreshed_before_expiry() -> None:
    server = FakeTokenServer()
    clock = Clock()
    auth = authorizer(server, clock=clock)
    auth.remember("h", BEARER)  # the ping's 401: no token fetched yet
    assert server.calls == []
    a, b = ["repository:a:pull"], ["repository:b:pull"]
    assert auth.authorization("h", a) == "Bearer t1"
    assert auth.authorization("h", a) == "Bearer t1"  # cached
    assert auth.authorization("h", b) == "Bearer t2"  # another scope, another token
    assert auth.authorization("h", a) == "Bearer t1"
    assert len(server.calls) == 2
    clock.now += 300 - 5  # within the slack before expiry: refresh
    assert auth.authorization("h", a) == "Bearer t3"


def test_challenge_scope_is_merged_and_a_refused_token_is_dropped() -> None:
    server = FakeTokenServer()
    auth = authorizer(server)
    ours = ["repository:a:pull"]
    auth.remember("h", BEARER)
    assert auth.authorization("h", ours) == "Bearer t1"
    # the registry refuses t1 and asks for an extra scope: a new token covers both
    header = BEARER + ',scope="repository:a:pull,push",error="insufficient_scope"'
    assert auth.challenged("h", header, ours) == "Bearer t2"
    assert sorted(server.query()["scope"]) == ["repository:a:pull", "repository:a:pull,push"]
    # the same challenge again (token still refused): not served from the cache
    assert auth.challenged("h", header, ours) == "Bearer t3"


def test_expires_in_defaults_to_60_seconds() -> None:
    server = FakeTokenServer(body={"token": "x"})
    clock = Clock()
    auth = authorizer(server, clock=clock)
    auth.remember("h", BEARER)
    auth.authorization("h", ["s"])
    clock.now += 45
    auth.authorization("h", ["s"])
    assert len(server.calls) == 1
    clock.now += 10  # 55 s: within 10 s of the default 60
    auth.authorization("h", ["s"])
    assert len(server.calls) == 2


def test_identity_token_uses_the_oauth_refresh_grant() -> None:
    server = FakeTokenServer(body={"access_token": "fresh", "expires_in": 600})
    auth = authorizer(server, Credentials(identity_token="refresh-me"))
    assert auth.challenged("h", BEARER, ["repository:a:pull"]) == "Bearer fresh"
    method, url, headers, body = server.calls[0]
    assert (method, url) == ("POST", REALM)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert body is not None
    form = urllib.parse.parse_qs(body.decode())
    assert form == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["refresh-me"],
        "client_id": ["pinnace"],
        "service": ["registry.example.com"],
        "scope": ["repository:a:pull"],
    }


def test_basic_challenge() -> None:
    server = FakeTokenServer()
    auth = authorizer(server, Credentials("bob", "pw:with:colons"))
    header = auth.challenged("h", 'Basic realm="reg"', ["repository:a:pull"])
    assert base64.b64decode(header.removeprefix("Basic ")) == b"bob:pw:with:colons"
    assert auth.authorization("h", ["repository:b:pull"]) == header  # remembered per host
    assert server.calls == []


def test_basic_challenge_without_credentials_says_so() -> None:
    auth = authorizer(FakeTokenServer())
    with pytest.raises(UnsupportedChallengeError, match="none is configured"):
        auth.challenged("reg.example.com:5000", 'Basic realm="x"')


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Negotiate abc", "unsupported challenge"),
        ('Bearer service="x"', "without a realm"),
    ],
)
def test_unusable_challenges(header: str, message: str) -> None:
    with pytest.raises(UnsupportedChallengeError, match=message):
        authorizer(FakeTokenServer()).challenged("h", header)


@pytest.mark.parametrize(
    ("server", "creds", "message"),
    [
        (FakeTokenServer(401, b'{"details":"incorrect username or password"}'),
         Credentials("alice", "bad"), "refused user 'alice': incorrect username or password"),
        (FakeTokenServer(401, b"no"), None, "refused an anonymous request"),
        (FakeTokenServer(500, b"boom"), None, "(HTTP 500) for h: boom"),
        (FakeTokenServer(200, b"<html>"), None, "not JSON"),
        (FakeTokenServer(200, {"nothing": 1}), None, "neither token nor access_token"),
    ],
)  # fmt: skip
def test_token_server_errors_name_realm_and_host(server, creds, message) -> None:
    auth = authorizer(server, creds)
    with pytest.raises(TokenError) as err:
        auth.challenged("h", BEARER, ["repository:a:pull"])
    assert message in str(err.value)
    assert err.value.realm == REALM and err.value.host == "h"


def test_credentials_are_not_sent_to_a_plain_http_realm_elsewhere() -> None:
    server = FakeTokenServer()
    auth = authorizer(server, Credentials("alice", "pw"))
    with pytest.raises(TokenError, match="plain-HTTP token server"):
        auth.challenged("h", 'Bearer realm="http://auth.example.com/token"')
    assert server.calls == []
    # on loopback it is fine (the tests' token server)
    assert auth.challenged("h", 'Bearer realm="http://127.0.0.1:9/token"').startswith("Bearer ")


def test_concurrent_requests_fetch_one_token() -> None:
    release = threading.Event()

    class Slow(FakeTokenServer):
        def __call__(self, *args):
            release.wait(5)
            return super().__call__(*args)

    server = Slow()
    auth = Authorizer(lambda host: None, server, clock=time.monotonic)
    auth.remember("h", BEARER)
    results: list[str | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(auth.authorization("h", ["s"])))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    release.set()
    for t in threads:
        t.join(10)
    assert results == ["Bearer t1"] * 8
    assert len(server.calls) == 1
