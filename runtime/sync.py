"""The channel between the runtime process and the container's bootstrap and init.

A SOCK_SEQPACKET socketpair: message boundaries are kept, and when one side
dies the other reads EOF instead of hanging. Messages are small JSON
objects with a "type". Built on the C modules `_socket` and `_json`: the
`socket` and `json` modules cost create ~9 and ~7 ms of imports here (and
`array` imports `collections`: fds are packed with struct, as C ints).
"""

from __future__ import annotations

import _socket
import os
import struct

from runtime import jsonio
from runtime.errors import RuntimeFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_MSG = 65536


class Channel:
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        return cls(a), cls(b)

    def send(self, kind: str, **fields: Any) -> None:
        self.sock.send(jsonio.dumps({"type": kind, **fields}).encode())

    def recv(self, *expected: str) -> dict[str, Any]:
        """The next message; an "error" message from the other side is raised."""
        return _check(self.sock.recv(MAX_MSG), expected)

    def send_fds(self, kind: str, fds: list[int], **fields: Any) -> None:
        """A message carrying open fds (SCM_RIGHTS): the receiver gets its own copies."""
        data = jsonio.dumps({"type": kind, **fields}).encode()
        payload = struct.pack(f"{len(fds)}i", *fds)
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, payload)] if fds else []
        self.sock.sendmsg([data], rights)

    def recv_fds(self, *expected: str, maxfds: int = 64) -> tuple[dict[str, Any], list[int]]:
        data, ancillary, _flags, _addr = self.sock.recvmsg(MAX_MSG, _socket.CMSG_LEN(maxfds * 4))
        received: list[int] = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                received += struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4])
        try:
            return _check(data, expected), received
        except BaseException:
            for fd in received:
                os.close(fd)
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def _check(data: bytes, expected: tuple[str, ...]) -> dict[str, Any]:
    if not data:
        raise RuntimeFailure("the container's setup process exited without a word")
    msg: dict[str, Any] = jsonio.loads(data)
    if msg.get("type") == "error":
        raise RuntimeFailure(str(msg.get("message")))
    if expected and msg.get("type") not in expected:
        raise RuntimeFailure(f"unexpected message {msg.get('type')!r} (wanted {expected})")
    return msg
