"""Image reference normalisation: docker's rules, table-driven."""

from __future__ import annotations

import pytest

from images.reference import InvalidReferenceError, Reference, parse_reference

D = "sha256:" + "a" * 64
D2 = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("user/team/app:v2", "docker.io/user/team/app:v2"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ("ghcr.io/org/img", "ghcr.io/org/img:latest"),
        ("localhost/foo", "localhost/foo:latest"),
        ("localhost:5000/foo/bar:1", "localhost:5000/foo/bar:1"),
        ("127.0.0.1:5000/pinnace/busybox", "127.0.0.1:5000/pinnace/busybox:latest"),
        ("[::1]:5000/x/y:t", "[::1]:5000/x/y:t"),
        ("Registry.Example.com/app", "Registry.Example.com/app:latest"),
        ("foo:5000", "docker.io/library/foo:5000"),  # no slash: 5000 is a tag
        (f"busybox@{D}", f"docker.io/library/busybox@{D}"),  # no tag added
        (f"busybox:1.36@{D}", f"docker.io/library/busybox:1.36@{D}"),
        (f"127.0.0.1:5000/a/b@{D2}", f"127.0.0.1:5000/a/b@{D2}"),
        ("a.b-c/f__g--h.i_j", "a.b-c/f__g--h.i_j:latest"),
        ("Foo/bar", "Foo/bar:latest"),  # docker: an uppercase first part is a host name
        ("x/y:T_a.g-1", "docker.io/x/y:T_a.g-1"),
    ],
)
def test_normalisation(text: str, normalised: str) -> None:
    assert str(parse_reference(text)) == normalised


def test_fields_and_manifest_reference() -> None:
    ref = parse_reference("127.0.0.1:5000/pinnace/busybox:1.0")
    assert ref == Reference("127.0.0.1:5000", "pinnace/busybox", "1.0", None)
    assert ref.name == "127.0.0.1:5000/pinnace/busybox"
    assert ref.manifest_reference == "1.0"
    pinned = parse_reference(f"busybox:1.0@{D}")
    assert pinned.manifest_reference == D  # the digest wins over the tag
    assert pinned.with_digest(D2).digest == D2


def test_familiar_form() -> None:
    assert parse_reference("docker.io/library/busybox").familiar() == "busybox:latest"
    assert parse_reference("user/app:1").familiar() == "user/app:1"
    assert parse_reference("ghcr.io/o/i:2").familiar() == "ghcr.io/o/i:2"


def test_no_default_tag_when_asked() -> None:
    ref = parse_reference("busybox", default_tag=False)
    assert ref.tag is None
    assert ref.manifest_reference == "latest"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty reference"),
        ("Busybox", "must be lowercase"),
        ("docker.io/Library/busybox", "must be lowercase"),
        ("a_b.c/x", "invalid registry host"),
        ("localhost:5000/Foo", "must be lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-x", "invalid tag"),
        ("busybox:" + "t" * 129, "invalid tag"),
        ("busybox@", "empty digest"),
        ("busybox@sha256:abc", "invalid digest"),
        ("busybox@sha256:" + "A" * 64, "invalid digest"),
        ("busybox@sha512:" + "a" * 128, "unsupported digest algorithm"),
        ("-busybox", "invalid repository name"),
        ("busy..box", "invalid repository name"),
        ("busybox/", "invalid repository name"),
        ("a//b", "invalid repository name"),
        ("host:port/x", "invalid registry host"),  # a domain, but not a valid one
        ("-bad.host/x", "invalid registry host"),
        (":tag", "empty repository name"),
        ("busy box", "whitespace"),
        (" busybox", "whitespace"),
        ("a" * 64, "image ID"),
        ("example.com/" + "a/" * 130 + "b", "longer than 255"),
    ],
)
def test_invalid_references_name_themselves(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as err:
        parse_reference(text)
    assert err.value.reference == text
    assert reason in str(err.value)
    assert repr(text) in str(err.value)
