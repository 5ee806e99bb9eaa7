"""Content digests (OCI image-spec "Digests"): the only identity a blob has.

Only sha256 is produced and accepted: it is the one algorithm every registry and
runtime must support, and refusing the rest keeps a malformed or hostile
reference from ever becoming a file name under blobs/.
"""

from __future__ import annotations

import hashlib
import re

SHA256 = "sha256"

_SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


class InvalidDigestError(ValueError):
    """A string that is not a `sha256:<64 lowercase hex>` digest."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex>")
        self.digest = digest


class DigestMismatchError(ValueError):
    """Content whose digest is not the one it was promised to have."""

    def __init__(self, expected: str, actual: str, where: str) -> None:
        super().__init__(f"{where}: expected digest {expected}, got {actual}")
        self.expected = expected
        self.actual = actual
        self.where = where


def sha256_digest(data: bytes) -> str:
    """The digest of `data`, as written in descriptors: `sha256:<hex>`."""
    return f"{SHA256}:{hashlib.sha256(data).hexdigest()}"


def validate_digest(digest: str) -> str:
    """Return `digest` unchanged if well formed, raise InvalidDigestError otherwise."""
    if not _SHA256_RE.fullmatch(digest):
        raise InvalidDigestError(digest)
    return digest


def digest_hex(digest: str) -> str:
    """The encoded part of a validated digest (its file name under blobs/sha256/)."""
    return validate_digest(digest).split(":", 1)[1]


def is_digest(reference: str) -> bool:
    """Whether a manifest reference is a digest rather than a tag."""
    return bool(_SHA256_RE.fullmatch(reference))
