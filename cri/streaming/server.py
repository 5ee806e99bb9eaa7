"""The streaming server: the URLs Exec, Attach and PortForward return lead here.

A small HTTP/1.1 front (request line and headers only: every valid request
upgrades) on asyncio, then SPDY/3.1 or WebSocket per the client's Upgrade
header, then exec.py, attach.py or portforward.py. The path carries a
single-use token (tokens.py); the request it names was validated by the RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cri.streaming import websocket as wsmod
from cri.streaming.stdio import SpdyStdio, Stdio, StdioError, WebSocketStdio
from cri.streaming.tokens import ATTACH, EXEC, KINDS, PORTFORWARD, StreamRequest, TokenTable

log = logging.getLogger("pinnace.cri.streaming")

MAX_HEAD = 16384  # request line and headers together
MAX_HEADERS = 100
HEAD_TIMEOUT = 10.0
METHODS = ("GET", "POST")  # kubectl and crictl POST exec/attach; kubelet's server takes both
SPDY = "spdy/3.1"
PROTOCOLS_SPDY_EXEC = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
]
PROTOCOLS_SPDY_PORTFORWARD = ["portforward.k8s.io"]
WS_PORTFORWARD_SPDY = "SPDY/3.1+portforward.k8s.io"
PROTOCOLS_WS_PORTFORWARD = [
    WS_PORTFORWARD_SPDY,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "portforward.k8s.io",
]
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}
_TOKEN_CHARS = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HttpError(Exception):
    """A request answered with `status` and a one-line text body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "


def parse_head(head: bytes) -> HttpRequest:
    """The request line and headers (the bytes up to and without the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(400, f"malformed request line {lines[0][:100]!r}")
    method, target, version = parts
    if not set(method) <= _TOKEN_CHARS or version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400, f"malformed request line {lines[0][:100]!r}")
    if not target.startswith("/"):
        raise HttpError(400, "the request target must be a path")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise HttpError(400, f"malformed header line {line[:100]!r}")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    split = urlsplit(target)
    return HttpRequest(method, split.path, parse_qs(split.query), headers)


def negotiate(offered: str, supported: list[str]) -> str | None:
    """kubelet's httpstream handshake: the first protocol the client offered that we support.
    No offer at all is the legacy protocol ("")."""
    wanted = [p.strip() for p in offered.split(",") if p.strip()]
    if not wanted:
        return ""
    for p in wanted:
        if p in supported:
            return p
    return None


async def _respond(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = (message + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    )
    if status == 405:
        head += f"Allow: {', '.join(METHODS)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


class StreamingServer:
    """Serves exec/attach/port-forward connections for tokens the RPCs register."""

    def __init__(
        self,
        address: str,
        port: int,
        containers: Any,  # cri.containers.ContainerManager
        sandboxes: Any,  # cri.sandbox.SandboxManager
        runtime_root: str,
        *,
        work_dir: str = "",
        tokens: TokenTable | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.containers = containers
        self.sandboxes = sandboxes
        self.runtime_root = runtime_root
        # process files and console sockets of execs: short paths (sun_path is 108 bytes)
        self.work_dir = work_dir or os.path.join(os.path.dirname(containers.run_dir), "streaming")
        self.tokens = tokens or TokenTable()
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[Any]] = set()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
        self._server = await asyncio.start_server(
            self._connection, self.address, self.port, limit=MAX_HEAD
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("streaming server on %s", self.base_url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for t in list(self._sessions):
            t.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=5)

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    def register(self, req: StreamRequest) -> str:
        """A URL for `req` (TokenTableFull when too many are pending)."""
        return self.url_for(req.kind, self.tokens.put(req))

    def url_for(self, kind: str, token: str) -> str:
        return f"{self.base_url}/{kind}/{token}"

    # -- HTTP ----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except asyncio.LimitOverrunError:
                raise HttpError(431, f"request head larger than {MAX_HEAD} bytes") from None
            except (asyncio.IncompleteReadError, TimeoutError):
                return  # nothing (complete) was asked: nothing to answer
            http = parse_head(head[:-4])
            if http.method not in METHODS:
                raise HttpError(405, f"method {http.method} is not allowed")
            parts = http.path.split("/")
            if len(parts) != 3 or parts[1] not in KINDS or not parts[2]:
                raise HttpError(404, f"no such path {http.path[:100]!r}")
            req = self.tokens.take(parts[2])
            if req is None or req.kind != parts[1]:
                raise HttpError(404, "unknown, used or expired token")
            upgrade = http.headers.get("upgrade", "").lower()
            if "websocket" in upgrade:
                await self._websocket(http, req, reader, writer)
            elif SPDY in upgrade:
                await self._spdy(http, req, reader, writer)
            else:
                raise HttpError(400, "unable to upgrade: missing upgrade headers in request")
        except HttpError as exc:
            log.debug("streaming request refused: %s", exc)
            await _respond(writer, exc.status, exc.message)

    async def _spdy(
        self,
        http: HttpRequest,
        req: StreamRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        from cri.streaming.spdy import SpdySession

        supported = PROTOCOLS_SPDY_PORTFORWARD if req.kind == PORTFORWARD else PROTOCOLS_SPDY_EXEC
        offered = http.headers.get("x-stream-protocol-version", "")
        protocol = negotiate(offered, supported)
        if protocol is None:
            raise HttpError(
                403,
                f"unable to upgrade: unable to negotiate protocol: client supports "
                f"{offered!r}, server supports {supported}",
            )
        lines = ["HTTP/1.1 101 Switching Protocols", "Connection: Upgrade", "Upgrade: SPDY/3.1"]
        if protocol:
            lines.append(f"X-Stream-Protocol-Version: {protocol}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        session = SpdySession(reader, writer, client=False)
        session.start()
        if req.kind == PORTFORWARD:
            from cri.streaming import portforward

            await portforward.serve_spdy(session, req)
            return
        try:
            io = await SpdyStdio.accept(session, protocol, _expected_streams(req, protocol))
        except StdioError as exc:
            log.info("%s %s: %s", req.kind, req.container_id, exc)
            with contextlib.suppress(Exception):
                await session.close()
            return
        await self._run(io, req)

    async def _websocket(
        self,
        http: HttpRequest,
        req: StreamRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if http.method != "GET":
            raise HttpError(405, "a WebSocket upgrade must be a GET")
        ports: list[int] = []
        if req.kind == PORTFORWARD:
            from cri.streaming.portforward import ForwardError, check_port

            offered = [p.strip() for p in http.headers.get("sec-websocket-protocol", "").split(",")]
            if WS_PORTFORWARD_SPDY not in offered:
                try:
                    ports = [check_port(req, v) for v in http.query.get("port", [])]
                except ForwardError as exc:
                    raise HttpError(400, str(exc)) from None
                if not ports:
                    raise HttpError(400, 'query parameter "port" is required')
            supported = PROTOCOLS_WS_PORTFORWARD
        else:
            supported = wsmod.PROTOCOLS_EXEC
        try:
            protocol = await wsmod.server_handshake(http.headers, writer, supported)
        except wsmod.HandshakeError as exc:
            raise HttpError(exc.status, exc.message) from None
        ws = wsmod.WebSocket(reader, writer, client=False)
        if req.kind == PORTFORWARD:
            from cri.streaming import portforward
            from cri.streaming.spdy import SpdySession

            if protocol == WS_PORTFORWARD_SPDY:
                r, w = wsmod.byte_stream(ws)
                session = SpdySession(r, w, client=False)  # type: ignore[arg-type]
                session.start()
                await portforward.serve_spdy(session, req)
            else:
                await portforward.serve_websocket(ws, protocol, req, ports)
            return
        io = WebSocketStdio(
            ws,
            protocol,
            stdin=req.stdin,
            stdout=req.stdout,
            stderr=req.stderr and not req.tty,
        )
        await self._run(io, req)

    async def _run(self, io: Stdio, req: StreamRequest) -> None:
        if req.kind == EXEC:
            from cri.streaming.exec import serve_exec

            await serve_exec(io, req, self.containers.get, self.runtime_root, self.work_dir)
        elif req.kind == ATTACH:
            from cri.streaming.attach import serve_attach

            await serve_attach(io, req, self.containers.get)


def _expected_streams(req: StreamRequest, protocol: str) -> set[str]:
    """The streams a remotecommand client opens for this request (kubelet's rule)."""
    want = {"error"}
    if req.stdin:
        want.add("stdin")
    if req.stdout:
        want.add("stdout")
    if req.stderr and not req.tty:
        want.add("stderr")
    if req.tty and protocol not in ("", "channel.k8s.io", "v2.channel.k8s.io"):
        want.add("resize")
    return want
