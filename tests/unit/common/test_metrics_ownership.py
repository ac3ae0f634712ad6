"""Each metric family has one owning stage and only it exports the family; every series carries stage and model
labels, and label values have one spelling."""

from __future__ import annotations

import pytest

from services.common.errors import ErrorCode
from services.common.metrics import Metrics, error_code_label, finish_reason_label


def _families(stage: str) -> set[str]:
    """The FlashStream families a stage exports (the process's standard ones apart)."""
    text = Metrics(stage).render().decode()
    return {line.split()[2] for line in text.splitlines()
            if line.startswith("# TYPE") and "_created" not in line and not line.split()[2].startswith("process_")}


@pytest.mark.timeout(30)
def test_every_stage_exports_exactly_the_families_it_owns_and_no_family_twice() -> None:
    families = {stage: _families(stage) for stage in ("gateway", "tokenizer", "scheduler", "worker")}
    assert families["gateway"] == {
        "flashstream_time_to_first_token_seconds", "flashstream_inter_token_latency_seconds",
        "flashstream_e2e_request_latency_seconds", "flashstream_num_requests_in_flight",
        "flashstream_requests_finished_total", "flashstream_request_errors_total",
        "flashstream_result_cache_hits_total", "flashstream_result_cache_queries_total",
        "flashstream_embedding_cache_hits_total", "flashstream_embedding_cache_misses_total",
        "flashstream_embedding_input_tokens_total", "flashstream_cache_lookup_seconds"}
    assert families["tokenizer"] == {"flashstream_tokenize_duration_seconds"}
    assert families["scheduler"] == {
        "flashstream_request_queue_time_seconds", "flashstream_request_prefill_time_seconds",
        "flashstream_request_decode_time_seconds", "flashstream_request_prompt_tokens",
        "flashstream_request_generation_tokens", "flashstream_num_requests_running",
        "flashstream_num_requests_waiting", "flashstream_num_workers", "flashstream_kv_cache_usage_ratio",
        "flashstream_prefix_cache_hits_total", "flashstream_prefix_cache_queries_total",
        "flashstream_num_preemptions_total", "flashstream_prompt_tokens_total", "flashstream_generation_tokens_total",
        "flashstream_scheduler_request_errors_total", "flashstream_schedule_duration_seconds"}
    assert families["worker"] == {
        "flashstream_step_duration_seconds", "flashstream_step_tokens", "flashstream_step_sequences",
        "flashstream_device_idle_seconds_total", "flashstream_steps_queued_ahead_total",
        "flashstream_next_plan_wait_seconds_total"}
    everything = [name for names in families.values() for name in names]
    assert len(everything) == len(set(everything))


@pytest.mark.timeout(30)
def test_every_stage_exports_its_process_cpu_time_and_memory() -> None:
    for stage in ("gateway", "tokenizer", "scheduler", "worker"):
        text = Metrics(stage).render().decode()
        cpu = next(line for line in text.splitlines() if line.startswith("process_cpu_seconds_total "))
        assert float(cpu.split()[1]) > 0.0
        assert "# TYPE process_resident_memory_bytes gauge" in text


@pytest.mark.timeout(30)
def test_a_family_of_another_stage_takes_updates_and_exports_nothing() -> None:
    metrics = Metrics("gateway")
    metrics.kv_cache_usage_ratio.set(0.5)
    metrics.step_tokens.labels("decode").observe(3)
    text = metrics.render().decode()
    assert "kv_cache_usage" not in text and "step_tokens" not in text


@pytest.mark.timeout(30)
def test_series_carry_the_model_and_the_series_of_an_unknown_model_go_when_it_becomes_known() -> None:
    metrics = Metrics("scheduler")
    metrics.num_requests_waiting.set(2)
    assert 'flashstream_num_requests_waiting{model="",stage="scheduler"} 2.0' in metrics.render().decode()
    metrics.set_model("llama")
    metrics.num_requests_waiting.set(3)
    metrics.prefix_cache_hits.inc(16)
    text = metrics.render().decode()
    assert 'model=""' not in text
    assert 'flashstream_num_requests_waiting{model="llama",stage="scheduler"} 3.0' in text
    assert 'flashstream_prefix_cache_hits_total{model="llama",stage="scheduler"} 16.0' in text


@pytest.mark.timeout(30)
def test_the_gateway_labels_each_request_by_its_own_model() -> None:
    metrics = Metrics("gateway")
    metrics.for_model("a").requests_finished.labels("stop").inc()
    metrics.for_model("b").requests_finished.labels("stop").inc(2)
    text = metrics.render().decode()
    assert 'flashstream_requests_finished_total{model="a",reason="stop",stage="gateway"} 1.0' in text
    assert 'flashstream_requests_finished_total{model="b",reason="stop",stage="gateway"} 2.0' in text


def test_finish_reasons_and_error_codes_have_one_spelling() -> None:
    assert [finish_reason_label(n) for n in ("FINISH_REASON_STOP_STRING", "STOP_STRING", "LENGTH", "EOS")] == [
        "stop_string", "stop_string", "length", "eos"]
    assert [error_code_label(c) for c in (14, ErrorCode.INVALID_ARGUMENT, 99)] == [
        "UNAVAILABLE", "INVALID_ARGUMENT", "99"]
