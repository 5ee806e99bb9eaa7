"""Runtime messages the way runc writes them: logrus text to stderr, JSON to --log.

containerd's runc shim reads the last error from the --log file in JSON
(--log-format json); a person reads stderr.
"""

from __future__ import annotations

import os
import sys
import time

from runtime import jsonio

_log_path: str | None = None
_log_json = False


def configure(path: str | None, fmt: str) -> None:
    global _log_path, _log_json
    _log_path, _log_json = path, fmt == "json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _emit(level: str, msg: str) -> None:
    text = f'time="{_now()}" level={level} msg={jsonio.dumps(msg)}\n'
    if _log_path:
        line = (
            jsonio.dumps({"level": level, "msg": msg, "time": _now()}) + "\n" if _log_json else text
        )
        try:
            fd = os.open(_log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass
    if level != "debug":
        sys.stderr.write(text)
        sys.stderr.flush()


def error(msg: str) -> None:
    _emit("error", msg)


def warn(msg: str) -> None:
    _emit("warning", msg)
