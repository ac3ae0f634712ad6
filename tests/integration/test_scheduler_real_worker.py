"""The scheduler driving the real worker (the demo Llama on CPU) over loopback gRPC.

Greedy tokens must not depend on how the scheduler arranged the KV cache: a prompt served from the prefix
cache, and sequences preempted and recomputed, give exactly the tokens of an undisturbed run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.common.config import ServerConfig
from services.common.grpc_server import create_channel
from services.demo.build import build_demo_model
from services.scheduler.config import BackoffConfig, SchedulerConfig, SchedulerStageConfig
from services.scheduler.server import SchedulerStage
from tests.integration.scheduler_fake_worker import SchedulerStreamClient, token_request, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("model") / "demo")


def with_real_worker(model_dir: Path, num_kv_blocks: int, test, scheduler: SchedulerConfig | None = None) -> None:  # noqa: ANN001
    from services.worker.server import WorkerStage, build_config

    async def main() -> None:
        worker = WorkerStage(build_config([
            "--port", "0", "--status-port", "0", "--model", str(model_dir), "--device", "cpu",
            "--dtype", "float32", "--block-size", "4", "--num-kv-blocks", str(num_kv_blocks),
            "--max-num-batched-tokens", "256", "--max-model-len", "128",
        ]))
        await worker.start()
        stage = SchedulerStage(SchedulerStageConfig(ServerConfig(port=0), (f"127.0.0.1:{worker.port}",),
                                                    scheduler or SchedulerConfig(), BackoffConfig(0.05, 0.2)))
        await stage.start()
        channel = create_channel(f"127.0.0.1:{stage.port}")
        client = SchedulerStreamClient(channel)
        try:
            await wait_until(lambda: stage.pool.num_workers == 1, timeout=30)
            await test(stage, client)
        finally:
            await client.close()
            await channel.close()
            await stage.stop(0.1)
            await worker.stop(0.1)

    asyncio.run(main())


def test_prefix_cache_hit_gives_the_same_greedy_tokens_as_computing_the_prompt(model_dir: Path):
    prompt = [(7 * i + 3) % 200 + 5 for i in range(30)]

    async def test(stage, client):  # noqa: ANN001
        for request_id in ("computed", "cached"):
            await client.send([token_request(request_id, prompt, max_tokens=8, sampling={"ignore_eos": True})])
            await client.wait_done(request_id, timeout=60)
        assert len(client.tokens("computed")) == 8
        assert client.tokens("cached") == client.tokens("computed")
        usage = [client.terminal(r).done.usage for r in ("computed", "cached")]
        assert [u.cached_tokens for u in usage] == [0, 28]  # 7 full blocks of 4; the 8th holds the last token

    with_real_worker(model_dir, 64, test)


def test_preempted_and_recomputed_sequences_give_the_same_greedy_tokens(model_dir: Path):
    prompts = {f"r{i}": [(11 * i + 5 * j) % 150 + 5 for j in range(9)] for i in range(4)}
    alone: dict[str, list[int]] = {}

    async def one_at_a_time(stage, client):  # noqa: ANN001
        for request_id, prompt in prompts.items():
            await client.send([token_request(request_id, prompt, max_tokens=24, sampling={"ignore_eos": True})])
            await client.wait_done(request_id, timeout=60)
            alone[request_id] = client.tokens(request_id)

    async def all_at_once(stage, client):  # noqa: ANN001
        await client.send([token_request(r, p, max_tokens=24, sampling={"ignore_eos": True})
                           for r, p in prompts.items()])
        await client.wait_done(*prompts, timeout=60)
        assert stage.metrics.num_preemptions._value.get() > 0  # 4 x 33 tokens do not fit 24 blocks of 4
        for request_id in prompts:
            assert client.tokens(request_id) == alone[request_id], request_id
        await wait_until(lambda: stage.pool.engines.kv_cache_usage == 0.0)

    with_real_worker(model_dir, 64, one_at_a_time, SchedulerConfig(enable_prefix_caching=False))
    with_real_worker(model_dir, 24, all_at_once)


@pytest.mark.parametrize("in_flight", [3, 4])
def test_more_steps_in_flight_give_the_tokens_of_one_step_at_a_time(model_dir: Path, in_flight: int):
    """Sequences that stop on a token the scheduler cannot foresee keep running in the steps already sent after
    it; those tokens are dropped, the outputs equal one step at a time, and every KV block comes back."""
    prompts = {f"r{i}": [(13 * i + 7 * j) % 150 + 5 for j in range(6 + i)] for i in range(6)}
    full: dict[str, list[int]] = {}
    results: dict[int, dict[str, list[int]]] = {}

    async def unstopped(stage, client):  # noqa: ANN001
        await client.send([token_request(r, p, max_tokens=16, sampling={"ignore_eos": True})
                           for r, p in prompts.items()])
        await client.wait_done(*prompts, timeout=60)
        full.update({r: client.tokens(r) for r in prompts})

    def stopping(key: int):  # noqa: ANN202
        async def test(stage, client):  # noqa: ANN001
            # Each request stops on its own fourth token (or the first later token equal to it).
            await client.send([token_request(r, p, max_tokens=16, sampling={"ignore_eos": True,
                                                                            "stop_token_ids": [full[r][3]]})
                               for r, p in prompts.items()])
            await client.wait_done(*prompts, timeout=60)
            results[key] = {r: client.tokens(r) for r in prompts}
            await wait_until(lambda: stage.pool.engines.kv_cache_usage == 0.0)
        return test

    with_real_worker(model_dir, 64, unstopped, SchedulerConfig(max_steps_in_flight=1))
    with_real_worker(model_dir, 64, stopping(1), SchedulerConfig(max_steps_in_flight=1))
    with_real_worker(model_dir, 64, stopping(in_flight), SchedulerConfig(max_steps_in_flight=in_flight))
    assert results[in_flight] == results[1]
    assert all(len(tokens) <= 3 for tokens in results[1].values())  # the stop token itself is not output
    assert results[1] == {r: tokens[: tokens.index(tokens[3])] for r, tokens in full.items()}
