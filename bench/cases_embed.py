"""What a cached embedding adds in the gateway: MiniLM behind the embedding cache in Redis, the same requests
sent cold (computed, stored), then again one at a time and by concurrent clients, over HTTP and gRPC `Embed`
(every vector from the cache). Besides the clients' latency, the gateway's own histogram of its cache lookups
(keys, local copies or MGETs, decoding) over each window says how many lookups stayed within 2 ms.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.cases_search import lookup_histogram, lookup_stats
from bench.embeddings import texts
from bench.serve_report import summary

MODEL = "minilm"


@dataclass(frozen=True)
class EmbedLoad:
    batches: tuple[int, ...] = (1, 32)
    requests: int = 100  # distinct requests per batch size; the cached phase sends each `repeat` times
    repeat: int = 5
    concurrency: int = 16


async def _http_embed(session: Any, url: str, inputs: list[str]) -> list[bool]:
    async with session.post(url, json={"model": MODEL, "input": inputs, "encoding_format": "base64"}) as resp:
        body = await resp.json()
    if resp.status != 200:
        raise RuntimeError(f"embeddings request failed: {resp.status} {body}")
    return [d["cached"] for d in body["data"]]


async def _send_all(call: Any, sent: list[list[str]], concurrency: int) -> tuple[list[float], int]:
    """Latency of each request and how many vectors came back not cached."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    uncached = 0

    async def one(inputs: list[str]) -> None:
        nonlocal uncached
        async with sem:
            start = time.perf_counter()
            cached = await call(inputs)
            latencies.append(time.perf_counter() - start)
            uncached += cached.count(False)

    await asyncio.gather(*(one(inputs) for inputs in sent))
    return latencies, uncached


async def measure(http: str, grpc_address: str, load: EmbedLoad) -> list[dict[str, Any]]:
    import aiohttp
    import grpc
    from flashstream.v1 import gateway_pb2, gateway_pb2_grpc

    rows = []
    salt = f"{time.time_ns():x}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session, \
            grpc.aio.insecure_channel(grpc_address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def over_grpc(inputs: list[str]) -> list[bool]:
            reply = await stub.Embed(gateway_pb2.EmbedRequest(model=MODEL, inputs=inputs), timeout=300)
            return [d.cached for d in reply.data]

        calls = {"http": lambda inputs: _http_embed(session, f"{http}/v1/embeddings", inputs), "grpc": over_grpc}
        for batch in load.batches:
            sent = [texts(batch, r, f"{salt} b{batch}") for r in range(load.requests)]
            cold, _ = await _send_all(calls["http"], sent, 1)
            row: dict[str, Any] = {"batch": batch, "cold_s": summary(cold)}
            for protocol, call in calls.items():
                before = lookup_histogram(http, "embedding")
                idle, idle_uncached = await _send_all(call, sent, 1)
                between = lookup_histogram(http, "embedding")
                start = time.perf_counter()
                latencies, uncached = await _send_all(call, sent * load.repeat, load.concurrency)
                wall = time.perf_counter() - start
                row[protocol] = {"idle_s": summary(idle), "idle_lookup": lookup_stats(before, between),
                                 "cached_s": summary(latencies), "requests": len(latencies),
                                 "requests_per_s": len(latencies) / wall, "uncached_vectors": uncached + idle_uncached,
                                 "lookup": lookup_stats(between, lookup_histogram(http, "embedding"))}
            rows.append(row)
    return rows
