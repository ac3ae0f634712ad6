"""Gateway errors that carry what an OpenAI-style error body needs besides the status: `param` and `code`."""

from __future__ import annotations

from services.common.errors import InvalidArgument, NotFound


class RequestError(InvalidArgument):
    """Bad input, with the offending request field (`param`) and a short machine-readable `error_code`."""

    def __init__(self, message: str, param: str | None = None, error_code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.error_code = error_code


class PayloadTooLarge(RequestError):
    """A request body over the gateway's size limit (HTTP 413)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None, "request_too_large")


class ModelNotFound(NotFound):
    """A model name no tokenizer of this gateway serves: NOT_FOUND / HTTP 404 with OpenAI's `model_not_found`
    code, as OpenAI answers it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.param = "model"
        self.error_code = "model_not_found"
