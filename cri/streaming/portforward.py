"""Streaming port-forward: TCP connections to 127.0.0.1:<port> inside the pod's netns.

The socket is made and connected in a short-lived thread that joined the pod's
network namespace (cri.network.netlink.in_netns_thread); a socket keeps the
namespace it was created in, so the server then drives it from asyncio in its
own namespace. Two client forms, as kubelet's: SPDY stream pairs (data + error,
tied by requestid, one pair per connection, any number at once) and the
WebSocket channel form (channels 2i/2i+1 for the i-th `port` query parameter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from cri.streaming import websocket as wsmod
from cri.streaming.spdy import SpdySession, SpdyStream
from cri.streaming.tokens import StreamRequest

log = logging.getLogger("pinnace.cri.streaming")

CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536


class ForwardError(Exception):
    """A port cannot be forwarded; the message is what the client is shown."""


def check_port(req: StreamRequest, value: str) -> int:
    """The port named by a header or query value, if the request allows it."""
    try:
        port = int(value)
    except ValueError:
        raise ForwardError(f"invalid port {value!r}") from None
    if not 1 <= port <= 65535:
        raise ForwardError(f"port {port} is out of range 1-65535")
    if req.ports and port not in req.ports:
        raise ForwardError(f"port {port} was not requested for pod {req.sandbox_id}")
    return port


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)


async def dial(req: StreamRequest, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to 127.0.0.1:port in the pod's network namespace."""
    from cri.network.netlink import in_netns_thread

    try:
        sock = await asyncio.to_thread(in_netns_thread, req.netns, lambda: _connect(port))
    except Exception as exc:
        raise ForwardError(
            f"error forwarding port {port} to pod {req.sandbox_id}: "
            f"cannot connect to 127.0.0.1:{port}: {exc}"
        ) from None
    sock.setblocking(False)
    return await asyncio.open_connection(sock=sock)


# --- SPDY: stream pairs --------------------------------------------------------------------


async def _forward_pair(req: StreamRequest, data: SpdyStream, error: SpdyStream) -> None:
    writer: asyncio.StreamWriter | None = None
    try:
        port = check_port(req, data.headers.get("port", ""))
        reader, writer = await dial(req, port)
        w = writer

        async def up() -> None:
            while chunk := await data.read():
                w.write(chunk)
                await w.drain()
            if w.can_write_eof():
                w.write_eof()  # the client is done sending: half-close, as TCP would

        async def down() -> None:
            while chunk := await reader.read(READ_SIZE):
                await data.write(chunk)

        up_task = asyncio.ensure_future(up())
        try:
            await down()
        finally:
            up_task.cancel()
    except ForwardError as exc:
        log.info("%s", exc)
        with contextlib.suppress(Exception):
            await error.write(str(exc).encode())
    except (ConnectionError, OSError) as exc:
        with contextlib.suppress(Exception):
            await error.write(f"port-forward connection failed: {exc}".encode())
    finally:
        if writer is not None:
            writer.close()
        for s in (data, error):
            with contextlib.suppress(Exception):
                await s.close()


async def serve_spdy(session: SpdySession, req: StreamRequest) -> None:
    """Pair the client's streams by requestid and forward each pair, until the session ends."""
    pending: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Future[Any]] = set()
    try:
        while (s := await session.accept_stream()) is not None:
            kind = s.headers.get("streamtype", "")
            rid = s.headers.get("requestid", "")
            pair = pending.setdefault(rid, {})
            if kind not in ("data", "error") or kind in pair:
                log.debug("port-forward: rejecting %r stream %d (request %r)", kind, s.id, rid)
                await s.reset()
                continue
            pair[kind] = s
            if len(pair) == 2:
                del pending[rid]
                t = asyncio.ensure_future(_forward_pair(req, pair["data"], pair["error"]))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
    finally:
        for pending_task in list(tasks):
            pending_task.cancel()
        with contextlib.suppress(Exception):
            await session.close()


# --- WebSocket: channels ---------------------------------------------------------------------


async def serve_websocket(
    ws: wsmod.WebSocket, protocol: str, req: StreamRequest, ports: list[int]
) -> None:
    """kubelet's channel form: data on 2i, errors on 2i+1, each opened with the port."""
    b64 = "base64" in protocol
    # client data waits here until its connection is up (it may come before the dial ends)
    inbox: dict[int, asyncio.Queue[bytes]] = {2 * i: asyncio.Queue() for i in range(len(ports))}
    tasks: list[asyncio.Future[Any]] = []

    async def send(channel: int, payload: bytes) -> None:
        await ws.send(wsmod.channel_message(channel, payload, base64=b64), binary=not b64)

    async def up(queue: asyncio.Queue[bytes], writer: asyncio.StreamWriter) -> None:
        while chunk := await queue.get():
            writer.write(chunk)
            await writer.drain()

    async def forward(i: int, port: int) -> None:
        data_ch, err_ch = 2 * i, 2 * i + 1
        try:
            reader, writer = await dial(req, port)
        except ForwardError as exc:
            await send(err_ch, str(exc).encode())
            return
        pump = asyncio.ensure_future(up(inbox[data_ch], writer))
        try:
            while chunk := await reader.read(READ_SIZE):
                await send(data_ch, chunk)
        except (ConnectionError, OSError) as exc:
            await send(err_ch, f"port-forward connection failed: {exc}".encode())
        finally:
            pump.cancel()
            writer.close()

    try:
        for i, port in enumerate(ports):
            await send(2 * i, wsmod.port_prefix(port))
            await send(2 * i + 1, wsmod.port_prefix(port))
        forwards = [asyncio.ensure_future(forward(i, p)) for i, p in enumerate(ports)]
        tasks += forwards
        incoming = asyncio.ensure_future(_ws_incoming(ws, b64, inbox))
        tasks.append(incoming)
        done_all = asyncio.ensure_future(asyncio.wait(forwards))
        tasks.append(done_all)
        await asyncio.wait([incoming, done_all], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await ws.close(1000)


async def _ws_incoming(
    ws: wsmod.WebSocket, b64: bool, inbox: dict[int, asyncio.Queue[bytes]]
) -> None:
    while (msg := await ws.recv()) is not None:
        try:
            ch, payload = wsmod.parse_channel_message(msg, base64=b64)
        except ValueError:
            continue
        queue = inbox.get(ch)
        if queue is not None and payload:
            queue.put_nowait(payload)
