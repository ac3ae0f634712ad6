"""Start-up progress: plain lines at each tenth in a log, a tqdm bar on a terminal."""

from __future__ import annotations

import io

from services.common.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_plain_line_each_time_a_tenth_of_the_way_is_passed() -> None:
    log = io.StringIO()
    with Progress(4e6, "loading weights", "MB", stream=log, scale=1e6) as progress:
        for _ in range(4):
            progress.advance(1e6)
    assert log.getvalue().splitlines() == [
        "loading weights: 25% (1/4 MB)", "loading weights: 50% (2/4 MB)", "loading weights: 75% (3/4 MB)",
        "loading weights: 100% (4/4 MB)"]


def test_a_terminal_gets_a_bar_that_ends_full() -> None:
    terminal = _Terminal()
    with Progress(3, "building the demo model", "step", stream=terminal) as progress:
        for _ in range(3):
            progress.advance()
    last = terminal.getvalue().rsplit("\r", 1)[-1]
    assert last.startswith("building the demo model: 100%") and "3/3" in last
