"""Registry configuration: parsing, errors naming file and key, mirror selection."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from images.hosts import (
    DEFAULT_CONFIG_PATH,
    Credentials,
    Endpoint,
    RegistryConfig,
    RegistryConfigError,
    is_loopback,
    load_registry_config,
    parse_registry_config,
)

AUTH = base64.b64encode(b"alice:s3cr:et").decode()
EXAMPLE = f"""
hosts:
  registry.k8s.io:
    mirrors:
      - http://127.0.0.1:5000
      - url: https://mirror.example.com
  docker.io:
    mirrors: [mirror.example.com]
    auth: {{username: hub-user, password: hub-pass}}
  mirror.example.com:
    auth: {{identity_token: tok-123}}
  Registry.Example.COM:
    server: https://registry.example.com:8443
    insecure: true
    auth: {{auth: {AUTH}}}
  10.0.0.9:5000:
    insecure: true
"""


def test_example_config(scratch_dir: Path) -> None:
    path = scratch_dir / "registries.yaml"
    path.write_text(EXAMPLE)
    config = load_registry_config(path)
    assert config.source == str(path)
    assert set(config.hosts) == {
        "registry.k8s.io",
        "docker.io",
        "mirror.example.com",
        "registry.example.com",
        "10.0.0.9:5000",
    }

    # mirrors first, in order, then the registry itself over HTTPS only
    assert config.endpoints("registry.k8s.io") == [
        Endpoint("127.0.0.1:5000", ("http://127.0.0.1:5000",), True, None),
        Endpoint(
            "mirror.example.com",
            ("https://mirror.example.com",),
            True,
            Credentials(identity_token="tok-123"),
        ),
        Endpoint("registry.k8s.io", ("https://registry.k8s.io",), False, None),
    ]

    # docker.io is served by registry-1.docker.io; its credentials follow it
    hub = config.endpoints("docker.io")
    assert [e.urls for e in hub] == [
        ("https://mirror.example.com",),
        ("https://registry-1.docker.io",),
    ]
    assert hub[1].credentials == Credentials("hub-user", "hub-pass")
    assert hub[0].credentials == Credentials(identity_token="tok-123")

    # host names are case-insensitive; `auth:` is base64 user:password (':' in the password)
    assert config.credentials_for("registry.example.com") == Credentials("alice", "s3cr:et")
    [ep] = config.endpoints("registry.example.com")
    assert ep.urls == ("https://registry.example.com:8443",)

    # insecure hosts and loopback may fall back to plain HTTP, others may not
    assert config.endpoints("10.0.0.9:5000")[0].urls == (
        "https://10.0.0.9:5000",
        "http://10.0.0.9:5000",
    )
    assert config.endpoints("localhost:5000")[0].urls == (
        "https://localhost:5000",
        "http://localhost:5000",
    )
    assert config.endpoints("quay.io")[0].urls == ("https://quay.io",)
    assert config.endpoints("quay.io")[0].mirror is False


def test_credentials_never_printed() -> None:
    creds = Credentials("bob", "hunter2")
    assert "hunter2" not in repr(creds)
    assert "hunter2" not in repr(RegistryConfig({"x": parse_host_with(creds)}))


def parse_host_with(creds: Credentials):
    config = parse_registry_config(
        {"hosts": {"x": {"auth": {"username": creds.username, "password": creds.password}}}}
    )
    return config.hosts["x"]


def test_default_path_may_be_absent_but_a_named_file_must_exist(scratch_dir: Path) -> None:
    assert str(DEFAULT_CONFIG_PATH) == "/etc/pinnace/registries.yaml"
    if not DEFAULT_CONFIG_PATH.exists():
        assert load_registry_config().hosts == {}
    with pytest.raises(RegistryConfigError, match="no such file") as err:
        load_registry_config(scratch_dir / "missing.yaml")
    assert err.value.source == str(scratch_dir / "missing.yaml")


def test_empty_file_is_no_configuration(scratch_dir: Path) -> None:
    path = scratch_dir / "r.yaml"
    path.write_text("# nothing yet\n")
    config = load_registry_config(path)
    assert config.hosts == {}
    assert config.endpoints("docker.io")[0].urls == ("https://registry-1.docker.io",)


def test_yaml_syntax_error_names_the_file(scratch_dir: Path) -> None:
    path = scratch_dir / "r.yaml"
    path.write_text("hosts: [unclosed\n")
    with pytest.raises(RegistryConfigError) as err:
        load_registry_config(path)
    assert str(err.value).startswith(f"{path}: not valid YAML")


@pytest.mark.parametrize(
    ("doc", "key", "message"),
    [
        ("[1, 2]", None, "expected a mapping"),
        ("mirrors: {}", "mirrors", "unknown key"),
        ("version: 2", "version", "unsupported version"),
        ("hosts: [a]", "hosts", "expected a mapping"),
        ("hosts: {'https://x.io': {}}", "hosts['https://x.io']", "without a scheme"),
        ("hosts: {x.io: {mirror: []}}", "hosts['x.io'].mirror", "unknown key"),
        ("hosts: {x.io: {insecure: yes please}}", "hosts['x.io'].insecure", "true or false"),
        ("hosts: {x.io: {mirrors: http://a}}", "hosts['x.io'].mirrors", "list"),
        ("hosts: {x.io: {mirrors: [ftp://a]}}", "hosts['x.io'].mirrors[0]", "http or https"),
        ("hosts: {x.io: {mirrors: [3]}}", "hosts['x.io'].mirrors[0]", "expected a URL"),
        ("hosts: {x.io: {mirrors: [{insecure: true}]}}", "hosts['x.io'].mirrors[0].url", "missing"),
        ("hosts: {x.io: {mirrors: ['https://m/v2/']}}", "hosts['x.io'].mirrors[0]", "a path"),
        ("hosts: {x.io: {mirrors: ['https://u:p@m']}}", "hosts['x.io'].mirrors[0]", "under auth"),
        ("hosts: {x.io: {server: 'http://x.io'}}", "hosts['x.io'].server", "plain HTTP"),
        (
            "hosts: {x.io: {mirrors: ['http://10.1.1.1:5000']}}",
            "hosts['x.io'].mirrors[0]",
            "plain HTTP to 10.1.1.1:5000",
        ),
        ("hosts: {x.io: {auth: {username: u}}}", "hosts['x.io'].auth.password", "missing"),
        ("hosts: {x.io: {auth: {password: p}}}", "hosts['x.io'].auth.username", "missing"),
        ("hosts: {x.io: {auth: {}}}", "hosts['x.io'].auth", "needs username"),
        ("hosts: {x.io: {auth: {username: u, password: 1}}}", "hosts['x.io'].auth.password",
         "non-empty string"),
        ("hosts: {x.io: {auth: {auth: '!!'}}}", "hosts['x.io'].auth.auth", "base64"),
        (
            "hosts: {x.io: {auth: {username: u, password: p, identity_token: t}}}",
            "hosts['x.io'].auth",
            "not both",
        ),
        ("hosts: {X.io: {}, x.io: {}}", "hosts['x.io']", "listed twice"),
    ],
)  # fmt: skip
def test_errors_name_file_and_key(scratch_dir: Path, doc: str, key: str | None, message: str):
    path = scratch_dir / "registries.yaml"
    path.write_text(doc)
    with pytest.raises(RegistryConfigError) as err:
        load_registry_config(path)
    assert err.value.source == str(path)
    assert err.value.key == key
    assert message in str(err.value)
    assert str(err.value).startswith(f"{path}: {key}" if key else str(path))


def test_plain_http_allowed_by_insecure_mirror_or_host() -> None:
    ok = parse_registry_config(
        {
            "hosts": {
                "x.io": {
                    "mirrors": [
                        {"url": "http://10.1.1.1:5000", "insecure": True},
                        "http://10.2.2.2",
                    ],
                    "server": "http://x.io",
                    "insecure": True,
                },
                "10.2.2.2": {"insecure": True},
            }
        }
    )
    assert [e.urls for e in ok.endpoints("x.io")] == [
        ("http://10.1.1.1:5000",),
        ("http://10.2.2.2",),
        ("http://x.io",),
    ]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("LOCALHOST", True),
        ("localhost.example.com", False),
        ("10.0.0.1:5000", False),
        ("[::2]:5000", False),
        ("docker.io", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
