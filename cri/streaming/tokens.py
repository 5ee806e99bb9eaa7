"""Single-use, short-lived tokens naming one streaming request.

Exec/Attach/PortForward are validated by the RPC and answered with a URL; the
client then connects to the streaming server with the token in that URL. A
token is good for one connection within TTL seconds (containerd's request
cache: 1 minute), so a leaked URL is useless soon and never replayable. The
table is bounded: a client that asks for URLs and never connects cannot grow
the server without limit.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

TTL_SECONDS = 60.0
MAX_TOKENS = 1000  # containerd's maxInFlight
EXEC, ATTACH, PORTFORWARD = "exec", "attach", "portforward"
KINDS = (EXEC, ATTACH, PORTFORWARD)


class TokenTableFull(Exception):
    """Too many unused, unexpired tokens: the caller must retry later."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"{capacity} streaming requests are waiting for a connection already")
        self.capacity = capacity


@dataclass(frozen=True)
class StreamRequest:
    """What a token grants: one exec, attach or port-forward, as the RPC validated it."""

    kind: str  # EXEC | ATTACH | PORTFORWARD
    container_id: str = ""
    cmd: tuple[str, ...] = ()
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    sandbox_id: str = ""
    netns: str = ""  # port-forward: the pod's netns ("" = the server's own)
    ports: tuple[int, ...] = field(default=())  # port-forward: the ports allowed (empty: any)


class TokenTable:
    """token -> StreamRequest; `take` hands a request out once, before it expires."""

    def __init__(
        self,
        ttl: float = TTL_SECONDS,
        capacity: int = MAX_TOKENS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or capacity <= 0:
            raise ValueError("ttl and capacity must be positive")
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def put(self, req: StreamRequest) -> str:
        """A new token for `req`; TokenTableFull when `capacity` tokens are pending."""
        if req.kind not in KINDS:
            raise ValueError(f"unknown stream kind {req.kind!r}")
        with self._lock:
            self._expire()
            if len(self._items) >= self.capacity:
                raise TokenTableFull(self.capacity)
            token = secrets.token_urlsafe(24)
            self._items[token] = (self._clock() + self.ttl, req)
            return token

    def take(self, token: str) -> StreamRequest | None:
        """The request of `token`, removed; None when unknown, used or expired."""
        with self._lock:
            self._expire()
            item = self._items.pop(token, None)
        return None if item is None else item[1]

    def _expire(self) -> None:
        # insertion order is expiry order (one ttl for all): stop at the first live one
        now = self._clock()
        while self._items:
            token, (deadline, _) = next(iter(self._items.items()))
            if deadline > now:
                break
            del self._items[token]
