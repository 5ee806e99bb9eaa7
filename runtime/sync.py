"""The channel between the runtime process and the container's bootstrap and init.

A SOCK_SEQPACKET socketpair: message boundaries are kept, and when one side
dies the other reads EOF instead of hanging. Messages are small JSON
objects with a "type".
"""

from __future__ import annotations

import json
import socket
from typing import Any

from runtime.errors import RuntimeFailure

MAX_MSG = 65536


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(a), cls(b)

    def send(self, kind: str, **fields: Any) -> None:
        self.sock.send(json.dumps({"type": kind, **fields}).encode())

    def recv(self, *expected: str) -> dict[str, Any]:
        """The next message; an "error" message from the other side is raised."""
        data = self.sock.recv(MAX_MSG)
        if not data:
            raise RuntimeFailure("the container's setup process exited without a word")
        msg: dict[str, Any] = json.loads(data)
        if msg.get("type") == "error":
            raise RuntimeFailure(str(msg.get("message")))
        if expected and msg.get("type") not in expected:
            raise RuntimeFailure(f"unexpected message {msg.get('type')!r} (wanted {expected})")
        return msg

    def send_fds(self, kind: str, fds: list[int], **fields: Any) -> None:
        """A message carrying open fds (SCM_RIGHTS): the receiver gets its own copies."""
        socket.send_fds(self.sock, [json.dumps({"type": kind, **fields}).encode()], fds)

    def recv_fds(self, *expected: str, maxfds: int = 64) -> tuple[dict[str, Any], list[int]]:
        data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MSG, maxfds)
        if not data:
            raise RuntimeFailure("the container's setup process exited without a word")
        msg: dict[str, Any] = json.loads(data)
        if msg.get("type") == "error":
            raise RuntimeFailure(str(msg.get("message")))
        if expected and msg.get("type") not in expected:
            raise RuntimeFailure(f"unexpected message {msg.get('type')!r} (wanted {expected})")
        return msg, fds

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
