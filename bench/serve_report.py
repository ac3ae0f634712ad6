"""Statistics of one scenario's records, the stages' Prometheus metrics, NVML sampling and the output files."""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any

import numpy as np

from bench.common import cpu_seconds
from bench.serve_client import Record

PERCENTILES = (50, 90, 99)


def summary(values: list[float]) -> dict[str, float | None]:
    """mean, p50, p90, p99 (linear interpolation, numpy's default) of `values`; None where empty."""
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), **{f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}}


def saturated_window(records: list[Record], concurrency: int) -> tuple[float, float] | None:
    """The time.time() span during which at least half of `concurrency` requests were in flight (sent, last chunk
    not yet received): the load held the server saturated there, while the ramp before it and the tail of a few
    long requests after it measure how fast one request is served, not how busy the server can be kept."""
    events = sorted([(r.start, 1) for r in records] +
                    [(r.chunk_times[-1] if r.chunk_times else r.start, -1) for r in records])
    need = max(1, (concurrency + 1) // 2)
    inside, first, last = 0, None, None
    for t, change in events:
        inside += change
        if inside >= need and first is None:
            first = t
        if change < 0 and inside + 1 >= need:
            last = t  # the in-flight count was still at least `need` until this request finished
    return None if first is None or last is None or last <= first else (first, last)


def scenario_stats(records: list[Record], t0: float, end: float, slo_ttft_s: float, slo_tpot_s: float
                   ) -> dict[str, Any]:
    ok = [r for r in records if not r.error]
    ttft = [r.chunk_times[0] - r.start for r in ok if r.chunk_times]
    e2e = [r.chunk_times[-1] - r.start for r in ok if r.chunk_times]
    tpot, itl, good = [], [], 0
    for r in ok:
        if not r.chunk_times:
            continue
        t = (r.chunk_times[-1] - r.chunk_times[0]) / (r.completion_tokens - 1) if r.completion_tokens > 1 else 0.0
        if r.completion_tokens > 1:
            tpot.append(t)
        itl.extend(np.diff(r.chunk_times).tolist())
        if r.chunk_times[0] - r.start <= slo_ttft_s and t <= slo_tpot_s:
            good += 1
    # From the first send, not the planned start: late-starting client processes must not count as idle time.
    duration = max(end - min([r.start for r in records if r.start] or [t0]), 1e-9)
    out_tokens = sum(r.completion_tokens for r in ok)
    return {
        "num_requests": len(records), "completed": len(ok), "failed": len(records) - len(ok),
        "errors": sorted({r.error for r in records if r.error})[:5],
        "duration_s": duration,
        "total_input_tokens": sum(r.prompt_tokens for r in ok),
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration, "output_throughput": out_tokens / duration,
        "ttft_s": summary(ttft), "tpot_s": summary(tpot), "itl_s": summary(itl), "e2e_s": summary(e2e),
        "slo": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s}, "goodput_requests_per_s": good / duration,
        "good_requests": good,
    }


METRICS = ("flashstream_kv_cache_usage_ratio", "flashstream_num_preemptions_total", "flashstream_num_preemptions",
           "flashstream_num_requests_running", "flashstream_num_requests_waiting",
           "flashstream_device_idle_seconds_total", "flashstream_steps_queued_ahead_total",
           "flashstream_next_plan_wait_seconds_total")


# The worker's step time and count by kind of step, and its rows by phase, kept per label: "name{kind}".
STEP_METRICS = ("flashstream_step_duration_seconds_sum", "flashstream_step_duration_seconds_count",
                "flashstream_step_tokens_sum")
STEP_KINDS = ("prefill", "mixed", "decode")


def scrape(urls: dict[str, str]) -> dict[str, dict[str, float] | None]:
    """Each stage's values of METRICS (summed over labels) and of STEP_METRICS (by kind); None for a stage that did
    not answer."""
    out: dict[str, dict[str, float] | None] = {}
    for stage, url in urls.items():
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            out[stage] = None
            continue
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line:
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in STEP_METRICS:
                label = 'kind="' if 'kind="' in line else 'phase="'
                kind = line.split(label, 1)[1].split('"', 1)[0] if label in line else ""
                name = f"{name}{{{kind}}}"
            elif name not in METRICS:
                continue
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        out[stage] = values
    return out


def stage_metrics(before: dict, after: dict, peak_kv: dict[str, float]) -> dict[str, Any]:
    """KV usage (peak sampled during the run, and at the end) and preemptions during the run; absent -> None."""
    out = {}
    for stage in before:
        b, a = before[stage] or {}, after.get(stage) or {}
        pre = next((n for n in ("flashstream_num_preemptions_total", "flashstream_num_preemptions") if n in a), None)
        out[stage] = {
            "kv_cache_usage_peak": peak_kv.get(stage),
            "preemptions": None if pre is None else a[pre] - b.get(pre, 0.0),
        }
        steps = {}
        for kind in STEP_KINDS:
            total, count = (f"flashstream_step_duration_seconds_{x}{{{kind}}}" for x in ("sum", "count"))
            if count in a and a[count] > b.get(count, 0.0):
                steps[kind] = {"steps": int(a[count] - b.get(count, 0.0)), "seconds": a[total] - b.get(total, 0.0)}
        if steps:
            out[stage]["steps"] = steps  # where the worker's step time went during the run
            for phase in ("prefill", "decode"):  # prefill tokens and decode rows run, over every kind of step
                name = f"flashstream_step_tokens_sum{{{phase}}}"
                out[stage][f"{phase}_tokens"] = int(a.get(name, 0.0) - b.get(name, 0.0))
            for key, name in (("device_idle_s", "flashstream_device_idle_seconds_total"),
                              ("steps_queued_ahead", "flashstream_steps_queued_ahead_total"),
                              ("next_plan_wait_s", "flashstream_next_plan_wait_seconds_total")):
                out[stage][key] = a[name] - b.get(name, 0.0) if name in a else None  # None: a worker without it
    return out


def interval_busy(samples: list[tuple[float, float]], start: float, stop: float) -> float | None:
    """Busy fraction over [start, stop] from samples that each cover the time since the one before: (end instant,
    busy fraction over that interval), each weighted by how much of its interval falls inside; the first sample's
    interval is taken to be as long as the median one. None when no interval reaches inside."""
    if len(samples) < 2:
        return None
    ends = [t for t, _ in samples]
    prev = ends[0] - float(np.median(np.diff(ends)))
    covered = busy = 0.0
    for end, fraction in samples:
        overlap = min(end, stop) - max(prev, start)
        if overlap > 0:
            covered += overlap
            busy += overlap * fraction
        prev = end
    return busy / covered if covered > 0 else None


class Sampler:
    """Samples GPU busy fraction (NVML) and the stages' KV usage at ~10 Hz in a thread during a run.

    NVML's busy fraction is the share of a trailing sample period (1/6 s to 1 s, by product) in which a kernel ran.
    Read every 0.1 s and set at the instant of the read, each value also covers time before that instant, so a busy
    period that starts with the load reads low at its start. The driver's own samples (nvmlDeviceGetSamples) carry
    the instant each period ended: where it keeps them, a window's busy fraction is taken from those periods
    (`interval_busy`), and the reads at 10 Hz are kept beside it (`gpu_busy_polled`)."""

    def __init__(self, metric_urls: dict[str, str], period_s: float = 0.1) -> None:
        self.urls, self.period = metric_urls, period_s
        self.gpu: list[tuple[float, float]] = []  # (time.time(), busy fraction of the busiest GPU)
        # The first GPU's driver samples: (time.time() its period ended, busy fraction over the period).
        self.gpu_periods: list[tuple[float, float]] = []
        self._last_period_us = 0  # the newest driver sample's timestamp taken so far
        # (time.time(), SM clock MHz, power W) of the first GPU: whether busy steps ran at full clock or power-capped
        self.clocks: list[tuple[float, float, float]] = []
        self.kv_peak: dict[str, float] = {}
        self.timeline: list[tuple[float, dict[str, dict[str, float] | None]]] = []  # (time.time(), scrape)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - no NVML library or no GPU: report null
            self._nvml, self._handles = None, []

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self.period):
            if self._nvml is not None:
                nvml, first, now = self._nvml, self._handles[0], time.time()
                util = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles]
                self.gpu.append((now, max(util) / 100.0))
                self.clocks.append((now, nvml.nvmlDeviceGetClockInfo(first, nvml.NVML_CLOCK_SM),
                                    nvml.nvmlDeviceGetPowerUsage(first) / 1e3))
                self._take_periods()
            n += 1
            if n % 2 == 0:  # metrics every 0.2 s (a scrape costs the stages some CPU): a 1B run lasts a few seconds
                values = scrape(self.urls)
                self.timeline.append((time.time(), values))
                for stage, vals in values.items():
                    kv = (vals or {}).get("flashstream_kv_cache_usage_ratio")
                    if kv is not None:
                        self.kv_peak[stage] = max(self.kv_peak.get(stage, 0.0), kv)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._nvml is not None:
            self._take_periods()
        # Timestamps that are not on time.time()'s clock (they should be microseconds since the epoch) are unusable.
        if self.gpu_periods and abs(self.gpu_periods[-1][0] - time.time()) > 5.0:
            self.gpu_periods = []

    def _take_periods(self) -> None:
        """Appends the driver's busy samples newer than the last taken (none where the driver keeps none)."""
        nvml = self._nvml
        try:
            _, samples = nvml.nvmlDeviceGetSamples(self._handles[0], nvml.NVML_GPU_UTILIZATION_SAMPLES,
                                                   self._last_period_us)
        except nvml.NVMLError:
            return
        for sample in sorted(samples, key=lambda x: x.timeStamp):
            if sample.timeStamp > self._last_period_us:
                self.gpu_periods.append((sample.timeStamp / 1e6, sample.sampleValue.uiVal / 100.0))
                self._last_period_us = sample.timeStamp

    def idle_by_tenth(self, start: float, stop: float) -> dict[str, list[float]] | None:
        """Over ten equal slices of the samples between time.time() instants start and stop (the load): the
        workers' device idle seconds, their steps (and how many of them held prompt tokens), the sequences running
        in the scheduler at each slice's end, and NVML's busy fraction over the slice (where in a run the device
        waited: between steps, or inside them)."""
        samples = [x for x in self.timeline if start <= x[0] <= stop]
        if len(samples) < 11:
            return None
        picks = [samples[round(i * (len(samples) - 1) / 10)] for i in range(11)]

        def total(values: dict[str, dict[str, float] | None], name: str) -> float:
            return sum(v.get(name, 0.0) for v in values.values() if v)

        def steps(values: dict[str, dict[str, float] | None]) -> float:
            return sum(total(values, f"flashstream_step_duration_seconds_count{{{k}}}") for k in STEP_KINDS)

        def busy(a: float, b: float) -> float | None:
            value = self.gpu_busy(a, b)
            return None if value is None else round(value, 3)

        def mhz(a: float, b: float) -> int | None:
            inside = [c for t, c, _ in self.clocks if a <= t < b]
            return round(float(np.mean(inside))) if inside else None

        prompt_steps = [f"flashstream_step_duration_seconds_count{{{k}}}" for k in STEP_KINDS if k != "decode"]
        idle = "flashstream_device_idle_seconds_total"
        return {
            "slice_s": [round(b[0] - a[0], 2) for a, b in zip(picks, picks[1:])],
            "gpu_busy": [busy(a[0], b[0]) for a, b in zip(picks, picks[1:])],
            "sm_mhz": [mhz(a[0], b[0]) for a, b in zip(picks, picks[1:])],
            "prompt_steps": [int(sum(total(b[1], n) - total(a[1], n) for n in prompt_steps))
                             for a, b in zip(picks, picks[1:])],
            "device_idle_s": [round(total(b[1], idle) - total(a[1], idle), 3) for a, b in zip(picks, picks[1:])],
            "steps": [int(steps(b[1]) - steps(a[1])) for a, b in zip(picks, picks[1:])],
            "running": [int(total(b[1], "flashstream_num_requests_running")) for b in picks[1:]],
        }

    def gpu_busy(self, start: float, stop: float) -> float | None:
        """NVML's busy fraction between time.time() instants start and stop (the load: from the first request sent
        to the last token received, not the client's own start-up before it): from the driver's periods where there
        are any, else the mean of the reads taken in the window; see the class's note."""
        busy = interval_busy(self.gpu_periods, start, stop)
        return busy if busy is not None else self.gpu_busy_polled(start, stop)

    def gpu_busy_polled(self, start: float, stop: float) -> float | None:
        """The mean of the busy fractions read at 10 Hz in [start, stop), each set at the instant of its read."""
        busy = [u for t, u in self.gpu if start <= t < stop]
        return float(np.mean(busy)) if busy else None

    def clock_power(self, start: float, stop: float) -> dict[str, int] | None:
        """Mean SM clock (MHz) and power draw (W) of the first GPU between time.time() instants start and stop."""
        inside = [(c, w) for t, c, w in self.clocks if start <= t <= stop]
        if not inside:
            return None
        return {"sm_mhz": round(float(np.mean([c for c, _ in inside]))),
                "power_w": round(float(np.mean([w for _, w in inside])))}


def markdown(scenarios: list[dict[str, Any]]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.1f}"

    def percents(values: list[float | None]) -> str:
        return " / ".join("-" if v is None else f"{v:.0%}" for v in values)

    lines = ["| scenario | requests (failed) | out tok/s | req/s | TTFT p50 / p99 ms | TPOT p50 ms | ITL p50 / p99 ms "
             "| E2E p50 s | goodput req/s | GPU busy: load / saturated |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in scenarios:
        r = s["result"]
        busy = [s.get("gpu_busy"), s.get("gpu_busy_saturated")]
        gpu = percents(busy)
        polled = s.get("gpu_busy_polled")
        if polled and polled != busy:
            gpu += f" (read at 10 Hz: {percents(polled)})"
        if s.get("gpu_clock_saturated"):
            gpu += f" at {s['gpu_clock_saturated']['sm_mhz']} MHz, {s['gpu_clock_saturated']['power_w']} W"
        e2e = r["e2e_s"]["p50"]
        lines.append(
            f"| {s['name']} | {r['num_requests']} ({r['failed']}) | {r['output_throughput']:.0f} | "
            f"{r['request_throughput']:.2f} | {ms(r['ttft_s']['p50'])} / {ms(r['ttft_s']['p99'])} | "
            f"{ms(r['tpot_s']['p50'])} | {ms(r['itl_s']['p50'])} / {ms(r['itl_s']['p99'])} | "
            f"{'-' if e2e is None else f'{e2e:.2f}'} | {r['goodput_requests_per_s']:.2f} | {gpu} |")
    return "\n".join(lines) + "\n" + cpu_table(scenarios) + step_table(scenarios) + idle_table(scenarios)


def process_cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) each process has used so far, by name; a process gone is left out."""
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = cpu_seconds(pid)
        except OSError:
            continue
    return out


def cpu_table(scenarios: list[dict[str, Any]]) -> str:
    """Each stage process's CPU time during each run (every replica apart), and the client's (its processes summed):
    seconds, share of the run's wall time (1.0: one core all the time) and microseconds per output token: the
    control plane's cost per token, which process nears a whole core, and whether the client could."""
    names = sorted({name for s in scenarios for name in s.get("cpu_s") or {}})
    if not names:
        return ""
    lines = ["", "CPU time of each stage process during the run (from /proc) and of the client's load loops (its "
             "processes summed): seconds / cores busy (CPU over wall time) / microseconds per output token", "",
             "| scenario | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in scenarios:
        r, cpu_s = s["result"], s.get("cpu_s") or {}
        cells = ["-" if name not in cpu_s else f"{cpu_s[name]:.2f} / {cpu_s[name] / r['duration_s']:.2f} / "
                 f"{cpu_s[name] / max(r['total_output_tokens'], 1) * 1e6:.1f}" for name in names]
        lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def step_table(scenarios: list[dict[str, Any]]) -> str:
    """Where the workers' step time went in each scenario: steps, seconds and mean step time by kind."""
    lines = []
    for s in scenarios:
        for stage, vals in (s.get("stages") or {}).items():
            steps = (vals or {}).get("steps")
            if not steps:
                continue
            cells = [f"{steps[k]['steps']} / {steps[k]['seconds']:.2f} / {steps[k]['seconds'] / steps[k]['steps'] * 1e3:.2f}"
                     if k in steps else "-" for k in STEP_KINDS]
            idle, ahead, wait = vals.get("device_idle_s"), vals.get("steps_queued_ahead"), vals.get("next_plan_wait_s")
            num_steps = sum(steps[k]["steps"] for k in steps)
            cells += [str(vals.get("prefill_tokens", "-")), str(vals.get("decode_tokens", "-")),
                      "-" if idle is None else f"{idle:.2f}",
                      "-" if ahead is None else f"{ahead:.0f} ({ahead / num_steps:.0%})",
                      "-" if wait is None else f"{wait:.2f}"]
            lines.append(f"| {s['name']} | {stage} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = ["", "Worker step time by kind of step: steps / seconds / mean ms (host time of a step, from the workers' "
            "flashstream_step_duration_seconds); prefill tokens and decode rows run; seconds the device sat idle "
            "between steps; steps launched before the host had read the tokens of the step before (queued ahead); "
            "seconds the worker waited, while a step ran, for the scheduler's next plan", "",
            "| scenario | stage | " + " | ".join(STEP_KINDS)
            + " | prefill tokens | decode rows | device idle s | queued ahead | plan wait s |",
            "|---|---|" + "---|" * (len(STEP_KINDS) + 5)]
    return "\n".join(head + lines) + "\n"


def plot(scenarios: list[dict[str, Any]], path: str) -> str | None:
    """Latency (TTFT and TPOT p50/p99) against output throughput; returns a message when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG written"
    # Points carry numbers and the names are listed below the plots: names beside the points overran the axes.
    names = [f"{i}: {s['name']}" for i, s in enumerate(scenarios, 1)]
    legend_in = 0.13 * len(names) + 0.3
    fig, axes = plt.subplots(1, 2, figsize=(11, 4 + legend_in))
    for i, s in enumerate(scenarios, 1):
        r = s["result"]
        for ax, key in zip(axes, ("ttft_s", "tpot_s")):
            if r[key]["p50"] is None:
                continue
            ax.scatter([r["output_throughput"]] * 2, [r[key]["p50"] * 1e3, r[key]["p99"] * 1e3], s=18)
            ax.annotate(str(i), (r["output_throughput"], r[key]["p99"] * 1e3), fontsize=7)
    for ax, label in zip(axes, ("TTFT p50 / p99 (ms)", "TPOT p50 / p99 (ms)")):
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, "\n".join(names), fontsize=7, va="bottom", family="monospace")
    fig.tight_layout(rect=(0, legend_in / (4 + legend_in), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    time.sleep(0)
    return None


def idle_table(scenarios: list[dict[str, Any]]) -> str:
    """Where in each run the device waited: idle seconds, steps and running sequences by tenth of the run."""
    lines = []
    for s in scenarios:
        t = s.get("idle_by_tenth")
        if not t or not any(t["steps"]):
            continue
        clocks = t.get("sm_mhz") or [None] * 10
        cells = [f"{'-' if b is None else f'{b:.0%}'}{'' if c is None else f' @ {c}'} / {idle:.2f} / {steps} ({p}) / "
                 f"{running}" for b, c, idle, steps, p, running in zip(t["gpu_busy"], clocks, t["device_idle_s"],
                                                                       t["steps"], t["prompt_steps"], t["running"])]
        lines.append(f"| {s['name']} | {sum(t['slice_s']) / 10:.2f} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = ["", "By tenth of each run: NVML's GPU busy (@ mean SM clock, MHz) / seconds the device sat idle between "
            "steps / worker steps (of them, steps holding prompt tokens) / sequences running in the scheduler at the "
            "tenth's end (the stages' metrics, scraped every 0.2 s; NVML sampled every 0.1 s)", "",
            "| scenario | tenth s | " + " | ".join(str(i) for i in range(1, 11)) + " |", "|---|---|" + "---|" * 10]
    return "\n".join(head + lines) + "\n"
