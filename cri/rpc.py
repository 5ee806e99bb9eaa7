"""The wrapper every servicer method goes through: CRIError becomes its status code, any
other exception INTERNAL with its message and a logged traceback, so a client never sees
an unhandled exception and the server never dies of one request."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cri.errors import CRIError

log = logging.getLogger("pinnace.cri")

R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]

# (method, status code name, seconds) after every call; cri.metrics sets it
observer: Callable[[str, str, float], None] | None = None


def _observe(method: str, code: str, started: float) -> None:
    if observer is not None:
        try:
            observer(method, code, time.monotonic() - started)
        except Exception:  # metrics never fail a call
            log.exception("rpc observer failed")


class _Call:
    """One RPC: its outcome translated to a status code (CRIError -> its code, any other
    exception -> INTERNAL with a logged traceback) and observed for the metrics."""

    def __init__(self, name: str, context: grpc.aio.ServicerContext) -> None:
        self.name = name
        self.context = context
        self.started = time.monotonic()

    async def __aenter__(self) -> _Call:
        return self

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        code = "OK"
        try:
            if isinstance(exc, CRIError):
                code = exc.code.name
                await self.context.abort(exc.code, str(exc))
            elif isinstance(exc, asyncio.CancelledError):
                code = "CANCELLED"
            elif isinstance(exc, grpc.aio.AbortError):
                code = _aborted_code(self.context)
            elif isinstance(exc, Exception):
                code = "INTERNAL"
                log.exception("%s failed", self.name, exc_info=exc)
                await self.context.abort(grpc.StatusCode.INTERNAL, f"{self.name}: {exc}")
        finally:
            _observe(self.name, code, self.started)
        return False  # never swallowed: abort() raised, or the exception goes on


def rpc(fn: Handler[R]) -> Handler[R]:
    """Decorate an async servicer method `(self, request, context)`."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        async with _Call(fn.__name__, context):
            return await fn(self, request, context)
        raise AssertionError("unreachable: the call returned or raised")

    return wrapper


async def blocking(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Run blocking work (the runtime library, the image store) on a worker thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


StreamHandler = Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[R]]


def rpc_stream(fn: StreamHandler[R]) -> StreamHandler[R]:
    """`rpc` for server-streaming methods (async generators)."""

    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[R]:
        async with _Call(fn.__name__, context):
            async for item in fn(self, request, context):
                yield item

    return wrapper


def _aborted_code(context: grpc.aio.ServicerContext) -> str:
    """The code a handler passed to context.abort itself."""
    try:
        code = context.code()
    except Exception:
        return "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
