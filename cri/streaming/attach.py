"""Streaming attach: the client joins a running container's stdio through its monitor.

The monitor (cri/monitor.py) holds the container's stdio, so attach is a
connection to its control socket in attach mode: output frames come back (a
copy of what goes to the log), stdin and resize frames go in. The server only
translates between those frames and the client's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from cri.monitor import (
    FRAME_ERROR,
    FRAME_HEADER,
    FRAME_RESIZE,
    FRAME_STDERR,
    FRAME_STDIN,
    FRAME_STDOUT,
    MAX_FRAME,
    MonitorError,
    frame,
    open_attach,
)
from cri.streaming import status
from cri.streaming.stdio import Stdio
from cri.streaming.tokens import StreamRequest

log = logging.getLogger("pinnace.cri.streaming")


async def _from_monitor(reader: asyncio.StreamReader, io: Stdio) -> str:
    """Copy output frames to the client until the monitor closes; an error it sent, or ""."""
    while True:
        try:
            head = await reader.readexactly(FRAME_HEADER.size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return ""
        kind, n = FRAME_HEADER.unpack(head)
        if n > MAX_FRAME:
            return f"the monitor sent a frame of {n} bytes"
        try:
            payload = await reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return ""
        if kind == FRAME_STDOUT:
            await io.write_stdout(payload)
        elif kind == FRAME_STDERR:
            await io.write_stderr(payload)
        elif kind == FRAME_ERROR:
            return payload.decode(errors="replace")


async def _stdin_to_monitor(writer: asyncio.StreamWriter, io: Stdio) -> None:
    while data := await io.read_stdin():
        writer.write(frame(FRAME_STDIN, data))
        await writer.drain()
    writer.write(frame(FRAME_STDIN, b""))  # EOF: the monitor closes stdin for stdin_once
    await writer.drain()


async def _resize_to_monitor(writer: asyncio.StreamWriter, io: Stdio) -> None:
    while (size := await io.resizes.get()) is not None:
        msg = json.dumps({"Width": size[0], "Height": size[1]}).encode()
        writer.write(frame(FRAME_RESIZE, msg))
        await writer.drain()


async def serve_attach(io: Stdio, req: StreamRequest, lookup: Callable[[str], Any]) -> None:
    """Attach until the container's output ends or the client leaves."""
    from cri.errors import CRIError

    error = ""
    try:
        rec = await asyncio.to_thread(lookup, req.container_id)
        if rec.state != "running":
            raise CRIError(f"container is {rec.state}, not running", subject=rec.id)
        tty = rec.config_proto().tty
        sock = await asyncio.to_thread(
            open_attach,
            rec.dir,
            stdin=req.stdin,
            stdout=req.stdout,
            stderr=req.stderr and not tty,
            tty=tty,
        )
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
    except (CRIError, MonitorError, OSError) as exc:
        await io.finish(status.result(io.protocol, [], None, str(exc)))
        return
    tasks: list[asyncio.Future[Any]] = []
    try:
        output = asyncio.ensure_future(_from_monitor(reader, io))
        gone = asyncio.ensure_future(io.closed.wait())
        tasks += [output, gone, asyncio.ensure_future(_resize_to_monitor(writer, io))]
        if req.stdin:
            tasks.append(asyncio.ensure_future(_stdin_to_monitor(writer, io)))
        await asyncio.wait([output, gone], return_when=asyncio.FIRST_COMPLETED)
        if output.done() and not output.cancelled() and output.exception() is None:
            error = output.result()
    finally:
        for t in tasks:
            t.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    await io.finish(status.result(io.protocol, [], None if error else 0, error))
