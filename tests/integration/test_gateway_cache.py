"""The result cache over the real gateway (gRPC and HTTP) in front of the fake tokenizer, in-process LRU store."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from services.common.grpc_server import create_channel
from tests.integration.fake_tokenizer import FAKE_CHUNKS, Stack, gateway_stack, wait_until


def _request(prompt: str = "slow", bypass: bool = False, **sampling: object) -> gateway_pb2.GenerateRequest:
    return gateway_pb2.GenerateRequest(prompt=prompt, options=gateway_pb2.GenerateOptions(
        sampling=common_pb2.SamplingParams(max_tokens=5, **sampling), bypass_cache=bypass))


async def _generate(stack: Stack, request: gateway_pb2.GenerateRequest) -> list[gateway_pb2.GenerateChunk]:
    async with create_channel(stack.grpc_target) as channel:
        return [c async for c in gateway_pb2_grpc.GatewayStub(channel).Generate(request)]


def _chunks(chunks: list[gateway_pb2.GenerateChunk]) -> list[tuple[str, list[int]]]:
    return [(c.chunk.text, list(c.chunk.token_ids)) for c in chunks[:-1]]


async def _stored(stack: Stack) -> None:
    assert stack.gateway.cache is not None
    await stack.gateway.cache.flush()


async def _until(predicate, timeout: float = 5.0) -> None:  # noqa: ANN001
    """Waits for something the gateway does after the client's call has already ended (an upstream abort)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true after {timeout} s")
        await asyncio.sleep(0.01)


def _counters(stack: Stack) -> tuple[float, float]:
    m = stack.gateway.metrics.for_model("fake-model")
    return m.result_cache_queries._value.get(), m.result_cache_hits._value.get()


def test_a_repeated_greedy_request_is_replayed_from_the_cache_as_one_chunk_of_the_same_text() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            first = await _generate(stack, _request())  # "slow": one chunk per token, 0.1 s apart
            await _stored(stack)
            second = await _generate(stack, _request())
            assert len(stack.fake.requests) == 1
            assert _chunks(first) == [(t, [i]) for i, t in enumerate(FAKE_CHUNKS)]
            assert _chunks(second) == [("".join(FAKE_CHUNKS), list(range(len(FAKE_CHUNKS))))]
            d1, d2 = first[-1].done, second[-1].done
            assert (d1.finish_reason, d2.finish_reason) == (common_pb2.FINISH_REASON_EOS,) * 2
            assert (d1.usage.result_cached, d2.usage.result_cached) == (False, True)
            assert (d2.usage.prompt_tokens, d2.usage.completion_tokens, d2.usage.cached_tokens) == (7, 5, 3)
            assert d2.latency.tokenizer_s == 0.0 and d2.latency.gateway_s > 0
            assert second[0].request_id != first[0].request_id
            assert _counters(stack) == (2.0, 1.0)
            text = stack.gateway.metrics.render().decode()
            assert 'flashstream_result_cache_hits_total{model="fake-model",stage="gateway"} 1.0' in text
            assert 'flashstream_result_cache_queries_total{model="fake-model",stage="gateway"} 2.0' in text
            assert ('flashstream_cache_lookup_seconds_count{cache="result",model="fake-model",stage="gateway"} 2.0'
                    in text)

    asyncio.run(main())


def test_logprobs_are_replayed_exactly() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            first = await _generate(stack, _request("Hi", logprobs=2))
            await _stored(stack)
            second = await _generate(stack, _request("Hi", logprobs=2))
            assert len(stack.fake.requests) == 1
            # The replay is one chunk; tokens and logprobs are the first answer's, in order.
            assert len(second) == 2
            assert list(second[0].chunk.logprobs) == [lp for c in first[:-1] for lp in c.chunk.logprobs]
            assert list(second[0].chunk.token_ids) == [0, 1, 2, 3, 4]
            assert [lp.top[1].logprob for lp in second[0].chunk.logprobs] == [-2.0] * 5

    asyncio.run(main())


def test_a_sampled_unseeded_request_is_never_cached_and_a_seeded_one_is() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            for _ in range(2):
                await _generate(stack, _request("Hi", temperature=0.8))
                await _stored(stack)
            assert len(stack.fake.requests) == 2
            assert _counters(stack) == (0.0, 0.0)
            for _ in range(2):
                last = await _generate(stack, _request("Hi", temperature=0.8, seed=5))
                await _stored(stack)
            assert len(stack.fake.requests) == 3
            assert last[-1].done.usage.result_cached

    asyncio.run(main())


def test_different_sampling_parameters_miss_and_bypass_cache_skips_the_cache() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            await _generate(stack, _request("Hi"))
            await _stored(stack)
            await _generate(stack, _request("Hi", top_p=0.5))
            await _stored(stack)
            assert len(stack.fake.requests) == 2
            bypassed = await _generate(stack, _request("Hi", bypass=True))
            assert len(stack.fake.requests) == 3 and not bypassed[-1].done.usage.result_cached
            assert _counters(stack) == (2.0, 0.0)

    asyncio.run(main())


def test_an_aborted_or_failed_generation_is_not_stored() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            request = _request("slow")
            request.options.timeout_s = 0.15  # the deadline aborts it mid-stream
            for req, code in [(_request("late-error:8:queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED)] * 2 + [
                    (request, grpc.StatusCode.DEADLINE_EXCEEDED)] * 2:
                try:
                    await _generate(stack, req)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == code
                else:
                    raise AssertionError("the request should have failed")
                await _stored(stack)
            assert len(stack.fake.requests) == 4
            # The deadline ends the client's call first; the gateway's abort reaches the tokenizer just after.
            await _until(lambda: len(stack.fake.aborts) == 2)
            assert stack.fake.aborts == [r.request_id for r in stack.fake.requests[2:]]

    asyncio.run(main())


def test_identical_concurrent_requests_reach_the_tokenizer_once_and_all_get_the_full_stream() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            results = await asyncio.gather(*(_generate(stack, _request()) for _ in range(6)))
            assert len(stack.fake.requests) == 1
            for chunks in results:
                assert "".join(c.chunk.text for c in chunks[:-1]) == "".join(FAKE_CHUNKS)
                assert [t for c in chunks[:-1] for t in c.chunk.token_ids] == [0, 1, 2, 3, 4]
                assert chunks[-1].done.finish_reason == common_pb2.FINISH_REASON_EOS
            assert sorted(c[-1].done.usage.result_cached for c in results) == [False] + [True] * 5
            assert _counters(stack) == (6.0, 5.0)

    asyncio.run(main())


def test_a_follower_that_leaves_does_not_abort_the_leader_and_a_failure_reaches_every_follower() -> None:
    async def main() -> None:
        async with gateway_stack() as stack:
            leader = asyncio.create_task(_generate(stack, _request()))
            await wait_until(lambda: len(stack.fake.requests) == 1)
            follower = asyncio.create_task(_generate(stack, _request()))
            await asyncio.sleep(0.15)
            follower.cancel()
            chunks = await leader
            assert stack.fake.aborts == []
            assert _chunks(chunks) == [(t, [i]) for i, t in enumerate(FAKE_CHUNKS)]

            failing = _request("late-error:14:tokenizer fell over")
            outcomes = await asyncio.gather(*(_generate(stack, failing) for _ in range(3)), return_exceptions=True)
            # A failure is never stored (calls that arrive after it ended generate again), and each gets it.
            assert 2 <= len(stack.fake.requests) <= 4
            assert [getattr(o, "details", lambda: o)() for o in outcomes] == ["tokenizer fell over"] * 3

    asyncio.run(main())


def test_http_marks_a_replayed_answer_in_usage_and_cache_false_skips_it() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            bodies = []
            for cache in (None, None, False):
                payload = {"prompt": "Hi", "max_tokens": 5, "temperature": 0}
                if cache is not None:
                    payload["cache"] = cache
                async with session.post(stack.http + "/v1/completions", json=payload) as resp:
                    assert resp.status == 200
                    bodies.append(await resp.json())
                await _stored(stack)
            assert [b["choices"][0]["text"] for b in bodies] == ["Hello, world!"] * 3
            assert ["result_cached" in b["usage"] for b in bodies] == [False, True, False]
            assert bodies[1]["usage"]["result_cached"] is True
            assert len(stack.fake.requests) == 2
            async with session.post(stack.http + "/v1/completions", json={"prompt": "Hi", "cache": "no"}) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["param"] == "cache"

    asyncio.run(main())


def test_callers_with_different_api_keys_do_not_share_answers() -> None:
    async def main() -> None:
        async with gateway_stack(api_keys=("ka", "kb")) as stack, aiohttp.ClientSession() as session:
            for key in ("ka", "kb", "ka"):
                async with session.post(stack.http + "/v1/completions", json={"prompt": "Hi", "temperature": 0},
                                        headers={"Authorization": f"Bearer {key}"}) as resp:
                    assert resp.status == 200
                await _stored(stack)
            assert len(stack.fake.requests) == 2

    asyncio.run(main())
