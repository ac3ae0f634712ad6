"""A small real gRPC scheduler for tokenizer tests: Scheduler.Connect and Info over loopback.

Each request is answered with token ids chosen by the test (`reply(request) -> list[int]`), sent
`chunk_size` at a time, one SchedulerDown per step for all running requests of a stream, then
Done(LENGTH) with usage. Aborts end a request with Done(ABORT) and are recorded, so tests can check
that they arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from flashstream.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

from services.common.grpc_server import start_server

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


@dataclass
class _Running:
    request: scheduler_pb2.TokenRequest
    tokens: list[int]
    sent: int = 0


@dataclass
class FakeScheduler(scheduler_pb2_grpc.SchedulerServicer):
    reply: Callable[[scheduler_pb2.TokenRequest], list[int]]
    chunk_size: int = 1
    step_s: float = 0.002
    max_model_len: int = 4096
    vocab_size: int = 1024  # the model's: larger than the test tokenizers' (700 and 761 ids), as padded ones are
    model_id: str = "fake-model"
    requests: list[scheduler_pb2.TokenRequest] = field(default_factory=list)
    aborts: list[str] = field(default_factory=list)
    up_sizes: list[int] = field(default_factory=list)  # new requests in each SchedulerUp that carried any
    num_streams: int = 0
    step_times: list[float] = field(default_factory=list)  # when each SchedulerDown was sent
    port: int = 0

    async def start(self) -> "FakeScheduler":
        self._server = await start_server(
            "127.0.0.1:0", [lambda s: scheduler_pb2_grpc.add_SchedulerServicer_to_server(self, s)], [SERVICE_NAME])
        self.port = self._server.port
        return self

    async def stop(self) -> None:
        await self._server.server.stop(0)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def Info(self, request: scheduler_pb2.SchedulerInfoRequest,
                   context: grpc.aio.ServicerContext) -> scheduler_pb2.SchedulerInfo:
        return scheduler_pb2.SchedulerInfo(model_id=self.model_id, model_revision="rev-1",
                                           max_model_len=self.max_model_len, vocab_size=self.vocab_size,
                                           num_workers=1, block_size=16, num_kv_blocks=1024)

    async def Connect(self, request_iterator: AsyncIterator[scheduler_pb2.SchedulerUp],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[scheduler_pb2.SchedulerDown]:
        self.num_streams += 1
        running: dict[str, _Running] = {}
        ended: list[scheduler_pb2.TokenEvent] = []
        wake = asyncio.Event()

        async def read() -> None:
            async for up in request_iterator:
                if up.requests:
                    self.up_sizes.append(len(up.requests))
                for req in up.requests:
                    self.requests.append(req)
                    running[req.request_id] = _Running(req, list(self.reply(req)))
                for rid in up.abort_request_ids:
                    self.aborts.append(rid)
                    if running.pop(rid, None) is not None:
                        ended.append(scheduler_pb2.TokenEvent(
                            request_id=rid, done=common_pb2.Done(finish_reason=common_pb2.FINISH_REASON_ABORT)))
                wake.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                if not running and not ended:
                    wake.clear()
                    await wake.wait()
                await asyncio.sleep(self.step_s)
                events, ended[:] = list(ended), []
                tokens = scheduler_pb2.TokenColumns()
                for rid, run in list(running.items()):
                    chunk = run.tokens[run.sent:run.sent + self.chunk_size]
                    run.sent += len(chunk)
                    tokens.request_ids.extend([rid] * len(chunk))
                    tokens.token_ids.extend(chunk)
                    if run.sent >= len(run.tokens):
                        del running[rid]
                        usage = common_pb2.Usage(prompt_tokens=len(run.request.prompt_token_ids),
                                                 completion_tokens=run.sent, cached_tokens=2)
                        events.append(scheduler_pb2.TokenEvent(request_id=rid, done=common_pb2.Done(
                            finish_reason=common_pb2.FINISH_REASON_LENGTH, usage=usage,
                            latency=common_pb2.LatencyBreakdown(queue_s=0.5, prefill_s=0.25, decode_s=1.0))))
                if events or tokens.token_ids:
                    self.step_times.append(asyncio.get_running_loop().time())
                    yield scheduler_pb2.SchedulerDown(events=events, tokens=tokens)
        finally:
            reader.cancel()
