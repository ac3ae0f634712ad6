"""Prometheus metrics and the /metrics, /health and /ready endpoints every stage serves.

One `Metrics` object per process holds the FlashStream metrics of its stage on its own registry (no module
globals), so tests can build several in one process. A stage exports only the families it owns (Metrics.OWNERS);
the names are those of the architecture document, plus the step metrics of the scheduler and the worker.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0)
_LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)
_COUNT_BUCKETS = (0, 1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

GATEWAY, TOKENIZER, SCHEDULER, WORKER = "gateway", "tokenizer", "scheduler", "worker"
ALL_STAGES = (GATEWAY, TOKENIZER, SCHEDULER, WORKER)


class _Unowned:
    """Stands for a metric family that another stage owns: updates are ignored and nothing is exported."""

    def labels(self, *_: object) -> _Unowned:
        return self

    def inc(self, *_: object) -> None:
        pass

    def set(self, *_: object) -> None:
        pass

    def observe(self, *_: object) -> None:
        pass


_UNOWNED = _Unowned()


class Metrics:
    """The FlashStream metrics of one stage, registered on `registry` and labelled by stage. Each stage exports
    only the families it owns (OWNERS); the others are inert stand-ins, so shared code may update them."""

    # family attribute → stages that own it
    OWNERS: dict[str, tuple[str, ...]] = {
        "time_to_first_token": (GATEWAY,),
        "inter_token_latency": (GATEWAY,),
        "e2e_request_latency": (GATEWAY,),
        "result_cache_hits": (GATEWAY,),
        "result_cache_queries": (GATEWAY,),
        "embedding_cache_hits": (GATEWAY,),
        "embedding_cache_misses": (GATEWAY,),
        "cache_lookup": (GATEWAY,),
        "request_queue_time": (SCHEDULER,),
        "num_requests_waiting": (SCHEDULER,),
        "kv_cache_usage_ratio": (SCHEDULER,),
        "prefix_cache_hits": (SCHEDULER,),
        "prefix_cache_queries": (SCHEDULER,),
        "num_preemptions": (SCHEDULER,),
        "schedule_duration": (SCHEDULER,),
        "step_duration": (WORKER,),
        "step_tokens": (WORKER,),
        "step_sequences": (WORKER,),
        "device_idle": (WORKER,),
        "num_requests_running": (GATEWAY, SCHEDULER, WORKER),
        "prompt_tokens": (TOKENIZER, SCHEDULER),
        "generation_tokens": ALL_STAGES,
        "request_errors": (GATEWAY, TOKENIZER, SCHEDULER),
        "requests_finished": (GATEWAY, TOKENIZER, SCHEDULER),
    }

    def __init__(self, stage: str, registry: CollectorRegistry | None = None) -> None:
        self.stage = stage
        self.registry = registry or CollectorRegistry()
        r = self.registry

        def owned(name: str) -> bool:
            return stage in self.OWNERS[name] or stage not in ALL_STAGES

        def family(name: str, make):  # noqa: ANN001, ANN202 - a prometheus_client family constructor call
            return make() if owned(name) else _UNOWNED

        self.time_to_first_token = family("time_to_first_token", lambda: Histogram(
            "flashstream_time_to_first_token_seconds", "Arrival to first token", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r).labels(stage))
        self.inter_token_latency = family("inter_token_latency", lambda: Histogram(
            "flashstream_inter_token_latency_seconds", "Time between consecutive tokens of a request", ["stage"],
            buckets=_TOKEN_BUCKETS, registry=r).labels(stage))
        self.e2e_request_latency = family("e2e_request_latency", lambda: Histogram(
            "flashstream_e2e_request_latency_seconds", "Arrival to terminal event", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r).labels(stage))
        self.request_queue_time = family("request_queue_time", lambda: Histogram(
            "flashstream_request_queue_time_seconds", "Time waiting before the first scheduled step", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r).labels(stage))
        self.num_requests_running = family("num_requests_running", lambda: Gauge(
            "flashstream_num_requests_running", "Requests running", ["stage"], registry=r).labels(stage))
        self.num_requests_waiting = family("num_requests_waiting", lambda: Gauge(
            "flashstream_num_requests_waiting", "Requests queued", ["stage"], registry=r).labels(stage))
        self.kv_cache_usage_ratio = family("kv_cache_usage_ratio", lambda: Gauge(
            "flashstream_kv_cache_usage_ratio", "Used KV blocks over all KV blocks", ["stage"],
            registry=r).labels(stage))
        self.prefix_cache_hits = family("prefix_cache_hits", lambda: Counter(
            "flashstream_prefix_cache_hits", "Prompt tokens served from the prefix cache", ["stage"],
            registry=r).labels(stage))
        self.prefix_cache_queries = family("prefix_cache_queries", lambda: Counter(
            "flashstream_prefix_cache_queries", "Prompt tokens looked up in the prefix cache", ["stage"],
            registry=r).labels(stage))
        self.result_cache_hits = family("result_cache_hits", lambda: Counter(
            "flashstream_result_cache_hits", "Requests answered from the result cache", ["stage"],
            registry=r).labels(stage))
        self.result_cache_queries = family("result_cache_queries", lambda: Counter(
            "flashstream_result_cache_queries", "Cacheable requests looked up in the result cache", ["stage"],
            registry=r).labels(stage))
        self.embedding_cache_hits = family("embedding_cache_hits", lambda: Counter(
            "flashstream_embedding_cache_hits", "Embedding inputs answered from the embedding cache", ["stage"],
            registry=r).labels(stage))
        self.embedding_cache_misses = family("embedding_cache_misses", lambda: Counter(
            "flashstream_embedding_cache_misses", "Embedding inputs looked up in the cache and computed",
            ["stage"], registry=r).labels(stage))
        # Labelled by cache ("result", "embedding"); 2 ms is a bucket bound, the most a lookup should add.
        self.cache_lookup = family("cache_lookup", lambda: Histogram(
            "flashstream_cache_lookup_seconds", "One request's result or embedding cache lookup (keys, store read, "
            "decoding)", ["stage", "cache"], buckets=_LOOKUP_BUCKETS, registry=r))
        self.generation_tokens = family("generation_tokens", lambda: Counter(
            "flashstream_generation_tokens", "Tokens generated", ["stage"], registry=r).labels(stage))
        self.prompt_tokens = family("prompt_tokens", lambda: Counter(
            "flashstream_prompt_tokens", "Prompt tokens received", ["stage"], registry=r).labels(stage))
        self.num_preemptions = family("num_preemptions", lambda: Counter(
            "flashstream_num_preemptions", "Sequences preempted for lack of KV blocks", ["stage"],
            registry=r).labels(stage))
        self.request_errors = family("request_errors", lambda: Counter(
            "flashstream_request_errors", "Requests that ended with an error, by gRPC code", ["stage", "code"],
            registry=r))
        self.requests_finished = family("requests_finished", lambda: Counter(
            "flashstream_requests_finished", "Requests that finished normally, by finish reason",
            ["stage", "reason"], registry=r))
        self.schedule_duration = family("schedule_duration", lambda: Histogram(
            "flashstream_schedule_duration_seconds", "Host time to build one step plan (scheduling and encoding)",
            ["stage"], buckets=_STEP_BUCKETS, registry=r).labels(stage))
        self.step_duration = family("step_duration", lambda: Histogram(
            "flashstream_step_duration_seconds",
            "Host time of one step in the worker, by kind: prefill (no decode rows), decode (no prefill rows), mixed",
            ["stage", "kind"], buckets=_STEP_BUCKETS, registry=r))
        self.step_tokens = family("step_tokens", lambda: Histogram(
            "flashstream_step_tokens", "Tokens run in one step, by phase (prefill or decode)", ["stage", "phase"],
            buckets=_COUNT_BUCKETS, registry=r))
        self.step_sequences = family("step_sequences", lambda: Histogram(
            "flashstream_step_sequences", "Sequences in one step, by phase (prefill or decode)", ["stage", "phase"],
            buckets=_COUNT_BUCKETS, registry=r))
        self.device_idle = family("device_idle", lambda: Counter(
            "flashstream_device_idle_seconds", "Time the device had no step queued between two steps", ["stage"],
            registry=r).labels(stage))

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
