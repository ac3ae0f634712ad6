"""The Worker server over loopback: Info, Step with two plans in flight, per-sequence errors, health, reflection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from flashstream.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.config import ServerConfig
from services.common.grpc_server import create_channel
from services.worker.config import WorkerConfig
from services.worker.server import WorkerStage
from tests.unit.worker.helpers import hf_greedy, make_checkpoint

PROMPT_A = [5, 17, 99, 3, 250, 41, 7, 7, 128, 64, 33, 2, 200, 11, 90, 150, 6, 73]
PROMPT_B = [9, 8, 7, 6, 5]
NUM_TOKENS = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:  # noqa: ANN001
    return make_checkpoint("qwen2", tmp_path_factory.mktemp("qwen2"))


def _config(folder: Path) -> WorkerConfig:
    return WorkerConfig(model=str(folder), device="cpu", dtype="float32", num_kv_blocks=32, max_model_len=256,
                        server=ServerConfig(port=0))


def _new_seq(seq_id: int, prompt: list[int], blocks: list[int]) -> worker_pb2.NewSeq:
    return worker_pb2.NewSeq(seq_id=seq_id, token_ids=prompt, num_prompt_tokens=len(prompt), block_ids=blocks,
                             num_computed_tokens=0, num_scheduled_tokens=len(prompt),
                             sampling=common_pb2.SamplingParams(max_tokens=NUM_TOKENS, ignore_eos=True))


def _plans() -> list[worker_pb2.StepPlan]:
    """A prefill of A and B, then decodes; seq 99 is unknown to the worker."""
    plans = [worker_pb2.StepPlan(step_id=1, new_seqs=[_new_seq(1, PROMPT_A, [0, 1]), _new_seq(2, PROMPT_B, [2])],
                                 cached_seqs=worker_pb2.CachedSeqs(seq_ids=[99], num_scheduled_tokens=[1],
                                                                   num_new_blocks=[0]))]
    for step in range(2, NUM_TOKENS + 1):
        plans.append(worker_pb2.StepPlan(step_id=step, cached_seqs=worker_pb2.CachedSeqs(
            seq_ids=[1, 2], num_scheduled_tokens=[1, 1], num_new_blocks=[0, 0])))
    return plans


async def _drive(port: int) -> tuple[worker_pb2.WorkerInfo, list[worker_pb2.StepResult], list, object]:
    async with create_channel(f"127.0.0.1:{port}") as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        info = await stub.Info(worker_pb2.InfoRequest())
        call = stub.Step()
        plans = _plans()
        results = []
        # Keep two plans in flight: send the next before reading the previous result.
        await call.write(plans[0])
        for plan in plans[1:]:
            await call.write(plan)
            results.append(await call.read())
        await call.done_writing()
        results.append(await call.read())
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="flashstream.v1.Worker"))
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = [s.name async for r in reflection for s in r.list_services_response.service]
        embed = await stub.Embed(common_pb2.EmbedTokensRequest(
            inputs=[common_pb2.TokenIds(token_ids=PROMPT_B)], normalize=True))
        return info, results, services, (health.status, embed)


def test_worker_serves_greedy_tokens_over_grpc_with_two_plans_in_flight(folder: Path) -> None:
    expected_a, _ = hf_greedy(folder, PROMPT_A, NUM_TOKENS)
    expected_b, _ = hf_greedy(folder, PROMPT_B, NUM_TOKENS)

    async def scenario():  # noqa: ANN202
        stage = WorkerStage(_config(folder))
        await stage.start()
        try:
            driven = await _drive(stage.port)
            return driven, stage.servicer.engine.runner.num_overlapped_steps, stage.servicer.metrics.render().decode()
        finally:
            await stage.stop(1.0)

    (info, results, services, (health_status, embed)), num_overlapped, metrics = asyncio.run(scenario())
    # One prefill step of both prompts, then NUM_TOKENS - 1 decode steps of both sequences.
    m = f'model="{info.model_id}"'
    for line in (f'flashstream_step_duration_seconds_count{{kind="prefill",{m},stage="worker"}} 1.0',
                 f'flashstream_step_duration_seconds_count{{kind="decode",{m},stage="worker"}} {NUM_TOKENS - 1}.0',
                 f'flashstream_step_tokens_sum{{{m},phase="prefill",stage="worker"}} {len(PROMPT_A) + len(PROMPT_B)}.0',
                 f'flashstream_step_tokens_sum{{{m},phase="decode",stage="worker"}} {2 * (NUM_TOKENS - 1)}.0',
                 f'flashstream_step_sequences_sum{{{m},phase="prefill",stage="worker"}} 2.0',
                 f'flashstream_device_idle_seconds_total{{{m},stage="worker"}} 0.0',
                 f'flashstream_steps_queued_ahead_total{{{m},stage="worker"}} {float(num_overlapped)}'):
        assert line in metrics.splitlines(), line
    print(f"steps queued ahead of their turn: {num_overlapped} of {NUM_TOKENS}")  # timing-dependent, not asserted
    assert (info.architecture, info.vocab_size, info.num_kv_blocks, info.block_size) == ("Qwen2ForCausalLM", 256, 32, 16)
    assert (info.max_model_len, info.dtype, info.device) == (256, "float32", "cpu")
    assert len(info.model_revision) == 12 and info.worker_id
    assert [r.step_id for r in results] == list(range(1, NUM_TOKENS + 1))
    tokens = {1: [], 2: []}
    for r in results:
        for seq_id, token_id in zip(r.sampled.seq_ids, r.sampled.token_ids):
            tokens[seq_id].append(token_id)
    assert tokens == {1: expected_a, 2: expected_b}
    assert [(e.seq_id, e.error.code) for e in results[0].errors] == [(99, grpc.StatusCode.NOT_FOUND.value[0])]
    assert health_status == health_pb2.HealthCheckResponse.SERVING
    assert "flashstream.v1.Worker" in services and "grpc.health.v1.Health" in services
    assert len(embed.embeddings) == 1 and len(embed.embeddings[0].values) == 64
    assert abs(sum(v * v for v in embed.embeddings[0].values) - 1.0) < 1e-5


def test_a_token_id_outside_the_vocabulary_fails_only_that_sequence_as_a_broken_invariant(folder: Path) -> None:
    async def scenario():  # noqa: ANN202
        stage = WorkerStage(_config(folder))
        await stage.start()
        try:
            async with create_channel(f"127.0.0.1:{stage.port}") as channel:
                call = worker_pb2_grpc.WorkerStub(channel).Step()
                bad = _new_seq(2, [*PROMPT_B[:-1], 10**6], [2])  # the tokenizer stage refuses such prompts
                await call.write(worker_pb2.StepPlan(step_id=1, new_seqs=[_new_seq(1, PROMPT_A, [0, 1]), bad]))
                result = await call.read()
                await call.done_writing()
                return result
        finally:
            await stage.stop(1.0)

    result = asyncio.run(scenario())
    assert list(result.sampled.seq_ids) == [1]
    assert [(e.seq_id, e.error.code) for e in result.errors] == [(2, grpc.StatusCode.INTERNAL.value[0])]
    assert result.errors[0].error.message.startswith("seq 2: token id 1000000 is outside the vocabulary of ")
    assert result.errors[0].error.message.endswith(", which the tokenizer stage checks")
