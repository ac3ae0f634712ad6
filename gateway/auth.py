"""Optional API keys: `Authorization: Bearer <key>` on HTTP and `authorization` metadata on gRPC."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from services.common.errors import Unauthenticated


class ApiKeys:
    """The accepted keys; with none configured every request is let through."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def refusal(self, authorization: str | None) -> str | None:
        """Why `authorization` is refused, or None when it is accepted."""
        try:
            self.check(authorization)
        except Unauthenticated as exc:
            return exc.message
        return None

    def check(self, authorization: str | None) -> None:
        """Raises Unauthenticated unless `authorization` is "Bearer <an accepted key>"."""
        if not self._keys:
            return
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthenticated("missing API key: send the header 'Authorization: Bearer <key>'")
        token = authorization[len("Bearer "):].strip().encode()
        # Compare against every key in constant time, so timing reveals neither the key nor which one matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(token, key)
        if not matched:
            raise Unauthenticated("invalid API key")
