"""One request's spans across the four stages, in one process: each stage's span hangs from the one before it
through W3C trace context (the client's traceparent header, then the fields of the batched stream messages), all
in the client's trace, with the internal token on every internal call beside it. Without a collector, tracing is
off and hands out no context."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from services.common.tracing import NO_SPAN, Tracing
from services.demo import build_demo_model
from tests.integration.embedding_stack import embedding_stack
from tests.integration.fake_tokenizer import wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


def test_one_request_makes_a_tree_of_spans_from_gateway_to_worker(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    model = build_demo_model(tmp_path / "demo")

    async def main() -> None:
        async with embedding_stack([(model, "demo")], internal_token="an-internal-token",
                                   tracing=lambda stage: Tracing(stage, SimpleSpanProcessor(exporter))) as stack:
            async with aiohttp.ClientSession() as http:
                body = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
                headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
                async with http.post(stack.http + "/v1/completions", json=body, headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                    answer = await resp.json()
            await wait_until(lambda: len(exporter.get_finished_spans()) == 4, 10)

        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert sorted(spans) == ["gateway", "scheduler", "tokenizer", "worker"]
        assert {format(s.context.trace_id, "032x") for s in spans.values()} == {CLIENT_TRACE}
        parents = {name: format(s.parent.span_id, "016x") for name, s in spans.items()}
        ids = {name: format(s.context.span_id, "016x") for name, s in spans.items()}
        assert parents == {"gateway": CLIENT_SPAN, "tokenizer": ids["gateway"], "scheduler": ids["tokenizer"],
                           "worker": ids["scheduler"]}
        assert {name: s.resource.attributes["service.name"] for name, s in spans.items()} == {
            name: f"flashstream-{name}" for name in spans}
        gateway, scheduler = spans["gateway"].attributes, spans["scheduler"].attributes
        assert (gateway["request_id"], gateway["model"]) == (answer["id"], "demo")
        assert gateway["completion_tokens"] == scheduler["completion_tokens"] == answer["usage"]["completion_tokens"]
        assert spans["worker"].attributes["scheduled_tokens"] == answer["usage"]["prompt_tokens"]
        assert spans["gateway"].start_time <= spans["tokenizer"].start_time <= spans["scheduler"].start_time
        assert spans["scheduler"].start_time <= spans["worker"].start_time <= spans["worker"].end_time
        assert spans["scheduler"].end_time <= spans["gateway"].end_time

    asyncio.run(main())


def test_without_a_collector_tracing_is_off_and_passes_no_context() -> None:
    tracing = Tracing.otlp("gateway", "")
    span = tracing.start("gateway", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", request_id="r")
    assert (tracing.enabled, span, span.traceparent) == (False, NO_SPAN, "")
    span.set(a=1)
    span.end("ignored")
    tracing.shutdown()
