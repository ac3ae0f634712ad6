"""Errors that carry a status code; servicers turn them into gRPC statuses and the gateway into HTTP codes.

Core objects (scheduler, tokenizer, runner) raise these with a message and never import grpc, so the
codes are plain integers with the gRPC numbering.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """gRPC status codes by number, without importing grpc."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class FlashStreamError(Exception):
    """Base error: a status code and a message meant for the client."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(FlashStreamError):
    code = ErrorCode.INVALID_ARGUMENT


class FailedPrecondition(FlashStreamError):
    """A well-formed request the server is not set up for (a feature it was started without); `error_code` names
    which, for the HTTP body."""

    code = ErrorCode.FAILED_PRECONDITION

    def __init__(self, message: str, error_code: str = "failed_precondition") -> None:
        super().__init__(message)
        self.error_code = error_code


class ResourceExhausted(FlashStreamError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class Unavailable(FlashStreamError):
    code = ErrorCode.UNAVAILABLE


class DeadlineExceeded(FlashStreamError):
    code = ErrorCode.DEADLINE_EXCEEDED


class NotFound(FlashStreamError):
    code = ErrorCode.NOT_FOUND


class Unauthenticated(FlashStreamError):
    code = ErrorCode.UNAUTHENTICATED
