"""Image references as users type them, normalised the way docker does.

    busybox                          -> docker.io/library/busybox:latest
    user/app:1.2                     -> docker.io/user/app:1.2
    127.0.0.1:5000/pinnace/busybox   -> 127.0.0.1:5000/pinnace/busybox:latest
    registry.k8s.io/pause@sha256:... -> pulled by digest, no tag added

Grammar (distribution's reference grammar, written from its description):

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [ domain "/" ] path
    domain      := host [ ":" port ]           host: DNS name, IPv4, or [IPv6]
    path        := component ( "/" component )*
    component   := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

The first part of a name is a domain only when it contains "." or ":", is
"localhost", or has an uppercase letter (repository names are lowercase, host
names need not be: docker reads `Foo/bar` as host Foo). Names on docker.io
without a namespace get "library/". Only sha256 digests are accepted, like
everywhere else in images/: a digest is also a file name in the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from images.digest import is_digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPOSITORY_NAMESPACE = "library"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[A-Fa-f0-9:]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ANY_DIGEST_RE = re.compile(
    r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}$"
)
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


class InvalidReferenceError(ValueError):
    """A string that is not an image reference; says which part is wrong."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {reason}")
        self.reference = reference
        self.reason = reason


@dataclass(frozen=True)
class Reference:
    """A normalised image reference. `domain` is what the user named (docker.io,
    127.0.0.1:5000), not necessarily the host the bytes come from (see hosts.py)."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """domain/path: the repository, without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def manifest_reference(self) -> str:
        """What goes after /manifests/: the digest when there is one (it pins the
        content, a tag next to it is informational), else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag or DEFAULT_TAG

    def familiar(self) -> str:
        """The short form docker prints: docker.io/library/busybox:latest -> busybox:latest."""
        name = self.name
        if self.domain == DEFAULT_DOMAIN:
            name = self.path.removeprefix(f"{OFFICIAL_REPOSITORY_NAMESPACE}/")
        return name + self._suffix()

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, self.tag, digest)

    def _suffix(self) -> str:
        out = f":{self.tag}" if self.tag is not None else ""
        return out + (f"@{self.digest}" if self.digest is not None else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise `text`; with `default_tag` a reference with neither tag
    nor digest gets :latest. Raises InvalidReferenceError naming the reference."""
    if not text:
        raise InvalidReferenceError(text, "empty reference")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReferenceError(text, "whitespace is not allowed")

    rest, at, digest = text.partition("@")
    if at:
        if not digest:
            raise InvalidReferenceError(text, "empty digest after '@'")
        if not is_digest(digest):
            if _ANY_DIGEST_RE.match(digest) and not digest.startswith("sha256:"):
                raise InvalidReferenceError(
                    text, f"unsupported digest algorithm in {digest!r} (only sha256)"
                )
            raise InvalidReferenceError(
                text, f"invalid digest {digest!r}: expected sha256:<64 lowercase hex>"
            )

    # A tag is after the last ':' that follows the last '/': "host:5000/repo" has none.
    name, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidReferenceError(
                text, f"invalid tag {tag!r}: letters, digits, '_', '.', '-', at most 128"
            )
    if not name:
        raise InvalidReferenceError(text, "empty repository name")

    domain, path = _split_domain(name)
    if not _DOMAIN_RE.match(domain):
        raise InvalidReferenceError(text, f"invalid registry host {domain!r}")
    if path != path.lower():
        raise InvalidReferenceError(text, f"repository name {path!r} must be lowercase")
    if not _PATH_RE.match(path):
        raise InvalidReferenceError(
            text,
            f"invalid repository name {path!r}: lowercase letters, digits and "
            "separators ('.', '_', '__', '-') between them, components joined by '/'",
        )
    if _HEX64_RE.match(text):
        raise InvalidReferenceError(
            text, "a 64-character hexadecimal string is an image ID, not a repository name"
        )
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReferenceError(
            text, f"repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters"
        )

    if tag is None and not digest and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest or None)


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, remainder = name.partition("/")
    if not slash or (
        "." not in first and ":" not in first and first != "localhost" and first == first.lower()
    ):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, remainder
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"{OFFICIAL_REPOSITORY_NAMESPACE}/{path}"
    return domain, path
