"""A FlashStreamError as an HTTP answer in OpenAI's error format: status, body and headers.

The gateway's OpenAI API answers every failed request with it, and the stages' status ports answer their own
routes' refusals with it, so a client parses one error shape wherever it asked."""

from __future__ import annotations

from typing import Any

from services.common.errors import ErrorCode, FlashStreamError

# gRPC status → (HTTP status, OpenAI error type, default code).
_HTTP_ERRORS: dict[int, tuple[int, str, str | None]] = {
    ErrorCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_value"),
    ErrorCode.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    ErrorCode.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
    ErrorCode.FAILED_PRECONDITION: (409, "invalid_request_error", "failed_precondition"),
    ErrorCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    ErrorCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
    ErrorCode.CANCELLED: (499, "server_error", "cancelled"),
}
# Bad requests whose HTTP status is more specific than 400.
_HTTP_STATUS_BY_CODE = {"request_too_large": 413, "method_not_allowed": 405}
RETRY_AFTER_S = 1


def error_response(exc: FlashStreamError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(HTTP status, OpenAI error body, extra headers) for an error."""
    status, err_type, code = _HTTP_ERRORS.get(int(exc.code), (500, "server_error", "internal_error"))
    code = getattr(exc, "error_code", code)
    status = _HTTP_STATUS_BY_CODE.get(code, status)
    body = {"error": {"message": exc.message, "type": err_type, "param": getattr(exc, "param", None), "code": code}}
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {}
    return status, body, headers
