"""Starts a tokenizer stage in-process against a FakeScheduler, and reads a Connect stream to the end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
from flashstream.v1 import scheduler_pb2, tokenizer_pb2, tokenizer_pb2_grpc

from services.common.config import ServerConfig
from services.common.grpc_server import create_channel
from services.tokenizer.server import TokenizerStage, TokenizerStageConfig
from tests.unit.tokenizer.fake_scheduler import FakeScheduler


class Harness:
    """fake scheduler + tokenizer stage + a client channel to the stage."""

    def __init__(self, model_dir: Path, reply: Callable[[scheduler_pb2.TokenRequest], list[int]], **fake_args):
        self.model_dir = model_dir
        self.fake = FakeScheduler(reply, **fake_args)

    async def __aenter__(self) -> "Harness":
        await self.fake.start()
        self.stage = TokenizerStage(TokenizerStageConfig(model_dir=str(self.model_dir), scheduler=self.fake.address,
                                                         server=ServerConfig(port=0)))
        await self.stage.start()
        await self.stage.servicer.link.connected.wait()
        self.channel = create_channel(f"127.0.0.1:{self.stage.port}")
        self.stub = tokenizer_pb2_grpc.TokenizerStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.stage.stop(0)
        await self.fake.stop()


async def read_until_terminal(call: grpc.aio.StreamStreamCall, request_ids: set[str],
                              ) -> tuple[dict[str, list[tokenizer_pb2.TextEvent]], list[tokenizer_pb2.TokenizerDown]]:
    """Reads TokenizerDown messages until every id in request_ids has had its terminal event."""
    events: dict[str, list[tokenizer_pb2.TextEvent]] = {rid: [] for rid in request_ids}
    messages, open_ids = [], set(request_ids)
    while open_ids:
        down = await call.read()
        if down is grpc.aio.EOF:
            raise AssertionError(f"stream ended before {sorted(open_ids)} finished")
        messages.append(down)
        for event in down.events:
            events.setdefault(event.request_id, []).append(event)
            if event.WhichOneof("event") in ("done", "error"):
                open_ids.discard(event.request_id)
    return events, messages


def streamed_text(events: list[tokenizer_pb2.TextEvent]) -> str:
    return "".join(e.chunk.text for e in events if e.WhichOneof("event") == "chunk")


def text_request(request_id: str, prompt: str = "The river", max_tokens: int = 64, **options) -> tokenizer_pb2.TextRequest:
    req = tokenizer_pb2.TextRequest(request_id=request_id, prompt=prompt, gateway_s=0.125)
    req.sampling.max_tokens = max_tokens
    req.options.add_special_tokens = True
    for key, value in options.items():
        if key == "stop":
            req.options.stop.extend(value)
        else:
            setattr(req.options, key, value)
    return req


async def eventually(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Polls predicate until it holds or timeout_s passes; returns its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return predicate()
