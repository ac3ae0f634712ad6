"""A real gRPC Worker server over loopback around the pure-Python FakeWorker, for scheduler tests.

It answers Worker.Info with the configured limits and Worker.Step with one StepResult per StepPlan, in
order, sampling (last token + 1) % vocab (EOS after configured tokens). Every plan it received is kept in
`plans` (as the core's dataclasses) so tests can assert exact step contents.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from flashstream.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc

from services.common.config import ServerConfig
from services.common.grpc_server import create_channel, start_server
from services.common.step import StepPlan
from services.scheduler.config import BackoffConfig, SchedulerConfig, SchedulerStageConfig, StallConfig
from services.worker.pb import plan_from_pb
from tests.unit.scheduler.fake_worker import FakeWorker

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name


@dataclass
class FakeWorkerConfig:
    num_kv_blocks: int = 64
    block_size: int = 4
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 64
    max_model_len: int = 256
    vocab_size: int = 1000
    eos_token_id: int = 999
    eos_after: frozenset[int] = frozenset()
    step_delay_s: float = 0.0  # simulated model time per step
    worker_id: str = "fake-worker"


@dataclass
class FakeWorkerServer(worker_pb2_grpc.WorkerServicer):
    config: FakeWorkerConfig = field(default_factory=FakeWorkerConfig)
    plans: list[StepPlan] = field(default_factory=list)
    num_streams: int = 0
    errors: list[AssertionError] = field(default_factory=list)  # plans the fake worker could not run
    permits: asyncio.Semaphore | None = None  # when set by a test, each step takes one permit first

    def __post_init__(self) -> None:
        self.server = None
        self.port = 0
        self.running = asyncio.Event()  # cleared by pause(): Info and Step wait, as in a stopped process
        self.running.set()

    def pause(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    async def start(self, port: int = 0) -> int:
        self.server = await start_server(
            f"127.0.0.1:{port}", [lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(self, s)], [SERVICE_NAME]
        )
        self.port = self.server.port
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.server.stop(0)
            self.server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def Info(self, request, context):  # noqa: N802, ANN001, ANN201
        await self.running.wait()
        c = self.config
        return worker_pb2.WorkerInfo(
            worker_id=c.worker_id, model_id="fake-model", model_revision="r1", architecture="Fake",
            vocab_size=c.vocab_size, max_model_len=c.max_model_len, eos_token_ids=[c.eos_token_id],
            block_size=c.block_size, num_kv_blocks=c.num_kv_blocks, max_num_seqs=c.max_num_seqs,
            max_num_batched_tokens=c.max_num_batched_tokens, dtype="float32", device="cpu",
        )

    async def Step(self, request_iterator, context):  # noqa: N802, ANN001, ANN201
        c = self.config
        # A new stream is a new worker incarnation: it holds no sequences, its KV is unknown.
        worker = FakeWorker(c.num_kv_blocks, c.block_size, c.vocab_size, c.eos_token_id, c.eos_after)
        self.num_streams += 1
        async for pb in request_iterator:
            plan = plan_from_pb(pb)
            self.plans.append(plan)
            if self.permits is not None:
                await self.permits.acquire()
            await self.running.wait()
            if c.step_delay_s:
                await asyncio.sleep(c.step_delay_s)
            try:
                result = worker.step(plan)
            except AssertionError as exc:
                self.errors.append(exc)
                raise
            yield worker_pb2.StepResult(
                step_id=result.step_id,
                sampled=worker_pb2.SampledTokens(seq_ids=result.sampled.seq_ids,
                                                 token_ids=result.sampled.token_ids),
            )

    async def Embed(self, request, context):  # noqa: N802, ANN001, ANN201
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the fake worker does not embed")


class SchedulerStreamClient:
    """One Scheduler.Connect stream, read in the background into per-request event lists."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = scheduler_pb2_grpc.SchedulerStub(channel).Connect()
        self.messages: list = []  # every SchedulerDown, in order
        self.token_ids: dict[str, list[int]] = {}  # request id -> its tokens, in order
        self.events: dict[str, list] = {}  # request id -> its TokenEvents (its end), in order
        self.late_tokens: list[str] = []  # request ids that received a token after their end
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for down in self.call:
            self.messages.append(down)
            for request_id, token_id in zip(down.tokens.request_ids, down.tokens.token_ids):
                if request_id in self.events:
                    self.late_tokens.append(request_id)
                self.token_ids.setdefault(request_id, []).append(token_id)
            for event in down.events:
                self.events.setdefault(event.request_id, []).append(event)
            self._changed.set()

    async def send(self, requests=(), aborts=()) -> None:  # noqa: ANN001
        await self.call.write(scheduler_pb2.SchedulerUp(requests=list(requests), abort_request_ids=list(aborts)))

    def tokens(self, request_id: str) -> list[int]:
        return self.token_ids.get(request_id, [])

    def terminal(self, request_id: str):  # noqa: ANN201 - the request's Done/Error TokenEvent, or None
        events = self.events.get(request_id, [])
        return events[-1] if events else None

    async def wait_for(self, predicate, timeout: float = 10.0) -> None:  # noqa: ANN001
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def wait_done(self, *request_ids: str, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: all(self.terminal(r) is not None for r in request_ids), timeout)

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def token_request(request_id: str, prompt: list[int], max_tokens: int = 4, **kwargs) -> scheduler_pb2.TokenRequest:  # noqa: ANN003
    return scheduler_pb2.TokenRequest(
        request_id=request_id, prompt_token_ids=prompt,
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, **kwargs.pop("sampling", {})), **kwargs)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.005)


def run_stack(
    test: Callable[..., Awaitable[None]],
    workers: list[FakeWorkerConfig] | None = None,
    scheduler: SchedulerConfig | None = None,
    stall: StallConfig | None = None,
) -> None:
    """Starts fake workers and a scheduler stage on free ports, runs the test with one Connect stream."""

    async def main() -> None:
        servers = [FakeWorkerServer(c) for c in (workers or [FakeWorkerConfig()])]
        for server in servers:
            await server.start()
        config = SchedulerStageConfig(ServerConfig(port=0), tuple(s.address for s in servers),
                                      scheduler or SchedulerConfig(), BackoffConfig(0.05, 0.2), stall or StallConfig())
        from services.scheduler.server import SchedulerStage

        stage = SchedulerStage(config)
        await stage.start()
        channel = create_channel(f"127.0.0.1:{stage.port}")
        client = SchedulerStreamClient(channel)
        try:
            await wait_until(lambda: stage.pool.num_workers == len(servers))
            await test(stage, servers, client)
            assert all(not s.errors for s in servers), [s.errors for s in servers]
        finally:
            await client.close()
            await channel.close()
            await stage.stop(0.1)
            for server in servers:
                await server.stop()

    asyncio.run(main())
