"""A process's stdio over either transport: SPDY streams or WebSocket channels.

Exec and attach speak to `Stdio` and never see framing: stdin chunks (b"" once
the client closed its side), stdout/stderr writes, terminal resizes, the
client going away, and `finish` with the result for the error stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from cri.streaming import websocket as wsmod
from cri.streaming.spdy import SpdySession, SpdyStream

log = logging.getLogger("pinnace.cri.streaming")

STREAM_CREATION_TIMEOUT = 30.0  # kubelet's default for the client to open its streams
MAX_RESIZE_BUFFER = 4096
Size = tuple[int, int]


class StdioError(Exception):
    """The client did not set its streams up as the protocol requires."""


def parse_size(obj: Any) -> Size | None:
    """(width, height) of a resize message {"Width": W, "Height": H}; None if malformed."""
    if not isinstance(obj, dict):
        return None
    w, h = obj.get("Width"), obj.get("Height")
    if type(w) is not int or type(h) is not int or not (0 <= w <= 0xFFFF and 0 <= h <= 0xFFFF):
        return None
    return w, h


class Stdio:
    """The transport-neutral face; subclasses fill the queues and implement the writes."""

    def __init__(self, protocol: str, *, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.protocol = protocol
        self.has_stdin, self.has_stdout, self.has_stderr = stdin, stdout, stderr
        self.stdin: asyncio.Queue[bytes] = asyncio.Queue()  # b"": EOF
        self.resizes: asyncio.Queue[Size | None] = asyncio.Queue()  # None: no more
        self.closed = asyncio.Event()  # the client is gone

    async def read_stdin(self) -> bytes:
        return await self.stdin.get()

    async def write_stdout(self, data: bytes) -> None:
        raise NotImplementedError

    async def write_stderr(self, data: bytes) -> None:
        raise NotImplementedError

    async def finish(self, result: bytes) -> None:
        """Write `result` (if any) on the error stream, then end everything."""
        raise NotImplementedError

    def _client_gone(self) -> None:
        self.stdin.put_nowait(b"")
        self.resizes.put_nowait(None)
        self.closed.set()


class SpdyStdio(Stdio):
    """kubelet's remotecommand over SPDY: one stream per streamtype, opened by the client."""

    def __init__(
        self,
        session: SpdySession,
        protocol: str,
        streams: dict[str, SpdyStream],
    ) -> None:
        super().__init__(
            protocol,
            stdin="stdin" in streams,
            stdout="stdout" in streams,
            stderr="stderr" in streams,
        )
        self.session = session
        self.streams = streams
        self._tasks = [asyncio.ensure_future(self._watch_session())]
        if "stdin" in streams:
            self._tasks.append(asyncio.ensure_future(self._pump_stdin(streams["stdin"])))
        if "resize" in streams:
            self._tasks.append(asyncio.ensure_future(self._pump_resize(streams["resize"])))
        else:
            self.resizes.put_nowait(None)

    @classmethod
    async def accept(
        cls,
        session: SpdySession,
        protocol: str,
        expected: set[str],
        timeout: float = STREAM_CREATION_TIMEOUT,
    ) -> SpdyStdio:
        """Wait until the client opened one stream of each expected type."""
        streams: dict[str, SpdyStream] = {}

        async def collect() -> None:
            while set(streams) != expected:
                s = await session.accept_stream()
                if s is None:
                    raise StdioError("the connection ended before all streams were opened")
                kind = s.headers.get("streamtype", "")
                if kind not in expected or kind in streams:
                    log.debug("rejecting unexpected %r stream %d", kind, s.id)
                    await s.reset()
                    continue
                streams[kind] = s

        try:
            await asyncio.wait_for(collect(), timeout)
        except TimeoutError:
            raise StdioError(
                f"timed out waiting for streams {sorted(expected - set(streams))}"
            ) from None
        return cls(session, protocol, streams)

    async def _watch_session(self) -> None:
        with contextlib.suppress(Exception):
            while (s := await self.session.accept_stream()) is not None:
                await s.reset()  # no more streams are expected
        self._client_gone()

    async def _pump_stdin(self, s: SpdyStream) -> None:
        try:
            while data := await s.read():
                await self.stdin.put(data)
        except Exception as exc:
            log.debug("stdin stream: %s", exc)
        await self.stdin.put(b"")

    async def _pump_resize(self, s: SpdyStream) -> None:
        decoder = json.JSONDecoder()
        buf = ""
        try:
            while data := await s.read():
                buf += data.decode(errors="replace")
                while buf.strip():
                    buf = buf.lstrip()
                    try:
                        obj, end = decoder.raw_decode(buf)
                    except ValueError:
                        if len(buf) > MAX_RESIZE_BUFFER:
                            buf = ""  # garbage: drop it rather than grow
                        break
                    buf = buf[end:]
                    size = parse_size(obj)
                    if size is not None:
                        await self.resizes.put(size)
        except Exception as exc:
            log.debug("resize stream: %s", exc)
        await self.resizes.put(None)

    async def write_stdout(self, data: bytes) -> None:
        s = self.streams.get("stdout")
        if s is not None:
            await s.write(data)

    async def write_stderr(self, data: bytes) -> None:
        s = self.streams.get("stderr")
        if s is not None:
            await s.write(data)

    async def finish(self, result: bytes) -> None:
        err = self.streams.get("error")
        with contextlib.suppress(Exception):
            if err is not None and result:
                await err.write(result)
        for s in self.streams.values():
            with contextlib.suppress(Exception):
                await s.close()
        for t in self._tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await self.session.close()


class WebSocketStdio(Stdio):
    """The channel protocols: one WebSocket, the first byte of a message names the channel."""

    def __init__(
        self, ws: wsmod.WebSocket, protocol: str, *, stdin: bool, stdout: bool, stderr: bool
    ) -> None:
        super().__init__(protocol, stdin=stdin, stdout=stdout, stderr=stderr)
        self.ws = ws
        self.base64 = "base64" in protocol
        self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        try:
            while (msg := await self.ws.recv()) is not None:
                try:
                    ch, data = wsmod.parse_channel_message(msg, base64=self.base64)
                except ValueError as exc:
                    log.debug("bad channel message: %s", exc)
                    continue
                if ch == wsmod.STDIN and data:
                    await self.stdin.put(data)
                elif ch == wsmod.RESIZE:
                    with contextlib.suppress(ValueError):
                        size = parse_size(json.loads(data))
                        if size is not None:
                            await self.resizes.put(size)
                elif ch == wsmod.CLOSE and data[:1] == bytes([wsmod.STDIN]):
                    await self.stdin.put(b"")  # v5: the client will send no more stdin
        except Exception as exc:
            log.debug("websocket reader: %s", exc)
        self._client_gone()

    async def _send(self, channel: int, data: bytes) -> None:
        msg = wsmod.channel_message(channel, data, base64=self.base64)
        await self.ws.send(msg, binary=not self.base64)

    async def write_stdout(self, data: bytes) -> None:
        if self.has_stdout:
            await self._send(wsmod.STDOUT, data)

    async def write_stderr(self, data: bytes) -> None:
        if self.has_stderr:
            await self._send(wsmod.STDERR, data)

    async def finish(self, result: bytes) -> None:
        with contextlib.suppress(Exception):
            if result:
                await self._send(wsmod.ERROR, result)
        with contextlib.suppress(Exception):
            await self.ws.close(1000)
        self._task.cancel()
