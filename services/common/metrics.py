"""Prometheus metrics and the /metrics, /health and /ready endpoints every stage serves.

One `Metrics` object per process holds the FlashStream metrics of its stage on its own registry (no module
globals), so tests can build several in one process. Every family has exactly one owning stage (OWNERS): the
others do not export it, so a sum over all targets never counts an event twice. Every series carries `stage`
and `model` labels; label values have one spelling (finish reasons in lower case as `finish_reason_label` writes
them, error codes as gRPC code names). README.md lists the names beside vLLM's.

Attribute access (`metrics.step_tokens`) gives the family bound to this stage and its current model
(`set_model`, for stages that serve one model); `metrics.for_model(m)` binds another model (the gateway, which
routes several). A family with more labels than stage and model takes only those in `.labels(...)`; its series
appear with their first event. The others exist from the moment the model is known, at 0, so a dashboard finds
every series it queries on a stack that has served one request.

Beside its own families, a stage's registry carries the process's standard ones (`process_cpu_seconds_total`,
`process_resident_memory_bytes`, ...), which say which stage's CPU a load uses up; they describe the process, not
the stage's events, so each target reports its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.common.errors import ErrorCode
from services.port_check import binding

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0)
_LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)
_COUNT_BUCKETS = (0, 1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_LENGTH_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)

GATEWAY, TOKENIZER, SCHEDULER, WORKER = "gateway", "tokenizer", "scheduler", "worker"
ALL_STAGES = (GATEWAY, TOKENIZER, SCHEDULER, WORKER)
_BASE_LABELS = ("stage", "model")


def finish_reason_label(name: str) -> str:
    """The one spelling of a finish reason in labels: "stop", "length", "eos", "stop_string", "abort"
    (from an enum name, with or without the protobuf prefix FINISH_REASON_)."""
    return name.removeprefix("FINISH_REASON_").lower()


def error_code_label(code: int) -> str:
    """The one spelling of an error code in labels: its gRPC name ("INVALID_ARGUMENT"), or the number."""
    try:
        return ErrorCode(int(code)).name
    except ValueError:
        return str(int(code))


# attribute → (owning stage, kind, metric name, help, extra label names, histogram buckets)
FAMILIES: dict[str, tuple[str, type, str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    "time_to_first_token": (GATEWAY, Histogram, "flashstream_time_to_first_token_seconds",
                            "Arrival at the gateway to the first token sent", (), _LATENCY_BUCKETS),
    "inter_token_latency": (GATEWAY, Histogram, "flashstream_inter_token_latency_seconds",
                            "Time between consecutive tokens of a request, at the gateway", (), _TOKEN_BUCKETS),
    "e2e_request_latency": (GATEWAY, Histogram, "flashstream_e2e_request_latency_seconds",
                            "Arrival at the gateway to the terminal event", (), _LATENCY_BUCKETS),
    "num_requests_in_flight": (GATEWAY, Gauge, "flashstream_num_requests_in_flight",
                               "Public requests open at the gateway (queued, running or replaying)", (), None),
    "requests_finished": (GATEWAY, Counter, "flashstream_requests_finished",
                          "Requests that ended normally, by finish reason", ("reason",), None),
    "request_errors": (GATEWAY, Counter, "flashstream_request_errors",
                       "Requests that ended with an error, by gRPC code", ("code",), None),
    "result_cache_hits": (GATEWAY, Counter, "flashstream_result_cache_hits",
                          "Requests answered from the result cache", (), None),
    "result_cache_queries": (GATEWAY, Counter, "flashstream_result_cache_queries",
                             "Cacheable requests looked up in the result cache", (), None),
    "embedding_cache_hits": (GATEWAY, Counter, "flashstream_embedding_cache_hits",
                             "Embedding inputs answered from the embedding cache", (), None),
    "embedding_cache_misses": (GATEWAY, Counter, "flashstream_embedding_cache_misses",
                               "Embedding inputs looked up in the cache and computed", (), None),
    # 2 ms is a bucket bound: the most a lookup should add to a request
    "cache_lookup": (GATEWAY, Histogram, "flashstream_cache_lookup_seconds",
                     "One request's result or embedding cache lookup (keys, store read, decoding), by cache",
                     ("cache",), _LOOKUP_BUCKETS),
    "embedding_input_tokens": (GATEWAY, Counter, "flashstream_embedding_input_tokens",
                               "Tokens of embedding inputs, cached or computed", (), None),
    "tokenize_duration": (TOKENIZER, Histogram, "flashstream_tokenize_duration_seconds",
                          "Time to render and encode one prompt", (), _STEP_BUCKETS),
    "request_queue_time": (SCHEDULER, Histogram, "flashstream_request_queue_time_seconds",
                           "Arrival at the scheduler to the first scheduled step", (), _LATENCY_BUCKETS),
    "request_prefill_time": (SCHEDULER, Histogram, "flashstream_request_prefill_time_seconds",
                             "First scheduled step to the first token of a request", (), _LATENCY_BUCKETS),
    "request_decode_time": (SCHEDULER, Histogram, "flashstream_request_decode_time_seconds",
                            "First token to the last token of a request", (), _LATENCY_BUCKETS),
    "request_prompt_tokens": (SCHEDULER, Histogram, "flashstream_request_prompt_tokens",
                              "Prompt length of a finished request, in tokens", (), _LENGTH_BUCKETS),
    "request_generation_tokens": (SCHEDULER, Histogram, "flashstream_request_generation_tokens",
                                  "Tokens generated by a finished request", (), _LENGTH_BUCKETS),
    "num_requests_running": (SCHEDULER, Gauge, "flashstream_num_requests_running",
                             "Sequences running on the pool's workers", (), None),
    "num_requests_waiting": (SCHEDULER, Gauge, "flashstream_num_requests_waiting",
                             "Sequences queued in the scheduler", (), None),
    "num_workers": (SCHEDULER, Gauge, "flashstream_num_workers", "Workers connected to the scheduler", (), None),
    "kv_cache_usage_ratio": (SCHEDULER, Gauge, "flashstream_kv_cache_usage_ratio",
                             "Used KV blocks over all KV blocks of the pool", (), None),
    "prefix_cache_hits": (SCHEDULER, Counter, "flashstream_prefix_cache_hits",
                          "Prompt tokens served from the prefix cache", (), None),
    "prefix_cache_queries": (SCHEDULER, Counter, "flashstream_prefix_cache_queries",
                             "Prompt tokens looked up in the prefix cache", (), None),
    "num_preemptions": (SCHEDULER, Counter, "flashstream_num_preemptions",
                        "Sequences preempted for lack of KV blocks", (), None),
    "prompt_tokens": (SCHEDULER, Counter, "flashstream_prompt_tokens", "Prompt tokens of admitted requests", (),
                      None),
    "generation_tokens": (SCHEDULER, Counter, "flashstream_generation_tokens", "Tokens generated", (), None),
    "scheduler_request_errors": (SCHEDULER, Counter, "flashstream_scheduler_request_errors",
                                 "Requests the scheduler ended with an error (refused on arrival, failed while queued "
                                 "or running), by gRPC code: the part of the gateway's errors that arose here",
                                 ("code",), None),
    "schedule_duration": (SCHEDULER, Histogram, "flashstream_schedule_duration_seconds",
                          "Host time to build one step plan (scheduling and encoding)", (), _STEP_BUCKETS),
    "step_duration": (WORKER, Histogram, "flashstream_step_duration_seconds",
                      "Host time of one step in the worker, by kind: prefill (no decode rows), decode (no prefill "
                      "rows), mixed", ("kind",), _STEP_BUCKETS),
    "step_tokens": (WORKER, Histogram, "flashstream_step_tokens",
                    "Tokens run in one step, by phase (prefill or decode)", ("phase",), _COUNT_BUCKETS),
    "step_sequences": (WORKER, Histogram, "flashstream_step_sequences",
                       "Sequences in one step (the batch size), by phase (prefill or decode)", ("phase",),
                       _COUNT_BUCKETS),
    "device_idle": (WORKER, Counter, "flashstream_device_idle_seconds",
                    "Time the device had no step queued between two steps", (), None),
    "next_plan_wait": (WORKER, Counter, "flashstream_next_plan_wait_seconds",
                       "Time the model thread waited, while a step ran on the device, for the plan after it (the "
                       "scheduler's next plan had not arrived yet)", (), None),
    "steps_queued_ahead": (WORKER, Counter, "flashstream_steps_queued_ahead",
                           "Steps launched before the host had read the tokens of the step before, queued behind it "
                           "(the others were launched once those tokens were read, or on an idle device)", (), None),
}


class _Unowned:
    """Stands for a metric family that another stage owns: updates are ignored and nothing is exported."""

    def labels(self, *_: object) -> _Unowned:
        return self

    def inc(self, *_: object) -> None:
        pass

    def dec(self, *_: object) -> None:
        pass

    def set(self, *_: object) -> None:
        pass

    def observe(self, *_: object) -> None:
        pass


_UNOWNED = _Unowned()


class _Labelled:
    """A family with extra labels, bound to a stage and model: `.labels(extra...)` gives the series."""

    def __init__(self, family: Any, base: tuple[str, str]) -> None:
        self._family = family
        self._base = base
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._family.labels(*self._base, *values)
        return child


class MetricsView:
    """Every family of a stage bound to one model (attributes named as in FAMILIES); a series appears when its
    attribute is first read."""

    def __init__(self, families: dict[str, Any], stage: str, model: str) -> None:
        self.stage = stage
        self.model = model
        self._families = families
        self._bound: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in FAMILIES:
            raise AttributeError(name)
        family = self._families[name]
        if family is _UNOWNED:
            bound: Any = _UNOWNED
        elif FAMILIES[name][4]:
            bound = _Labelled(family, (self.stage, self.model))
        else:
            bound = family.labels(self.stage, self.model)
        self._bound[name] = bound
        setattr(self, name, bound)  # later lookups skip __getattr__
        return bound

    def remove(self) -> None:
        """Drops every series of this view from its family."""
        for name, bound in self._bound.items():
            family = self._families[name]
            if isinstance(bound, _Labelled):
                for extra in bound.children:
                    family.remove(self.stage, self.model, *extra)
            elif bound is not _UNOWNED:
                family.remove(self.stage, self.model)
            delattr(self, name)
        self._bound = {}


class Metrics:
    """The FlashStream metrics of one stage, registered on `registry` (see the module docstring)."""

    OWNERS: dict[str, str] = {name: spec[0] for name, spec in FAMILIES.items()}

    def __init__(self, stage: str, registry: CollectorRegistry | None = None, model: str = "") -> None:
        self.stage = stage
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
        self.registry = registry
        self._families: dict[str, Any] = {}
        for name, (owner, kind, metric, doc, extra, buckets) in FAMILIES.items():
            if owner != stage and stage in ALL_STAGES:
                self._families[name] = _UNOWNED
                continue
            kwargs: dict[str, Any] = {"buckets": buckets} if buckets is not None else {}
            self._families[name] = kind(metric, doc, [*_BASE_LABELS, *extra], registry=self.registry, **kwargs)
        self._views: dict[str, MetricsView] = {}
        self.model = model
        self._view = self.for_model(model)

    def for_model(self, model: str) -> MetricsView:
        """The families bound to this stage and `model`."""
        view = self._views.get(model)
        if view is None:
            view = self._views[model] = MetricsView(self._families, self.stage, model)
            if model:  # a known model's counters read 0 from the start; an unknown one's appear only when used
                for name, spec in FAMILIES.items():
                    if not spec[4]:
                        getattr(view, name)
        return view

    def set_model(self, model: str) -> None:
        """The model this stage serves, once known: later updates through attributes carry it, and the series
        of the model before (usually "", not known yet) are dropped."""
        if model == self.model:
            return
        self._views.pop(self.model).remove()
        self.model = model
        self._view = self.for_model(model)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in FAMILIES:
            raise AttributeError(name)
        return getattr(self._view, name)

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


async def start_status_server(host: str, port: int, metrics: Metrics, ready: Callable[[], bool],
                              routes: Callable[[web.Application], None] | None = None) -> web.AppRunner:
    """Serves the status routes, and the stage's own `routes` when given, on their own HTTP port (stages other than
    the gateway). Port 0 disables."""
    app = web.Application()
    add_status_routes(app, metrics, ready)
    if routes is not None:
        routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if port:
        with binding(host, port, "status HTTP"):
            await web.TCPSite(runner, host, port).start()
    return runner
