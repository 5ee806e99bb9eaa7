"""Container logs in the CRI format kubelet reads (`kubectl logs`, `crictl logs`).

Each record is one line: `<RFC3339Nano UTC time> <stdout|stderr> <P|F> <content>\\n`.
F ends a line of the container's output; P is a piece of a line that goes on
in the next record: the tail of a read that did not end in a newline (one P
record per read, as containerd writes them) or a slice of a line longer than
the maximum record size. kubelet joins P records until an F.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

STDOUT = "stdout"
STDERR = "stderr"
STREAMS = (STDOUT, STDERR)
PARTIAL = b"P"
FULL = b"F"
MAX_LINE = 16 * 1024
"""containerd's default max_container_log_line_size: longer lines become P records."""
LOG_MODE = 0o640


class CRILogError(ValueError):
    """A record that is not in the CRI log format; carries the offending line."""

    def __init__(self, line: bytes, reason: str) -> None:
        super().__init__(f"not a CRI log record ({reason}): {line[:80]!r}")
        self.line = line
        self.reason = reason


def timestamp(ns: int) -> bytes:
    """`ns` since the epoch as RFC3339 with nine fraction digits, UTC (sorts as text)."""
    secs, frac = divmod(ns, 10**9)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z").encode()


def format_records(
    stream: str, data: bytes, *, now_ns: int | None = None, max_line: int = MAX_LINE
) -> bytes:
    """The records for one read of `stream`: F per newline-ended line, P for the rest.

    Pure: the caller keeps track of whether a line is still open (see CRILogWriter).
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}: stdout or stderr")
    if max_line < 1:
        raise ValueError(f"max_line must be positive, not {max_line}")
    if not data:
        return b""
    prefix = timestamp(time.time_ns() if now_ns is None else now_ns) + b" " + stream.encode()
    out = bytearray()
    lines = data.split(b"\n")
    last = lines.pop()  # after the final newline: b"" when the read ended a line
    for line in lines:
        _append(out, prefix, line, max_line, complete=True)
    if last:
        _append(out, prefix, last, max_line, complete=False)
    return bytes(out)


def _append(out: bytearray, prefix: bytes, line: bytes, max_line: int, *, complete: bool) -> None:
    pieces = [line[i : i + max_line] for i in range(0, len(line), max_line)] or [b""]
    for i, piece in enumerate(pieces):
        tag = FULL if complete and i == len(pieces) - 1 else PARTIAL
        out += prefix + b" " + tag + b" " + piece + b"\n"


@dataclass(frozen=True)
class Record:
    """One parsed record (the parse kubelet does), for tests and log readers."""

    time: str
    stream: str
    partial: bool
    content: bytes


def parse_record(line: bytes) -> Record:
    """Split one record (with or without its newline); CRILogError if it is not one."""
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        raise CRILogError(line, "fewer than three fields")
    ts, stream, tag = parts[0], parts[1].decode(errors="replace"), parts[2]
    if stream not in STREAMS:
        raise CRILogError(line, f"stream {stream!r}")
    if tag not in (PARTIAL, FULL):
        raise CRILogError(line, f"tag {tag!r}")
    if not ts.endswith(b"Z") or b"T" not in ts:
        raise CRILogError(line, "timestamp")
    return Record(ts.decode(), stream, tag == PARTIAL, parts[3] if len(parts) == 4 else b"")


def parse_log(data: bytes) -> dict[str, list[bytes]]:
    """Whole lines per stream, P records joined to their F, as kubelet shows them."""
    out: dict[str, list[bytes]] = {s: [] for s in STREAMS}
    open_: dict[str, bytearray] = {s: bytearray() for s in STREAMS}
    for raw in data.split(b"\n")[:-1]:  # not splitlines(): content may hold a \r
        rec = parse_record(raw)
        open_[rec.stream] += rec.content
        if not rec.partial:
            out[rec.stream].append(bytes(open_[rec.stream]))
            open_[rec.stream].clear()
    return out


class CRILogWriter:
    """Appends the records of a container's output to its log file.

    `path` "" discards everything (a container without a log path). kubelet
    rotates by renaming the file and asking for a reopen (ReopenContainerLog).
    """

    def __init__(self, path: str, *, max_line: int = MAX_LINE) -> None:
        self.path = path
        self.max_line = max_line
        self._fd = -1
        self._open_line = dict.fromkeys(STREAMS, False)
        self.reopen()

    def reopen(self) -> None:
        """Open `path` anew (O_APPEND, created 0640); the old fd is closed after."""
        if not self.path:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_MODE)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot open the container log {self.path}: {exc.strerror}"
            ) from exc
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)

    def write(self, stream: str, data: bytes) -> None:
        """Log one read of `stream`; a read without a final newline leaves the line open."""
        if not data:
            return
        records = format_records(stream, data, max_line=self.max_line)
        self._open_line[stream] = not data.endswith(b"\n")
        self._emit(records)

    def end_stream(self, stream: str) -> None:
        """The stream is at EOF: close a line left open with an empty F record, so a last
        line without a newline still ends (kubelet would otherwise wait for its F)."""
        if self._open_line.get(stream):
            self._open_line[stream] = False
            self._emit(format_records(stream, b"\n", max_line=self.max_line))

    def _emit(self, records: bytes) -> None:
        if self._fd < 0:
            return
        view = memoryview(records)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
