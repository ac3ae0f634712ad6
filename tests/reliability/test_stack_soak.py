"""No request is ever lost: the whole stack under concurrent load, cancellations and bad input.

The four stages run as real processes with a model-free worker. Every request must end exactly once
(all its tokens and one Done, or a status), and once the load is gone the scheduler must hold no
sequence and no KV block.
"""

from __future__ import annotations

import asyncio
import random
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from services.demo import build_demo_model
from services.launcher import Stack
from tests.integration.stack_fixture import running_stack, scheduler_state_when_idle, stack_device, stage_logs

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

NUM_REQUESTS = 240
CONCURRENCY = 96


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model_dir = build_demo_model(tmp_path_factory.mktemp("model") / "demo")
    log_dir = tmp_path_factory.mktemp("logs")
    # Few KV blocks, so that preemption and recompute happen under this load too. On CPU the worker is
    # model-free; on a GPU machine (FLASHSTREAM_TEST_DEVICE=cuda) it runs the demo model with CUDA graphs.
    load_format = "fake" if stack_device() == "cpu" else "auto"
    worker_args = f"--load-format {load_format} --num-kv-blocks 48 --max-num-seqs 64"
    extra = ["--scheduler-args", "--max-num-seqs 64 --max-num-batched-tokens 512"]
    with running_stack(model_dir, log_dir, worker_args, extra) as running:
        running.log_dir = log_dir
        yield running


def _request(rng: random.Random, i: int) -> tuple[gateway_pb2.GenerateRequest, str]:
    """A request and what it should do: 'complete', 'cancel' or 'invalid'."""
    kind = rng.choices(["complete", "cancel", "invalid"], weights=[70, 20, 10])[0]
    max_tokens = rng.randint(1, 96) if kind != "invalid" else 0
    prompt = " ".join(rng.choice(["the", "cache", "block", "token", "流", "🎉", "stream"]) for _ in range(rng.randint(1, 60)))
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    if rng.random() < 0.3:
        sampling.temperature, sampling.seed = 0.8, i
    return gateway_pb2.GenerateRequest(prompt=prompt, options=gateway_pb2.GenerateOptions(sampling=sampling)), kind


async def _run_one(stub: gateway_pb2_grpc.GatewayStub, request: gateway_pb2.GenerateRequest, kind: str,
                   rng: random.Random) -> str:
    """Runs one request; returns a problem description, or '' when it behaved."""
    call = stub.Generate(request, timeout=120)
    num_tokens, num_done, cancel_after = 0, 0, rng.randint(1, 8)
    try:
        async for message in call:
            if message.HasField("chunk"):
                num_tokens += len(message.chunk.token_ids)
                if kind == "cancel" and num_tokens >= cancel_after:
                    call.cancel()
                    return ""
            else:
                num_done += 1
                if message.done.usage.completion_tokens != num_tokens:
                    return f"usage says {message.done.usage.completion_tokens} tokens, stream had {num_tokens}"
    except grpc.aio.AioRpcError as exc:
        if kind == "invalid" and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return ""
        if exc.code() == grpc.StatusCode.CANCELLED and kind == "cancel":
            return ""
        return f"{kind} request failed with {exc.code().name}: {exc.details()}"
    expected = request.options.sampling.max_tokens
    if kind == "invalid":
        return "invalid request was accepted"
    if kind == "cancel" and num_tokens < cancel_after:
        return "" if num_done == 1 and num_tokens == expected else f"short stream: {num_tokens}/{expected}"
    if num_done != 1 or num_tokens != expected:
        return f"{kind}: {num_tokens}/{expected} tokens, {num_done} terminal events"
    return ""


def test_every_request_ends_exactly_once_and_the_scheduler_frees_everything(stack: Stack) -> None:
    rng = random.Random(20261124)
    requests = [_request(rng, i) for i in range(NUM_REQUESTS)]

    async def scenario() -> list[str]:
        semaphore = asyncio.Semaphore(CONCURRENCY)
        async with grpc.aio.insecure_channel(stack.gateway_grpc) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)

            async def guarded(request: gateway_pb2.GenerateRequest, kind: str, seed: int) -> str:
                async with semaphore:
                    return await _run_one(stub, request, kind, random.Random(seed))

            return await asyncio.gather(*(guarded(r, k, i) for i, (r, k) in enumerate(requests)))

    problems = [(i, p) for i, p in enumerate(asyncio.run(scenario())) if p]
    assert problems == [], f"{problems[:5]}\n{stage_logs(stack.log_dir)}"

    state = scheduler_state_when_idle(stack)
    scheduler = next(s for s in stack.stages if s.name == "scheduler")
    assert (state.num_running, state.num_waiting, state.kv_cache_usage, len(state.workers)) == (0, 0, 0.0, 1)
    status_port = scheduler.argv[scheduler.argv.index("--status-port") + 1]
    with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    preemptions = float(re.search(r'^flashstream_num_preemptions_total\{model="[^"]+",stage="scheduler"\} (\S+)$', metrics, re.M)[1])
    assert preemptions > 0, "the load was meant to run out of KV blocks"
    print(f"preemptions: {preemptions:.0f}")
