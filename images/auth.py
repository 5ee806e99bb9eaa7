"""Registry authentication: anonymous, basic, and bearer tokens (docker token spec).

A registry says how to authenticate only when it refuses: a 401 carries
`WWW-Authenticate: Bearer realm="https://auth/token",service="reg",scope="repository:x:pull"`
or `Basic realm="..."`. The client then asks the realm (the token server) for a
token covering the scope, with the host's credentials as HTTP basic auth (or
an identity token exchanged with an OAuth2 refresh-token grant), or with none
for anonymous pulls, and repeats the request with `Authorization: Bearer ...`.

Challenges are remembered per registry host so later requests (other
repositories, other layers) get a token before their first attempt instead of
after a 401. Tokens are cached per (realm, service, scope) until shortly
before they expire. All of this is safe to call from several threads.

HTTP is not done here: the registry client passes a `Fetch` function, so the
same connection policy (timeouts, no proxies, plain-HTTP rules) applies to
token servers, and this module is tested without a network.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from images.hosts import Credentials, is_loopback

# Tokens are refreshed this long before they expire, so one fetched just before
# a long layer download does not expire while the request is being sent.
EXPIRY_SLACK = 10.0
# Token spec: "expires_in ... When omitted, this defaults to 60 seconds".
DEFAULT_TOKEN_LIFETIME = 60
CLIENT_ID = "pinnace"
MAX_TOKEN_RESPONSE = 1 << 20


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: bytes


# method, url, headers, body -> reply. Raises on transport failure.
Fetch = Callable[[str, str, Mapping[str, str], bytes | None], Reply]


class TokenError(Exception):
    """The token server refused or answered nonsense; names the realm and the host."""

    def __init__(self, host: str, realm: str, message: str, status: int | None = None) -> None:
        where = f"token server {realm}" + (f" (HTTP {status})" if status is not None else "")
        super().__init__(f"{where} for {host}: {message}")
        self.host = host
        self.realm = realm
        self.status = status


class UnsupportedChallengeError(Exception):
    """A 401 whose challenge this client cannot answer (no credentials for Basic,
    an unknown scheme, a bearer challenge without a realm)."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic"
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.params.get("scope", "").split())

    @property
    def error(self) -> str | None:
        """Set on a 401 for a token that was sent: invalid_token, insufficient_scope."""
        return self.params.get("error")


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
_BARE_VALUE_RE = re.compile(r"[^,\s]*")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate value (RFC 7235: challenges separated by commas,
    each a scheme followed by name=value or name="quoted" parameters)."""
    out: list[Challenge] = []
    scheme: str | None = None
    params: dict[str, str] = {}
    pos, n = 0, len(header)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < n and header[pos] in chars:
            pos += 1

    while True:
        skip(" \t,")
        if pos >= n:
            break
        m = _TOKEN_RE.match(header, pos)
        if m is None:  # garbage: skip to the next comma
            comma = header.find(",", pos)
            pos = n if comma < 0 else comma + 1
            continue
        word, after = m.group(0), m.end()
        look = after
        while look < n and header[look] in " \t":
            look += 1
        if look < n and header[look] == "=" and scheme is not None:
            pos = look + 1
            skip(" \t")
            q = _QUOTED_RE.match(header, pos)
            if q is not None:
                value = re.sub(r"\\(.)", r"\1", q.group(1))
                pos = q.end()
            else:
                v = _BARE_VALUE_RE.match(header, pos)
                assert v is not None
                value, pos = v.group(0), v.end()
            params[word.lower()] = value
            continue
        # A new challenge: flush the previous one.
        if scheme is not None:
            out.append(Challenge(scheme, params))
        scheme, params, pos = word.lower(), {}, after
    if scheme is not None:
        out.append(Challenge(scheme, params))
    return out


def repository_scope(path: str, actions: str = "pull") -> str:
    """The scope a pull of `path` needs: repository:library/busybox:pull."""
    return f"repository:{path}:{actions}"


@dataclass
class _Token:
    value: str
    expires: float


class Authorizer:
    """Answers registry challenges and keeps tokens, per registry host."""

    def __init__(
        self,
        credentials_for: Callable[[str], Credentials | None],
        fetch: Fetch,
        *,
        plain_http_allowed: Callable[[str], bool] = is_loopback,
        clock: Callable[[], float] = time.monotonic,
        client_id: str = CLIENT_ID,
    ) -> None:
        self._credentials_for = credentials_for
        self._fetch = fetch
        self._plain_http_allowed = plain_http_allowed
        self._clock = clock
        self._client_id = client_id
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        # One lock per token key: two threads needing the same token fetch it once.
        self._key_locks: dict[tuple[str, str, tuple[str, ...]], threading.Lock] = {}

    def remember(self, host: str, header: str) -> None:
        """Record a challenge seen without acting on it (the /v2/ ping's 401)."""
        challenge = _pick(parse_challenges(header))
        if challenge is not None:
            with self._lock:
                self._challenges[host] = challenge

    def authorization(self, host: str, scopes: Sequence[str] = ()) -> str | None:
        """The Authorization header for a request to `host`, or None (anonymous)
        when the host has not asked for authentication yet."""
        with self._lock:
            challenge = self._challenges.get(host)
        if challenge is None:
            return None
        return self._answer(host, challenge, scopes)

    def challenged(self, host: str, header: str, scopes: Sequence[str] = ()) -> str:
        """A request to `host` got 401 with `header`: record the challenge, drop the
        token that was refused, and return the Authorization to retry with.
        Raises UnsupportedChallengeError or TokenError when there is none."""
        challenge = _pick(parse_challenges(header))
        if challenge is None:
            raise UnsupportedChallengeError(
                host, f"authentication required, unsupported challenge {header!r}"
            )
        with self._lock:
            self._challenges[host] = challenge
            if challenge.scheme == "bearer":
                self._tokens.pop(self._key(challenge, scopes), None)
        return self._answer(host, challenge, scopes)

    def _answer(self, host: str, challenge: Challenge, scopes: Sequence[str]) -> str:
        credentials = self._credentials_for(host)
        if challenge.scheme == "basic":
            if credentials is None or credentials.username is None:
                raise UnsupportedChallengeError(
                    host, "the registry wants a username and password and none is configured"
                )
            raw = f"{credentials.username}:{credentials.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        key = self._key(challenge, scopes)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                token = self._tokens.get(key)
            if token is None or token.expires - EXPIRY_SLACK <= self._clock():
                token = self._fetch_token(host, challenge, key[2], credentials)
                with self._lock:
                    self._tokens[key] = token
        return f"Bearer {token.value}"

    @staticmethod
    def _key(challenge: Challenge, scopes: Sequence[str]) -> tuple[str, str, tuple[str, ...]]:
        merged = tuple(sorted({*challenge.scopes, *scopes}))
        return (challenge.realm or "", challenge.service or "", merged)

    def _fetch_token(
        self,
        host: str,
        challenge: Challenge,
        scopes: tuple[str, ...],
        credentials: Credentials | None,
    ) -> _Token:
        realm = challenge.realm
        if not realm:
            raise UnsupportedChallengeError(host, "bearer challenge without a realm")
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TokenError(host, realm, "realm is not an http(s) URL")
        if parts.scheme == "http" and not self._plain_http_allowed(parts.netloc):
            raise TokenError(
                host,
                realm,
                "refusing to send credentials to a plain-HTTP token server that is not "
                "on loopback nor configured insecure",
            )
        service = challenge.service
        started = self._clock()
        headers: dict[str, str] = {"Accept": "application/json"}
        if credentials is not None and credentials.identity_token is not None:
            # OAuth2 refresh-token grant (docker token spec, "oauth").
            form: list[tuple[str, str]] = [
                ("grant_type", "refresh_token"),
                ("refresh_token", credentials.identity_token),
                ("client_id", self._client_id),
            ]
            if service:
                form.append(("service", service))
            if scopes:
                form.append(("scope", " ".join(scopes)))
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            reply = self._fetch("POST", realm, headers, body)
        else:
            query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if service:
                query.append(("service", service))
            query += [("scope", s) for s in scopes]
            if credentials is not None and credentials.username is not None:
                query.append(("account", credentials.username))
                raw = f"{credentials.username}:{credentials.password or ''}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
            url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
            reply = self._fetch("GET", url, headers, None)
        return self._parse_token(host, realm, reply, started, credentials)

    def _parse_token(
        self,
        host: str,
        realm: str,
        reply: Reply,
        started: float,
        credentials: Credentials | None,
    ) -> _Token:
        if reply.status in (401, 403):
            who = (
                f"user {credentials.username!r}"
                if credentials is not None and credentials.username
                else "the identity token"
                if credentials is not None
                else "an anonymous request (no credentials configured)"
            )
            raise TokenError(host, realm, f"refused {who}: {_snippet(reply.body)}", reply.status)
        if reply.status != 200:
            raise TokenError(host, realm, _snippet(reply.body) or "no token", reply.status)
        if len(reply.body) > MAX_TOKEN_RESPONSE:
            raise TokenError(host, realm, "token response is too large")
        try:
            obj = json.loads(reply.body)
        except ValueError:
            raise TokenError(host, realm, "token response is not JSON") from None
        if not isinstance(obj, dict):
            raise TokenError(host, realm, "token response is not a JSON object")
        value = obj.get("token") or obj.get("access_token")
        if not isinstance(value, str) or not value:
            raise TokenError(host, realm, "token response has neither token nor access_token")
        lifetime = obj.get("expires_in", DEFAULT_TOKEN_LIFETIME)
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        # Counted from when we asked, by our own clock: issued_at is the server's clock.
        return _Token(value=value, expires=started + lifetime)


def _pick(challenges: list[Challenge]) -> Challenge | None:
    """Bearer if offered (it scopes the credentials), else Basic."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def _snippet(body: bytes) -> str:
    text = body.decode(errors="replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(obj, dict):
        for key in ("details", "detail", "message", "error_description", "error"):
            if isinstance(obj.get(key), str):
                return str(obj[key])[:300]
        errors = obj.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message") or errors[0].get("code"))[:300]
    return text[:300]
