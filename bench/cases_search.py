"""Search QA answered from the result cache: a seeded mix of repeated (Zipf over a hot question set) and fresh
questions against a running stack, over HTTP (SSE) or gRPC, with what the gateways spend per answer.

Phases of one protocol: the hot set is sent once (each becomes a stored answer); then hits one at a time (the
latency a hit adds, with nothing queued); then the mix at a fixed concurrency; then hits alone at a higher one (the hit
rate the gateway processes sustain); then hits alone at offered rates (open loop, Poisson arrivals: the latency of
a hit at that rate, which a closed loop at saturation does not show). Hit or miss is what the gateway reports (usage.result_cached), not
what the mix intended. Gateway CPU seconds come from /proc, so hits per gateway CPU second is the rate per core
that the processes would reach with cores to spare, whatever the load client takes of this machine.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import cpu_seconds
from bench.serve import arrivals
from bench.serve_client import GRPC_SCHEME, Record, run_load
from bench.serve_data import CORPUS, RequestSpec
from bench.serve_report import summary

GREEDY = {"temperature": 0.0, "ignore_eos": True}  # reproducible, so the result cache stores the answers
LOOKUP_METRIC = "flashstream_cache_lookup_seconds_bucket"
GOAL_LOOKUP_S = 0.002


@dataclass(frozen=True)
class SearchLoad:
    hot_questions: int = 200  # the repeated set; every one is stored before the mix
    mix_requests: int = 2000
    hit_requests: int = 2000
    hit_ratio: float = 0.8  # of the mix drawn from the hot set
    zipf_s: float = 1.1  # popularity of the hot set: p(rank k) ~ 1 / k^s
    concurrency: int = 64  # of the hits-only phase: enough to keep a gateway busy
    mix_concurrency: int = 16  # of the mix: clients of a search page, not a saturating load
    idle_requests: int = 200  # hits sent one at a time
    paced_qps: tuple[float, ...] = ()  # offered rates of the open-loop hits phase (none: left out)
    # gRPC's offered rates (None: paced_qps): the Python gRPC client's own ceiling is far below its HTTP client's,
    # and past it the client's queue, not the gateway, would set the latency
    grpc_paced_qps: tuple[float, ...] | None = None
    paced_s: float = 3.0  # seconds of arrivals at each offered rate
    paced_concurrency: int = 2048  # cap on hits in flight there: high enough not to shape the arrivals
    answer_tokens: int = 32
    seed: int = 0


def questions(n: int, seed: int, tag: str) -> list[str]:
    """n distinct questions of 8 to 30 corpus words; `tag` keeps sets of different runs and phases apart."""
    words = sorted({w for w in CORPUS.read_text().split() if w.isalpha()})
    rng = np.random.Generator(np.random.PCG64(seed))
    lengths = rng.integers(8, 31, n)
    return [f"{tag} {i}: " + " ".join(words[j] for j in rng.integers(0, len(words), k)) + "?"
            for i, k in enumerate(lengths)]


def mix(hot: list[str], fresh: list[str], num: int, hit_ratio: float, zipf_s: float, seed: int) -> list[str]:
    """num questions: each from the hot set by Zipf rank with probability hit_ratio, else the next fresh one."""
    rng = np.random.Generator(np.random.PCG64(seed + 7))
    weights = 1.0 / np.arange(1, len(hot) + 1) ** zipf_s
    ranks = rng.choice(len(hot), num, p=weights / weights.sum())
    repeated = rng.random(num) < hit_ratio
    fresh_iter = iter(fresh)
    return [hot[r] if rep else next(fresh_iter) for r, rep in zip(ranks, repeated)]


def lookup_histogram(http_url: str, cache: str) -> dict[float, float]:
    """The gateway's cumulative lookup-time buckets {le: count} for `cache` (empty where it has none)."""
    text = urllib.request.urlopen(http_url.rstrip("/") + "/metrics", timeout=5).read().decode()
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(LOOKUP_METRIC) and f'cache="{cache}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def lookup_stats(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Lookups in the window, the share within 2 ms, and the bucket bound below which 50% and 99% fell."""
    diff = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in sorted(after)}
    total = diff.get(float("inf"), 0.0)
    if not total:
        return {"lookups": 0}

    def bound(q: float) -> float:
        return next(le for le, n in diff.items() if n >= q * total)

    return {"lookups": int(total), "share_within_2ms": diff.get(GOAL_LOOKUP_S, 0.0) / total,
            "p50_at_most_s": bound(0.5), "p99_at_most_s": bound(0.99)}


def latency_stats(records: list[Record]) -> dict[str, Any]:
    """Whole-answer latency (send to last chunk) and TTFT of hits, misses and all, in seconds."""
    ok = [r for r in records if not r.error and r.chunk_times]

    def of(rs: list[Record]) -> dict[str, Any]:
        return {"count": len(rs), "e2e_s": summary([r.chunk_times[-1] - r.start for r in rs]),
                "ttft_s": summary([r.chunk_times[0] - r.start for r in rs])}

    return {"hit": of([r for r in ok if r.result_cached]), "miss": of([r for r in ok if not r.result_cached]),
            "all": of(ok), "failed": len(records) - len(ok),
            "errors": sorted({r.error for r in records if r.error})[:5]}


class GatewayCpu:
    """CPU seconds the gateway processes spent between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.seconds = 0.0

    def __enter__(self) -> GatewayCpu:
        self._before = [cpu_seconds(p) for p in self.pids]
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = sum(cpu_seconds(p) - b for p, b in zip(self.pids, self._before))


def _send(base: str, prompts: list[str], load: SearchLoad, concurrency: int, procs: int,
          offsets: list[float] | None = None) -> tuple[list[Record], float]:
    """Sends every prompt (at `offsets` seconds from the start, or all at once) at most `concurrency` at a time."""
    specs = [RequestSpec(p, 0, load.answer_tokens) for p in prompts]
    load = run_load(base, "", specs, offsets or [0.0] * len(specs), concurrency, GREEDY, procs)
    records, t0, end = load.records, load.t0, load.end
    first = min([r.start for r in records if r.start] or [t0])
    return records, max(end - first, 1e-9)


def run_protocol(protocol: str, http_url: str, grpc_address: str, gateway_pids: list[int], load: SearchLoad,
                 client_procs: int, tag: str) -> dict[str, Any]:
    """Every phase of one protocol against a running stack; lookup times only where one gateway answers /metrics."""
    base = http_url if protocol == "http" else GRPC_SCHEME + grpc_address
    hot = questions(load.hot_questions, load.seed, f"{tag} hot")
    fresh = questions(load.mix_requests, load.seed + 1, f"{tag} fresh")
    warm, _ = _send(base, hot, load, min(load.concurrency, len(hot)), 1)
    out: dict[str, Any] = {"protocol": protocol, "warm_up_failed": sum(bool(r.error) for r in warm)}
    single = len(gateway_pids) == 1
    before = lookup_histogram(http_url, "result") if single else {}
    idle, _ = _send(base, hot[: load.idle_requests], load, 1, 1)
    out["idle_hits"] = latency_stats(idle)
    if single:
        out["idle_hits"]["lookup"] = lookup_stats(before, lookup_histogram(http_url, "result"))
    mixed_prompts = mix(hot, fresh, load.mix_requests, load.hit_ratio, load.zipf_s, load.seed)
    before = lookup_histogram(http_url, "result") if single else {}
    with GatewayCpu(gateway_pids) as cpu:
        records, wall = _send(base, mixed_prompts, load, load.mix_concurrency, client_procs)
    stats = latency_stats(records)
    stats.update(wall_s=wall, qps=stats["all"]["count"] / wall, hit_share=stats["hit"]["count"] / len(records),
                 gateway_cpu_s=cpu.seconds)
    if single:
        stats["lookup"] = lookup_stats(before, lookup_histogram(http_url, "result"))
    out["mix"] = stats
    hits_prompts = mix(hot, [], load.hit_requests, 1.0, load.zipf_s, load.seed + 2)
    with GatewayCpu(gateway_pids) as cpu:
        records, wall = _send(base, hits_prompts, load, load.concurrency, client_procs)
    stats = latency_stats(records)
    n_hits = stats["hit"]["count"]
    stats.update(wall_s=wall, hit_qps=n_hits / wall, hit_qps_per_gateway=n_hits / wall / len(gateway_pids),
                 gateway_cpu_s=cpu.seconds, gateway_cpu_ms_per_hit=1e3 * cpu.seconds / max(n_hits, 1),
                 hits_per_gateway_cpu_s=n_hits / max(cpu.seconds, 1e-9))
    out["hits_only"] = stats
    rates = load.paced_qps if protocol == "http" or load.grpc_paced_qps is None else load.grpc_paced_qps
    out["paced_hits"] = [paced(base, hot, load, rate, client_procs, gateway_pids) for rate in rates]
    return out


def paced(base: str, hot: list[str], load: SearchLoad, rate: float, client_procs: int,
          gateway_pids: list[int]) -> dict[str, Any]:
    """Hits offered at `rate` per second for `load.paced_s` seconds, Poisson arrivals (seeded)."""
    num = max(1, round(rate * load.paced_s))
    prompts = mix(hot, [], num, 1.0, load.zipf_s, load.seed + 3)
    offsets = arrivals(num, rate, load.seed)
    with GatewayCpu(gateway_pids) as cpu:
        records, wall = _send(base, prompts, load, load.paced_concurrency, client_procs, offsets)
    stats = latency_stats(records)
    stats.update(offered_qps=rate, wall_s=wall, achieved_qps=stats["all"]["count"] / wall, gateway_cpu_s=cpu.seconds)
    return stats
