"""The scheduler's state for watchers (the playground's live view): gauges now, counters since start.

Counters live on each engine (`EngineTotals`); the pool keeps the totals of engines whose worker left, so a
watcher's rates stay right across membership changes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class EngineTotals:
    """Counters of one engine (or, summed, of a pool) since it started."""

    num_steps: int = 0  # step plans sent that run tokens
    num_step_tokens: int = 0  # tokens those plans ran: prompt chunks and decodes
    num_generated_tokens: int = 0  # tokens sampled
    num_prefix_query_tokens: int = 0  # prompt tokens looked up in the prefix cache at admission
    num_prefix_hit_tokens: int = 0  # of those, tokens found cached

    def add(self, other: EngineTotals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class WorkerEngineState:
    address: str
    num_running: int
    num_waiting: int
    kv_cache_usage: float


@dataclass(frozen=True)
class EngineState:
    """The pool at one moment (see flashstream.v1.EngineState)."""

    time_unix_s: float
    model_id: str
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    totals: EngineTotals
    workers: tuple[WorkerEngineState, ...]
