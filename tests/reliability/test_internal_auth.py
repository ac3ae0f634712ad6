"""The internal hops are not open doors: the tokenizer, scheduler and worker take only mutual-TLS connections whose
client shows a certificate of the stack's CA (made by `up` for the run), and on them every call without the stack's
internal token (or with a wrong one) is refused, reflection and the live view's WatchEngine included; only health
stays open to a client with the certificate. With API keys on, every gateway route but /health, /ready and the playground's static files needs a
key (the live view's /engine/state, gRPC Embed and reflection too), and no answer may be cached on the way.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from flashstream.v1 import (common_pb2, gateway_pb2, gateway_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc,
                            tokenizer_pb2, tokenizer_pb2_grpc, worker_pb2, worker_pb2_grpc)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.call_auth import token_metadata
from services.common.internal_tls import TLS_CHANNEL_OPTIONS, InternalTls, write_stack_certs
from services.demo import build_demo_model
from services.launcher import Stack
from tests.integration.stack_fixture import running_stack

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model_dir = build_demo_model(tmp_path_factory.mktemp("model") / "demo")
    extra = ["--num-gateways", "1", "--num-tokenizers", "1", "--load-format", "fake", "--gateway-args",
             f"--api-keys {KEY}"]
    with running_stack(model_dir, tmp_path_factory.mktemp("logs"), extra=extra) as running:
        yield running


def _address(stack: Stack, name: str) -> str:
    return next(s for s in stack.stages if s.name.startswith(name)).grpc_address


def _internal_calls(channel: grpc.Channel) -> dict[str, object]:
    """One cheap call per internal service (each takes metadata=...)."""
    return {
        "tokenizer": lambda md: tokenizer_pb2_grpc.TokenizerStub(channel).Info(
            tokenizer_pb2.TokenizerInfoRequest(), timeout=10, metadata=md),
        "scheduler": lambda md: scheduler_pb2_grpc.SchedulerStub(channel).Info(
            scheduler_pb2.SchedulerInfoRequest(), timeout=10, metadata=md),
        "worker": lambda md: worker_pb2_grpc.WorkerStub(channel).Info(worker_pb2.InfoRequest(), timeout=10, metadata=md),
    }


def _reflection(channel: grpc.Channel, metadata) -> grpc.StatusCode:  # noqa: ANN001
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=10,
                                                                                     metadata=metadata))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("stage", ["tokenizer", "scheduler", "worker"])
def test_an_internal_call_without_the_token_is_refused_and_with_it_is_answered(stack: Stack, stage: str) -> None:
    assert stack.internal_token  # `up` made one
    with stack.internal_channel(_address(stack, stage)) as channel:
        call = _internal_calls(channel)[stage]
        for metadata in (None, token_metadata("a-wrong-token"), (("authorization", f"Bearer {KEY}"),)):
            with pytest.raises(grpc.RpcError) as refused:
                call(metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.details() == ("this internal service needs the stack's internal token "
                                               "(x-flashstream-token metadata)")
        call(token_metadata(stack.internal_token))  # answered
        assert _reflection(channel, None) == grpc.StatusCode.UNAUTHENTICATED
        assert _reflection(channel, token_metadata(stack.internal_token)) == grpc.StatusCode.OK
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # open: it tells nothing else


def _channels_without_the_stacks_certificate(stack: Stack, address: str, tmp_path: Path) -> dict[str, grpc.Channel]:
    """Channels to an internal port that lack a client certificate of the stack's CA, by how they lack it."""
    ca = stack.internal_tls.ca
    other = InternalTls.from_dir(write_stack_certs(tmp_path / "other-ca"))  # a certificate of another CA
    return {
        "plaintext": grpc.insecure_channel(address),
        "TLS without a client certificate": grpc.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=ca), options=TLS_CHANNEL_OPTIONS),
        "a client certificate of another CA": grpc.secure_channel(
            address, grpc.ssl_channel_credentials(ca, other.key, other.cert), options=TLS_CHANNEL_OPTIONS),
    }


@pytest.mark.parametrize("stage", ["tokenizer", "scheduler", "worker"])
def test_an_internal_port_refuses_a_connection_without_a_client_certificate_of_the_stacks_ca(
        stack: Stack, stage: str, tmp_path: Path) -> None:
    address = _address(stack, stage)
    for how, channel in _channels_without_the_stacks_certificate(stack, address, tmp_path).items():
        with channel:
            with pytest.raises(grpc.RpcError) as refused:  # even with the right token
                _internal_calls(channel)[stage](token_metadata(stack.internal_token))
            assert (how, refused.value.code()) == (how, grpc.StatusCode.UNAVAILABLE)
            with pytest.raises(grpc.RpcError) as refused:  # health too: the port speaks only mutual TLS
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert (how, refused.value.code()) == (how, grpc.StatusCode.UNAVAILABLE)
    with stack.internal_channel(address) as channel:
        _internal_calls(channel)[stage](token_metadata(stack.internal_token))  # answered


def _http(stack: Stack, path: str, key: str | None = None, body: dict | None = None) -> tuple[int, dict[str, str]]:
    """Status and headers; the body is read to its end, except the endless live view's."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(stack.gateway_http + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            if path.startswith("/engine/state"):
                assert response.readline().startswith(b"data: {")
            else:
                response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_with_api_keys_every_gateway_route_but_health_and_ready_needs_a_key_and_nothing_is_cached(
        stack: Stack) -> None:
    completion = {"model": "flashstream-demo", "prompt": "hi", "max_tokens": 2}
    routes = [("/v1/models", None), ("/v1/models/flashstream-demo", None), ("/metrics", None),
              ("/engine/state?model=flashstream-demo&interval_s=0.1", None),
              ("/v1/completions", completion), ("/v1/completions", completion | {"stream": True}),
              ("/v1/chat/completions", {"model": "flashstream-demo", "messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": 2}),
              ("/v1/embeddings", {"model": "flashstream-demo", "input": "hi"})]
    for path, body in routes:
        status, headers = _http(stack, path, None, body)
        assert (path, status, headers.get("Cache-Control")) == (path, 401, "no-store")
        status, headers = _http(stack, path, KEY, body)
        expected = 400 if path == "/v1/embeddings" else 200  # a generation model: refused, but past the key
        assert (path, status, headers.get("Cache-Control")) == (path, expected, "no-store")
    for path in ("/health", "/ready", "/", "/playground/app.js"):
        status, headers = _http(stack, path)
        assert (path, status, headers.get("Cache-Control")) == (path, 200, "no-store")


@pytest.mark.parametrize("stage", ["tokenizer", "scheduler"])
def test_the_live_views_watch_engine_needs_the_internal_token_like_every_internal_call(
        stack: Stack, stage: str) -> None:
    stub_class = tokenizer_pb2_grpc.TokenizerStub if stage == "tokenizer" else scheduler_pb2_grpc.SchedulerStub
    request = common_pb2.WatchEngineRequest(interval_s=0.1)
    with stack.internal_channel(_address(stack, stage)) as channel:
        stub = stub_class(channel)
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.WatchEngine(request, timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        call = stub.WatchEngine(request, timeout=10, metadata=token_metadata(stack.internal_token))
        state = next(call)
        call.cancel()
        assert (state.model_id, len(state.workers)) == ("flashstream-demo", 1)


def test_with_api_keys_grpc_embed_and_reflection_need_a_key(stack: Stack) -> None:
    with grpc.insecure_channel(stack.gateway_grpc) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(gateway_pb2.EmbedRequest(inputs=["hi"]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Generate(gateway_pb2.GenerateRequest(prompt="hi", options=gateway_pb2.GenerateOptions(
                sampling=common_pb2.SamplingParams(max_tokens=2))), timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        key = (("authorization", f"Bearer {KEY}"),)
        assert _reflection(channel, None) == grpc.StatusCode.UNAUTHENTICATED
        assert _reflection(channel, key) == grpc.StatusCode.OK
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
