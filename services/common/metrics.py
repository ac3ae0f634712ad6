"""Prometheus metrics and the /metrics, /health and /ready endpoints every stage serves.

One `Metrics` object per process holds every FlashStream metric on its own registry (no module
globals), so tests can build several in one process. A stage updates the ones it owns; the names are
those of the architecture document.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    """Every FlashStream metric, registered on `registry`, labelled by stage."""

    def __init__(self, stage: str, registry: CollectorRegistry | None = None) -> None:
        self.stage = stage
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.time_to_first_token = Histogram(
            "flashstream_time_to_first_token_seconds", "Arrival to first token", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r).labels(stage)
        self.inter_token_latency = Histogram(
            "flashstream_inter_token_latency_seconds", "Time between consecutive tokens of a request", ["stage"],
            buckets=_TOKEN_BUCKETS, registry=r).labels(stage)
        self.e2e_request_latency = Histogram(
            "flashstream_e2e_request_latency_seconds", "Arrival to terminal event", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r).labels(stage)
        self.request_queue_time = Histogram(
            "flashstream_request_queue_time_seconds", "Time waiting before the first scheduled step", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r).labels(stage)
        self.num_requests_running = Gauge(
            "flashstream_num_requests_running", "Requests running", ["stage"], registry=r).labels(stage)
        self.num_requests_waiting = Gauge(
            "flashstream_num_requests_waiting", "Requests queued", ["stage"], registry=r).labels(stage)
        self.kv_cache_usage_ratio = Gauge(
            "flashstream_kv_cache_usage_ratio", "Used KV blocks over all KV blocks", ["stage"],
            registry=r).labels(stage)
        self.prefix_cache_hits = Counter(
            "flashstream_prefix_cache_hits", "Prompt tokens served from the prefix cache", ["stage"],
            registry=r).labels(stage)
        self.prefix_cache_queries = Counter(
            "flashstream_prefix_cache_queries", "Prompt tokens looked up in the prefix cache", ["stage"],
            registry=r).labels(stage)
        self.result_cache_hits = Counter(
            "flashstream_result_cache_hits", "Requests answered from the result cache", ["stage"],
            registry=r).labels(stage)
        self.result_cache_queries = Counter(
            "flashstream_result_cache_queries", "Cacheable requests looked up in the result cache", ["stage"],
            registry=r).labels(stage)
        self.embedding_cache_hits = Counter(
            "flashstream_embedding_cache_hits", "Embedding inputs answered from the embedding cache", ["stage"],
            registry=r).labels(stage)
        self.embedding_cache_misses = Counter(
            "flashstream_embedding_cache_misses", "Embedding inputs looked up in the cache and computed",
            ["stage"], registry=r).labels(stage)
        self.generation_tokens = Counter(
            "flashstream_generation_tokens", "Tokens generated", ["stage"], registry=r).labels(stage)
        self.prompt_tokens = Counter(
            "flashstream_prompt_tokens", "Prompt tokens received", ["stage"], registry=r).labels(stage)
        self.num_preemptions = Counter(
            "flashstream_num_preemptions", "Sequences preempted for lack of KV blocks", ["stage"],
            registry=r).labels(stage)
        self.request_errors = Counter(
            "flashstream_request_errors", "Requests that ended with an error, by gRPC code", ["stage", "code"],
            registry=r)
        self.requests_finished = Counter(
            "flashstream_requests_finished", "Requests that finished normally, by finish reason",
            ["stage", "reason"], registry=r)

    def render(self) -> bytes:
        """Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def add_status_routes(app: web.Application, metrics: Metrics, ready: Callable[[], bool]) -> None:
    """Adds GET /metrics, /health (the process is alive) and /ready (it can take work) to an aiohttp app."""

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def get_ready(_: web.Request) -> web.Response:
        if ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health", get_health)
    app.router.add_get("/ready", get_ready)


async def start_status_server(host: str, port: int, metrics: Metrics, ready: Callable[[], bool]) -> web.AppRunner:
    """Serves the status routes on their own HTTP port (stages other than the gateway). Port 0 disables."""
    app = web.Application()
    add_status_routes(app, metrics, ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if port:
        await web.TCPSite(runner, host, port).start()
    return runner
