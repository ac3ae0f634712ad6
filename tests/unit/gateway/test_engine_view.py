"""Live-view events from two consecutive scheduler states."""

from __future__ import annotations

from flashstream.v1 import common_pb2

from gateway.engine_view import engine_event


def state(time: float, steps: int, step_tokens: int, generated: int, **kw) -> common_pb2.EngineState:
    return common_pb2.EngineState(time_unix_s=time, model_id="m", num_steps=steps, num_step_tokens=step_tokens,
                                  num_generated_tokens=generated, **kw)


def test_rates_come_from_the_interval_and_hit_rates_are_cumulative() -> None:
    before = state(10.0, steps=100, step_tokens=1000, generated=300)
    now = state(10.5, steps=150, step_tokens=1400, generated=350, num_running=3, num_waiting=2,
                kv_cache_usage=0.25, num_prefix_query_tokens=80, num_prefix_hit_tokens=20,
                workers=[common_pb2.WorkerEngineState(address="w:1", num_running=3, num_waiting=2,
                                                      kv_cache_usage=0.25)])
    assert engine_event(now, before, result_cache=(1, 4)) == {
        "time": 10.5, "model": "m", "num_running": 3, "num_waiting": 2, "kv_cache_usage": 0.25,
        "num_steps": 150, "num_generated_tokens": 350,
        "tokens_per_step": 8.0, "steps_per_s": 100.0, "generated_tokens_per_s": 100.0,
        "prefix_cache_hit_rate": 0.25, "result_cache_hit_rate": 0.25,
        "workers": [{"address": "w:1", "num_running": 3, "num_waiting": 2, "kv_cache_usage": 0.25}],
    }


def test_the_first_state_an_idle_interval_and_a_restarted_scheduler_have_no_made_up_rates() -> None:
    first = engine_event(state(1.0, 5, 50, 5), None, result_cache=None)
    assert (first["tokens_per_step"], first["steps_per_s"], first["generated_tokens_per_s"]) == (None, None, None)
    assert (first["prefix_cache_hit_rate"], first["result_cache_hit_rate"]) == (None, None)
    idle = engine_event(state(2.0, 5, 50, 5), state(1.0, 5, 50, 5), result_cache=(0, 0))
    assert (idle["tokens_per_step"], idle["steps_per_s"], idle["result_cache_hit_rate"]) == (0.0, 0.0, None)
    restarted = engine_event(state(3.0, 1, 4, 1), state(2.0, 5, 50, 5), result_cache=None)
    assert (restarted["tokens_per_step"], restarted["steps_per_s"]) == (None, None)
