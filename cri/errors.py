"""Errors of the CRI server, each carrying the gRPC status code a client should see.

Lower layers raise their own exceptions; the servicers translate them into
these, and one interceptor turns these into gRPC status codes, so no RPC
ends in an unhandled exception (UNKNOWN) for a caller's mistake.
"""

from __future__ import annotations

import grpc


class CRIError(Exception):
    """An RPC failure with its status code; `subject` is the id or field it concerns."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, subject: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.subject = subject

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}" if self.subject else self.message


class InvalidArgument(CRIError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CRIError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CRIError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CRIError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(CRIError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(CRIError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(CRIError):
    code = grpc.StatusCode.UNAVAILABLE


class Internal(CRIError):
    code = grpc.StatusCode.INTERNAL
