"""SPDY/3.1 framing and sessions, the transport kubelet's streaming clients speak.

kubectl and crictl default to SPDY/3.1 for exec, attach and port-forward (moby/spdystream on their
side) and no maintained Python implementation exists, so this module implements the part of the
draft those tools use: the eight control frames, DATA frames, zlib-compressed name/value header
blocks with the SPDY/3 dictionary, and stream plus session (3.1) flow control.

The client opens the streams (SYN_STREAM with headers such as ``streamtype``, ``port`` and
``requestid``); the side that accepts a stream answers SYN_REPLY. A session runs over any
(reader, writer) pair with asyncio's StreamReader/StreamWriter shape, e.g. a TCP connection after
the HTTP upgrade or the WebSocket byte-stream adapter.

Flow control and real clients: spdystream neither sends WINDOW_UPDATE nor honours it. A session
that waited for its peer's window updates would hang after 64 KiB of exec output, so by default a
server session enforces its send windows only for a peer that shows it does flow control - one
whose first frame is SETTINGS or WINDOW_UPDATE (this module's sessions send SETTINGS first). A
client session always enforces them. ``flow_control=True/False`` overrides the detection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

VERSION: Final = 3

# Control frame types (SPDY/3 section 2.6).
SYN_STREAM: Final = 1
SYN_REPLY: Final = 2
RST_STREAM: Final = 3
SETTINGS: Final = 4
PING: Final = 6
GOAWAY: Final = 7
HEADERS: Final = 8
WINDOW_UPDATE: Final = 9

FLAG_FIN: Final = 0x01
FLAG_UNIDIRECTIONAL: Final = 0x02
FLAG_SETTINGS_CLEAR_SETTINGS: Final = 0x01

# RST_STREAM status codes.
PROTOCOL_ERROR: Final = 1
INVALID_STREAM: Final = 2
REFUSED_STREAM: Final = 3
UNSUPPORTED_VERSION: Final = 4
CANCEL: Final = 5
INTERNAL_ERROR: Final = 6
FLOW_CONTROL_ERROR: Final = 7
STREAM_IN_USE: Final = 8
STREAM_ALREADY_CLOSED: Final = 9
FRAME_TOO_LARGE: Final = 11

# GOAWAY status codes.
GOAWAY_OK: Final = 0
GOAWAY_PROTOCOL_ERROR: Final = 1
GOAWAY_INTERNAL_ERROR: Final = 2

SETTINGS_MAX_CONCURRENT_STREAMS: Final = 4
SETTINGS_INITIAL_WINDOW_SIZE: Final = 7

DEFAULT_WINDOW: Final = 65536
MAX_WINDOW: Final = 0x7FFFFFFF
MAX_STREAM_ID: Final = 0x7FFFFFFF
# The length field has 24 bits; control frames carry small fixed fields or header blocks, so
# anything past 1 MiB is refused before it is buffered.
MAX_FRAME_LENGTH: Final = 0xFFFFFF
MAX_CONTROL_FRAME: Final = 1 << 20
MAX_HEADER_BLOCK: Final = 1 << 20
DATA_CHUNK: Final = 16384
# Without peer flow control, a stream buffers this much before the session stops reading.
MAX_UNCONTROLLED_BUFFER: Final = 1 << 20
GOAWAY_SEND_TIMEOUT: Final = 2.0


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1).

    Its first part is a header block fragment: each word preceded by its 32-bit length; the rest
    is a plain string. Building it from the words keeps every length prefix right by construction.
    """
    words = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
    ]
    words += ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive"]
    words += ["origin"]
    prefix = b"".join(struct.pack(">I", len(w)) + w.encode("ascii") for w in words)
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,"
        "publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return prefix + tail.encode("ascii")


SPDY3_DICTIONARY: Final = _dictionary()


class SpdyError(Exception):
    """A SPDY protocol violation, or use of a stream or session that can no longer carry data."""

    def __init__(self, message: str, *, stream_id: int | None = None, status: int = 0) -> None:
        super().__init__(message if stream_id is None else f"stream {stream_id}: {message}")
        self.stream_id = stream_id
        self.status = status


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes = b""
    flags: int = 0


@dataclass(frozen=True)
class SynStreamFrame:
    stream_id: int
    headers: dict[str, str]
    associated_stream_id: int = 0
    priority: int = 0
    slot: int = 0
    flags: int = 0


@dataclass(frozen=True)
class SynReplyFrame:
    stream_id: int
    headers: dict[str, str]
    flags: int = 0


@dataclass(frozen=True)
class RstStreamFrame:
    stream_id: int
    status: int


@dataclass(frozen=True)
class SettingsFrame:
    # (id, value, flags) triples
    settings: tuple[tuple[int, int, int], ...] = ()
    flags: int = 0


@dataclass(frozen=True)
class PingFrame:
    ping_id: int


@dataclass(frozen=True)
class GoAwayFrame:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: dict[str, str]
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdateFrame:
    stream_id: int
    delta: int


@dataclass(frozen=True)
class UnknownControlFrame:
    """A control frame type this module does not know; the spec says to ignore it."""

    type: int
    flags: int
    payload: bytes


Frame: TypeAlias = (
    DataFrame
    | SynStreamFrame
    | SynReplyFrame
    | RstStreamFrame
    | SettingsFrame
    | PingFrame
    | GoAwayFrame
    | HeadersFrame
    | WindowUpdateFrame
    | UnknownControlFrame
)

_FRAME_NAMES: Final = {
    DataFrame: "DATA",
    SynStreamFrame: "SYN_STREAM",
    SynReplyFrame: "SYN_REPLY",
    RstStreamFrame: "RST_STREAM",
    SettingsFrame: "SETTINGS",
    PingFrame: "PING",
    GoAwayFrame: "GOAWAY",
    HeadersFrame: "HEADERS",
    WindowUpdateFrame: "WINDOW_UPDATE",
    UnknownControlFrame: "UNKNOWN",
}


def frame_name(frame: Frame) -> str:
    return _FRAME_NAMES[type(frame)]


def encode_header_block(headers: Mapping[str, str]) -> bytes:
    """The uncompressed SPDY/3 name/value block: 32-bit count, then 32-bit-length names/values."""
    out = [struct.pack(">I", len(headers))]
    seen: set[str] = set()
    for name, value in headers.items():
        lname = name.lower()
        if not lname or lname in seen:
            raise SpdyError(f"header name {name!r} is empty or duplicated")
        seen.add(lname)
        raw_name, raw_value = lname.encode("utf-8"), value.encode("utf-8")
        out += [struct.pack(">I", len(raw_name)), raw_name, struct.pack(">I", len(raw_value))]
        out.append(raw_value)
    return b"".join(out)


def decode_header_block(raw: bytes) -> dict[str, str]:
    """Parse an uncompressed name/value block; multiple values stay NUL-separated as sent."""
    if len(raw) < 4:
        raise SpdyError("header block shorter than its count")
    (count,) = struct.unpack_from(">I", raw, 0)
    if count > (len(raw) - 4) // 8:
        raise SpdyError(f"header block claims {count} pairs in {len(raw)} bytes")
    pos = 4
    headers: dict[str, str] = {}
    fields: list[bytes] = []
    for _ in range(count):
        fields.clear()
        for _part in range(2):
            if pos + 4 > len(raw):
                raise SpdyError("header block truncated")
            (length,) = struct.unpack_from(">I", raw, pos)
            pos += 4
            if pos + length > len(raw):
                raise SpdyError("header block truncated")
            fields.append(raw[pos : pos + length])
            pos += length
        name = fields[0].decode("utf-8", "replace").lower()
        if not name:
            raise SpdyError("empty header name")
        if name in headers:
            raise SpdyError(f"duplicate header name {name!r}")
        headers[name] = fields[1].decode("utf-8", "replace")
    if pos != len(raw):
        raise SpdyError(f"{len(raw) - pos} stray bytes after the header block")
    return headers


class HeaderCompressor:
    """One zlib stream per session direction; every block ends with a sync flush (SPDY/3 2.6.10.1)."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION,
            zlib.DEFLATED,
            15,
            8,
            zlib.Z_DEFAULT_STRATEGY,
            zdict=SPDY3_DICTIONARY,
        )

    def compress(self, headers: Mapping[str, str]) -> bytes:
        block = encode_header_block(headers)
        return self._z.compress(block) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The receiving half: one inflate stream for all header blocks of a session direction."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(zdict=SPDY3_DICTIONARY)

    def decompress(self, data: bytes) -> dict[str, str]:
        try:
            raw = self._z.decompress(data, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise SpdyError(f"header block does not decompress: {exc}") from exc
        if len(raw) > MAX_HEADER_BLOCK or self._z.unconsumed_tail:
            raise SpdyError(f"header block larger than {MAX_HEADER_BLOCK} bytes")
        if self._z.eof:
            raise SpdyError("header compression stream ended")
        return decode_header_block(raw)


def _control(ftype: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise SpdyError(f"frame payload of {len(payload)} bytes exceeds the 24-bit length")
    return (
        struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags & 0xFF) << 24 | len(payload)) + payload
    )


def _check_id(value: int, what: str) -> int:
    if not 0 <= value <= MAX_STREAM_ID:
        raise SpdyError(f"{what} {value} out of range")
    return value


def encode_frame(frame: Frame, compressor: HeaderCompressor | None = None) -> bytes:
    """Serialize one frame; frames with header blocks need the session's compressor."""
    if isinstance(frame, DataFrame):
        if len(frame.data) > MAX_FRAME_LENGTH:
            raise SpdyError(f"DATA payload of {len(frame.data)} bytes exceeds the 24-bit length")
        sid = _check_id(frame.stream_id, "stream id")
        head = struct.pack(">II", sid, (frame.flags & 0xFF) << 24 | len(frame.data))
        return head + frame.data
    if isinstance(frame, RstStreamFrame):
        payload = struct.pack(">II", _check_id(frame.stream_id, "stream id"), frame.status)
        return _control(RST_STREAM, 0, payload)
    if isinstance(frame, SettingsFrame):
        entries = [struct.pack(">I", len(frame.settings))]
        for sid, value, flags in frame.settings:
            entries.append(struct.pack(">II", (flags & 0xFF) << 24 | (sid & 0xFFFFFF), value))
        return _control(SETTINGS, frame.flags, b"".join(entries))
    if isinstance(frame, PingFrame):
        return _control(PING, 0, struct.pack(">I", frame.ping_id))
    if isinstance(frame, GoAwayFrame):
        last = _check_id(frame.last_good_stream_id, "stream id")
        return _control(GOAWAY, 0, struct.pack(">II", last, frame.status))
    if isinstance(frame, WindowUpdateFrame):
        if not 0 < frame.delta <= MAX_WINDOW:
            raise SpdyError(f"window delta {frame.delta} out of range")
        payload = struct.pack(">II", _check_id(frame.stream_id, "stream id"), frame.delta)
        return _control(WINDOW_UPDATE, 0, payload)
    if isinstance(frame, UnknownControlFrame):
        return _control(frame.type, frame.flags, frame.payload)
    if compressor is None:
        raise SpdyError(f"{frame_name(frame)} needs a header compressor")
    if isinstance(frame, SynStreamFrame):
        fixed = struct.pack(
            ">IIBB",
            _check_id(frame.stream_id, "stream id"),
            _check_id(frame.associated_stream_id, "stream id"),
            (frame.priority & 0x7) << 5,
            frame.slot & 0xFF,
        )
        return _control(SYN_STREAM, frame.flags, fixed + compressor.compress(frame.headers))
    ftype = SYN_REPLY if isinstance(frame, SynReplyFrame) else HEADERS
    fixed = struct.pack(">I", _check_id(frame.stream_id, "stream id"))
    return _control(ftype, frame.flags, fixed + compressor.compress(frame.headers))


@dataclass(frozen=True)
class FrameHead:
    """The 8-byte common header: control bit, then version/type or stream id, flags, length."""

    control: bool
    version: int
    type: int
    stream_id: int
    flags: int
    length: int


def parse_head(head: bytes) -> FrameHead:
    if len(head) != 8:
        raise SpdyError("frame header must be 8 bytes")
    first, second = struct.unpack(">II", head)
    flags, length = second >> 24, second & 0xFFFFFF
    if first & 0x80000000:
        version, ftype = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise SpdyError(f"unsupported SPDY version {version}", status=UNSUPPORTED_VERSION)
        if length > MAX_CONTROL_FRAME:
            raise SpdyError(f"control frame of {length} bytes refused", status=FRAME_TOO_LARGE)
        return FrameHead(True, version, ftype, 0, flags, length)
    stream_id = first & 0x7FFFFFFF
    if stream_id == 0:
        raise SpdyError("DATA frame on stream 0")
    return FrameHead(False, 0, 0, stream_id, flags, length)


def _need(payload: bytes, ok: bool, what: str) -> None:
    if not ok:
        raise SpdyError(f"{what} frame with a bad length ({len(payload)} bytes)")


def decode_frame(head: FrameHead, payload: bytes, decompressor: HeaderDecompressor) -> Frame:
    """Decode one frame whose payload has been read; header blocks go through the session's
    decompressor in wire order (the zlib state spans frames)."""
    if not head.control:
        return DataFrame(head.stream_id, payload, head.flags)
    t = head.type
    if t == SYN_STREAM:
        _need(payload, len(payload) >= 10, "SYN_STREAM")
        sid, assoc, pri, slot = struct.unpack_from(">IIBB", payload)
        sid &= 0x7FFFFFFF
        if sid == 0:
            raise SpdyError("SYN_STREAM for stream 0")
        headers = decompressor.decompress(payload[10:])
        return SynStreamFrame(sid, headers, assoc & 0x7FFFFFFF, pri >> 5, slot, head.flags)
    if t in (SYN_REPLY, HEADERS):
        name = "SYN_REPLY" if t == SYN_REPLY else "HEADERS"
        _need(payload, len(payload) >= 4, name)
        sid = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
        if sid == 0:
            raise SpdyError(f"{name} for stream 0")
        headers = decompressor.decompress(payload[4:])
        if t == SYN_REPLY:
            return SynReplyFrame(sid, headers, head.flags)
        return HeadersFrame(sid, headers, head.flags)
    if t == RST_STREAM:
        _need(payload, len(payload) == 8, "RST_STREAM")
        sid, status = struct.unpack(">II", payload)
        sid &= 0x7FFFFFFF
        if sid == 0:
            raise SpdyError("RST_STREAM for stream 0")
        return RstStreamFrame(sid, status)
    if t == SETTINGS:
        _need(payload, len(payload) >= 4, "SETTINGS")
        (count,) = struct.unpack_from(">I", payload)
        _need(payload, len(payload) == 4 + 8 * count, "SETTINGS")
        entries = []
        for i in range(count):
            word, value = struct.unpack_from(">II", payload, 4 + 8 * i)
            entries.append((word & 0xFFFFFF, value, word >> 24))
        return SettingsFrame(tuple(entries), head.flags)
    if t == PING:
        _need(payload, len(payload) == 4, "PING")
        return PingFrame(struct.unpack(">I", payload)[0])
    if t == GOAWAY:
        _need(payload, len(payload) == 8, "GOAWAY")
        last, status = struct.unpack(">II", payload)
        return GoAwayFrame(last & 0x7FFFFFFF, status)
    if t == WINDOW_UPDATE:
        _need(payload, len(payload) == 8, "WINDOW_UPDATE")
        sid, delta = struct.unpack(">II", payload)
        return WindowUpdateFrame(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF)
    return UnknownControlFrame(t, head.flags, payload)


async def read_frame(
    reader: asyncio.StreamReader, decompressor: HeaderDecompressor
) -> Frame | None:
    """The next frame, or None on a clean end of stream between frames."""
    try:
        head_bytes = await reader.readexactly(8)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise SpdyError("connection closed inside a frame header") from exc
    head = parse_head(head_bytes)
    try:
        payload = await reader.readexactly(head.length) if head.length else b""
    except asyncio.IncompleteReadError as exc:
        raise SpdyError(f"connection closed inside a {head.length}-byte frame") from exc
    return decode_frame(head, payload, decompressor)


# ---------------------------------------------------------------------------------------------
# Streams and sessions


class SpdyStream:
    """One bidirectional stream; reads return b"" after the peer's FIN, a reset, or session end."""

    def __init__(
        self,
        session: SpdySession,
        stream_id: int,
        headers: dict[str, str],
        *,
        send_window: int,
        recv_window: int,
    ) -> None:
        self.id = stream_id
        self.headers = headers
        self.reply_headers: dict[str, str] = {}
        # Set when the peer reset the stream, or we did; the RST_STREAM status code.
        self.reset_status: int | None = None
        self.local_closed = False
        self.remote_closed = False
        self._session = session
        self._buffer: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._replied = asyncio.Event()
        self._got_reply = False
        self._write_lock = asyncio.Lock()
        self._send_window = send_window
        self._recv_window = recv_window
        self._unacked = 0

    def __repr__(self) -> str:
        return f"SpdyStream(id={self.id}, headers={self.headers!r})"

    def _wake(self) -> None:
        self._readable.set()
        self._drained.set()
        self._replied.set()

    def _check_writable(self) -> None:
        if self.reset_status is not None:
            raise SpdyError(f"reset (status {self.reset_status})", stream_id=self.id)
        if self.local_closed:
            raise SpdyError("write after close", stream_id=self.id)
        if self._session.closed:
            raise SpdyError("session closed", stream_id=self.id)

    async def read(self) -> bytes:
        """Next data chunk; b"" once the peer half-closed (FIN), reset it, or the session ended."""
        while True:
            if self._buffer:
                chunk = self._buffer.popleft()
                self._buffered -= len(chunk)
                self._drained.set()
                await self._session._consumed(self, len(chunk))
                return chunk
            if self.remote_closed or self.reset_status is not None or self._session.closed:
                return b""
            self._readable.clear()
            await self._readable.wait()

    async def write(self, data: bytes) -> None:
        """Send data as DATA frames, waiting for flow-control window as needed."""
        async with self._write_lock:
            self._check_writable()
            pos = 0
            while pos < len(data):
                n = await self._session._reserve(self, min(len(data) - pos, DATA_CHUNK))
                await self._session._send_frame(DataFrame(self.id, bytes(data[pos : pos + n])))
                pos += n

    async def close(self) -> None:
        """Half-close our direction (an empty DATA frame with FIN); later writes raise."""
        async with self._write_lock:
            if self.local_closed or self.reset_status is not None or self._session.closed:
                return
            self.local_closed = True
            with contextlib.suppress(SpdyError):
                await self._session._send_frame(DataFrame(self.id, b"", FLAG_FIN))
            self._session._maybe_forget(self)

    async def reset(self, status: int = CANCEL) -> None:
        """Abort the stream both ways with RST_STREAM (5 = CANCEL)."""
        if self.reset_status is not None or self._session.closed:
            return
        await self._session._reset(self, status)


class SpdySession:
    """A SPDY/3.1 session over a byte stream: one task reads frames, callers write under a lock."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client: bool,
        flow_control: bool | None = None,
    ) -> None:
        self.client = client
        self.error: SpdyError | None = None  # the protocol error that ended the session, if any
        self.goaway_status: int | None = None  # status of the GOAWAY the peer sent
        # Frames sent/received by type ("sent:DATA", "received:PING") and "flow_control_waits".
        self.counters: collections.Counter[str] = collections.Counter()
        self._reader = reader
        self._writer = writer
        self._next_stream_id = 1 if client else 2
        self._next_ping_id = 1 if client else 2
        self._last_peer_stream_id = 0
        self._streams: dict[int, SpdyStream] = {}
        self._accept: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor()
        self._send_lock = asyncio.Lock()
        self._send_window = DEFAULT_WINDOW
        self._recv_window = DEFAULT_WINDOW
        self._recv_unacked = 0
        self._peer_initial_window = DEFAULT_WINDOW
        self._window_changed = asyncio.Event()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._peer_flow_control: bool | None = flow_control
        if flow_control is None and client:
            self._peer_flow_control = True
        self._closed = False
        self._goaway_sent = False
        self._goaway_received = False
        self._task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Send our SETTINGS and start the frame-reading task (needs a running loop)."""
        if self._task is not None:
            return
        settings = SettingsFrame(((SETTINGS_INITIAL_WINDOW_SIZE, DEFAULT_WINDOW, 0),))
        # Written synchronously so that SETTINGS is the first frame on the wire, before any
        # SYN_STREAM: the peer's flow-control detection relies on it.
        try:
            self._writer.write(encode_frame(settings))
            self.counters["sent:SETTINGS"] += 1
        except (ConnectionError, OSError, RuntimeError) as exc:
            self.error = SpdyError(f"transport failed: {exc}")
            self._end()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="spdy-session")

    async def accept_stream(self) -> SpdyStream | None:
        """Next peer-opened stream, answered with SYN_REPLY; None when the session ends."""
        while True:
            if self._closed and self._accept.empty():
                return None
            stream = await self._accept.get()
            if stream is None:
                self._accept.put_nowait(None)  # every later caller sees the end too
                return None
            if stream.reset_status is None and not stream._replied.is_set():
                try:
                    await self._send_frame(SynReplyFrame(stream.id, {}))
                except SpdyError:
                    return None
            stream._replied.set()
            return stream

    async def open_stream(self, headers: dict[str, str], *, fin: bool = False) -> SpdyStream:
        """Open a stream (SYN_STREAM) and wait for the peer's SYN_REPLY."""
        if self._task is None:
            raise SpdyError("session not started")
        if self._closed:
            raise SpdyError("session closed")
        if self._goaway_received or self._goaway_sent:
            raise SpdyError("session is going away")
        lowered = {k.lower(): v for k, v in headers.items()}
        # Allocate the id and send under the send lock so ids increase on the wire.
        async with self._send_lock:
            sid = self._next_stream_id
            if sid > MAX_STREAM_ID:
                raise SpdyError("stream ids exhausted")
            self._next_stream_id += 2
            stream = SpdyStream(
                self,
                sid,
                lowered,
                send_window=self._peer_initial_window,
                recv_window=DEFAULT_WINDOW,
            )
            stream.local_closed = fin
            self._streams[sid] = stream
            frame = SynStreamFrame(sid, lowered, flags=FLAG_FIN if fin else 0)
            await self._write_locked(frame)
        await stream._replied.wait()
        if stream.reset_status is not None:
            raise SpdyError(
                f"refused by the peer (status {stream.reset_status})",
                stream_id=sid,
                status=stream.reset_status,
            )
        if not stream._got_reply:
            raise SpdyError("session closed before SYN_REPLY", stream_id=sid)
        return stream

    async def ping(self) -> float:
        """Round-trip time of a PING, in seconds."""
        if self._task is None or self._closed:
            raise SpdyError("session not running")
        loop = asyncio.get_running_loop()
        pid = self._next_ping_id
        self._next_ping_id = pid + 2 if pid + 2 <= 0xFFFFFFFF else (1 if self.client else 2)
        waiter: asyncio.Future[None] = loop.create_future()
        self._pings[pid] = waiter
        started = loop.time()
        try:
            await self._send_frame(PingFrame(pid))
            await waiter
        finally:
            self._pings.pop(pid, None)
        return loop.time() - started

    async def close(self) -> None:
        """GOAWAY, then close the transport; every blocked reader/writer wakes up."""
        if not self._closed:
            await self._send_goaway(GOAWAY_OK)
            self._end()
        # Closing the transport ends the reader's pending read, so the task finishes by itself;
        # cancelling it while it awaits the transport's close waiter would cancel that shared
        # future for every other waiter too.
        self._close_writer()
        if self._task is not None and not self._task.done():
            done, _ = await asyncio.wait({self._task}, timeout=GOAWAY_SEND_TIMEOUT)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task})
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    # -- internals ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closed:
                frame = await read_frame(self._reader, self._decompressor)
                if frame is None:
                    break
                self.counters[f"received:{frame_name(frame)}"] += 1
                await self._handle(frame)
        except SpdyError as exc:
            if not self._closed:
                self.error = exc
                await self._send_goaway(GOAWAY_PROTOCOL_ERROR)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # close() cancels us; nothing to report
        except Exception as exc:  # a bug here must end the session, not vanish in the loop
            if not self._closed:
                self.error = SpdyError(f"internal error: {exc!r}")
                await self._send_goaway(GOAWAY_INTERNAL_ERROR)
        finally:
            self._end()
            self._close_writer()

    def _end(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in self._streams.values():
            stream._wake()
        self._streams.clear()
        self._window_changed.set()
        self._accept.put_nowait(None)
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(SpdyError("session closed before the PING answer"))
        self._pings.clear()

    def _close_writer(self) -> None:
        with contextlib.suppress(Exception):
            if not self._writer.is_closing():
                self._writer.close()

    async def _send_goaway(self, status: int) -> None:
        if self._goaway_sent or self._closed:
            return
        self._goaway_sent = True
        with contextlib.suppress(SpdyError, TimeoutError):
            async with asyncio.timeout(GOAWAY_SEND_TIMEOUT):
                await self._send_frame(GoAwayFrame(self._last_peer_stream_id, status))

    async def _send_frame(self, frame: Frame) -> None:
        async with self._send_lock:
            await self._write_locked(frame)

    async def _write_locked(self, frame: Frame) -> None:
        if self._closed:
            raise SpdyError("session closed")
        # Compression happens here, under the lock, so header blocks hit the wire in the order
        # the shared zlib stream produced them.
        data = encode_frame(frame, self._compressor)
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError, RuntimeError) as exc:
            self._end()
            raise SpdyError(f"transport failed: {exc}") from exc
        self.counters[f"sent:{frame_name(frame)}"] += 1

    def _enforce_send_windows(self) -> bool:
        return self._peer_flow_control is not False

    async def _reserve(self, stream: SpdyStream, want: int) -> int:
        """Take up to `want` bytes of send window, waiting while it is exhausted."""
        while True:
            stream._check_writable()
            if not self._enforce_send_windows():
                return want
            available = min(stream._send_window, self._send_window)
            if available > 0:
                n = min(available, want)
                stream._send_window -= n
                self._send_window -= n
                return n
            self.counters["flow_control_waits"] += 1
            self._window_changed.clear()
            await self._window_changed.wait()

    async def _consumed(self, stream: SpdyStream, n: int) -> None:
        """The application read n bytes: give the window back once half of it is used."""
        if self._closed:
            return
        self._recv_unacked += n
        stream._unacked += n
        threshold = DEFAULT_WINDOW // 2
        with contextlib.suppress(SpdyError):
            if (
                stream._unacked >= threshold
                and not stream.remote_closed
                and stream.reset_status is None
            ):
                delta, stream._unacked = stream._unacked, 0
                stream._recv_window += delta
                await self._send_frame(WindowUpdateFrame(stream.id, delta))
            await self._flush_session_credit()

    async def _flush_session_credit(self, extra: int = 0) -> None:
        self._recv_unacked += extra
        if self._recv_unacked >= DEFAULT_WINDOW // 2 and not self._closed:
            delta, self._recv_unacked = self._recv_unacked, 0
            self._recv_window += delta
            await self._send_frame(WindowUpdateFrame(0, delta))

    def _maybe_forget(self, stream: SpdyStream) -> None:
        if (stream.local_closed and stream.remote_closed) or stream.reset_status is not None:
            self._streams.pop(stream.id, None)

    def _mark_reset(self, stream: SpdyStream, status: int, *, keep_data: bool = False) -> int:
        """Record a reset; returns the buffered bytes that will never be read (window credit).

        `keep_data`: a reset from the peer leaves what it sent before readable, as Go's
        spdystream does (kubelet-style servers write the exec status, then reset)."""
        stream.reset_status = status
        if keep_data:
            stream._wake()
            self._window_changed.set()
            self._maybe_forget(stream)
            return 0
        dropped = stream._buffered
        stream._buffer.clear()
        stream._buffered = 0
        stream._wake()
        self._window_changed.set()
        self._maybe_forget(stream)
        return dropped

    async def _reset(self, stream: SpdyStream, status: int) -> None:
        dropped = self._mark_reset(stream, status)
        with contextlib.suppress(SpdyError):
            await self._send_frame(RstStreamFrame(stream.id, status))
            await self._flush_session_credit(dropped)

    def _is_ours(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == self.client

    def _known(self, stream_id: int) -> bool:
        if self._is_ours(stream_id):
            return stream_id < self._next_stream_id
        return stream_id <= self._last_peer_stream_id

    async def _handle(self, frame: Frame) -> None:
        if self._peer_flow_control is None:
            if isinstance(frame, SettingsFrame | WindowUpdateFrame):
                self._peer_flow_control = True
            elif isinstance(frame, SynStreamFrame | DataFrame):
                self._peer_flow_control = False
        if isinstance(frame, DataFrame):
            await self._on_data(frame)
        elif isinstance(frame, SynStreamFrame):
            await self._on_syn_stream(frame)
        elif isinstance(frame, SynReplyFrame | HeadersFrame):
            await self._on_reply(frame)
        elif isinstance(frame, RstStreamFrame):
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                dropped = self._mark_reset(stream, frame.status, keep_data=True)
                await self._flush_session_credit(dropped)
        elif isinstance(frame, SettingsFrame):
            self._on_settings(frame)
        elif isinstance(frame, PingFrame):
            if (frame.ping_id % 2 == 1) == self.client:
                waiter = self._pings.pop(frame.ping_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            else:
                await self._send_frame(frame)
        elif isinstance(frame, GoAwayFrame):
            self._goaway_received = True
            self.goaway_status = frame.status
            for stream in list(self._streams.values()):
                if self._is_ours(stream.id) and stream.id > frame.last_good_stream_id:
                    self._mark_reset(stream, REFUSED_STREAM)
        elif isinstance(frame, WindowUpdateFrame):
            await self._on_window_update(frame)
        # UnknownControlFrame: ignored, as the spec requires.

    async def _on_data(self, frame: DataFrame) -> None:
        n = len(frame.data)
        self._recv_window -= n
        if self._peer_flow_control is True and self._recv_window < 0:
            raise SpdyError(f"peer overran the session window by {-self._recv_window} bytes")
        stream = self._streams.get(frame.stream_id)
        if stream is None or stream.remote_closed:
            await self._flush_session_credit(n)
            if stream is not None:
                await self._reset(stream, STREAM_ALREADY_CLOSED)
            elif not self._known(frame.stream_id):
                await self._send_frame(RstStreamFrame(frame.stream_id, INVALID_STREAM))
            return
        stream._recv_window -= n
        if self._peer_flow_control is True and stream._recv_window < 0:
            await self._flush_session_credit(n)
            await self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if n:
            stream._buffer.append(frame.data)
            stream._buffered += n
            stream._readable.set()
        if frame.flags & FLAG_FIN:
            stream.remote_closed = True
            stream._readable.set()
            self._maybe_forget(stream)
        if self._peer_flow_control is False:
            # No window to stop the peer: stop reading the connection instead (TCP backpressure).
            while stream._buffered > MAX_UNCONTROLLED_BUFFER and stream.reset_status is None:
                if self._closed:
                    return
                stream._drained.clear()
                await stream._drained.wait()

    async def _on_syn_stream(self, frame: SynStreamFrame) -> None:
        sid = frame.stream_id
        if self._is_ours(sid) or sid <= self._last_peer_stream_id:
            raise SpdyError(f"SYN_STREAM with invalid stream id {sid}", stream_id=sid)
        self._last_peer_stream_id = sid
        if self._goaway_sent:
            await self._send_frame(RstStreamFrame(sid, REFUSED_STREAM))
            return
        stream = SpdyStream(
            self,
            sid,
            frame.headers,
            send_window=self._peer_initial_window,
            recv_window=DEFAULT_WINDOW,
        )
        stream.remote_closed = bool(frame.flags & FLAG_FIN)
        if frame.flags & FLAG_UNIDIRECTIONAL:
            stream.local_closed = True
            stream._replied.set()  # no SYN_REPLY for a unidirectional stream
        self._streams[sid] = stream
        self._accept.put_nowait(stream)

    async def _on_reply(self, frame: SynReplyFrame | HeadersFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            return
        if isinstance(frame, SynReplyFrame):
            if not self._is_ours(stream.id) or stream._replied.is_set():
                await self._reset(stream, STREAM_IN_USE)
                return
            stream._got_reply = True
            stream.reply_headers = dict(frame.headers)
            stream._replied.set()
        else:
            stream.reply_headers.update(frame.headers)
        if frame.flags & FLAG_FIN:
            stream.remote_closed = True
            stream._readable.set()
            self._maybe_forget(stream)

    def _on_settings(self, frame: SettingsFrame) -> None:
        for setting_id, value, _flags in frame.settings:
            if setting_id != SETTINGS_INITIAL_WINDOW_SIZE:
                continue
            if value > MAX_WINDOW:
                raise SpdyError(f"SETTINGS initial window {value} too large")
            delta = value - self._peer_initial_window
            self._peer_initial_window = value
            for stream in self._streams.values():
                stream._send_window += delta
            self._window_changed.set()

    async def _on_window_update(self, frame: WindowUpdateFrame) -> None:
        if frame.delta == 0:
            return
        if frame.stream_id == 0:
            self._send_window += frame.delta
            if self._send_window > MAX_WINDOW:
                raise SpdyError("session window overflow")
        else:
            stream = self._streams.get(frame.stream_id)
            if stream is None:
                return
            stream._send_window += frame.delta
            if stream._send_window > MAX_WINDOW:
                await self._reset(stream, FLOW_CONTROL_ERROR)
        self._window_changed.set()
