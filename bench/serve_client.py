"""The load generator: several processes, each an asyncio loop of streams, open-loop.

Over HTTP (a base URL `http://...`) each request is an aiohttp SSE stream of /v1/completions; over gRPC (an
address `grpc://host:port`) a `Gateway.Generate` stream, spread over a few HTTP/2 connections per process.
Requests are partitioned round-robin among the processes; each process sends its share at the scheduled times
(all at once, Poisson arrivals, or bounded by its share of the concurrency) and records per request: start,
each chunk's arrival time, token counts and whether the result cache answered (from the final usage) and any error.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.serve_data import RequestSpec


@dataclass
class Record:
    input_len: int
    output_len: int
    start: float = 0.0  # time.time() of the send
    chunk_times: list[float] = field(default_factory=list)  # arrival of each non-empty text chunk
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the prefix cache served
    result_cached: bool = False  # the gateway replayed a stored answer
    error: str = ""


def default_client_procs() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 4))


GRPC_SCHEME = "grpc://"
GRPC_CONNECTIONS = 4  # HTTP/2 connections per client process, as separate clients would open


def _parse_usage(line: bytes, rec: Record) -> None:
    """The usage chunk's token counts and result-cache flag (the only chunk parsed as JSON)."""
    import json

    usage = json.loads(line[6:])["usage"]
    rec.prompt_tokens, rec.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
    rec.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    rec.result_cached = bool(usage.get("result_cached", False))


async def _one(session: Any, url: str, body: dict, rec: Record) -> None:
    import aiohttp

    rec.start = time.time()
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            buf = b""
            async for data in resp.content.iter_any():
                now = time.time()
                buf += data
                *lines, buf = buf.split(b"\n\n")
                for line in lines:
                    if not line.startswith(b"data: "):
                        continue
                    if line.startswith(b'data: {"error"'):
                        rec.error = line[6:206].decode(errors="replace")
                    elif b'"usage":' in line:
                        _parse_usage(line, rec)
                    elif b'"text":""' not in line and b'"text": ""' not in line and line != b"data: [DONE]":
                        rec.chunk_times.append(now)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    if not rec.error and rec.completion_tokens == 0 and rec.chunk_times:
        rec.error = "stream ended without a usage chunk"


async def _one_grpc(stub: Any, request: Any, rec: Record) -> None:
    import grpc

    rec.start = time.time()
    try:
        async for message in stub.Generate(request, timeout=600):
            if message.HasField("chunk"):
                if message.chunk.text:
                    rec.chunk_times.append(time.time())
            else:
                u = message.done.usage
                rec.prompt_tokens, rec.completion_tokens = u.prompt_tokens, u.completion_tokens
                rec.cached_tokens, rec.result_cached = u.cached_tokens, u.result_cached
    except grpc.aio.AioRpcError as exc:
        rec.error = f"{exc.code().name}: {exc.details()}"
    if not rec.error and rec.completion_tokens == 0 and rec.chunk_times:
        rec.error = "stream ended without a Done"


def generate_request(model: str, prompt: str, max_tokens: int, sampling: dict) -> Any:
    """The gRPC GenerateRequest of an OpenAI-style completion body's fields."""
    from flashstream.v1 import common_pb2, gateway_pb2

    params = common_pb2.SamplingParams(max_tokens=max_tokens, **{k: v for k, v in sampling.items()
                                                                 if k in ("temperature", "top_p", "seed",
                                                                          "ignore_eos")})
    return gateway_pb2.GenerateRequest(model=model, prompt=prompt,
                                       options=gateway_pb2.GenerateOptions(sampling=params))


async def _run_share(base_url: str, model: str, specs: list[tuple[float, RequestSpec]], concurrency: int,
                     sampling: dict, t0: float) -> list[Record]:
    records = [Record(s.input_len, s.output_len) for _, s in specs]
    sem = asyncio.Semaphore(max(1, concurrency))

    async def go(i: int, at: float, send: Callable[[int], Awaitable[None]]) -> None:
        delay = t0 + at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        async with sem:
            await send(i)

    if base_url.startswith(GRPC_SCHEME):
        import grpc
        from flashstream.v1 import gateway_pb2_grpc

        address = base_url[len(GRPC_SCHEME):]
        channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(GRPC_CONNECTIONS)]
        stubs = [gateway_pb2_grpc.GatewayStub(c) for c in channels]
        requests = [generate_request(model, s.prompt, s.output_len, sampling) for _, s in specs]
        try:
            await asyncio.gather(*(go(i, at, lambda i: _one_grpc(stubs[i % len(stubs)], requests[i], records[i]))
                                   for i, (at, _) in enumerate(specs)))
        finally:
            for channel in channels:
                await channel.close()
        return records

    import aiohttp

    url = base_url.rstrip("/") + "/v1/completions"
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        def send(i: int) -> Awaitable[None]:
            spec = specs[i][1]
            body = {"model": model, "prompt": spec.prompt, "max_tokens": spec.output_len, "stream": True,
                    "stream_options": {"include_usage": True}, **sampling}
            return _one(session, url, body, records[i])

        await asyncio.gather(*(go(i, at, send) for i, (at, _) in enumerate(specs)))
    return records


@dataclass
class Load:
    """What run_load sent: a record per request (in request order), when it started and ended (time.time()), and
    the CPU seconds the client's own load loops used (every client process, summed): the client's cost per token,
    beside the stages'."""

    records: list[Record]
    t0: float
    end: float
    cpu_s: float


def _proc_main(args: tuple) -> tuple[list[Record], float]:
    """One client process's share: its records and the CPU seconds of its load loop (this thread's: with one process
    the loop runs in the caller, beside its other threads)."""
    start = time.thread_time()
    records = asyncio.run(_run_share(*args))
    return records, time.thread_time() - start


def run_load(base_url: str, model: str, specs: list[RequestSpec], arrivals: list[float], concurrency: int,
             sampling: dict, procs: int, on_start: Callable[[float], None] | None = None) -> Load:
    """Sends every request. Each process gets an equal share of the concurrency, so no more processes run than the
    concurrency allows (concurrency 1 is one process with one request in flight). `on_start` is told the instant
    (time.time()) at which the load begins, before any process starts, so that a caller can time things from it."""
    procs = max(1, min(procs, len(specs), concurrency))
    shares = [[(arrivals[i], specs[i]) for i in range(p, len(specs), procs)] for p in range(procs)]
    per_proc = max(1, -(-concurrency // procs))
    t0 = time.time() + (2.0 if procs > 1 else 0.1)  # every process starts its clock at this instant
    if on_start is not None:
        on_start(t0)
    ctx = mp.get_context("spawn" if procs > 1 else "fork")
    if procs == 1:
        results = [_proc_main((base_url, model, shares[0], per_proc, sampling, t0))]
    else:
        with ctx.Pool(procs) as pool:
            results = pool.map(_proc_main, [(base_url, model, sh, per_proc, sampling, t0) for sh in shares])
    end = time.time()
    records: list[Record] = [None] * len(specs)  # type: ignore[list-item]
    for p, (recs, _) in enumerate(results):
        for j, rec in enumerate(recs):
            records[p + j * procs] = rec
    return Load(records, t0, end, sum(cpu_s for _, cpu_s in results))
