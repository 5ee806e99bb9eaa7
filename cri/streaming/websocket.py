"""WebSocket (RFC 6455) on asyncio streams, plus the Kubernetes channel framings.

kubectl and client-go reach the streaming server over WebSocket as well as SPDY: exec and
attach use the remotecommand channel protocols (v5/v4/.../base64.channel.k8s.io), port-forward
uses kubelet's channel pairs or SPDY tunnelled in binary messages. Written here, on plain
asyncio streams, because the server is one small HTTP/1.1 loop and needs no framework.
"""

from __future__ import annotations

import asyncio
import base64 as b64
import binascii
import contextlib
import hashlib
import os
import struct
from typing import Any

__all__ = [
    "CLOSE",
    "ERROR",
    "MAX_MESSAGE",
    "PROTOCOLS_EXEC",
    "RESIZE",
    "STDERR",
    "STDIN",
    "STDOUT",
    "ConnectionClosed",
    "HandshakeError",
    "WebSocket",
    "WebSocketReader",
    "WebSocketWriter",
    "accept_key",
    "byte_stream",
    "channel_message",
    "choose_protocol",
    "connect",
    "parse_channel_message",
    "port_prefix",
    "portforward_channels",
    "server_handshake",
]

# RFC 6455 section 1.3: the fixed GUID appended to the client's key.
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Kubernetes remotecommand channels. v5 adds CLOSE: a message on channel 255 whose payload is
# the one-byte id of the channel the sender will not write again (half-close, e.g. stdin EOF).
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255

PROTOCOLS_EXEC = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
]

# Largest message accepted (after reassembly); larger ones close the connection with 1009.
MAX_MESSAGE = 16 * 1024 * 1024

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPS = {_OP_CONT, _OP_TEXT, _OP_BINARY}
_CONTROL_OPS = {_OP_CLOSE, _OP_PING, _OP_PONG}

# Close codes (RFC 6455 section 7.4.1).
_NORMAL, _PROTOCOL_ERROR, _NO_STATUS, _ABNORMAL, _INVALID_DATA, _TOO_BIG = (
    1000,
    1002,
    1005,
    1006,
    1007,
    1009,
)
_CLOSE_TIMEOUT = 5.0


class HandshakeError(Exception):
    """An opening handshake that cannot succeed; `status` is the HTTP status to answer with
    (server side) or the one the server answered (client side)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"websocket handshake failed ({status}): {message}")
        self.status = status
        self.message = message


class ConnectionClosed(ConnectionError):
    """Sending on a WebSocket whose closing handshake has started or whose transport is gone."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"websocket is closed (code {code})")
        self.code = code


class _Fail(Exception):
    """Internal: the peer broke the protocol; fail the connection with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def accept_key(client_key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID))."""
    digest = hashlib.sha1((client_key + _GUID).encode("ascii"), usedforsecurity=False).digest()
    return b64.b64encode(digest).decode("ascii")


def choose_protocol(offered: list[str], supported: list[str]) -> str | None:
    """The first of `supported` (server preference) that the client offered.

    A client that offers nothing is treated as offering "" (no subprotocol), as Kubernetes
    does, so a server that lists "" accepts it."""
    wanted = {p.strip() for p in offered} if offered else {""}
    for protocol in supported:
        if protocol in wanted:
            return protocol
    return None


def _tokens(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


async def server_handshake(
    headers: dict[str, str], writer: asyncio.StreamWriter, supported: list[str]
) -> str:
    """Validate an upgrade request and write the 101 response; returns the chosen protocol.

    `headers` are the request headers with lower-cased names (repeated headers joined with
    ", "). On a bad request this raises HandshakeError and writes nothing: the HTTP server
    answers with `status` itself. The method (GET) is the HTTP server's to check."""
    upgrade = [t.lower() for t in _tokens(headers.get("upgrade", ""))]
    if "websocket" not in upgrade:
        raise HandshakeError(400, "Upgrade header does not name websocket")
    connection = [t.lower() for t in _tokens(headers.get("connection", ""))]
    if "upgrade" not in connection:
        raise HandshakeError(400, "Connection header does not contain Upgrade")
    version = _tokens(headers.get("sec-websocket-version", ""))
    if "13" not in version:
        raise HandshakeError(400, f"unsupported Sec-WebSocket-Version {version!r}, want 13")
    key = headers.get("sec-websocket-key", "").strip()
    if not key:
        raise HandshakeError(400, "missing Sec-WebSocket-Key")
    try:
        raw = b64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError(400, f"Sec-WebSocket-Key {key!r} is not base64") from None
    if len(raw) != 16:
        raise HandshakeError(400, f"Sec-WebSocket-Key {key!r} does not decode to 16 bytes")
    offered = _tokens(headers.get("sec-websocket-protocol", ""))
    protocol = choose_protocol(offered, supported)
    if protocol is None:
        raise HandshakeError(
            400, f"requested protocol(s) {offered!r} are not supported; supports {supported!r}"
        )
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
    await writer.drain()
    return protocol


def _mask(data: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key repeated; big-int XOR keeps 16 MiB payloads fast in Python."""
    n = len(data)
    if n == 0:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    value = int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")
    return value.to_bytes(n, "little")


def _valid_close_code(code: int) -> bool:
    """Codes a peer may put in a close frame (RFC 6455 7.4.1/7.4.2 and the IANA registry)."""
    if 1000 <= code <= 1014:
        return code not in (1004, _NO_STATUS, _ABNORMAL)
    return 3000 <= code <= 4999


class WebSocket:
    """One WebSocket connection over an asyncio stream pair.

    One task may call recv() while others call send(); frames are written whole under a
    lock so they never interleave. `close_code`/`close_reason` hold the code of the closing
    handshake once it happened: the peer's code, the code we failed the connection with
    (1002, 1007, 1009), or 1006 when the transport ended without a close frame."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client: bool,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.client = client
        self.max_message = max_message
        self.close_code: int | None = None
        self.close_reason = ""
        self.last_binary = True  # whether the last message recv() returned was binary
        self._write_lock = asyncio.Lock()
        self._close_sent = False
        self._close_received = False
        self._peer_done = asyncio.Event()  # close frame received, or the transport ended
        self._recv_active = False
        self._transport_closed = False

    @property
    def closed(self) -> bool:
        return self._close_sent or self._close_received or self._transport_closed

    async def recv(self) -> bytes | None:
        """The next whole message (text as UTF-8 bytes); None once the connection is closed."""
        if self._close_received or self._transport_closed:
            return None
        if self._recv_active:
            if self._close_sent:  # close() is draining the peer's frames: nothing more comes
                await self._peer_done.wait()
                return None
            raise RuntimeError("WebSocket.recv() is already running in another task")
        self._recv_active = True
        try:
            return await self._recv_message()
        finally:
            self._recv_active = False

    async def send(self, data: bytes, *, binary: bool = True) -> None:
        """Send one message in one frame; text messages must be UTF-8."""
        if not binary:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"text message is not valid UTF-8: {e}") from None
        if self.closed:
            raise ConnectionClosed(self.close_code)
        await self._send_frame(_OP_BINARY if binary else _OP_TEXT, data)

    async def close(self, code: int = _NORMAL, reason: str = "") -> None:
        """Start (or finish) the closing handshake, wait for the peer's close, drop the transport."""
        raw_reason = reason.encode("utf-8")
        if not (_valid_close_code(code) and code != 1015) or len(raw_reason) > 123:
            raise ValueError(f"invalid close code {code} or reason longer than 123 bytes")
        if not self._close_sent and not self._transport_closed:
            if self.close_code is None:
                self.close_code, self.close_reason = code, reason
            with contextlib.suppress(ConnectionError):
                await self._send_close(struct.pack("!H", code) + raw_reason)
        if not self._close_received and not self._transport_closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    if self._recv_active:
                        await self._peer_done.wait()
                    else:
                        while await self.recv() is not None:
                            pass  # data after our close is discarded (RFC 6455 1.4)
        await self._close_transport()

    # -- internals ---------------------------------------------------------------------------

    async def _send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        n = len(payload)
        head = bytearray([(0x80 if fin else 0) | opcode])
        mask_bit = 0x80 if self.client else 0
        if n < 126:
            head.append(mask_bit | n)
        elif n < 1 << 16:
            head.append(mask_bit | 126)
            head += struct.pack("!H", n)
        else:
            head.append(mask_bit | 127)
            head += struct.pack("!Q", n)
        if self.client:
            key = os.urandom(4)
            head += key
            payload = _mask(payload, key)
        async with self._write_lock:
            if self._transport_closed or self._writer.is_closing():
                raise ConnectionClosed(self.close_code)
            self._writer.write(bytes(head) + payload)
            await self._writer.drain()

    async def _send_close(self, payload: bytes) -> None:
        self._close_sent = True
        await self._send_frame(_OP_CLOSE, payload)

    async def _close_transport(self) -> None:
        if self._transport_closed:
            return
        self._transport_closed = True
        self._peer_done.set()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def _fail(self, code: int, reason: str) -> None:
        """_Fail the WebSocket Connection_: send a close frame with `code`, drop the transport."""
        self.close_code, self.close_reason = code, reason
        if not self._close_sent:
            with contextlib.suppress(ConnectionError):
                await self._send_close(struct.pack("!H", code) + reason.encode()[:123])
        await self._close_transport()

    async def _recv_message(self) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        message_op: int | None = None
        while True:
            try:
                fin, opcode, payload = await self._read_frame(self.max_message - size)
                if opcode in _CONTROL_OPS:
                    if await self._control(opcode, payload):
                        return None
                    continue
                if opcode == _OP_CONT:
                    if message_op is None:
                        raise _Fail(_PROTOCOL_ERROR, "continuation frame without a message")
                elif message_op is not None:
                    raise _Fail(_PROTOCOL_ERROR, "new message inside a fragmented one")
                else:
                    message_op = opcode
                size += len(payload)
                parts.append(payload)
                if not fin:
                    continue
                data = b"".join(parts)
                if message_op == _OP_TEXT:
                    try:
                        data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise _Fail(_INVALID_DATA, "text message is not valid UTF-8") from None
                self.last_binary = message_op == _OP_BINARY
                return data
            except _Fail as e:
                await self._fail(e.code, e.reason)
                return None
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                if self.close_code is None:
                    self.close_code = _ABNORMAL
                await self._close_transport()
                return None

    async def _control(self, opcode: int, payload: bytes) -> bool:
        """Handle a control frame; True when it was the peer's close."""
        if opcode == _OP_PING:
            if not self._close_sent:
                with contextlib.suppress(ConnectionError):
                    await self._send_frame(_OP_PONG, payload)
            return False
        if opcode == _OP_PONG:
            return False
        # close
        if len(payload) == 1:
            raise _Fail(_PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code, reason = _NO_STATUS, ""
        if payload:
            code = struct.unpack("!H", payload[:2])[0]
            if not _valid_close_code(code):
                raise _Fail(_PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise _Fail(_INVALID_DATA, "close reason is not valid UTF-8") from None
        self._close_received = True
        if not self._close_sent:
            self.close_code, self.close_reason = code, reason
            echo = struct.pack("!H", code) if payload else b""
            with contextlib.suppress(ConnectionError):
                await self._send_close(echo)
        elif self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._peer_done.set()
        await self._close_transport()
        return True

    async def _read_frame(self, room: int) -> tuple[bool, int, bytes]:
        """One frame; `room` is how many more data bytes the current message may take."""
        b0, b1 = await self._reader.readexactly(2)
        fin, opcode = bool(b0 & 0x80), b0 & 0x0F
        if b0 & 0x70:
            raise _Fail(_PROTOCOL_ERROR, "reserved bits set without a negotiated extension")
        if opcode not in _DATA_OPS and opcode not in _CONTROL_OPS:
            raise _Fail(_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        masked, n = bool(b1 & 0x80), b1 & 0x7F
        if masked == self.client:
            side = "server" if self.client else "client"
            raise _Fail(_PROTOCOL_ERROR, f"{side} frame {'is' if masked else 'is not'} masked")
        if opcode in _CONTROL_OPS and (not fin or n > 125):
            raise _Fail(_PROTOCOL_ERROR, "control frame fragmented or longer than 125 bytes")
        if n == 126:
            n = struct.unpack("!H", await self._reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self._reader.readexactly(8))[0]
            if n >> 63:
                raise _Fail(_PROTOCOL_ERROR, "frame length has the most significant bit set")
        if opcode in _DATA_OPS and n > room:
            raise _Fail(_TOO_BIG, f"message larger than {self.max_message} bytes")
        key = await self._reader.readexactly(4) if masked else b""
        payload = await self._reader.readexactly(n) if n else b""
        return fin, opcode, (_mask(payload, key) if masked else payload)


async def connect(
    host: str,
    port: int,
    path: str,
    protocols: list[str],
    headers: dict[str, str] | None = None,
) -> tuple[WebSocket, str]:
    """Open a client WebSocket (for tests and tools); returns it and the server's protocol.

    A non-101 answer raises HandshakeError carrying the server's status and body."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        key = b64.b64encode(os.urandom(16)).decode("ascii")
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if protocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise HandshakeError(0, "connection closed before the response") from None
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise HandshakeError(0, f"malformed status line {status_line!r}")
        status = int(parts[1])
        got: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                got[name.strip().lower()] = value.strip()
        if status != 101:
            body = b""
            length = got.get("content-length", "")
            if length.isdigit():
                with contextlib.suppress(asyncio.IncompleteReadError):
                    body = await reader.readexactly(int(length))
            raise HandshakeError(status, body.decode("utf-8", "replace") or status_line)
        if got.get("sec-websocket-accept") != accept_key(key):
            raise HandshakeError(status, "wrong Sec-WebSocket-Accept")
        protocol = got.get("sec-websocket-protocol", "")
        if protocol and protocol not in protocols:
            raise HandshakeError(status, f"server chose protocol {protocol!r} we did not offer")
    except BaseException:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
        raise
    return WebSocket(reader, writer, client=True), protocol


# -- a byte stream over binary messages (SPDY tunnelled in WebSocket) ------------------------


class WebSocketReader:
    """StreamReader-like view of the incoming messages as one byte stream.

    Pull-based: a message is received only when the buffer runs dry, so a slow consumer
    slows the peer down through TCP instead of growing a buffer."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._buffer = bytearray()
        self._eof = False

    async def _fill(self) -> bool:
        while not self._buffer and not self._eof:
            msg = await self._ws.recv()
            if msg is None:
                self._eof = True
            else:
                self._buffer += msg
        return bool(self._buffer)

    async def read(self, n: int = -1) -> bytes:
        """Up to n bytes (all buffered bytes for n < 0); b"" at EOF."""
        if n == 0 or not await self._fill():
            return b""
        if n < 0 or n >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly n bytes; asyncio.IncompleteReadError if the stream ends first."""
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while len(self._buffer) < n:
            if self._eof:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, n)
            msg = await self._ws.recv()
            if msg is None:
                self._eof = True
            else:
                self._buffer += msg
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def at_eof(self) -> bool:
        return self._eof and not self._buffer


class WebSocketWriter:
    """StreamWriter-like sink: write() buffers, drain() sends the buffer as one binary message."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._buffer = bytearray()
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None

    def write(self, data: bytes) -> None:
        if self._closing:
            raise ConnectionClosed(self._ws.close_code)
        self._buffer += data

    def writelines(self, data: list[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    async def drain(self) -> None:
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            await self._ws.send(data)
        elif self._ws.closed:
            raise ConnectionClosed(self._ws.close_code)

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        """Flush what is buffered, then run the closing handshake (in a task, as the
        transport's close is synchronous too)."""
        if self._closing:
            return
        self._closing = True
        self._close_task = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        if self._buffer and not self._ws.closed:
            data = bytes(self._buffer)
            self._buffer.clear()
            with contextlib.suppress(ConnectionError):
                await self._ws.send(data)
        await self._ws.close()

    async def wait_closed(self) -> None:
        if self._close_task is not None:
            await self._close_task

    def is_closing(self) -> bool:
        return self._closing or self._ws.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def byte_stream(ws: WebSocket) -> tuple[WebSocketReader, WebSocketWriter]:
    """A reader/writer pair for a byte protocol (SPDY) carried in binary messages."""
    return WebSocketReader(ws), WebSocketWriter(ws)


# -- Kubernetes channel framing ---------------------------------------------------------------


def channel_message(channel: int, data: bytes, *, base64: bool = False) -> bytes:
    """A channel message: the channel byte then the data (binary protocols), or for
    base64.channel.k8s.io the channel digit then the base64 data (sent as a text message).

    v5's CLOSE is channel_message(CLOSE, bytes([STDIN]))."""
    if base64:
        if not 0 <= channel <= 9:
            raise ValueError(f"channel {channel} cannot be sent on base64.channel.k8s.io")
        return str(channel).encode("ascii") + b64.b64encode(data)
    if not 0 <= channel <= 255:
        raise ValueError(f"channel {channel} is not a byte")
    return bytes([channel]) + data


def parse_channel_message(msg: bytes, *, base64: bool = False) -> tuple[int, bytes]:
    """(channel, data) of a received channel message; ValueError for a malformed one."""
    if not msg:
        raise ValueError("empty channel message has no channel byte")
    if not base64:
        return msg[0], msg[1:]
    digit = msg[:1]
    if not digit.isdigit():
        raise ValueError(f"base64 channel message starts with {digit!r}, not a digit")
    try:
        data = b64.b64decode(msg[1:], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"base64 channel {digit.decode()} payload is not base64") from None
    return int(digit), data


def portforward_channels(ports: list[int]) -> list[tuple[int, int]]:
    """(data, error) channel ids per port for kubelet's WebSocket port-forward: 2i and 2i+1."""
    for port in ports:
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 1-65535")
    return [(2 * i, 2 * i + 1) for i in range(len(ports))]


def port_prefix(port: int) -> bytes:
    """The first message's data on each port-forward channel: the port, 2 bytes little-endian."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return struct.pack("<H", port)
