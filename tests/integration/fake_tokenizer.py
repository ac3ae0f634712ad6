"""A small real gRPC Tokenizer for gateway tests: Connect and Info over loopback, fixed answers.

Each request is answered with `chunks` (one token id per chunk) and a Done. The prompt steers it:
  "error:<code>:<message>"  → one Error event with that gRPC code
  "late-error:<code>:<msg>" → the first chunk, then that Error
  "hang"                    → no answer at all (deadline tests)
  "slow"                    → chunks 0.1 s apart (disconnect tests)
Aborts are honoured: the request stops and ends with Done(ABORT). Every up-message, request and abort
is recorded for the tests to inspect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from flashstream.v1 import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc

from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from gateway.tokenizer_client import ConnectionConfig
from services.common.config import ServerConfig

FAKE_CHUNKS = ("Hello", ",", " wor", "ld", "!")


@dataclass
class FakeTokenizerConfig:
    model_id: str = "fake-model"
    revision: str = "rev-1"
    max_model_len: int = 64
    vocab_size: int = 1000
    has_chat_template: bool = True
    ready: bool = True
    chunks: tuple[str, ...] = FAKE_CHUNKS
    finish_reason: int = common_pb2.FINISH_REASON_EOS
    num_prompt_tokens: int = 7
    num_cached_tokens: int = 3


@dataclass
class FakeTokenizer(tokenizer_pb2_grpc.TokenizerServicer):
    config: FakeTokenizerConfig = field(default_factory=FakeTokenizerConfig)
    requests: list[tokenizer_pb2.TextRequest] = field(default_factory=list)
    aborts: list[str] = field(default_factory=list)
    num_up_messages: int = 0
    num_streams: int = 0
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    _outs: list[asyncio.Queue] = field(default_factory=list)

    async def Info(self, request: object, context: object) -> tokenizer_pb2.TokenizerInfo:
        c = self.config
        return tokenizer_pb2.TokenizerInfo(
            model_id=c.model_id, model_revision=c.revision, max_model_len=c.max_model_len,
            vocab_size=c.vocab_size, has_chat_template=c.has_chat_template, ready=c.ready,
        )

    async def Connect(self, request_iterator: object, context: grpc.aio.ServicerContext):  # noqa: ANN201
        self.num_streams += 1
        out: asyncio.Queue[tokenizer_pb2.TextEvent | None] = asyncio.Queue()
        self._outs.append(out)
        running: dict[str, asyncio.Task[None]] = {}

        async def read_up() -> None:
            async for up in request_iterator:  # type: ignore[attr-defined]
                self.num_up_messages += 1
                for req in up.requests:
                    self.requests.append(req)
                    running[req.request_id] = asyncio.create_task(self._answer(req, out))
                for rid in up.abort_request_ids:
                    self.aborts.append(rid)
                    self.aborted.set()
                    task = running.pop(rid, None)
                    if task is not None and not task.done():
                        task.cancel()
                        out.put_nowait(tokenizer_pb2.TextEvent(
                            request_id=rid, done=common_pb2.Done(finish_reason=common_pb2.FINISH_REASON_ABORT)))

        reader = asyncio.create_task(read_up())
        try:
            while True:
                events = [await out.get()]
                while not out.empty():
                    events.append(out.get_nowait())
                if None in events:  # break_streams()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "tokenizer going away")
                yield tokenizer_pb2.TokenizerDown(events=events)
        finally:
            reader.cancel()
            for task in running.values():
                task.cancel()

    async def _answer(self, req: tokenizer_pb2.TextRequest, out: asyncio.Queue) -> None:
        c = self.config
        rid = req.request_id
        prompt = req.prompt if req.WhichOneof("input") == "prompt" else ""
        if prompt.startswith(("error:", "late-error:")):
            kind, code, message = prompt.split(":", 2)
            if kind == "late-error":
                out.put_nowait(tokenizer_pb2.TextEvent(request_id=rid, chunk=common_pb2.TextChunk(
                    text=c.chunks[0], token_ids=[0]), num_prompt_tokens=c.num_prompt_tokens))
            out.put_nowait(tokenizer_pb2.TextEvent(request_id=rid, error=common_pb2.Error(code=int(code),
                                                                                            message=message)))
            return
        if prompt == "hang":
            return
        delay = 0.1 if prompt == "slow" else 0.0
        want_logprobs = req.sampling.HasField("logprobs")
        for i, text in enumerate(c.chunks):
            if delay:
                await asyncio.sleep(delay)
            chunk = common_pb2.TextChunk(text=text, token_ids=[i])
            if want_logprobs:
                top = [common_pb2.TopLogprob(token_id=100 + j, logprob=-1.0 - j, text=f"t{j}")
                       for j in range(req.sampling.logprobs)]
                chunk.logprobs.append(common_pb2.TokenLogprob(token_id=i, logprob=-0.5, text=text, top=top))
            out.put_nowait(tokenizer_pb2.TextEvent(
                request_id=rid, chunk=chunk, num_prompt_tokens=c.num_prompt_tokens if i == 0 else 0))
        out.put_nowait(tokenizer_pb2.TextEvent(request_id=rid, done=common_pb2.Done(
            finish_reason=c.finish_reason,
            usage=common_pb2.Usage(prompt_tokens=c.num_prompt_tokens, completion_tokens=len(c.chunks),
                                   cached_tokens=c.num_cached_tokens),
            latency=common_pb2.LatencyBreakdown(gateway_s=req.gateway_s, tokenizer_s=0.001),
        )))

    async def break_streams(self) -> None:
        """Ends every open Connect stream with UNAVAILABLE, as a crashing tokenizer would."""
        outs, self._outs = self._outs, []
        for out in outs:
            out.put_nowait(None)


async def start_fake_tokenizer(
    config: FakeTokenizerConfig | None = None, port: int = 0
) -> tuple[grpc.aio.Server, FakeTokenizer, int]:
    """Serves a FakeTokenizer on 127.0.0.1 (port 0: a free one); returns (server, servicer, port)."""
    fake = FakeTokenizer(config or FakeTokenizerConfig())
    server = grpc.aio.server()
    tokenizer_pb2_grpc.add_TokenizerServicer_to_server(fake, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, fake, bound


@dataclass
class Stack:
    """A gateway started in-process in front of fake tokenizers."""

    gateway: GatewayServer
    fakes: list[FakeTokenizer]
    servers: list[grpc.aio.Server]

    @property
    def fake(self) -> FakeTokenizer:
        return self.fakes[0]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.gateway.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"


async def wait_until(predicate, timeout_s: float = 5.0) -> None:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def gateway_stack(
    configs: list[FakeTokenizerConfig] | None = None,
    api_keys: tuple[str, ...] = (),
    request_timeout_s: float = 600.0,
    max_body_bytes: int = 64 * 1024,
    open_metrics: bool = False,
    open_reflection: bool = False,
) -> AsyncIterator[Stack]:
    """Fake tokenizers and a gateway on free loopback ports; yields once the gateway is ready."""
    started = [await start_fake_tokenizer(c) for c in (configs or [FakeTokenizerConfig()])]
    config = GatewayConfig(
        tokenizers=tuple(f"127.0.0.1:{port}" for _, _, port in started),
        server=ServerConfig(host="127.0.0.1", port=0, drain_timeout_s=2.0),
        http_port=0,
        api_keys=api_keys,
        request_timeout_s=request_timeout_s,
        max_body_bytes=max_body_bytes,
        open_metrics=open_metrics,
        open_reflection=open_reflection,
    )
    gateway = GatewayServer(config, ConnectionConfig(info_interval_s=0.2, reconnect_min_s=0.05, reconnect_max_s=0.2))
    await gateway.start()
    stack = Stack(gateway, [fake for _, fake, _ in started], [server for server, _, _ in started])
    try:
        await wait_until(gateway.core.is_ready)
        yield stack
    finally:
        await gateway.stop(0.5)
        for server in stack.servers:
            await server.stop(None)
