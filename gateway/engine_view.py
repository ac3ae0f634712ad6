"""The playground's live view of the engine: the scheduler's state as JSON events of a server-sent stream.

The scheduler reports gauges (running, waiting, KV usage) and counters since it started; an event turns two
consecutive states into rates over the interval between them (tokens per step, steps and tokens per second).
Hit rates are cumulative: the prefix cache's from the scheduler, the result cache's from this gateway.
"""

from __future__ import annotations

from typing import Any

from flashstream.v1 import common_pb2


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def engine_event(
    state: common_pb2.EngineState,
    previous: common_pb2.EngineState | None,
    result_cache: tuple[int, int] | None,
) -> dict[str, Any]:
    """One live-view event. `result_cache` is this gateway's (hits, queries), None without a result cache;
    rates are None on the first state (no interval yet) and a ratio is None when its denominator is 0."""
    event: dict[str, Any] = {
        "time": state.time_unix_s,
        "model": state.model_id,
        "num_running": state.num_running,
        "num_waiting": state.num_waiting,
        "kv_cache_usage": state.kv_cache_usage,
        "num_steps": state.num_steps,
        "num_generated_tokens": state.num_generated_tokens,
        "tokens_per_step": None,
        "steps_per_s": None,
        "generated_tokens_per_s": None,
        "prefix_cache_hit_rate": _ratio(state.num_prefix_hit_tokens, state.num_prefix_query_tokens),
        "result_cache_hit_rate": None if result_cache is None else _ratio(*result_cache),
        "workers": [{"address": w.address, "num_running": w.num_running, "num_waiting": w.num_waiting,
                     "kv_cache_usage": w.kv_cache_usage} for w in state.workers],
    }
    if previous is not None:
        elapsed = state.time_unix_s - previous.time_unix_s
        steps = state.num_steps - previous.num_steps
        # A scheduler that restarted counts from 0 again: no rate for that interval.
        if elapsed > 0 and steps >= 0 and state.num_generated_tokens >= previous.num_generated_tokens:
            event["tokens_per_step"] = _ratio(state.num_step_tokens - previous.num_step_tokens, steps) or 0.0
            event["steps_per_s"] = steps / elapsed
            event["generated_tokens_per_s"] = (state.num_generated_tokens - previous.num_generated_tokens) / elapsed
    return event
