"""A window of steps traced with torch.profiler under real load: which device kernels the steps spent their time
in, so a serving benchmark can say what bounds the GPU, not only that it is busy.

Off unless the worker is started with --kernel-profile-dir. Then `POST /kernel-profile` on its status port opens a
window at the next step (once the last window's files are written), which closes `count` steps later and writes its
summary (JSON and text) and its timeline (a Chrome trace) from a thread of its own, replacing the last window's; a
request while a window is open is ignored. The summary also says where the device waited: the gaps between one
device operation's end and the next one's start on the timeline, summed by the pair of operations around them
(between steps, inside a step while the host queued its parts, or between the kernels of a replayed graph), which
the worker's idle metric, measured between steps, does not see.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def device_time_us(row: Any) -> float:
    """A key_averages row's self time on the device, in microseconds (torch renamed the field from cuda to device)."""
    value = getattr(row, "self_device_time_total", None)
    return float(value if value is not None else getattr(row, "self_cuda_time_total", 0.0))


DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")  # a Chrome trace's events that ran on the device


@dataclass(frozen=True)
class TimelineGaps:
    """Where a timeline's device sat idle: span from the first operation's start to the last one's end, time some
    operation ran, and the idle time between operations summed by (operation before, operation after)."""

    span_us: float
    busy_us: float
    pairs: list[tuple[str, str, int, float]]  # (before, after, gaps, idle µs), most idle first

    @property
    def idle_us(self) -> float:
        return self.span_us - self.busy_us


def timeline_gaps(events: list[dict[str, Any]], width: int = 60) -> TimelineGaps:
    """The gaps of a Chrome trace's events ("X" events of the device categories; overlapping operations count once).
    Names are cut to `width` characters."""
    ops = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATEGORIES),
                 key=lambda e: e["ts"])
    if not ops:
        return TimelineGaps(0.0, 0.0, [])
    start, end, last = ops[0]["ts"], ops[0]["ts"], ops[0]["name"]
    busy = 0.0
    idle: dict[tuple[str, str], list[float]] = {}
    for op in ops:
        op_end = op["ts"] + op["dur"]
        if op["ts"] > end:
            idle.setdefault((last[:width], op["name"][:width]), []).append(op["ts"] - end)
        busy += max(0.0, op_end - max(op["ts"], end))
        if op_end > end:
            end, last = op_end, op["name"]
    pairs = sorted(((a, b, len(g), sum(g)) for (a, b), g in idle.items()), key=lambda p: -p[3])
    return TimelineGaps(end - start, busy, pairs)


def kernel_rows(prof: torch.profiler.profile) -> list[tuple[str, int, float]]:
    """(kernel name, calls, device µs) of a finished profile, the kernels that ran on the device, longest first."""
    rows = [(row.key, row.count, device_time_us(row)) for row in prof.key_averages()]
    return sorted((r for r in rows if r[2] > 0), key=lambda r: -r[2])


class KernelProfile:
    """`arm` (from any thread) asks for a window; `after_step`, on the thread that runs the steps, opens and closes
    it."""

    def __init__(self, out_dir: str, count: int, name: str = "worker") -> None:
        if count < 1:
            raise ValueError(f"a kernel profile window needs at least one step, got {count}")
        self.out_dir = Path(out_dir)
        self.count, self.name = count, name
        self.num_steps = 0
        self.num_windows = 0  # written so far
        self._armed = False
        self._prof: torch.profiler.profile | None = None
        self._opened_at = 0.0
        self._opened_step = 0
        self._writer: threading.Thread | None = None

    def arm(self) -> None:
        log.info("kernel profile window asked for; it opens at the next step")
        self._armed = True

    def after_step(self) -> None:
        self.num_steps += 1
        if self._prof is None and self._armed and (self._writer is None or not self._writer.is_alive()):
            # Device kernels only where there is a device: host-side op events would multiply what the profiler
            # must post-process (and delay the steps after the window) without adding to the summary.
            cuda = torch.cuda.is_available()
            activities = [torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU]
            self._armed = False
            log.info("kernel profile window opened at step %d for %d steps", self.num_steps, self.count)
            self._prof = torch.profiler.profile(activities=activities)
            self._prof.__enter__()
            self._opened_at = time.perf_counter()
            self._opened_step = self.num_steps
        elif self._prof is not None and self.num_steps >= self._opened_step + self.count:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall_s = time.perf_counter() - self._opened_at
            prof, self._prof = self._prof, None
            prof.__exit__(None, None, None)
            log.info("kernel profile window closed after %.3f s; summarising", wall_s)
            # Off the model thread: summarising a window's events takes seconds, and steps must go on meanwhile
            # (a worker silent for that long is declared stalled).
            self._writer = threading.Thread(target=self._write_logged, args=(prof, wall_s), daemon=True)
            self._writer.start()

    def join(self, timeout_s: float | None = None) -> None:
        """Until the last closed window's files are written."""
        if self._writer is not None:
            self._writer.join(timeout_s)

    def _write_logged(self, prof: torch.profiler.profile, wall_s: float) -> None:
        try:
            self._write(prof, wall_s)
            self.num_windows += 1
        except OSError as exc:
            log.warning("kernel profile not written: %s", exc)

    def _write(self, prof: torch.profiler.profile, wall_s: float) -> None:
        rows = kernel_rows(prof)
        total_us = sum(r[2] for r in rows)
        summary = {
            "steps": self.count, "wall_s": wall_s, "device_kernel_s": total_us / 1e6,
            "kernels": [{"name": name, "calls": calls, "seconds": us / 1e6, "share": us / total_us if total_us else 0.0}
                        for name, calls, us in rows[:60]],
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{self.count} steps in {wall_s:.3f} s wall; kernels {total_us / 1e6:.3f} s on the device", "",
                 "share   seconds   calls  kernel"]
        lines += [f"{us / total_us:6.1%} {us / 1e6:9.4f} {calls:7d}  {name[:140]}" for name, calls, us in rows[:60]]
        trace = self.out_dir / f"{self.name}_trace.json"
        prof.export_chrome_trace(str(trace))
        gaps = timeline_gaps(json.loads(trace.read_text())["traceEvents"])
        summary["device_gaps"] = {"span_s": gaps.span_us / 1e6, "busy_s": gaps.busy_us / 1e6,
                                  "idle_s": gaps.idle_us / 1e6,
                                  "pairs": [{"before": a, "after": b, "gaps": n, "idle_s": us / 1e6}
                                            for a, b, n, us in gaps.pairs[:20]]}
        (self.out_dir / f"{self.name}_kernels.json").write_text(json.dumps(summary, indent=1) + "\n")
        if gaps.span_us:
            lines += ["", f"device timeline: {gaps.span_us / 1e6:.4f} s, busy {gaps.busy_us / 1e6:.4f} s, idle "
                          f"{gaps.idle_us / 1e6:.4f} s; idle by the operations around it:",
                      "   seconds    gaps  before -> after"]
            lines += [f"{us / 1e6:10.4f} {n:7d}  {a} -> {b}" for a, b, n, us in gaps.pairs[:20]]
        (self.out_dir / f"{self.name}_kernels.txt").write_text("\n".join(lines) + "\n")
        log.info("kernel profile of %d steps written to %s", self.count, self.out_dir)
