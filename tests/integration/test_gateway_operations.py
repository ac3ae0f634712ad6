"""Gateway operations: API keys, health and readiness, metrics, replicas and models, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import aiohttp
import grpc
import pytest
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.grpc_server import create_channel
from tests.integration.fake_tokenizer import (
    FakeTokenizerConfig,
    gateway_stack,
    start_fake_tokenizer,
    wait_until,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_api_keys_guard_http_and_grpc_but_not_status_routes() -> None:
    async def main() -> None:
        async with gateway_stack(api_keys=("secret-1", "secret-2")) as stack, aiohttp.ClientSession() as session:
            url = stack.http + "/v1/completions"
            async with session.post(url, json={"prompt": "Hi"}) as resp:
                assert resp.status == 401
                assert await resp.json() == {"error": {
                    "message": "missing API key: send the header 'Authorization: Bearer <key>'",
                    "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
            async with session.post(url, json={"prompt": "Hi"}, headers={"Authorization": "Bearer nope"}) as resp:
                assert resp.status == 401 and (await resp.json())["error"]["message"] == "invalid API key"
            async with session.post(url, json={"prompt": "Hi"}, headers={"Authorization": "Bearer secret-2"}) as resp:
                assert resp.status == 200
            for path in ("/health", "/ready"):
                async with session.get(stack.http + path) as resp:
                    assert resp.status == 200
            async with session.get(stack.http + "/metrics") as resp:
                assert resp.status == 401  # unless --open-metrics
            async with create_channel(stack.grpc_target) as channel:
                stub = gateway_pb2_grpc.GatewayStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ListModels(gateway_pb2.ListModelsRequest())
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.Generate(gateway_pb2.GenerateRequest(prompt="Hi"),
                                                 metadata=(("authorization", "Bearer wrong"),)):
                        pass
                assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
                chunks = [c async for c in stub.Generate(gateway_pb2.GenerateRequest(prompt="Hi"),
                                                         metadata=(("authorization", "Bearer secret-1"),))]
                assert chunks[-1].done.finish_reason == common_pb2.FINISH_REASON_EOS

    asyncio.run(main())


def test_open_metrics_and_open_reflection_let_keyless_callers_reach_those_two_and_nothing_else() -> None:
    async def main() -> None:
        async with gateway_stack(api_keys=("secret-1",), open_metrics=True, open_reflection=True) as stack, \
                aiohttp.ClientSession() as session:
            async with session.get(stack.http + "/metrics") as resp:
                assert resp.status == 200 and "flashstream_time_to_first_token_seconds" in await resp.text()
            async with session.get(stack.http + "/v1/models") as resp:
                assert resp.status == 401
            async with create_channel(stack.grpc_target) as channel:
                request = reflection_pb2.ServerReflectionRequest(list_services="")
                call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]))
                (answer,) = [a async for a in call]
                assert "flashstream.v1.Gateway" in [s.name for s in answer.list_services_response.service]
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await gateway_pb2_grpc.GatewayStub(channel).ListModels(gateway_pb2.ListModelsRequest())
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(main())


def test_readiness_follows_the_tokenizer_info() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            async with session.get(stack.http + "/ready") as resp:
                assert (resp.status, await resp.json()) == (200, {"status": "ready"})
            stack.fake.config.ready = False  # e.g. its scheduler went away
            await wait_until(lambda: not stack.gateway.core.is_ready())
            async with session.get(stack.http + "/ready") as resp:
                assert (resp.status, await resp.json()) == (503, {"status": "not ready"})
            async with create_channel(stack.grpc_target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                request = health_pb2.HealthCheckRequest(service="")
                await wait_until_async(lambda: health.Check(request), health_pb2.HealthCheckResponse.NOT_SERVING)
                async with session.post(stack.http + "/v1/completions", json={"prompt": "Hi"}) as resp:
                    assert resp.status == 503
                stack.fake.config.ready = True
                await wait_until_async(lambda: health.Check(request), health_pb2.HealthCheckResponse.SERVING)
            async with session.get(stack.http + "/health") as resp:
                assert (resp.status, await resp.json()) == (200, {"status": "ok"})

    asyncio.run(main())


async def wait_until_async(check: object, status: int, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (await check()).status != status:  # type: ignore[operator]
        if loop.time() > deadline:
            raise TimeoutError(f"health never became {status}")
        await asyncio.sleep(0.02)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    if match is None:
        raise AssertionError(f"{name} not in /metrics")
    return float(match.group(1))


def test_metrics_count_tokens_finishes_errors_and_latencies() -> None:
    async def main() -> None:
        async with gateway_stack() as stack, aiohttp.ClientSession() as session:
            for body in ({"prompt": "a"}, {"prompt": "b"}, {"prompt": ""}, {"prompt": "x", "model": "m2"}):
                async with session.post(stack.http + "/v1/completions", json=body) as resp:
                    await resp.read()
            async with session.get(stack.http + "/metrics") as resp:
                text = await resp.text()
            s = '{model="fake-model",stage="gateway"}'
            assert _metric(text, 'flashstream_requests_finished_total{model="fake-model",reason="eos",stage="gateway"}') == 2
            # Both errors come before a served model is known: an empty prompt, a model not served.
            assert _metric(text, 'flashstream_request_errors_total{code="INVALID_ARGUMENT",model="",stage="gateway"}') == 1
            assert _metric(text, 'flashstream_request_errors_total{code="NOT_FOUND",model="",stage="gateway"}') == 1
            assert _metric(text, f"flashstream_time_to_first_token_seconds_count{s}") == 2
            assert _metric(text, f"flashstream_inter_token_latency_seconds_count{s}") == 8
            assert _metric(text, f"flashstream_e2e_request_latency_seconds_count{s}") == 2
            assert _metric(text, f"flashstream_num_requests_in_flight{s}") == 0
            assert "flashstream_generation_tokens" not in text  # the scheduler's family

    asyncio.run(main())


def test_replicas_share_the_load_and_two_models_are_routed_by_name() -> None:
    async def main() -> None:
        configs = [FakeTokenizerConfig(), FakeTokenizerConfig(), FakeTokenizerConfig(model_id="other",
                                                                                     chunks=("other",))]
        async with gateway_stack(configs) as stack, aiohttp.ClientSession() as session:
            await wait_until(lambda: all(c.ready for c in stack.gateway.router.connections))
            async def post(body: dict) -> dict:
                async with session.post(stack.http + "/v1/completions", json=body) as resp:
                    return await resp.json()
            replies = await asyncio.gather(*(post({"model": "fake-model", "prompt": "slow"}) for _ in range(4)))
            assert [r["choices"][0]["text"] for r in replies] == ["Hello, world!"] * 4
            assert [len(f.requests) for f in stack.fakes] == [2, 2, 0]
            other = await post({"model": "other", "prompt": "Hi"})
            assert (other["model"], other["choices"][0]["text"]) == ("other", "other")
            missing = await post({"prompt": "Hi"})
            assert missing["error"]["message"] == "model is required: this gateway serves fake-model, other"

    asyncio.run(main())


@pytest.mark.slow
def test_sigterm_drains_in_flight_streams_refuses_new_work_and_exits_zero() -> None:
    async def main() -> None:
        server, fake, port = await start_fake_tokenizer()
        env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.path.join(REPO_ROOT, 'protos')}"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.server", "--tokenizers", f"127.0.0.1:{port}", "--port", "0",
            "--http-port", "0", "--drain-timeout-s", "5", cwd=REPO_ROOT, env=env, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stderr is not None
            line = b""
            while b"gateway listening" not in line:
                line = await asyncio.wait_for(proc.stderr.readline(), 30)
                assert line, "gateway exited before listening"
            http_port = int(re.search(rb"HTTP [\d.]+:(\d+)", line).group(1))  # type: ignore[union-attr]
            url = f"http://127.0.0.1:{http_port}"
            async with aiohttp.ClientSession() as session:
                for _ in range(200):
                    async with session.get(url + "/ready") as resp:
                        if resp.status == 200:
                            break
                    await asyncio.sleep(0.05)
                resp = await session.post(url + "/v1/completions", json={"prompt": "slow", "stream": True})
                await resp.content.readuntil(b"\n\n")
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                async with session.post(url + "/v1/completions", json={"prompt": "Hi"}) as refused:
                    assert refused.status == 503
                    assert (await refused.json())["error"]["message"] == (
                        "the gateway is shutting down; retry on another replica")
                rest = await resp.content.read()
                assert rest.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"stop"' in rest
                assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await server.stop(None)

    asyncio.run(main())
