"""Live translation: N concurrent gRPC `Translate` sessions, each sending a sentence every few seconds.

A session's segments are drawn from a seeded sentence-length distribution (log-normal, words of the demo corpus);
the gap before each next segment is uniform in [interval_s / 2, 3 * interval_s / 2]. Per segment the client
records the time from the scheduled send to the first translated chunk (a segment sent while the previous one is
still translating waits, and that wait counts), the streaming rate of its text, and the prompt tokens the prefix
cache served. A step passes when the p99 first-chunk latency is within the limit and no session streams slower
than the minimum rate; `ladder` raises N until a step fails.

The streaming rate counts characters as completion tokens times CHARS_PER_TOKEN: the benchmark's models have
random weights and tokenizers padded with long added tokens, so their own characters per token say nothing of a
real translation's text (the measured characters are reported beside it).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.serve_data import CORPUS
from bench.serve_report import summary

CHARS_PER_TOKEN = 4.0  # English text in Llama-3's tokenizer, about
SENTENCE_CHARS = (90.0, 45.0)  # mean, std of a spoken sentence's characters
MIN_CHARS, MAX_CHARS = 12, 400


@dataclass(frozen=True)
class TranslateLoad:
    duration_s: float = 12.0  # sessions send segments for this long; the last ones are then waited for
    interval_s: float = 3.0
    answer_tokens: int = 32  # a segment's translation (ignore_eos: every one this long)
    first_chunk_limit_s: float = 0.2
    min_chars_per_s: float = 50.0
    seed: int = 0


@dataclass
class Segment:
    sent: float  # scheduled send (time.time(), the same clock in every client process)
    first: float = 0.0  # arrival of the first text chunk
    last: float = 0.0  # arrival of the Done
    new_tokens: int = 0  # the segment's own text, in the model's tokenizer
    text_chars: int = 0
    usage: tuple[int, int, int] = (0, 0, 0)  # the Done's prompt, completion and prefix-cached tokens

    @property
    def tokens(self) -> int:
        return self.usage[1]

    @property
    def prompt_tokens(self) -> int:
        return self.usage[0]

    @property
    def cached_tokens(self) -> int:
        return self.usage[2]


@dataclass
class Session:
    segments: list[Segment] = field(default_factory=list)
    error: str = ""


def sentences(rng: np.random.Generator, n: int, words: list[str]) -> list[str]:
    mean, std = SENTENCE_CHARS
    sigma2 = math.log(1 + (std / mean) ** 2)
    lengths = np.clip(rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), n), MIN_CHARS, MAX_CHARS)
    out = []
    for length in lengths:
        text = ""
        while len(text) < length:
            text += words[int(rng.integers(len(words)))] + " "
        out.append(text.strip().capitalize() + ".")
    return out


async def run_session(stub: Any, model: str, texts: list[str], gaps: list[float], start: float,
                      answer_tokens: int, new_tokens: list[int]) -> Session:
    import grpc
    from flashstream.v1 import common_pb2, gateway_pb2

    session = Session()
    options = gateway_pb2.GenerateOptions(
        sampling=common_pb2.SamplingParams(max_tokens=answer_tokens, temperature=0.0, ignore_eos=True),
        bypass_cache=True)  # segments never repeat: storing each would only cost the gateway a write

    async def segments():  # noqa: ANN202
        at = start
        for i, (text, gap) in enumerate(zip(texts, gaps)):
            at += gap
            await asyncio.sleep(max(0.0, at - time.time()))
            session.segments.append(Segment(at, new_tokens=new_tokens[i]))
            if i == 0:
                yield gateway_pb2.TranslateSegment(model=model, source_language="German", target_language="English",
                                                   text=text, options=options)
            else:
                yield gateway_pb2.TranslateSegment(text=text)

    try:
        async for chunk in stub.Translate(segments(), timeout=600):
            seg = session.segments[chunk.segment_index]
            now = time.time()
            if chunk.HasField("chunk"):
                if chunk.chunk.text and not seg.first:
                    seg.first = now
                seg.text_chars += len(chunk.chunk.text)
            else:
                seg.last = now
                u = chunk.done.usage
                seg.usage = (u.prompt_tokens, u.completion_tokens, u.cached_tokens)
    except grpc.aio.AioRpcError as exc:
        session.error = f"{exc.code().name}: {exc.details()}"
    return session


async def _run_share(address: str, model: str, plans: list[tuple[list[str], list[float], list[int]]],
                     start: float, answer_tokens: int) -> list[Session]:
    import grpc
    from flashstream.v1 import gateway_pb2_grpc

    num_connections = max(1, min(16, len(plans) // 64 + 1))
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(num_connections)]
    stubs = [gateway_pb2_grpc.GatewayStub(c) for c in channels]
    try:
        return await asyncio.gather(*(run_session(stubs[i % num_connections], model, texts, gaps, start,
                                                  answer_tokens, counts)
                                      for i, (texts, gaps, counts) in enumerate(plans)))
    finally:
        for channel in channels:
            await channel.close()


def _share_main(args: tuple) -> list[Session]:
    return asyncio.run(_run_share(*args))


def run_step(address: str, model_dir: Any, num_sessions: int, load: TranslateLoad, seed: int, procs: int = 1
             ) -> list[Session]:
    """The step's sessions, partitioned round-robin over `procs` client processes that start together."""
    import multiprocessing as mp

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))

    words = sorted({w for w in CORPUS.read_text().split() if w.isalpha()})
    rng = np.random.Generator(np.random.PCG64(seed))
    plans = []
    for _ in range(num_sessions):
        gaps = [float(rng.uniform(0, load.interval_s))]  # sessions start spread over one interval
        while sum(gaps) < load.duration_s:
            gaps.append(float(rng.uniform(load.interval_s / 2, 1.5 * load.interval_s)))
        gaps.pop()
        texts = sentences(rng, len(gaps), words)
        plans.append((texts, gaps, [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]))
    procs = max(1, min(procs, num_sessions))
    start = time.time() + (2.0 if procs > 1 else 0.5)
    shares = [(address, "", plans[p::procs], start, load.answer_tokens) for p in range(procs)]
    if procs == 1:
        results = [_share_main(shares[0])]
    else:
        with mp.get_context("spawn").Pool(procs) as pool:
            results = pool.map(_share_main, shares)
    sessions: list[Session] = [None] * num_sessions  # type: ignore[list-item]
    for p, share in enumerate(results):
        sessions[p::procs] = share
    return sessions


def step_stats(num_sessions: int, sessions: list[Session], load: TranslateLoad) -> dict[str, Any]:
    segs = [s for sess in sessions for s in sess.segments if s.first and s.last]
    later = [s for sess in sessions for s in sess.segments[1:] if s.prompt_tokens]
    rates, text_rates = [], []
    for sess in sessions:
        done = [s for s in sess.segments if s.first and s.last]
        streaming = sum(max(s.last - s.first, 1e-6) for s in done)
        if done:
            rates.append(CHARS_PER_TOKEN * sum(s.tokens for s in done) / streaming)
            text_rates.append(sum(s.text_chars for s in done) / streaming)
    first = summary([s.first - s.sent for s in segs])
    failed = [sess.error for sess in sessions if sess.error]
    unanswered = sum(1 for sess in sessions for s in sess.segments if not s.last)
    ok = (not failed and not unanswered and first["p99"] is not None and first["p99"] <= load.first_chunk_limit_s
          and bool(rates) and min(rates) >= load.min_chars_per_s)
    return {
        "sessions": num_sessions, "segments": len(segs), "unanswered_segments": unanswered,
        "failed_sessions": len(failed), "errors": sorted(set(failed))[:5],
        "first_chunk_s": first, "segment_s": summary([s.last - s.sent for s in segs]),
        "session_chars_per_s": {"min": min(rates, default=None), **summary(rates)},
        "session_text_chars_per_s": {"min": min(text_rates, default=None), **summary(text_rates)},
        "prefix_cached_share": (sum(s.cached_tokens for s in later) / sum(s.prompt_tokens for s in later)
                                if later else None),
        "prompt_tokens_per_later_segment": summary([s.prompt_tokens for s in later]),
        "uncached_tokens_per_later_segment": summary([s.prompt_tokens - s.cached_tokens for s in later]),
        "new_segment_tokens": summary([s.new_tokens for s in later]),
        "within_limits": ok,
    }


def ladder(address: str, model_dir: Any, steps: list[int], load: TranslateLoad, deadline: float = math.inf,
           procs: int = 1) -> list[dict[str, Any]]:
    """Runs each N in order until one breaks a limit (that one is kept) or time.monotonic() passes deadline."""
    out = []
    for i, n in enumerate(steps):
        if time.monotonic() + load.duration_s > deadline:
            break
        sessions = run_step(address, model_dir, n, load, load.seed + 1000 * i, procs)
        stats = step_stats(n, sessions, load)
        out.append(stats)
        print(f"translate N={n}: first chunk p99 {1e3 * (stats['first_chunk_s']['p99'] or 0):.0f} ms, slowest "
              f"session {stats['session_chars_per_s']['min'] or 0:.0f} chars/s, prefix cached "
              f"{stats['prefix_cached_share'] or 0:.0%}", flush=True)
        if not stats["within_limits"]:
            break
    return out


def _background_main(base_url: str, prompts: list[str], concurrency: int, answer_tokens: int, until: float,
                     done: Any) -> None:
    """Long prompts, each sent once (no prefix-cache help), `concurrency` at a time, until `until` (time.time())."""
    from bench.serve_client import run_load
    from bench.serve_data import RequestSpec

    for start in range(0, len(prompts), concurrency):
        if time.time() > until:
            break
        specs = [RequestSpec(p, 0, answer_tokens) for p in prompts[start:start + concurrency]]
        records = run_load(base_url, "", specs, [0.0] * len(specs), concurrency,
                           {"temperature": 0.0, "ignore_eos": True}, 1).records
        with done.get_lock():
            done.value += sum(1 for r in records if not r.error)


def step_with_background(address: str, http_url: str, model_dir: Any, num_sessions: int, load: TranslateLoad,
                         prompt_tokens: int, concurrency: int, procs: int = 1) -> dict[str, Any]:
    """One step of `num_sessions` while a separate process keeps `concurrency` long prompts of `prompt_tokens`
    prefilling: the segments' first chunks then compete with long prefills for the step's token budget."""
    import multiprocessing as mp

    from bench.serve_data import PromptMaker

    maker = PromptMaker(model_dir, load.seed + 5)
    prompts = [maker.prompt(prompt_tokens) for _ in range(int(concurrency * load.duration_s))]
    ctx = mp.get_context("spawn")
    done = ctx.Value("i", 0)
    proc = ctx.Process(target=_background_main, args=(http_url, prompts, concurrency, 16,
                                                     time.time() + load.duration_s + 2, done))
    proc.start()
    try:
        sessions = run_step(address, model_dir, num_sessions, load, load.seed + 77, procs)
    finally:
        proc.join(load.duration_s + 120)
        if proc.is_alive():
            proc.kill()
    stats = step_stats(num_sessions, sessions, load)
    stats.update(background_prompt_tokens=prompt_tokens, background_concurrency=concurrency,
                 background_requests_done=done.value)
    return stats
