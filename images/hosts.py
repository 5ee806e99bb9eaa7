"""Where to fetch an image from, and with which credentials: the registry configuration.

In the spirit of containerd's hosts configuration, one YAML file (default
/etc/pinnace/registries.yaml) keyed by registry host as it appears in image
references:

    hosts:
      registry.k8s.io:
        mirrors:                        # tried in order, before the registry itself
          - http://127.0.0.1:5000       # a URL, or a mapping {url: ..., insecure: true}
      docker.io:
        mirrors: [https://mirror.example.com]
      registry.example.com:
        server: https://registry.example.com:8443   # where the registry really answers
        insecure: true                  # plain HTTP allowed (after HTTPS fails)
        auth:                           # username + password, or identity_token,
          username: alice               # or auth: base64("user:password")
          password: secret
      mirror.example.com:               # credentials for a mirror go under its own host
        auth: {identity_token: "..."}

Plain HTTP is a decision, not an accident: an http:// URL is accepted only for
loopback hosts or hosts configured `insecure`; anything else is a load error
naming the file and the key. A registry without a scheme is reached over HTTPS,
falling back to HTTP only where plain HTTP is allowed (docker's behaviour for
insecure registries). A missing default file means "no configuration"; a file
named explicitly must exist.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from images.reference import DEFAULT_DOMAIN

DEFAULT_CONFIG_PATH = Path("/etc/pinnace/registries.yaml")
DOCKER_HUB_SERVER = "https://registry-1.docker.io"

_HOST_KEYS = {"server", "mirrors", "insecure", "auth"}
_MIRROR_KEYS = {"url", "insecure"}
_AUTH_KEYS = {"username", "password", "identity_token", "auth"}


class RegistryConfigError(ValueError):
    """A registries.yaml that cannot be used; names the file and the key."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.key = key


@dataclass(frozen=True)
class Credentials:
    """Who we are to one registry host. An identity token is an OAuth2 refresh token
    (what `docker login` stores for some registries); it is exchanged for bearer tokens."""

    username: str | None = None
    password: str | None = None
    identity_token: str | None = None

    def __repr__(self) -> str:  # never print secrets in logs or tracebacks
        return f"Credentials(username={self.username!r}, secret=***)"


@dataclass(frozen=True)
class Mirror:
    url: str
    insecure: bool = False


@dataclass(frozen=True)
class HostConfig:
    """One `hosts:` entry."""

    host: str
    server: str | None = None
    mirrors: tuple[Mirror, ...] = ()
    insecure: bool = False
    credentials: Credentials | None = None


@dataclass(frozen=True)
class Endpoint:
    """One place to try for a registry: a mirror or the registry itself.

    `urls` are base URLs (scheme://host[:port]) in the order to try them: one,
    or https then http where plain HTTP is allowed and no scheme was given.
    """

    host: str
    urls: tuple[str, ...]
    mirror: bool
    credentials: Credentials | None = None


def is_loopback(host: str) -> bool:
    """Whether host[:port] names this machine (localhost, 127.0.0.0/8, ::1)."""
    hostname = _hostname(host)
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    """host[:port] or [v6]:port -> the bare lowercase host name or address."""
    host = host.lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") > 1:  # a bare IPv6 address
        return host
    return host.partition(":")[0]


@dataclass(frozen=True)
class RegistryConfig:
    hosts: Mapping[str, HostConfig] = field(default_factory=dict)
    source: str = "(built-in defaults)"

    def host(self, host: str) -> HostConfig | None:
        return self.hosts.get(host.lower())

    def credentials_for(self, host: str) -> Credentials | None:
        entry = self.host(host)
        return entry.credentials if entry is not None else None

    def plain_http_allowed(self, host: str) -> bool:
        entry = self.host(host)
        return is_loopback(host) or (entry is not None and entry.insecure)

    def endpoints(self, domain: str) -> list[Endpoint]:
        """Mirrors of `domain` first, in order, then the registry itself."""
        entry = self.host(domain)
        out: list[Endpoint] = []
        for mirror in entry.mirrors if entry is not None else ():
            out.append(self._endpoint(mirror.url, mirror=True, insecure=mirror.insecure))
        server = entry.server if entry is not None and entry.server else None
        if server is None and domain == DEFAULT_DOMAIN:
            server = DOCKER_HUB_SERVER
        if server is not None:
            insecure = entry.insecure if entry is not None else False
            upstream = self._endpoint(server, mirror=False, insecure=insecure)
            # Credentials configured for the name the user typed apply to its server too.
            if upstream.credentials is None and entry is not None and entry.credentials:
                upstream = Endpoint(upstream.host, upstream.urls, False, entry.credentials)
            out.append(upstream)
        else:
            out.append(self._endpoint(domain, mirror=False, insecure=False))
        return out

    def _endpoint(self, url_or_host: str, *, mirror: bool, insecure: bool) -> Endpoint:
        scheme, host = _split_url(url_or_host)
        plain = insecure or self.plain_http_allowed(host)
        if scheme is None:
            urls = (f"https://{host}", f"http://{host}") if plain else (f"https://{host}",)
        else:
            urls = (f"{scheme}://{host}",)
        return Endpoint(host=host, urls=urls, mirror=mirror, credentials=self.credentials_for(host))


def _split_url(url_or_host: str) -> tuple[str | None, str]:
    if "://" not in url_or_host:
        return None, url_or_host.lower()
    parts = urllib.parse.urlsplit(url_or_host)
    return parts.scheme, parts.netloc.lower()


def load_registry_config(path: Path | None = None) -> RegistryConfig:
    """Read the configuration; `None` means the default path, which may be absent."""
    explicit = path is not None
    path = path if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise RegistryConfigError(str(path), None, "no such file") from None
        return RegistryConfig()
    except OSError as e:
        raise RegistryConfigError(str(path), None, f"cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RegistryConfigError(str(path), None, f"not valid YAML: {e}") from None
    return parse_registry_config(data, source=str(path))


def parse_registry_config(data: Any, *, source: str = "(inline)") -> RegistryConfig:
    """Validate a parsed YAML document (None = empty) into a RegistryConfig."""
    if data is None:
        return RegistryConfig(source=source)
    if not isinstance(data, dict):
        raise RegistryConfigError(source, None, f"expected a mapping, got {_kind(data)}")
    _no_unknown_keys(source, "", data, {"version", "hosts"})
    version = data.get("version", 1)
    if version != 1:
        raise RegistryConfigError(source, "version", f"unsupported version {version!r} (only 1)")
    hosts_raw = data.get("hosts") or {}
    if not isinstance(hosts_raw, dict):
        raise RegistryConfigError(source, "hosts", f"expected a mapping, got {_kind(hosts_raw)}")
    hosts: dict[str, HostConfig] = {}
    for name, body in hosts_raw.items():
        key = f"hosts[{name!r}]"
        if not isinstance(name, str) or not name or "/" in name or "://" in name:
            raise RegistryConfigError(
                source, key, "a host must be host[:port] as in image references, without a scheme"
            )
        if name.lower() in hosts:
            raise RegistryConfigError(source, key, "listed twice (host names are case-insensitive)")
        hosts[name.lower()] = _host_config(source, key, name.lower(), body or {})
    config = RegistryConfig(hosts=hosts, source=source)
    _check_plain_http(config)
    return config


def _host_config(source: str, key: str, host: str, body: Any) -> HostConfig:
    if not isinstance(body, dict):
        raise RegistryConfigError(source, key, f"expected a mapping, got {_kind(body)}")
    _no_unknown_keys(source, key, body, _HOST_KEYS)
    server = body.get("server")
    if server is not None:
        server = _url(source, f"{key}.server", server)
    insecure = _bool(source, f"{key}.insecure", body.get("insecure", False))
    mirrors_raw = body.get("mirrors") or []
    if not isinstance(mirrors_raw, list):
        raise RegistryConfigError(source, f"{key}.mirrors", "expected a list of URLs")
    mirrors = []
    for i, item in enumerate(mirrors_raw):
        mkey = f"{key}.mirrors[{i}]"
        if isinstance(item, str):
            mirrors.append(Mirror(url=_url(source, mkey, item)))
        elif isinstance(item, dict):
            _no_unknown_keys(source, mkey, item, _MIRROR_KEYS)
            if "url" not in item:
                raise RegistryConfigError(source, f"{mkey}.url", "missing")
            mirrors.append(
                Mirror(
                    url=_url(source, f"{mkey}.url", item["url"]),
                    insecure=_bool(source, f"{mkey}.insecure", item.get("insecure", False)),
                )
            )
        else:
            raise RegistryConfigError(
                source, mkey, f"expected a URL or a mapping, got {_kind(item)}"
            )
    credentials = None
    if body.get("auth") is not None:
        credentials = _credentials(source, f"{key}.auth", body["auth"])
    return HostConfig(
        host=host,
        server=server,
        mirrors=tuple(mirrors),
        insecure=insecure,
        credentials=credentials,
    )


def _credentials(source: str, key: str, body: Any) -> Credentials:
    if not isinstance(body, dict):
        raise RegistryConfigError(source, key, f"expected a mapping, got {_kind(body)}")
    _no_unknown_keys(source, key, body, _AUTH_KEYS)
    for k, v in body.items():
        if not isinstance(v, str) or not v:
            raise RegistryConfigError(source, f"{key}.{k}", "expected a non-empty string")
    username, password = body.get("username"), body.get("password")
    if "auth" in body:
        if username is not None or password is not None:
            raise RegistryConfigError(
                source, f"{key}.auth", "give either auth or username/password, not both"
            )
        try:
            decoded = base64.b64decode(body["auth"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryConfigError(
                source, f"{key}.auth", "not base64 of user:password"
            ) from None
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise RegistryConfigError(source, f"{key}.auth", "not base64 of user:password")
    identity_token = body.get("identity_token")
    if (username is None) != (password is None):
        missing = "password" if password is None else "username"
        raise RegistryConfigError(source, f"{key}.{missing}", "missing (give both or neither)")
    if identity_token is not None and username is not None:
        raise RegistryConfigError(
            source, key, "give either identity_token or username/password, not both"
        )
    if identity_token is None and username is None:
        raise RegistryConfigError(source, key, "needs username and password, or identity_token")
    return Credentials(username=username, password=password, identity_token=identity_token)


def _check_plain_http(config: RegistryConfig) -> None:
    """http:// only towards loopback or hosts marked insecure: sending images and
    credentials in the clear must be a written-down choice."""
    for name, entry in config.hosts.items():
        key = f"hosts[{name!r}]"
        if entry.server is not None:
            scheme, host = _split_url(entry.server)
            if scheme == "http" and not (entry.insecure or config.plain_http_allowed(host)):
                raise RegistryConfigError(
                    config.source,
                    f"{key}.server",
                    f"plain HTTP to {host} is allowed only for loopback hosts or with "
                    "insecure: true",
                )
        for i, mirror in enumerate(entry.mirrors):
            scheme, host = _split_url(mirror.url)
            if scheme == "http" and not (mirror.insecure or config.plain_http_allowed(host)):
                raise RegistryConfigError(
                    config.source,
                    f"{key}.mirrors[{i}]",
                    f"plain HTTP to {host} is allowed only for loopback hosts, with insecure: "
                    f"true on the mirror, or under hosts[{host!r}]",
                )


def _url(source: str, key: str, value: Any) -> str:
    """A scheme://host[:port] URL, or a bare host[:port] (HTTPS, HTTP fallback if allowed)."""
    if not isinstance(value, str) or not value:
        raise RegistryConfigError(source, key, "expected a URL such as https://host:port")
    if "://" not in value:
        if "/" in value:
            raise RegistryConfigError(source, key, f"{value!r}: expected host[:port] or a URL")
        return value.lower()
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise RegistryConfigError(source, key, f"{value!r}: scheme must be http or https")
    if not parts.netloc or parts.username is not None:
        raise RegistryConfigError(
            source, key, f"{value!r}: expected scheme://host[:port] (credentials go under auth)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RegistryConfigError(
            source, key, f"{value!r}: a path is not supported, the client adds /v2/ itself"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _bool(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RegistryConfigError(source, key, f"expected true or false, got {value!r}")
    return value


def _no_unknown_keys(source: str, key: str, body: Mapping[Any, Any], allowed: set[str]) -> None:
    for k in body:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise RegistryConfigError(
                source, where, f"unknown key (expected one of: {', '.join(sorted(allowed))})"
            )


def _kind(value: Any) -> str:
    return type(value).__name__
