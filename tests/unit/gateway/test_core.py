"""GatewayCore without gRPC: model routing, validation against the model, deadlines, aborts, bookkeeping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from gateway.core import GatewayCore
from gateway.errors import ModelNotFound, RequestError
from gateway.schema import (
    ChatTurn,
    Event,
    Finished,
    GenerationRequest,
    Latency,
    ModelCard,
    Submission,
    TextDelta,
    Usage,
)
from services.common.errors import DeadlineExceeded, ErrorCode, FlashStreamError, Unavailable
from services.common.finish_reason import FinishReason
from services.common.metrics import Metrics
from services.common.sampling import SamplingParams


@dataclass
class QueueHandle:
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    aborted: bool = False
    replayed: bool = False

    async def next(self) -> Event | FlashStreamError:
        return await self.queue.get()

    def next_nowait(self) -> Event | FlashStreamError | None:
        return None if self.queue.empty() else self.queue.get_nowait()

    def abort(self) -> None:
        self.aborted = True


@dataclass
class ListRouter:
    """Routes to in-memory queues that the test fills."""

    models: list[ModelCard]
    ready: bool = True
    submitted: list[Submission] = field(default_factory=list)
    handles: list[QueueHandle] = field(default_factory=list)

    def cards(self) -> list[ModelCard]:
        return list(self.models)

    def forward(self, submission: Submission) -> QueueHandle:
        self.submitted.append(submission)
        self.handles.append(QueueHandle())
        return self.handles[-1]


CARD = ModelCard("llama", "r1", max_model_len=32, vocab_size=100)


def _request(**kw: object) -> GenerationRequest:
    fields: dict[str, object] = {"model": "", "prompt": "Hi", "sampling": SamplingParams(max_tokens=4)}
    fields.update(kw)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def _core(*cards: ModelCard, timeout_s: float = 600.0) -> tuple[GatewayCore, ListRouter]:
    router = ListRouter(list(cards) or [CARD])
    return GatewayCore(router, Metrics("gateway"), timeout_s), router


def test_empty_model_routes_to_the_only_model_and_sets_the_deadline() -> None:
    async def main() -> None:
        core, router = _core(timeout_s=30.0)
        generation = core.start(_request())
        sub = router.submitted[0]
        assert (generation.model, sub.request.model) == ("llama", "llama")
        assert sub.deadline_unix_s == pytest.approx(sub.arrival_unix_s + 30.0)
        assert sub.request_id == generation.request_id and sub.request_id.startswith("cmpl-")
        generation.close()

    asyncio.run(main())


def test_a_missing_model_is_a_400_an_unknown_one_a_404_and_no_model_served_unavailable() -> None:
    async def main() -> None:
        core, _ = _core(CARD, ModelCard("qwen"))
        with pytest.raises(RequestError) as missing:
            core.start(_request())
        assert (missing.value.message, missing.value.param) == ("model is required: this gateway serves llama, qwen",
                                                                "model")
        with pytest.raises(ModelNotFound) as unknown:
            core.start(_request(model="gpt"))
        assert unknown.value.message == "The model 'gpt' does not exist; this gateway serves: llama, qwen"
        empty, _ = _core()
        empty.router.models.clear()  # type: ignore[attr-defined]
        with pytest.raises(Unavailable):
            empty.start(_request())

    asyncio.run(main())


def test_requests_that_cannot_fit_the_model_are_refused() -> None:
    async def main() -> None:
        core, router = _core(CARD, ModelCard("plain", has_chat_template=False))
        with pytest.raises(RequestError) as too_long:
            core.start(_request(model="llama", sampling=SamplingParams(max_tokens=32)))
        assert (too_long.value.param, too_long.value.message) == (
            "max_tokens", "max_tokens (32) plus the prompt (1 token(s) at least) exceeds the context of model 'llama' "
                          "(32 tokens)")
        with pytest.raises(RequestError) as bad_bias:
            core.start(_request(model="llama", sampling=SamplingParams(max_tokens=4, logit_bias=((100, 1.0),))))
        assert bad_bias.value.message == "logit_bias token ids must be below the vocabulary size 100, got 100"
        with pytest.raises(RequestError) as no_template:
            core.start(_request(model="plain", prompt=None, messages=(ChatTurn("user", "x"),)))
        assert no_template.value.message == "model 'plain' has no chat template; send a completion request instead"
        assert router.submitted == [] and core.num_running == 0
        core.start(_request(model="llama", sampling=SamplingParams(max_tokens=31))).close()  # exactly fills the context

    asyncio.run(main())


def test_prompt_length_and_ids_are_left_to_the_tokenizer_stage_and_fill_context_skips_the_max_tokens_check() -> None:
    async def main() -> None:
        core, router = _core(CARD)
        # 30 prompt tokens plus 4 exceed the context of 32 and id 100 is outside the vocabulary: the tokenizer stage,
        # where every prompt's tokens exist, refuses both with one message each.
        core.start(_request(model="llama", prompt=None, token_ids=tuple(range(30)))).close()
        core.start(_request(model="llama", prompt=None, token_ids=(5, 100))).close()
        core.start(_request(model="llama", prompt=None, messages=(ChatTurn("user", "x"),),
                            sampling=SamplingParams(fill_context=True))).close()
        assert [s.request.token_ids for s in router.submitted[:2]] == [tuple(range(30)), (5, 100)]
        assert router.submitted[2].request.sampling.fill_context

    asyncio.run(main())


def test_events_flow_and_finished_carries_the_gateway_time() -> None:
    async def main() -> None:
        core, router = _core()
        generation = core.start(_request())
        assert core.num_running == 1
        handle = router.handles[0]
        handle.queue.put_nowait(TextDelta("", (), (), num_prompt_tokens=2))  # reports the prompt only: skipped
        handle.queue.put_nowait(TextDelta("a", (1,)))
        handle.queue.put_nowait(Finished(FinishReason.EOS, Usage(2, 1, 0), Latency(gateway_s=0.0, queue_s=0.5)))
        events = [event async for event in generation]
        assert events[0] == TextDelta("a", (1,))
        assert generation.num_prompt_tokens == 2
        done = events[1]
        assert isinstance(done, Finished) and done.latency.queue_s == 0.5
        assert done.latency.gateway_s == router.submitted[0].gateway_s > 0
        generation.close()
        assert (core.num_running, handle.aborted) == (0, False)

    asyncio.run(main())


def test_deltas_queued_behind_a_slow_reader_are_merged_into_one_chunk_before_the_terminal_event() -> None:
    async def main() -> None:
        core, router = _core()
        generation = core.start(_request())
        handle = router.handles[0]
        handle.queue.put_nowait(TextDelta("a", (1,)))
        handle.queue.put_nowait(TextDelta("", (), (), num_prompt_tokens=2))
        handle.queue.put_nowait(TextDelta("bc", (2, 3)))
        handle.queue.put_nowait(TextDelta("d", (4,)))
        handle.queue.put_nowait(Finished(FinishReason.LENGTH, Usage(2, 4, 0), Latency()))
        events = [event async for event in generation]
        assert events[0] == TextDelta("abcd", (1, 2, 3, 4), (), num_prompt_tokens=2)  # the first event reports it
        assert generation.num_prompt_tokens == 2
        assert isinstance(events[1], Finished) and events[1].usage.completion_tokens == 4
        assert len(events) == 2
        generation.close()

    asyncio.run(main())


def test_generated_tokens_give_one_gap_each_after_the_first_as_they_arrive_and_replayed_ones_give_none() -> None:
    async def main() -> None:
        core, router = _core()
        itl = ("flashstream_inter_token_latency_seconds_count", {"model": "llama", "stage": "gateway"})
        ttft = ("flashstream_time_to_first_token_seconds_count", {"model": "llama", "stage": "gateway"})
        registry = core.metrics.registry
        for replayed in (False, True):
            generation = core.start(_request())
            handle = router.handles[-1]
            handle.replayed = replayed
            handle.queue.put_nowait(TextDelta("ab", (1, 2), (), num_prompt_tokens=2))
            first = await anext(generation)
            handle.queue.put_nowait(TextDelta("cde", (3, 4, 5)))
            second = await anext(generation)
            assert registry.get_sample_value(*itl) == 4.0  # 1 + 3 from the generated answer, before it ends
            handle.queue.put_nowait(Finished(FinishReason.LENGTH, Usage(2, 5, 0, replayed), Latency()))
            rest = [event async for event in generation]
            assert (first.text, second.text, len(rest)) == ("ab", "cde", 1)
        assert (registry.get_sample_value(*ttft), registry.get_sample_value(*itl)) == (2.0, 4.0)

    asyncio.run(main())


def test_an_upstream_error_is_raised_and_ends_the_request() -> None:
    async def main() -> None:
        core, router = _core()
        generation = core.start(_request())
        router.handles[0].queue.put_nowait(Unavailable("worker lost"))
        with pytest.raises(Unavailable, match="worker lost"):
            await anext(generation)
        assert core.num_running == 0
        with pytest.raises(StopAsyncIteration):
            await anext(generation)

    asyncio.run(main())


def test_closing_an_unfinished_generation_aborts_it_upstream() -> None:
    async def main() -> None:
        core, router = _core()
        generation = core.start(_request())
        generation.close()
        generation.close()
        assert (router.handles[0].aborted, core.num_running) == (True, 0)

    asyncio.run(main())


def test_deadline_raises_deadline_exceeded_and_aborts() -> None:
    async def main() -> None:
        core, router = _core()
        generation = core.start(_request(timeout_s=5.0), time_limit_s=0.05)  # the tighter limit wins
        assert router.submitted[0].deadline_unix_s == pytest.approx(router.submitted[0].arrival_unix_s + 0.05)
        with pytest.raises(DeadlineExceeded) as err:
            await anext(generation)
        assert err.value.message == f"request {generation.request_id} passed its deadline of 0.05 s"
        assert router.handles[0].aborted and core.num_running == 0

    asyncio.run(main())


def test_a_deadline_that_passes_between_two_events_ends_the_next_wait() -> None:
    async def main() -> None:
        core, router = _core()
        generation = core.start(_request(), time_limit_s=0.05)
        router.handles[0].queue.put_nowait(TextDelta("a", (1,)))
        assert (await anext(generation)).text == "a"
        await asyncio.sleep(0.1)  # the client writes slowly: the deadline passes while nothing waits
        with pytest.raises(DeadlineExceeded):
            await anext(generation)
        assert router.handles[0].aborted and core.num_running == 0

    asyncio.run(main())


def test_a_cancelled_reader_is_not_mistaken_for_a_deadline_and_a_finished_request_drops_its_timer() -> None:
    async def main() -> None:
        core, router = _core()
        generation = core.start(_request(timeout_s=30.0))
        reader = asyncio.create_task(anext(generation))
        await asyncio.sleep(0)
        reader.cancel()  # the client went away while the reader waited
        with pytest.raises(asyncio.CancelledError):
            await reader
        generation.close()
        assert router.handles[0].aborted and core.num_running == 0
        assert generation._timer is not None and generation._timer.cancelled()

        finished = core.start(_request(timeout_s=30.0))
        router.handles[1].queue.put_nowait(Finished(FinishReason.LENGTH))
        assert isinstance(await anext(finished), Finished)
        assert finished._timer is not None and finished._timer.cancelled()

    asyncio.run(main())


def test_a_deadline_that_a_later_stage_reports_first_reads_as_the_gateway_words_it() -> None:
    async def main() -> None:
        core, router = _core()
        generation = core.start(_request(timeout_s=1.0))
        router.handles[0].queue.put_nowait(FlashStreamError("deadline exceeded", ErrorCode.DEADLINE_EXCEEDED))
        with pytest.raises(FlashStreamError) as err:
            await anext(generation)
        assert (err.value.code, err.value.message) == (
            ErrorCode.DEADLINE_EXCEEDED, f"request {generation.request_id} passed its deadline of 1 s")
        assert core.num_running == 0

    asyncio.run(main())


def test_draining_refuses_new_requests_and_readiness_follows() -> None:
    async def main() -> None:
        core, router = _core()
        assert core.is_ready()
        core.draining = True
        assert not core.is_ready()
        with pytest.raises(Unavailable, match="shutting down"):
            core.start(_request())
        core.draining = False
        router.ready = False
        assert not core.is_ready()

    asyncio.run(main())
