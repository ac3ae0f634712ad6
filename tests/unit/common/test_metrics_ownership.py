"""Each stage exports only the metric families it owns; updates of another stage's family are ignored."""

from __future__ import annotations

import pytest

from services.common.metrics import Metrics


def _families(stage: str) -> set[str]:
    text = Metrics(stage).render().decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE") and "_created" not in line}


@pytest.mark.timeout(30)
def test_every_stage_exports_exactly_the_families_it_owns() -> None:
    common = {"flashstream_generation_tokens_total"}
    assert _families("gateway") == common | {
        "flashstream_time_to_first_token_seconds", "flashstream_inter_token_latency_seconds",
        "flashstream_e2e_request_latency_seconds", "flashstream_num_requests_running",
        "flashstream_result_cache_hits_total", "flashstream_result_cache_queries_total",
        "flashstream_embedding_cache_hits_total", "flashstream_embedding_cache_misses_total",
        "flashstream_cache_lookup_seconds", "flashstream_request_errors_total", "flashstream_requests_finished_total"}
    assert _families("tokenizer") == common | {
        "flashstream_prompt_tokens_total", "flashstream_request_errors_total", "flashstream_requests_finished_total"}
    assert _families("scheduler") == common | {
        "flashstream_request_queue_time_seconds", "flashstream_num_requests_running", "flashstream_num_requests_waiting",
        "flashstream_kv_cache_usage_ratio", "flashstream_prefix_cache_hits_total", "flashstream_prefix_cache_queries_total",
        "flashstream_prompt_tokens_total", "flashstream_num_preemptions_total", "flashstream_request_errors_total",
        "flashstream_requests_finished_total", "flashstream_schedule_duration_seconds"}
    assert _families("worker") == common | {
        "flashstream_num_requests_running", "flashstream_step_duration_seconds", "flashstream_step_tokens",
        "flashstream_step_sequences", "flashstream_device_idle_seconds_total"}


@pytest.mark.timeout(30)
def test_a_family_of_another_stage_takes_updates_and_exports_nothing() -> None:
    metrics = Metrics("gateway")
    metrics.kv_cache_usage_ratio.set(0.5)
    metrics.step_tokens.labels("gateway", "decode").observe(3)
    text = metrics.render().decode()
    assert "kv_cache_usage" not in text and "step_tokens" not in text
