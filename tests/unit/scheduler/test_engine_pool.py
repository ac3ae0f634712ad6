"""Engine pool: admission checks and routing across workers, without gRPC."""

from __future__ import annotations

import pytest

from services.common.errors import ErrorCode, FlashStreamError, InvalidArgument, ResourceExhausted, Unavailable
from services.common.sampling import SamplingParams
from services.scheduler.config import SchedulerConfig, WorkerLimits
from services.scheduler.engine_pool import EnginePool
from services.scheduler.request_events import Request, RequestFailed
from tests.unit.scheduler.fake_worker import FakeWorker, run_engine

LIMITS = WorkerLimits(block_size=4, num_kv_blocks=8, max_num_seqs=4, max_num_batched_tokens=64,
                      max_model_len=64, vocab_size=500)


def req(key: str, prompt: list[int], max_tokens: int = 2) -> Request:
    return Request(key, tuple(prompt), SamplingParams(max_tokens=max_tokens))


def test_prompt_that_can_never_fit_the_kv_cache_is_invalid_argument():
    pool = EnginePool(SchedulerConfig())
    pool.add_worker("w", LIMITS)
    with pytest.raises(InvalidArgument) as refused:
        pool.route(req("r", list(range(30)), max_tokens=3))  # 33 tokens need 9 blocks of 4; 8 exist
    assert refused.value.message == "prompt plus max_tokens needs 9 KV blocks, more than the worker's 8: it can never " \
                                    "fit the KV cache"
    assert pool.num_waiting == 0


def test_a_prompt_past_the_context_of_a_worker_that_joined_later_is_invalid_argument():
    pool = EnginePool(SchedulerConfig())
    pool.add_worker("w", LIMITS)
    with pytest.raises(InvalidArgument) as refused:
        pool.route(req("long", list(range(10)), max_tokens=60))
    assert refused.value.message == "prompt plus max_tokens (70 tokens) exceeds the worker's context (64 tokens)"
    assert pool.num_waiting == 0


def test_what_the_tokenizer_stage_guarantees_is_not_checked_again_and_breaking_it_is_internal():
    pool = EnginePool(SchedulerConfig())
    pool.add_worker("w", LIMITS)
    broken = [
        (req("empty", []), "request 'empty' arrived without prompt tokens: the tokenizer stage refuses empty prompts "
                           "and turns fill_context into max_tokens"),
        (Request("fill", (1, 2), SamplingParams(fill_context=True)),
         "request 'fill' arrived with fill_context set: the tokenizer stage refuses empty prompts and turns "
         "fill_context into max_tokens"),
    ]
    for request, message in broken:
        with pytest.raises(FlashStreamError) as info:
            pool.route(request)
        assert (info.value.code, info.value.message) == (ErrorCode.INTERNAL, message)
    # Ids are the tokenizer stage's to check; the worker guards its embedding (see test_runner_plans).
    pool.route(req("ids", [1, 500]))
    assert pool.num_waiting == 1


def test_full_queue_is_resource_exhausted_at_once():
    pool = EnginePool(SchedulerConfig(max_queued_requests=2))
    pool.add_worker("w", LIMITS)
    pool.route(req("a", [1]))
    pool.route(req("b", [2]))
    with pytest.raises(ResourceExhausted, match="queue is full"):
        pool.route(req("c", [3]))
    assert pool.num_waiting == 2


def test_no_worker_is_unavailable():
    with pytest.raises(Unavailable):
        EnginePool(SchedulerConfig()).route(req("a", [1]))


def test_new_request_goes_to_the_longest_cached_prefix_then_the_least_load():
    pool = EnginePool(SchedulerConfig())
    left = pool.add_worker("left", LIMITS)
    pool.add_worker("right", LIMITS)
    shared = list(range(100, 112))
    assert pool.route(req("a", shared + [1])) == "left"  # equal: the first of the least loaded
    run_engine(left, FakeWorker(8, 4))
    assert pool.route(req("b", [7, 8, 9])) == "left"  # both idle again: ties keep order
    assert pool.route(req("c", [7, 8, 9])) == "right"  # left has one request
    assert pool.route(req("d", shared + [2])) == "left"  # left caches 12 of its tokens


def test_losing_a_worker_ends_its_streaming_requests_with_unavailable_and_moves_the_others():
    pool = EnginePool(SchedulerConfig())
    left = pool.add_worker("left", LIMITS)
    pool.add_worker("right", LIMITS)
    assert pool.route(req("streaming", [1], max_tokens=20)) == "left"
    worker = FakeWorker(8, 4)
    left.process_result(worker.step(left.build_plan()))  # its first token is out
    assert [(type(e).__name__, e.keys) for e in pool.take_events(left)] == [("NewTokens", ["streaming"])]
    assert pool.route(req("queued", [2])) == "right"
    assert pool.route(req("tokenless", [3])) == "left"
    events = pool.remove_worker("left", "worker left disconnected")
    assert [(e.key, e.code, e.message) for e in events] == [
        ("streaming", ErrorCode.UNAVAILABLE, "worker left disconnected")]
    assert pool.abort("streaming") is None
    assert pool.abort("tokenless") == "right"  # moved, with its prompt, to the worker left
    assert pool.abort("queued") == "right"
    assert pool.route(req("streaming", [1])) == "right"  # the key is free again


def test_losing_the_only_worker_ends_every_request_with_unavailable():
    pool = EnginePool(SchedulerConfig())
    pool.add_worker("only", LIMITS)
    pool.route(req("a", [1]))
    events = pool.remove_worker("only", "worker only disconnected")
    assert [(e.key, e.code) for e in events] == [("a", ErrorCode.UNAVAILABLE)]
