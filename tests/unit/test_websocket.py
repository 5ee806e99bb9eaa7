"""RFC 6455 framing and the Kubernetes channel framings, over asyncio loopback sockets.

Raw frames in these tests are built and parsed here, by hand from RFC 6455 section 5.2, so
the module is checked against the wire format and not against itself."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from cri.streaming import websocket as wsmod
from cri.streaming.websocket import (
    CLOSE,
    ERROR,
    PROTOCOLS_EXEC,
    RESIZE,
    STDERR,
    STDIN,
    STDOUT,
    ConnectionClosed,
    HandshakeError,
    WebSocket,
    accept_key,
    byte_stream,
    channel_message,
    choose_protocol,
    connect,
    parse_channel_message,
    port_prefix,
    portforward_channels,
    server_handshake,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

Handler = Callable[[WebSocket, str], Awaitable[Any]]


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(30):  # a hang is a failure, not a stuck suite
            return await coro

    return asyncio.run(bounded())


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    first, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return first, headers


class Loopback:
    """A one-connection WebSocket server on 127.0.0.1; `result` gets the handler's outcome."""

    def __init__(self, handler: Handler, supported: list[str] | None = None, **ws_kw: Any):
        self.handler = handler
        self.supported = PROTOCOLS_EXEC if supported is None else supported
        self.ws_kw = ws_kw
        self.port = 0
        self.server: asyncio.Server | None = None
        self.result: asyncio.Future[Any] | None = None
        self.ws: WebSocket | None = None

    async def __aenter__(self) -> Loopback:
        self.result = asyncio.get_running_loop().create_future()
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.result is not None
        try:
            _, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
            try:
                protocol = await server_handshake(headers, writer, self.supported)
            except HandshakeError as e:
                body = e.message.encode()
                writer.write(
                    f"HTTP/1.1 {e.status} Bad Request\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                writer.close()
                self.result.set_result(e)
                return
            self.ws = WebSocket(reader, writer, client=False, **self.ws_kw)
            self.result.set_result(await self.handler(self.ws, protocol))
        except BaseException as e:
            if not self.result.done():
                self.result.set_exception(e)
        finally:
            writer.close()  # the handler's end drops the connection (if it did not close it)


# -- raw wire helpers (RFC 6455 5.2) -----------------------------------------------------------


def raw_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_raw_frame(reader: asyncio.StreamReader) -> tuple[bool, bool, int, bytes]:
    """(fin, masked, opcode, unmasked payload)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    masked = bool(b1 & 0x80)
    key = await reader.readexactly(4) if masked else b"\0\0\0\0"
    payload = await reader.readexactly(n)
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if masked else payload
    return bool(b0 & 0x80), masked, b0 & 0x0F, payload


async def raw_client(
    port: int, protocol: str = "v4.channel.k8s.io"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            "GET /exec/tok HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    assert status.startswith("HTTP/1.1 101 "), status
    return reader, writer, headers


async def expect_close(reader: asyncio.StreamReader) -> int | None:
    """Read frames until the server's close; return its code (None for an empty payload)."""
    while True:
        _, masked, opcode, payload = await read_raw_frame(reader)
        assert not masked
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0] if payload else None


async def recv_into(ws: WebSocket, _: str) -> tuple[bytes | None, int | None, str]:
    msg = await ws.recv()
    return msg, ws.close_code, ws.close_reason


# -- handshake ---------------------------------------------------------------------------------


def test_accept_key_is_the_rfc_example() -> None:
    assert accept_key(RFC_KEY) == RFC_ACCEPT


def test_choose_protocol_follows_server_preference() -> None:
    offered = ["channel.k8s.io", "v4.channel.k8s.io", "v5.channel.k8s.io"]
    assert choose_protocol(offered, PROTOCOLS_EXEC) == "v5.channel.k8s.io"
    assert choose_protocol(offered, ["channel.k8s.io", "v5.channel.k8s.io"]) == "channel.k8s.io"
    assert choose_protocol(["bogus"], PROTOCOLS_EXEC) is None
    assert choose_protocol([], PROTOCOLS_EXEC) is None
    assert choose_protocol([], [*PROTOCOLS_EXEC, ""]) == ""


def test_handshake_with_rfc_key_over_loopback() -> None:
    async def main() -> None:
        async with Loopback(recv_into) as lb:
            _, writer, headers = await raw_client(lb.port, "channel.k8s.io, v4.channel.k8s.io")
            assert headers["sec-websocket-accept"] == RFC_ACCEPT
            assert headers["upgrade"].lower() == "websocket"
            assert headers["sec-websocket-protocol"] == "v4.channel.k8s.io"
            writer.write(raw_frame(0x2, b"hi"))
            assert lb.result is not None
            msg, _, _ = await lb.result
            assert msg == b"hi"
            writer.close()

    run(main())


def test_connect_gets_the_servers_preferred_protocol() -> None:
    async def main() -> None:
        async def server(ws: WebSocket, protocol: str) -> str:
            await ws.send(protocol.encode())
            await ws.close()
            return protocol

        async with Loopback(server) as lb:
            ws, protocol = await connect(
                "127.0.0.1", lb.port, "/exec/x", ["v4.channel.k8s.io", "v5.channel.k8s.io"]
            )
            assert protocol == "v5.channel.k8s.io"
            assert await ws.recv() == b"v5.channel.k8s.io"
            assert await ws.recv() is None
            assert ws.close_code == 1000
            assert lb.result is not None
            assert await lb.result == "v5.channel.k8s.io"

    run(main())


class FakeWriter:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass


GOOD = {
    "upgrade": "websocket",
    "connection": "Upgrade",
    "sec-websocket-key": RFC_KEY,
    "sec-websocket-version": "13",
    "sec-websocket-protocol": "v4.channel.k8s.io",
}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"sec-websocket-key": None}, "Sec-WebSocket-Key"),
        ({"sec-websocket-key": "c2hvcnQ="}, "16 bytes"),
        ({"sec-websocket-key": "!!!notbase64!!!"}, "not base64"),
        ({"sec-websocket-version": "8"}, "Version"),
        ({"sec-websocket-version": None}, "Version"),
        ({"upgrade": "h2c"}, "Upgrade"),
        ({"connection": "keep-alive"}, "Connection"),
        ({"sec-websocket-protocol": "bogus.k8s.io"}, "not supported"),
    ],
)
def test_bad_handshake_is_400_and_writes_nothing(change: dict[str, str | None], words: str) -> None:
    headers = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    writer = FakeWriter()
    with pytest.raises(HandshakeError) as info:
        run(server_handshake(headers, cast(Any, writer), PROTOCOLS_EXEC))
    assert info.value.status == 400
    assert words in str(info.value)
    assert writer.data == b""


def test_good_handshake_response_bytes() -> None:
    writer = FakeWriter()
    assert run(server_handshake(GOOD, cast(Any, writer), PROTOCOLS_EXEC)) == "v4.channel.k8s.io"
    status, headers = parse_head(writer.data)
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert writer.data.endswith(b"\r\n\r\n")
    assert headers["sec-websocket-accept"] == RFC_ACCEPT
    assert headers["connection"] == "Upgrade"


def test_client_sees_400_for_unsupported_protocol_and_missing_key() -> None:
    async def main() -> None:
        async with Loopback(recv_into) as lb:
            with pytest.raises(HandshakeError) as info:
                await connect("127.0.0.1", lb.port, "/exec/x", ["bogus.k8s.io"])
            assert info.value.status == 400
            assert "not supported" in info.value.message
        async with Loopback(recv_into) as lb:
            reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
            writer.write(
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            status, _ = parse_head(await reader.readuntil(b"\r\n\r\n"))
            assert status.startswith("HTTP/1.1 400 ")
            writer.close()

    run(main())


# -- messages ----------------------------------------------------------------------------------


async def echo(ws: WebSocket, _: str) -> int:
    count = 0
    while (msg := await ws.recv()) is not None:
        await ws.send(msg, binary=ws.last_binary)
        count += 1
    return count


SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000, 1 << 20]


def test_round_trip_all_length_encodings() -> None:
    async def main() -> None:
        async with Loopback(echo) as lb:
            ws, _ = await connect("127.0.0.1", lb.port, "/", ["v5.channel.k8s.io"])
            for n in SIZES:
                data = os.urandom(n)
                await ws.send(data)
                assert await ws.recv() == data
                assert ws.last_binary
            text = "h\u00e9llo \u2603".encode()
            await ws.send(text, binary=False)
            assert await ws.recv() == text
            assert not ws.last_binary
            await ws.close()
            assert lb.result is not None
            assert await lb.result == len(SIZES) + 1

    run(main())


def test_client_frames_are_masked_and_server_frames_not() -> None:
    async def main() -> None:
        async def server(ws: WebSocket, _: str) -> None:
            await ws.send(b"x" * 300)
            await ws.recv()

        async with Loopback(server) as lb:
            reader, writer, _ = await raw_client(lb.port)
            fin, masked, opcode, payload = await read_raw_frame(reader)
            assert (fin, masked, opcode, payload) == (True, False, 0x2, b"x" * 300)
            writer.write(raw_frame(0x8, struct.pack("!H", 1000)))
            assert await expect_close(reader) == 1000
            writer.close()

        got: asyncio.Future[tuple[bool, bytes]] = asyncio.get_running_loop().create_future()

        async def raw_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
            await server_handshake(headers, writer, ["v4.channel.k8s.io"])
            _, masked, _, payload = await read_raw_frame(reader)
            got.set_result((masked, payload))
            writer.write(raw_frame(0x8, struct.pack("!H", 1000), mask=False))
            await writer.drain()
            writer.close()

        server_ = await asyncio.start_server(raw_server, "127.0.0.1", 0)
        port = server_.sockets[0].getsockname()[1]
        ws, _ = await connect("127.0.0.1", port, "/", ["v4.channel.k8s.io"])
        await ws.send(b"payload-from-client")
        assert await got == (True, b"payload-from-client")
        assert await ws.recv() is None
        server_.close()
        await server_.wait_closed()

    run(main())


def test_fragmented_messages_with_interleaved_ping() -> None:
    async def main() -> None:
        async def server(ws: WebSocket, _: str) -> list[tuple[bytes | None, bool]]:
            out = []
            for _i in range(2):
                out.append((await ws.recv(), ws.last_binary))
            return out

        async with Loopback(server) as lb:
            reader, writer, _ = await raw_client(lb.port)
            writer.write(raw_frame(0x1, "Hé".encode()[:2], fin=False))  # splits the é
            writer.write(raw_frame(0x9, b"are you there"))
            writer.write(raw_frame(0x0, "Hé".encode()[2:] + b"llo", fin=True))
            writer.write(raw_frame(0x2, b"a", fin=False))
            writer.write(raw_frame(0x0, b"b" * 200, fin=False))
            writer.write(raw_frame(0x0, b"c" * 70000, fin=True))
            _, masked, opcode, payload = await read_raw_frame(reader)
            assert (masked, opcode, payload) == (False, 0xA, b"are you there")
            assert lb.result is not None
            assert await lb.result == [
                ("Héllo".encode(), False),
                (b"a" + b"b" * 200 + b"c" * 70000, True),
            ]
            writer.close()

    run(main())


def test_ping_from_server_gets_pong_from_client() -> None:
    async def main() -> None:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def raw_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
            await server_handshake(headers, writer, ["v4.channel.k8s.io"])
            writer.write(raw_frame(0x9, b"p1", mask=False))
            writer.write(raw_frame(0x2, b"data", mask=False))
            _, masked, opcode, payload = await read_raw_frame(reader)
            assert masked and opcode == 0xA
            got.set_result(payload)
            writer.close()

        server_ = await asyncio.start_server(raw_server, "127.0.0.1", 0)
        port = server_.sockets[0].getsockname()[1]
        ws, _ = await connect("127.0.0.1", port, "/", ["v4.channel.k8s.io"])
        assert await ws.recv() == b"data"
        assert await got == b"p1"
        assert await ws.recv() is None
        assert ws.close_code == 1006  # the raw server dropped TCP without a close frame
        server_.close()
        await server_.wait_closed()

    run(main())


# -- closing -----------------------------------------------------------------------------------


def test_close_code_and_reason_reach_the_peer() -> None:
    async def main() -> None:
        async with Loopback(recv_into) as lb:
            ws, _ = await connect("127.0.0.1", lb.port, "/", ["v4.channel.k8s.io"])
            await ws.close(4000, "bye now")
            assert lb.result is not None
            assert await lb.result == (None, 4000, "bye now")
            assert ws.close_code == 4000
            assert await ws.recv() is None
            with pytest.raises(ConnectionClosed):
                await ws.send(b"late")

    run(main())


def test_server_echoes_close_frame() -> None:
    async def main() -> None:
        async with Loopback(recv_into) as lb:
            reader, writer, _ = await raw_client(lb.port)
            writer.write(raw_frame(0x8, struct.pack("!H", 1001) + b"going"))
            assert await expect_close(reader) == 1001
            assert await reader.read() == b""  # then the server drops TCP
            assert lb.result is not None
            assert await lb.result == (None, 1001, "going")
            writer.close()
        async with Loopback(recv_into) as lb:
            reader, writer, _ = await raw_client(lb.port)
            writer.write(raw_frame(0x8, b""))
            assert await expect_close(reader) is None
            assert lb.result is not None
            assert await lb.result == (None, 1005, "")
            writer.close()

    run(main())


def test_close_while_another_task_receives() -> None:
    async def main() -> None:
        async def server(ws: WebSocket, _: str) -> int | None:
            reading = asyncio.create_task(ws.recv())
            await asyncio.sleep(0)
            await ws.close(1000)
            assert await reading is None
            return ws.close_code

        async with Loopback(server) as lb:
            ws, _ = await connect("127.0.0.1", lb.port, "/", ["v4.channel.k8s.io"])
            assert await ws.recv() is None
            assert ws.close_code == 1000
            assert lb.result is not None
            assert await lb.result == 1000

    run(main())


def test_recv_during_close_returns_none() -> None:
    async def main() -> None:
        async def server(ws: WebSocket, _: str) -> None:
            await ws.recv()  # the client's close

        async with Loopback(server) as lb:
            ws, _ = await connect("127.0.0.1", lb.port, "/", ["v4.channel.k8s.io"])
            closing = asyncio.create_task(ws.close())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert await ws.recv() is None
            await closing
            assert ws.close_code == 1000
            assert lb.result is not None
            await lb.result

    run(main())


def test_concurrent_recv_is_refused() -> None:
    async def main() -> None:
        async with Loopback(recv_into) as lb:
            ws, _ = await connect("127.0.0.1", lb.port, "/", ["v4.channel.k8s.io"])
            first = asyncio.create_task(ws.recv())
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="already running"):
                await ws.recv()
            await ws.send(b"x")  # the server's one recv returns; then it drops the socket
            assert lb.result is not None
            assert await lb.result == (b"x", None, "")
            assert await first is None
            assert ws.close_code == 1006

    run(main())


def test_close_rejects_reserved_codes() -> None:
    async def main() -> None:
        async with Loopback(recv_into) as lb:
            ws, _ = await connect("127.0.0.1", lb.port, "/", ["v4.channel.k8s.io"])
            for code in (999, 1005, 1006, 1015, 5000):
                with pytest.raises(ValueError):
                    await ws.close(code)
            with pytest.raises(ValueError):
                await ws.close(1000, "x" * 124)
            await ws.close(1000)

    run(main())


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param([raw_frame(0x2, b"unmasked", mask=False)], 1002, id="unmasked-client-frame"),
        pytest.param([raw_frame(0x0, b"orphan")], 1002, id="continuation-without-start"),
        pytest.param(
            [raw_frame(0x2, b"a", fin=False), raw_frame(0x2, b"b")], 1002, id="nested-message"
        ),
        pytest.param([raw_frame(0x3, b"x")], 1002, id="reserved-opcode"),
        pytest.param([raw_frame(0x2, b"x", rsv=0x40)], 1002, id="rsv1-without-extension"),
        pytest.param([raw_frame(0x9, b"p", fin=False)], 1002, id="fragmented-ping"),
        pytest.param([raw_frame(0x9, b"p" * 126)], 1002, id="long-ping"),
        pytest.param([raw_frame(0x8, b"\x03")], 1002, id="one-byte-close"),
        pytest.param([raw_frame(0x8, struct.pack("!H", 999))], 1002, id="bad-close-code"),
        pytest.param([raw_frame(0x8, struct.pack("!H", 1006))], 1002, id="reserved-close-code"),
        pytest.param([raw_frame(0x1, b"\xff\xfe")], 1007, id="text-not-utf8"),
        pytest.param([raw_frame(0x1, "é".encode()[:1])], 1007, id="text-truncated-utf8"),
    ],
)
def test_protocol_violations_close_the_connection(frames: list[bytes], code: int) -> None:
    async def main() -> None:
        async with Loopback(recv_into) as lb:
            reader, writer, _ = await raw_client(lb.port)
            writer.writelines(frames)
            assert await expect_close(reader) == code
            assert await reader.read() == b""
            assert lb.result is not None
            msg, close_code, _ = await lb.result
            assert (msg, close_code) == (None, code)
            writer.close()

    run(main())


def test_client_rejects_masked_server_frame() -> None:
    async def main() -> None:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def raw_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
            await server_handshake(headers, writer, ["v4.channel.k8s.io"])
            writer.write(raw_frame(0x2, b"masked", mask=True))
            _, masked, opcode, payload = await read_raw_frame(reader)
            assert masked and opcode == 0x8
            got.set_result(struct.unpack("!H", payload[:2])[0])
            writer.close()

        server_ = await asyncio.start_server(raw_server, "127.0.0.1", 0)
        port = server_.sockets[0].getsockname()[1]
        ws, _ = await connect("127.0.0.1", port, "/", ["v4.channel.k8s.io"])
        assert await ws.recv() is None
        assert ws.close_code == 1002
        assert await got == 1002
        server_.close()
        await server_.wait_closed()

    run(main())


def test_oversize_messages_close_with_1009() -> None:
    async def main() -> None:
        # one frame whose header alone announces too much: refused before any payload
        async with Loopback(recv_into) as lb:
            reader, writer, _ = await raw_client(lb.port)
            n = wsmod.MAX_MESSAGE + 1
            writer.write(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", n) + b"\0\0\0\0")
            assert await expect_close(reader) == 1009
            writer.close()
        # fragments that are each small but together too much
        async with Loopback(recv_into, max_message=1000) as lb:
            reader, writer, _ = await raw_client(lb.port)
            writer.write(raw_frame(0x2, b"a" * 600, fin=False))
            writer.write(raw_frame(0x0, b"b" * 600, fin=True))
            assert await expect_close(reader) == 1009
            assert lb.result is not None
            assert (await lb.result)[1] == 1009
            writer.close()
        # exactly the limit is fine
        async with Loopback(recv_into, max_message=1000) as lb:
            reader, writer, _ = await raw_client(lb.port)
            writer.write(raw_frame(0x2, b"a" * 400, fin=False))
            writer.write(raw_frame(0x0, b"b" * 600, fin=True))
            assert lb.result is not None
            assert (await lb.result)[0] == b"a" * 400 + b"b" * 600
            writer.close()

    run(main())


def test_eof_without_close_frame_is_1006() -> None:
    async def main() -> None:
        async with Loopback(recv_into) as lb:
            _, writer, _ = await raw_client(lb.port)
            writer.write(raw_frame(0x2, b"partial")[:5])
            writer.close()
            assert lb.result is not None
            assert await lb.result == (None, 1006, "")

    run(main())


# -- Kubernetes channel framing ----------------------------------------------------------------


def test_channel_constants() -> None:
    assert (STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE) == (0, 1, 2, 3, 4, 255)


def test_binary_channel_messages() -> None:
    assert channel_message(STDOUT, b"hello") == b"\x01hello"
    assert parse_channel_message(b"\x02err") == (STDERR, b"err")
    assert parse_channel_message(b"\x00") == (STDIN, b"")
    # v5: closing stdin is a CLOSE-channel message carrying the stdin channel id
    assert channel_message(CLOSE, bytes([STDIN])) == b"\xff\x00"
    assert parse_channel_message(b"\xff\x00") == (CLOSE, b"\x00")
    resize = b'{"Width":80,"Height":24}'
    assert parse_channel_message(channel_message(RESIZE, resize)) == (RESIZE, resize)
    with pytest.raises(ValueError, match="channel 256"):
        channel_message(256, b"")
    with pytest.raises(ValueError, match="empty"):
        parse_channel_message(b"")


def test_base64_channel_messages() -> None:
    data = bytes(range(256))
    msg = channel_message(STDERR, data, base64=True)
    assert msg == b"2" + base64.b64encode(data)
    msg.decode("ascii")  # goes in a text message
    assert parse_channel_message(msg, base64=True) == (STDERR, data)
    assert parse_channel_message(b"1aGk=", base64=True) == (STDOUT, b"hi")
    assert parse_channel_message(b"0", base64=True) == (STDIN, b"")
    with pytest.raises(ValueError, match="not a digit"):
        parse_channel_message(b"\x01aGk=", base64=True)
    with pytest.raises(ValueError, match="not base64"):
        parse_channel_message(b"1a$k=", base64=True)
    with pytest.raises(ValueError):
        channel_message(CLOSE, b"\x00", base64=True)


def test_channel_messages_over_the_wire_base64_as_text() -> None:
    async def main() -> None:
        async def server(ws: WebSocket, protocol: str) -> tuple[int, bytes]:
            b64 = protocol == "base64.channel.k8s.io"
            msg = await ws.recv()
            assert msg is not None and ws.last_binary is not b64
            await ws.send(channel_message(STDOUT, b"out\n", base64=b64), binary=not b64)
            await ws.close()
            return parse_channel_message(msg, base64=b64)

        async with Loopback(server) as lb:
            ws, protocol = await connect("127.0.0.1", lb.port, "/", ["base64.channel.k8s.io"])
            assert protocol == "base64.channel.k8s.io"
            await ws.send(channel_message(STDIN, b"\x00\xffin", base64=True), binary=False)
            msg = await ws.recv()
            assert msg == b"1" + base64.b64encode(b"out\n") and not ws.last_binary
            assert await ws.recv() is None
            assert lb.result is not None
            assert await lb.result == (STDIN, b"\x00\xffin")

    run(main())


def test_portforward_channels_and_port_prefix() -> None:
    assert portforward_channels([80]) == [(0, 1)]
    assert portforward_channels([80, 443, 8080]) == [(0, 1), (2, 3), (4, 5)]
    assert portforward_channels([]) == []
    assert port_prefix(80) == b"\x50\x00"
    assert port_prefix(8080) == b"\x90\x1f"  # little-endian, as kubelet writes it
    assert port_prefix(65535) == b"\xff\xff"
    for bad in (0, 65536, -1):
        with pytest.raises(ValueError, match="out of range"):
            port_prefix(bad)
        with pytest.raises(ValueError, match="out of range"):
            portforward_channels([80, bad])
    data, err = portforward_channels([8080, 9090])[1]
    assert channel_message(data, port_prefix(9090)) == b"\x02\x82\x23"
    assert channel_message(err, port_prefix(9090)) == b"\x03\x82\x23"


# -- byte stream -------------------------------------------------------------------------------


def test_byte_stream_both_ways_with_unaligned_boundaries() -> None:
    stream = os.urandom(100_000)
    cuts = [3, 1, 4096, 1, 5, 70_000]  # message sizes the writer drains at

    def pieces(data: bytes) -> list[bytes]:
        out, i = [], 0
        for n in [*cuts, len(data)]:
            if i >= len(data):
                break
            out.append(data[i : i + n])
            i += n
        return out

    async def pump_out(writer: Any, data: bytes) -> None:
        for piece in pieces(data):
            half = len(piece) // 2
            writer.write(piece[:half])  # two writes, one drain: one message
            writer.write(piece[half:])
            await writer.drain()

    async def read_back(reader: Any, total: int) -> bytes:
        got = bytearray()
        sizes = [2, 7, 4095, 10, 33_333]
        i = 0
        while len(got) < total:
            n = min(sizes[i % len(sizes)], total - len(got))
            if i % 2:
                got += await reader.readexactly(n)
            else:
                chunk = await reader.read(n)
                assert 0 < len(chunk) <= n
                got += chunk
            i += 1
        return bytes(got)

    async def main() -> None:
        async def server(ws: WebSocket, _: str) -> tuple[bytes, bytes, bool]:
            reader, writer = byte_stream(ws)
            assert writer.get_extra_info("peername") is None
            assert not writer.is_closing()
            received = await read_back(reader, len(stream))
            await pump_out(writer, received[::-1])
            tail = await reader.readexactly(len(b"flushed by close"))
            assert await reader.read(10) == b""  # client closed: EOF
            with pytest.raises(asyncio.IncompleteReadError):
                await reader.readexactly(1)
            return received, tail, reader.at_eof()

        async with Loopback(server, supported=["SPDY/3.1+portforward.k8s.io"]) as lb:
            ws, protocol = await connect(
                "127.0.0.1", lb.port, "/portforward/t", ["SPDY/3.1+portforward.k8s.io"]
            )
            assert protocol == "SPDY/3.1+portforward.k8s.io"
            reader, writer = byte_stream(ws)
            await pump_out(writer, stream)
            assert await read_back(reader, len(stream)) == stream[::-1]
            writer.write(b"flushed by close")
            writer.close()
            assert writer.is_closing()
            await writer.wait_closed()
            assert lb.result is not None
            received, tail, at_eof = await lb.result
            assert received == stream
            assert tail == b"flushed by close"
            assert at_eof
            with pytest.raises(ConnectionClosed):
                writer.write(b"after close")

    run(main())


def test_byte_stream_readexactly_partial_at_eof() -> None:
    async def main() -> None:
        async def server(ws: WebSocket, _: str) -> bytes:
            reader, _writer = byte_stream(ws)
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(10)
            assert reader.at_eof()
            assert await reader.read() == b""
            return info.value.partial

        async with Loopback(server) as lb:
            ws, _ = await connect("127.0.0.1", lb.port, "/", ["v4.channel.k8s.io"])
            await ws.send(b"abc")
            await ws.send(b"")
            await ws.send(b"de")
            await ws.close()
            assert lb.result is not None
            assert await lb.result == b"abcde"

    run(main())
