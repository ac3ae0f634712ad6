"""Tokenizer stage figures: detokenized tokens/s across concurrent streams, encode tokens/s, loop stalls.

    python -m bench.tokenizer [--model DIR] [--streams 256] [--tokens-per-stream 256]

Without --model it builds the demo model's byte-level BPE tokenizer. Detokenization runs the stage's
own path (RequestState + stop-string matcher + batched incremental detokenizer), one token per stream
per step, as the scheduler delivers them. The loop-stall part encodes a 100k-token prompt in an
executor while a 1 ms ticker runs on the event loop, and reports the ticker's largest gap.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import write_results
from services.common.text_options import TextOptions
from services.tokenizer.detokenizer import IncrementalDetokenizer, detokenize_step
from services.tokenizer.request_state import RequestState, step_requests
from services.tokenizer.tokenizer import TextTokenizer

_PROCESS_TOKENIZER: dict[str, TextTokenizer] = {}


def _corpus(tok: TextTokenizer) -> str:
    demo = Path(__file__).resolve().parents[1] / "services" / "demo" / "corpus.txt"
    fixture = Path(__file__).resolve().parents[1] / "tests" / "data" / "tokenizer" / "multilingual.txt"
    return "\n".join(p.read_text(encoding="utf-8") for p in (demo, fixture) if p.exists())


def _streams(tok: TextTokenizer, num_streams: int, num_tokens: int) -> list[list[int]]:
    ids = tok.encode(_corpus(tok), add_special_tokens=False)
    return [[ids[(s * 37 + i) % len(ids)] for i in range(num_tokens)] for s in range(num_streams)]


def bench_detokenize(tok: TextTokenizer, streams: list[list[int]], per_step: int, stops: tuple[str, ...],
                     batched: bool) -> dict[str, Any]:
    options = TextOptions(stop=stops, skip_special_tokens=False)  # every token decoded, special ones included
    states = [RequestState.create(tok, str(i), 1, options) for i in range(len(streams))]
    num_tokens = sum(map(len, streams))
    start = time.perf_counter()
    for step in range(0, len(streams[0]), per_step):
        if batched:
            step_requests(tok, [(s, ids[step:step + per_step]) for s, ids in zip(states, streams)])
        else:
            for s, ids in zip(states, streams):
                det = s.detokenizer
                detokenize_step(tok.backend, [(det, ids[step:step + per_step])])
    elapsed = time.perf_counter() - start
    return {"streams": len(streams), "tokens_per_step": per_step, "stop_strings": len(stops),
            "batched": batched, "tokens": num_tokens, "seconds": elapsed, "tokens_per_s": num_tokens / elapsed}


def bench_full_redecode(tok: TextTokenizer, streams: list[list[int]]) -> dict[str, Any]:
    """The naive baseline: decode each stream's whole output again at every step."""
    subset = streams[:32]
    start = time.perf_counter()
    for step in range(1, len(subset[0]) + 1):
        tok.backend.decode_batch([ids[:step] for ids in subset])
    elapsed = time.perf_counter() - start
    num_tokens = sum(map(len, subset))
    return {"streams": len(subset), "tokens": num_tokens, "seconds": elapsed, "tokens_per_s": num_tokens / elapsed}


def bench_encode(tok: TextTokenizer) -> tuple[dict[str, Any], str]:
    text = _corpus(tok)
    long_prompt = text * max(1, 100_000 // len(tok.encode(text)) + 1)
    prompts = [text[i * 97 % len(text):][:2000] for i in range(256)]
    out: dict[str, Any] = {}
    start = time.perf_counter()
    n = len(tok.encode(long_prompt))
    out["single_long_prompt"] = {"tokens": n, "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    n_batch = sum(map(len, tok.encode_batch(prompts)))
    out["batch_256_prompts"] = {"tokens": n_batch, "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    n_loop = sum(len(tok.encode(p)) for p in prompts)
    out["loop_256_prompts"] = {"tokens": n_loop, "seconds": time.perf_counter() - start}
    for v in out.values():
        v["tokens_per_s"] = v["tokens"] / v["seconds"]
    return out, long_prompt


def _process_encode(folder: str, text: str) -> int:
    if folder not in _PROCESS_TOKENIZER:
        _PROCESS_TOKENIZER[folder] = TextTokenizer.from_dir(folder)
    return len(_PROCESS_TOKENIZER[folder].encode(text))


async def _largest_gap(run: Any) -> tuple[float, float]:
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    start = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - start
    done.set()
    await task
    return elapsed, max(gaps)


def bench_loop_stalls(tok: TextTokenizer, folder: str, long_prompt: str) -> dict[str, Any]:
    results = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        threads = cf.ThreadPoolExecutor(2)
        processes = cf.ProcessPoolExecutor(1)
        await loop.run_in_executor(processes, _process_encode, folder, "warm up")
        cases = {
            "on_the_loop_encode": lambda: asyncio.sleep(0, tok.encode(long_prompt)),
            "thread_pool_encode": lambda: loop.run_in_executor(threads, tok.encode, long_prompt),
            "thread_pool_encode_batch": lambda: loop.run_in_executor(threads, tok.encode_batch, [long_prompt]),
            "process_pool_encode": lambda: loop.run_in_executor(processes, _process_encode, folder, long_prompt),
        }
        for name, run in cases.items():

            async def call(run: Any = run) -> None:
                await run()

            elapsed, gap = await _largest_gap(call)
            results[name] = {"encode_s": elapsed, "largest_loop_gap_s": gap}
        threads.shutdown()
        processes.shutdown()

    asyncio.run(main())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model folder with tokenizer.json (default: the demo model)")
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--tokens-per-stream", type=int, default=256)
    parser.add_argument("--name", default="tokenizer", help="result file name under bench/results")
    args = parser.parse_args(argv)
    folder = args.model
    if not folder:
        from services.demo.build import build_demo_model

        folder = str(build_demo_model(Path(tempfile.mkdtemp()) / "demo"))
    tok = TextTokenizer.from_dir(folder)
    streams = _streams(tok, args.streams, args.tokens_per_stream)
    # Best of three runs: the machine is shared, and the best run is the one least disturbed.
    detok = [max((bench_detokenize(tok, streams, per_step, stops, batched) for _ in range(3)),
                 key=lambda r: r["tokens_per_s"])
             for per_step, stops, batched in [(1, (), True), (1, ("</answer>", "\n\n\n"), True), (4, (), True),
                                              (1, (), False)]]
    baseline = bench_full_redecode(tok, streams)
    encode, long_prompt = bench_encode(tok)
    stalls = bench_loop_stalls(tok, folder, long_prompt)
    results = {"tokenizer": {"vocab_size": tok.vocab_size, "model": args.model or "demo (byte-level BPE)"},
               "detokenize": detok, "full_redecode_baseline": baseline, "encode": encode, "loop_stalls": stalls}
    lines = ["## Detokenization (one process, best of 3 runs)", "",
             "| streams | tokens/step | stop strings | batched decode | tokens/s |", "|---|---|---|---|---|"]
    lines += [f"| {d['streams']} | {d['tokens_per_step']} | {d['stop_strings']} | {d['batched']} | "
              f"{d['tokens_per_s']:,.0f} |" for d in detok]
    lines += ["", f"Naive baseline (re-decode the whole output each step, {baseline['streams']} streams): "
              f"{baseline['tokens_per_s']:,.0f} tokens/s", "", "## Encode (one process)", "",
              "| case | tokens | seconds | tokens/s |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['tokens']:,} | {v['seconds']:.3f} | {v['tokens_per_s']:,.0f} |" for k, v in encode.items()]
    lines += ["", f"## Event-loop stalls while encoding {encode['single_long_prompt']['tokens']:,} tokens", "",
              "| where | encode s | largest loop gap s |", "|---|---|---|"]
    lines += [f"| {k} | {v['encode_s']:.3f} | {v['largest_loop_gap_s']:.4f} |" for k, v in stalls.items()]
    path = write_results(args.name, results, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
