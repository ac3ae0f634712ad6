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
        "loading weights: 25% (1.0/4.0 MB)", "loading weights: 50% (2.0/4.0 MB)", "loading weights: 75% (3.0/4.0 MB)",
        "loading weights: 100% (4.0/4.0 MB)"]
    log = io.StringIO()
    with Progress(40e6, "loading weights", "MB", stream=log, scale=1e6) as progress:
        progress.advance(40e6)
    assert log.getvalue().splitlines() == ["loading weights: 100% (40/40 MB)"]


def test_a_finished_task_whose_units_fell_short_of_the_estimate_ends_at_100_percent_in_tenths_of_a_mb() -> None:
    log = io.StringIO()
    with Progress(1.5e6, "loading weights", "MB", stream=log, scale=1e6) as progress:
        progress.advance(0.75e6)
        progress.advance(0.6e6)  # the file's header made the estimate larger than the tensors
    assert log.getvalue().splitlines() == [
        "loading weights: 50% (0.8/1.5 MB)", "loading weights: 90% (1.4/1.5 MB)", "loading weights: 100% (1.5/1.5 MB)"]


def test_a_task_that_fails_midway_does_not_claim_100_percent() -> None:
    log = io.StringIO()
    try:
        with Progress(4, "building the demo model", "step", stream=log) as progress:
            progress.advance()
            raise OSError("disk full")
    except OSError:
        pass
    assert log.getvalue().splitlines() == ["building the demo model: 25% (1/4 step)"]


def test_a_terminal_gets_a_bar_that_ends_full() -> None:
    terminal = _Terminal()
    with Progress(3, "building the demo model", "step", stream=terminal) as progress:
        for _ in range(3):
            progress.advance()
    last = terminal.getvalue().rsplit("\r", 1)[-1]
    assert last.startswith("building the demo model: 100%") and "3/3" in last
