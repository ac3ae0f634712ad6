"""The load generator: several processes, each an asyncio loop of aiohttp SSE streams, open-loop.

Requests are partitioned round-robin among the processes; each process sends its share at the scheduled times
(all at once, Poisson arrivals, or bounded by its share of the concurrency) and records per request: start,
each chunk's arrival time, completion tokens (from the final usage chunk) and any error.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
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
    error: str = ""


def default_client_procs() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 4))


def _parse_usage(line: bytes) -> tuple[int, int]:
    """The usage chunk's prompt and completion tokens (the only chunk parsed as JSON)."""
    import json

    usage = json.loads(line[6:])["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"]


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
                        rec.prompt_tokens, rec.completion_tokens = _parse_usage(line)
                    elif b'"text":""' not in line and b'"text": ""' not in line and line != b"data: [DONE]":
                        rec.chunk_times.append(now)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    if not rec.error and rec.completion_tokens == 0 and rec.chunk_times:
        rec.error = "stream ended without a usage chunk"


async def _run_share(base_url: str, model: str, specs: list[tuple[float, RequestSpec]], concurrency: int,
                     sampling: dict, t0: float) -> list[Record]:
    import aiohttp

    url = base_url.rstrip("/") + "/v1/completions"
    records = [Record(s.input_len, s.output_len) for _, s in specs]
    sem = asyncio.Semaphore(max(1, concurrency))
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)

    async def go(i: int, at: float, spec: RequestSpec, session: aiohttp.ClientSession) -> None:
        delay = t0 + at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        body = {"model": model, "prompt": spec.prompt, "max_tokens": spec.output_len, "stream": True,
                "stream_options": {"include_usage": True}, **sampling}
        async with sem:
            await _one(session, url, body, records[i])

    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        await asyncio.gather(*(go(i, at, s, session) for i, (at, s) in enumerate(specs)))
    return records


def _proc_main(args: tuple) -> list[Record]:
    return asyncio.run(_run_share(*args))


def run_load(base_url: str, model: str, specs: list[RequestSpec], arrivals: list[float], concurrency: int,
             sampling: dict, procs: int) -> tuple[list[Record], float, float]:
    """Sends every request; returns the records (in request order), the start and the end time. Each process gets
    an equal share of the concurrency, so no more processes run than the concurrency allows (concurrency 1 is one
    process with one request in flight)."""
    procs = max(1, min(procs, len(specs), concurrency))
    shares = [[(arrivals[i], specs[i]) for i in range(p, len(specs), procs)] for p in range(procs)]
    per_proc = max(1, -(-concurrency // procs))
    t0 = time.time() + (2.0 if procs > 1 else 0.1)  # every process starts its clock at this instant
    ctx = mp.get_context("spawn" if procs > 1 else "fork")
    if procs == 1:
        results = [_proc_main((base_url, model, shares[0], per_proc, sampling, t0))]
    else:
        with ctx.Pool(procs) as pool:
            results = pool.map(_proc_main, [(base_url, model, sh, per_proc, sampling, t0) for sh in shares])
    end = time.time()
    records: list[Record] = [None] * len(specs)  # type: ignore[list-item]
    for p, recs in enumerate(results):
        for j, rec in enumerate(recs):
            records[p + j * procs] = rec
    return records, t0, end
