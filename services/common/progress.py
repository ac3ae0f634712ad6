"""Progress of a long start-up step (loading weights, building the demo model) that a person can see: a tqdm bar
on a terminal, and in a log a plain line each time a tenth of the way is passed (a bar's carriage returns would
garble a log)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO


class Progress:
    """Counts `total` units of one task; use as a context manager and call `advance` as units finish."""

    def __init__(self, total: float, what: str, unit: str = "", stream: TextIO | None = None,
                 scale: float = 1.0) -> None:
        self.total = total
        self.what = what
        self.unit = unit
        self.scale = scale  # shown value = units / scale (e.g. bytes shown as MB)
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0.0
        self._next_tenth = 1
        self._bar = None
        if self._is_terminal():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit, unit_scale=1.0 / scale if scale != 1.0 else False,
                             file=self.stream, dynamic_ncols=True, leave=True)

    def _is_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def advance(self, amount: float = 1) -> None:
        self.done += amount
        if self._bar is not None:
            self._bar.update(amount)
            return
        crossed = False
        while self.total and self._next_tenth <= 10 and self.done * 10 >= self._next_tenth * self.total:
            self._next_tenth += 1
            crossed = True
        if crossed:
            self._line(min(100, int(100 * self.done / self.total)))

    def _line(self, percent: int) -> None:
        done, total = self.done / self.scale, self.total / self.scale
        fmt = "g" if self.scale == 1.0 else ".0f" if total >= 10 else ".1f"
        unit = f" {self.unit}" if self.unit else ""
        print(f"{self.what}: {percent}% ({done:{fmt}}/{total:{fmt}}{unit})", file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # `total` may be an estimate (file sizes, headers included, against the tensors' bytes): a task that
        # finished ends at 100% rather than at the last tenth it reached.
        if exc_type is None and self.done < self.total:
            if self._bar is not None:
                self._bar.update(self.total - self.done)
                self.done = self.total
            else:
                self.done = self.total
                if self._next_tenth <= 10:
                    self._line(100)
        if self._bar is not None:
            self._bar.close()
