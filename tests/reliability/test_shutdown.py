"""Shutdown always finishes: SIGTERM to a stage ends its in-flight work at the drain limit with a clear error and
the process exits 0 within limit + 2 s; an idle stage is not held by the internal streams it serves; a stage
that comes back is found again within the 2 s reconnect backoff.

One stack of processes (demo model on the CPU, drain limit DRAIN_S on every stage) goes through the scenarios in
order: the scheduler stopped idle and brought back, the scheduler stopped under load, the worker stopped under
load and brought back, the tokenizer stopped under load and brought back, the gateway stopped under load (gRPC
and HTTP streams).
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from flashstream.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from services.demo import build_demo_model
from services.launcher import Stack, wait_serving
from tests.integration.stack_fixture import running_stack, scheduler_state_when_idle, stage_logs

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

DRAIN_S = 2.0
EXIT_LIMIT_S = DRAIN_S + 2.0
NUM_STREAMS = 4
OUTAGE_S = 6.0  # several reconnect attempts fail meanwhile


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model_dir = build_demo_model(tmp_path_factory.mktemp("model") / "demo")
    log_dir = tmp_path_factory.mktemp("logs")
    drain = f"--drain-timeout-s {DRAIN_S}"
    extra = ["--num-gateways", "1", "--num-tokenizers", "1", "--scheduler-args", drain, "--tokenizer-args", drain,
             "--gateway-args", drain]
    with running_stack(model_dir, log_dir, drain, extra) as running:
        running.log_dir = log_dir
        yield running


def _stage(stack: Stack, name: str):  # noqa: ANN202
    return next(s for s in stack.stages if s.name == name)


def _terminate(proc: subprocess.Popen) -> tuple[int, float]:
    """SIGTERM; (exit code, seconds until the process was gone)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    return code, time.monotonic() - started


def _restart(stack: Stack, name: str) -> float:
    """Starts the stage again as `up` started it; the seconds it took to report SERVING."""
    stage = _stage(stack, name)
    started = time.monotonic()
    stack.spawn(stage)
    wait_serving(stage.grpc_address, 120, stage.proc, stack.tls_of(stage))
    return time.monotonic() - started


class LongStreams:
    """NUM_STREAMS generations far longer than the drain limit, read in threads; each records how it ended."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.endings: list[tuple[str, int, str]] = []  # (how, tokens, details) per stream
        self.tokens = [0] * NUM_STREAMS
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(NUM_STREAMS)]
        for thread in self._threads:
            thread.start()

    def _run(self, i: int) -> None:
        stub = gateway_pb2_grpc.GatewayStub(self.channel)
        sampling = common_pb2.SamplingParams(max_tokens=1900, ignore_eos=True)
        request = gateway_pb2.GenerateRequest(prompt=f"stream {i}", options=gateway_pb2.GenerateOptions(
            sampling=sampling, bypass_cache=True))
        dones = 0
        try:
            for message in stub.Generate(request, timeout=120):
                if message.HasField("chunk"):
                    self.tokens[i] += len(message.chunk.token_ids)
                else:
                    dones += 1
            self.endings.append((f"done x{dones}", self.tokens[i], ""))
        except grpc.RpcError as exc:
            self.endings.append((exc.code().name if not dones else "done then error", self.tokens[i],
                                 exc.details() or ""))

    def wait_started(self) -> None:
        deadline = time.monotonic() + 60
        while min(self.tokens) < 5:
            assert time.monotonic() < deadline, f"streams did not start: {self.tokens}"
            time.sleep(0.05)

    def join(self) -> list[tuple[str, int, str]]:
        for thread in self._threads:
            thread.join(timeout=60)
        self.channel.close()
        return self.endings


class HttpStreams:
    """NUM_STREAMS streamed completions over HTTP (server-sent events), far longer than the drain limit, read in
    threads; each records (HTTP status, the error event's message or "", whether [DONE] came) and its tokens."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.endings: list[tuple[int, str, bool]] = []
        self.tokens = [0] * NUM_STREAMS
        self._threads = [threading.Thread(target=self._run, args=(host, int(port), i), daemon=True)
                         for i in range(NUM_STREAMS)]
        for thread in self._threads:
            thread.start()

    def _run(self, host: str, port: int, i: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=120)
        body = {"model": "flashstream-demo", "prompt": f"http stream {i}", "max_tokens": 1900, "ignore_eos": True,
                "stream": True}
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        error, done = "", False
        for line in response:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data: "):
                event = json.loads(line[len(b"data: "):])
                if "error" in event:
                    error = event["error"]["message"]
                else:
                    self.tokens[i] += 1
        connection.close()
        self.endings.append((response.status, error, done))

    def join(self) -> list[tuple[int, str, bool]]:
        for thread in self._threads:
            thread.join(timeout=60)
        return self.endings


def _generate_once(target: str, timeout_s: float) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        request = gateway_pb2.GenerateRequest(prompt="hello", options=gateway_pb2.GenerateOptions(
            sampling=common_pb2.SamplingParams(max_tokens=2), bypass_cache=True))
        try:
            list(gateway_pb2_grpc.GatewayStub(channel).Generate(request, timeout=timeout_s))
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _wait_serving_again(target: str, limit_s: float) -> float:
    """Seconds until a request through the gateway succeeds again."""
    started = time.monotonic()
    while _generate_once(target, 5) != grpc.StatusCode.OK:
        assert time.monotonic() - started < limit_s, "the stack did not serve again"
        time.sleep(0.05)
    return time.monotonic() - started


def test_an_idle_scheduler_exits_at_once_and_is_found_again_within_the_reconnect_backoff(stack: Stack) -> None:
    scheduler = _stage(stack, "scheduler")
    code, exit_s = _terminate(scheduler.proc)
    assert code == 0
    print(f"idle scheduler exit {exit_s:.2f} s")
    assert exit_s < 1.5, f"the idle scheduler took {exit_s:.1f} s to exit"  # not held by the tokenizer's stream
    assert _generate_once(stack.gateway_grpc, 5) == grpc.StatusCode.UNAVAILABLE
    time.sleep(OUTAGE_S)
    _restart(stack, "scheduler")
    found_s = _wait_serving_again(stack.gateway_grpc, 30)
    print(f"served again {found_s:.2f} s after the scheduler was back")
    assert found_s < 2.0 + 1.0, f"the tokenizer found the scheduler again only after {found_s:.1f} s"


def _stop_under_load(stack: Stack, name: str) -> list[tuple[str, int, str]]:
    """SIGTERM to stage `name` while long streams run: checks it exits 0 within the limit; the streams' endings."""
    streams = LongStreams(stack.gateway_grpc)
    streams.wait_started()
    code, exit_s = _terminate(_stage(stack, name).proc)
    endings = streams.join()
    print(f"{name} under load exit {exit_s:.2f} s, {endings}")
    assert code == 0
    assert exit_s < EXIT_LIMIT_S, f"{name} took {exit_s:.1f} s to exit"
    return endings


def test_the_scheduler_stopped_under_load_ends_every_stream_with_unavailable_and_exits_in_time(stack: Stack) -> None:
    endings = _stop_under_load(stack, "scheduler")
    assert [(how, details) for how, _, details in endings] == [
        ("UNAVAILABLE", "the scheduler shut down before the request finished")] * NUM_STREAMS, stage_logs(stack.log_dir)
    assert all(tokens < 1900 for _, tokens, _ in endings)
    _restart(stack, "scheduler")
    _wait_serving_again(stack.gateway_grpc, 30)


def test_the_worker_stopped_under_load_ends_its_step_stream_at_the_limit_and_exits_in_time(stack: Stack) -> None:
    endings = _stop_under_load(stack, "worker0")
    # Each stream had tokens out, so it cannot move to another worker: it ends with UNAVAILABLE.
    assert [how for how, _, _ in endings] == ["UNAVAILABLE"] * NUM_STREAMS, (endings, stage_logs(stack.log_dir))
    _restart(stack, "worker0")
    _wait_serving_again(stack.gateway_grpc, 60)


def test_the_tokenizer_stopped_under_load_ends_every_stream_with_unavailable_and_exits_in_time(stack: Stack) -> None:
    endings = _stop_under_load(stack, "tokenizer")
    assert [(how, details) for how, _, details in endings] == [
        ("UNAVAILABLE", "the tokenizer shut down before the request finished")] * NUM_STREAMS, stage_logs(stack.log_dir)
    _restart(stack, "tokenizer")
    _wait_serving_again(stack.gateway_grpc, 30)
    assert scheduler_state_when_idle(stack).num_running == 0  # the scheduler freed what the tokenizer left


def test_the_gateway_stopped_under_load_ends_every_stream_with_unavailable_and_exits_in_time(stack: Stack) -> None:
    http_streams = HttpStreams(stack.gateway_http)  # beside the gRPC streams _stop_under_load starts
    endings = _stop_under_load(stack, "gateway")
    assert [how for how, _, _ in endings] == ["UNAVAILABLE"] * NUM_STREAMS, (endings, stage_logs(stack.log_dir))
    assert all(details.startswith("the gateway shut down before the request finished") for _, _, details in endings)
    http_endings = http_streams.join()
    print(f"HTTP streams: {http_endings}, {http_streams.tokens} tokens")
    assert http_endings == [(200, "the gateway shut down before the request finished; retry it", True)] * NUM_STREAMS
    assert all(0 < tokens < 1900 for tokens in http_streams.tokens)
