"""The exec/attach result on the error stream, in the forms kubectl and crictl parse.

v4.channel.k8s.io and later carry a metav1.Status JSON object (the client turns
reason NonZeroExitCode plus an ExitCode cause into the command's exit code);
the older protocols carry a bare error text and nothing at all for success.
"""

from __future__ import annotations

import json
from typing import Any

NON_ZERO_EXIT_CODE = "NonZeroExitCode"
INTERNAL_ERROR = "InternalError"
STATUS_PROTOCOLS = ("v4.channel.k8s.io", "v5.channel.k8s.io", "v4.base64.channel.k8s.io")


def uses_status_json(protocol: str) -> bool:
    """Whether `protocol` reports results as metav1.Status (v4+) rather than text."""
    return protocol.startswith(("v4.", "v5."))


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def success() -> bytes:
    return _dump({"metadata": {}, "status": "Success"})


def exit_error_text(cmd: list[str], code: int) -> str:
    """The exit error's text, worded as containerd's and CRI-O's exec errors."""
    return f"error executing command [{' '.join(cmd)}], exit code {code}"


def non_zero_exit(cmd: list[str], code: int) -> bytes:
    return _dump(
        {
            "metadata": {},
            "status": "Failure",
            "message": "command terminated with non-zero exit code: " + exit_error_text(cmd, code),
            "reason": NON_ZERO_EXIT_CODE,
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    )


def failure(message: str, reason: str = INTERNAL_ERROR) -> bytes:
    return _dump({"metadata": {}, "status": "Failure", "message": message, "reason": reason})


def result(protocol: str, cmd: list[str], code: int | None, error: str = "") -> bytes:
    """What to write on the error stream: exit `code`, or `error` when there is none.

    An empty result (old protocols, success) means: write nothing, just close.
    """
    if uses_status_json(protocol):
        if code is None:
            return failure(error or "the stream ended without a result")
        return success() if code == 0 else non_zero_exit(cmd, code)
    if code is None:
        return (error or "the stream ended without a result").encode()
    return b"" if code == 0 else exit_error_text(cmd, code).encode()
