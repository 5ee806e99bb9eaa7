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


def rpc(fn: Handler[R]) -> Handler[R]:
    """Decorate an async servicer method `(self, request, context)`."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        started, code = time.monotonic(), "OK"
        try:
            return await fn(self, request, context)
        except CRIError as exc:
            code = exc.code.name
            await context.abort(exc.code, str(exc))
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            code = _aborted_code(context)
            raise
        except Exception as exc:
            code = "INTERNAL"
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__}: {exc}")
        finally:
            _observe(fn.__name__, code, started)
        raise AssertionError("unreachable: context.abort raises")

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
        started, code = time.monotonic(), "OK"
        try:
            async for item in fn(self, request, context):
                yield item
        except CRIError as exc:
            code = exc.code.name
            await context.abort(exc.code, str(exc))
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            code = _aborted_code(context)
            raise
        except Exception as exc:
            code = "INTERNAL"
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__}: {exc}")
        finally:
            _observe(fn.__name__, code, started)

    return wrapper


def _aborted_code(context: grpc.aio.ServicerContext) -> str:
    """The code a handler passed to context.abort itself."""
    try:
        code = context.code()
    except Exception:
        return "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
