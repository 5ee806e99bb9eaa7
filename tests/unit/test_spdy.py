"""SPDY/3.1 framing and sessions (cri/streaming/spdy.py) over socketpairs.

The header-compression checks decode with zlib and a name/value parser written here from the
draft, against the dictionary as the draft lists it in hex, so they do not trust the module's own
codec. Waits are for conditions, never for durations.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import struct
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cri.streaming import spdy
from cri.streaming.spdy import (
    DataFrame,
    GoAwayFrame,
    HeaderCompressor,
    HeaderDecompressor,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    SpdyError,
    SpdySession,
    SpdyStream,
    SynReplyFrame,
    SynStreamFrame,
    UnknownControlFrame,
    WindowUpdateFrame,
    decode_frame,
    encode_frame,
    parse_head,
    read_frame,
)

# The SPDY/3 header dictionary exactly as the draft lists it (section 2.6.10.1), 8 bytes a line.
SPEC_DICTIONARY_HEX = """
000000076f707469 6f6e730000000468 6561640000000470 6f73740000000370 7574000000066465
6c65746500000005 7472616365000000 0661636365707400 00000e6163636570 742d636861727365
740000000f616363 6570742d656e636f 64696e670000000f 6163636570742d6c 616e677561676500
00000d6163636570 742d72616e676573 0000000361676500 000005616c6c6f77 0000000d61757468
6f72697a6174696f 6e0000000d636163 68652d636f6e7472 6f6c0000000a636f 6e6e656374696f6e
0000000c636f6e74 656e742d62617365 00000010636f6e74 656e742d656e636f 64696e6700000010
636f6e74656e742d 6c616e6775616765 0000000e636f6e74 656e742d6c656e67 746800000010636f
6e74656e742d6c6f 636174696f6e0000 000b636f6e74656e 742d6d6435000000 0d636f6e74656e74
2d72616e67650000 000c636f6e74656e 742d747970650000 0004646174650000 0004657461670000
0006657870656374 0000000765787069 7265730000000466 726f6d0000000468 6f73740000000869
662d6d6174636800 00001169662d6d6f 6469666965642d73 696e63650000000d 69662d6e6f6e652d
6d61746368000000 0869662d72616e67 650000001369662d 756e6d6f64696669 65642d73696e6365
0000000d6c617374 2d6d6f6469666965 64000000086c6f63 6174696f6e000000 0c6d61782d666f72
7761726473000000 06707261676d6100 00001270726f7879 2d61757468656e74 6963617465000000
1370726f78792d61 7574686f72697a61 74696f6e00000005 72616e6765000000 0772656665726572
0000000b72657472 792d616674657200 0000067365727665 7200000002746500 000007747261696c
6572000000117472 616e736665722d65 6e636f64696e6700 0000077570677261 64650000000a7573
65722d6167656e74 0000000476617279 0000000376696100 0000077761726e69 6e67000000107777
772d61757468656e 7469636174650000 00066d6574686f64 0000000367657400 0000067374617475
7300000006323030 204f4b0000000776 657273696f6e0000 0008485454502f31 2e31000000037572
6c00000006707562 6c69630000000a73 65742d636f6f6b69 650000000a6b6565 702d616c69766500
0000066f72696769 6e31303031303132 3031323032323035 3230363330303330 3233303333303433
3035333036333037 3430323430353430 3634303734303834 3039343130343131 3431323431333431
3434313534313634 3137353032353034 353035323033204e 6f6e2d417574686f 7269746174697665
20496e666f726d61 74696f6e32303420 4e6f20436f6e7465 6e74333031204d6f 766564205065726d
616e656e746c7934 3030204261642052 6571756573743430 3120556e61757468 6f72697a65643430
3320466f72626964 64656e343034204e 6f7420466f756e64 35303020496e7465 726e616c20536572
766572204572726f 72353031204e6f74 20496d706c656d65 6e74656435303320 5365727669636520
556e617661696c61 626c654a616e2046 6562204d61722041 7072204d6179204a 756e204a756c2041
7567205365707420 4f6374204e6f7620 4465632030303a30 303a3030204d6f6e 2c205475652c2057
65642c205468752c 204672692c205361 742c2053756e2c20 474d546368756e6b 65642c746578742f
68746d6c2c696d61 67652f706e672c69 6d6167652f6a7067 2c696d6167652f67 69662c6170706c69
636174696f6e2f78 6d6c2c6170706c69 636174696f6e2f78 68746d6c2b786d6c 2c746578742f706c
61696e2c74657874 2f6a617661736372 6970742c7075626c 6963707269766174 656d61782d616765
3d677a69702c6465 666c6174652c7364 6368636861727365 743d7574662d3863 6861727365743d69
736f2d383835392d 312c7574662d2c2a 2c656e713d302e
"""
SPEC_DICTIONARY = bytes.fromhex("".join(SPEC_DICTIONARY_HEX.split()))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run a scenario; fail on anything reported to the loop or any task left running."""

    async def main() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        async with asyncio.timeout(60):  # a hang guard, not a timing assertion
            await scenario()
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert leftover == []
        return reported

    assert asyncio.run(main()) == []


async def connected_pair() -> tuple[
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
]:
    a, b = socket.socketpair()
    return await asyncio.open_connection(sock=a), await asyncio.open_connection(sock=b)


async def session_pair() -> tuple[SpdySession, SpdySession]:
    (cr, cw), (sr, sw) = await connected_pair()
    client = SpdySession(cr, cw, client=True)
    server = SpdySession(sr, sw, client=False)
    client.start()
    server.start()
    return client, server


async def wait_until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


async def read_all(stream: SpdyStream) -> bytes:
    chunks = []
    while chunk := await stream.read():
        chunks.append(chunk)
    return b"".join(chunks)


class RawPeer:
    """A peer that writes frames by hand (like spdystream: no SETTINGS, no flow control)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.compressor = HeaderCompressor()
        self.decompressor = HeaderDecompressor()

    async def send(self, frame: spdy.Frame) -> None:
        await self.send_raw(encode_frame(frame, self.compressor))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> spdy.Frame | None:
        return await read_frame(self.reader, self.decompressor)

    async def recv_kind(self, kind: type[Any]) -> Any:
        while True:
            frame = await self.recv()
            assert frame is not None, f"EOF while waiting for {kind.__name__}"
            if isinstance(frame, kind):
                return frame

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


# -- spec constants and the header block codec -------------------------------------------------


def test_dictionary_is_the_spec_listing() -> None:
    assert len(SPEC_DICTIONARY) == 1423
    assert spdy.SPDY3_DICTIONARY == SPEC_DICTIONARY


def spec_parse_block(raw: bytes) -> list[tuple[bytes, bytes]]:
    """Name/value block per the draft: u32 count, then (u32 len, name, u32 len, value) pairs."""
    (count,) = struct.unpack_from(">I", raw)
    pos, pairs = 4, []
    for _ in range(count):
        (nlen,) = struct.unpack_from(">I", raw, pos)
        name = raw[pos + 4 : pos + 4 + nlen]
        pos += 4 + nlen
        (vlen,) = struct.unpack_from(">I", raw, pos)
        value = raw[pos + 4 : pos + 4 + vlen]
        pos += 4 + vlen
        pairs.append((name, value))
    assert pos == len(raw)
    return pairs


def spec_build_block(pairs: list[tuple[bytes, bytes]]) -> bytes:
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


def test_header_compression_decodes_with_plain_zlib_and_the_spec_dictionary() -> None:
    ours = HeaderCompressor()
    theirs = zlib.decompressobj(zdict=SPEC_DICTIONARY)
    blocks = [
        {"streamtype": "error"},
        {"streamtype": "stdin", "Extra": "a\x00b"},
        {"streamtype": "data", "port": "8080", "requestid": "7"},
    ]
    for headers in blocks:
        compressed = ours.compress(headers)
        # Z_SYNC_FLUSH ends every block with an empty stored block.
        assert compressed.endswith(b"\x00\x00\xff\xff")
        raw = theirs.decompress(compressed)
        expected = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        assert spec_parse_block(raw) == expected


def test_header_decompression_of_blocks_compressed_with_plain_zlib() -> None:
    theirs = zlib.compressobj(zdict=SPEC_DICTIONARY)
    ours = HeaderDecompressor()
    for pairs in (
        [(b"streamtype", b"stdout")],
        [(b"streamtype", b"stdout"), (b"x-multi", b"one\x00two")],
        [],
    ):
        data = theirs.compress(spec_build_block(pairs)) + theirs.flush(zlib.Z_SYNC_FLUSH)
        assert ours.decompress(data) == {k.decode(): v.decode() for k, v in pairs}


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00",  # shorter than the count
        struct.pack(">I", 5),  # claims pairs it does not have
        spec_build_block([(b"", b"x")]),  # empty name
        spec_build_block([(b"a", b"1"), (b"a", b"2")]),  # duplicate name
        spec_build_block([(b"a", b"1")]) + b"junk",  # trailing bytes
        spec_build_block([(b"a", b"1")])[:-1],  # truncated value
    ],
)
def test_malformed_header_blocks_are_refused(raw: bytes) -> None:
    z = zlib.compressobj(zdict=SPEC_DICTIONARY)
    with pytest.raises(SpdyError):
        HeaderDecompressor().decompress(z.compress(raw) + z.flush(zlib.Z_SYNC_FLUSH))


def test_header_bomb_and_corrupt_stream_are_refused() -> None:
    z = zlib.compressobj(zdict=SPEC_DICTIONARY)
    bomb = spec_build_block([(b"a", b"\x00" * (2 << 20))])
    with pytest.raises(SpdyError, match="larger than"):
        HeaderDecompressor().decompress(z.compress(bomb) + z.flush(zlib.Z_SYNC_FLUSH))
    with pytest.raises(SpdyError, match="decompress"):
        HeaderDecompressor().decompress(b"\x78\xbb garbage that is not deflate")


# -- frames ----------------------------------------------------------------------------------------

ALL_FRAMES: list[spdy.Frame] = [
    DataFrame(1, b"payload"),
    DataFrame(3, b"", spdy.FLAG_FIN),
    SynStreamFrame(1, {"streamtype": "stdin"}, associated_stream_id=0, priority=3, slot=0),
    SynStreamFrame(5, {"streamtype": "data", "port": "80"}, flags=spdy.FLAG_FIN),
    SynReplyFrame(1, {}),
    SynReplyFrame(3, {"status": "200"}, flags=spdy.FLAG_FIN),
    RstStreamFrame(7, spdy.CANCEL),
    SettingsFrame(((spdy.SETTINGS_INITIAL_WINDOW_SIZE, 65536, 0), (4, 100, 1))),
    SettingsFrame((), flags=spdy.FLAG_SETTINGS_CLEAR_SETTINGS),
    PingFrame(1),
    PingFrame(0xFFFFFFFE),
    GoAwayFrame(5, spdy.GOAWAY_PROTOCOL_ERROR),
    HeadersFrame(1, {"trailer": "x"}, flags=spdy.FLAG_FIN),
    WindowUpdateFrame(0, 32768),
    WindowUpdateFrame(3, spdy.MAX_WINDOW),
    UnknownControlFrame(0x0A, 0, b"credential"),
]


def test_every_frame_type_round_trips_in_sequence() -> None:
    compressor, decompressor = HeaderCompressor(), HeaderDecompressor()
    wire = b"".join(encode_frame(f, compressor) for f in ALL_FRAMES)
    decoded = []
    while wire:
        head = parse_head(wire[:8])
        decoded.append(decode_frame(head, wire[8 : 8 + head.length], decompressor))
        wire = wire[8 + head.length :]
    assert decoded == ALL_FRAMES


def test_frame_layouts_match_the_draft() -> None:
    # Control frame: C bit, version 3, type; flags and 24-bit length.
    assert encode_frame(PingFrame(7)) == bytes.fromhex("80030006 00000004 00000007")
    assert encode_frame(RstStreamFrame(3, 5)) == bytes.fromhex(
        "80030003 00000008 00000003 00000005"
    )
    assert encode_frame(WindowUpdateFrame(1, 0x8000)) == bytes.fromhex(
        "80030009 00000008 00000001 00008000"
    )
    assert encode_frame(GoAwayFrame(9, 0)) == bytes.fromhex("80030007 00000008 00000009 00000000")
    # SETTINGS entry: flags(8) id(24) value(32).
    assert encode_frame(SettingsFrame(((7, 65536, 1),))) == bytes.fromhex(
        "80030004 0000000c 00000001 01000007 00010000"
    )
    # DATA: C bit clear, stream id, flags, length.
    assert encode_frame(DataFrame(5, b"ab", spdy.FLAG_FIN)) == bytes.fromhex(
        "00000005 01000002 6162"
    )
    syn = encode_frame(SynStreamFrame(1, {"a": "b"}, priority=2), HeaderCompressor())
    assert syn[:4] == bytes.fromhex("80030001")
    assert syn[8:18] == bytes.fromhex("00000001 00000000 4000")
    raw = zlib.decompressobj(zdict=SPEC_DICTIONARY).decompress(syn[18:])
    assert spec_parse_block(raw) == [(b"a", b"b")]


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (bytes.fromhex("80020006 00000004 00000001"), "version"),
        (bytes.fromhex("80030006 00000008 0000000100000000"), "PING"),
        (bytes.fromhex("80030003 00000004 00000001"), "RST_STREAM"),
        (bytes.fromhex("80030001 00000002 0000"), "SYN_STREAM"),
        (bytes.fromhex("80030004 00000008 00000005 00000000"), "SETTINGS"),
        (bytes.fromhex("80030009 00000004 00000001"), "WINDOW_UPDATE"),
        (bytes.fromhex("80030007 00ffffff"), "refused"),
        (bytes.fromhex("00000000 00000000"), "stream 0"),
    ],
)
def test_malformed_frames_raise(wire: bytes, match: str) -> None:
    with pytest.raises(SpdyError, match=match):
        head = parse_head(wire[:8])
        decode_frame(head, wire[8:], HeaderDecompressor())


def test_encode_refuses_out_of_range_values() -> None:
    with pytest.raises(SpdyError):
        encode_frame(WindowUpdateFrame(1, 0))
    with pytest.raises(SpdyError):
        encode_frame(RstStreamFrame(1 << 31, 1))
    with pytest.raises(SpdyError):
        encode_frame(SynReplyFrame(1, {}))  # no compressor


# -- sessions --------------------------------------------------------------------------------------


def test_client_opens_kubernetes_streams_and_server_echoes_them_in_order() -> None:
    async def scenario() -> None:
        client, server = await session_pair()
        accepted: list[SpdyStream] = []

        async def serve() -> None:
            echoes = []
            while (stream := await server.accept_stream()) is not None:
                accepted.append(stream)
                echoes.append(asyncio.create_task(echo(stream)))
            await asyncio.gather(*echoes)

        async def echo(stream: SpdyStream) -> None:
            data = await read_all(stream)
            await stream.write(b"echo:" + data)
            await stream.close()

        serving = asyncio.create_task(serve())
        streams = []
        for kind in ("error", "stdin", "stdout"):
            streams.append(await client.open_stream({"streamtype": kind}))
        assert [s.id for s in streams] == [1, 3, 5]
        for s in streams:
            await s.write(s.headers["streamtype"].encode())
            await s.close()
        results = [await read_all(s) for s in streams]
        assert results == [b"echo:error", b"echo:stdin", b"echo:stdout"]
        assert [(s.id, s.headers) for s in accepted] == [
            (1, {"streamtype": "error"}),
            (3, {"streamtype": "stdin"}),
            (5, {"streamtype": "stdout"}),
        ]
        assert client.counters["received:SYN_REPLY"] == 3
        await client.close()
        await serving
        await server.close()

    run(scenario)


def test_half_close_read_returns_empty_after_fin_and_other_direction_stays_open() -> None:
    async def scenario() -> None:
        client, server = await session_pair()
        opening = asyncio.create_task(client.open_stream({"streamtype": "stdin"}))
        sstream = await server.accept_stream()
        assert sstream is not None
        cstream = await opening
        await cstream.write(b"hello")
        await cstream.close()
        assert await sstream.read() == b"hello"
        assert await sstream.read() == b""
        assert await sstream.read() == b""  # stays at EOF
        with pytest.raises(SpdyError, match="after close"):
            await cstream.write(b"more")
        await sstream.write(b"back")
        await sstream.close()
        assert await cstream.read() == b"back"
        assert await cstream.read() == b""
        await client.close()
        await server.close()

    run(scenario)


def test_one_mib_transfer_waits_for_window_updates() -> None:
    payload = os.urandom(1 << 20)

    async def scenario() -> None:
        client, server = await session_pair()
        opening = asyncio.create_task(client.open_stream({"streamtype": "stdin"}))
        sstream = await server.accept_stream()
        assert sstream is not None
        cstream = await opening

        async def send() -> None:
            await cstream.write(payload)
            await cstream.close()

        sending = asyncio.create_task(send())
        # Nobody reads yet: the writer must stop at the 64 KiB window and wait.
        await wait_until(lambda: client.counters["flow_control_waits"] > 0)
        assert sstream._buffered == spdy.DEFAULT_WINDOW
        assert server.counters["sent:WINDOW_UPDATE"] == 0
        received = await read_all(sstream)
        await sending
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        # The reader gave the window back as it consumed: stream and session updates.
        assert server.counters["sent:WINDOW_UPDATE"] >= 2 * (len(payload) // spdy.DEFAULT_WINDOW)
        # Finishing needed (1 MiB - 64 KiB) of credit for the stream and for the session, given
        # back in half-window steps.
        needed = 2 * (len(payload) - spdy.DEFAULT_WINDOW) // (spdy.DEFAULT_WINDOW // 2)
        assert client.counters["received:WINDOW_UPDATE"] >= needed
        await client.close()
        await server.close()

    run(scenario)


def test_rst_stream_ends_reads_and_fails_writes() -> None:
    async def scenario() -> None:
        client, server = await session_pair()
        opening = asyncio.create_task(client.open_stream({"streamtype": "stdout"}))
        sstream = await server.accept_stream()
        assert sstream is not None
        cstream = await opening
        blocked_read = asyncio.create_task(cstream.read())
        await sstream.write(b"x")
        assert await blocked_read == b"x"
        blocked_read = asyncio.create_task(cstream.read())
        await sstream.reset()
        assert await blocked_read == b""
        assert cstream.reset_status == spdy.CANCEL
        with pytest.raises(SpdyError, match="reset"):
            await cstream.write(b"y")
        with pytest.raises(SpdyError, match="reset"):
            await sstream.write(b"y")
        assert await sstream.read() == b""
        # The session itself survives a stream reset.
        opening = asyncio.create_task(client.open_stream({"streamtype": "error"}))
        again = await server.accept_stream()
        assert again is not None and (await opening).id == 3
        await client.close()
        await server.close()

    run(scenario)


def test_data_sent_before_a_peer_reset_stays_readable() -> None:
    """kubelet-style servers write the exec status on the error stream, then reset it."""

    async def scenario() -> None:
        client, server = await session_pair()
        opening = asyncio.create_task(client.open_stream({"streamtype": "error"}))
        sstream = await server.accept_stream()
        assert sstream is not None
        cstream = await opening
        await sstream.write(b'{"status":"Success"}')
        await sstream.reset()
        await asyncio.sleep(0.05)  # both frames arrive before the client reads
        assert await cstream.read() == b'{"status":"Success"}'
        assert await cstream.read() == b""
        assert cstream.reset_status == spdy.CANCEL
        await client.close()
        await server.close()

    run(scenario)


def test_ping_both_directions() -> None:
    async def scenario() -> None:
        client, server = await session_pair()
        assert await client.ping() >= 0
        assert await server.ping() >= 0
        assert await client.ping() >= 0
        assert client.counters["sent:PING"] == 3  # 2 own pings + 1 answer
        assert server.counters["sent:PING"] == 3
        await client.close()
        await server.close()

    run(scenario)


GARBAGE = [
    pytest.param(bytes.fromhex("80020001 0000000a 00000001 00000000 0000"), id="version-2"),
    pytest.param(bytes.fromhex("80030001 00000004 00000001"), id="short-syn-stream"),
    pytest.param(
        bytes.fromhex("80030001 00000014 00000001 00000000 0000") + b"\x78\xbbnot-zlib!",
        id="corrupt-header-block",
    ),
    pytest.param(bytes.fromhex("80030007 00200000"), id="huge-control-frame"),
    pytest.param(bytes.fromhex("00000000 00000000"), id="data-on-stream-0"),
    pytest.param(bytes.fromhex("80030003 00000008 00000001 00000001"), id="ok-then-eof"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_ends_the_session_with_goaway(garbage: bytes) -> None:
    async def scenario() -> None:
        (pr, pw), (sr, sw) = await connected_pair()
        peer = RawPeer(pr, pw)
        server = SpdySession(sr, sw, client=False)
        server.start()
        try:
            accepting = asyncio.create_task(server.accept_stream())
            await peer.send_raw(garbage)
            first = await peer.recv()
            assert isinstance(first, SettingsFrame)
            if garbage.startswith(bytes.fromhex("80030003")):
                # A valid RST_STREAM for an unknown stream is ignored; EOF ends the session.
                pw.write_eof()
                assert await accepting is None
                assert server.error is None
                assert await peer.recv() is None
            else:
                goaway = await peer.recv()
                assert goaway == GoAwayFrame(0, spdy.GOAWAY_PROTOCOL_ERROR)
                assert await peer.recv() is None  # the server closed the transport
                assert await accepting is None
                assert isinstance(server.error, SpdyError)
            assert server.closed
            with pytest.raises(SpdyError):
                await server.ping()
        finally:
            await server.close()
            await peer.close()

    run(scenario)


def test_syn_stream_with_wrong_parity_or_decreasing_id_is_a_protocol_error() -> None:
    async def scenario() -> None:
        (pr, pw), (sr, sw) = await connected_pair()
        peer = RawPeer(pr, pw)
        server = SpdySession(sr, sw, client=False)
        server.start()
        try:
            await peer.send(SynStreamFrame(3, {"streamtype": "error"}))
            await peer.send(SynStreamFrame(1, {"streamtype": "stdin"}))
            assert (await peer.recv_kind(GoAwayFrame)).status == spdy.GOAWAY_PROTOCOL_ERROR
            first = await server.accept_stream()
            assert first is not None and first.id == 3
            assert await server.accept_stream() is None
        finally:
            await server.close()
            await peer.close()

    run(scenario)


def test_server_does_not_wait_for_window_from_a_peer_without_flow_control() -> None:
    """spdystream (kubectl, crictl) never sends WINDOW_UPDATE; output must not stall at 64 KiB."""
    payload = os.urandom(300_000)

    async def scenario() -> None:
        (pr, pw), (sr, sw) = await connected_pair()
        peer = RawPeer(pr, pw)
        server = SpdySession(sr, sw, client=False)
        server.start()
        try:
            await peer.send(SynStreamFrame(1, {"streamtype": "stdout"}))
            stream = await server.accept_stream()
            assert stream is not None
            assert await peer.recv_kind(SynReplyFrame) == SynReplyFrame(1, {})
            writing = asyncio.create_task(stream.write(payload))
            got = b""
            while len(got) < len(payload):
                frame = await peer.recv_kind(DataFrame)
                got += frame.data
            await writing
            assert got == payload
            assert server.counters["flow_control_waits"] == 0
        finally:
            await server.close()
            await peer.close()

    run(scenario)


def test_peer_overrunning_the_window_is_an_error() -> None:
    async def scenario() -> None:
        (pr, pw), (sr, sw) = await connected_pair()
        peer = RawPeer(pr, pw)
        server = SpdySession(sr, sw, client=False)
        server.start()
        try:
            # SETTINGS first: this peer announces flow control, so windows are enforced.
            await peer.send(SettingsFrame(((spdy.SETTINGS_INITIAL_WINDOW_SIZE, 65536, 0),)))
            await peer.send(SynStreamFrame(1, {"streamtype": "stdin"}))
            stream = await server.accept_stream()
            assert stream is not None
            for _ in range(5):
                await peer.send(DataFrame(1, b"z" * 16384))
            assert (await peer.recv_kind(GoAwayFrame)).status == spdy.GOAWAY_PROTOCOL_ERROR
            assert "window" in str(server.error)
            # Data that arrived before the violation is still readable, then EOF.
            assert len(await read_all(stream)) == spdy.DEFAULT_WINDOW
        finally:
            await server.close()
            await peer.close()

    run(scenario)


def test_goaway_refuses_later_streams_and_keeps_earlier_ones() -> None:
    async def scenario() -> None:
        (cr, cw), (pr, pw) = await connected_pair()
        peer = RawPeer(pr, pw)
        client = SpdySession(cr, cw, client=True)
        client.start()
        try:
            assert isinstance(await peer.recv(), SettingsFrame)
            first = asyncio.create_task(client.open_stream({"streamtype": "data", "port": "80"}))
            syn = await peer.recv_kind(SynStreamFrame)
            assert syn == SynStreamFrame(1, {"streamtype": "data", "port": "80"})
            await peer.send(SynReplyFrame(1, {}))
            s1 = await first
            second = asyncio.create_task(client.open_stream({"streamtype": "error"}))
            assert (await peer.recv_kind(SynStreamFrame)).stream_id == 3
            await peer.send(GoAwayFrame(1, spdy.GOAWAY_OK))
            with pytest.raises(SpdyError, match="refused"):
                await second
            with pytest.raises(SpdyError, match="going away"):
                await client.open_stream({"streamtype": "x"})
            await peer.send(DataFrame(1, b"still here", spdy.FLAG_FIN))
            assert await read_all(s1) == b"still here"
            assert client.goaway_status == spdy.GOAWAY_OK
        finally:
            await client.close()
            await peer.close()

    run(scenario)


def test_closing_the_session_wakes_every_blocked_reader_and_writer() -> None:
    async def scenario() -> None:
        client, server = await session_pair()
        opening = asyncio.create_task(client.open_stream({"streamtype": "stdin"}))
        sstream = await server.accept_stream()
        assert sstream is not None
        cstream = await opening
        client_read = asyncio.create_task(cstream.read())
        server_read = asyncio.create_task(sstream.read())
        client_write = asyncio.create_task(cstream.write(b"w" * 200_000))
        server_accept = asyncio.create_task(server.accept_stream())
        await wait_until(lambda: client.counters["flow_control_waits"] > 0)
        assert await server_read == b"w" * spdy.DATA_CHUNK
        server_read = asyncio.create_task(sstream.read())
        await client.close()
        assert await client_read == b""
        with pytest.raises(SpdyError):
            await client_write
        # The server sees GOAWAY then EOF: buffered data stays readable, then b"".
        assert await server_accept is None
        assert len(await server_read) == spdy.DATA_CHUNK
        assert len(await read_all(sstream)) == spdy.DEFAULT_WINDOW - 2 * spdy.DATA_CHUNK
        assert server.closed
        with pytest.raises(SpdyError):
            await sstream.write(b"late")
        with pytest.raises(SpdyError):
            await client.open_stream({"streamtype": "x"})
        await server.close()
        await client.close()  # idempotent

    run(scenario)
