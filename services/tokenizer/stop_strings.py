"""Stop strings over streamed text: hold back what could still become a stop string, cut at a match.

Text arrives in deltas. Any suffix of the text seen so far that is the start of some stop string is
held back until the next delta decides it: either the stop string completes (the output ends before
it, or after it with include_stop_str_in_output) or the text moves on and the held part is released.
Because held text is never sent, a stop string can only begin inside the held part or the new delta,
so only that tail is searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class StopResult:
    """What a delta releases, and the stop string that ended the output, if one did."""

    text: str
    stop_string: str | None = None


class StopStringMatcher:
    """Stop-string state of one request."""

    __slots__ = ("stops", "include_stop", "_held", "_max_hold", "stopped")

    def __init__(self, stops: Sequence[str], include_stop: bool = False) -> None:
        if any(s == "" for s in stops):
            raise InvalidArgument("stop strings must not be empty")
        self.stops = tuple(dict.fromkeys(stops))
        self.include_stop = include_stop
        self._held = ""
        self._max_hold = max((len(s) - 1 for s in self.stops), default=0)
        self.stopped: str | None = None

    @property
    def held(self) -> str:
        return self._held

    def feed(self, delta: str) -> StopResult:
        """Adds a text delta; returns the text that may be sent now. After a match, returns nothing more."""
        if self.stopped is not None or not delta:
            return StopResult("")
        if not self.stops:
            return StopResult(delta)
        text = self._held + delta
        match = self._first_match(text)
        if match is not None:
            start, stop = match
            self.stopped, self._held = stop, ""
            end = start + len(stop) if self.include_stop else start
            return StopResult(text[:end], stop)
        hold = self._partial_suffix_len(text)
        self._held = text[len(text) - hold:] if hold else ""
        return StopResult(text[:len(text) - hold])

    def flush(self) -> str:
        """At a normal finish: the held-back text, which no stop string completed."""
        held, self._held = self._held, ""
        return "" if self.stopped is not None else held

    def _first_match(self, text: str) -> tuple[int, str] | None:
        """The stop string occurring first (earliest start; the earlier-listed one on a tie)."""
        best: tuple[int, str] | None = None
        for stop in self.stops:
            index = text.find(stop)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, stop)
        return best

    def _partial_suffix_len(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of some stop string."""
        for length in range(min(self._max_hold, len(text)), 0, -1):
            tail = text[len(text) - length:]
            if any(stop.startswith(tail) for stop in self.stops):
                return length
        return 0
