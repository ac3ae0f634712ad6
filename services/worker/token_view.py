"""A read-only window on a list of token ids, so the sampler sees a sequence's prompt and output without copies."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload


class TokenView(Sequence[int]):
    """tokens[start:stop] as a Sequence, sharing the list (stop=None follows the list as it grows)."""

    __slots__ = ("_tokens", "_start", "_stop")

    def __init__(self, tokens: list[int], start: int = 0, stop: int | None = None) -> None:
        self._tokens, self._start, self._stop = tokens, start, stop

    def __len__(self) -> int:
        stop = len(self._tokens) if self._stop is None else self._stop
        return max(0, stop - self._start)

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return self.tolist()[index]
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"token index {index} out of range for {length} tokens")
        return self._tokens[self._start + (index % length)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.tolist())

    def tolist(self) -> list[int]:
        return self._tokens[self._start : self._start + len(self)]

    def __array__(self, dtype=None, copy=None):  # noqa: ANN001, ANN204 - numpy protocol, lets torch.as_tensor copy once
        import numpy as np

        return np.asarray(self.tolist(), dtype=dtype)
